"""`mmdemo matrix --engine ray` for real: a local Ray declaring fake GPUs, and a two-node Ray cluster.

Ray sets CUDA_VISIBLE_DEVICES per task; the fake server prints it into its log, which comes back
to the driver's matrix directory with the cell's other files.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

from orchestrator.core.options import Options
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.ray_engine import RayEngine
from orchestrator.matrix.run import run_matrix
from tests.conftest import FAKE, marked_pids, mmdemo, wait_for

PROFILES = Path(__file__).parent / "profiles" / "matrix"
A, TP2 = (str(PROFILES / f"{n}.yaml") for n in ("fake-a", "fake-tp2"))


@pytest.fixture
def ray_env(mmdemo_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The environment Ray's workers inherit: the fake prints CUDA_VISIBLE_DEVICES into its log."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FAKE_VLLM_LOG_ENV", "CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    yield
    ray.shutdown()


def options(tmp_path: Path) -> Options:
    return Options(vllm_bin=str(FAKE), offline=True, grace_s=2.0, runs_dir=tmp_path / "runs", timeout_s=20.0)


def server_saw(matrix_dir: Path, directory: str | None) -> str:
    log = (matrix_dir / str(directory) / "server.log").read_text()
    line = next(x for x in log.splitlines() if "env CUDA_VISIBLE_DEVICES=" in x)
    return line.split("env CUDA_VISIBLE_DEVICES=", 1)[1]


def test_local_ray_with_fake_gpus(tmp_path: Path, ray_env: None) -> None:
    ray.init(
        num_cpus=3,
        num_gpus=2,
        resources={"mmdemo-gpu:H100": 2, "accelerator_type:H100": 1},
        include_dashboard=False,
        log_to_driver=False,
    )
    outcome = run_matrix([A, TP2], ["H100", "A100-80GB"], options(tmp_path), RayEngine())
    cells = {c.key: c for c in outcome.record.cells}
    assert outcome.record.engine == "ray"
    for key in ("fake-a@H100", "fake-tp2@H100"):
        cell = cells[key]
        assert cell.status == "passed", cell
        assert cell.teardown_remaining == 0
        assert (outcome.matrix_dir / str(cell.directory) / "report.json").is_file()  # shipped back
        assert cell.cuda_visible_devices == server_saw(outcome.matrix_dir, cell.directory)
        assert len(cell.cuda_visible_devices.split(",")) == cell.gpu_count
    assert cells["fake-tp2@H100"].cuda_visible_devices in ("0,1", "1,0")
    # A class the cluster lacks fails at once with the reason (Ray would queue the task forever).
    assert cells["fake-a@A100-80GB"].status == "error"
    assert cells["fake-a@A100-80GB"].reason == "the Ray cluster has no A100-80GB GPU"
    assert outcome.exit_code == 3
    record = json.loads((outcome.matrix_dir / "matrix.json").read_text())
    assert record["cells"][0]["node"]


def test_two_node_cluster_places_cells_on_their_class_with_ports_that_never_collide(
    tmp_path: Path, ray_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both nodes share this host, as nodes of one machine or host-network containers do: ports
    # picked on each node alone could collide; the driver's port book hands each number out once.
    monkeypatch.setenv("FAKE_VLLM_LOG_ENV", "CUDA_VISIBLE_DEVICES,HIP_VISIBLE_DEVICES,ROCR_VISIBLE_DEVICES")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 3, "num_gpus": 3, "resources": {"mmdemo-gpu:H100": 3}},
    )
    try:
        worker = cluster.add_node(num_cpus=2, num_gpus=1, resources={"mmdemo-gpu:MI300X": 1})
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        engine = RayEngine()
        assert {k: v.count for k, v in engine.capacity().items()} == {"H100": 3, "MI300X": 1}
        outcome = run_matrix([A, TP2], ["H100", "MI300X"], options(tmp_path), engine)
        cells = {c.key: c for c in outcome.record.cells}
        assert cells["fake-tp2@MI300X"].status == "skipped"  # its H100 variant, borrowed, needs 2 GPUs
        assert outcome.exit_code == 0, outcome.record.model_dump_json(indent=1)
        on_amd = cells["fake-a@MI300X"]
        assert worker.node_id in str(on_amd.node)
        assert all(worker.node_id not in str(cells[k].node) for k in cells if k.endswith("@H100"))
        # The AMD node's cell gets the ROCm variables for the GPU Ray gave it.
        assert on_amd.visible_devices == {
            "ROCR_VISIBLE_DEVICES": "0",
            "HIP_VISIBLE_DEVICES": "0",
            "CUDA_VISIBLE_DEVICES": "0",
        }
        assert server_saw(outcome.matrix_dir, on_amd.directory) == "0"
        assert (
            "env HIP_VISIBLE_DEVICES=0"
            in (outcome.matrix_dir / str(on_amd.directory) / "server.log").read_text()
        )
        tp2, one = cells["fake-tp2@H100"], cells["fake-a@H100"]
        assert sorted(server_saw(outcome.matrix_dir, tp2.directory).split(",")) == sorted(map(str, tp2.gpus))
        assert len(tp2.gpus) == 2
        assert set(tp2.gpus).isdisjoint(one.gpus)
        ran = [c for c in outcome.record.cells if c.status == "passed"]
        assert len(ran) == 3  # at the same time: three servers on one host
        ports = [c.port for c in ran]
        assert None not in ports
        assert len(set(ports)) == len(ports)  # one number per cell, across both nodes
        assert sorted(ray.get(engine.ports.taken.remote())) == sorted(ports)  # each one from the book
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_an_interrupt_ends_every_cell_and_brings_its_files_back(
    tmp_path: Path, ray_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two cells that cannot share the two GPUs: one serves a demo that would take a minute, the
    # other waits. The interrupt reaches the running task through the stop-flag actor: its server
    # is torn down at once (not when the request ends) and its files still come back.
    monkeypatch.setenv("FAKE_VLLM_LATENCY", "60")
    monkeypatch.setenv("FAKE_VLLM_REQUEST_FILE", str(tmp_path / "serving"))
    ray.init(
        num_cpus=3, num_gpus=2, resources={"mmdemo-gpu:H100": 2}, include_dashboard=False, log_to_driver=False
    )
    interrupt = Interrupt()
    interrupted_at: list[float] = []

    def interrupt_when_serving() -> None:
        wait_for((tmp_path / "serving").exists, timeout_s=120, what="a demo request in flight")
        interrupted_at.append(time.monotonic())
        interrupt.set("SIGINT")

    thread = threading.Thread(target=interrupt_when_serving)
    thread.start()
    outcome = run_matrix([A, TP2], ["H100"], options(tmp_path), RayEngine(), interrupt=interrupt)
    thread.join()
    assert time.monotonic() - interrupted_at[0] < 30  # the demo's 60 s were not waited for
    assert outcome.exit_code == 130
    assert {c.status for c in outcome.record.cells} == {"interrupted"}
    ran = [c for c in outcome.record.cells if c.directory]
    waited = [c for c in outcome.record.cells if not c.directory]
    assert len(ran) == len(waited) == 1
    assert waited[0].reason == "not started: SIGINT"
    assert ran[0].teardown_remaining == 0
    report = json.loads((outcome.matrix_dir / str(ran[0].directory) / "report.json").read_text())
    assert report["status"] == "interrupted"
    # The servers were started by Ray's workers: none of them may outlive the run.
    wait_for(lambda: not server_pids(), timeout_s=30, what="the cells' servers to end")


def server_pids() -> list[int]:
    """Fake servers of this test session still alive (Ray's own processes carry the mark too)."""
    found = []
    for pid in marked_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"fake_vllm.py" in cmdline or b"VLLM::" in cmdline:
            found.append(pid)
    return found


def test_the_command_starts_a_local_ray_when_there_is_no_cluster(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    # No RAY_ADDRESS: mmdemo starts a Ray of its own for the run (here: CPU only) and stops it after.
    env = {k: v for k, v in mmdemo_env.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    done = mmdemo(
        "matrix", A, "--engine", "ray", "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"),
        "--offline", "--grace", "2", env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "matrix   1 cell(s), 1 to run, on ray" in done.stdout
    matrix_dir = next((tmp_path / "runs").glob("*-matrix"))
    record = json.loads((matrix_dir / "matrix.json").read_text())
    assert record["engine"] == "ray"
    assert record["cells"][0]["status"] == "passed"
    assert (matrix_dir / "fake-a-cpu" / "server.log").is_file()
