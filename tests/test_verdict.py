"""A verdict that names the known multimodal failures: hung requests, repeats that fail, the worst
case that kills the server, start-up warnings, and vLLM's error messages explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from markupsafe import escape

from orchestrator.demos.chat import DemoRequest, worst_case
from orchestrator.media import Asset
from orchestrator.vllm.logscan import explain_demo, round_up, warnings_in
from tests.conftest import FAKE, FAKE_PROFILE, mmdemo


def run_fake(
    tmp_path: Path, env: dict[str, str], *extra: str, **switches: str
) -> tuple[int, str, dict, Path]:
    env = {**env, **{f"FAKE_VLLM_{k.upper()}": v for k, v in switches.items()}}
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--grace", "2", *extra, env=env,
    )  # fmt: skip
    run_dir = sorted((tmp_path / "runs").glob("*"))[-1]
    return (
        done.returncode,
        done.stdout + done.stderr,
        json.loads((run_dir / "report.json").read_text()),
        run_dir,
    )


# -- vLLM's messages, explained -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "explained"),
    [
        (
            "Input length (175) exceeds model's maximum context length (128).",
            "the context is too short: the request needs 191 tokens (175 prompt + 16 completion) and "
            "max_model_len is 128; set serve.max_model_len: 256",
        ),
        (
            "This model's maximum context length is 2048 tokens. However, your prompt contains 4500 input "
            "tokens, which exceeds this limit even without any output tokens.",
            "the context is too short: the request needs 4516 tokens (4500 prompt + 16 completion) and "
            "max_model_len is 2048; set serve.max_model_len: 4608",
        ),
        (
            "At most 1 image(s) may be provided in one prompt.",
            "more images than the server allows per prompt (1); set serve.limit_mm_per_prompt.image to the "
            "number the demo sends, or drop the demo",
        ),
        (
            "The decoder prompt contains a(n) video item with 6042 embedding tokens, which exceeds the "
            "pre-allocated encoder cache size 4800. Please reduce the input size",
            "one video item is 6042 tokens, more than the encoder cache's 4800: set "
            "serve.media_io_kwargs: {video: {num_frames: N}} or mm_processor_kwargs max_pixels",
        ),
        (
            "Failed to fetch media from URL: HTTP 403 error",
            "the server could not fetch the media: the network, not the model (a host it cannot reach, or "
            "slower than VLLM_AUDIO_FETCH_TIMEOUT (10 s); raise that variable in the profile's env)",
        ),
        (
            "Error loading audio: Format not recognised",
            "vLLM's environment cannot decode this audio or video: install its decoders there (`vllm[audio]` "
            "for soundfile/librosa, PyAV or ffmpeg for video); the report lists those found",
        ),
        ("something nobody has seen before", None),
    ],
)
def test_a_known_vllm_error_gets_the_field_to_change_and_a_value(message: str, explained: str | None) -> None:
    assert explain_demo(message, completion_tokens=16, modalities={"audio"}) == explained


def test_a_context_length_that_fits_is_a_multiple_of_256() -> None:
    assert [round_up(n) for n in (1, 191, 256, 257, 4516)] == [256, 256, 256, 512, 4608]


def test_startup_warnings_that_predict_trouble_are_kept_with_their_meaning() -> None:
    lines = [
        "INFO 12-01 10:00:00 [config.py:1] Resolved architecture: Qwen2_5OmniModel",
        "WARNING 12-01 10:00:01 [profiling.py:1] The sequence length (128) is smaller than the pre-defined "
        "worst-case total number of multimodal tokens: too short to hold the multi-modal embeddings",
        "WARNING 12-01 10:00:01 [arg_utils.py:1] --disable-log-requests is deprecated and will be removed",
        "WARNING 12-01 10:00:01 [other.py:1] Something harmless",
        # Eager mode (the CPU profiles') makes vLLM say this from two processes; it is not news.
        "(APIServer pid=1) WARNING 12-02 01:03:40 [vllm.py:1727] Inductor compilation was disabled by user "
        "settings, optimizations settings that are only active during inductor compilation will be ignored.",
        "(EngineCore pid=2) WARNING 12-01 10:00:02 [profiling.py:1] The sequence length (128) is smaller than "
        "the pre-defined worst-case total number of multimodal tokens: too short to hold the multi-modal embeddings",
    ]
    found = warnings_in(lines)
    assert len(found) == 2  # the engine core's repeat of the first is the same message
    assert "too short to hold the multi-modal embeddings" in found[0]
    assert found[0].endswith("raise serve.max_model_len or lower the limits")
    assert "deprecated" in found[1]


# -- the worst case -------------------------------------------------------------------------------------


def asset(root: Path, key: str, kind: str) -> Asset:
    path = root / key
    path.write_bytes(key.encode())
    return Asset(
        key=key, kind=kind, path=path, sha256="0", provenance="synthetic",
        media_type="application/octet-stream", source_url=None,
    )  # fmt: skip


def request(name: str, *assets: Asset) -> DemoRequest:
    return DemoRequest(name=name, chat_type=name.split("/", maxsplit=1)[0], delivery="url", messages=[],
                       max_completion_tokens=16, assets=assets)  # fmt: skip


def test_the_worst_case_sends_every_medium_the_limits_allow_of_those_the_demos_send(tmp_path: Path) -> None:
    image, duck, lion = (asset(tmp_path, key, "image") for key in ("image", "duck", "lion"))
    call, poem = asset(tmp_path, "winning_call", "audio"), asset(tmp_path, "azacinto_foscolo", "audio")
    demos = [
        request("single-image/url", image), request("multi-image/url", duck, lion),
        request("audio/url", call), request("multi-audio/input_audio", call, poem),
    ]  # fmt: skip
    by_limits = worst_case(demos, {"image": 2, "audio": 1})
    assert by_limits is not None
    assert [a.key for a in by_limits.assets] == ["image", "duck", "winning_call"]
    unlimited = worst_case(demos, None)  # as many as one demo sends at most
    assert unlimited is not None
    assert [a.key for a in unlimited.assets] == ["image", "duck", "winning_call", "azacinto_foscolo"]
    assert worst_case([request("text-only/text")], None) is None


# -- against the fake -----------------------------------------------------------------------------------


def test_a_request_with_no_first_token_is_hung_with_the_servers_log(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report, _ = run_fake(
        tmp_path, mmdemo_env, "--only", "text-only", "--request-timeout", "1", hang_prompt="capital of France"
    )
    assert code == 1, out
    [demo] = report["demos"]  # text only: no repeat, no worst case
    assert demo["status"] == "hung"
    assert demo["error"] == "hung: no first token within the 1 s request timeout"
    assert any("it will never be scheduled" in line for line in demo["log_lines"])
    assert report["summary"]["hung"] == 1
    assert report["teardown"]["remaining"] == 0  # the run still tears down and reports
    assert "1 hung" in out


def test_a_repeat_that_fails_where_the_first_passed_is_named_so(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report, run_dir = run_fake(tmp_path, mmdemo_env, "--only", "single-image", fail_repeat="1")
    assert code == 1, out
    by_name = {d["name"]: d for d in report["demos"]}
    assert by_name["single-image/url"]["status"] == "passed"
    repeat = by_name["single-image/url (repeat)"]
    assert repeat["status"] == "failed"
    assert repeat["kind"] == "repeat"
    assert repeat["diagnosis"].startswith("the repeat failed where the first request passed")
    assert "--disable-mm-preprocessor-cache" in repeat["diagnosis"]
    assert "the repeat failed where the first request passed" in (run_dir / "report.html").read_text()


def test_a_server_that_dies_on_the_worst_case_fails_the_run_with_that_diagnosis(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    # fake-omni's worst case: 2 images, 1 video, 2 audios; no demo sends more than 2 media.
    code, out, report, _ = run_fake(tmp_path, mmdemo_env, die_on_media="5")
    assert code == 3, out
    assert report["status"] == "error"
    assert report["error"]["message"].startswith("vllm serve died on the worst-case request")
    assert report["error"]["diagnosis"] == "CUDA out of memory"
    assert all(d["status"] == "passed" for d in report["demos"] if d["kind"] != "worst case")
    assert report["demos"][-1]["name"] == "worst-case/all-media"
    assert report["teardown"]["remaining"] == 0


def test_no_worst_case_skips_it(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    code, out, report, _ = run_fake(tmp_path, mmdemo_env, "--only", "audio", "--no-worst-case")
    assert code == 0, out
    assert [d["kind"] for d in report["demos"]] == ["demo"] * 3 + ["repeat"] * 3


def test_startup_warnings_reach_the_report_the_page_and_the_terminal(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    line = "The model's max_model_len (128) is too short to hold the multi-modal embeddings in the worst case"
    code, out, report, run_dir = run_fake(tmp_path, mmdemo_env, "--only", "text-only", warn_log=line)
    assert code == 0, out
    [warning] = report["warnings"]
    assert line in warning
    assert "raise serve.max_model_len" in warning
    assert str(escape(line)) in (run_dir / "report.html").read_text()
    assert "warning" in out
    assert "too short to hold the multi-modal embeddings" in (run_dir / "report.md").read_text()
