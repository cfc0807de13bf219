"""GPU classes and variant choice (any case, sizing by memory, AMD, mixed boxes), with injected fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.gpus.detect import (
    ROCM,
    Gpu,
    canonical_class,
    describe,
    parse_nvidia_smi,
    variant_for_name,
    visible_env,
)
from orchestrator.launch.checks import check_gpus, choose_variant
from orchestrator.profile.fit import choose, sized_class
from orchestrator.profile.schema import parse_profile_file, parse_profile_text
from tests.conftest import mmdemo

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
        ("AMD Instinct MI300X", 196592, "MI300X"),
        ("AMD Instinct MI300X VF", 196592, "MI300X"),
        ("AMD Instinct MI325X", 262128, "MI325X"),
        ("AMD Instinct MI250X/MI250", 65520, "MI250X"),
        ("Aldebaran/MI200 [Instinct MI210]", 65520, "MI210"),
        ("AMD Instinct MI300A", 131072, None),  # the APU: no class of its own, sized by memory
        ("RTX4090", 24564, "RTX4090"),  # a class name itself, as the matrix plans with
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


# -- class names in any case ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("h200", "H200"),
        ("H100", "H100"),
        ("a100-80gb", "A100-80GB"),
        ("mi300x", "MI300X"),
        ("CPU", "cpu"),
        ("h1000", None),
    ],
)
def test_class_names_match_in_any_case(typed: str, canonical: str | None) -> None:
    assert canonical_class(typed) == canonical


def test_gpu_names_a_variant_in_any_case_and_records_keep_the_canonical_spelling() -> None:
    llava = parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml")
    assert choose(llava, "h200", []).variant == "H200"
    assert choose(llava, "Mi300X", []).variant == "MI300X"
    assert choose_variant(parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml"), "CPU", []) == "cpu"
    with pytest.raises(UsageError, match="'H1000' is no GPU class"):
        choose(llava, "H1000", [])


def test_profile_variant_keys_match_in_any_case() -> None:
    profile = parse_profile_text(
        "model: org/m\nvariants:\n  h100: {}\n  Mi300x: {}\n  CPU: {}\ndemos: [text-only]\n", "x.yaml", "x"
    )
    assert list(profile.variants) == ["H100", "MI300X", "cpu"]
    assert profile.resolve("mi300x").variant == "MI300X"


# -- sizing by memory, on every path --------------------------------------------------------------


def test_a_named_class_without_its_variant_is_sized_by_the_classes_memory() -> None:
    llava = parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml")
    choice = choose(llava, "b200", [])
    assert choice.variant == "H200"
    assert (
        choice.reason
        == "profile llava-1.5-7b has no B200 variant; using H200, the largest that fits B200 (180 GiB)"
    )
    amd = choose(llava, "MI325X", [])
    assert amd.variant == "MI300X"  # its own platform's variant first (192 GiB), not H200's 141
    phi = parse_profile_file(REPO / "profiles" / "phi-3.5-vision.yaml")
    assert choose(phi, "rtx4090", []).variant in ("L4", "A10G")  # 24 GiB
    assert choose(phi, "GH200", []).variant == "H100"  # 96 GiB: the 80 GiB classes fit, H200's 141 does not


def test_a_named_class_that_nothing_fits_is_a_usage_error() -> None:
    tiny = parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml")
    with pytest.raises(UsageError) as info:
        choose(tiny, "h100", [])
    assert (
        str(info.value)
        == "profile 'cpu-tiny-omni' has no variant 'H100', and none of its variants fits H100's 80 GiB"
    )


def test_an_unknown_card_says_which_variant_it_got_and_why() -> None:
    phi = parse_profile_file(REPO / "profiles" / "phi-3.5-vision.yaml")
    odd = Gpu(0, "NVIDIA RTX 6000 Ada Generation", 49140, 49000, "550")
    choice = choose(phi, "auto", [odd])
    assert choice.variant == "L40S"
    assert choice.reason == (
        "GPU 0 (NVIDIA RTX 6000 Ada Generation, 48 GiB) has no class of its own in phi-3.5-vision; "
        "using L40S, the largest variant that fits its memory"
    )
    assert sized_class(odd) == "L40S"
    assert sized_class(Gpu(0, "AMD Instinct MI300A", 131072, platform=ROCM)) == "MI250X"  # its platform's own
    assert sized_class(Gpu(0, "Quadro P1000", 4096)) is None


def test_an_amd_card_of_a_profile_without_rocm_variants_borrows_the_largest_that_fits() -> None:
    profile = parse_profile_text(
        "model: org/m\nrequires: {gpu_memory_gib: 10}\nvariants:\n  H100: {}\n  L4: {}\ndemos: [text-only]\n",
        "x.yaml",
        "x",
    )
    mi300x = Gpu(0, "AMD Instinct MI300X", 196592, 196000, "6.8.5", platform=ROCM)
    choice = choose(profile, "auto", [mi300x])
    assert choice.variant == "H100"
    assert "has no MI300X variant in x" in (choice.reason or "")


# -- AMD boxes and mixed boxes --------------------------------------------------------------------


def amd(index: int, free_mib: int = 196000) -> Gpu:
    return Gpu(index, "AMD Instinct MI300X", 196592, free_mib, "6.8.5", platform=ROCM, detected_by="amdsmi")


def test_an_mi300x_box_runs_the_mi300x_variant() -> None:
    for name in (
        "llava-1.5-7b",
        "phi-3.5-vision",
        "ultravox-0.5-1b",
        "llava-onevision-0.5b",
        "qwen2.5-omni-3b",
    ):
        profile = parse_profile_file(REPO / "profiles" / f"{name}.yaml")
        choice = choose(profile, "auto", [amd(0), amd(1)])
        assert (choice.variant, choice.reason) == ("MI300X", None)
        resolved = profile.resolve(choice.variant)
        assert resolved.env["VLLM_ENGINE_ITERATION_TIMEOUT_S"] == "300"  # vLLM's CI on ROCm
        check_gpus(resolved, choice.gpus)
    busy = amd(0, free_mib=10_240)
    with pytest.raises(PreflightError) as info:
        check_gpus(parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml").resolve("MI300X"), [busy])
    assert "see `amd-smi`" in (info.value.hint or "")


def test_a_mixed_box_is_refused_in_one_line_unless_gpu_picks_the_platform() -> None:
    llava = parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml")
    box = [h100(), amd(0), amd(1)]
    with pytest.raises(PreflightError) as info:
        choose(llava, "auto", box)
    assert str(info.value) == (
        "this machine has GPUs of two platforms, 1 CUDA (H100) and 2 ROCm (MI300X), and one vLLM build drives one"
    )
    assert info.value.hint == "pass --gpu with one class, e.g. --gpu H100 or MI300X"
    on_nvidia = choose(llava, "h100", box)
    assert (on_nvidia.variant, [g.platform for g in on_nvidia.gpus]) == ("H100", ["cuda"])
    on_amd = choose(llava, "MI300X", box)
    assert (on_amd.variant, [g.index for g in on_amd.gpus]) == ("MI300X", [0, 1])
    assert {g.platform for g in on_amd.gpus} == {ROCM}


def test_visible_devices_follow_the_platform() -> None:
    assert visible_env("cuda", [2, 3]) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    # ROCR picks the devices and renumbers them; HIP (and CUDA, which vLLM's ROCm platform checks
    # against HIP) index within what ROCR exposes.
    assert visible_env(ROCM, [2, 3]) == {
        "ROCR_VISIBLE_DEVICES": "2,3",
        "HIP_VISIBLE_DEVICES": "0,1",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }


def test_the_report_names_the_platform() -> None:
    assert describe([]) == "CPU only"
    assert describe([amd(0)]) == "AMD Instinct MI300X (192 GiB); platform ROCm"
    assert describe([h100()]) == "NVIDIA H100 80GB HBM3 (80 GiB); platform CUDA"


def test_plan_takes_a_lower_case_class(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("plan", "llava-1.5-7b", "--gpu", "h200", "--no-prefetch", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    assert "# llava-1.5-7b: llava-hf/llava-1.5-7b-hf on H200" in done.stdout
    sized = mmdemo("plan", "llava-1.5-7b", "--gpu", "b200", "--no-prefetch", env=mmdemo_env)
    assert sized.returncode == 0, sized.stderr
    assert (
        "# profile llava-1.5-7b has no B200 variant; using H200, the largest that fits B200 (179 GiB)"
        in sized.stdout
    )
