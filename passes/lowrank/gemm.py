"""``factorize-gemm``: truncated SVD of constant Gemm/MatMul weights into two matrix products."""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.context import CompileContext
from compiler.layer_decisions import LayerDecision
from compiler.ir import Model, Node, constant_array, ir
from compiler.pass_base import CANONICAL_FACTS, Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import is_onnx_op, new_initializer, remove_unused_initializers, unique_name, used_names
from compiler.layer_grams import MAX_GRAM_DIM, GramRequest, input_grams
from passes.lowrank._graph import FLOAT_DTYPES, cast_like, float_attr, int_attr, layer_label, new_value, static_dims
from passes.lowrank.cost import LayerCost, ShapedOp, concrete, decision_for
from passes.lowrank.decompose import svd_spectrum
from passes.lowrank.rank import Candidate, RankOptions, choose, svd_rank

__all__ = ["FactorizeGemmPass"]


@dataclasses.dataclass
class _Layer:
    """A factorizable Gemm/MatMul: ``Y = X W_eff (+ beta C)`` with ``W_eff`` in ``[out, in]`` layout."""

    node: Node
    label: str
    matrix: np.ndarray  # alpha * op(B), transposed to [N, K] (float64)
    weight: np.ndarray  # the original weight (for its dtype)
    a_dims: tuple  # activation shape (may hold symbolic dims)
    out_dims: tuple
    c_dims: tuple | None  # Gemm C shape, None when absent or MatMul


def _match(node: Node, index: int) -> _Layer | str:
    """The layer to factorize, or why ``node`` is left alone."""
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        first = constant_array(node.inputs[0]) if node.inputs else None
        if first is not None and is_onnx_op(node, "MatMul"):
            return "the constant is the left operand (W @ X), not supported"
        return "its weight is not a constant initializer"
    if weight.ndim != 2:
        return f"its weight has rank {weight.ndim}, not 2"
    if weight.dtype.type not in FLOAT_DTYPES:
        return f"its weight is {weight.dtype}, not float"
    if min(weight.shape) < 2:
        return f"its weight {tuple(weight.shape)} has rank 1 at most"
    a_dims, out_dims = static_dims(node.inputs[0]), static_dims(node.outputs[0])
    if a_dims is None or out_dims is None:
        return "the shape of its input or output is unknown (run infer-shapes)"
    c_dims = None
    if is_onnx_op(node, "Gemm"):
        w = weight.T if int_attr(node, "transB", 0) else weight
        matrix = (float_attr(node, "alpha", 1.0) * w.astype(np.float64)).T
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is not None:
            c_dims = static_dims(c)
            if c_dims is None:
                return "the shape of its C input is unknown"
    else:
        if len(a_dims) < 1:
            return "its activation is a scalar"
        matrix = weight.astype(np.float64).T
    return _Layer(node, layer_label(node, index), matrix, weight, a_dims, out_dims, c_dims)


def _ops(layer: _Layer, rank: int | None) -> list[ShapedOp]:
    """Shaped ops of the dense layer (``rank=None``) or of its rank-``rank`` factorization."""
    node, (n_out, k_in) = layer.node, layer.matrix.shape
    a, out = concrete(layer.a_dims), concrete(layer.out_dims)
    c = concrete(layer.c_dims) if layer.c_dims is not None else None
    gemm = is_onnx_op(node, "Gemm")
    trans_a = int_attr(node, "transA", 0) if gemm else 0
    if rank is None:
        if gemm:
            return [ShapedOp("Gemm", (a, (k_in, n_out), c), out, (("transA", trans_a),))]
        return [ShapedOp("MatMul", (a, (k_in, n_out)), out)]
    first = ShapedOp("Gemm", (a, (k_in, rank)), (a[1], rank), (("transA", 1),)) if trans_a else ShapedOp(
        "MatMul", (a, (k_in, rank)), a[:-1] + (rank,)
    )
    t = first.output
    second = ShapedOp("Gemm", (t, (rank, n_out), c), out) if gemm else ShapedOp("MatMul", (t, (rank, n_out)), out)
    return [first, second]


