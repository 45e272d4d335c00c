"""Packed int4 weight storage of the integer-only form: two 4-bit codes per byte.

A 4-bit layer's symmetric weight codes ``w_q`` in [-7, 7] are stored as offset-binary nibbles
``u = w_q + 8`` in [1, 15], packed *planar*: the flattened nibble array (padded with one code 0 when
its length n is odd) is split in halves ``lo = u[:h]``, ``hi = u[h:]`` (h = ceil(n / 2)) and

    packed[i] = lo[i] | hi[i] << 4                       uint8 [h]        (``pack_int4``)

The graph unpacks it with standard ONNX ops (opset >= 13: BitShift on uint8 is opset 11, Unsqueeze
and Slice take axes as inputs), so ONNX Runtime and the reference interpreter run it unchanged::

    hi   = BitShift(packed, 4, RIGHT)                    the high nibbles
    lo   = BitShift(BitShift(packed, 4, LEFT), 4, RIGHT) the low nibbles (uint8 LEFT drops bits 4..7)
    flat = Concat(lo, hi, axis=0)                        u, [2h]
    flat = Slice(flat, [0], [n], [0])                    only when n is odd
    W_u8 = Reshape(flat, shape)                          the weight, nibble values
    acc  = ConvInteger(x_q, W_u8, zp_x, 8)               (MatMulInteger alike): W_u8 - 8 = w_q

Planar rather than interleaved (element 2i in the low nibble of byte i) because the unpack is two
whole-tensor shifts and one Concat, with no interleaving gather; the TVM lowering
(targets/lowering/int4.py) decodes the same layout in its unpack kernel.

``match_packed_weight`` recognises that subgraph (structurally, not by names) in an onnx_ir graph
or an ONNX ``GraphProto`` and decodes the codes, for everything that needs the weight values of a
ConvInteger/MatMulInteger whose weight is no longer an initializer (test helpers, the FPGA
estimate, the TVM lowering).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "INT4_ZERO_POINT",
    "PackedWeight",
    "emit_packed_weight",
    "match_packed_weight",
    "match_packed_weight_proto",
    "pack_int4",
    "unpack_int4",
]

#: Offset of the stored nibbles: ``u = w_q + 8``; the weight zero point of the integer op.
INT4_ZERO_POINT = 8
_SHIFT = 4


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Planar nibble packing of symmetric codes in [-8, 7] (module docstring): uint8 [ceil(n/2)]."""
    flat = np.asarray(codes).astype(np.int16).reshape(-1)
    if flat.size and (flat.min() < -INT4_ZERO_POINT or flat.max() > 15 - INT4_ZERO_POINT):
        raise ValueError(f"int4 codes must lie in [-8, 7], got [{flat.min()}, {flat.max()}]")
    nibbles = (flat + INT4_ZERO_POINT).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(INT4_ZERO_POINT))
    half = nibbles.size // 2
    return (nibbles[:half] | (nibbles[half:] << _SHIFT)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of ``pack_int4``: int8 codes of ``shape``."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    count = int(np.prod(shape, dtype=np.int64))
    nibbles = np.concatenate([packed & 0x0F, packed >> _SHIFT])[:count]
    return (nibbles.astype(np.int16) - INT4_ZERO_POINT).astype(np.int8).reshape(tuple(shape))


def emit_packed_weight(emit, base: str, codes: np.ndarray):
    """Emit the packed initializer and its unpack subgraph (module docstring) with ``emit``
    (a ``passes.quantize.emit.Emitter``). Returns ``(W_u8 value, zero point value)`` for the
    weight inputs of ConvInteger / MatMulInteger."""
    from compiler.ir import DataType, ir

    codes = np.asarray(codes)
    count = int(codes.size)
    packed = emit.constant(f"{base}_w_q4", pack_int4(codes))
    four = emit.scalar("int4_shift", _SHIFT, np.uint8)
    half_shape = ir.Shape([int(packed.shape[0])])
    hi = emit.op("BitShift", [packed, four], DataType.UINT8, half_shape, f"{base}_w_hi", {"direction": "RIGHT"})
    up = emit.op("BitShift", [packed, four], DataType.UINT8, half_shape, f"{base}_w_lo_up", {"direction": "LEFT"})
    lo = emit.op("BitShift", [up, four], DataType.UINT8, half_shape, f"{base}_w_lo", {"direction": "RIGHT"})
    flat = emit.op("Concat", [lo, hi], DataType.UINT8, ir.Shape([2 * int(packed.shape[0])]), f"{base}_w_flat", {"axis": 0})
    if 2 * int(packed.shape[0]) != count:
        flat = emit.op(
            "Slice",
            [flat, emit.constant(f"{base}_w_start", np.array([0], np.int64)), emit.constant(f"{base}_w_end", np.array([count], np.int64)),
             emit.constant(f"{base}_w_axes", np.array([0], np.int64))],
            DataType.UINT8, ir.Shape([count]), f"{base}_w_trim",
        )
    weight = emit.op("Reshape", [flat, emit.constant(f"{base}_w_shape", np.array(codes.shape, np.int64))],
                     DataType.UINT8, ir.Shape(list(codes.shape)), f"{base}_w_u4")
    return weight, emit.scalar("w_zp_int4", INT4_ZERO_POINT, np.uint8)


@dataclasses.dataclass
class PackedWeight:
    """A recognised packed int4 weight: the packed initializer, the decoded codes (int8, weight
    shape, symmetric: nibble - 8) and the names of the unpack nodes' outputs (producer order)."""

    packed_name: str
    packed: np.ndarray
    codes: np.ndarray
    unpack_outputs: list[str]


# producer(name) -> (op_type, input names, attributes) or None; constant(name) -> array or None
_Producer = Callable[[str], "tuple[str, list[str], dict] | None"]
_Constant = Callable[[str], "np.ndarray | None"]


def _match(name: str, producer: _Producer, constant: _Constant) -> PackedWeight | None:
    """The structural matcher behind both front ends (module docstring's subgraph, exactly)."""
    outputs: list[str] = []

    def node(value: str, op: str, n_inputs: int | None = None):
        found = producer(value)
        if found is None or found[0] != op or (n_inputs is not None and len(found[1]) != n_inputs):
            return None
        outputs.append(value)
        return found

    def is_four(value: str) -> bool:
        arr = constant(value)
        return arr is not None and arr.dtype == np.uint8 and arr.size == 1 and int(arr.reshape(-1)[0]) == _SHIFT

    reshape = node(name, "Reshape", 2)
    if reshape is None:
        return None
    shape = constant(reshape[1][1])
    if shape is None or shape.dtype != np.int64 or (shape < 0).any():
        return None
    count = int(np.prod(shape, dtype=np.int64))
    flat_name = reshape[1][0]
    sliced = producer(flat_name)
    if sliced is not None and sliced[0] == "Slice":
        outputs.append(flat_name)
        starts, ends = (constant(v) if v else None for v in (sliced[1] + ["", ""])[1:3])
        axes = constant(sliced[1][3]) if len(sliced[1]) > 3 and sliced[1][3] else np.zeros(1, np.int64)
        steps_ok = len(sliced[1]) <= 4 or not sliced[1][4]
        if starts is None or ends is None or axes is None or not steps_ok:
            return None
        if [int(v) for v in starts] != [0] or [int(v) for v in ends] != [count] or [int(v) for v in axes] != [0]:
            return None
        flat_name = sliced[1][0]
    concat = node(flat_name, "Concat", 2)
    if concat is None or int(concat[2].get("axis", -1)) != 0:
        return None
    lo_name, hi_name = concat[1]
    hi = node(hi_name, "BitShift", 2)
    lo = node(lo_name, "BitShift", 2)
    if hi is None or lo is None or hi[2].get("direction") != "RIGHT" or lo[2].get("direction") != "RIGHT":
        return None
    up = node(lo[1][0], "BitShift", 2)
    if up is None or up[2].get("direction") != "LEFT" or up[1][0] != hi[1][0]:
        return None
    if not (is_four(hi[1][1]) and is_four(lo[1][1]) and is_four(up[1][1])):
        return None
    packed_name = hi[1][0]
    packed = constant(packed_name)
    if packed is None or packed.dtype != np.uint8 or packed.ndim != 1 or not (2 * packed.size - 1 <= count <= 2 * packed.size):
        return None
    return PackedWeight(packed_name, packed, unpack_int4(packed, [int(d) for d in shape]), outputs[::-1])


def _direction(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def match_packed_weight(value) -> PackedWeight | None:
    """``match_packed_weight(node.inputs[1])`` for an onnx_ir value: the packed int4 weight whose
    unpack subgraph produces ``value``, or None."""
    from compiler.ir import constant_array

    by_name = {}

    def walk(v) -> None:  # the values reachable backwards from ``value`` (a handful of nodes)
        if v is None or v.name in by_name:
            return
        by_name[v.name] = v
        p = v.producer()
        if p is not None and p.op_type in ("Reshape", "Slice", "Concat", "BitShift"):
            for i in p.inputs:
                walk(i)

    walk(value)

    def producer(name: str):
        v = by_name.get(name)
        p = v.producer() if v is not None else None
        if p is None or p.domain not in ("", "ai.onnx"):
            return None
        attrs = {k: (_direction(a.value) if k == "direction" else a.value) for k, a in p.attributes.items()}
        return p.op_type, [i.name if i is not None else "" for i in p.inputs], attrs

    def constant(name: str):
        v = by_name.get(name)
        return constant_array(v) if v is not None and v.producer() is None else None

    return _match(value.name, producer, constant)


def match_packed_weight_proto(graph, name: str, producers: dict | None = None, initializers: dict | None = None) -> PackedWeight | None:
    """``match_packed_weight`` on an ONNX ``GraphProto``: ``name`` is the weight input's name.
    ``producers`` (output name -> NodeProto) and ``initializers`` (name -> TensorProto) may be
    passed in when matching many weights of one graph."""
    import onnx
    from onnx import numpy_helper

    if producers is None:
        producers = {o: n for n in graph.node for o in n.output}
    if initializers is None:
        initializers = {t.name: t for t in graph.initializer}

    def producer(value: str):
        n = producers.get(value)
        if n is None or n.domain not in ("", "ai.onnx"):
            return None
        attrs = {}
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            attrs[a.name] = _direction(v) if a.name == "direction" else v
        return n.op_type, list(n.input), attrs

    def constant(value: str):
        t = initializers.get(value)
        return numpy_helper.to_array(t) if t is not None else None

    return _match(name, producer, constant)
