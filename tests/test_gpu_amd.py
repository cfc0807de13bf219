"""AMD GPUs without an AMD GPU: recorded amd-smi / rocm-smi outputs, a fake amdsmi library, the teardown's wait.

The recorded outputs (tests/gpu_outputs, formats and sources in its README.md) are parsed as AMD's
tools print them; the fake `amd-smi` / `rocm-smi` commands (tests/fakes) print them for the detection
paths; the fake `amdsmi` module (tests/fakes/amdsmi) follows the py-interface README's calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.gpus import detect as gpu
from orchestrator.gpus import rocm
from orchestrator.gpus.detect import CUDA, ROCM, Gpu
from orchestrator.launch import proctree
from tests.conftest import FAKES, GPU_OUTPUTS, REPO, fake_amdsmi_state, mi300x, mmdemo, server_for, wait_for


def recorded(name: str) -> str:
    return (GPU_OUTPUTS / name).read_text()


@pytest.fixture
def no_amdsmi(monkeypatch: pytest.MonkeyPatch) -> None:
    """The amdsmi library is not installed (the CLI tools are what is left)."""
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # `import amdsmi` raises ImportError


@pytest.fixture
def tools_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., None]:
    """Put the fake amd-smi and/or rocm-smi (and nothing else of AMD's) on PATH."""

    def put(*names: str) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name in names:
            (bin_dir / name).symlink_to(FAKES / name)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    return put


# -- the recorded formats -------------------------------------------------------------------------


def test_amd_smi_static_and_metric_of_an_mi300x_box() -> None:
    gpus = rocm.parse_amd_smi(recorded("amd-smi-6.2-static.json"), recorded("amd-smi-6.2-metric-mem.json"))
    assert [g.index for g in gpus] == list(range(8))
    first = gpus[0]
    assert (first.name, first.gpu_class, first.platform, first.detected_by) == (
        "AMD Instinct MI300X",
        "MI300X",
        ROCM,
        "amd-smi",
    )
    assert first.memory_total_mib == 196592
    assert first.memory_free_mib == 196592 - 283
    assert first.driver == "6.8.5"
    assert gpus[3].memory_free_mib == 196592 - 150212  # GPU 3 is busy


def test_amd_smi_rocm7_wraps_its_list_and_a_vf_without_a_name_is_known_by_its_device_id() -> None:
    gpus = rocm.parse_amd_smi(recorded("amd-smi-7.1-static-vf.json"))
    assert [(g.name, g.gpu_class) for g in gpus] == [
        ("AMD Instinct MI300X VF", "MI300X"),
        ("AMD Instinct MI300X VF", "MI300X"),  # market_name N/A: device id 0x74b5
    ]
    assert all(g.memory_free_mib is None for g in gpus)  # no metric output: free unknown, not zero


def test_rocm_smi_product_and_meminfo() -> None:
    gpus = rocm.parse_rocm_smi(recorded("rocm-smi-6.2-product-meminfo.json"))
    assert len(gpus) == 8
    assert {(g.gpu_class, g.memory_total_mib, g.platform) for g in gpus} == {("MI300X", 196592, ROCM)}
    assert gpus[0].memory_free_mib == 196592 - 283
    old = rocm.parse_rocm_smi(recorded("rocm-smi-5.7-product-meminfo-mi250x.json"))
    assert [(g.index, g.gpu_class, round(g.memory_total_gib)) for g in old] == [
        (0, "MI250X", 64),
        (1, "MI250X", 64),
    ]


def test_process_lists() -> None:
    assert rocm.parse_amd_smi_process(recorded("amd-smi-6.2-process.json")) == {48213, 48290}
    assert rocm.parse_amd_smi_process(recorded("amd-smi-7.1-process.json")) == {7741}
    assert rocm.parse_rocm_smi_pids(recorded("rocm-smi-6.2-showpids.json")) == {48213, 48290}
    idle = '[{"gpu": 0, "process_list": [{"process_info": "No running processes detected"}]}]'
    assert rocm.parse_amd_smi_process(idle) == set()
    assert rocm.parse_amd_smi_process("amd-smi: command failed") is None  # not an answer: unknown
    assert rocm.parse_rocm_smi_pids("") is None


def test_garbage_is_no_gpu_not_a_crash() -> None:
    assert rocm.parse_amd_smi("not json") == []
    assert rocm.parse_amd_smi('{"gpu_data": [{"gpu": 0, "asic": {}}]}') == []  # no vram size: left out
    assert rocm.parse_rocm_smi('{"card0": {"Card Series": "x"}}') == []


# -- the detection paths --------------------------------------------------------------------------


def test_without_any_amd_tool_there_is_nothing_to_ask(
    no_amdsmi: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert rocm.detect() is None
    assert rocm.holders() is None


def test_amd_smi_is_asked_when_the_library_is_missing(
    no_amdsmi: None, tools_on_path: Callable[..., None]
) -> None:
    tools_on_path("amd-smi", "rocm-smi")
    gpus = rocm.detect()
    assert gpus is not None
    assert len(gpus) == 8
    assert {g.detected_by for g in gpus} == {"amd-smi"}
    assert rocm.holders() == {48213, 48290}


def test_rocm_smi_is_the_last_resort(no_amdsmi: None, tools_on_path: Callable[..., None]) -> None:
    tools_on_path("rocm-smi")
    gpus = rocm.detect()
    assert gpus is not None
    assert {g.detected_by for g in gpus} == {"rocm-smi"}
    assert rocm.holders() == {48213, 48290}


def test_the_amdsmi_library_comes_first(
    amdsmi_box: Callable[..., Path], tools_on_path: Callable[..., None]
) -> None:
    tools_on_path("amd-smi")  # present, but the library answers first
    amdsmi_box(mi300x(2, used_mb=1000), holders={"1": [os.getpid()]})
    gpus = rocm.detect()
    assert gpus == [
        Gpu(0, "AMD Instinct MI300X", 196592, 195592, "6.8.5", platform=ROCM, detected_by="amdsmi"),
        Gpu(1, "AMD Instinct MI300X", 196592, 195592, "6.8.5", platform=ROCM, detected_by="amdsmi"),
    ]
    assert rocm.holders() == {os.getpid()}


def test_an_amdsmi_without_its_driver_falls_back_to_the_tools(
    amdsmi_box: Callable[..., Path], tools_on_path: Callable[..., None]
) -> None:
    amdsmi_box([], no_driver=True)
    tools_on_path("rocm-smi")
    gpus = rocm.detect()
    assert gpus is not None
    assert {g.detected_by for g in gpus} == {"rocm-smi"}


def fake_pynvml(names: list[tuple[str, int]]) -> types.ModuleType:
    """Just enough of pynvml for detect(): the names and total memory (MiB) of some NVIDIA cards."""
    module = types.ModuleType("pynvml")
    mib = 2**20
    calls = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: "570.86.15",
        "nvmlDeviceGetCount": lambda: len(names),
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda i: names[i][0],
        "nvmlDeviceGetMemoryInfo": lambda i: types.SimpleNamespace(
            total=names[i][1] * mib, free=names[i][1] * mib
        ),
        "nvmlDeviceGetComputeRunningProcesses": lambda i: [types.SimpleNamespace(pid=4242)] if i == 0 else [],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda i: [],
    }
    for name, call in calls.items():
        setattr(module, name, call)
    return module


def test_a_mixed_box_lists_both_vendors_with_their_platforms(
    amdsmi_box: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([("NVIDIA H100 80GB HBM3", 81559)]))
    amdsmi_box(mi300x(2), holders={"0": [os.getpid()]})
    found = gpu.detect()
    assert [(g.index, g.gpu_class, g.platform) for g in found] == [
        (0, "H100", CUDA),
        (0, "MI300X", ROCM),
        (1, "MI300X", ROCM),
    ]
    assert gpu.pids_using_gpus() == {4242, os.getpid()}  # the union: whichever GPU a pid holds


def test_gpu_pids_is_none_only_where_no_tool_can_tell(
    no_amdsmi: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu.pids_using_gpus() is None


# -- the teardown waits for AMD memory to be released ---------------------------------------------


def test_teardown_waits_until_the_killed_processes_leave_the_amd_gpu(
    tmp_path: Path, amdsmi_box: Callable[..., Path]
) -> None:
    holders = tmp_path / "holders"
    amdsmi_box(mi300x(1), holders_file=str(holders))
    seen: list[set[int] | None] = []

    def gpu_pids() -> set[int] | None:
        seen.append(pids := gpu.pids_using_gpus())
        return pids

    server = server_for(tmp_path, workers="2", gpu_pids=gpu_pids)
    with server:
        server.wait_ready(10)
        wait_for((tmp_path / "marker").exists, what="workers spawned")
        tree = server.census()
        holders.write_text("\n".join(str(p) for p in tree))  # the engine and its workers hold memory
        assert (gpu.pids_using_gpus() or set()) >= tree
    teardown = server.stop()
    assert teardown.remaining == 0
    assert teardown.gpu_released is True
    assert seen[-1] is not None
    assert not (seen[-1] & tree)  # released: none of the killed pids is listed any more


def test_memory_that_is_never_released_is_reported(
    tmp_path: Path, amdsmi_box: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proctree, "GPU_RELEASE_WAIT_S", 0.3)
    holders = tmp_path / "holders"
    amdsmi_box(mi300x(1), holders_file=str(holders), sticky=True)  # the driver keeps listing them
    server = server_for(tmp_path, gpu_pids=gpu.pids_using_gpus)
    with server:
        server.wait_ready(10)
        holders.write_text(str(server.pid))
    teardown = server.stop()
    assert teardown.remaining == 0
    assert teardown.gpu_released is False


# -- the commands on a (fake) MI300X box ----------------------------------------------------------


def test_doctor_and_plan_on_an_mi300x_box(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    state = fake_amdsmi_state(tmp_path, mi300x(8))
    env = {**mmdemo_env, "PYTHONPATH": str(FAKES), "FAKE_AMDSMI": str(state), "PATH": "/usr/bin:/bin"}
    doctor = mmdemo("doctor", env=env)
    assert doctor.returncode == 0, doctor.stderr
    out = " ".join(doctor.stdout.split())  # rich may wrap the long lines
    assert (
        "GPU 7: AMD Instinct MI300X: 191.7 GiB free of 192 GiB (class MI300X, ROCm, driver 6.8.5, found by amdsmi)"
        in out
    )
    assert "platform: ROCm" in out
    plan = mmdemo("plan", "llava-1.5-7b", "--no-prefetch", env=env)
    assert plan.returncode == 0, plan.stderr
    assert "# llava-1.5-7b: llava-hf/llava-1.5-7b-hf on MI300X" in plan.stdout
    assert "export VLLM_ENGINE_ITERATION_TIMEOUT_S=300" in plan.stdout


def test_doctor_says_when_vllm_is_not_a_build_for_the_platform() -> None:
    from orchestrator.cli.doctor import platform_line

    amd = [Gpu(0, "AMD Instinct MI300X", 196592, platform=ROCM)]
    nvidia = [Gpu(0, "NVIDIA H100 80GB HBM3", 81559)]
    assert platform_line(amd, "0.18.0+rocm700") == "ROCm (vLLM 0.18.0+rocm700)"
    assert platform_line(amd, "0.33.0") == (
        "ROCm, but vLLM 0.33.0 is not a ROCm build: `make install-vllm` says how to get one"
    )
    assert platform_line(nvidia, "0.33.0") == "CUDA (vLLM 0.33.0)"
    assert platform_line(amd + nvidia, None).startswith("ROCm and CUDA: one vLLM build drives one platform")


def test_install_vllm_on_an_amd_box_says_how_to_get_vllm_for_rocm(
    tmp_path: Path, tools_on_path: Callable[..., None]
) -> None:
    tools_on_path("rocm-smi")  # what the script looks for, with amd-smi and /dev/kfd
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("MMDEMO_PLATFORM", "MMDEMO_VLLM_ROCM")}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-vllm.sh"), str(venv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "AMD GPU (ROCm) found: PyPI's vllm wheel is the CUDA build" in done.stdout
    assert "vllm/vllm-openai-rocm:latest" in done.stdout  # the official ROCm image
    assert "--extra-index-url https://wheels.vllm.ai/rocm/" in done.stdout  # or vLLM's ROCm wheels
    assert not venv.exists()  # nothing installed
