"""Node builders for the integer-only form: each method emits one pattern of the package docstring.

``Emitter`` creates nodes and initializers with fresh unique names and keeps them in a pending list;
the rewrite pass inserts that list before the node being replaced (``flush_before``), which keeps
the graph topologically sorted. Every created value carries its dtype and the shape of the float
value it stands for (broadcast constants never change the shape), so shape facts survive.

The requantizer (module docstring of ``passes.quantize``), for an int32 accumulator ``acc``::

    a = Cast(acc, INT64); p = Mul(a, M); p = Add(p, R); u = Cast(p, UINT64)
    u = BitShift(u, S, RIGHT); q = Cast(u, INT64); q = Add(q, Z); q = Clip(q, LO, HI); y = Cast(q, UINT8)

with R = 2^(S-1) + 2^62 and Z = zp - 2^(62-S). Why the offset: BitShift exists only for unsigned
types; adding 2^62 makes p non-negative (|acc * M| < 2^61), and since 2^62 is a multiple of 2^S,
floor((p + 2^62) / 2^S) = floor(p / 2^S) + 2^(62-S), which Z takes back out. R + |acc*M| < 2^63, so
nothing overflows int64/uint64.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compiler.ir import DataType, Node, Value, ir
from passes.quantize.qparams import ActivationQParams

__all__ = ["Emitter", "requant_constants"]

_OFFSET_BITS = 62
_DTYPES = {"uint8": DataType.UINT8, "int8": DataType.INT8}


def requant_constants(m: np.ndarray, s: np.ndarray, zero_point: int) -> dict[str, np.ndarray]:
    """The int64/uint64 constants of the requantizer for multipliers ``m`` and shifts ``s``.

    R = 2^(S-1) + 2^62 (round half up, plus the non-negativity offset); Z = zp - 2^(62-S).
    """
    m = np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    one = np.int64(1)
    return {
        "M": m,
        "R": (one << (s - 1)) + (one << _OFFSET_BITS),
        "S": s.astype(np.uint64),
        "Z": np.int64(zero_point) - (one << (_OFFSET_BITS - s)),
    }


class Emitter:
    """Builds nodes for one graph; see the module docstring."""

    def __init__(self, graph: ir.Graph, taken: set[str]) -> None:
        self.graph = graph
        self.taken = taken
        self.pending: list[Node] = []
        self.created: list[Node] = []
        self._scalars: dict[tuple, Value] = {}

    # -- naming and constants -------------------------------------------------------------------
    def name(self, base: str) -> str:
        base = base or "q"
        candidate, suffix = base, 0
        while candidate in self.taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        self.taken.add(candidate)
        return candidate

    def constant(self, base: str, array: np.ndarray) -> Value:
        """A new initializer holding a fresh tensor of ``array`` (dtype kept as given)."""
        array = np.asarray(array)
        name = self.name(base)
        tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.graph.register_initializer(value)
        return value

    def scalar(self, base: str, value, dtype) -> Value:
        """A shared scalar initializer (same value and dtype -> same initializer)."""
        array = np.array(value, dtype=dtype)
        key = (base, array.dtype.str, array.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.constant(base, array)
        return self._scalars[key]

    # -- nodes -----------------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        dtype: DataType,
        shape: ir.Shape | None,
        base: str,
        attributes: Sequence[ir.Attr] | dict | None = None,
    ) -> Value:
        """Append ``op_type(inputs)`` to the pending nodes; returns its single output value."""
        output = ir.Value(name=self.name(base), type=ir.TensorType(dtype), shape=_copy_shape(shape))
        if isinstance(attributes, dict):
            attrs = attributes
            node = ir.node(op_type, list(inputs), attrs, outputs=[output], name=self.name(f"{base}/{op_type}"))
        else:
            node = ir.Node(
                "", op_type, list(inputs), attributes=list(attributes or ()), outputs=[output],
                name=self.name(f"{base}/{op_type}"),
            )
        self.pending.append(node)
        self.created.append(node)
        return output

    def flush_before(self, anchor: Node) -> None:
        if self.pending:
            self.graph.insert_before(anchor, self.pending)
            self.pending = []

    def flush_at_start(self) -> None:
        if self.pending:
            nodes = list(self.graph)
            if nodes:
                self.graph.insert_before(nodes[0], self.pending)
            else:
                for node in self.pending:
                    self.graph.append(node)
            self.pending = []

    def flush_at_end(self) -> None:
        for node in self.pending:
            self.graph.append(node)
        self.pending = []

    # -- entry / exit ----------------------------------------------------------------------------
    def _qparams_inputs(self, qp: ActivationQParams) -> tuple[Value, Value]:
        scale = self.scalar("q_scale", qp.scale, np.float32)
        zero_point = self.scalar(f"q_zp_{qp.dtype}", qp.zero_point, qp.np_dtype)
        return scale, zero_point

    def quantize_linear(self, x: Value, qp: ActivationQParams, base: str) -> Value:
        scale, zero_point = self._qparams_inputs(qp)
        return self.op("QuantizeLinear", [x, scale, zero_point], _DTYPES[qp.dtype], x.shape, base)

    def dequantize_linear(self, q: Value, qp: ActivationQParams, base: str) -> Value:
        scale, zero_point = self._qparams_inputs(qp)
        return self.op("DequantizeLinear", [q, scale, zero_point], DataType.FLOAT, q.shape, base)

    # -- requantization ----------------------------------------------------------------------------
    def requantize_accumulator(
        self, acc: Value, m: np.ndarray, s: np.ndarray, qp: ActivationQParams, lo: int, hi: int, base: str
    ) -> Value:
        """``Cast(acc, INT64) -> Mul(M)`` then the shared tail (int32 accumulator in, 8-bit out)."""
        consts = requant_constants(m, s, qp.zero_point)
        wide = self.op("Cast", [acc], DataType.INT64, acc.shape, f"{base}_i64", {"to": int(DataType.INT64)})
        product = self.op("Mul", [wide, self.constant(f"{base}_M", consts["M"])], DataType.INT64, acc.shape, f"{base}_mul")
        return self._tail(product, consts, qp, lo, hi, base)

    def requantize_wide(
        self, value: Value, m: int, s: int, qp: ActivationQParams, lo: int, hi: int, base: str
    ) -> Value:
        """``Mul(value, M)`` then the shared tail, for an int64 ``value`` (M, S from ``dyadic_bounded``)."""
        consts = requant_constants(np.int64(m), np.int64(s), qp.zero_point)
        product = self.op("Mul", [value, self.scalar("M", m, np.int64)], DataType.INT64, value.shape, f"{base}_mul")
        return self._tail(product, consts, qp, lo, hi, base)

    def int64(self, base: str, value) -> Value:
        """A shared int64 scalar initializer."""
        return self.scalar(base, value, np.int64)

    def centered(self, q: Value, qp: ActivationQParams, base: str) -> Value:
        """``Sub(Cast(q, INT64), zp)``: an 8-bit tensor as signed int64 offsets from its zero point."""
        wide = self.op("Cast", [q], DataType.INT64, q.shape, f"{base}_i64", {"to": int(DataType.INT64)})
        zero_point = self.scalar("zp_i64", qp.zero_point, np.int64)
        return self.op("Sub", [wide, zero_point], DataType.INT64, q.shape, f"{base}_c")

    def requantize_branches(
        self,
        branches: Sequence[tuple[Value, ActivationQParams, int]],
        shift: int,
        qp: ActivationQParams,
        lo: int,
        hi: int,
        shape: ir.Shape | None,
        base: str,
        offset: np.ndarray | None = None,
    ) -> Value:
        """Per-branch rescale to one output scale: sum_i Mul(centered(q_i), M_i) [+ C], one shift, tail.

        ``branches`` holds ``(q_i, qparams_i, M_i)``; one branch is Concat's input rescale (or a Mul
        by a constant scalar, M_i then carries the scalar and its sign), two are the residual Add.
        ``offset`` is an int64 constant C = round(c * 2^S / s_out) already at the pre-shift scale:
        the Add of a constant tensor c (e.g. a position embedding).
        """
        total: Value | None = None
        for index, (q, branch_qp, multiplier) in enumerate(branches):
            term = self.op(
                "Mul", [self.centered(q, branch_qp, f"{base}_in{index}"), self.scalar("M", multiplier, np.int64)],
                DataType.INT64, q.shape, f"{base}_mul{index}",
            )
            total = term if total is None else self.op("Add", [total, term], DataType.INT64, shape, f"{base}_sum")
        if offset is not None:
            total = self.op("Add", [total, self.constant(f"{base}_C", np.asarray(offset, dtype=np.int64))], DataType.INT64, shape, f"{base}_const")
        consts = requant_constants(np.int64(0), np.int64(shift), qp.zero_point)
        return self._tail(total, consts, qp, lo, hi, base)

    def _tail(self, product: Value, consts: dict[str, np.ndarray], qp: ActivationQParams, lo: int, hi: int, base: str) -> Value:
        shape = product.shape
        p = self.op("Add", [product, self._param(f"{base}_R", consts["R"])], DataType.INT64, shape, f"{base}_round")
        u = self.op("Cast", [p], DataType.UINT64, shape, f"{base}_u64", {"to": int(DataType.UINT64)})
        u = self.op("BitShift", [u, self._param(f"{base}_S", consts["S"])], DataType.UINT64, shape, f"{base}_shr", {"direction": "RIGHT"})
        q = self.op("Cast", [u], DataType.INT64, shape, f"{base}_s64", {"to": int(DataType.INT64)})
        q = self.op("Add", [q, self._param(f"{base}_Z", consts["Z"])], DataType.INT64, shape, f"{base}_zp")
        q = self.op(
            "Clip", [q, self.scalar("lo", lo, np.int64), self.scalar("hi", hi, np.int64)], DataType.INT64, shape, f"{base}_clip"
        )
        return self.op("Cast", [q], _DTYPES[qp.dtype], shape, f"{base}_q", {"to": int(_DTYPES[qp.dtype])})

    def _param(self, base: str, array: np.ndarray) -> Value:
        array = np.asarray(array)
        if array.ndim == 0:
            return self.scalar(base.rsplit("_", 1)[-1], array, array.dtype)
        return self.constant(base, array)


def _copy_shape(shape: ir.Shape | None) -> ir.Shape | None:
    return None if shape is None else ir.Shape(list(shape))
