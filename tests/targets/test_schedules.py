"""Default CPU schedule rules (targets/lowering/schedules): each rule claims its op family, the
scheduled code equals ONNX Runtime / numpy within the TVM tolerance, and a small CNN is scheduled
completely.

Every case is a small ONNX graph built in the test (ONNX text format + seeded initializers), run
through the same preparation as targets/lowering/build.py (DecomposeOpsForInference ->
CanonicalizeBindings -> zero pipeline) and compiled for this host's CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compiler.verify import compare
from tests.tolerances import TVM_BACKEND

tvm = pytest.importorskip("tvm")
pytestmark = pytest.mark.tvm

from tvm import relax  # noqa: E402
from tvm.target import codegen  # noqa: E402

import tvm.relax.frontend.onnx  # noqa: E402,F401  (registers relax.frontend.onnx)
from targets.lowering.schedules import ScheduleReport, apply_default_schedules  # noqa: E402
from targets.lowering.schedules import common  # noqa: E402
from targets.lowering.schedules.conv2d import choose_pixel_tile, choose_tile, pixel_chunk_vectors  # noqa: E402
from targets.lowering.schedules.matmul import Matmul  # noqa: E402

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def host_target(mcpu: str | None = None) -> tvm.target.Target:
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu or codegen.llvm_get_system_cpu(), "num-cores": 2})


def make_model(
    graph: str, initializers: dict[str, tuple[int, ...]] | None = None, scalars: dict[str, float] | None = None
) -> onnx.ModelProto:
    """Parse ONNX text; add seeded random initializers (name -> shape) and scalar constants."""
    proto = onnx.parser.parse_model(HEADER + graph)
    rng = np.random.default_rng(0)
    for name, shape in (initializers or {}).items():
        proto.graph.initializer.append(
            onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.2, name)
        )
    for name, value in (scalars or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.float32), name))
    onnx.checker.check_model(proto)
    return proto


def feeds_for(proto: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def ort_reference(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def compile_onnx(proto, feeds, target=None, rules=None):
    """ONNX -> Relax -> build.py's preparation -> our schedules -> tvm.compile; returns outputs."""
    target = target or host_target()
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    mod = relax.frontend.onnx.from_onnx(proto, shape_dict=shapes)
    with target:
        mod = relax.transform.DecomposeOpsForInference()(mod)
        mod = relax.transform.CanonicalizeBindings()(mod)
        mod = relax.get_pipeline("zero")(mod)
        mod, report = apply_default_schedules(mod, target, rules=rules)
        ex = tvm.compile(mod, target=target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[i.name]) for i in proto.graph.input if i.name in feeds])
    outs = [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]
    return outs, report, mod


def check(proto, expect: dict[str, str], target=None):
    """Compile, compare with ORT, and assert that each fused function whose name contains a key of
    ``expect`` was claimed by the rule named by its value."""
    feeds = feeds_for(proto)
    outs, report, _ = compile_onnx(proto, feeds, target)
    result = compare(outs, ort_reference(proto, feeds), TVM_BACKEND)
    assert result["passed"], result
    assert report.unscheduled == [], report
    for key, rule in expect.items():
        claimed = {name: r for name, r in report.scheduled.items() if key in name}
        assert claimed, f"no function matching '{key}' in {report.scheduled}"
        assert set(claimed.values()) == {rule}, claimed
    return report


CONV = """
agraph (float[1, 16, 20, 20] x) => (float[1, {f}, {o}, {o}] y) {{
    c = Conv <kernel_shape = [{k}, {k}], pads = [{p}, {p}, {p}, {p}], strides = [{s}, {s}]> (x, w, b)
    y = Relu (c)
}}
"""


@pytest.mark.parametrize(
    "k,s,p,f",
    [(3, 1, 1, 32), (3, 2, 1, 48), (1, 1, 0, 24), (7, 2, 3, 16)],
    ids=["3x3s1", "3x3s2", "1x1", "7x7s2"],
)
def test_conv2d_direct(k, s, p, f):
    o = (20 + 2 * p - k) // s + 1
    proto = make_model(CONV.format(k=k, s=s, p=p, f=f, o=o), {"w": (f, 16, k, k), "b": (f,)})
    report = check(proto, {"conv2d": "conv2d-direct"})
    # The constant weight was re-laid out at compile time (split out and folded).
    assert all(name.endswith("_prepacked") for name in report.scheduled), report


