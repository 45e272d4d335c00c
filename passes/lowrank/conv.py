"""``factorize-conv``: channel-SVD or Tucker-2 factorization of constant Conv kernels, chosen per layer."""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler.context import CompileContext
from compiler.layer_decisions import LayerDecision
from compiler.errors import OptionError
from compiler.ir import Model, Node, constant_array, ir
from compiler.pass_base import CANONICAL_FACTS, Fact, Pass, PassResult, Tolerance, register_pass
from passes.canonicalize._graph_utils import is_onnx_op, new_initializer, remove_unused_initializers, unique_name, used_names
from compiler.layer_grams import MAX_GRAM_DIM, GramRequest, input_grams
from passes.lowrank._graph import FLOAT_DTYPES, cast_like, int_attr, layer_label, new_value, static_dims
from passes.lowrank.cost import LayerCost, ShapedOp, concrete, decision_for
from passes.lowrank.decompose import MatrixSpectrum, Tucker2, svd_spectrum, tucker2
from passes.lowrank.rank import Candidate, RankOptions, choose, svd_rank, tucker_ranks

__all__ = ["FactorizeConvPass"]

FORMS = ("auto", "channel-svd", "tucker2")
_SPATIAL_ATTRS = ("auto_pad", "dilations", "pads", "strides")


@dataclasses.dataclass
class _Layer:
    node: Node
    label: str
    weight: np.ndarray  # [M, C, k..]
    x_dims: tuple  # [N, C, S..]
    out_dims: tuple  # [N, M, O..]
    bias_dims: tuple | None


def _match(node: Node, index: int) -> _Layer | str:
    """The conv to factorize, or why it is left alone."""
    if int_attr(node, "group", 1) != 1:
        return f"group={int_attr(node, 'group', 1)} (only group=1 convolutions are factorized)"
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return "its weight is not a constant initializer"
    if weight.dtype.type not in FLOAT_DTYPES:
        return f"its weight is {weight.dtype}, not float"
    if weight.ndim < 3:
        return f"its weight has rank {weight.ndim}"
    if min(weight.shape[0], weight.shape[1] * int(np.prod(weight.shape[2:]))) < 2:
        return f"its weight {tuple(weight.shape)} has rank 1 at most"
    x_dims, out_dims = static_dims(node.inputs[0]), static_dims(node.outputs[0])
    if x_dims is None or out_dims is None or len(out_dims) != weight.ndim or len(x_dims) != weight.ndim:
        return "the shape of its input or output is unknown (run infer-shapes)"
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    bias_dims = (weight.shape[0],) if bias is not None else None
    return _Layer(node, layer_label(node, index), weight, x_dims, out_dims, bias_dims)


def _dense_ops(layer: _Layer) -> list[ShapedOp]:
    return [ShapedOp("Conv", (concrete(layer.x_dims), layer.weight.shape, layer.bias_dims), concrete(layer.out_dims))]


def _svd_ops(layer: _Layer, r: int) -> list[ShapedOp]:
    m, c, *k = layer.weight.shape
    x, out = concrete(layer.x_dims), concrete(layer.out_dims)
    mid = (out[0], r) + out[2:]
    ones = (1,) * len(k)
    return [
        ShapedOp("Conv", (x, (r, c, *k)), mid),
        ShapedOp("Conv", (mid, (m, r) + ones, layer.bias_dims), out),
    ]


def _tucker_ops(layer: _Layer, r1: int, r2: int) -> list[ShapedOp]:
    m, c, *k = layer.weight.shape
    x, out = concrete(layer.x_dims), concrete(layer.out_dims)
    ones = (1,) * len(k)
    t1 = (x[0], r1) + x[2:]
    t2 = (out[0], r2) + out[2:]
    return [
        ShapedOp("Conv", (x, (r1, c) + ones), t1),
        ShapedOp("Conv", (t1, (r2, r1, *k)), t2),
        ShapedOp("Conv", (t2, (m, r2) + ones, layer.bias_dims), out),
    ]


def _copy_attrs(node: Node, names: tuple[str, ...]) -> list[ir.Attr]:
    return [ir.Attr(a.name, a.type, a.value) for n, a in node.attributes.items() if n in names]


def _to_pointwise(node: Node, ndim: int) -> None:
    """Turn ``node`` into a 1x1 conv (stride 1, no padding): the last factor."""
    for name in _SPATIAL_ATTRS:
        node.attributes.pop(name, None)
    node.attributes["kernel_shape"] = ir.AttrInt64s("kernel_shape", [1] * ndim)


