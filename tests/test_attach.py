"""Attach mode: demos against a server that is already running; mmdemo neither launches nor stops it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FAKE_PROFILE, mmdemo, server_for


def test_demo_against_a_running_server(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    with server_for(tmp_path) as server:
        server.wait_ready(10)
        done = mmdemo(
            "demo", "--base-url", f"http://127.0.0.1:{server.port}", f"--api-key={server.api_key}",
            "-c", "text-only,single-image,multi-audio", "--offline", "--runs-dir", str(tmp_path / "runs"),
            env=mmdemo_env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.returncode() is None  # still running: not ours to stop
        report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
        assert [d["name"] for d in report["demos"]] == [
            "text-only/text", "single-image/url", "single-image/base64", "multi-audio/input_audio",
            "single-image/url (repeat)", "single-image/base64 (repeat)", "multi-audio/input_audio (repeat)",
            "worst-case/all-media",
        ]  # fmt: skip
        # No limits known for a server mmdemo did not start: the worst case sends as many of each
        # medium as one demo does at most (one image, two audios); offline, the known-answer media.
        kinds = [a["key"].split("-")[2] for a in report["demos"][-1]["assets"]]
        assert kinds == ["image", "audio", "audio"]
        assert report["teardown"] is None
        assert report["server"]["attached"] is True
        assert any("single-image/file" in note for note in report["notes"])
        report_text = next((tmp_path / "runs").glob("*/report.json")).read_text()
        assert server.api_key not in report_text


def test_run_with_base_url_uses_the_profiles_demos(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    with server_for(tmp_path) as server:
        server.wait_ready(10)
        env = {**mmdemo_env, "VLLM_API_KEY": server.api_key}
        done = mmdemo(
            "run", str(FAKE_PROFILE), "--base-url", f"http://127.0.0.1:{server.port}/v1", "--only", "audio",
            "--offline", "--runs-dir", str(tmp_path / "runs"), env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
        assert report["model"] == "fake-omni"
        demos = ["audio/input_audio", "audio/url", "audio/base64"]
        names = [d["name"] for d in report["demos"]]
        assert names == [*demos, *(f"{n} (repeat)" for n in demos), "worst-case/all-media"]


def test_attach_with_a_wrong_key_fails_clearly(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    with server_for(tmp_path) as server:
        server.wait_ready(10)
        done = mmdemo(
            "demo", "--base-url", f"http://127.0.0.1:{server.port}", "--api-key", "wrong", "-c", "text-only",
            "--runs-dir", str(tmp_path / "runs"), env=mmdemo_env,
        )  # fmt: skip
        assert done.returncode == 3
        assert "401" in done.stderr
        assert len(done.stderr.strip().splitlines()) <= 3


def test_attach_to_nothing_says_so_and_leaves_no_run_directory(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    done = mmdemo(
        "demo", "--base-url", "http://127.0.0.1:9", "-c", "text-only", "--runs-dir", str(tmp_path / "runs"),
        env=mmdemo_env,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stderr.splitlines()[0] == "error: cannot connect to http://127.0.0.1:9/v1/models"
    assert not (tmp_path / "runs").exists()


def test_attach_with_an_unusable_cache_still_leaves_a_report(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("a file, not a directory")
    with server_for(tmp_path) as server:
        server.wait_ready(10)
        done = mmdemo(
            "demo", "--base-url", f"http://127.0.0.1:{server.port}", f"--api-key={server.api_key}",
            "-c", "single-image", "--runs-dir", str(tmp_path / "runs"),
            env={**mmdemo_env, "MMDEMO_CACHE_DIR": str(not_a_dir)},
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error:" in done.stderr
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    assert report["status"] == "error"
    assert str(not_a_dir) in report["error"]["message"]