@pytest.mark.parametrize("c,hw,s", [(32, 14, 1), (16, 28, 2)], ids=["dw14", "dw28-s2"])
def test_channel_blocked_depthwise_batch_is_exact(c, hw, s):
    """Batch 3 through the channel-blocked depthwise nest (padded copy made per image)."""
    o = (hw - 1) // s + 1
    graph = f"""
    agraph (float[3, {c}, {hw}, {hw}] x) => (float[3, {c}, {o}, {o}] y) {{
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [{s}, {s}], group = {c}> (x, w, b)
    }}
    """
    proto = make_model(graph, {"w": (c, 1, 3, 3), "b": (c,)})
    feeds = feeds_for(proto)
    outs, report, mod = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    assert list(report.scheduled.values()) == ["conv2d-grouped"], report


@pytest.mark.parametrize("k,p,c", [(3, 1, 16), (1, 0, 96)], ids=["3x3", "1x1-channels"])
def test_conv2d_batch_is_exact(k, p, c):
    """Batch 3: the channels-last copy is made per image, right before that image's tiles."""
    graph = f"""
    agraph (float[3, {c}, 12, 12] x) => (float[3, 24, 12, 12] y) {{
        y = Conv <kernel_shape = [{k}, {k}], pads = [{p}, {p}, {p}, {p}]> (x, w, b)
    }}
    """
    proto = make_model(graph, {"w": (24, c, k, k), "b": (24,)})
    feeds = feeds_for(proto)
    outs, report, _ = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    assert list(report.scheduled.values()) == ["conv2d-direct"], report


@pytest.mark.parametrize("k,s,p", [(3, 1, 1), (1, 2, 0), (3, 1, 0)], ids=["padded", "1x1s2-unpadded", "3x3-unpadded"])
def test_conv2d_reads_channels_last_copy(k, s, p):
    """The direct conv reads its input from a channels-last [n, h, w, c] copy: the padding stage
    re-laid out when the conv pads, a transposing copy otherwise."""
    o = (20 + 2 * p - k) // s + 1
    proto = make_model(CONV.format(k=k, s=s, p=p, f=32, o=o), {"w": (32, 16, k, k), "b": (32,)})
    feeds = feeds_for(proto)
    outs, report, mod = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    (name,) = report.scheduled
    side = 20 + 2 * p
    assert f"(T.int64(1), T.int64({side}), T.int64({side}), T.int64(16))" in mod[name].script()


def test_conv2d_residual_epilogue_stays_fused():
    """conv + bias + residual add + relu is one function, scheduled as one conv kernel."""
    proto = make_model(
        """
        agraph (float[1, 32, 14, 14] x) => (float[1, 32, 14, 14] y) {
            c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w, b)
            r = Add (c, x)
            y = Relu (r)
        }
        """,
        {"w": (32, 32, 3, 3), "b": (32,)},
    )
    report = check(proto, {"conv2d": "conv2d-direct"})
    assert len(report.scheduled) == 1, report  # the epilogue did not become separate kernels


def test_conv2d_runtime_weight_is_packed_per_call():
    """A weight that is a graph input cannot be packed at compile time: the packing stage stays
    inside the conv function (repacked on every call) and the result is still exact."""
    proto = make_model(
        """
        agraph (float[1, 8, 12, 12] x, float[32, 8, 3, 3] w) => (float[1, 32, 12, 12] y) {
            y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w)
        }
        """
    )
    feeds = feeds_for(proto)
    outs, report, mod = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    assert list(report.scheduled.values()) == ["conv2d-direct"], report
    (name,) = report.scheduled
    assert not name.endswith("_prepacked"), report  # not split out: the weight is not a constant
    assert "w_global" in mod[name].script()  # the in-function packing stage