def _rewrite(layer: _Layer, left: np.ndarray, right: np.ndarray, taken: set[str]) -> list[str]:
    """Insert ``T = X U`` before the node and make the node compute ``T V (+ beta C)``.

    ``left [N, r]`` and ``right [r, K]`` factor the ``[out, in]`` matrix, so ``U = right^T`` and
    ``V = left^T``. Returns the names of the nodes that now compute the layer, in order.
    """
    node = layer.node
    graph = node.graph
    rank = left.shape[1]
    stem = node.name or node.outputs[0].name or node.op_type
    u = new_initializer(graph, unique_name(f"{stem}_lowrank_u", taken), cast_like(right.T, layer.weight))
    v = new_initializer(graph, unique_name(f"{stem}_lowrank_v", taken), cast_like(left.T, layer.weight))
    x = node.inputs[0]
    dtype = node.outputs[0].dtype or x.dtype
    trans_a = is_onnx_op(node, "Gemm") and int_attr(node, "transA", 0)
    t_dims = (layer.a_dims[1], rank) if trans_a else layer.a_dims[:-1] + (rank,)
    t = new_value(unique_name(f"{stem}_lowrank_t", taken), t_dims, dtype)
    if trans_a:
        first = ir.Node("", "Gemm", [x, u], [ir.AttrInt64("transA", 1)], outputs=[t], name=f"{stem}_lowrank_u")
    else:
        first = ir.Node("", "MatMul", [x, u], outputs=[t], name=f"{stem}_lowrank_u")
    graph.insert_before(node, first)
    old_weight = node.inputs[1]
    node.replace_input_with(0, t)
    node.replace_input_with(1, v)
    for name in ("alpha", "transA", "transB"):  # alpha and op(B) are folded into U and V
        node.attributes.pop(name, None)
    remove_unused_initializers([old_weight])
    return [first.name, layer.label]


