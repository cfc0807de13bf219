"""End to end against a real `vllm serve` on CPU with the tiny omni model (marker `vllm`).

These prove the product, not just the orchestration: every chat type and variant through mmdemo,
the real server's own 400 as a demo's failure, Ctrl-C during the real startup, cache reuse, and
nothing left running afterwards. Under CI=true a missing backend is a failure, never a skip.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import marked_pids, mmdemo, signal_mmdemo, wait_for

pytestmark = pytest.mark.vllm


def session_processes(session: int) -> list[str]:
    """Live processes in the server's session (vLLM's renamed workers show no environment in /proc)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in (b"Z", b"X") and session in (int(fields[2]), int(fields[3])):
            found.append(f"{pid} {comm}")
    return found


def api_server_pid() -> int | None:
    """The `vllm serve` process this test session started (its environment still carries the mark)."""
    for pid in marked_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # `python .../bin/vllm serve ...` (the script runs through its shebang)
        if any(a.endswith(b"vllm") and b == b"serve" for a, b in itertools.pairwise(cmdline)):
            return pid
    return None


@pytest.fixture(scope="module")
def built(vllm_bin: str, cache_root: Path) -> Path:
    env = {**os.environ, "MMDEMO_CACHE_DIR": str(cache_root)}
    done = mmdemo("models", "build", "tiny-omni", "--vllm-bin", vllm_bin, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return cache_root / "models" / "tiny-omni"


def run(tmp_path: Path, env: dict[str, str], vllm_bin: str, *extra: str) -> tuple[int, str, dict]:
    done = mmdemo(
        "run", "cpu-tiny-omni", "--vllm-bin", vllm_bin, "--runs-dir", str(tmp_path / "runs"), "--grace", "15",
        *extra, env=env, timeout=900,
    )  # fmt: skip
    reports = sorted((tmp_path / "runs").glob("*/report.json"))
    return done.returncode, done.stdout + done.stderr, json.loads(reports[-1].read_text())


def test_all_six_chat_types_on_a_real_server(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str, built: Path
) -> None:
    code, out, report = run(tmp_path, mmdemo_env, vllm_bin)
    assert code == 0, out
    assert report["status"] == "passed"
    assert report["vllm"]["version"].startswith("0.32")
    demos = [
        "text-only/text", "single-image/url", "single-image/file", "single-image/base64", "multi-image/url",
        "video/url", "video/base64", "audio/input_audio", "audio/url", "audio/base64", "multi-audio/input_audio",
    ]  # fmt: skip
    names = [d["name"] for d in report["demos"]]
    # The repeats go through vLLM's multimodal processor cache; the worst case carries 2 images, the
    # video and 2 audios at once (cpu-tiny-omni's limits), and the server survives it.
    assert names == [*demos, *(f"{n} (repeat)" for n in demos[1:]), "worst-case/all-media"]
    worst = report["demos"][-1]
    assert sorted(a["kind"] for a in worst["assets"]) == ["audio", "audio", "image", "image", "video"]
    for demo in report["demos"]:
        assert demo["status"] == "passed", demo
        assert demo["http_status"] == 200
        assert demo["answer"]
        assert demo["prompt_tokens"] > 0
        assert demo["completion_tokens"] > 0
        assert demo["prompt_tokens_counted"] == demo["prompt_tokens"], demo  # the budget, before launch
    assert report["budget"]["max_model_len"] == 2048
    assert len(report["budget"]["demos"]) == 12  # the 11 demos and the worst case, each counted once
    # multimodal prompts really carried their media: more prompt tokens than the text-only one
    by_name = {d["name"]: d for d in report["demos"]}
    assert by_name["single-image/base64"]["prompt_tokens"] > by_name["text-only/text"]["prompt_tokens"]
    assert by_name["multi-audio/input_audio"]["prompt_tokens"] > by_name["audio/input_audio"]["prompt_tokens"]
    assert report["server"]["ready_s"] > 1
    assert report["teardown"]["remaining"] == 0
    assert report["teardown"]["port_free"] is True
    assert report["asset_server_requests"] >= 4  # vLLM fetched the URL variants from our loopback origin
    assert session_processes(report["server"]["pid"]) == []
    assert marked_pids() == set()


def test_the_real_servers_400_is_the_demos_failure_and_caches_are_reused(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str, built: Path
) -> None:
    marker = built / "mmdemo-model.json"
    model_mtime = marker.stat().st_mtime_ns
    assets = sorted(p for p in (Path(mmdemo_env["MMDEMO_CACHE_DIR"]) / "assets").rglob("*") if p.is_file())
    asset_mtimes = {p: p.stat().st_mtime_ns for p in assets}
    profile = Path(__file__).parent / "profiles" / "vllm-tiny-corrupt-media.yaml"
    done = mmdemo(
        "run", str(profile), "--vllm-bin", vllm_bin, "--runs-dir", str(tmp_path / "runs"), env=mmdemo_env,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    by_name = {d["name"]: d for d in report["demos"]}
    assert by_name["text-only/text"]["status"] == "passed"
    # vLLM's own words, through every way of sending the media: a 400 for the image...
    for variant in ("single-image/url", "single-image/file", "single-image/base64"):
        demo = by_name[variant]
        assert (demo["status"], demo["http_status"]) == ("failed", 400), demo
        assert "Failed to load image" in demo["error"], demo
    # ...and a 500 for the audio (vLLM 0.32 does not map the decoder's error to a 4xx)
    for variant in ("audio/input_audio", "audio/url", "audio/base64"):
        demo = by_name[variant]
        assert (demo["status"], demo["http_status"]) == ("failed", 500), demo
        assert "Malformed" in demo["error"], demo
    assert report["teardown"]["remaining"] == 0
    assert marker.stat().st_mtime_ns == model_mtime  # the model was not rebuilt
    assert {p: p.stat().st_mtime_ns for p in assets} == asset_mtimes  # nor any asset fetched again
    assert session_processes(report["server"]["pid"]) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_killing_mmdemo_while_the_real_server_starts_leaves_nothing(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str, built: Path, sig: signal.Signals
) -> None:
    # SIGINT: mmdemo tears down (vLLM ignores SIGTERM mid-startup: the escalation must handle it).
    # SIGKILL: mmdemo gets no say; its watchdog must end the tree, whose renamed VLLM:: workers
    # hide their environment from /proc.
    args = ["run", "cpu-tiny-omni", "--vllm-bin", vllm_bin, "--runs-dir", str(tmp_path / "runs")]
    args += ["--grace", "5", "--only", "text-only"]
    seen: list[int] = []

    def engine_started() -> bool:
        # mid-startup: the API server is up and vLLM's engine process exists in its session
        if not seen and (server := api_server_pid()) is not None:
            seen.append(server)
        return bool(seen) and any("VLLM::" in p for p in session_processes(seen[0]))

    code = signal_mmdemo(args, mmdemo_env, tmp_path / "out.txt", engine_started, sig)
    server = seen[0]
    output = (tmp_path / "out.txt").read_text()
    if sig is signal.SIGINT:
        assert code == 130, output
        report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
        assert report["status"] == "interrupted"
        assert report["teardown"]["remaining"] == 0
        assert report["server"]["pid"] == server
    else:
        assert code == -9, output
    wait_for(lambda: not session_processes(server) and not marked_pids(), timeout_s=15, what="nothing left")
