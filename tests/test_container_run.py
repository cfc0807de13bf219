"""`--image` for real: the fake `vllm serve` in podman containers (fast), supervised and torn down like the
host's; whatever happens to mmdemo, no container with the run's label is left, running or stopped.
The real CPU vLLM in its image is in test_container_vllm.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    FAKE_IMAGE_VERSIONS,
    FAKE_PROFILE,
    marked_pids,
    mmdemo,
    mmdemo_containers,
    signal_mmdemo,
    wait_for,
)

pytestmark = pytest.mark.container
OLD, NEW = FAKE_IMAGE_VERSIONS
SECRET = "hf_container_test_secret_value"
API_KEY = "container-test-api-key-0123456789"


def profile_with(tmp_path: Path, **env: str) -> Path:
    """The fake profile with FAKE_VLLM_* switches in its env: what reaches the server in a container."""
    data = yaml.safe_load(FAKE_PROFILE.read_text())
    data["env"] = {f"FAKE_VLLM_{k}": v for k, v in env.items()}
    path = tmp_path / "fake-omni.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def report_of(runs: Path) -> dict:
    return json.loads(next(runs.glob("*/report.json")).read_text())


def test_a_run_in_a_container_passes_with_secrets_by_name_and_leaves_nothing(
    tmp_path: Path, mmdemo_env: dict[str, str], fake_images: dict[str, str], podman: str
) -> None:
    runs = tmp_path / "runs"
    env = {**mmdemo_env, "HF_TOKEN": SECRET}
    profile = profile_with(tmp_path, LOG_ENV="HF_TOKEN,VLLM_API_KEY")  # a server that logs its secrets
    done = mmdemo(
        "run", str(profile), "--image", fake_images[OLD], "--container-runtime", "podman", "--gpu", "cpu",
        "--runs-dir", str(runs), "--api-key", API_KEY, "--grace", "5", env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = report_of(runs)
    assert report["status"] == "passed"
    # 11 demos (URL ones too: the server reaches our loopback from podman), 10 repeats, the worst case
    assert report["summary"]["total"] == 22
    vllm = report["vllm"]  # the image's own /version
    assert (vllm["version"], vllm["path"]) == (OLD, f"{fake_images[OLD]} (podman)")
    box = report["container"]
    assert box["runtime"] == "podman"
    assert box["image"] == fake_images[OLD]
    assert box["digest"].startswith("sha256:")
    assert box["image_id"]
    assert box["name"] == f"mmdemo-{box['labels']['mmdemo.run']}"
    assert box["labels"]["mmdemo.pid"].isdigit()
    line = box["run_line"]
    assert line.startswith(f"podman run --name {box['name']} ")
    port = report["server"]["base_url"].rsplit(":", 1)[1].split("/")[0]
    for part in (f"-p 127.0.0.1:{port}:8000", "--init", "--ipc=host", "-e HF_TOKEN ", "-e VLLM_API_KEY "):
        assert part in line
    assert report["server"]["command"] == line  # the report's plan is the whole run line
    # The container got both secrets (the careless server printed them), and no file shows them.
    log = (runs / next(runs.glob("*")).name / "server.log").read_text()
    assert "env HF_TOKEN=***" in log
    assert "env VLLM_API_KEY=***" in log
    for path in (runs / next(runs.glob("*")).name).iterdir():
        text = path.read_text(errors="replace")
        assert SECRET not in text, path.name
        assert API_KEY not in text, path.name
    teardown = report["teardown"]
    assert teardown["container_steps"][0] == "stop -t 5"
    assert "rm -f" in teardown["container_steps"]
    assert teardown["containers_remaining"] == 0
    assert teardown["port_free"]
    assert not mmdemo_containers(podman, f"mmdemo.run={box['labels']['mmdemo.run']}")


def test_a_container_that_dies_before_ready_fails_with_its_log(
    tmp_path: Path, mmdemo_env: dict[str, str], fake_images: dict[str, str]
) -> None:
    runs = tmp_path / "runs"
    profile = profile_with(tmp_path, CRASH_AFTER="0.2", EXIT_CODE="3", CRASH_LOG="ValueError: no such model")
    done = mmdemo(
        "run", str(profile), "--image", fake_images[OLD], "--container-runtime", "podman", "--gpu", "cpu",
        "--runs-dir", str(runs), "--offline", env=mmdemo_env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    report = report_of(runs)
    assert report["error"]["returncode"] == 3  # the container's exit code, through its client
    assert "ValueError: no such model" in "\n".join(report["error"]["log_tail"])
    assert report["teardown"]["containers_remaining"] == 0


def test_an_image_that_is_nowhere_is_refused_before_launch(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--image", "localhost/mmdemo/no-such-image:0", "--container-runtime", "podman",
        "--gpu", "cpu", "--runs-dir", str(tmp_path / "runs"), "--offline", env=mmdemo_env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert (
        "localhost/mmdemo/no-such-image:0 is not here and `podman pull` failed" in done.stdout + done.stderr
    )
    assert report_of(tmp_path / "runs")["container"]["image"] == "localhost/mmdemo/no-such-image:0"


STATES = {
    # state: (command, switches, the line that says "we are there", in which file)
    "loading": ("run", {"NEVER_READY": "1", "WORKERS": "2"}, "Still loading", "server.log"),
    "ready": ("serve", {"WORKERS": "2"}, "serving until Ctrl-C", "out.txt"),
    "serving": (
        "run",
        {"LATENCY": "60", "WORKERS": "1", "REQUEST_FILE": "/tmp/request"},
        "Added request",
        "server.log",
    ),
}


def _seen(tmp_path: Path, text: str, where: str) -> bool:
    files = [tmp_path / "out.txt"] if where == "out.txt" else list((tmp_path / "runs").glob(f"*/{where}"))
    return any(path.is_file() and text in path.read_text(errors="replace") for path in files)


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_nothing_survives_in_a_container(
    tmp_path: Path, mmdemo_env: dict[str, str], fake_images: dict[str, str], state: str, sig: signal.Signals
) -> None:
    podman = "podman"  # on PATH: fake_images needs it
    command, switches, text, where = STATES[state]
    args = [command, str(profile_with(tmp_path, **switches)), "--image", fake_images[OLD]]
    args += ["--container-runtime", "podman", "--gpu", "cpu", "--runs-dir", str(tmp_path / "runs")]
    args += ["--grace", "2", "--timeout", "60"]
    args += ["--offline", "--only", "text-only"] if command == "run" else []
    code = signal_mmdemo(args, mmdemo_env, tmp_path / "out.txt", lambda: _seen(tmp_path, text, where), sig)
    output = (tmp_path / "out.txt").read_text()
    expected = -9 if sig is signal.SIGKILL else (0 if command == "serve" else 130)
    assert code == expected, output
    # mmdemo SIGKILLed: its watchdog stops and removes the container (not mmdemo's descendant at all).
    wait_for(lambda: not mmdemo_containers(podman), timeout_s=15, what="the run's container to be removed")
    wait_for(lambda: not marked_pids(), timeout_s=10, what="every process of the run to be gone")
    if sig is not signal.SIGKILL:
        report = report_of(tmp_path / "runs")
        assert report["status"] == "interrupted"
        assert report["teardown"]["remaining"] == 0
        assert report["teardown"]["containers_remaining"] == 0


def test_a_matrix_over_two_images_puts_the_versions_side_by_side(
    tmp_path: Path, mmdemo_env: dict[str, str], fake_images: dict[str, str]
) -> None:
    old, new = fake_images[OLD], fake_images[NEW]
    done = mmdemo(
        "matrix", str(FAKE_PROFILE), "--gpu", "cpu", "--image", old, "--image", new, "--container-runtime",
        "podman", "--runs-dir", str(tmp_path / "runs"), "--offline", "--only", "text-only,single-image",
        "--grace", "2", env=mmdemo_env, timeout=180,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr  # the newer image's server refuses every chat
    matrix_dir = next((tmp_path / "runs").glob("*-matrix"))
    record = json.loads((matrix_dir / "matrix.json").read_text())
    assert record["images"] == [old, new]
    cells = {c["image"]: c for c in record["cells"]}
    assert (cells[old]["status"], cells[new]["status"]) == ("passed", "failed")
    assert (cells[old]["vllm_version"], cells[new]["vllm_version"]) == (OLD, NEW)
    assert cells[old]["image_digest"] != cells[new]["image_digest"]
    assert cells[new]["containers_remaining"] == 0
    md = (matrix_dir / "matrix.md").read_text()
    versions = md.split("## vLLM versions side by side")[1]
    assert f"{old} (vLLM {OLD})" in versions
    assert f"{new}: vLLM {OLD} → {NEW}; passed → failed; failed now: text-only/text" in versions
    assert "vLLM versions side by side" in (matrix_dir / "matrix.html").read_text()
    # `report diff` across the two runs names each one's image and version
    a, b = (matrix_dir / cells[i]["directory"] for i in (old, new))
    diff = mmdemo("report", "diff", str(a), str(b), env=mmdemo_env)
    assert f"A: vLLM {OLD} in {old}" in diff.stdout
    assert f"B: vLLM {NEW} in {new}" in diff.stdout


def test_the_watchdog_alone_removes_a_labelled_container(podman: str, fake_images: dict[str, str]) -> None:
    # mmdemo gone, its watchdog's pipe closed: the container the label finds is stopped and removed.
    from orchestrator.launch import watchdog

    label = f"mmdemo.run=watchdog-test-{os.getpid()}"
    subprocess.run(
        [podman, "run", "-d", "--init", "--label", label, "--name", f"mmdemo-watchdog-test-{os.getpid()}",
         "-v", "/usr:/usr:ro", fake_images[OLD], "m", "--port", "8000"],
        capture_output=True, timeout=60, check=True,
    )  # fmt: skip
    dog = subprocess.Popen(
        [sys.executable, watchdog.__file__, "no-such-tag", "999999999", "2", podman, label],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    assert dog.stdin is not None
    dog.stdin.close()
    assert dog.wait(timeout=60) == 0
    assert not mmdemo_containers(podman, label)
