"""The TVM RPC runner against real processes: a tracker and an rpc_server for this host, started
with ``python -m tvm.exec.rpc_tracker`` / ``rpc_server`` the way a user starts them for a board.

The host server runs the ``cpu`` artifact, so what comes back over RPC must equal the local run;
the errors a user meets (tracker down, unknown key, all servers busy) are one line naming the
option, exit 2, and leave no output directory.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")

from compiler import compile_model, load_artifact  # noqa: E402
from compiler.cli import main  # noqa: E402
from compiler.errors import OptionError  # noqa: E402
from compiler.verify import compare, run_onnxruntime  # noqa: E402
from targets import calibrate_cost as cc  # noqa: E402
from targets import get_target  # noqa: E402
from targets.lowering.rpc import RpcDevice, registered_keys, request_session, tracker_summary  # noqa: E402
from tests.targets import rpc_processes  # noqa: E402
from tests.tolerances import TVM_BACKEND  # noqa: E402

pytestmark = pytest.mark.tvm

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_cnn.onnx"
KEY = "edgekiln-test-host"


@pytest.fixture(scope="module")
def rpc(tmp_path_factory) -> str:
    """A tracker with one host rpc_server registered as KEY; yields the tracker address."""
    logs = tmp_path_factory.mktemp("rpc-logs")
    with rpc_processes.tracker(logs) as address:
        command = rpc_processes.host_server_command(address, KEY)
        with rpc_processes.server(command, address, KEY, logs / "rpc_server.log"):
            yield address


@pytest.fixture(scope="module")
def compiled_on_server(rpc, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rpc") / "digits-cpu-rpc"
    compile_model(EXAMPLE, target="cpu", output=out, rpc_tracker=rpc, rpc_key=KEY, progress=False)
    return out


def _eval_feeds(n: int = 3) -> list[dict[str, np.ndarray]]:
    x = np.load(REPO / "examples" / "digits_cnn.eval.npz")["x"][:n]
    return [{"x": x[i : i + 1]} for i in range(n)]


# ------------------------------------------------------------------------------------------------
# options
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tracker, key, timeout, needle",
    [
        ("127.0.0.1:9190", None, None, "--rpc-tracker needs --rpc-key"),
        (None, "rpi4", None, "--rpc-key needs --rpc-tracker"),
        ("localhost", "rpi4", None, "--rpc-tracker localhost: expected HOST:PORT"),
        ("host:99999", "rpi4", None, "--rpc-tracker host:99999: expected HOST:PORT"),
        ("host:9190", "rpi4", 0, "--rpc-timeout 0"),
    ],
)
def test_rpc_options_are_validated(tracker, key, timeout, needle):
    with pytest.raises(OptionError) as info:
        RpcDevice.from_options(tracker, key, timeout)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_rpc_options_parse():
    device = RpcDevice.from_options("10.0.0.5:9190", "rpi4", 5)
    assert (device.host, device.port, device.key, device.timeout_s, device.device) == ("10.0.0.5", 9190, "rpi4", 5.0, "cpu")


# ------------------------------------------------------------------------------------------------
# compile --rpc-tracker/--rpc-key on the host server
# ------------------------------------------------------------------------------------------------
def test_tracker_lists_the_server(rpc):
    summary = tracker_summary(RpcDevice.from_options(rpc, KEY))
    assert registered_keys(summary) == {KEY: 1}


def test_compile_runs_the_artifact_on_the_server(compiled_on_server, rpc):
    report = json.loads((compiled_on_server / "report.json").read_text())
    assert report["status"] == "ok"
    verification = report["summary"]["verification"]
    device_check = verification["artifact_on_device_vs_onnxruntime"]
    assert device_check["passed"] and device_check["policy"] == "tvm-backend"
    assert KEY in device_check["where"] and rpc in device_check["where"]
    # Same library, same CPU: the server computes what the local run computes.
    assert device_check["max_abs"] == verification["artifact_vs_onnxruntime"]["max_abs"]
    timing = report["run"]["artifact_rpc"]
    assert timing["runner"] == "tvm-rpc" and timing["key"] == KEY and timing["tracker"] == rpc
    assert timing["runs"] == 10 and 0 < timing["min_ms"] <= timing["median_ms"]
    assert "artifact" in report["run"]  # the local measurement stays, labelled separately
    html = (compiled_on_server / "report.html").read_text()
    assert "measured on the device via TVM RPC" in html


def test_remote_artifact_equals_local_run_and_onnxruntime(compiled_on_server, rpc):
    artifact = load_artifact(compiled_on_server)
    board = artifact.remote(rpc, KEY)
    for feeds in _eval_feeds():
        remote = board.run(feeds)
        assert all(np.array_equal(a, b) for a, b in zip(remote, artifact.run(feeds)))
        ort = run_onnxruntime(onnx.load(str(EXAMPLE)), feeds)
        assert compare(remote, ort, TVM_BACKEND)["passed"]
    timing = board.time(_eval_feeds(1)[0], repeat=3)
    assert timing["runs"] == 3 and timing["median_ms"] > 0
    with pytest.raises(OptionError, match="shape"):
        board.run({"x": np.zeros((2, 1, 8, 8), np.float32)})


def test_integer_only_artifact_is_bit_exact_on_the_server(rpc, tmp_path, capsys):
    out = tmp_path / "int8"
    code = main([str(EXAMPLE), "--target", "cpu", "--quantize", "int8", "-o", str(out), "--no-measure",
                 "--rpc-tracker", rpc, "--rpc-key", KEY])
    printed = capsys.readouterr().out
    assert code == 0
    exact = json.loads((out / "report.json").read_text())["summary"]["verification"]["integer_bit_exact"]
    assert exact["passed"] and exact["artifact_vs_onnxruntime"]
    assert f"on device '{KEY}'" in printed


# ------------------------------------------------------------------------------------------------
# errors: one line naming the option, exit 2, nothing written
# ------------------------------------------------------------------------------------------------
def _run_cli(tmp_path: Path, capsys, *rpc_args: str) -> tuple[int, str]:
    out = tmp_path / "out"
    code = main([str(EXAMPLE), "--target", "cpu", "-o", str(out), "--quiet", "--no-measure", *rpc_args])
    err = capsys.readouterr().err.strip()
    assert not out.exists(), "a failed compile must leave no output directory"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "temporary folder left behind"
    return code, err


def test_tracker_down_is_a_one_line_error(tmp_path, capsys):
    with socket.socket() as sock:  # a port that is bound but does not listen: nothing answers
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code, err = _run_cli(tmp_path, capsys, "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", KEY)
    assert code == 2
    assert err.count("\n") == 0 and f"--rpc-tracker 127.0.0.1:{port}: cannot connect" in err and "rpc_tracker" in err


def test_unknown_key_is_a_one_line_error(rpc, tmp_path, capsys):
    code, err = _run_cli(tmp_path, capsys, "--rpc-tracker", rpc, "--rpc-key", "no-such-board")
    assert code == 2
    assert err.count("\n") == 0 and "--rpc-key no-such-board: no RPC server with this key" in err and KEY in err


def test_busy_server_times_out_after_the_build_and_leaves_nothing(rpc, tmp_path, capsys):
    holder = request_session(RpcDevice.from_options(rpc, KEY))  # the only server is now busy
    try:
        code, err = _run_cli(tmp_path, capsys, "--rpc-tracker", rpc, "--rpc-key", KEY, "--rpc-timeout", "1")
    finally:
        del holder
    assert code == 2
    assert err.count("\n") == 0 and "no free RPC server within 1 s" in err and "--rpc-timeout" in err


def test_rpc_needs_a_loadable_library(rpc, tmp_path, capsys):
    code, err = _run_cli(tmp_path, capsys, "--target", "fpga", "--rpc-tracker", rpc, "--rpc-key", KEY)
    assert code == 2 and "target 'fpga' exports a .tar" in err


# ------------------------------------------------------------------------------------------------
# per-layer measurement through RPC (cost-model calibration from a board)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_model():
    return cc.prepare_model(EXAMPLE, get_target("cpu"))


def test_per_kernel_measurement_over_rpc_times_the_kernels_the_vm_runs(rpc, digits_model):
    remote = cc.measure_layers(digits_model, "cpu", repeats=3, rpc=RpcDevice.from_options(rpc, KEY))
    local = cc.measure_layers(digits_model, "cpu", repeats=3)
    # The kernel plan read from the build (bytecode order + PrimFunc signatures) is exactly the
    # sequence of kernels the local VM's instrument sees when it runs the model.
    assert [name for name, _ in remote.kernels] == [name for name, _ in local.kernels]
    assert len(remote.kernels) == 4 and all(seconds > 0 for _, seconds in remote.kernels)
    assert remote.total_s > 0


def test_calibration_benchmark_over_rpc_saves_a_record(rpc, tmp_path, monkeypatch, capsys):
    from benchmarks import cost_model as bench

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    code = bench.main(["--models", str(EXAMPLE), "--repeats", "3", "--rpc-tracker", rpc, "--rpc-key", KEY])
    printed = capsys.readouterr().out
    assert code == 0 and f"measuring on device '{KEY}'" in printed
    record = cc.load_calibration("cpu")
    assert record is not None and record.layers == 4 and record.fitted_on == [str(EXAMPLE)]
    assert cc.calibration_path("cpu").is_relative_to(tmp_path)


def test_calibration_benchmark_reports_an_unknown_key(rpc, capsys):
    from benchmarks import cost_model as bench

    assert bench.main(["--models", str(EXAMPLE), "--rpc-tracker", rpc, "--rpc-key", "nope"]) == 2
    assert "--rpc-key nope" in capsys.readouterr().err
