"""Opt-in (``-m emulated``): the rpi4 artifact runs on an emulated aarch64 board and matches ONNX Runtime.

The board is tools/emulated_board.py: Debian arm64 CPython + PyPI's aarch64 TVM wheels under
qemu-aarch64-static, serving ``tvm.exec.rpc_server`` to a real tracker; the compile reaches it
through ``--rpc-tracker/--rpc-key`` like a Raspberry Pi. The first run builds the sysroot
(``tools/emulated_board.py setup``: apt arm64 lists and pip, needs root and the package
registries; a few minutes), later runs reuse it. Emulated timings are printed but mean nothing
for the board (qemu is ~100x slower): the checks are numeric.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")

from compiler import compile_model  # noqa: E402
from targets import calibrate_cost as cc  # noqa: E402
from targets import get_target  # noqa: E402
from targets.cost_model import RooflineCostModel  # noqa: E402
from targets.lowering.rpc import RpcDevice  # noqa: E402
from tests.targets import rpc_processes  # noqa: E402
from tests.tolerances import TVM_BACKEND  # noqa: E402

pytestmark = [
    pytest.mark.tvm,
    pytest.mark.emulated,
    pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason="apt-get install qemu-user-static"),
    pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="apt-get install g++-aarch64-linux-gnu"),
]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"
SCRIPT = REPO / "tools" / "emulated_board.py"
KEY = "rpi4-emulated-test"


@pytest.fixture(scope="module")
def board(tmp_path_factory) -> str:
    """The emulated board registered at a fresh tracker; yields the tracker address."""
    setup = subprocess.run([sys.executable, str(SCRIPT), "setup"], capture_output=True, text=True, timeout=1800)
    if setup.returncode != 0:
        pytest.fail(f"emulated board setup failed: {setup.stderr.strip() or setup.stdout.strip()}")
    logs = tmp_path_factory.mktemp("emulated-board")
    with rpc_processes.tracker(logs) as address:
        port = rpc_processes.free_port()
        command = [sys.executable, str(SCRIPT), "serve", "--tracker", address, "--key", KEY, "--port", str(port)]
        # `import tvm` alone takes ~20 s under qemu; the server registers after it.
        with rpc_processes.server(command, address, KEY, logs / "board.log", timeout_s=300):
            yield address


def _compile(board: str, out: Path, target: str = "rpi4", **options) -> dict:
    compile_model(EXAMPLE, target=target, output=out, rpc_tracker=board, rpc_key=KEY, progress=False, **options)
    return json.loads((out / "report.json").read_text())


def test_rpi4_artifact_matches_onnxruntime_on_the_emulated_board(board, tmp_path):
    report = _compile(board, tmp_path / "fp32")
    assert report["lowering"]["artifact"]["machine"] == "aarch64"
    check = report["summary"]["verification"]["artifact_on_device_vs_onnxruntime"]
    assert check["passed"] and check["policy"] == TVM_BACKEND.name
    assert report["summary"]["accuracy"]["artifact_tvm_rpc"]["top1"] == report["summary"]["accuracy"]["original_onnxruntime"]["top1"]
    timing = report["run"]["artifact_rpc"]
    print(f"\nemulated rpi4, digits fp32: {timing['median_ms']:.3f} ms per inference under qemu "
          f"(median of {timing['runs']}); max abs error vs ONNX Runtime {check['max_abs']:.3g}")


@pytest.mark.parametrize("target", ["rpi4", "rpi5"])
def test_integer_only_artifact_is_bit_exact_on_the_emulated_board(board, tmp_path, target):
    """rpi4 (Cortex-A72): generic int8 kernels; rpi5 (Cortex-A76): the sdot kernels, on
    activations shifted to int8 (qemu-user's default CPU has the dot-product extension)."""
    report = _compile(board, tmp_path / "int8", target=target, quantize="int8")
    exact = report["summary"]["verification"]["integer_bit_exact"]
    assert exact["passed"] and exact["artifact_vs_onnxruntime"] and KEY in exact["where"]
    sdot_kernels = [rule for rule in report["lowering"]["scheduled"].values() if rule.endswith("-arm-sdot")]
    assert len(sdot_kernels) == (3 if target == "rpi5" else 0), report["lowering"]["scheduled"]
    timing = report["run"]["artifact_rpc"]
    print(f"\nemulated {target}, digits int8: {timing['median_ms']:.3f} ms per inference under qemu; "
          "bit-exact vs ONNX Runtime")


def test_per_kernel_measurement_on_the_emulated_board(board):
    target = get_target("rpi4")
    model = cc.prepare_model(EXAMPLE, target)
    measurement = cc.measure_layers(model, target, repeats=3, rpc=RpcDevice.from_options(board, KEY))
    families = [cc.kernel_family(name) for name, _ in measurement.kernels]
    assert families == ["conv", "conv", "pool", "dense"]
    assert all(seconds > 0 for _, seconds in measurement.kernels) and measurement.total_s > 0
    samples, _ = cc.pair_kernels(cc.group_nodes(model, RooflineCostModel(target)), measurement.kernels)
    assert len(samples) == 4
