"""Real TVM RPC processes for tests: a tracker and servers started as a user starts them.

    python -m tvm.exec.rpc_tracker --host 127.0.0.1 --port P --port-end P+1
    python -m tvm.exec.rpc_server --host 127.0.0.1 --port Q --port-end Q+1 --tracker 127.0.0.1:P --key K

Each runs in its own session (process group), so teardown ends it and the workers it forked by
that group id. Ports are free ports picked by the OS (``--port-end`` stops TVM searching the
default 9190..9199 range, which other jobs on the machine may use).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def started(command: Sequence[str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``command`` (cwd: the repository) in its own process group until the block ends."""
    with open(log, "w") as handle:
        process = subprocess.Popen(list(command), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        yield process
    finally:
        _stop(process)


def wait_until(condition, timeout_s: float, what: str, process: subprocess.Popen, log: Path) -> None:
    """Poll ``condition()`` until true; fail with the process's log when it dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if condition():
                return
        except Exception:  # not up yet (connection refused, OptionError from our client)
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what}: not ready after {timeout_s:g} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def tracker(log_dir: Path) -> Iterator[str]:
    """A running tracker; yields its ``HOST:PORT``."""
    from targets.lowering.rpc import RpcDevice, tracker_summary

    port = free_port()
    log = log_dir / "rpc_tracker.log"
    command = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
               "--port-end", str(port + 1)]
    address = f"127.0.0.1:{port}"
    with started(command, log) as process:
        probe = RpcDevice.from_options(address, "probe")
        wait_until(lambda: tracker_summary(probe) is not None, 60, "rpc_tracker", process, log)
        yield address


@contextlib.contextmanager
def server(command: Sequence[str], address: str, key: str, log: Path, timeout_s: float = 60) -> Iterator[subprocess.Popen]:
    """A running RPC server (``command``), registered at tracker ``address`` with ``key``."""
    from targets.lowering.rpc import RpcDevice, check_available

    with started(command, log) as process:
        device = RpcDevice.from_options(address, key)
        wait_until(lambda: check_available(device) > 0, timeout_s, f"rpc_server '{key}'", process, log)
        yield process


def host_server_command(address: str, key: str) -> list[str]:
    """``python -m tvm.exec.rpc_server`` for this host, registering with ``key``."""
    port = free_port()
    return [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port),
            "--port-end", str(port + 1), "--tracker", address, "--key", key]
