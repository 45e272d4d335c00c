"""int8 kernels for AArch64 boards with the dot-product extension (rpi5: Cortex-A76, ``sdot``).

Three layers of checks:

- the uint8 -> int8 activation shift (targets/lowering/signed_activations.py) is exact: the
  rewritten module, compiled for this x86 host, equals the int64 reference bit for bit;
- on the rpi5 target the int8 convs and matmuls are claimed by the ``sdot`` rules, and the
  cross-compiled code contains ``sdot`` (LLVM's AArch64 backend, no board needed);
- opt-in (``-m emulated``): the cross-compiled kernels run bit-exact on the emulated aarch64 board
  (tools/emulated_board.py; qemu-user's default CPU has the dot-product extension).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from targets import get_target  # noqa: E402
from targets.lowering import signed_activations  # noqa: E402
from targets.lowering import tvm_target as tvm_targets  # noqa: E402
from targets.lowering.schedules import common  # noqa: E402
from tests.targets.test_schedules_int8 import (  # noqa: E402
    _emit_requant, _requant_reference, build_prepared, compile_and_run, conv_case, conv_int64, dense_case,
    host_target,
)

pytestmark = pytest.mark.tvm

REPO = Path(__file__).resolve().parents[2]

CONV_CASES = {  # (C, H, F, K, stride, pad, requant)
    "3x3s1p1": (16, 12, 32, 3, 1, 1, True),
    "1x1s2": (32, 14, 64, 1, 2, 0, False),
    "7x7s2p3-stem": (4, 16, 16, 7, 2, 3, True),
}
DENSE_CASES = {"64x48": (8, 64, 48, True)}


def rpi5() -> tvm.target.Target:
    return tvm_targets.resolve(get_target("rpi5"))[0]


def two_conv_chain():
    """(module, input, reference): a 1x1 conv whose requantized uint8 output feeds a padded 3x3
    conv -- the shift of the second conv's input can fuse into the first conv's epilogue."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(1, 16, 10, 10)).astype(np.uint8)
    w1 = rng.integers(-127, 128, size=(32, 16, 1, 1)).astype(np.int8)
    w2 = rng.integers(-127, 128, size=(32, 32, 3, 3)).astype(np.int8)
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(xv, relax.const(w1, "int8"), out_dtype="int32"))
            y1 = _emit_requant(bb, a, 32, [1, 32, 1, 1], 3, 0, 255, 1)
            b = bb.emit(relax.op.nn.conv2d(y1, relax.const(w2, "int8"), padding=1, out_dtype="int32"))
            gv = bb.emit_output(_emit_requant(bb, b, 32, [1, 32, 1, 1], 7, 0, 255, 2))
        bb.emit_func_output(gv)
    y1_ref = _requant_reference(conv_int64(x, w1), 1, 3, 0, 255, 1)
    return bb.get(), x, _requant_reference(conv_int64(y1_ref, w2, 1), 1, 7, 0, 255, 2)


def all_cases():
    cases = {name: conv_case(c, h, f, k, s, p, rq) for name, (c, h, f, k, s, p, rq) in CONV_CASES.items()}
    cases.update({name: dense_case(m, k, n, rq) for name, (m, k, n, rq) in DENSE_CASES.items()})
    cases["chain"] = two_conv_chain()
    return cases


# --- the shift is exact (checked on this host) --------------------------------------------------


@pytest.mark.parametrize("name", [*CONV_CASES, *DENSE_CASES, "chain"])
def test_shifted_module_is_bit_exact_on_the_host(name):
    mod, x, ref = all_cases()[name]
    shifted, rewritten = signed_activations.shift_uint8_activations(mod)
    assert rewritten == (2 if name == "chain" else 1)
    assert "bitwise_xor" in shifted.script()
    y, _, _ = compile_and_run(shifted, x, host_target())
    assert y.dtype == ref.dtype and np.array_equal(y, ref)


def test_shift_leaves_what_sdot_cannot_take_alone():
    rng = np.random.default_rng(0)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "uint8"))
    x3 = relax.Var("x3", relax.TensorType((1, 3, 6, 6), "uint8"))
    w_runtime = relax.Var("w", relax.TensorType((8, 8, 1, 1), "int8"))
    with bb.function("main", [x, x3, w_runtime]):
        with bb.dataflow():
            depthwise = relax.const(rng.integers(-9, 9, (8, 1, 3, 3)).astype(np.int8))
            outs = [
                bb.emit(relax.op.nn.conv2d(x, depthwise, padding=1, groups=8, out_dtype="int32")),  # depthwise
                bb.emit(relax.op.nn.conv2d(x3, relax.const(rng.integers(-9, 9, (8, 3, 1, 1)).astype(np.int8)),
                                           out_dtype="int32")),  # C = 3
                bb.emit(relax.op.nn.conv2d(x, w_runtime, out_dtype="int32")),  # weight not a constant
                bb.emit(relax.op.nn.conv2d(x, relax.const(rng.integers(-9, 9, (6, 8, 1, 1)).astype(np.int8)),
                                           out_dtype="int32")),  # F = 6
            ]
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    mod = bb.get()
    shifted, rewritten = signed_activations.shift_uint8_activations(mod)
    assert rewritten == 0 and shifted is mod


# --- the rpi5 target: sdot rules and sdot code (cross-compiled, not run) ---------------------------


def test_dotprod_detection():
    assert common.has_arm_dotprod(rpi5())
    assert not common.has_arm_dotprod(tvm_targets.resolve(get_target("rpi4"))[0])  # Cortex-A72
    assert not common.has_arm_dotprod(host_target())


