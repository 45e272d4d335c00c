"""Shared test helpers: ONNX-text models with seeded weights, fact checkers, numeric comparison.

Fact checkers are written independently of the passes (they re-derive each invariant from the
graph), so a pass that claims a fact it does not establish fails the contract test.
"""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser

from compiler.ir import Model, Node, from_proto, ir
from compiler.pass_base import Fact
from compiler.verify import TolerancePolicy, compare, run_onnxruntime

# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------


def model_from_text(text: str, seed: int = 0, **initializers: tuple[int, ...] | np.ndarray) -> Model:
    """Parse ONNX text; each keyword is an initializer: an array, or a shape filled ~N(0, 1) (seeded).

    Arrays named ``*var*`` get positive values (BatchNormalization variances).
    """
    rng = np.random.default_rng(seed)
    tensors = []
    for name, spec in initializers.items():
        if isinstance(spec, np.ndarray):
            array = spec
        elif "var" in name:
            array = rng.uniform(0.5, 2.0, spec).astype(np.float32)
        else:
            array = rng.standard_normal(spec).astype(np.float32)
        tensors.append(onnx.numpy_helper.from_array(array, name))
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend(tensors)
    return from_proto(proto)


def op_types(model: Model) -> list[str]:
    return [node.op_type for node in model.graph]


def count(model: Model, op_type: str) -> int:
    return sum(node.op_type == op_type for node in ir.traversal.RecursiveGraphIterator(model.graph))


def signature(model: Model) -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
    """Graph input and output names with dtypes: what a caller of the model relies on."""
    return (
        [(v.name, v.dtype) for v in model.graph.inputs],
        [(v.name, v.dtype) for v in model.graph.outputs],
    )


def assert_same_outputs(before: Model, after: Model, feeds: dict, policy: TolerancePolicy) -> dict:
    """Run both models in ONNX Runtime (optimizations off) and compare by ``policy``."""
    result = compare(run_onnxruntime(after, feeds), run_onnxruntime(before, feeds), policy)
    assert result["passed"], result
    return result


# --------------------------------------------------------------------------------------------
# Fact checkers: each returns the list of violations (empty when the fact holds)
# --------------------------------------------------------------------------------------------


def _is_const(value: ir.Value | None) -> bool:
    if value is None:
        return True  # an omitted optional input does not vary
    if value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def _graph_nodes(model: Model) -> list[Node]:
    return list(ir.traversal.RecursiveGraphIterator(model.graph))


def check_topo_sorted(model: Model) -> list[str]:
    """Every node input is a graph input, initializer, outer value or an earlier node's output."""
    problems = []
    for graph in model.graphs():
        position = {id(node): i for i, node in enumerate(graph)}
        for i, node in enumerate(graph):
            for value in node.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and id(producer) in position and position[id(producer)] >= i:
                    problems.append(f"{node.op_type} '{node.name}' reads '{value.name}' before it is made")
    return problems


def check_shapes_inferred(model: Model) -> list[str]:
    return [
        f"'{v.name}' ({node.op_type}) has no dtype/shape"
        for node in _graph_nodes(model)
        for v in node.outputs
        if v.name and (v.dtype is None or v.shape is None)
    ]


def check_constants_lifted(model: Model) -> list[str]:
    return [
        f"Constant '{node.outputs[0].name}' is a node"
        for node in _graph_nodes(model)
        if node.op_type == "Constant" and not node.outputs[0].is_graph_output()
    ]