@pytest.mark.parametrize("groups,cin,cout", [(32, 32, 32), (4, 32, 16)], ids=["depthwise", "grouped"])
def test_grouped_conv(groups, cin, cout):
    proto = make_model(
        f"""
        agraph (float[1, {cin}, 15, 15] x) => (float[1, {cout}, 15, 15] y) {{
            c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = {groups}> (x, w, b)
            y = Clip (c, lo, hi)
        }}
        """,
        {"w": (cout, cin // groups, 3, 3), "b": (cout,)},
        {"lo": 0.0, "hi": 0.3},
    )
    check(proto, {"conv2d": "conv2d-grouped"})


def test_dense():
    proto = make_model(
        """
        agraph (float[3, 200] x) => (float[3, 100] y) {
            g = Gemm <transB = 1> (x, w, b)
            y = Relu (g)
        }
        """,
        {"w": (100, 200), "b": (100,)},
    )
    check(proto, {"matmul": "matmul"})


def test_matmul_constant_weight_is_prepacked():
    """A constant [K, N] weight (MatMul, no transpose) is packed to [N/tile, K, tile] at compile
    time (the function is renamed *_prepacked), exact vs ORT; a matrix-vector product gets a
    multi-vector tile (several independent accumulators)."""
    proto = make_model(
        """
        agraph (float[1, 96] x) => (float[1, 200] y) {
            m = MatMul (x, w)
            y = Add (m, b)
        }
        """,
        {"w": (96, 200), "b": (200,)},
    )
    report = check(proto, {"matmul": "matmul"})
    assert all(name.endswith("_prepacked") for name in report.scheduled), report
    from targets.lowering.schedules.matmul import choose_tile

    assert choose_tile(1, 1000, 8, 16) == (8, 5, 1)  # 125 vectors: 5 accumulators, not 1
    v, nb, _ = choose_tile(1, 1000, 16, 32)
    assert v * nb == 40  # AVX-512: 1000 is not a multiple of 16 lanes, so 5 vectors of 8


def test_batch_matmul_attention_shapes():
    proto = make_model(
        """
        agraph (float[2, 4, 32, 16] q, float[2, 4, 16, 32] k) => (float[2, 4, 32, 32] y) {
            s = MatMul (q, k)
            y = Mul (s, scale)
        }
        """,
        scalars={"scale": 0.25},
    )
    check(proto, {"matmul": "matmul"})


def test_matmul_transposed_operand_is_packed():
    """B stored [N, K] (NT layout): the rule packs it to [N/tile, K, tile] and stays exact."""
    from tvm.script import tirx as T

    @T.prim_func(private=True, s_tir=True)
    def nt_matmul(a: T.Buffer((T.int64(6), T.int64(40)), "float32"), b: T.Buffer((T.int64(48), T.int64(40)), "float32"),
                  c: T.Buffer((T.int64(6), T.int64(48)), "float32")):
        T.func_attr({"tirx.noalias": True})
        for i, j, k in T.grid(T.int64(6), T.int64(48), T.int64(40)):
            with T.sblock("matmul"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    c[vi, vj] = T.float32(0.0)
                c[vi, vj] = c[vi, vj] + a[vi, vk] * b[vj, vk]

    target = host_target()
    sch = Matmul().apply(nt_matmul, target, False)
    assert sch is not None
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    assert any(n.endswith("_global") for n in names), names  # the packing stage
    with target:
        lib = tvm.compile(tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")}), target=target)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 40)).astype(np.float32), rng.standard_normal((48, 40)).astype(np.float32)
    c = tvm.runtime.tensor(np.zeros((6, 48), np.float32))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    assert compare([c.numpy()], [a @ b.T], TVM_BACKEND)["passed"]


def test_softmax():
    proto = make_model(
        """
        agraph (float[2, 4, 24, 40] x) => (float[2, 4, 24, 40] y) {
            y = Softmax <axis = -1> (x)
        }
        """
    )
    check(proto, {"softmax": "reduction"})


def test_layernorm():
    proto = make_model(
        """
        agraph (float[1, 32, 64] x) => (float[1, 32, 64] y) {
            y = LayerNormalization <axis = -1, epsilon = 0.00001> (x, g, b)
        }
        """,
        {"g": (64,), "b": (64,)},
    )
    check(proto, {"layer_norm": "reduction"})


def test_pooling():
    proto = make_model(
        """
        agraph (float[1, 16, 30, 30] x) => (float[1, 16, 1, 1] y) {
            m = MaxPool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]> (x)
            y = GlobalAveragePool (m)
        }
        """
    )
    check(proto, {"max_pool2d": "maxpool", "mean": "reduction"})


@pytest.mark.parametrize(
    "hw,k,s,p", [(112, 3, 2, 1), (15, 3, 1, 1), (28, 2, 2, 0), (17, 3, 2, 0)],
    ids=["resnet-stem-pool", "s1-pad", "2x2s2", "odd-unpadded"],
)
def test_maxpool_float(hw, k, s, p):
    """fp32 max pooling goes to the MaxPool rule (per-plane padding, vectorized window taps) and
    equals ONNX Runtime exactly in value (max is exact in any order)."""
    o = (hw + 2 * p - k) // s + 1
    proto = make_model(
        f"""
        agraph (float[1, 8, {hw}, {hw}] x) => (float[1, 8, {o}, {o}] y) {{
            y = MaxPool <kernel_shape = [{k}, {k}], pads = [{p}, {p}, {p}, {p}], strides = [{s}, {s}]> (x)
        }}
        """
    )
    feeds = feeds_for(proto)
    outs, report, _ = compile_onnx(proto, feeds)
    assert list(report.scheduled.values()) == ["maxpool"], report
    np.testing.assert_array_equal(outs[0], ort_reference(proto, feeds)[0])


def test_elementwise_chain():
    proto = make_model(
        """
        agraph (float[1, 8, 33, 40] x, float[1, 8, 1, 40] z) => (float[1, 40, 33, 8] y) {
            a = Add (x, z)
            s = Sigmoid (a)
            m = Mul (s, a)
            y = Transpose <perm = [0, 3, 2, 1]> (m)
        }
        """
    )
    report = check(proto, {"": "injective"})
    assert len(report.scheduled) == 1, report  # the chain is one fused, scheduled function


def test_small_cnn_fully_scheduled():
    """conv -> depthwise -> 1x1 -> maxpool -> global pool -> linear: nothing left unscheduled."""
    proto = make_model(
        """
        agraph (float[1, 3, 32, 32] x) => (float[1, 10] y) {
            c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]> (x, w1, b1)
            r1 = Relu (c1)
            c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 16> (r1, w2, b2)
            r2 = Clip (c2, lo, hi)
            c3 = Conv <kernel_shape = [1, 1]> (r2, w3, b3)
            s = Add (c3, r1)
            p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (s)
            g = GlobalAveragePool (p)
            f = Flatten (g)
            y = Gemm <transB = 1> (f, w4, b4)
        }
        """,
        {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 1, 3, 3), "b2": (16,), "w3": (16, 16, 1, 1),
         "b3": (16,), "w4": (10, 16), "b4": (10,)},
        {"lo": 0.0, "hi": 6.0},
    )
    report = check(proto, {"max_pool2d": "maxpool"})
    assert isinstance(report, ScheduleReport)
    rules = set(report.scheduled.values())
    assert {"conv2d-direct", "conv2d-grouped", "matmul", "maxpool", "reduction"} <= rules, report


def test_avx2_register_budget():
    """On a 16-register (AVX2) target the tiles shrink and the code is still exact."""
    target = host_target("haswell")
    assert common.vector_registers(target) == 16
    v, nb, xt = choose_tile(64, 56, common.vector_lanes(target, "float32"), 16)
    assert v == 8 and nb * (xt + 1) + 1 <= 16
    proto = make_model(CONV.format(k=3, s=1, p=1, f=32, o=20), {"w": (32, 16, 3, 3), "b": (32,)})
    feeds = feeds_for(proto)
    outs, report, _ = compile_onnx(proto, feeds, target)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    assert set(report.scheduled.values()) == {"conv2d-direct"}


def test_register_tile_respects_budget():
    for n_vec in (1, 2, 3, 4, 8, 9):
        for extent in (7, 14, 28, 56, 112, 13):
            nb, t = common.register_tile(n_vec, extent, 32)
            assert n_vec % nb == 0 and extent % t == 0
            assert nb * t + nb + 1 <= 32
    assert common.register_tile(4, 56, 32) == (2, 14)


def test_conv_tile_may_leave_a_partial_last_tile():
    """AVX2 widths of 7 * 2^k get a 10-12 accumulator tile with a partial last tile (the exact
    divisors allow only 8); 7 columns, AVX-512 and the pointwise kernels keep the exact tile."""
    assert choose_tile(64, 56, 8, 16) == (8, 2, 6)  # 9 full tiles + 2 columns
    assert choose_tile(256, 14, 8, 16) == (8, 2, 5)  # 5 + 5 + 4
    assert choose_tile(512, 7, 8, 16) == (8, 1, 7)
    assert choose_tile(64, 56, 16, 32) == (16, 2, 14)
    v, nb, xt = choose_tile(64, 56, 8, 16, partial=False)
    assert 56 % xt == 0 and (v, nb * xt) == (8, 8)


@pytest.mark.parametrize("o,s", [(14, 1), (13, 2)], ids=["14-cols", "s2-13-cols"])
def test_conv2d_partial_tile_is_exact(o, s):
    """A tile whose last one is partial (14 = 5 + 5 + 4; 13 = 6 + 6 + 1) computes exactly the columns it
    covers, with a residual epilogue in the write-back, on the 16-register budget."""
    target = host_target("haswell")
    c = 16
    hw = o * s
    assert choose_tile(32, o, 8, 16)[2] not in (1, o) and o % choose_tile(32, o, 8, 16)[2]
    proto = make_model(
        f"""
        agraph (float[1, {c}, {hw}, {hw}] x, float[1, 32, {o}, {o}] r) => (float[1, 32, {o}, {o}] y) {{
            t = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [{s}, {s}]> (x, w, b)
            a = Add (t, r)
            y = Relu (a)
        }}
        """,
        {"w": (32, c, 3, 3), "b": (32,)},
    )
    report = check(proto, {"conv2d": "conv2d-direct"}, target)
    assert len(report.scheduled) == 1, report


PIXEL_1X1 = """
agraph (float[1, {c}, {hw}, {hw}] x, float[1, {f}, {hw}, {hw}] r) => (float[1, {f}, {hw}, {hw}] y) {{
    c1 = Conv <kernel_shape = [1, 1]> (x, w, b)
    a = Add (c1, r)
    y = Clip (a, lo, hi)
}}
"""


@pytest.mark.parametrize("c,f,hw", [(16, 24, 16), (8, 96, 20), (32, 20, 8), (32, 48, 64), (96, 24, 16)],
                         ids=["16to24", "8to96", "32to20", "32to48-chunked", "96to24-projection"])
def test_conv1x1_pixel_gemm(c, f, hw):
    """1x1 stride-1 convs with few input channels, or projections (C >= F), take the
    pixel-vectorized GEMM path (flattened image, contiguous accumulator stores) with the
    residual/clip epilogue fused, exact vs ORT."""
    proto = make_model(PIXEL_1X1.format(c=c, f=f, hw=hw), {"w": (f, c, 1, 1), "b": (f,)}, {"lo": 0.0, "hi": 6.0})
    feeds = feeds_for(proto)
    outs, report, mod = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    assert list(report.scheduled.values()) == ["conv2d-direct"], report
    (name,) = report.scheduled
    # The accumulator is the flattened [n, f, pixels] tile, not the channel-last [n, y, x, f] one.
    assert f"(T.int64(1), T.int64({f}), T.int64({hw * hw}))" in mod[name].script()


def test_conv1x1_expansion_with_many_channels_stays_channel_vectorized():
    """A 1x1 expansion with many input channels (C > 64, F > C) keeps the channel-vectorized
    kernel on AVX2 (its [n, pixels, f] accumulator), where the pixel GEMM measured slower."""
    target = host_target()
    if common.vector_registers(target) > 16:
        pytest.skip("AVX-512 host: the pixel tile is large enough to take every 1x1 conv")
    c, f, hw = 72, 144, 8
    proto = make_model(PIXEL_1X1.format(c=c, f=f, hw=hw), {"w": (f, c, 1, 1), "b": (f,)}, {"lo": 0.0, "hi": 6.0})
    feeds = feeds_for(proto)
    outs, report, mod = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    (name,) = report.scheduled
    script = mod[name].script()
    assert f"(T.int64(1), T.int64({hw * hw}), T.int64({f}))" in script
    assert f"(T.int64(1), T.int64({f}), T.int64({hw * hw}))" not in script


def test_pixel_chunk_fits_budget():
    """Pixel chunks: whole pixel blocks, an exact divisor of the image's blocks, input <= budget."""
    assert pixel_chunk_vectors(784, 2048, 32 * 1024) == 16  # 64x64 px, 32 ch fp32, 2 x 8 px blocks
    assert pixel_chunk_vectors(392, 4096, 32 * 1024) == 8
    assert pixel_chunk_vectors(49, 4096, 32 * 1024) == 7  # 7 is the largest divisor of 49 <= 8
    assert pixel_chunk_vectors(10, 1 << 20, 32 * 1024) == 1  # one block already over budget
    for blocks, block_bytes in ((1568, 1024), (98, 3072), (13, 512)):
        chunk = pixel_chunk_vectors(blocks, block_bytes, 32 * 1024)
        assert blocks % chunk == 0 and (chunk == 1 or chunk * block_bytes <= 32 * 1024)


def test_pixel_tile_choice():
    assert choose_pixel_tile(12544, 96, 16, 32) == (4, 6)
    assert choose_pixel_tile(784, 192, 16, 32) == (7, 3)
    assert choose_pixel_tile(196, 64, 16, 32) is None  # 14x14 does not fill whole vectors
    for pixels, f in ((12544, 16), (3136, 144), (784, 32), (256, 20)):
        nb, t = choose_pixel_tile(pixels, f, 16, 32)
        assert (pixels // 16) % nb == 0 and f % t == 0 and nb * t + nb + 1 <= 32


@pytest.mark.parametrize("hw,s", [(30, 2), (17, 2), (20, 3)], ids=["s2-even", "s2-odd", "s3"])
def test_strided_depthwise(hw, s):
    """Strided depthwise conv: de-interleaved, vectorized per-tile padding; exact vs ORT."""
    o = (hw + 2 - 3) // s + 1
    proto = make_model(
        f"""
        agraph (float[1, 24, {hw}, {hw}] x) => (float[1, 24, {o}, {o}] y) {{
            c = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [{s}, {s}], group = 24> (x, w, b)
            y = Relu (c)
        }}
        """,
        {"w": (24, 1, 3, 3), "b": (24,)},
    )
    check(proto, {"conv2d": "conv2d-grouped"})


@pytest.mark.parametrize("mcpu,blocked", [("znver3", True), ("znver4", False)], ids=["avx2", "avx512"])
def test_float_depthwise_row_width_picks_the_nest_per_vector_width(mcpu, blocked):
    """A 28-wide float depthwise conv is channel-blocked with AVX2's 8 lanes (28 < 4 * 8) and
    keeps the width form with AVX-512's 16 (28 >= 16): depthwise.float_channel_blocked_width."""
    from targets.lowering.schedules.depthwise import GroupConv2d, float_channel_blocked_width

    assert float_channel_blocked_width(8) == 32 and float_channel_blocked_width(16) == 16
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((1, 32, 28, 28), "float32"))
    w = np.ones((32, 1, 3, 3), np.float32)
    with bb.function("main", [xv]):
        with bb.dataflow():
            gv = bb.emit_output(bb.emit(relax.op.nn.conv2d(xv, relax.const(w), padding=1, groups=32)))
        bb.emit_func_output(gv)
    target = host_target(mcpu)
    with target:
        mod = relax.get_pipeline("zero")(bb.get())
        (func,) = [f for _, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        sch = GroupConv2d().apply(func, target)
    lanes = common.vector_lanes(target, "float32")
    assert (f"T.int64(30), T.int64(30), T.int64({lanes}))" in sch.mod.script()) == blocked


@pytest.mark.parametrize("hw,s,p", [(14, 1, 1), (28, 2, 1), (7, 1, 0)], ids=["s1", "s2", "unpadded"])
def test_depthwise_channel_blocked(hw, s, p):
    """Depthwise convs with short output rows are vectorized over V channels: the padded copy is
    NCHW{V}c ([n, c/V, h, w, V]) and the result equals ORT within the TVM tolerance."""
    lanes = common.vector_lanes(host_target(), "float32")
    c = 2 * lanes
    o = (hw + 2 * p - 3) // s + 1
    proto = make_model(
        f"""
        agraph (float[1, {c}, {hw}, {hw}] x) => (float[1, {c}, {o}, {o}] y) {{
            d = Conv <kernel_shape = [3, 3], pads = [{p}, {p}, {p}, {p}], strides = [{s}, {s}], group = {c}> (x, w, b)
            y = Clip (d, lo, hi)
        }}
        """,
        {"w": (c, 1, 3, 3), "b": (c,)},
        {"lo": 0.0, "hi": 6.0},
    )
    feeds = feeds_for(proto)
    outs, report, mod = compile_onnx(proto, feeds)
    assert compare(outs, ort_reference(proto, feeds), TVM_BACKEND)["passed"]
    assert set(report.scheduled.values()) == {"conv2d-grouped"}, report
    (name,) = report.scheduled
    side = hw + 2 * p
    assert f"(T.int64(1), T.int64(2), T.int64({side}), T.int64({side}), T.int64({lanes}))" in mod[name].script()
