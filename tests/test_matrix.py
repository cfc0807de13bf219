"""`mmdemo matrix` on one box: planning, scheduling on fake GPUs with the fake server, the record, the CLI."""

from __future__ import annotations

import gc
import itertools
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import pytest

from orchestrator.core.options import Options
from orchestrator.gpus.detect import Gpu
from orchestrator.matrix import record as record_mod
from orchestrator.matrix.cells import Capacity, plan_cells
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.local import LocalEngine
from orchestrator.matrix.record import CellRecord
from orchestrator.matrix.run import run_matrix
from tests.conftest import FAKE, marked_pids, mmdemo, wait_for

PROFILES = Path(__file__).parent / "profiles" / "matrix"
A, TP2, FAILS, CPU_ONLY = (
    str(PROFILES / f"{n}.yaml") for n in ("fake-a", "fake-tp2", "fake-fails", "cpu-only")
)
H100 = 81559  # MiB, as NVML reports an H100 80GB
L4 = 23034


def box(*names: str) -> list[Gpu]:
    """Fake GPUs: index, marketing name, total and free memory."""
    memory = {"NVIDIA H100 80GB HBM3": H100, "NVIDIA L4": L4, "NVIDIA A100-SXM4-40GB": 40960}
    return [Gpu(i, n, memory[n], memory[n] - 500, "999.1") for i, n in enumerate(names)]


def options(tmp_path: Path) -> Options:
    return Options(vllm_bin=str(FAKE), offline=True, grace_s=2.0, runs_dir=tmp_path / "runs", timeout_s=20.0)


def intervals(cells: Sequence[CellRecord]) -> dict[str, tuple[float, float]]:
    return {
        c.key: (c.started_s, c.ended_s) for c in cells if c.started_s is not None and c.ended_s is not None
    }


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# -- planning -------------------------------------------------------------------------------------


def test_cells_a_class_cannot_run_are_skipped_with_the_reason() -> None:
    capacity = {"H100": Capacity(1, H100), "L4": Capacity(1, L4)}
    cells = {c.key: c for c in plan_cells([A, TP2], ["H100", "L4", "A100-40GB"], capacity)}
    assert cells["fake-a@H100"].runnable
    assert cells["fake-a@H100"].gpu_count == 1
    assert cells["fake-tp2@L4"].skip == "unsupported: 24 GB cards are too small for the fake"
    assert cells["fake-tp2@H100"].skip == "needs 2 H100 GPUs; this machine has 1"
    assert cells["fake-a@A100-40GB"].skip == "needs 60 GiB per GPU; A100-40GB has 40"
    # A class the machine lacks is not a skip: the cell fails (exit 3), like a preflight refusal.
    assert cells["fake-tp2@A100-40GB"].refuse is None  # no A100-40GB variant and none fits: skipped
    assert "has no variant that fits" in (cells["fake-tp2@A100-40GB"].skip or "")


def test_without_profiles_every_profile_runnable_here_is_planned() -> None:
    capacity = {"H100": Capacity(2, H100)}
    cells = plan_cells([], [], capacity, profiles_dir=str(PROFILES))
    names = {c.profile for c in cells}
    assert {"fake-a", "fake-tp2", "fake-fails"} <= names
    assert "cpu-only" not in names  # no GPU variant: nothing it can run on an H100 box
    assert {c.gpu_class for c in cells} == {"H100"}


