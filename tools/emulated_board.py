"""An emulated Raspberry Pi (aarch64 Linux under qemu-user) that serves TVM RPC like a real board.

    python tools/emulated_board.py setup                       # once: arm64 sysroot + TVM wheels
    python tools/emulated_board.py serve --tracker 127.0.0.1:9190 --key rpi4-emulated
    python tools/emulated_board.py python -c "import platform; print(platform.machine())"

``setup`` (about 5 minutes, needs root for apt's arm64 multiarch lists; idempotent) builds, under
``--root`` (default ``$XDG_CACHE_HOME/edgekiln/emulated-board``, or ``$EDGEKILN_EMULATED_BOARD``):

- ``sysroot/``: Debian arm64 packages unpacked with ``dpkg-deb -x`` (CPython 3.11, glibc,
  libstdc++ and the shared libraries CPython's stdlib modules link), fetched by ``apt-get download``
  after ``dpkg --add-architecture arm64``, so no chroot, debootstrap or binfmt_misc is needed;
- ``site/``: PyPI's aarch64 wheels of the TVM runtime this host compiles with (the same
  ``apache-tvm`` / ``apache-tvm-ffi`` versions, so the artifact's ABI matches) and the RPC server's
  dependencies, installed with ``pip install --target --platform manylinux_*_aarch64``;
- ``python-aarch64``: a wrapper that runs the sysroot's python3.11 under ``qemu-aarch64-static -L``;
- ``rpc_server_shim.py``: starts ``tvm.exec.rpc_server`` with ``sys.executable`` pointing at the
  wrapper. The server starts its session workers with ``sys.executable``, which is an aarch64 binary
  that the host kernel cannot exec without binfmt_misc (``OSError: [Errno 8] Exec format error``).

``serve`` runs ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` in the emulated
board, exactly what a user runs on a real one. Under emulation the artifact runs correctly but about
100x slower than on the board: use it to check aarch64 artifacts, never to time them.
(shared/research/tvm-0.27.md §5 has the manual recipe this script automates.)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

QEMU = "qemu-aarch64-static"
PYTHON = "python3.11"
# Debian bookworm arm64 packages: CPython and every shared library its stdlib modules (ssl for
# tornado, ctypes, lzma, ...) and the TVM runtime (libstdc++, libgcc_s) link.
DEBIAN_PACKAGES = (
    "libc6", "libgcc-s1", "libstdc++6", "python3.11-minimal", "libpython3.11-minimal",
    "libpython3.11-stdlib", "libffi8", "zlib1g", "libexpat1", "libbz2-1.0", "liblzma5", "libssl3",
    "libuuid1", "libsqlite3-0", "libncursesw6", "libtinfo6", "libcrypt1", "libreadline8",
)
# Python packages the TVM runtime and its RPC server import; TVM pinned to this host's versions.
PINNED_FROM_HOST = ("apache-tvm", "apache-tvm-ffi")
PYTHON_PACKAGES = ("numpy", "ml_dtypes", "typing_extensions", "psutil", "cloudpickle", "tornado")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
READY = "READY.json"


class SetupError(Exception):
    """A step of the emulated board failed; the message is one line with the command and fix."""


def default_root() -> Path:
    explicit = os.environ.get("EDGEKILN_EMULATED_BOARD")
    if explicit:
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "edgekiln" / "emulated-board"


def wrapper_path(root: Path) -> Path:
    return root / "python-aarch64"


def is_ready(root: Path) -> bool:
    """Whether ``setup`` finished for ``root`` with this host's TVM versions."""
    try:
        ready = json.loads((root / READY).read_text())
    except (OSError, ValueError):
        return False
    return ready.get("versions") == _host_versions() and wrapper_path(root).is_file()


def _host_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in PINNED_FROM_HOST}


