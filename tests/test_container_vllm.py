"""The real CPU vLLM in its image (`make image-cpu`: localhost/mmdemo/vllm-cpu:test, entrypoint `vllm serve`,
the shape of the official image) under podman: every demo passes, and neither a SIGKILL of mmdemo while
the demos run nor a Ctrl-C while vLLM loads leaves a container behind. Markers `vllm` and `container`."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import marked_pids, mmdemo, mmdemo_containers, signal_mmdemo, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.container]


@pytest.fixture(scope="module")
def built(vllm_bin: str, cache_root: Path) -> Path:
    """The tiny model in the test cache: mounted read-only into the container at the same path."""
    env = {**os.environ, "MMDEMO_CACHE_DIR": str(cache_root)}
    done = mmdemo("models", "build", "tiny-omni", "--vllm-bin", vllm_bin, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return cache_root / "models" / "tiny-omni"


def args(image: str, runs: Path, *extra: str) -> list[str]:
    return [
        "run", "cpu-tiny-omni", "--image", image, "--container-runtime", "podman", "--runs-dir", str(runs),
        "--offline", *extra,
    ]  # fmt: skip


def server_log(runs: Path) -> str:
    logs = list(runs.glob("*/server.log"))
    return logs[0].read_text(errors="replace") if logs else ""


def test_the_real_vllm_in_its_image_passes_every_demo(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    runs = tmp_path / "runs"
    done = mmdemo(*args(cpu_image, runs, "--grace", "15"), env=mmdemo_env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    # 11 demos, their 10 media repeats, the worst case (2 images, the video, 2 audios at once)
    assert report["summary"] == {"total": 22, "passed": 22, "failed": 0, "understood": 0, "hung": 0}
    assert report["vllm"]["version"].startswith("0.32")  # read from the server in the container
    assert report["container"]["digest"].startswith("sha256:")
    assert f"-v {built}:{built}:ro" in report["container"]["run_line"]
    assert report["teardown"]["containers_remaining"] == 0
    assert report["teardown"]["container_steps"][:1] == ["stop -t 15"]
    assert not mmdemo_containers(podman)


def test_sigkill_while_the_demos_run_leaves_no_container_within_15_s(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    runs = tmp_path / "runs"
    # Long answers keep the demos running when the signal comes (the tiny model never stops early).
    argv = args(cpu_image, runs, "--grace", "15", "--max-completion-tokens", "1500")
    in_flight = lambda: "POST /v1/chat/completions" in server_log(runs)  # noqa: E731
    code = signal_mmdemo(argv, mmdemo_env, tmp_path / "out.txt", in_flight, signal.SIGKILL, timeout_s=120)
    assert code == -9
    assert not list(runs.glob("*/report.json")), (
        "mmdemo finished before the signal: the demos were not running"
    )
    wait_for(lambda: not mmdemo_containers(podman), timeout_s=15, what="the watchdog to remove the container")
    wait_for(lambda: not marked_pids(), timeout_s=10, what="every process of the run to be gone")


def test_ctrl_c_while_vllm_loads_leaves_nothing(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    runs = tmp_path / "runs"
    # vLLM ignores SIGTERM this early in its start: `stop` waits the grace, then kills the container.
    loading = lambda: "non-default args" in server_log(runs)  # noqa: E731
    code = signal_mmdemo(
        args(cpu_image, runs, "--grace", "3"), mmdemo_env, tmp_path / "o", loading, signal.SIGINT
    )
    assert code == 130, (tmp_path / "o").read_text()
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["status"] == "interrupted"
    assert report["teardown"]["containers_remaining"] == 0
    assert report["teardown"]["container_steps"][0] == "stop -t 3"
    assert not mmdemo_containers(podman)


def test_sigterm_to_serve_once_ready_stops_the_container_gracefully(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    runs = tmp_path / "runs"
    argv = ["serve", *args(cpu_image, runs, "--grace", "15")[1:]]
    argv.remove("--offline")  # `serve` sends no demos
    out = tmp_path / "out.txt"
    code = signal_mmdemo(
        argv, mmdemo_env, out, lambda: "serving until Ctrl-C" in out.read_text(), signal.SIGTERM
    )
    assert code == 0, out.read_text()  # SIGTERM is how `serve` is meant to stop
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["teardown"]["container_steps"] == [
        "stop -t 15",
        "rm -f",
    ]  # vLLM stopped on SIGTERM: no kill
    assert report["teardown"]["containers_remaining"] == 0
    assert not mmdemo_containers(podman)
