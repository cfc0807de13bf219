"""The launch does not wait for what it does not need: media from an asset host that hangs, the count.

Events, not clocks: the fake's READY_FILE appearing while the asset host still holds every download
open proves the server started without the media; the run's timeline says which came first.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import FAKE, FAKE_PROFILE, REPO, wait_for


@contextlib.contextmanager
def hanging_host() -> Iterator[tuple[str, threading.Event, list[socket.socket]]]:
    """A loopback HTTP host that accepts every connection and answers none until `release` is set."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.05)
    release, held = threading.Event(), []

    def accept() -> None:
        while not release.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = server.accept()
                held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", release, held
    finally:
        release.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def start_run(tmp_path: Path, env: dict[str, str], mirror: str, *extra: str) -> subprocess.Popen[str]:
    env = {**env, "MMDEMO_ASSET_MIRROR": mirror, "FAKE_VLLM_READY_FILE": str(tmp_path / "ready")}
    argv = [sys.executable, "-m", "orchestrator", "run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE)]
    argv += ["--runs-dir", str(tmp_path / "runs"), "--grace", "2", "--only", "single-image", *extra]
    return subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def timeline(tmp_path: Path) -> dict[str, float]:
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    return {event["event"]: event["at_s"] for event in report["timeline"]}


def test_a_hanging_asset_host_does_not_hold_the_launch_back(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    with hanging_host() as (mirror, release, held):
        run = start_run(tmp_path, mmdemo_env, mirror)
        try:
            wait_for(lambda: held, 60, "a media download to reach the asset host")
            # The server comes up while every download is still held open: it never waited for media.
            wait_for((tmp_path / "ready").is_file, 60, "the fake vLLM to be ready, media still pending")
        finally:
            release.set()  # the downloads fail now (their connections closed): known-answer media stand in
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    moments = timeline(tmp_path)
    assert moments["launch"] < moments["media ready"]


def test_count_first_launches_only_once_the_budget_step_has_the_media(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    with hanging_host() as (mirror, release, held):
        run = start_run(tmp_path, mmdemo_env, mirror, "--count-first")
        try:
            wait_for(lambda: held, 60, "a media download to reach the asset host")
        finally:
            release.set()
    out, _ = run.communicate(timeout=120)
    assert run.returncode == 0, out
    moments = timeline(tmp_path)
    # the budget step needs the media before it counts (the fake cannot be counted: a note says so)
    assert moments["media ready"] < moments["launch"]
