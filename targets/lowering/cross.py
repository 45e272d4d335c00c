"""Cross-compilation for board targets: toolchain checks, integer-only checks, artifact formats.

Board artifacts are built on this (x86-64) machine: LLVM emits aarch64 objects for the host code,
Debian's aarch64 cross gcc links them into a ``.so``, and (CUDA boards) nvcc builds the kernels
for the board's ``sm_XX`` (targets/lowering/cuda.py). This module holds what every cross target
shares:

- :func:`require_cross_compiler`: the target's cross compiler is on PATH, else a one-line
  :class:`ToolchainMissingError` naming the Debian package that installs it. The compile driver
  catches it after the passes and the cost model have run and reports lowering as skipped.
- :func:`check_integer_only`: targets without float units (fpga) reject graphs with float compute.
- :func:`elf_machine` / :func:`fatbin_archs`: read an artifact's architecture from its bytes (ELF
  header, CUDA fatbin headers), so the build checks what it wrote and tests can check it again.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import onnx

from compiler.errors import LoweringError, OptionError
from targets.registry import Target

# Packages for cross compilers a spec may name without ``cross_compiler_package`` (Debian names).
KNOWN_PACKAGES = {
    "aarch64-linux-gnu-gcc": "g++-aarch64-linux-gnu",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "arm-linux-gnueabihf-gcc": "g++-arm-linux-gnueabihf",
    "riscv64-linux-gnu-gcc": "g++-riscv64-linux-gnu",
}


class ToolchainMissingError(LoweringError):
    """A compiler the target needs is not installed; ``package`` is the Debian package with it.

    A subclass of LoweringError so callers that do not know it still print one line and stop;
    ``compile`` catches it to finish the passes, cost model and report with lowering skipped.
    """

    def __init__(self, message: str, tool: str, package: str | None):
        super().__init__(message)
        self.tool = tool
        self.package = package


def require_cross_compiler(target: Target) -> str | None:
    """The path of ``target``'s cross compiler (None when it links with the host's).

    Raises ToolchainMissingError (one line, with the apt-get command) when it is not on PATH.
    """
    tool = target.cross_compiler
    if not tool:
        return None
    path = shutil.which(tool)
    if path is None:
        package = target.cross_compiler_package or KNOWN_PACKAGES.get(tool)
        how = f"install it with: apt-get install {package}" if package else "install it and put it on PATH"
        raise ToolchainMissingError(
            f"target '{target.name}' needs the cross compiler {tool}, which is not on PATH; {how}", tool, package
        )
    return path


# ------------------------------------------------------------------------------------------------
# Integer-only graphs (fpga)
# ------------------------------------------------------------------------------------------------
_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes that compute on floats outside the integer-only form's boundary, as ``op 'name'``.

    The integer-only form (DESIGN.md) may have a float QuantizeLinear on a graph input and a float
    DequantizeLinear on a graph output; constants may be float (scales folded at compile time).
    Every other node with a float non-constant input or output is a float island. Dtypes come from
    ONNX shape inference; a value whose dtype stays unknown is not counted against the graph.
    """
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = inferred.graph
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    constants = {init.name for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants.update(node.output)
    graph_inputs = {v.name for v in graph.input} - constants
    graph_outputs = {v.name for v in graph.output}
    bad = []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type == "QuantizeLinear" and node.input[0] in graph_inputs:
            continue
        if node.op_type == "DequantizeLinear" and all(o in graph_outputs for o in node.output):
            continue
        values = [v for v in [*node.input, *node.output] if v and v not in constants]
        if all(dtypes.get(v) not in _FLOAT_TYPES for v in values):
            # A node fed by constants only is folded at compile time: mark its outputs constant.
            if all(v in constants for v in node.input if v):
                constants.update(node.output)
            continue
        if all(v in constants for v in node.input if v):
            constants.update(node.output)
            continue
        bad.append(f"{node.op_type} '{node.name or node.output[0]}'")
    return bad


def check_integer_only(model: onnx.ModelProto, target: Target) -> None:
    """Raise OptionError (one line) when ``target`` requires an integer-only graph and this is not."""
    if not target.requires_integer_only:
        return
    bad = float_nodes(model)
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise OptionError(
            f"target '{target.name}' runs integer-only graphs, but {len(bad)} node(s) compute in float "
            f"({shown}); compile with --quantize int8 (or int4)"
        )


# ------------------------------------------------------------------------------------------------
# Artifact formats
# ------------------------------------------------------------------------------------------------
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 190: "cuda", 243: "riscv"}
"""ELF ``e_machine`` values (System V gABI / the psABIs) -> our names."""

TRIPLE_MACHINE = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "riscv64": "riscv"}


def elf_machine(data: bytes | Path) -> str:
    """The machine an ELF file is for (``aarch64``, ``x86_64``...), read from its header.

    ELF header: ``\\x7fELF``, EI_CLASS (byte 4), EI_DATA (byte 5: 1 little, 2 big endian), and
    ``e_machine`` (uint16 at offset 18). Raises ValueError for data that is not ELF.
    """
    if isinstance(data, Path):
        with open(data, "rb") as handle:
            data = handle.read(64)
    if len(data) < 20 or data[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    endian = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack_from(endian + "H", data, 18)
    return ELF_MACHINES.get(machine, f"e_machine={machine}")


def expected_machine(triple: str | None) -> str | None:
    """The ELF machine name for a target triple (``aarch64-linux-gnu`` -> ``aarch64``)."""
    if not triple:
        return None
    return TRIPLE_MACHINE.get(triple.split("-")[0])


def check_elf(path: Path, triple: str | None) -> str:
    """Check that the library at ``path`` is an ELF for ``triple``'s CPU; returns the machine.

    Raises LoweringError when the export produced something else (a wrong linker on PATH, say).
    """
    machine = elf_machine(path)
    want = expected_machine(triple)
    if want is not None and machine != want:
        raise LoweringError(f"exported '{path.name}' is an ELF for {machine}, expected {want} ({triple})")
    return machine


_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_KINDS = {1: "ptx", 2: "cubin"}


def fatbin_archs(data: bytes) -> list[tuple[str, str]]:
    """``[(kind, "sm_XX"), ...]`` of every CUDA fat binary embedded anywhere in ``data``.

    Layout (the format nvcc writes; documented by cuobjdump's output and reverse-engineered in
    e.g. the "fatbin" notes of the gpuocelot/cuda-fatbin-decompression projects): a 16-byte
    header ``uint32 magic 0xBA55ED50, uint16 version, uint16 header_size, uint64 fat_size``, then
    entries ``uint16 kind (1 PTX, 2 ELF cubin), uint16 version, uint32 header_size,
    uint64 padded_payload_size, ..., uint32 sm_version at offset 28``, each followed by its payload.
    """
    found = []
    magic = struct.pack("<I", _FATBIN_MAGIC)
    start = data.find(magic)
    while start != -1:
        if start + 16 <= len(data):
            _, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, start)
            pos, end = start + header_size, min(len(data), start + header_size + fat_size)
            while pos + 32 <= end:
                kind, _, entry_header, padded = struct.unpack_from("<HHIQ", data, pos)
                (sm,) = struct.unpack_from("<I", data, pos + 28)
                if kind not in _FATBIN_KINDS or entry_header < 32:
                    break
                found.append((_FATBIN_KINDS[kind], f"sm_{sm}"))
                pos += entry_header + padded
        start = data.find(magic, start + 4)
    return found
