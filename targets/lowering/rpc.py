"""The TVM RPC runner: run and time a compiled library on a board, through a TVM RPC tracker.

The board side is stock TVM, started the way TVM documents it::

    python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190                 # any machine
    python -m tvm.exec.rpc_server --tracker TRACKER_HOST:9190 --key rpi4      # on the board

and this side asks the tracker for a free server with that key (:func:`request_session`), uploads
the library, loads it in a Relax VM on the board's CPU (or CUDA GPU) and runs it
(:class:`RemoteLibrary`). Times come from the board's own ``time_evaluator`` (the loop runs on the
board, so the network is not timed): the median over ``repeat`` repeats, each the mean of
``number`` calls, ``number`` grown until a repeat lasts ``min_repeat_ms``.

Per-kernel times (cost-model calibration) are taken by :meth:`RemoteLibrary.time_kernels`: each
kernel called alone with arguments of its signature (targets/lowering/kernels.py says why).

User errors are one line naming the option: an unreachable tracker (``--rpc-tracker``), a key no
server registered (``--rpc-key``), no free server within the timeout (``--rpc-timeout``).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import socket
import statistics
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.rpc import base as rpc_base

from compiler.errors import LoweringError, OptionError
from targets.lowering.errors import one_line
from targets.lowering.runtime import flatten_outputs, ordered_inputs, run_error

#: Seconds to wait for a free server with the key before giving up (``--rpc-timeout``).
DEFAULT_TIMEOUT_S = 60.0
#: Seconds to wait for the tracker to accept a connection and answer.
CONNECT_TIMEOUT_S = 10.0
#: Whole-model timing: repeats (the median is reported) and the shortest repeat.
DEFAULT_REPEAT = 10
DEFAULT_MIN_REPEAT_MS = 50
#: Per-kernel timing: the shortest repeat (short kernels are called several times per repeat).
KERNEL_MIN_REPEAT_MS = 2

_TRACKER_HELP = "start one with: python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190"


@dataclasses.dataclass(frozen=True)
class RpcDevice:
    """Where to run: a tracker address and a device key; ``timeout_s`` bounds the wait for a free
    server. ``device`` is ``cpu`` or ``cuda``: the board device the VM runs on."""

    host: str
    port: int
    key: str
    timeout_s: float = DEFAULT_TIMEOUT_S
    device: str = "cpu"

    @property
    def tracker(self) -> str:
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"device '{self.key}' ({self.device}) via TVM RPC tracker {self.tracker}"

    def to_json(self) -> dict[str, Any]:
        return {"runner": "tvm-rpc", "tracker": self.tracker, "key": self.key, "device": self.device}

    @classmethod
    def from_options(cls, tracker: str | None, key: str | None, timeout_s: float | None = None,
                     device: str = "cpu") -> RpcDevice:
        """Validate ``--rpc-tracker HOST:PORT`` and ``--rpc-key KEY`` (both or neither are given).

        Raises OptionError naming the option at fault.
        """
        if not tracker or not key:
            given, missing = ("--rpc-tracker", "--rpc-key") if tracker else ("--rpc-key", "--rpc-tracker")
            raise OptionError(f"{given} needs {missing} too (the tracker address and the board's device key)")
        host, sep, port_text = tracker.rpartition(":")
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise OptionError(f"--rpc-tracker {tracker}: expected HOST:PORT, e.g. 127.0.0.1:9190")
        timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
        if not timeout_s > 0:
            raise OptionError(f"--rpc-timeout {timeout_s:g}: expected a positive number of seconds")
        if device not in ("cpu", "cuda"):
            raise OptionError(f"RPC device '{device}': expected cpu or cuda")
        return cls(host.strip("[]"), int(port_text), key, timeout_s, device)


def device_kind(target_json: Mapping[str, Any]) -> str:
    """The board device a target's library runs on: ``cuda`` for CUDA targets, else ``cpu``."""
    return "cuda" if target_json.get("cuda_arch") else "cpu"


def device_for_compile(target, tracker: str | None, key: str | None, timeout_s: float | None,
                       lower: bool = True) -> RpcDevice:
    """The RpcDevice for ``compile --rpc-tracker/--rpc-key``, checked before any work: the options
    are well formed, the target's artifact is a library a board can load (a ``.so``), and the
    tracker has a server with the key. Raises OptionError otherwise."""
    device = RpcDevice.from_options(tracker, key, timeout_s, device_kind(target.to_json()))
    if not lower:
        raise OptionError("--rpc-tracker runs the compiled library on the board: it cannot be combined with --no-lower")
    if target.export_format != "so":
        raise OptionError(
            f"--rpc-tracker: target '{target.name}' exports a .{target.export_format} "
            "(sources for another toolchain), which a TVM RPC server cannot load"
        )
    check_available(device)
    return device


