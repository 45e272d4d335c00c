"""Board artifacts built on this machine: formats read back from the files' bytes.

rpi4 / Jetson: an ELF shared object for aarch64 (header parsed here, not by ``file``); Jetson and
gpu: a CUDA fatbin for the board's sm_XX when nvcc is installed; fpga: C source in a tar. A missing
cross compiler is a one-line error naming the Debian package.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm")

from compiler.errors import LoweringError, OptionError  # noqa: E402
from targets import get_target  # noqa: E402
from targets.lowering import integer_ops, lower_model  # noqa: E402
from targets.lowering.cross import (  # noqa: E402
    ToolchainMissingError,
    elf_machine,
    fatbin_archs,
    float_nodes,
    require_cross_compiler,
)
from tests.compiler.test_reference import integer_cnn_model  # noqa: E402

pytestmark = pytest.mark.tvm

HAVE_AARCH64_GCC = shutil.which("aarch64-linux-gnu-gcc") is not None
HAVE_NVCC = shutil.which("nvcc") is not None
needs_cross = pytest.mark.skipif(not HAVE_AARCH64_GCC, reason="apt-get install g++-aarch64-linux-gnu")


def float_cnn() -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv 3->4 3x3 -> Relu -> MatMul-free head: GlobalAveragePool -> Flatten."""
    proto = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[1,3,8,8] x) => (float[1,4] y) {\n"
        "  c = Conv <pads = [1,1,1,1]> (x, W)\n  r = Relu (c)\n  p = GlobalAveragePool (r)\n  y = Flatten (p)\n}"
    )
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "W"))
    return proto


def elf_header(machine: int, little: bool = True) -> bytes:
    endian = "<" if little else ">"
    return b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9) + struct.pack(endian + "HH", 3, machine)


def test_elf_machine_parses_the_header():
    assert elf_machine(elf_header(183)) == "aarch64"
    assert elf_machine(elf_header(62)) == "x86_64"
    assert elf_machine(elf_header(183, little=False)) == "aarch64"
    with pytest.raises(ValueError):
        elf_machine(b"MZ\x90\x00" + bytes(40))


def test_fatbin_archs_reads_entries():
    entry = struct.pack("<HHIQ", 2, 0x101, 64, 16) + bytes(12) + struct.pack("<I", 87) + bytes(64 - 32) + bytes(16)
    blob = b"junk" + struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entry)) + entry + b"tail"
    assert fatbin_archs(blob) == [("cubin", "sm_87")]
    assert fatbin_archs(b"no fatbin here") == []


def test_missing_cross_compiler_names_the_package(tmp_path):
    target = dataclasses.replace(get_target("rpi4"), cross_compiler="no-such-aarch64-gcc")
    with pytest.raises(ToolchainMissingError) as info:
        require_cross_compiler(target)
    message = str(info.value)
    assert "\n" not in message and "apt-get install g++-aarch64-linux-gnu" in message
    assert isinstance(info.value, LoweringError) and info.value.package == "g++-aarch64-linux-gnu"
    # lower_model fails the same way before doing any TVM work, and writes nothing.
    with pytest.raises(ToolchainMissingError):
        lower_model(float_cnn(), target, {}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fpga_rejects_float_graphs_in_one_line(tmp_path):
    assert float_nodes(float_cnn()) == ["Conv 'c'", "Relu 'r'", "GlobalAveragePool 'p'", "Flatten 'y'"]
    assert float_nodes(integer_cnn_model()) == []
    with pytest.raises(OptionError) as info:
        lower_model(float_cnn(), get_target("fpga"), {}, tmp_path)
    assert "\n" not in str(info.value) and "--quantize int8" in str(info.value)


@needs_cross
def test_rpi4_artifact_is_an_aarch64_shared_object(tmp_path):
    result = lower_model(float_cnn(), get_target("rpi4"), {}, tmp_path)
    library = tmp_path / result.library_file
    assert result.library_file == "model.so"
    assert elf_machine(library) == "aarch64" and result.artifact["machine"] == "aarch64"
    assert elf_machine(library.read_bytes()[:64]) == "aarch64"


@needs_cross
@pytest.mark.parametrize("name", ["jetson", "jetson-agx-orin"])
def test_jetson_artifact_is_aarch64_with_sm87_kernels(tmp_path, name):
    result = lower_model(float_cnn(), get_target(name), {}, tmp_path)
    data = (tmp_path / result.library_file).read_bytes()
    assert elf_machine(data[:64]) == "aarch64"
    if HAVE_NVCC:
        assert ("cubin", "sm_87") in fatbin_archs(data)
        assert result.artifact["cuda"] == [["cubin", "sm_87"]]
    else:
        assert result.artifact["cuda"] == [] and any("source" in note for note in result.notes)
    assert set(result.scheduled.values()) == {"dlight-gpu"} and not result.unscheduled


def test_gpu_artifact_is_x86_64_with_the_requested_arch(tmp_path):
    from targets.registry import with_arch

    result = lower_model(float_cnn(), with_arch("gpu", "sm_80"), {}, tmp_path)
    data = (tmp_path / result.library_file).read_bytes()
    assert elf_machine(data[:64]) == "x86_64"
    if HAVE_NVCC:
        assert fatbin_archs(data) == [("cubin", "sm_80")]


def test_fpga_artifact_is_c_source_for_hls(tmp_path):
    integer_ops.install_converters()
    result = lower_model(integer_cnn_model(), get_target("fpga"), {}, tmp_path)
    path = tmp_path / result.library_file
    assert result.library_file == "model.tar" and result.artifact["format"] == "c-source-tar"
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        assert {"lib0.c", "devc.c", "kernels.json", "HOST_DRIVER.txt"} <= names
        source = tar.extractfile("lib0.c").read().decode()
        kernels = tar.extractfile("kernels.json").read().decode()
    for kernel in result.scheduled:  # every kernel is a C function in lib0.c and listed
        assert f"__tvm_ffi_{kernel}(" in source and kernel in kernels
    assert "int8_t" in source or "uint8_t" in source  # integer arithmetic, not float
    assert "#pragma omp" not in source and "TVMBackendParallelLaunch" not in source  # plain loops


@pytest.mark.slow
@needs_cross
def test_rpi4_artifact_runs_under_qemu_and_matches_onnxruntime(tmp_path):
    """Opt-in: needs qemu-aarch64-static and an aarch64 Python with TVM (EDGEKILN_ARM_PYTHON)."""
    import os
    import subprocess

    arm_python = os.environ.get("EDGEKILN_ARM_PYTHON")
    if not arm_python or not Path(arm_python).exists():
        pytest.skip("set EDGEKILN_ARM_PYTHON to an aarch64 python wrapper (shared/research/tvm-0.27.md §5)")
    from compiler.verify import run_onnxruntime

    model = float_cnn()
    result = lower_model(model, get_target("rpi4"), {}, tmp_path)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import numpy as np, tvm\nfrom tvm import relax\n"
        f"vm = relax.VirtualMachine(tvm.runtime.load_module('{tmp_path / result.library_file}'), tvm.cpu())\n"
        f"y = vm['main'](tvm.runtime.tensor(np.load('{tmp_path / 'x.npy'}'))).numpy()\n"
        f"np.save('{tmp_path / 'y.npy'}', y)\n"
    )
    subprocess.run([arm_python, "-c", script], check=True, timeout=600)
    (expected,) = run_onnxruntime(model, {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)
