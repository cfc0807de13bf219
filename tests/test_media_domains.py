"""`--allowed-media-domains`: a host the server refuses is a refusal, not a model failure.

Where the profile sets the flag, mmdemo knows before any request which URL demos the server will refuse
(those whose media come from a host it does not list: mmdemo's loopback asset server included) and
skips them with the reason; where it cannot know (an attached server), the failed demo says it was
refused and why, in vLLM 0.32's own words (tests/fake_vllm.py answers as vLLM's MediaConnector does).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.session.targets import Reach, allowed_media_domains
from orchestrator.vllm.logscan import explain_demo
from tests.conftest import FAKE, FAKE_PROFILE, mmdemo, server_for


@pytest.mark.parametrize(
    ("argv", "domains"),
    [
        (["--max-model-len", "2048"], None),
        (
            ["--allowed-media-domains", "example.com", "127.0.0.1", "--enforce-eager"],
            ("example.com", "127.0.0.1"),
        ),
        (["--allowed-media-domains=upload.wikimedia.org"], ("upload.wikimedia.org",)),
    ],
)
def test_the_domains_are_read_from_the_serve_flags(argv: list[str], domains: tuple[str, ...] | None) -> None:
    assert allowed_media_domains(argv) == domains


def test_a_host_not_listed_is_refused_with_the_reason() -> None:
    reach = Reach(loopback=True, files=True, domains=("example.com",))
    assert reach.refuses("http://example.com/a.jpg") is None
    assert reach.refuses("http://127.0.0.1:8123/a.jpg") == (
        "the server's --allowed-media-domains (example.com) does not list 127.0.0.1"
    )
    assert Reach(loopback=True, files=True).refuses("http://anywhere/x.png") is None


def test_vllms_refusal_is_explained_as_a_refusal() -> None:
    said = "The URL must be from one of the allowed domains: ['example.com']. Input URL domain: 127.0.0.1"
    assert explain_demo(said, completion_tokens=16, modalities={"image"}) == (
        "refused by the server, not a model failure: its --allowed-media-domains ('example.com') "
        "does not list 127.0.0.1, where the demo's media are"
    )


def profile_with(tmp_path: Path, *domains: str) -> Path:
    text = FAKE_PROFILE.read_text().replace(
        "  max_model_len: 2048\n",
        f"  max_model_len: 2048\n  extra_args: [--allowed-media-domains, {', '.join(domains)}]\n",
    )
    path = tmp_path / "fake-domains.yaml"
    path.write_text(text)
    return path


def run(tmp_path: Path, env: dict[str, str], profile: Path) -> tuple[int, str, dict]:
    done = mmdemo(
        "run", str(profile), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--only", "single-image,audio", "--grace", "2", env=env,
    )  # fmt: skip
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    return done.returncode, done.stdout + done.stderr, report


def test_url_demos_the_servers_domains_refuse_are_skipped_before_any_request(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report = run(tmp_path, mmdemo_env, profile_with(tmp_path, "example.com"))
    assert code == 0, out
    names = {d["name"] for d in report["demos"] if d["kind"] == "demo"}
    assert names == {"single-image/base64", "single-image/file", "audio/input_audio", "audio/base64"}
    note = next(n for n in report["notes"] if n.startswith("Skipped "))
    assert note == (
        "Skipped single-image/url, audio/url: the server's --allowed-media-domains (example.com) "
        "does not list 127.0.0.1."
    )
    assert report["status"] == "passed"


def test_url_demos_run_where_the_domains_list_mmdemos_asset_host(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report = run(tmp_path, mmdemo_env, profile_with(tmp_path, "example.com", "127.0.0.1"))
    assert code == 0, out
    assert {"single-image/url", "audio/url"} <= {d["name"] for d in report["demos"]}
    assert not [n for n in report["notes"] if n.startswith("Skipped ")]


def test_an_attached_server_that_refuses_says_so_in_the_failure(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    # mmdemo did not start it: its flags are unknown, the URL demo is sent, and its failure says why
    refusing = {"extra_args": ("--allowed-media-domains", "example.com")}
    with server_for(tmp_path, serve=refusing) as server:
        server.wait_ready(10)
        done = mmdemo(
            "demo", "--base-url", f"http://127.0.0.1:{server.port}", f"--api-key={server.api_key}",
            "-c", "single-image", "--offline", "--no-worst-case", "--runs-dir", str(tmp_path / "runs"),
            env=mmdemo_env,
        )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    failed = [d for d in report["demos"] if d["status"] != "passed"]
    assert {d["name"] for d in failed} == {"single-image/url", "single-image/url (repeat)"}
    for demo in failed:
        assert demo["http_status"] == 400, demo
        assert demo["diagnosis"] == (
            "refused by the server, not a model failure: its --allowed-media-domains ('example.com') "
            "does not list 127.0.0.1, where the demo's media are"
        )
    assert "refused by the server, not a model failure" in done.stdout