def _rewrite(layer: _Layer, weights: list[np.ndarray], spatial_index: int, taken: set[str]) -> list[str]:
    """Insert the factor convs before ``node``; ``node`` becomes the last 1x1 conv (keeps bias, output).

    ``weights`` are the factor kernels in order; ``weights[spatial_index]`` gets the original kernel
    size, strides, pads and dilations (so the output size is unchanged), the others are 1x1.
    Returns the names of the nodes that now compute the layer, in order.
    """
    node = layer.node
    graph = node.graph
    stem = node.name or node.outputs[0].name or "conv"
    dtype = node.outputs[0].dtype or node.inputs[0].dtype
    ndim = layer.weight.ndim - 2
    x = node.inputs[0]
    dims = layer.x_dims
    new_nodes = []
    for i, w in enumerate(weights[:-1]):
        init = new_initializer(graph, unique_name(f"{stem}_lowrank_w{i}", taken), cast_like(w, layer.weight))
        if i == spatial_index:
            attrs = _copy_attrs(node, _SPATIAL_ATTRS) + [ir.AttrInt64s("kernel_shape", list(w.shape[2:]))]
            dims = (layer.out_dims[0], w.shape[0]) + tuple(layer.out_dims[2:])
        else:  # a 1x1 conv keeps the spatial size of its input
            attrs = [ir.AttrInt64s("kernel_shape", [1] * ndim)]
            dims = (dims[0], w.shape[0]) + tuple(dims[2:])
        out = new_value(unique_name(f"{stem}_lowrank_t{i}", taken), dims, dtype)
        new_nodes.append(ir.Node("", "Conv", [x, init], attrs, outputs=[out], name=f"{stem}_lowrank_{i}"))
        x = out
    graph.insert_before(node, new_nodes)
    old_weight = node.inputs[1]
    last = new_initializer(graph, unique_name(f"{stem}_lowrank_w{len(weights) - 1}", taken), cast_like(weights[-1], layer.weight))
    node.replace_input_with(0, x)
    node.replace_input_with(1, last)
    _to_pointwise(node, ndim)
    remove_unused_initializers([old_weight])
    return [n.name for n in new_nodes] + [layer.label]


