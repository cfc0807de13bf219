"""GPU detection and variant choice, with injected fakes: nothing here needs a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import PreflightError, UsageError
from orchestrator.gpu import Gpu, parse_nvidia_smi, variant_for_name
from orchestrator.preflight import check_gpus, choose_variant
from orchestrator.profile import parse_profile_file

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("name", "mib", "variant"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "H100"),
        ("NVIDIA H100 PCIe", 81559, "H100"),
        ("NVIDIA H200", 143771, "H200"),
        ("NVIDIA GH200 480GB", 97871, "GH200"),
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
        ("NVIDIA L40S", 46068, "L40S"),
        ("NVIDIA L4", 23034, "L4"),
        ("NVIDIA A10G", 23028, "A10G"),
        ("Tesla T4", 15360, "T4"),
        ("NVIDIA GeForce RTX 4090", 24564, "RTX4090"),
        ("NVIDIA RTX A6000", 49140, "A6000"),
        ("Quadro P1000", 4096, None),
    ],
)
def test_marketing_names_map_to_variants(name: str, mib: int, variant: str | None) -> None:
    assert variant_for_name(name, mib) == variant


def test_parse_nvidia_smi_csv() -> None:
    out = "NVIDIA H100 80GB HBM3, 81559, 80000, 550.54.15\nNVIDIA L4, 23034, 1000, 550.54.15\n"
    gpus = parse_nvidia_smi(out)
    assert [(g.index, g.variant, g.memory_free_mib, g.driver) for g in gpus] == [
        (0, "H100", 80000, "550.54.15"),
        (1, "L4", 1000, "550.54.15"),
    ]


def h100(free_mib: int = 80000) -> Gpu:
    return Gpu(0, "NVIDIA H100 80GB HBM3", 81559, free_mib, "550")


def test_auto_picks_the_detected_gpus_variant() -> None:
    profile = parse_profile_file(REPO / "profiles" / "phi-3.5-vision.yaml")
    assert choose_variant(profile, "auto", [h100()]) == "H100"


def test_auto_without_gpu_uses_cpu_or_refuses() -> None:
    tiny = parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml")
    assert choose_variant(tiny, "auto", []) == "cpu"
    llava = parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml")
    with pytest.raises(PreflightError) as info:
        choose_variant(llava, "auto", [])
    assert "no GPU found and profile 'llava-1.5-7b' has no cpu variant" in str(info.value)
    assert "H100 (>= 20 GiB)" in (info.value.hint or "")
    assert "T4 (unsupported)" in (info.value.hint or "")


def test_unknown_card_gets_the_largest_variant_that_fits() -> None:
    profile = parse_profile_file(REPO / "profiles" / "phi-3.5-vision.yaml")
    odd = Gpu(0, "NVIDIA RTX 6000 Ada Generation", 49140, 49000, "550")
    assert choose_variant(profile, "auto", [odd]) in ("L40S", "A6000")
    tiny_card = Gpu(0, "Quadro P1000", 4096, 4000, "550")
    with pytest.raises(PreflightError, match="has no variant that fits Quadro P1000"):
        choose_variant(profile, "auto", [tiny_card])


def test_named_variant_must_exist() -> None:
    profile = parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml")
    with pytest.raises(UsageError) as info:
        choose_variant(profile, "H100", [])
    assert info.value.hint == "its variants: cpu"


def test_too_little_free_gpu_memory_is_refused() -> None:
    profile = parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml")
    resolved = profile.resolve("H100")
    check_gpus(resolved, [h100(free_mib=70_000)])
    with pytest.raises(PreflightError) as info:
        check_gpus(resolved, [h100(free_mib=10_240)])
    assert (
        str(info.value)
        == "GPU 0 (NVIDIA H100 80GB HBM3) has 10.0 GiB free; llava-1.5-7b on H100 needs 20 GiB"
    )
    with pytest.raises(PreflightError, match="needs 1 GPU"):
        check_gpus(resolved, [])
