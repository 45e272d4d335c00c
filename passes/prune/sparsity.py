"""``sparsify-nm``: N:M semi-structured sparsity (2:4 by default) of Conv/Gemm/MatMul weights."""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.context import CompileContext
from compiler.ir import Model, Node, constant_array
from compiler.pass_base import CANONICAL_FACTS, Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import new_initializer, remove_unused_initializers, unique_name, used_names
from passes.prune.dependency import int_attr, node_label

__all__ = ["SparsifyNMPass", "PATTERN_KEY", "input_channel_axis", "nm_mask", "satisfies_nm"]

#: metadata_props key on each sparsified node (and, listing them, on the model): "2:4,axis=1".
PATTERN_KEY = "edgekiln.sparsity"


def input_channel_axis(node: Node, weight: np.ndarray) -> int | None:
    """The weight axis that runs over the node's input channels (the reduction axis)."""
    if node.op_type == "Conv" and weight.ndim >= 3:
        return 1
    if node.op_type == "Gemm" and weight.ndim == 2:
        return 1 if int_attr(node, "transB", 0) else 0
    if node.op_type == "MatMul" and weight.ndim == 2:
        return 0
    return None


def nm_mask(weight: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Boolean keep-mask: in every run of ``m`` consecutive weights along ``axis``, the ``n``
    largest magnitudes (ties: the lower index) are kept and the ``m - n`` smallest are zeroed.

    The length of ``axis`` must be a multiple of ``m``.
    """
    moved = np.moveaxis(np.abs(weight), axis, -1)
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    ranks = np.argsort(np.argsort(-blocks, axis=-1, kind="stable"), axis=-1, kind="stable")
    keep = (ranks < n).reshape(moved.shape)
    return np.moveaxis(keep, -1, axis)


def satisfies_nm(weight: np.ndarray, axis: int, n: int, m: int) -> bool:
    """True when every run of ``m`` weights along ``axis`` has at most ``n`` non-zeros."""
    moved = np.moveaxis(weight, axis, -1)
    if moved.shape[-1] % m:
        return False
    blocks = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    return bool(np.all(np.count_nonzero(blocks, axis=-1) <= n))


@register_pass
@dataclasses.dataclass(frozen=True)
class SparsifyNMPass(Pass):
    """Zero the ``m - n`` smallest of every ``m`` consecutive weights along the input-channel axis.

    For each Conv (``W[M, C/g, k...]``, axis 1), Gemm (B's K axis) and MatMul (constant 2-D B,
    axis 0) whose input-channel count is a multiple of ``m``, every run of ``m`` weights
    ``w[o, c0 .. c0+m-1, pos]`` keeps its ``n`` largest magnitudes and zeroes the rest - the
    pattern sparse tensor cores (Ampere+ 2:4) and some NPUs skip. Magnitude pruning, no re-fit:
    it is lossy by design. Each rewritten node gets ``metadata_props[PATTERN_KEY] = "2:4,axis=1"``
    and the model lists them under the same key.

    The pattern only pays off where the backend runs it: the pass notes whether ``ctx.target``
    declares the ``sparse_2_4`` precision; the CPU backend (TVM LLVM) does not use it - the weights
    are then half zeros (compressible) but execute densely at unchanged speed.

    Needs: CONSTANTS_LIFTED. Preserves every canonical fact (only weight values change).
    Invariant: graph structure, shapes and signature unchanged; afterwards every marked weight has
    at most ``n`` non-zeros in every run of ``m`` along its input-channel axis; running the pass
    again changes nothing.

    Before -> After (one run of m = 4 along C, n = 2)::

        W[o, 0:4, i, j] = [0.9, -0.1, 0.05, -0.7]   ->   [0.9, 0.0, 0.0, -0.7]
    """

    name = "sparsify-nm"
    needs = frozenset({Fact.CONSTANTS_LIFTED})
    preserves = CANONICAL_FACTS
    tolerance = Tolerance.LOSSY

    n: int = 2
    m: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.n < self.m:
            raise ValueError(f"option sparsify-nm{{n,m}}: expected 0 < n < m, got n={self.n}, m={self.m}")

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        pattern = f"{self.n}:{self.m}"
        taken = used_names(model.graph)
        notes: list[str] = []
        replaced = []
        marked: list[str] = []
        zeroed = total = 0
        changed = False
        for node in model.graph:
            if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx") or len(node.inputs) < 2:
                continue
            weight = constant_array(node.inputs[1])
            label = node_label(node)
            if weight is None or not np.issubdtype(weight.dtype, np.floating):
                notes.append(f"{node.op_type} '{label}' left dense: no constant float weight")
                continue
            axis = input_channel_axis(node, weight)
            if axis is None or weight.shape[axis] % self.m:
                size = "?" if axis is None else weight.shape[axis]
                notes.append(f"{node.op_type} '{label}' left dense: {size} input channels, not a multiple of {self.m}")
                continue
            tag = f"{pattern},axis={axis}"
            if satisfies_nm(weight, axis, self.n, self.m):
                if node.metadata_props.get(PATTERN_KEY) != tag:
                    node.metadata_props[PATTERN_KEY] = tag
                    changed = True
                marked.append(label)
                continue
            sparse = np.where(nm_mask(weight, axis, self.n, self.m), weight, np.zeros((), weight.dtype))
            value = new_initializer(model.graph, unique_name(f"{node.inputs[1].name}_{self.n}of{self.m}", taken), sparse)
            replaced.append(node.inputs[1])
            node.replace_input_with(1, value)
            node.metadata_props[PATTERN_KEY] = tag
            changed = True
            marked.append(label)
            zeroed += int(np.count_nonzero(weight) - np.count_nonzero(sparse))
            total += weight.size
            notes.append(f"{node.op_type} '{label}': {pattern} along axis {axis}")
        remove_unused_initializers(replaced)
        listing = ",".join(marked)
        if marked and model.metadata_props.get(PATTERN_KEY) != listing:
            model.metadata_props[PATTERN_KEY] = listing
            changed = True
        supported = bool(ctx.target is not None and ctx.target.supports(f"sparse_{self.n}_{self.m}"))
        target = f"target '{ctx.target.name}'" if ctx.target is not None else "no target"
        if supported:
            notes.append(f"{target} declares sparse_{self.n}_{self.m}: its backend can skip the zeros")
        else:
            notes.append(
                f"{target} does not declare sparse_{self.n}_{self.m}: the CPU backend (TVM LLVM) runs these "
                "weights densely, so the pattern saves no time there (only compressibility)"
            )
        stats = {"layers": len(marked), "weights_zeroed": zeroed, "weights_in_sparsified_layers": total}
        return PassResult(model, changed, stats, notes)
