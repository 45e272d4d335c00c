"""Small ONNX-text models for the pruning tests, and the independent "zero the channels" helper."""

from __future__ import annotations

import numpy as np

from compiler.context import CompileContext
from compiler.ir import Model, constant_array, ir
from compiler.pipeline import Pipeline
from tests.helpers import OPSET, model_from_text


def prepared(model: Model) -> Model:
    """Establish what prune-channels needs (lifted constants, folded BN, shapes)."""
    Pipeline.parse("canonicalize").run(model, CompileContext())
    return model


def residual_model(c: int = 8) -> Model:
    """Conv -> Relu, 1x1 Conv branch, residual Add, Conv, GAP -> Flatten -> Gemm."""
    return model_from_text(
        OPSET
        + f"""
        g (float[2,3,8,8] x) => (float[2,4] y) {{
            a = Conv <pads=[1,1,1,1]> (x, wa, ba)
            ra = Relu (a)
            b = Conv (ra, wb)
            s = Add (ra, b)
            rs = Relu (s)
            c = Conv <pads=[1,1,1,1]> (rs, wc)
            r = Relu (c)
            p = GlobalAveragePool (r)
            f = Flatten (p)
            y = Gemm <transB=1> (f, wf, bf)
        }}
        """,
        wa=(c, 3, 3, 3), ba=(c,), wb=(c, c, 1, 1), wc=(c, c, 3, 3), wf=(4, c), bf=(4,),
    )


def concat_model() -> Model:
    """Two Convs of 6 and 10 channels concatenated on the channels, Relu, a 1x1 Conv, GAP, Gemm."""
    return model_from_text(
        OPSET
        + """
        g (float[2,3,6,6] x) => (float[2,3] y) {
            a = Conv <pads=[1,1,1,1]> (x, wa)
            b = Conv (x, wb, bb)
            cat = Concat <axis=1> (a, b)
            r = Relu (cat)
            c = Conv (r, wc)
            p = GlobalAveragePool (c)
            f = Flatten (p)
            y = Gemm <transB=1> (f, wf)
        }
        """,
        wa=(6, 3, 3, 3), wb=(10, 3, 1, 1), bb=(10,), wc=(5, 16, 1, 1), wf=(3, 5),
    )


def depthwise_flatten_model() -> Model:
    """1x1 Conv -> Clip -> depthwise 3x3 Conv -> Relu -> MaxPool -> Flatten -> Gemm (the features
    of channel c are c*16 .. c*16+15)."""
    return model_from_text(
        OPSET
        + """
        g (float[2,3,8,8] x) => (float[2,5] y) <float lo = {0.0}, float hi = {6.0}> {
            a = Conv (x, wa, ba)
            ca = Clip (a, lo, hi)
            d = Conv <group=8, pads=[1,1,1,1]> (ca, wd, bd)
            rd = Relu (d)
            m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (rd)
            f = Flatten (m)
            y = Gemm <transB=1> (f, wf, bf)
        }
        """,
        wa=(8, 3, 1, 1), ba=(8,), wd=(8, 1, 3, 3), bd=(8,), wf=(5, 128), bf=(5,),
    )


def grouped_model() -> Model:
    """A Conv of 8 channels read by a group-2 Conv (4 inputs per group) and a 1x1 Conv."""
    return model_from_text(
        OPSET
        + """
        g (float[2,3,6,6] x) => (float[2,3,6,6] y) {
            a = Conv (x, wa)
            ra = Relu (a)
            gc = Conv <group=2, pads=[1,1,1,1]> (ra, wg, bg)
            rg = Relu (gc)
            y = Conv (rg, wy)
        }
        """,
        wa=(8, 3, 1, 1), wg=(6, 4, 3, 3), bg=(6,), wy=(3, 6, 1, 1),
    )


def pad_resize_split_model() -> Model:
    """Conv -> Pad (spatial) -> Resize x2 -> Split 3/5 on the channels -> two 1x1 Convs -> Add."""
    return model_from_text(
        OPSET
        + """
        g (float[1,3,6,6] x) => (float[1,4,16,16] y) <int64[8] pads = {0,0,1,1,0,0,1,1}, float[4] sc = {1.0,1.0,2.0,2.0}, int64[2] sp = {3,5}> {
            a = Conv <pads=[1,1,1,1]> (x, wa, ba)
            p = Pad <mode="reflect"> (a, pads)
            rz = Resize <mode="nearest"> (p, , sc)
            s1, s2 = Split <axis=1> (rz, sp)
            c1 = Conv (s1, w1)
            c2 = Conv (s2, w2)
            y = Add (c1, c2)
        }
        """,
        wa=(8, 3, 3, 3), ba=(8,), w1=(4, 3, 1, 1), w2=(4, 5, 1, 1),
    )


def unknown_op_model() -> Model:
    """Channels of conv 'a' reach a Softmax over the channel axis (not understood: its group is
    ineligible); conv 'b' is pruned normally."""
    return model_from_text(
        OPSET
        + """
        g (float[1,3,6,6] x) => (float[1,8,6,6] y, float[1,4,6,6] z) {
            a = Conv (x, wa)
            sm = Softmax <axis=1> (a)
            y = Relu (sm)
            b = Conv (x, wb)
            rb = Relu (b)
            z = Conv (rb, wz)
        }
        """,
        wa=(8, 3, 1, 1), wb=(8, 3, 1, 1), wz=(4, 8, 1, 1),
    )


def reshape_model() -> Model:
    """A Reshape [1,8,4,4] -> [1,4,32] that is not a flatten: its group is ineligible."""
    return model_from_text(
        OPSET
        + """
        g (float[1,3,4,4] x) => (float[1,4,32] y) <int64[3] shape = {1,4,32}> {
            a = Conv (x, wa)
            y = Reshape (a, shape)
        }
        """,
        wa=(8, 3, 1, 1),
    )


TEXT_MODELS = {
    "residual": residual_model,
    "concat": concat_model,
    "depthwise_flatten": depthwise_flatten_model,
    "grouped": grouped_model,
    "pad_resize_split": pad_resize_split_model,
}


def zero_removed_channels(model: Model, removed: dict[str, tuple[int, np.ndarray]]) -> int:
    """Zero, in ``model``, the input weights through which any consumer reads a removed channel.

    Written independently of the pass: for every tensor named in ``removed`` and every Conv
    (group 1), Gemm or MatMul that reads it as its data input, the weight slice of those input
    channels/features becomes 0 (a new initializer; the old tensor is untouched). Afterwards the
    removed channels cannot influence any output. Returns the number of weights rewritten.
    """
    values = {v.name: v for node in model.graph for v in node.outputs}
    rewritten = 0
    for name, (_, indices) in removed.items():
        for use in list(values[name].uses()):
            node = use.node
            if use.idx != 0 or node.op_type not in ("Conv", "Gemm", "MatMul"):
                continue
            group = node.attributes.get("group")
            if node.op_type == "Conv" and group is not None and group.as_int() > 1:
                continue  # a grouped Conv passes channels through: its own outputs are in `removed`
            weight = constant_array(node.inputs[1]).copy()
            trans_b = node.attributes.get("transB")
            if node.op_type == "Conv" or (node.op_type == "Gemm" and trans_b is not None and trans_b.as_int()):
                weight[:, indices] = 0.0
            else:
                weight[indices, :] = 0.0
            tensor = ir.tensor(weight, name=f"{node.inputs[1].name}_zeroed")
            value = ir.Value(name=tensor.name, shape=ir.Shape(weight.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
            model.graph.register_initializer(value)
            node.replace_input_with(1, value)
            rewritten += 1
    return rewritten
