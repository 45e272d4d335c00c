"""Packed int4 weights through TVM (targets/lowering/int4.py): the library keeps them packed and
the outputs stay bit-exact, reference == ONNX Runtime == TVM."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from compiler.accuracy import load_npz_feeds, split_batches  # noqa: E402
from compiler.context import CompileContext  # noqa: E402
from compiler.ir import copy_model, load_model, to_proto  # noqa: E402
from compiler.pipeline import Pipeline  # noqa: E402
from compiler.reference import run_reference  # noqa: E402
from compiler.verify import run_onnxruntime  # noqa: E402
from passes.quantize.int4 import match_packed_weight, pack_int4  # noqa: E402
from targets import get_target  # noqa: E402
from targets.lowering import int4, load_library, lower_model  # noqa: E402
from tests.helpers import OPSET, model_from_text, weight_codes  # noqa: E402
from tests.tolerances import INT4_ARTIFACT_MIN_SAVING_PER_WEIGHT  # noqa: E402

pytestmark = pytest.mark.tvm

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@functools.lru_cache(maxsize=1)
def _digits():
    calib, _ = load_npz_feeds(EXAMPLES / "digits_cnn.calib.npz", ["x"])
    model = load_model(EXAMPLES / "digits_cnn.onnx")
    Pipeline.parse("canonicalize").run(model, CompileContext())
    return model, split_batches(calib, 1)[:64]


def _quantize(model, calibration, spec):
    model = copy_model(model)
    Pipeline.parse(f"canonicalize,{spec}").run(model, CompileContext(calibration=calibration))
    return to_proto(model)


def _assert_exact(proto, feeds_list, out_dir: Path):
    result = lower_model(proto, get_target("cpu"), {}, out_dir)
    library = load_library(out_dir / result.library_file, result.input_names)
    for feeds in feeds_list:
        expected = run_reference(proto, feeds)
        for what, got in (("TVM", library.run(feeds)), ("ORT", run_onnxruntime(proto, feeds))):
            for a, e in zip(got, expected, strict=True):
                assert a.dtype == e.dtype and a.shape == e.shape, what
                assert np.array_equal(a, e), f"{what} vs reference: {int((a != e).sum())} of {a.size} differ"
    return result


def test_digits_mixed_4_and_8_bits_bit_exact(tmp_path) -> None:
    model, batches = _digits()
    convs = [n.name for n in model.graph if n.op_type in ("Conv", "Gemm")]
    spec = "quantize{bits_map=" + ":".join(f"{name}@{4 if i != 1 else 8}" for i, name in enumerate(convs)) + "}"
    proto = _quantize(model, batches, spec)
    rng = np.random.default_rng(0)
    feeds = batches[:3] + [{"x": rng.uniform(-1, 17, batches[0]["x"].shape).astype(np.float32)}]
    result = _assert_exact(proto, feeds, tmp_path / "mixed")
    assert any("int4 weight tensors kept packed" in n for n in result.notes), result.notes
    unpackers = [name for name, rule in result.scheduled.items() if rule == "int4-unpack"]
    assert len(unpackers) == len(convs) - 1 and not result.unscheduled


def test_rewrite_replaces_each_unpack_subgraph_by_one_kernel() -> None:
    model, batches = _digits()
    proto = _quantize(model, batches[:2], "quantize{bits=4}")
    rewritten, notes = int4.rewrite_packed_weights(proto)
    eight = _quantize(model, batches[:2], "quantize{bits=8}")
    ops = [n.op_type for n in rewritten.graph.node]
    # the unpack subgraphs are gone; what is left is the 8-bit model's graph plus one node per layer
    assert ops.count(int4.UNPACK_OP) == 3 and "Concat" not in ops
    assert sorted(o for o in ops if o != int4.UNPACK_OP) == sorted(n.op_type for n in eight.graph.node)
    assert len(rewritten.graph.initializer) < len(proto.graph.initializer) and notes
    for node in rewritten.graph.node:
        if node.op_type in ("ConvInteger", "MatMulInteger"):
            assert len(node.input) == 3  # the weight zero point is folded into the unpack
    # an 8-bit model is returned unchanged
    assert int4.rewrite_packed_weights(eight) == (eight, [])


def _mlp(width: int = 384):
    """Gemm 256 -> width -> width -> 10: ~250K weights, so the library size is mostly weights."""
    return model_from_text(
        OPSET + f"""
        g (float[4,256] x) => (float[4,10] y) {{
            h1 = Gemm <transB=1> (x, w1, b1)
            r1 = Relu (h1)
            h2 = Gemm <transB=1> (r1, w2, b2)
            r2 = Relu (h2)
            y = Gemm <transB=1> (r2, w3, b3)
        }}""",
        w1=(width, 256), b1=(width,), w2=(width, width), b2=(width,), w3=(10, width), b3=(10,),
    )


def test_artifact_keeps_int4_packed_and_shrinks(tmp_path) -> None:
    # 512 wide (~400K weights): the packed library also carries the unpack kernels and the int8
    # rules' per-call weight packing (~10 KB of code on the AVX2 rules), which must stay small
    # next to the 0.5 B/weight the packing saves.
    model = _mlp(512)
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.standard_normal((4, 256)).astype(np.float32)} for _ in range(4)]
    packed = _quantize(model, calibration, "quantize{bits=4}")
    containers = _quantize(model, calibration, "quantize{bits=4,pack_int4=false}")
    feeds = calibration[:2]
    sizes = {}
    for name, proto in (("packed", packed), ("containers", containers)):
        result = _assert_exact(proto, feeds, tmp_path / name)
        sizes[name] = (tmp_path / name / result.library_file).stat().st_size
    weights = sum(c.size for c in weight_codes(from_proto_model(containers)).values())
    saved = sizes["containers"] - sizes["packed"]
    print(f"library {sizes}: {saved} bytes saved for {weights} int4 weights ({saved / weights:.3f} B/weight)")
    assert saved >= INT4_ARTIFACT_MIN_SAVING_PER_WEIGHT * weights
    # and the packed bytes themselves are in the library, the unpacked codes are not
    library = (tmp_path / "packed" / "model.so").read_bytes()
    pm = from_proto_model(packed)
    big = max((match_packed_weight(n.inputs[1]) for n in pm.graph if n.op_type == "MatMulInteger"), key=lambda p: p.codes.size)
    assert pack_int4(big.codes).tobytes()[:4096] in library
    assert big.codes.astype(np.int8).tobytes()[:4096] not in library


def from_proto_model(proto):
    from compiler.ir import from_proto

    return from_proto(proto)