# ------------------------------------------------------------------------------------------------
# Tracker
# ------------------------------------------------------------------------------------------------
def _tracker_socket(device: RpcDevice) -> socket.socket:
    """A connection to the tracker after the magic handshake (TVM's tracker protocol, rpc/base.py)."""
    try:
        sock = socket.create_connection((device.host, device.port), timeout=CONNECT_TIMEOUT_S)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OptionError(f"--rpc-tracker {device.tracker}: cannot connect to the TVM RPC tracker ({reason}); {_TRACKER_HELP}") from None
    try:
        sock.sendall(struct.pack("<i", rpc_base.RPC_TRACKER_MAGIC))
        (magic,) = struct.unpack("<i", rpc_base.recvall(sock, 4))
    except (OSError, RuntimeError, struct.error) as exc:
        sock.close()
        raise OptionError(f"--rpc-tracker {device.tracker}: no TVM RPC tracker answers there ({one_line(exc)})") from None
    if magic != rpc_base.RPC_TRACKER_MAGIC:
        sock.close()
        raise OptionError(f"--rpc-tracker {device.tracker}: that port is not a TVM RPC tracker")
    return sock


def _ask_tracker(device: RpcDevice, message: list, wait_s: float | None = None, busy: str = "") -> Any:
    """Send one tracker command and return its answer's payload (TrackerCode.SUCCESS checked).

    ``wait_s`` bounds the wait for the answer (a REQUEST is answered only when a server is free);
    when it runs out, OptionError(``busy``).
    """
    sock = _tracker_socket(device)
    try:
        rpc_base.sendjson(sock, message)
        if wait_s is not None:
            sock.settimeout(wait_s)
        value = rpc_base.recvjson(sock)
    except TimeoutError:
        # The tracker drops a request whose client has gone (its callback finds the socket closed).
        raise OptionError(busy) from None
    except (OSError, ValueError) as exc:
        raise OptionError(f"--rpc-tracker {device.tracker}: the tracker did not answer ({one_line(exc)})") from None
    finally:
        sock.close()
    if not isinstance(value, list) or value[0] != rpc_base.TrackerCode.SUCCESS:
        raise OptionError(f"--rpc-tracker {device.tracker}: unexpected tracker answer {value!r}")
    return value[1]


def tracker_summary(device: RpcDevice) -> dict[str, Any]:
    """The tracker's summary: ``{"queue_info": {key: {"free", "pending"}}, "server_info": [...]}``."""
    return _ask_tracker(device, [rpc_base.TrackerCode.SUMMARY])


def registered_keys(summary: Mapping[str, Any]) -> dict[str, int]:
    """Device key -> number of servers registered with it (servers register as ``server:KEY``)."""
    counts: dict[str, int] = {}
    for item in summary.get("server_info", []):
        key = str(item.get("key", "")).split(":", 1)[-1]
        counts[key] = counts.get(key, 0) + 1
    return counts


def check_available(device: RpcDevice) -> int:
    """The number of servers registered with ``device.key``; OptionError when the tracker is
    unreachable or no server has the key (a request for it would wait forever)."""
    keys = registered_keys(tracker_summary(device))
    if device.key not in keys:
        known = ", ".join(sorted(keys)) or "none"
        raise OptionError(
            f"--rpc-key {device.key}: no RPC server with this key is registered at tracker {device.tracker} "
            f"(registered keys: {known}); on the board run: python -m tvm.exec.rpc_server "
            f"--tracker {device.tracker} --key {device.key}"
        )
    return keys[device.key]


def request_session(device: RpcDevice):
    """An RPC session with a free server of ``device.key``, waiting at most ``device.timeout_s``."""
    from tvm import rpc

    servers = check_available(device)
    busy = (f"--rpc-key {device.key}: no free RPC server within {device.timeout_s:g} s "
            f"({servers} registered with this key, all busy); wait, or raise --rpc-timeout")
    url, port, match_key = _ask_tracker(device, [rpc_base.TrackerCode.REQUEST, device.key, "", 1], device.timeout_s, busy)
    try:
        return rpc.connect(url, port, match_key, session_timeout=0)
    except Exception as exc:  # TVM raises RuntimeError/TVMError for refused sessions
        raise OptionError(
            f"--rpc-key {device.key}: the tracker assigned server {url}:{port}, which refused the session ({one_line(exc)})"
        ) from None