def test_a_class_the_machine_lacks_fails_at_once(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    engine = LocalEngine(lambda: box("NVIDIA L4"))
    outcome = run_matrix([A], ["L4", "H100"], options(tmp_path), engine)
    cells = {c.key: c for c in outcome.record.cells}
    assert cells["fake-a@L4"].status == "passed"
    assert cells["fake-a@H100"].status == "error"
    assert cells["fake-a@H100"].reason == "this machine has no H100 GPU"
    assert outcome.exit_code == 3


# -- scheduling on fake GPUs ----------------------------------------------------------------------


def test_disjoint_gpus_run_at_once_and_a_gpu_waits_for_its_release(
    tmp_path: Path, mmdemo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_READY_AFTER", "0.4")
    monkeypatch.setenv("FAKE_VLLM_LOG_ENV", "CUDA_VISIBLE_DEVICES")
    held_until: dict[int, float] = {}
    checks: list[tuple[int, ...]] = []
    hold_s = 0.5

    def release_check(gpus: Sequence[Gpu], record: CellRecord) -> bool:
        # GPU 0 "keeps its memory" for hold_s after the first cell on it ends.
        checks.append(tuple(g.index for g in gpus))
        if 0 in [g.index for g in gpus]:
            until = held_until.setdefault(0, time.monotonic() + hold_s)
            return time.monotonic() >= until
        return True

    probe = lambda: box("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3", "NVIDIA L4")  # noqa: E731
    engine = LocalEngine(probe, release_check=release_check, release_wait_s=5.0)
    outcome = run_matrix([A, TP2], [], options(tmp_path), engine)
    assert outcome.exit_code == 0, outcome.record.model_dump_json(indent=1)
    cells = {c.key: c for c in outcome.record.cells}
    assert set(cells) == {"fake-a@H100", "fake-a@L4", "fake-tp2@H100", "fake-tp2@L4"}
    assert cells["fake-tp2@L4"].status == "skipped"
    assert cells["fake-a@H100"].gpus == [0]
    assert cells["fake-a@L4"].gpus == [2]
    assert cells["fake-tp2@H100"].gpus == [0, 1]
    times = intervals(outcome.record.cells)
    # The H100 cell and the L4 cell ran at the same time; the two-H100 cell waited for GPU 0.
    assert overlap(times["fake-a@H100"], times["fake-a@L4"])
    assert times["fake-tp2@H100"][0] >= times["fake-a@H100"][1] + hold_s - 0.05
    assert (0,) in checks
    ports = [c.port for c in cells.values() if c.port is not None]
    assert len(ports) == 3
    assert len(set(ports)) == 3
    for cell in cells.values():
        if cell.status == "skipped":
            continue
        assert cell.teardown_remaining == 0
        assert cell.cuda_visible_devices == ",".join(str(i) for i in cell.gpus)
        log = (outcome.matrix_dir / str(cell.directory) / "server.log").read_text()
        assert f"env CUDA_VISIBLE_DEVICES={cell.cuda_visible_devices}\n" in log  # it reached the server


def test_a_gpu_that_never_frees_is_held_back(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    engine = LocalEngine(
        lambda: box("NVIDIA H100 80GB HBM3"), release_check=lambda gpus, rec: False, release_wait_s=0.1
    )
    outcome = run_matrix([A, FAILS], ["H100"], options(tmp_path), engine)
    first, second = outcome.record.cells
    assert first.status == "passed"
    assert first.gpu_released is False
    assert second.status == "error"
    assert second.reason == "not enough H100 GPUs left: GPU(s) [0] still hold memory after an earlier cell"
    assert outcome.exit_code == 3


def test_cpu_only_box_runs_one_cell_at_a_time(
    tmp_path: Path, mmdemo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VLLM_READY_AFTER", "0.3")
    outcome = run_matrix([A, TP2, CPU_ONLY], [], options(tmp_path), LocalEngine(list))
    assert outcome.exit_code == 0
    assert [c.gpu_class for c in outcome.record.cells] == ["cpu"] * 3
    times = sorted(intervals(outcome.record.cells).values())
    assert len(times) == 3
    assert all(not overlap(a, b) for a, b in itertools.pairwise(times))
    assert all(c.cuda_visible_devices is None for c in outcome.record.cells)


# -- the record -----------------------------------------------------------------------------------


def test_the_record_json_md_and_junit(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    engine = LocalEngine(lambda: box("NVIDIA H100 80GB HBM3", "NVIDIA L4"))
    outcome = run_matrix([A, FAILS, TP2], ["H100", "L4"], options(tmp_path), engine)
    matrix_dir = outcome.matrix_dir
    data = json.loads((matrix_dir / "matrix.json").read_text())
    jsonschema.validate(data, record_mod.schema())
    assert record_mod.load(matrix_dir / "matrix.json") == outcome.record
    cells = {(c["profile"], c["gpu_class"]): c for c in data["cells"]}
    assert cells[("fake-a", "H100")]["status"] == "passed", cells[("fake-a", "H100")]  # the reason, when not
    assert cells[("fake-a", "H100")]["demos_passed"] == cells[("fake-a", "H100")]["demos_total"] == 1
    assert cells[("fake-a", "H100")]["time_to_ready_s"] > 0
    assert cells[("fake-fails", "H100")]["status"] == "failed"
    assert cells[("fake-fails", "H100")]["exit_code"] == 1
    assert (
        cells[("fake-fails", "H100")]["reason"] == "1 of 1 demo requests failed; text-only/text: fake refusal"
    )
    assert cells[("fake-fails", "L4")]["status"] == "skipped"  # no L4 variant, H100's does not fit
    assert cells[("fake-tp2", "H100")]["reason"] == "needs 2 H100 GPUs; this machine has 1"
    assert data["exit_code"] == outcome.exit_code == 1  # the worst cell: a failed demo
    for cell in data["cells"]:
        if cell["status"] != "skipped":
            assert (matrix_dir / cell["directory"] / "report.json").is_file()
            assert (matrix_dir / cell["directory"] / "server.log").is_file()
    grid = (matrix_dir / "matrix.md").read_text().splitlines()
    assert "| profile | H100 | L4 |" in grid
    row = next(line for line in grid if line.startswith("| fake-a |"))
    assert "✅ passed, 1/1, ready" in row
    assert "(fake-a-H100/report.md)" in row
    assert "⏭ skipped: unsupported: 24 GB cards are too small for the fake" in grid[-1]
    suites = ET.parse(matrix_dir / "junit.xml").getroot()
    assert suites.tag == "testsuites"
    names = [s.get("name") for s in suites]
    assert names == [f"mmdemo.matrix.{c.key}" for c in outcome.record.cells]
    assert suites.get("skipped") == "3"
    assert int(suites.get("failures") or 0) == 1
    failed = next(s for s in suites if s.get("name") == "mmdemo.matrix.fake-fails@H100")
    assert "fake refusal" in ET.tostring(failed, encoding="unicode")


def test_exit_code_is_the_worst_cells() -> None:
    def cell(status: str, code: int) -> CellRecord:
        return CellRecord(profile="p", gpu_class="H100", status=status, exit_code=code)  # type: ignore[arg-type]

    assert record_mod.worst_exit_code([cell("passed", 0), cell("skipped", 0)]) == 0
    assert record_mod.worst_exit_code([cell("failed", 1), cell("error", 3), cell("passed", 0)]) == 3
    assert record_mod.worst_exit_code([cell("error", 3), cell("interrupted", 130)]) == 130
    assert record_mod.worst_exit_code([cell("error", 4), cell("error", 3)]) == 4


def test_the_markdown_has_a_column_per_task_a_cell_ran() -> None:
    from orchestrator.matrix.cell import task_statuses

    whisper = task_statuses([
        {"name": "transcription/plain", "task": "transcription", "status": "passed"},
        {"name": "translation/plain", "task": "translation", "status": "passed"},
        {"name": "translation/stream", "task": "translation", "status": "failed"},
    ])  # fmt: skip
    assert whisper == {"transcription": "passed", "translation": "failed"}
    omni = task_statuses([{"name": "text-only/text", "task": None, "status": "passed"}])
    cells = [
        CellRecord(profile="w", gpu_class="CPU", status="failed", exit_code=1, task_statuses=whisper),
        CellRecord(profile="o", gpu_class="CPU", status="passed", exit_code=0, task_statuses=omni),
    ]
    record = record_mod.MatrixRecord(
        mmdemo_version="0", engine="local", status="failed", exit_code=1, profiles=["w", "o"],
        gpu_classes=["CPU"], started_at="t", finished_at="t", wall_s=1.0, cells=cells,
    )  # fmt: skip
    lines = record_mod.to_markdown(record).splitlines()
    start = lines.index("## Tasks")
    assert lines[start + 2 : start + 6] == [
        "| profile | GPU | chat | transcription | translation |",
        "|---|---|---|---|---|",
        "| w | CPU | – | ✅ | ❌ |",
        "| o | CPU | ✅ | – | – |",
    ]
    chat_only = record.model_copy(update={"cells": [cells[1]]})
    assert "## Tasks" not in record_mod.to_markdown(chat_only)  # chat alone: the grid says it all


# -- interrupting ---------------------------------------------------------------------------------


# An interrupted run abandons its requests in flight; their sockets end when the server is torn down,
# but in-process (not in a CLI process, which exits) they may be collected late: collect them here,
# inside this test, instead of letting the warning land in whichever test the collector runs next.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_tears_down_every_running_cell(
    tmp_path: Path, mmdemo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two cells on two GPUs, both serving a slow demo; one more cell waits for a GPU.
    markers = tmp_path / "requests"
    markers.mkdir()
    monkeypatch.setenv("FAKE_VLLM_LATENCY", "60")
    monkeypatch.setenv("FAKE_VLLM_WORKERS", "2")
    monkeypatch.setenv("FAKE_VLLM_REQUEST_FILE", str(markers / "any"))
    interrupt = Interrupt()

    def interrupt_when_serving() -> None:
        wait_for(lambda: len(marked_pids()) >= 6, timeout_s=20, what="two servers with two workers each")
        wait_for((markers / "any").exists, timeout_s=20, what="a demo request in flight")
        interrupt.set("SIGTERM")

    probe = lambda: box("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")  # noqa: E731
    thread = threading.Thread(target=interrupt_when_serving)
    thread.start()
    outcome = run_matrix(
        [A, FAILS, TP2], ["H100"], options(tmp_path), LocalEngine(probe), interrupt=interrupt
    )
    thread.join()
    cells = {c.key: c for c in outcome.record.cells}
    assert cells["fake-a@H100"].status == "interrupted"
    assert cells["fake-fails@H100"].status == "interrupted"
    assert cells["fake-tp2@H100"].status == "interrupted"
    assert cells["fake-tp2@H100"].reason == "not started: SIGTERM"
    assert outcome.exit_code == 130
    for key in ("fake-a@H100", "fake-fails@H100"):
        assert cells[key].teardown_remaining == 0
        report = json.loads((outcome.matrix_dir / str(cells[key].directory) / "report.json").read_text())
        assert report["status"] == "interrupted"
    assert not marked_pids()
    gc.collect()


# -- the command ----------------------------------------------------------------------------------


def test_the_command_prints_a_line_per_cell(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    done = mmdemo(
        "matrix", A, CPU_ONLY, "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--grace", "2", env=mmdemo_env,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "matrix   2 cell(s), 2 to run, on local" in out
    assert "fake-a@cpu" in out
    assert "cpu-only@cpu" in out
    assert "PASSED 2/2 cells passed (0 skipped)" in out
    matrix_dir = next((tmp_path / "runs").glob("*-matrix"))
    assert json.loads((matrix_dir / "matrix.json").read_text())["exit_code"] == 0


def test_the_command_refuses_an_unknown_gpu_class(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("matrix", A, "--gpu", "H100,H1000", env=mmdemo_env)
    assert done.returncode == 2
    assert "--gpu: unknown GPU class 'H1000'" in done.stderr


def test_the_command_prints_the_record_schema(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("matrix", "--schema", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == record_mod.schema()
    assert {"cells", "exit_code", "engine"} <= set(printed["required"])
    jsonschema.Draft202012Validator.check_schema(printed)