@register_pass
@dataclasses.dataclass(frozen=True)
class FactorizeConvPass(Pass):
    """Factorize ``Conv`` (group=1, constant kernel ``W [M, C, k..]``) into a chain of smaller convs.

    Two forms, chosen per layer by estimated cost (``form=auto``):

    - **channel-SVD**: ``W.reshape(M, C*k..) ~ A B`` (truncated SVD, rank ``r``): a kxk conv with
      ``r`` filters ``B.reshape(r, C, k..)`` (the original strides/pads/dilations), then a 1x1 conv
      ``A.reshape(M, r, 1..)`` with the bias. MACs per output position: ``r (C k^2 + M)`` instead
      of ``M C k^2``.
    - **Tucker-2** (HOSVD on the channel modes): ``W ~ K x_0 U_out x_1 U_in``: a 1x1 conv ``C -> r1``
      (``U_in^T``), the kxk core conv ``r1 -> r2`` (``K``, original strides/pads/dilations), a 1x1
      conv ``r2 -> M`` (``U_out``) with the bias. MACs: ``C r1`` per input position plus
      ``r1 r2 k^2 + r2 M`` per output position. Zero padding commutes with the channel maps, so the
      first 1x1 conv may run before the padded kxk one.

    Errors (:mod:`passes.lowrank.decompose`): channel-SVD obeys Eckart-Young on the reshaped kernel;
    Tucker-2 is the orthogonal projection ``||W - W'||^2 = ||W||^2 - ||K_{r2,r1}||^2 <= sum_{i>r2}
    s_i(W_(0))^2 + sum_{j>r1} s_j(W_(1))^2``. With calibration data both are measured as the relative
    error of the conv output, exactly, from the Gram of the im2col patches (up to ``C k^2 = 4096``).
    At full rank (``r = min(M, C k^2)``; ``(r1, r2) = (C, M)``) both forms equal the original.

    Options:
        rank: fixed rank (channel-SVD ``r``; Tucker ``r1 = min(rank, C)``, ``r2 = min(rank, M)``);
            0 chooses by ``energy`` or automatically (:mod:`passes.lowrank.rank`).
        energy: keep this fraction of the squared singular values (per mode for Tucker-2).
        max_error: budget on the relative output error on calibration data.
        form: ``auto`` (cheapest estimate per layer), ``channel-svd`` or ``tucker2``.

    Needs: CONSTANTS_LIFTED, SHAPES_INFERRED. Preserves every canonical fact (the conv keeps its
    output value and bias; new values get full shapes; an unused old kernel is deleted).
    Left alone, with a note: grouped/depthwise convs, non-constant or non-float kernels, unknown
    shapes, layers where no factorization is cheaper. 1x1 kernels use channel-SVD only.

    Before -> After (Tucker-2, ONNX text)::

        y = Conv <pads=[1,1,1,1], strides=[2,2]> (x, W, b)
            ->  t0 = Conv <kernel_shape=[1,1]> (x, c_lowrank_w0)                           # C -> r1
                t1 = Conv <kernel_shape=[3,3], pads=[1,1,1,1], strides=[2,2]> (t0, c_lowrank_w1)
                y  = Conv <kernel_shape=[1,1]> (t1, c_lowrank_w2, b)                       # r2 -> M
    """

    name = "factorize-conv"
    needs = frozenset({Fact.CONSTANTS_LIFTED, Fact.SHAPES_INFERRED})
    preserves = CANONICAL_FACTS
    tolerance = Tolerance.LOSSY

    rank: int = 0
    energy: float = 0.0
    max_error: float = 0.05
    form: str = "auto"

    def run(self, model: Model, ctx: CompileContext) -> PassResult:
        if self.form not in FORMS:
            raise OptionError(f"factorize-conv: form must be one of {', '.join(FORMS)}, got '{self.form}'")
        options = RankOptions(self.rank, self.energy, self.max_error, int(getattr(ctx.target, "channel_multiple", 1) or 1))
        notes: list[str] = []
        layers: list[_Layer] = []
        decisions: list[LayerDecision] = []
        for index, node in enumerate(model.graph):
            if not is_onnx_op(node, "Conv"):
                continue
            match = _match(node, index)
            if isinstance(match, str):
                label = layer_label(node, index)
                notes.append(f"Conv '{label}' left dense: {match}")
                decisions.append(LayerDecision(label, "Conv", "ineligible", "", "", match, nodes=[label], nodes_after=[label]))
            else:
                layers.append(match)

        def patch_dim(layer: _Layer) -> int:
            return int(np.prod(layer.weight.shape[1:]))

        requests = [GramRequest(str(i), l.node, patch_dim(l)) for i, l in enumerate(layers) if patch_dim(l) <= MAX_GRAM_DIM]
        grams = input_grams(model, ctx.calibration, requests) if ctx.calibration and requests else {}

        taken = used_names(model.graph)
        ranks: dict[str, list[int]] = {}
        forms: dict[str, str] = {}
        params_before = params_after = 0
        for i, layer in enumerate(layers):
            gram = grams.get(str(i))
            cost = LayerCost(ctx.cost_model, layer.node.outputs[0].dtype or ir.DataType.FLOAT)
            m, c, *k = layer.weight.shape
            kk = int(np.prod(k))
            dense_params = layer.weight.size
            candidates: list[Candidate] = []
            spectrum: MatrixSpectrum | None = None
            tucker: Tucker2 | None = None
            if self.form in ("auto", "channel-svd"):
                spectrum = svd_spectrum(layer.weight.reshape(m, -1), gram)
                r = svd_rank(spectrum, options)
                if r is not None:
                    candidates.append(
                        Candidate("channel-svd", (r,), cost(_svd_ops(layer, r)), float(spectrum.errors[r]), r * (c * kk + m))
                    )
            if self.form in ("auto", "tucker2") and kk > 1:
                tucker = tucker2(layer.weight, gram)
                pair = tucker_ranks(tucker, options, lambda r1, r2: cost(_tucker_ops(layer, r1, r2)))
                if pair is not None:
                    r1, r2 = pair
                    candidates.append(
                        Candidate("tucker2", pair, cost(_tucker_ops(layer, r1, r2)), float(tucker.errors[r2, r1]), c * r1 + r1 * r2 * kk + m * r2)
                    )
            elif self.form == "tucker2":
                reason = "Tucker-2 needs a spatial kernel, this one is 1x1"
                notes.append(f"Conv '{layer.label}' left dense: {reason}")
                decisions.append(LayerDecision(layer.label, "Conv", "ineligible", "", "", reason,
                                               nodes=[layer.label], nodes_after=[layer.label]))
                continue
            dense = cost(_dense_ops(layer))
            decision = choose(options, candidates, dense, dense_params, cost.estimates_time, cost.describe)
            row = decision_for(layer.label, "Conv", "x".join(map(str, layer.weight.shape)), decision, dense, cost,
                               "output" if gram is not None else "weight", full_rank=min(m, c * kk),
                               alternatives=candidates)
            decisions.append(row)
            if decision.chosen is None:
                notes.append(f"Conv '{layer.label}' left dense: {decision.reason}")
                continue
            chosen = decision.chosen
            if chosen.form == "tucker2":
                weights, spatial_index = list(tucker.factors(*chosen.ranks)), 1
            else:
                a, b = spectrum.factors(chosen.ranks[0])
                ones = (1,) * len(k)
                weights = [b.reshape((chosen.ranks[0], c, *k)), a.reshape((m, chosen.ranks[0]) + ones)]
                spatial_index = 0
            row.nodes_after = _rewrite(layer, weights, spatial_index, taken)
            others = [f"{o.label}: {cost.describe(o.cost)}" for o in candidates if o is not chosen]
            alt = f"; other form {others[0]}" if others else ""
            what = "output" if gram is not None else "weight"
            notes.append(
                f"{chosen.label} for '{layer.label}' ({m}x{c}x{'x'.join(map(str, k))}): "
                f"{cost.describe_change(dense, chosen.cost)}, rel. {what} error {chosen.error:.2%}{alt}"
            )
            ranks[layer.label] = list(chosen.ranks)
            forms[layer.label] = chosen.form
            params_before += dense_params
            params_after += chosen.params
        stats = {
            "factorized": len(ranks),
            "dense": len(layers) - len(ranks),
            "params_before": params_before,
            "params_after": params_after,
            "ranks": ranks,
            "forms": forms,
            "layers": [d.to_json() for d in decisions],
        }
        return PassResult(model, bool(ranks), stats, notes)