# ------------------------------------------------------------------------------------------------
# Running on the board
# ------------------------------------------------------------------------------------------------
def _fill(shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """Argument data for timing a kernel alone: floats in [0.5, 1) (no NaN from log/sqrt, no
    denormals), integers 1 (a valid index and a safe divisor or shift for every integer kernel)."""
    if dtype.startswith(("float", "bfloat")):
        return rng.uniform(0.5, 1.0, size=shape).astype(dtype)
    return np.ones(shape, dtype="bool" if dtype == "bool" else dtype)


def _timing(result) -> dict[str, Any]:
    """A ``time_evaluator`` result as the report's measurement dict (milliseconds)."""
    results = [float(r) for r in result.results]
    return {"median_ms": statistics.median(results) * 1e3, "min_ms": min(results) * 1e3, "runs": len(results)}


class RemoteLibrary:
    """A compiled model library uploaded to a board and loaded in a Relax VM there.

    ``run(feeds)`` works like ``InferenceSession.run(None, feeds)``; ``time(feeds)`` times ``main``
    on the board. The session ends when the object is garbage-collected (or :meth:`close`).
    """

    def __init__(self, device: RpcDevice, path: str | os.PathLike, input_names: Sequence[str], session=None):
        self.rpc = device
        self.path = Path(path)
        self.input_names = list(input_names)
        if not self.path.is_file():
            raise OptionError(f"compiled library '{self.path}' does not exist")
        if self.path.suffix != ".so":
            raise OptionError(f"'{self.path.name}' is not a shared library: only .so artifacts run over TVM RPC")
        self.session = session if session is not None else request_session(device)
        self.device = self.session.cuda() if device.device == "cuda" else self.session.cpu()
        try:
            self.session.upload(str(self.path), target=self.path.name)
            self._module = self.session.load_module(self.path.name)
            self._vm = relax.VirtualMachine(self._module, self.device)
        except Exception as exc:
            raise LoweringError(f"cannot load '{self.path.name}' on {device.describe()}: {one_line(exc)}") from exc

    def _set_input(self, feeds: Mapping[str, np.ndarray]) -> None:
        args = [tvm.runtime.tensor(array, self.device) for array in ordered_inputs(feeds, self.input_names)]
        self._vm.set_input("main", *args)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for ``feeds`` (input name -> array) in graph order, computed on the board.

        The stateful VM interface (set_input / invoke_stateful / get_outputs) is used because a
        tuple returned by ``main`` does not cross RPC; outputs come back one tensor at a time.
        """
        try:
            self._set_input(feeds)
            self._vm.invoke_stateful("main")
            return flatten_outputs(self._vm.get_outputs("main"), to_numpy=lambda tensor: tensor.numpy())
        except OptionError:
            raise
        except Exception as exc:
            raise run_error(exc, f"running '{self.path.name}' on {self.rpc.describe()} failed") from exc

    def time(self, feeds: Mapping[str, np.ndarray], repeat: int = DEFAULT_REPEAT,
             min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS) -> dict[str, Any]:
        """Latency of ``main`` on ``feeds`` timed on the board: ``median_ms``, ``min_ms``, ``runs``
        (repeats; the first call is a discarded warm-up), plus where it was measured."""
        try:
            self._set_input(feeds)
            evaluator = self._vm.time_evaluator("invoke_stateful", self.device, number=1, repeat=repeat,
                                                min_repeat_ms=min_repeat_ms)
            timing = _timing(evaluator("main"))
        except Exception as exc:
            raise LoweringError(f"timing '{self.path.name}' on {self.rpc.describe()} failed: {one_line(exc)}") from exc
        return {**timing, "where": f"on the device via TVM RPC (key '{self.rpc.key}')", **self.rpc.to_json()}

    def time_kernels(self, kernel_library: str | os.PathLike, calls: Sequence, repeat: int = DEFAULT_REPEAT,
                     seed: int = 0) -> list[tuple[str, float]]:
        """Median seconds of every kernel call (``kernels.KernelCall``, execution order), each kernel
        timed alone on the board from ``kernel_library`` (``lower_model(kernel_library=True)``).

        A kernel called several times with the same arguments is timed once.
        """
        path = Path(kernel_library)
        rng = np.random.default_rng(seed)
        try:
            self.session.upload(str(path), target=path.name)
            kernels = self.session.load_module(path.name)
        except Exception as exc:
            raise LoweringError(f"cannot load '{path.name}' on {self.rpc.describe()}: {one_line(exc)}") from exc
        measured: dict[tuple, float] = {}
        out = []
        for call in calls:
            signature = (call.name, call.args)
            if signature not in measured:
                args = [tvm.runtime.tensor(_fill(shape, dtype, rng), self.device) for shape, dtype in call.args]
                try:
                    evaluator = kernels.time_evaluator(call.name, self.device, number=1, repeat=repeat,
                                                       min_repeat_ms=KERNEL_MIN_REPEAT_MS)
                    measured[signature] = statistics.median(float(r) for r in evaluator(*args).results)
                except Exception as exc:
                    raise LoweringError(f"timing kernel '{call.name}' on {self.rpc.describe()} failed: {one_line(exc)}") from exc
            out.append((call.name, measured[signature]))
        return out

    def close(self) -> None:
        """End the session (the server frees itself for the next client)."""
        self._vm = self._module = self.device = None
        self.session = None
        gc.collect()  # the session ends when its last reference goes, which may sit in a cycle

    def __repr__(self) -> str:
        return f"RemoteLibrary({str(self.path)!r}, {self.rpc.describe()})"