# Ops the folder leaves on purpose (see passes/canonicalize/fold_constants.py).
_NOT_FOLDED = {"Constant", "ConstantOfShape", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def check_constants_folded(model: Model) -> list[str]:
    return [
        f"{node.op_type} '{node.name}' has only constant inputs"
        for node in _graph_nodes(model)
        if node.op_type not in _NOT_FOLDED
        and not node.op_type.startswith("Random")
        and len(node.outputs) == 1
        and all(_is_const(v) for v in node.inputs)
    ]


def check_bn_folded(model: Model) -> list[str]:
    """No BN fed by a Conv/Gemm that it alone reads, with constant weights and statistics."""
    problems = []
    for node in _graph_nodes(model):
        if node.op_type != "BatchNormalization":
            continue
        x = node.inputs[0]
        producer = x.producer()
        if (
            producer is not None
            and producer.op_type in ("Conv", "Gemm")
            and len(x.uses()) == 1
            and not x.is_graph_output()
            and all(_is_const(v) for v in (*node.inputs[1:], *producer.inputs[1:]))
            and not any(o.uses() for o in node.outputs[1:])
        ):
            problems.append(f"BatchNormalization '{node.name}' after {producer.op_type} is foldable")
    return problems


def check_no_identity(model: Model) -> list[str]:
    """Identity/inference Dropout only where an output would otherwise lose its name."""
    problems = []
    for node in _graph_nodes(model):
        if node.op_type == "Dropout":
            training = node.inputs[2] if len(node.inputs) > 2 else None
            mask_used = len(node.outputs) > 1 and bool(node.outputs[1].uses() or node.outputs[1].is_graph_output())
            if (training is not None and not _is_const(training)) or mask_used:
                continue
            if training is not None and training.const_value is not None and training.const_value.numpy().any():
                continue
        elif node.op_type != "Identity":
            continue
        x, y = node.inputs[0], node.outputs[0]
        needed = y.is_graph_output() and (x.producer() is None or x.is_graph_output())
        if not needed:
            problems.append(f"{node.op_type} '{node.name}' is removable")
    return problems


def check_dead_code_free(model: Model) -> list[str]:
    problems = [
        f"{node.op_type} '{node.name}' is unused"
        for node in _graph_nodes(model)
        if not any(v.uses() or v.is_graph_output() for v in node.outputs)
    ]
    problems += [
        f"initializer '{name}' is unused"
        for name, v in model.graph.initializers.items()
        if not (v.uses() or v.is_graph_input() or v.is_graph_output())
    ]
    return problems


_FLOAT_TYPES = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype is not None and value.dtype.name in _FLOAT_TYPES


def _dynamic(model: Model) -> set[int]:
    """ids of values that depend on a graph input (a forward sweep; needs topological order)."""
    dynamic = {id(v) for v in model.graph.inputs}
    for node in model.graph:
        if any(v is not None and id(v) in dynamic for v in node.inputs):
            dynamic.update(id(v) for v in node.outputs)
    return dynamic


def _float_graph_inputs_feed_only_quantizers(model: Model) -> list[str]:
    return [
        f"{use.node.op_type} '{use.node.name}' reads float graph input '{v.name}' directly"
        for v in model.graph.inputs
        if _is_float(v)
        for use in v.uses()
        if use.node.op_type != "QuantizeLinear"
    ]


def check_integer_only(model: Model) -> list[str]:
    """No float arithmetic between the input quantizers and the output dequantizers, except islands.

    Re-derived from the graph: float graph inputs feed only QuantizeLinear; every other node that
    reads a float activation is an island node, i.e. all its float activations come from
    DequantizeLinear or other island nodes (islands end in QuantizeLinear or a graph output); no
    node makes a float activation from integers except DequantizeLinear; and no Conv/Gemm/MatMul
    with a constant weight is left in float (those must be ConvInteger/MatMulInteger).
    """
    problems = _float_graph_inputs_feed_only_quantizers(model)
    dynamic = _dynamic(model)
    island: set[int] = set()
    for node in model.graph:
        label = f"{node.op_type} '{node.name}'"
        float_in = [v for v in node.inputs if v is not None and id(v) in dynamic and _is_float(v)]
        float_out = [v for v in node.outputs if id(v) in dynamic and _is_float(v)]
        if node.op_type == "DequantizeLinear":
            island.update(id(v) for v in float_out)
            continue
        if node.op_type == "QuantizeLinear":
            continue
        outside = [v.name for v in float_in if id(v) not in island and not v.is_graph_input()]
        if outside:
            problems.append(f"{label} reads float '{outside[0]}' that no DequantizeLinear/island produced")
        if float_out and not float_in:
            problems.append(f"{label} makes float '{float_out[0].name}' from integers without DequantizeLinear")
        island.update(id(v) for v in float_out)
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if node.op_type in _WEIGHTED_OPS and _is_float(weight) and id(weight) not in dynamic:
            problems.append(f"{label} with a constant float weight was not lowered to an integer op")
    return problems


def _const_dtype(value: ir.Value | None) -> str | None:
    if value is None or value.is_graph_input() or value.const_value is None:
        return None
    return value.const_value.dtype.name


def check_qdq_form(model: Model) -> list[str]:
    """QuantizeLinear/DequantizeLinear pairs around float compute (what ORT/TensorRT consume).

    Float graph inputs feed only QuantizeLinear; every Conv/Gemm/MatMul whose weight is constant
    reads its activation from a DequantizeLinear and its weight from a DequantizeLinear of an int8
    initializer (per channel: a 1-D scale with an axis, unless there is one channel); a Conv bias is
    a DequantizeLinear of an int32 initializer or a float constant.
    """
    problems = _float_graph_inputs_feed_only_quantizers(model)
    for node in model.graph:
        if node.op_type not in _WEIGHTED_OPS or len(node.inputs) < 2:
            continue
        label = f"{node.op_type} '{node.name}'"
        w_dq = node.inputs[1].producer()
        if w_dq is None:
            if _is_const(node.inputs[1]):
                problems.append(f"{label} has a float weight without DequantizeLinear")
            continue
        if w_dq.op_type != "DequantizeLinear" or _const_dtype(w_dq.inputs[0]) != "INT8":
            continue  # weight computed at run time: not a weighted layer
        x_dq = node.inputs[0].producer()
        if x_dq is None or x_dq.op_type != "DequantizeLinear":
            problems.append(f"{label} reads its activation without DequantizeLinear")
        scale = w_dq.inputs[1].const_value
        if scale is not None and scale.numpy().size > 1 and "axis" not in w_dq.attributes and w_dq.inputs[0].const_value.numpy().ndim > 1:
            problems.append(f"{label}: per-channel weight DequantizeLinear has no axis")
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            b_dq = node.inputs[2].producer()
            if b_dq is not None and not (b_dq.op_type == "DequantizeLinear" and _const_dtype(b_dq.inputs[0]) == "INT32"):
                problems.append(f"{label}: bias is neither an int32 DequantizeLinear nor a constant")
    return problems


FACT_CHECKS: dict[Fact, Callable[[Model], list[str]]] = {
    Fact.SHAPES_INFERRED: check_shapes_inferred,
    Fact.CONSTANTS_LIFTED: check_constants_lifted,
    Fact.CONSTANTS_FOLDED: check_constants_folded,
    Fact.BN_FOLDED: check_bn_folded,
    Fact.NO_IDENTITY: check_no_identity,
    Fact.DEAD_CODE_FREE: check_dead_code_free,
    Fact.TOPO_SORTED: check_topo_sorted,
}

# Facts about the numeric form. Kept apart from FACT_CHECKS, whose facts every canonical float
# model satisfies (tests assert "all FACT_CHECKS hold after canonicalize"); a float model never has
# these. ALL_FACT_CHECKS is what the contract test uses to check a pass's ``provides``.
FORM_FACT_CHECKS: dict[Fact, Callable[[Model], list[str]]] = {
    Fact.QDQ_FORM: check_qdq_form,
    Fact.INTEGER_ONLY: check_integer_only,
}
ALL_FACT_CHECKS: dict[Fact, Callable[[Model], list[str]]] = {**FACT_CHECKS, **FORM_FACT_CHECKS}


def facts_holding(model: Model) -> set[Fact]:
    return {fact for fact, check in FACT_CHECKS.items() if not check(model)}


# --------------------------------------------------------------------------------------------
# Test models
# --------------------------------------------------------------------------------------------

OPSET = '<ir_version: 10, opset_import: ["" : 17]>'


def conv_bn_model() -> Model:
    """Grouped Conv+bias -> BN -> Relu -> Conv (no bias) -> BN -> GAP -> Flatten -> Gemm -> BN."""
    return model_from_text(
        OPSET
        + """
        g (float[2,4,6,6] x) => (float[2,5] y) {
            c1 = Conv <group=2, pads=[1,1,1,1]> (x, w1, b1)
            n1 = BatchNormalization <epsilon=0.001> (c1, s1, o1, m1, var1)
            r1 = Relu (n1)
            c2 = Conv (r1, w2)
            n2 = BatchNormalization (c2, s2, o2, m2, var2)
            p = GlobalAveragePool (n2)
            f = Flatten (p)
            gm = Gemm <transB=1, beta=0.5> (f, w3, b3)
            y = BatchNormalization (gm, s3, o3, m3, var3)
        }
        """,
        w1=(6, 2, 3, 3), b1=(6,), s1=(6,), o1=(6,), m1=(6,), var1=(6,),
        w2=(3, 6, 1, 1), s2=(3,), o2=(3,), m2=(3,), var2=(3,),
        w3=(5, 3), b3=(5,), s3=(5,), o3=(5,), m3=(5,), var3=(5,),
    )


def messy_model() -> Model:
    """Constants of every attribute kind, a foldable chain, Identity/Dropout, dead code, an
    overridable initializer (graph input with a default) and a graph output behind an Identity."""
    return model_from_text(
        OPSET
        + """
        g (float[2,3] x, float[3] bias) => (float[2,3] y, float[2,3] z) <float[3] bias = {0.5, -1.0, 2.0}, float[3] unused_w = {1.0, 2.0, 3.0}> {
            k = Constant <value = float[3] {1.0, 2.0, 3.0}> ()
            f = Constant <value_float = 2.0> ()
            fs = Constant <value_floats = [1.0, 1.0, 1.0]> ()
            i = Constant <value_int = 1> ()
            shape = Constant <value_ints = [2, 3]> ()
            kf = Mul (k, f)
            kfs = Add (kf, fs)
            a = Add (x, kfs)
            ab = Add (a, bias)
            xr = Reshape (ab, shape)
            h = Identity (xr)
            d = Dropout <seed = 0> (h)
            ic = Cast <to = 1> (i)
            y = Mul (d, ic)
            dead = Sigmoid (x)
            z = Identity (y)
        }
        """
    )


CONTRACT_MODELS: dict[str, Callable[[], Model]] = {"conv_bn": conv_bn_model, "messy": messy_model}


# --------------------------------------------------------------------------------------------
# A real model: a small torch CNN, exported once per session, fed real digit images
# --------------------------------------------------------------------------------------------

DIGITS_BATCH = 16


@functools.lru_cache(maxsize=1)
def _torch_cnn_bytes() -> bytes:
    import torch

    class SmallCnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(8)
            self.drop = torch.nn.Dropout(0.3)
            self.fc = torch.nn.Linear(8 * 8 * 8, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.drop(torch.relu(self.bn(self.conv(x)))), 1))

    torch.manual_seed(0)
    net = SmallCnn().eval()
    with torch.no_grad():  # non-trivial statistics, else folding BN would be a no-op
        net.bn.running_mean.uniform_(-1.0, 1.0)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-1.0, 1.0)
    # dynamo=True with optimize=False keeps BatchNormalization, Dropout (as Identity) and Constant
    # nodes; the TorchScript exporter (dynamo=False) already folds BN into the Conv in eval mode.
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecation
        path = os.path.join(folder, "cnn.onnx")
        torch.onnx.export(
            net, (torch.zeros(DIGITS_BATCH, 1, 8, 8),), path, input_names=["x"], output_names=["logits"],
            dynamo=True, optimize=False, verbose=False, external_data=False,
        )
        with open(path, "rb") as handle:
            return handle.read()