def _schedule_for(mod, target):
    executable, report = build_prepared(mod, target)
    return report, executable


@pytest.mark.parametrize("name", [*CONV_CASES, *DENSE_CASES])
def test_rpi5_int8_products_take_the_sdot_rules(name):
    mod, _, _ = all_cases()[name]
    report, executable = _schedule_for(mod, rpi5())
    assert report.unscheduled == []
    anchors = {rule for func, rule in report.scheduled.items() if "conv2d" in func or "matmul" in func}
    assert anchors == {"matmul-int8-arm-sdot" if name in DENSE_CASES else "conv2d-int8-arm-sdot"}
    asm = executable.mod.imports[0].inspect_source("asm")
    assert "sdot" in asm


def test_rpi4_keeps_uint8_products_without_sdot():
    mod, _, _ = all_cases()["3x3s1p1"]
    report, executable = _schedule_for(mod, tvm_targets.resolve(get_target("rpi4"))[0])
    assert not any("xor" in func for func in report.scheduled)  # no shift without the extension
    assert "arm-sdot" not in " ".join(report.scheduled.values())
    assert "sdot" not in executable.mod.imports[0].inspect_source("asm")


# --- opt-in: run the cross-compiled code on the emulated board ---------------------------------------

def on_emulated_board(test):
    """Opt-in (``-m emulated``), and skipped without qemu-user or the aarch64 cross toolchain."""
    for mark in (
        pytest.mark.emulated,
        pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="apt-get install qemu-user-static"),
        pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install g++-aarch64-linux-gnu"),
    ):
        test = mark(test)
    return test

# Run in the emulated python: load <dir>/<name>.so, run it on <name>_x.npy, compare with <name>_ref.npy.
RUN_SCRIPT = """
import sys, numpy as np, tvm
from tvm import relax
for name in sys.argv[2:]:
    vm = relax.VirtualMachine(tvm.runtime.load_module(f"{sys.argv[1]}/{name}.so"), tvm.cpu())
    y = vm["main"](tvm.runtime.tensor(np.load(f"{sys.argv[1]}/{name}_x.npy")))
    y = (y if hasattr(y, "numpy") else y[0]).numpy()
    ref = np.load(f"{sys.argv[1]}/{name}_ref.npy")
    print(name, "exact" if y.dtype == ref.dtype and np.array_equal(y, ref) else "MISMATCH")
"""


def run_on_emulated_board(directory: Path, names: list[str]) -> None:
    """Run each ``directory/<name>.so`` on the emulated board and assert it is bit-exact."""
    board = [sys.executable, str(REPO / "tools" / "emulated_board.py")]
    setup = subprocess.run([*board, "setup"], capture_output=True, text=True, timeout=1800)
    assert setup.returncode == 0, setup.stderr or setup.stdout
    script = directory / "run_on_board.py"
    script.write_text(RUN_SCRIPT)
    run = subprocess.run([*board, "python", str(script), str(directory), *names], capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [word for name in names for word in (name, "exact")], run.stdout


@on_emulated_board
def test_sdot_kernels_are_bit_exact_on_the_emulated_board(tmp_path):
    from tvm.support import cc

    cases = all_cases()
    for name, (mod, x, ref) in cases.items():
        _, executable = _schedule_for(mod, rpi5())
        executable.export_library(str(tmp_path / f"{name}.so"), fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
        np.save(tmp_path / f"{name}_x.npy", x)
        np.save(tmp_path / f"{name}_ref.npy", ref)
    run_on_emulated_board(tmp_path, list(cases))


@on_emulated_board
def test_mobilenetv2_int8_rpi5_artifact_is_bit_exact_on_the_emulated_board(tmp_path):
    """The whole integer-only MobileNetV2 (sdot convs, the shift fused or not, depthwise uint8)
    against ONNX Runtime on the same integer graph."""
    from compiler import compile_model
    from compiler.verify import run_onnxruntime
    from tests.data.make_models import model_path

    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(4)]
    out = tmp_path / "mobilenetv2"
    result = compile_model(model_path("mobilenetv2"), target="rpi5", output=out, quantize="int8",
                           calibration=calibration, measure=False, verify=False, progress=False)
    rules = list(result.report["lowering"]["scheduled"].values())
    assert rules.count("conv2d-int8-arm-sdot") >= 20 and result.report["lowering"]["unscheduled"] == []
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    (expected,) = run_onnxruntime(onnx.load(str(out / "model.opt.onnx")), {"x": x})
    np.save(out / "model_x.npy", x)
    np.save(out / "model_ref.npy", expected)
    run_on_emulated_board(out, ["model"])


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install g++-aarch64-linux-gnu")
def test_rpi5_int8_compile_without_a_board(tmp_path):
    """``compile --target rpi5 --quantize int8`` without a board: an aarch64 artifact with the sdot
    kernels, and the report says why bit-exactness was not checked (not "0 float islands")."""
    from compiler import compile_model

    out = tmp_path / "out"
    result = compile_model(REPO / "examples" / "digits_cnn.onnx", target="rpi5", output=out, quantize="int8",
                           progress=False)
    lowering = result.report["lowering"]
    assert lowering["artifact"]["machine"] == "aarch64" and lowering["unscheduled"] == []
    assert sorted(rule for rule in lowering["scheduled"].values() if "sdot" in rule) == [
        "conv2d-int8-arm-sdot", "conv2d-int8-arm-sdot", "matmul-int8-arm-sdot"]
    reason = result.report["summary"]["verification"]["integer_bit_exact"]["reason"]
    assert "does not run on this machine" in reason and "--rpc-tracker" in reason