def _run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``; a failure becomes a SetupError naming the command and its last stderr line."""
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise SetupError(f"{what} failed: `{' '.join(command)}`: {last}")
    return result


def _need_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SetupError(f"{tool} is not on PATH; install it with: apt-get install {package}")
    return path


def ensure_arm64_lists() -> None:
    """``dpkg --add-architecture arm64`` and ``apt-get update`` once (root only)."""
    foreign = _run(["dpkg", "--print-foreign-architectures"], "dpkg").stdout.split()
    if "arm64" in foreign:
        return
    if os.geteuid() != 0:
        raise SetupError("apt has no arm64 package lists; as root run: dpkg --add-architecture arm64 && apt-get update")
    _run(["dpkg", "--add-architecture", "arm64"], "adding the arm64 architecture")
    _run(["apt-get", "update", "-qq"], "apt-get update")


def fetch_sysroot(root: Path) -> Path:
    """Download the Debian arm64 packages and unpack them into ``root/sysroot``."""
    debs, sysroot = root / "debs", root / "sysroot"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in DEBIAN_PACKAGES if not list(debs.glob(f"{p}_*_arm64.deb"))]
    if missing:
        _run(["apt-get", "download", "-qq", *[f"{p}:arm64" for p in missing]], "apt-get download", cwd=debs)
    sysroot.mkdir(exist_ok=True)
    for deb in sorted(debs.glob("*_arm64.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)], f"unpacking {deb.name}")
    if not (sysroot / "usr" / "bin" / PYTHON).is_file():
        raise SetupError(f"{sysroot}/usr/bin/{PYTHON} is missing after unpacking the packages")
    return sysroot


def install_wheels(root: Path) -> Path:
    """Install the aarch64 wheels of TVM (this host's versions) and the RPC server's deps."""
    site = root / "site"
    pins = [f"{name}=={version}" for name, version in _host_versions().items()]
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    _run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target", str(site),
         "--only-binary=:all:", *platforms, "--python-version", "3.11", "--implementation", "cp",
         *pins, *PYTHON_PACKAGES],
        "pip install of the aarch64 wheels",
    )
    return site


def write_launchers(root: Path) -> Path:
    """The ``python-aarch64`` wrapper and the RPC server shim (see the module docstring)."""
    sysroot, site = root / "sysroot", root / "site"
    libs = ":".join(str(sysroot / d) for d in ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib"))
    wrapper = wrapper_path(root)
    # One TVM worker thread: qemu-user emulates threads, but more of them only add contention on
    # the host's cores without making the (correctness-only) runs faster.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec {shutil.which(QEMU) or QEMU} -L "{sysroot}" -E LD_LIBRARY_PATH="{libs}" '
        f'-E PYTHONPATH="{site}" -E TVM_NUM_THREADS="${{TVM_NUM_THREADS:-1}}" -E PYTHONDONTWRITEBYTECODE=1 '
        f'"{sysroot}/usr/bin/{PYTHON}" "$@"\n'
    )
    wrapper.chmod(0o755)
    (root / "rpc_server_shim.py").write_text(
        "# Run tvm.exec.rpc_server with sys.executable = the qemu wrapper (see tools/emulated_board.py).\n"
        "import runpy, sys\n"
        f"sys.executable = {str(wrapper)!r}\n"
        "sys.argv = ['rpc_server'] + sys.argv[1:]\n"
        "runpy.run_module('tvm.exec.rpc_server', run_name='__main__')\n"
    )
    return wrapper


def check(root: Path) -> str:
    """Run the emulated python: it must be aarch64 and import the TVM runtime; returns its report."""
    code = "import platform, tvm; print(platform.machine(), tvm.__version__)"
    result = _run([str(wrapper_path(root)), "-c", code], "the emulated python (import tvm)", timeout=600)
    machine = result.stdout.split()[0] if result.stdout.split() else ""
    if machine != "aarch64":
        raise SetupError(f"the emulated python reports machine '{machine}', expected aarch64")
    return result.stdout.strip()


def setup(root: Path, log=print) -> Path:
    """Build everything under ``root`` (skips what is done); returns the wrapper's path."""
    if is_ready(root):
        log(f"emulated board ready in {root}")
        return wrapper_path(root)
    _need_tool(QEMU, "qemu-user-static")
    _need_tool("apt-get", "apt")
    root.mkdir(parents=True, exist_ok=True)
    log("apt: arm64 package lists")
    ensure_arm64_lists()
    log(f"apt: {len(DEBIAN_PACKAGES)} arm64 packages -> {root / 'sysroot'}")
    fetch_sysroot(root)
    log("pip: aarch64 wheels of " + ", ".join(f"{k} {v}" for k, v in _host_versions().items()))
    install_wheels(root)
    wrapper = write_launchers(root)
    log("checking the emulated python (import tvm takes ~20 s under qemu)")
    log(f"  {check(root)}")
    (root / READY).write_text(json.dumps({"versions": _host_versions()}, indent=1) + "\n")
    log(f"emulated board ready: {wrapper}")
    return wrapper


def serve_command(root: Path, tracker: str, key: str, host: str = "127.0.0.1", port: int = 9090,
                  port_end: int | None = None) -> list[str]:
    """The command line that starts the board's RPC server (what ``serve`` execs)."""
    return [str(wrapper_path(root)), str(root / "rpc_server_shim.py"), "--host", host, "--port", str(port),
            "--port-end", str(port_end if port_end is not None else port + 10), "--tracker", tracker, "--key", key]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=default_root(), help="where the sysroot lives (default: %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="build the arm64 sysroot and install the TVM runtime into it")
    serve = sub.add_parser("serve", help="run the TVM RPC server on the emulated board (foreground)")
    serve.add_argument("--tracker", required=True, metavar="HOST:PORT", help="the RPC tracker to register with")
    serve.add_argument("--key", default="rpi4-emulated", help="device key (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="address the server binds to (default: %(default)s)")
    serve.add_argument("--port", type=int, default=9090, help="first port to try (default: %(default)s)")
    run = sub.add_parser("python", help="run the emulated python with the given arguments")
    run.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    root = args.root.absolute()
    try:
        if args.command == "setup":
            setup(root)
            return 0
        if not is_ready(root):
            raise SetupError(f"no emulated board in {root}; run: python tools/emulated_board.py setup")
        if args.command == "serve":
            command = serve_command(root, args.tracker, args.key, args.host, args.port)
        else:
            command = [str(wrapper_path(root)), *args.args]
        os.execv(command[0], command)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