def torch_cnn_model() -> Model:
    """A fresh IR copy of the exported CNN (Conv, BatchNormalization, Relu, Identity, Reshape, Gemm)."""
    return from_proto(onnx.load_from_string(_torch_cnn_bytes()))


def digits_feeds() -> dict[str, np.ndarray]:
    """Real inputs: the first images of scikit-learn's bundled digits (no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:DIGITS_BATCH].astype(np.float32) / 16.0
    return {"x": images[:, None, :, :]}



# --------------------------------------------------------------------------------------------
# ONNX Runtime as the integer oracle
# --------------------------------------------------------------------------------------------

_INTEGER_MAC_WEIGHT = {"ConvInteger": 1, "MatMulInteger": 1}


def ort_exact_form(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every uint8 x int8 ConvInteger/MatMulInteger whose int8 operand is an
    initializer re-encoded offset-binary (uint8 ``w + 128``, zero point ``zp + 128``): the same
    integers, but run by ONNX Runtime's exact u8 x u8 kernels. Returned unchanged where ORT's
    u8 x s8 kernels are exact (``compiler.verify.ort_u8s8_is_exact``). Lets a test keep ORT as
    the oracle for the u8 x s8 op combinations the converters support, on every host.

    Raises:
        AssertionError: a u8 x s8 op whose int8 operand is not an initializer (cannot re-encode).
    """
    from compiler.verify import ort_u8s8_is_exact

    if ort_u8s8_is_exact():
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info]}
    dtypes.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type not in _INTEGER_MAC_WEIGHT or len(node.input) < 2:
            continue
        a, w = node.input[0], node.input[1]
        if dtypes.get(a) != onnx.TensorProto.UINT8 or dtypes.get(w) != onnx.TensorProto.INT8:
            continue
        assert w in inits, f"{node.name}: int8 operand {w!r} is not an initializer; ORT is not exact for it here"
        values = onnx.numpy_helper.to_array(inits[w]).astype(np.int16)
        zp_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
        zp = onnx.numpy_helper.to_array(inits[zp_name]).astype(np.int16) if zp_name else np.int16(0)
        new_w, new_zp = f"{w}__u8_{node.name}", f"{zp_name or 'w_zp'}__u8_{node.name}"
        graph.initializer.append(onnx.numpy_helper.from_array((values + 128).astype(np.uint8), new_w))
        graph.initializer.append(onnx.numpy_helper.from_array((zp + 128).astype(np.uint8), new_zp))
        inputs = list(node.input) + [""] * (4 - len(node.input))
        if not inputs[2]:
            zero = f"a_zp0__{node.name}"
            graph.initializer.append(onnx.numpy_helper.from_array(np.array(0, np.uint8), zero))
            inputs[2] = zero
        inputs[1], inputs[3] = new_w, new_zp
        del node.input[:]
        node.input.extend(inputs)
    return model


def weight_codes(model: Model) -> dict[str, np.ndarray]:
    """The signed weight codes (weight minus its zero point) of every ConvInteger/MatMulInteger
    with a constant weight, keyed by the weight initializer's name: what the integer form means, whatever its storage
    (offset-binary uint8 next to uint8 activations, int8 otherwise, packed int4 nibbles: keyed by
    the packed initializer ``<layer>_w_q4``)."""
    from compiler.ir import constant_array
    from passes.quantize.int4 import INT4_ZERO_POINT, match_packed_weight

    codes = {}
    for node in model.graph:
        if node.op_type not in _INTEGER_MAC_WEIGHT or len(node.inputs) < 2:
            continue
        weight = constant_array(node.inputs[1])
        if weight is None:
            packed = match_packed_weight(node.inputs[1])
            if packed is not None:  # packed int4 (passes.quantize.int4): keyed by the packed initializer
                codes[packed.packed_name] = packed.codes.astype(np.int64)
                zero = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
                assert zero is not None and int(zero) == INT4_ZERO_POINT, f"{node.name}: packed int4 weight without zero point 8"
            continue
        zero = constant_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        codes[node.inputs[1].name] = weight.astype(np.int64) - (zero.astype(np.int64) if zero is not None else 0)
    return codes