@register_pass
@dataclasses.dataclass(frozen=True)
class FactorizeGemmPass(Pass):
    """Factorize Gemm/MatMul layers with a constant 2-D weight by truncated SVD.

    For ``Y = X W`` with ``W [K, N]`` (``W = alpha * op(B)`` for a Gemm, ``op`` the ``transB``
    transpose), the rank-``r`` SVD ``W^T ~ A_r B_r`` (``A_r = P_r sqrt(S_r)``, ``B_r = sqrt(S_r)
    Q_r^T``) becomes two products, ``T = X U`` (``U = B_r^T``, ``[K, r]``) then ``Y = T V``
    (``V = A_r^T``, ``[r, N]``). The cost drops from ``K N`` to ``r (K + N)`` MACs per row, so the
    parameter break-even is ``r < K N / (K + N)``; whether it is *faster* is the cost model's call
    (:mod:`passes.lowrank.rank`).

    Error: by Eckart-Young the relative weight error is ``||W - U V||_F / ||W||_F =
    sqrt(sum_{i>r} s_i^2 / sum_i s_i^2)``. The relative output error on calibration data ``X`` is
    bounded by ``||X||_2 ||W - U V||_F / ||X W||_F`` and computed exactly from the input Gram
    ``G = X^T X`` (:mod:`passes.lowrank.decompose`).

    Data-aware (``data_aware=true``): minimise the *output* error instead. With ``G = L L^T``,
    ``||X (W - W')||_F = ||L^T (W - W')||_F``, so factor ``L^T W`` by truncated SVD and undo the
    whitening: ``W' = L^{-T} (L^T W)_r``. Optimal among rank-``r`` weights for the calibration
    inputs, which matters when they are correlated (then plain SVD spends rank on directions the
    data never excites).

    Options:
        rank: fixed rank for every layer (0: choose by ``energy`` or automatically).
        energy: keep this fraction of ``sum s_i^2`` (0: not used).
        data_aware: whiten by the calibration activations' Gram (needs ``ctx.calibration``).
        max_error: budget on the relative output error on calibration data (relative weight error
            without calibration data); ``auto`` picks the smallest rank within it.

    Needs: CONSTANTS_LIFTED (weights are initializers), SHAPES_INFERRED (the factor shapes and the
    cost estimates). Preserves every canonical fact: the node keeps its output value; new values
    get full shapes; the replaced weight initializer is deleted when nothing else reads it.

    ``MatMul`` stays two ``MatMul`` nodes; a ``Gemm`` becomes ``MatMul`` (``Gemm<transA=1>`` when
    ``transA=1``) then the original ``Gemm`` carrying ``C`` and ``beta`` (alpha, transB folded).
    Left alone, with a note: non-constant or non-float weights, a constant left operand, weights
    that are not 2-D, unknown shapes, layers where no rank is cheaper (see the rank modes).

    Before -> After (ONNX text)::

        y = Gemm <transB=1, alpha=0.5> (x, B, c)        t = MatMul (x, fc_lowrank_u)        # [K, r]
                                                        y = Gemm (t, fc_lowrank_v, c)       # [r, N]
    """

    name = "factorize-gemm"
    needs = frozenset({Fact.CONSTANTS_LIFTED, Fact.SHAPES_INFERRED})
    preserves = CANONICAL_FACTS
    tolerance = Tolerance.LOSSY

    rank: int = 0
    energy: float = 0.0
    data_aware: bool = False
    max_error: float = 0.05

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        target = ctx.target
        options = RankOptions(self.rank, self.energy, self.max_error, int(getattr(target, "channel_multiple", 1) or 1))
        notes: list[str] = []
        layers: list[_Layer] = []
        decisions: list[LayerDecision] = []
        for index, node in enumerate(model.graph):
            if not (is_onnx_op(node, "Gemm") or is_onnx_op(node, "MatMul")):
                continue
            match = _match(node, index)
            if isinstance(match, str):
                label = layer_label(node, index)
                notes.append(f"{node.op_type} '{label}' left dense: {match}")
                decisions.append(LayerDecision(label, node.op_type, "ineligible", "", "", match, nodes=[label], nodes_after=[label]))
            else:
                layers.append(match)

        requests = [GramRequest(str(i), l.node, l.matrix.shape[1]) for i, l in enumerate(layers) if l.matrix.shape[1] <= MAX_GRAM_DIM]
        grams = input_grams(model, ctx.calibration, requests) if ctx.calibration and requests else {}
        if self.data_aware and not ctx.calibration:
            notes.append("data_aware needs calibration data (ctx.calibration is empty): plain SVD used")

        taken = used_names(model.graph)
        ranks: dict[str, int] = {}
        params_before = params_after = 0
        for i, layer in enumerate(layers):
            gram = grams.get(str(i))
            aware = self.data_aware and gram is not None
            if self.data_aware and ctx.calibration and gram is None:
                notes.append(f"'{layer.label}': input width {layer.matrix.shape[1]} > {MAX_GRAM_DIM}, plain SVD on weights")
            cost = LayerCost(ctx.cost_model, layer.node.outputs[0].dtype or ir.DataType.FLOAT)
            spectrum = svd_spectrum(layer.matrix, gram, data_aware=aware)
            n_out, k_in = layer.matrix.shape
            rank = svd_rank(spectrum, options)
            candidates = []
            if rank is not None:
                candidates.append(Candidate("svd", (rank,), cost(_ops(layer, rank)), float(spectrum.errors[rank]), rank * (n_out + k_in)))
            dense = cost(_ops(layer, None))
            decision = choose(options, candidates, dense, n_out * k_in, cost.estimates_time, cost.describe)
            what = "output" if gram is not None else "weight"
            row = decision_for(layer.label, layer.node.op_type, f"{k_in}x{n_out}", decision, dense, cost, what,
                               full_rank=spectrum.full_rank)
            decisions.append(row)
            if decision.chosen is None:
                notes.append(f"'{layer.label}' left dense: {decision.reason}")
                continue
            chosen = decision.chosen
            left, right = spectrum.factors(chosen.ranks[0])
            row.nodes_after = _rewrite(layer, left, right, taken)
            how = " (data-aware)" if aware else ""
            notes.append(
                f"{chosen.label}{how} for '{layer.label}' ({k_in}x{n_out}): {cost.describe_change(dense, chosen.cost)}, "
                f"rel. {what} error {chosen.error:.2%}"
            )
            ranks[layer.label] = chosen.ranks[0]
            params_before += n_out * k_in
            params_after += chosen.params
        stats = {
            "factorized": len(ranks),
            "dense": len(layers) - len(ranks),
            "params_before": params_before,
            "params_after": params_after,
            "ranks": ranks,
            "layers": [d.to_json() for d in decisions],
        }
        return PassResult(model, bool(ranks), stats, notes)
