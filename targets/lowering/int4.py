"""Packed int4 weights in the TVM artifact: kept packed in the library, unpacked by a kernel.

The integer-only form stores a 4-bit layer's weight as planar packed nibbles and an unpack
subgraph (BitShift/Concat/Reshape, zero point 8; ``passes.quantize.int4``). Imported as is, TVM
would see a subgraph of constants and ``FoldConstant`` would evaluate it at compile time, so the
library would embed the *unpacked* int8 weight (no saving; shared/research/tvm-0.27.md §3.4), and
the ``int4`` dtype itself computes wrong results in TVM 0.27. So, before import:

``rewrite_packed_weights(model)`` replaces every such subgraph feeding ConvInteger/MatMulInteger by
one node ``EdgekilnUnpackInt4(packed, x)`` (an internal op of this module, never written to a file)
that yields the centred int8 codes ``w_q`` directly, and drops the consumer's weight zero point
(``(u - 8) = w_q`` is folded into the unpack).

``UnpackInt4`` converts that node into ``call_tir`` of one small PrimFunc per layer::

    w[i] = int8(select(i < h, packed[i] & 15, packed[i - h] >> 4)) - 8      (i: row-major index)

that also takes the consumer's activation ``x`` as an (unread) argument. Why: Relax's
FoldConstant evaluates every ``call_tir`` whose arguments are all constants (also one with a
tuple output, tried first), and it runs in the legalization pipeline, after our schedules and
inside ``tvm.compile``; an argument that is only known at run time is what keeps the call, so
the packed constant stays in the library (half the bytes of the int8 weight) and the unpack runs
per inference, right before its consumer. The function is marked opaque (``op_pattern`` 8) so
FuseOps neither fuses it into the producer of ``x`` nor into the consumer (whose schedule rule
expects a plain conv/matmul). The cost: one pass over the layer's weights per call (read h
bytes, write 2h), and the conv/matmul kernel then reads int8 weights that are no longer
compile-time constants (the CPU conv rule packs them per call instead of at compile time).
``schedule_unpack_kernels`` gives the unpack kernels a parallel, vectorized loop (before the
default schedule rules run).

``known_codes(bb, expr)`` lets the ConvInteger/MatMulInteger converters see through the unpack to
the constant codes (they need them for the zero-point correction ``zx * sum(w)``, which therefore
stays a compile-time constant).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend.onnx import onnx_frontend

from passes.quantize.int4 import match_packed_weight_proto, unpack_int4

__all__ = ["UNPACK_OP", "UnpackInt4", "known_codes", "rewrite_packed_weights", "schedule_unpack_kernels"]

#: The internal op ``rewrite_packed_weights`` introduces (default domain; only ever seen by our importer).
UNPACK_OP = "EdgekilnUnpackInt4"
#: Name prefix of the unpack PrimFuncs (also how ``known_codes`` and the scheduler find them).
KERNEL_PREFIX = "edgekiln_unpack_int4"
_WEIGHT_OPS = {"ConvInteger": 3, "MatMulInteger": 3}  # op -> index of the weight zero point input
_OPAQUE = 8  # relay/relax OpPatternKind kOpaque


def rewrite_packed_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every packed int4 weight subgraph replaced by ``UNPACK_OP`` (module
    docstring), and notes. Returns ``model`` itself when it has none."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in _WEIGHT_OPS and node.domain in ("", "ai.onnx") and len(node.input) > 1:
            packed = match_packed_weight_proto(graph, node.input[1], producers, initializers)
            if packed is not None:
                found.append((node.input[0], node.input[1], packed))
    if not found:
        return model, []
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    rewired = {}
    for x, weight, packed in found:
        if weight not in rewired:  # (a weight shared by layers: unpacked once, before the first)
            rewired[weight] = (f"{weight}__int4_codes", packed, x)
    new_nodes, emitted = [], {}
    for node in list(graph.node):
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in rewired:
            out, packed, x = rewired[node.input[1]]
            if not emitted.get(out):  # right before its first consumer: x exists there
                new_nodes.append(onnx.helper.make_node(UNPACK_OP, [packed.packed_name, x], [out], name=f"{out}/unpack",
                                                       shape=list(packed.codes.shape)))
                emitted[out] = True
            node.input[1] = out
            zp = _WEIGHT_OPS[node.op_type]
            if len(node.input) > zp:
                node.input[zp] = ""  # the unpack yields centred codes: no weight zero point
            while node.input and not node.input[-1]:
                del node.input[-1]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _remove_dead_nodes(graph)
    notes = [f"{len(rewired)} int4 weight tensors kept packed in the library ({sum(p.packed.size for _, p, _ in rewired.values())} bytes "
             f"for {sum(p.codes.size for _, p, _ in rewired.values())} weights), unpacked per inference"]
    return model, notes


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is used (the orphaned BitShift/Concat/Reshape chains)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | {i.name for i in graph.input}
    keep_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)


def _unpack_primfunc(half: int, shape: list[int], x_shape: list[int], x_dtype: str) -> tirx.PrimFunc:
    """w = unpack(packed) over ``shape`` (row-major index i); ``x`` is an unread argument."""
    packed = te.placeholder((half,), "uint8", name="packed")
    x = te.placeholder(x_shape, x_dtype, name="x_dependency")
    strides = [int(np.prod(shape[k + 1:], dtype=np.int64)) for k in range(len(shape))]

    def code(*idx):
        flat = idx[0] * strides[0]
        for i, s in zip(idx[1:], strides[1:]):
            flat = flat + i * s
        low = flat < half
        byte = packed[tirx.Select(low, flat, flat - half)]
        nibble = tirx.Select(low, byte & tirx.const(15, "uint8"), byte >> tirx.const(4, "uint8"))
        return nibble.astype("int8") - tirx.const(8, "int8")

    weight = te.compute(shape, code, name="int4_unpack")
    func = te.create_prim_func([packed, x, weight]).without_attr("global_symbol")
    return func.with_attr("op_pattern", _OPAQUE)


class UnpackInt4(onnx_frontend.OnnxOpConverter):
    """``EdgekilnUnpackInt4(packed, x) -> int8 codes`` of attribute ``shape`` (module docstring)."""

    @classmethod
    def _impl_v1(cls, bb: relax.BlockBuilder, inputs, attr: dict[str, Any], params):
        packed, x = inputs[0], inputs[1]
        shape = [int(d) for d in attr["shape"]]
        half = int(packed.ty.shape[0])
        func = _unpack_primfunc(half, shape, [int(d) for d in x.ty.shape], str(x.ty.dtype))
        gvar = bb.add_func(func, KERNEL_PREFIX)
        return relax.call_tir(gvar, relax.Tuple([packed, x]), out_ty=relax.TensorType(shape, "int8"))


def _binding(bb: relax.BlockBuilder, expr: relax.Expr) -> relax.Expr:
    while isinstance(expr, relax.Var):
        try:
            bound = bb.lookup_binding(expr)
        except Exception:  # noqa: BLE001 - not bound in this builder
            return expr
        if bound is None:
            return expr
        expr = bound
    return expr


def known_codes(bb: relax.BlockBuilder, expr: relax.Expr) -> np.ndarray | None:
    """The constant int8 codes behind ``expr`` when it is an ``UnpackInt4`` result, else None."""
    call = _binding(bb, expr)
    if not isinstance(call, relax.Call) or not call.op.same_as(tvm.ir.Op.get("relax.call_tir")):
        return None
    callee = call.args[0]
    if not isinstance(callee, relax.GlobalVar) or not callee.name_hint.startswith(KERNEL_PREFIX):
        return None
    packed = call.args[1].fields[0]
    if not isinstance(packed, tvm.ir.expr.Constant):
        return None
    shape = [int(d) for d in call.ty_args[0].shape]
    return unpack_int4(packed.value.numpy(), shape)


def schedule_unpack_kernels(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, list[str]]:
    """Parallelize and vectorize the unpack kernels (llvm targets); returns the names scheduled.

    Runs before ``schedules.apply_default_schedules``, which leaves functions marked scheduled alone.
    """
    from tvm import s_tir

    from targets.lowering.schedules import common
    from targets.lowering.schedules.injective import schedule_spatial_block

    if target.kind.name != "llvm":
        return mod, []
    done = []
    lanes = max(1, common.vector_bits(target) // 8)
    for gvar, func in list(mod.functions_items()):
        if not isinstance(func, tirx.PrimFunc) or not gvar.name_hint.startswith(KERNEL_PREFIX):
            continue
        sch = s_tir.Schedule(func)
        schedule_spatial_block(sch, sch.get_sblock("int4_unpack"), lanes)
        mod[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
        done.append(gvar.name_hint)
    return mod, done
