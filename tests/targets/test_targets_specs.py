"""Target records as data: every spec loads, aliases resolve, numbers are complete, --arch works."""

from __future__ import annotations

import pytest

from compiler.cli import main as cli_main
from compiler.errors import OptionError
from targets import get_target, list_targets
from targets.cost_model import RooflineCostModel
from targets.registry import with_arch

BOARD_TARGETS = ["rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin", "gpu", "fpga"]


def test_all_board_targets_exist_and_have_a_usable_roofline():
    names = {t.name for t in list_targets()}
    assert set(BOARD_TARGETS) | {"cpu"} <= names
    for target in list_targets():
        model = RooflineCostModel(target)  # raises on a missing or non-positive number
        for precision, fast in target.precisions.items():
            if fast and not precision.startswith("sparse"):  # sparsity is a feature, not a dtype
                assert precision in model.peak_gops, (target.name, precision)
        assert target.roofline.get("onchip_memory_kb", 0) > 0 or target.name == "cpu", target.name


@pytest.mark.parametrize(
    ("alias", "name"),
    [("jetson", "jetson-orin-nano"), ("agx-orin", "jetson-agx-orin"), ("rpi", "rpi4"), ("raspberry-pi-5", "rpi5"),
     ("hls", "fpga"), ("host", "cpu")],
)
def test_aliases_resolve_to_the_record(alias, name):
    assert get_target(alias) is get_target(name)


def test_unknown_target_is_one_line_error():
    with pytest.raises(OptionError) as info:
        get_target("jetsonn")
    assert "\n" not in str(info.value) and "jetson-orin-nano" in str(info.value)


def test_cross_targets_do_not_run_locally_and_name_their_toolchain():
    for name in ("rpi4", "rpi5", "jetson-orin-nano", "jetson-agx-orin"):
        target = get_target(name)
        assert not target.runs_locally
        assert target.cross_compiler == "aarch64-linux-gnu-gcc"
        assert target.cross_compiler_package == "g++-aarch64-linux-gnu"
        assert target.host_triple == "aarch64-linux-gnu"
    assert get_target("jetson").cuda_arch == "sm_87" and get_target("jetson-agx-orin").cuda_arch == "sm_87"
    fpga = get_target("fpga")
    assert fpga.requires_integer_only and fpga.export_format == "tar"
    assert not fpga.supports("fp32") and fpga.supports("int4")
    for key in ("lut", "dsp", "bram36", "clock_mhz"):
        assert fpga.spec["fpga"][key] > 0


def test_list_targets_shows_aliases(capsys):
    assert cli_main(["--list-targets"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("jetson-orin-nano"))
    assert "alias: jetson" in line


def test_with_arch_switches_arch_and_roofline():
    gpu = get_target("gpu")
    a100 = with_arch("gpu", "sm_80")
    assert a100.tvm_target["arch"] == "sm_80" and a100.cuda_arch == "sm_80"
    assert a100.roofline["memory_bandwidth_gbps"] == 2039.0 != gpu.roofline["memory_bandwidth_gbps"]
    assert with_arch(gpu, "sm_90") is gpu
    with pytest.raises(OptionError, match="not a CUDA target"):
        with_arch("rpi4", "sm_80")
    with pytest.raises(OptionError, match="expected a CUDA architecture"):
        with_arch("gpu", "ampere")


@pytest.mark.tvm
def test_tags_and_dicts_resolve_in_tvm():
    pytest.importorskip("tvm")
    from targets.lowering.tvm_target import resolve

    expected = {"rpi4": "llvm", "rpi5": "llvm", "jetson-orin-nano": "cuda", "jetson-agx-orin": "cuda", "gpu": "cuda", "fpga": "c"}
    for name, kind in expected.items():
        resolved, _ = resolve(get_target(name))
        assert resolved.kind.name == kind, name
    jetson, _ = resolve(with_arch("jetson", "sm_72"))  # tag -> dict -> Target keeps the aarch64 host
    assert str(jetson.attrs["arch"]) == "sm_72" and "aarch64" in str(jetson.host.attrs["mtriple"])
