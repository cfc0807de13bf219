"""The real CPU vLLM in its image (`make image-cpu`: localhost/mmdemo/vllm-cpu:test, entrypoint `vllm serve`,
the shape of the official image) under podman: every demo passes, and neither a SIGKILL of mmdemo while
the demos run nor a Ctrl-C while vLLM loads leaves a container behind. Markers `vllm` and `container`."""

from __future__ import annotations

import json
import os
import re
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
        "--offline", "--media", "known", *extra,
    ]  # fmt: skip


def server_log(runs: Path) -> str:
    logs = list(runs.glob("*/server.log"))
    return logs[0].read_text(errors="replace") if logs else ""


@pytest.mark.timeout(900)  # the image's vLLM asked, the demos counted in the image, then the server's start
def test_the_real_vllm_in_its_image_passes_every_demo(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    runs = tmp_path / "runs"
    done = mmdemo(*args(cpu_image, runs, "--grace", "15"), env=mmdemo_env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    # 11 demos, their 10 media repeats, the worst case (2 images, the video, 2 audios at once); the trained
    # tiny-omni names every known-answer medium's truth (the worst case has none to check)
    assert report["summary"] == {
        "total": 22,
        "passed": 22,
        "failed": 0,
        "understood": 21,
        "hung": 0,
        "interrupted": 0,
    }
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
    for word in ("--offline", "--media", "known"):  # `serve` sends no demos
        argv.remove(word)
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


# -- the image's vLLM for every check: no vLLM on the host ------------------------------------------


def no_host_vllm(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment with a host vLLM named that does not exist: any look at the host's vLLM is refused."""
    return {**env, "MMDEMO_VLLM_BIN": str(tmp_path / "no-vllm-on-this-host")}


def test_a_model_directory_derives_counts_and_passes_in_the_image_with_no_vllm_on_the_host(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    import shutil

    directory = Path(shutil.copytree(built, tmp_path / "tiny-omni"))  # no profile names this copy
    runs = tmp_path / "runs"
    done = mmdemo(
        "run", str(directory), "--image", cpu_image, "--container-runtime", "podman", "--gpu", "cpu",
        "--offline", "--media", "known", "--only", "text-only,audio", "--no-worst-case", "--grace", "15",
        "--runs-dir", str(runs),
        env=no_host_vllm(tmp_path, mmdemo_env), timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"no profile for {directory}: derived one from vLLM 0.32" in done.stdout  # the image's vLLM
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["status"] == "passed"
    assert report["budget"]["vllm"].startswith("0.32"), report["notes"]
    assert all(d["prompt_tokens"] for d in report["budget"]["demos"])
    assert not [n for n in report["notes"] if "not counted" in n]
    assert not mmdemo_containers(podman)
    assert not mmdemo_containers(podman, "mmdemo.script")  # the probe's and the counter's containers too


def test_a_context_too_short_is_refused_before_the_container_starts(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    import yaml

    data = yaml.safe_load((Path(__file__).parent.parent / "profiles" / "cpu-tiny-omni.yaml").read_text())
    data["serve"]["max_model_len"] = 128
    short = tmp_path / "short-omni.yaml"
    short.write_text(yaml.safe_dump(data, sort_keys=False))
    runs = tmp_path / "runs"
    done = mmdemo(
        "run", str(short), "--image", cpu_image, "--container-runtime", "podman", "--offline", "--count-first",
        "--only", "multi-audio", "--no-worst-case", "--runs-dir", str(runs),
        env=no_host_vllm(tmp_path, mmdemo_env), timeout=600,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert re.search(
        r"^error: multi-audio/input_audio needs (\d+) tokens \(\d+ prompt \+ 16 completion\) but max_model_len is 128: ",
        out,
        re.MULTILINE,
    ), out
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["server"]["pid"] is None  # the server's container never started
    assert not list(runs.glob("*/server.log"))
    assert not mmdemo_containers(podman)
    assert not mmdemo_containers(podman, "mmdemo.script")


def test_validate_against_vllm_with_image_uses_the_images_vllm(
    tmp_path: Path, mmdemo_env: dict[str, str], cpu_image: str, built: Path, podman: str
) -> None:
    profile = Path(__file__).parent.parent / "profiles" / "cpu-tiny-omni.yaml"
    done = mmdemo(
        "validate", "--against-vllm", "--image", cpu_image, "--container-runtime", "podman", str(profile),
        env=no_host_vllm(tmp_path, mmdemo_env), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok    {profile}: variant cpu: accepted by vLLM 0.32" in done.stdout
    assert "ok    budget " in done.stdout
