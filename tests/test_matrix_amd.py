"""`mmdemo matrix` on fake AMD GPUs, mixed boxes, cards of no class, class names in any case, ports.

The AMD box is the fake amdsmi library (tests/fakes/amdsmi) seen through the real detection, so the
cells' GPUs, their visible-devices variables and the teardown's release check all take the ROCm path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.core.options import Options
from orchestrator.gpus import detect as gpu
from orchestrator.gpus.detect import ROCM, Gpu
from orchestrator.matrix.cells import Capacity, parse_classes, plan_cells
from orchestrator.matrix.local import LocalEngine
from orchestrator.matrix.ports import PortBook, cell_port
from orchestrator.matrix.run import run_matrix
from tests.conftest import FAKE, mi300x, mmdemo

PROFILES = Path(__file__).parent / "profiles" / "matrix"
A, TP2 = (str(PROFILES / f"{n}.yaml") for n in ("fake-a", "fake-tp2"))
VISIBLE = "ROCR_VISIBLE_DEVICES,HIP_VISIBLE_DEVICES,CUDA_VISIBLE_DEVICES"


def options(tmp_path: Path) -> Options:
    return Options(vllm_bin=str(FAKE), offline=True, grace_s=2.0, runs_dir=tmp_path / "runs", timeout_s=20.0)


def server_env(matrix_dir: Path, directory: str | None) -> dict[str, str]:
    """The visible-devices variables as the fake server printed them into its log."""
    out = {}
    for line in (matrix_dir / str(directory) / "server.log").read_text().splitlines():
        if " env " in f" {line}" and "_VISIBLE_DEVICES=" in line:
            name, value = line.split("env ", 1)[1].split("=", 1)
            out[name] = value
    return out


def test_the_matrix_on_amd_gpus_sets_the_hip_and_rocr_variables(
    tmp_path: Path,
    mmdemo_env: dict[str, str],
    amdsmi_box: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    amdsmi_box(mi300x(3))  # an MI300X box as the real detection sees it, through the amdsmi library
    monkeypatch.setenv("FAKE_VLLM_LOG_ENV", VISIBLE)
    outcome = run_matrix([A, TP2], [], options(tmp_path), LocalEngine(gpu.detect))
    assert outcome.exit_code == 0, outcome.record.model_dump_json(indent=1)
    cells = {c.key: c for c in outcome.record.cells}
    assert set(cells) == {"fake-a@MI300X", "fake-tp2@MI300X"}
    assert cells["fake-a@MI300X"].variant == "MI300X"
    assert cells["fake-tp2@MI300X"].variant == "H100"  # no ROCm variant: the largest that fits, borrowed
    for cell in cells.values():
        assert cell.platform == ROCM
        assert len(cell.gpus) == cell.gpu_count
        physical = ",".join(str(i) for i in cell.gpus)
        local = ",".join(str(i) for i in range(len(cell.gpus)))
        expected = {
            "ROCR_VISIBLE_DEVICES": physical,
            "HIP_VISIBLE_DEVICES": local,
            "CUDA_VISIBLE_DEVICES": local,
        }
        assert cell.visible_devices == expected
        assert server_env(outcome.matrix_dir, cell.directory) == expected  # what the server really got
        assert cell.gpu_released is True  # amdsmi's process list no longer names the killed pids
        assert cell.teardown_remaining == 0
        report = (outcome.matrix_dir / str(cell.directory) / "report.md").read_text()
        assert "AMD Instinct MI300X (192 GiB); platform ROCm" in report
    matrix = json.loads((outcome.matrix_dir / "matrix.json").read_text())
    assert {c["platform"] for c in matrix["cells"]} == {ROCM}


def nvidia(index: int) -> Gpu:
    return Gpu(index, "NVIDIA H100 80GB HBM3", 81559, 81000, "570")


def amd(index: int) -> Gpu:
    return Gpu(index, "AMD Instinct MI300X", 196592, 196000, "6.8.5", platform=ROCM)


def test_a_mixed_box_is_refused_unless_gpu_names_one_platform(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    box = [nvidia(0), amd(0), amd(1)]
    with pytest.raises(PreflightError) as info:
        run_matrix([A], [], options(tmp_path), LocalEngine(lambda: box))
    assert str(info.value) == (
        "this machine has GPUs of two platforms, CUDA (H100) and ROCm (MI300X), and one vLLM build drives one"
    )
    assert info.value.hint == "run one platform's classes at a time: --gpu H100 or --gpu MI300X"
    assert not (tmp_path / "runs").exists()  # refused before anything was made
    outcome = run_matrix([A], ["mi300x"], options(tmp_path), LocalEngine(lambda: box))
    (cell,) = outcome.record.cells
    assert (cell.status, cell.gpu_class, cell.platform, cell.gpus) == ("passed", "MI300X", ROCM, [0])
    assert cell.visible_devices["ROCR_VISIBLE_DEVICES"] == "0"  # AMD's GPU 0, not the H100


def test_a_card_of_no_class_counts_as_the_class_its_memory_holds(
    tmp_path: Path, mmdemo_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    ada = Gpu(0, "NVIDIA RTX 6000 Ada Generation", 49140, 49000, "570")
    with caplog.at_level("WARNING"):
        outcome = run_matrix([A], [], options(tmp_path), LocalEngine(lambda: [ada]))
    (cell,) = outcome.record.cells
    assert (cell.gpu_class, cell.variant, cell.status) == ("L40S", "L4", "passed")  # A100-40GB's needs 60 GiB
    assert (
        "GPU 0 (NVIDIA RTX 6000 Ada Generation, 48 GiB) has no class of its own: the matrix counts it as L40S"
        in (caplog.text)
    )


def test_class_names_in_any_case() -> None:
    assert parse_classes("h100, mi300x,L4,h100") == ("H100", "MI300X", "L4")
    cells = plan_cells([A], parse_classes("mi325x"), {"MI325X": Capacity(1, 262128)})
    assert [(c.gpu_class, c.variant, c.runnable) for c in cells] == [("MI325X", "MI300X", True)]


def test_the_command_takes_lower_case_classes(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("matrix", A, "--gpu", "h100,l4", "--emit", "skypilot", "--pipeline", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    assert "--gpu H100 --engine ray" in done.stdout


def test_two_cells_never_get_one_port() -> None:
    book = PortBook()
    offered = iter([41000, 41000, 41000, 41001])
    assert cell_port("127.0.0.1", book.claim, pick=lambda host: next(offered)) == 41000
    assert cell_port("127.0.0.1", book.claim, pick=lambda host: next(offered)) == 41001  # 41000 is taken
    assert book.taken() == [41000, 41001]
