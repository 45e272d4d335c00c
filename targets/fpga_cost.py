"""FINN-R style resource and cycle estimate for the ``fpga`` target (an integer dataflow design).

Model (Blott et al., "FINN-R", ACM TRETS 2018; numbers in targets/specs/fpga.toml ``[fpga]``):

- Each MAC layer (ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul; float Conv/Gemm/MatMul
  are costed as 8-bit, the precision the target would run after quantization) is one compute
  engine with ``P`` MAC units (FINN's PE x SIMD).
- Bits: activation bits from the dtype of the data input (uint8/int8 -> 8); weight bits from the
  weight *values* (``ceil(log2(max|w - zp| + 1)) + 1``): int4 weights are stored in 8-bit tensors
  or packed nibbles (decoded) by passes/quantize, so the dtype alone would say 8.
- Cost of one MAC unit: when ``w_bits * a_bits >= dsp_min_bit_product`` the multiplier is a DSP
  slice (``1 / macs_per_dsp_int8`` DSP when both operands have <= 8 bits, else 1), otherwise LUTs:
  ``lut_per_bit_product * w_bits * a_bits``. Either way the accumulator takes
  ``lut_per_accumulator_bit * acc_bits`` LUTs, ``acc_bits = w_bits + a_bits + ceil(log2(K))``
  (K = the dot-product length).
- Parallelism ("folding"): a balanced pipeline gives each layer units in proportion to its MACs,
  ``P_i = clamp(floor(f * MACs_i), 1, K_i * out_channels_i)``, with the largest ``f`` whose total
  LUTs and DSPs fit ``utilization`` of the budget. FINN also needs P to divide the channel counts;
  that rounding is not modelled (the estimate is optimistic by up to one folding step).
- Cycles: ``ceil(MACs_i / P_i)`` per MAC layer; other kernels stream one element per cycle per
  ``channel_multiple`` lanes; views cost nothing. Latency (first frame) is the sum of the layers'
  cycles over the clock; the pipelined throughput is one frame per ``max_i cycles_i``.

Everything here is an estimate and labelled ``source = "estimate"``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from compiler.errors import OptionError
from compiler.ir import Model, Node, constant_array
from targets.cost_model import model_work

_MAC_OPS = {"ConvInteger": 1, "MatMulInteger": 1, "QLinearConv": 3, "QLinearMatMul": 3, "Conv": 1, "Gemm": 1, "MatMul": 1}
_WEIGHT_ZERO_POINT = {"ConvInteger": 3, "MatMulInteger": 3, "QLinearConv": 5, "QLinearMatMul": 5}


@dataclasses.dataclass(frozen=True)
class FpgaLayer:
    """Estimate of one node. ``mac_units`` is 0 for non-MAC kernels."""

    name: str
    op_type: str
    macs: int
    weight_bits: int
    activation_bits: int
    mac_units: int
    luts: int
    dsps: float
    cycles: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class FpgaEstimate:
    """The whole design: per-layer rows, totals, and whether it fits the device."""

    layers: list[FpgaLayer]
    luts: int
    dsps: float
    lut_budget: int
    dsp_budget: int
    clock_mhz: float
    latency_cycles: int
    interval_cycles: int

    @property
    def latency_ms(self) -> float:
        return self.latency_cycles / (self.clock_mhz * 1e3)

    @property
    def frames_per_second(self) -> float:
        return self.clock_mhz * 1e6 / max(1, self.interval_cycles)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": "estimate",
            "model": "finn-r",
            "luts": self.luts,
            "dsps": self.dsps,
            "lut_budget": self.lut_budget,
            "dsp_budget": self.dsp_budget,
            "clock_mhz": self.clock_mhz,
            "latency_cycles": self.latency_cycles,
            "latency_ms": self.latency_ms,
            "interval_cycles": self.interval_cycles,
            "frames_per_second": self.frames_per_second,
            "layers": [layer.to_json() for layer in self.layers],
        }


def _input(node: Node, index: int):
    return node.inputs[index] if index < len(node.inputs) else None


def weight_bits(node: Node) -> int:
    """Signed bits needed by the node's constant weight values (8 when the weight is not constant;
    packed int4 weights, ``passes.quantize.int4``, are decoded)."""
    value = _input(node, _MAC_OPS[node.op_type])
    weight = constant_array(value)
    if weight is None and value is not None and node.op_type in _WEIGHT_ZERO_POINT:
        from passes.quantize.int4 import match_packed_weight

        packed = match_packed_weight(value)
        if packed is not None:
            weight = packed.codes  # already centred: its zero point is folded in
            largest = int(np.abs(weight.astype(np.int64)).max()) if weight.size else 0
            return max(2, math.ceil(math.log2(largest + 1)) + 1)
    if weight is None or weight.size == 0:
        return 8
    if not np.issubdtype(weight.dtype, np.integer):
        return 8  # a float weight: costed as the 8-bit weight quantization would make it
    zero = constant_array(_input(node, _WEIGHT_ZERO_POINT.get(node.op_type, 99)))
    centred = weight.astype(np.int64) - (zero.astype(np.int64) if zero is not None and zero.size == 1 else 0)
    largest = int(np.abs(centred).max())
    return max(2, math.ceil(math.log2(largest + 1)) + 1)


def activation_bits(node: Node) -> int:
    value = _input(node, 0)
    if value is None or value.dtype is None:
        return 8
    bits = int(value.dtype.itemsize * 8)
    return 8 if bits >= 16 else bits  # float activations: costed as their 8-bit quantization


def _unit_cost(w: int, a: int, k: int, spec: dict[str, Any]) -> tuple[float, float]:
    """(LUTs, DSPs) of one MAC unit with ``w``-bit weights, ``a``-bit activations, K-long sums."""
    acc_bits = w + a + math.ceil(math.log2(max(2, k)))
    luts = float(spec["lut_per_accumulator_bit"]) * acc_bits
    if w * a >= int(spec["dsp_min_bit_product"]):
        dsps = 1.0 / float(spec["macs_per_dsp_int8"]) if max(w, a) <= 8 else 1.0
        return luts, dsps
    return luts + float(spec["lut_per_bit_product"]) * w * a, 0.0


def estimate(model: Model, target: Any) -> FpgaEstimate:
    """FINN-R estimate of ``model`` on ``target`` (a target with an ``[fpga]`` table).

    Raises OptionError when the target has no ``[fpga]`` table or it lacks a number.
    """
    spec = dict(getattr(target, "spec", {}).get("fpga", {}))
    needed = ("lut", "dsp", "clock_mhz", "utilization", "lut_per_bit_product", "lut_per_accumulator_bit",
              "dsp_min_bit_product", "macs_per_dsp_int8")
    missing = [key for key in needed if key not in spec]
    if missing:
        raise OptionError(f"target '{getattr(target, 'name', target)}' [fpga] lacks {', '.join(missing)}")
    lanes = max(1, int(getattr(target, "channel_multiple", 1)))
    works = model_work(model)
    nodes = list(model.graph)

    mac_rows = []  # (index, w, a, k, max_units, unit_luts, unit_dsps)
    for index, (node, work) in enumerate(zip(nodes, works)):
        if node.op_type in _MAC_OPS and work.macs > 0:
            out = work.output_shapes[0] or ()
            channels = int(out[1]) if len(out) > 1 and isinstance(out[1], int) else 1
            k = max(1, work.macs // max(1, math.prod(d for d in out if isinstance(d, int))))
            w, a = weight_bits(node), activation_bits(node)
            unit_luts, unit_dsps = _unit_cost(w, a, k, spec)
            mac_rows.append((index, w, a, k, k * channels, unit_luts, unit_dsps))

    lut_budget = float(spec["lut"]) * float(spec["utilization"])
    dsp_budget = float(spec["dsp"]) * float(spec["utilization"])
    lut_per_mac = sum(works[i].macs * ul for i, _, _, _, _, ul, _ in mac_rows)
    dsp_per_mac = sum(works[i].macs * ud for i, _, _, _, _, _, ud in mac_rows)
    scale = min(lut_budget / lut_per_mac if lut_per_mac else math.inf,
                dsp_budget / dsp_per_mac if dsp_per_mac else math.inf)
    units = {}
    for index, _, _, _, max_units, _, _ in mac_rows:
        want = scale * works[index].macs if math.isfinite(scale) else max_units
        units[index] = int(min(max_units, max(1, math.floor(want))))

    by_index = {row[0]: row for row in mac_rows}
    layers = []
    for index, (node, work) in enumerate(zip(nodes, works)):
        if index in by_index:
            _, w, a, _, _, unit_luts, unit_dsps = by_index[index]
            p = units[index]
            layers.append(FpgaLayer(work.name, work.op_type, work.macs, w, a, p, math.ceil(p * unit_luts),
                                    p * unit_dsps, math.ceil(work.macs / p)))
        else:
            elements = 0
            if work.launches_kernel and work.output_shapes and work.output_shapes[0]:
                dims = work.output_shapes[0]
                elements = math.prod(d for d in dims if isinstance(d, int))
            layers.append(FpgaLayer(work.name, work.op_type, 0, 0, 0, 0, 0, 0.0, math.ceil(elements / lanes)))
    return FpgaEstimate(
        layers=layers,
        luts=sum(layer.luts for layer in layers),
        dsps=sum(layer.dsps for layer in layers),
        lut_budget=int(spec["lut"]),
        dsp_budget=int(spec["dsp"]),
        clock_mhz=float(spec["clock_mhz"]),
        latency_cycles=sum(layer.cycles for layer in layers),
        interval_cycles=max((layer.cycles for layer in layers), default=0),
    )
