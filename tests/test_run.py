"""`mmdemo run` end to end against the fake server: verdicts, exit codes, evidence, and the report."""

from __future__ import annotations

import itertools
import json
import socket
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.record.report import DemoRecord, RunRecord
from tests.conftest import FAKE, FAKE_PROFILE, mmdemo, schema_problems


def run_fake(tmp_path: Path, env: dict[str, str], *extra: str, **switches: str) -> tuple[int, str, dict]:
    env = {**env, **{f"FAKE_VLLM_{k.upper()}": v for k, v in switches.items()}}
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--grace", "2", *extra, env=env,
    )  # fmt: skip
    runs = sorted((tmp_path / "runs").glob("*"))
    report = json.loads((runs[-1] / "report.json").read_text()) if runs else {}
    return done.returncode, done.stdout + done.stderr, report


def test_all_six_chat_types_pass_and_the_report_is_complete(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report = run_fake(tmp_path, mmdemo_env)
    assert code == 0, out
    assert "PASSED 22/22 requests (11 demos, 10 repeats, the worst case)" in out
    assert set(RunRecord.model_fields) == set(report)
    assert schema_problems(report) == []
    assert report["status"] == "passed"
    demos = [
        "text-only/text", "single-image/url", "single-image/file", "single-image/base64", "multi-image/url",
        "video/url", "video/base64", "audio/input_audio", "audio/url", "audio/base64", "multi-audio/input_audio",
    ]  # fmt: skip
    names = [d["name"] for d in report["demos"]]
    # Every media demo once more after the first round (vLLM's processor cache serves it), then one
    # request with every medium the limits allow (fake-omni: 1 image, 1 video, 2 audios).
    assert names == [*demos, *(f"{n} (repeat)" for n in demos[1:]), "worst-case/all-media"]
    assert [d["kind"] for d in report["demos"]] == ["demo"] * 11 + ["repeat"] * 10 + ["worst case"]
    worst = report["demos"][-1]
    # Offline: the known-answer media stand in for the example's assets (2 images, 1 video, 2 audios).
    assert sorted(a["kind"] for a in worst["assets"]) == ["audio", "audio", "image", "image", "video"]
    assert {a["provenance"] for a in worst["assets"]} == {"known"}
    for demo in report["demos"]:
        assert set(DemoRecord.model_fields) == set(demo)
        assert demo["http_status"] == 200
        assert demo["completion_tokens"] > 0
        assert demo["ttft_s"] <= demo["latency_s"]
    assert report["teardown"]["remaining"] == 0
    assert report["teardown"]["port_free"] is True
    assert report["server"]["ready_s"] > 0
    assert report["vllm"]["version"] == "0.32.0"
    run_dir = sorted((tmp_path / "runs").glob("*"))[-1]
    suite = ET.parse(run_dir / "junit.xml").getroot()
    assert suite.get("tests") == "22"
    assert suite.get("failures") == "0"
    assert "| multi-audio/input\\_audio" in (run_dir / "report.md").read_text()
    assert (run_dir / "server.log").read_text().count("Application startup complete") == 1


def test_secrets_never_reach_the_report_the_log_or_the_terminal(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    secret = "hf_s3cr3t_value_42"
    env = {**mmdemo_env, "HF_TOKEN": secret}
    # The fake echoes the token and the API key it was given into its log, as a careless server might.
    env["FAKE_VLLM_CRASH_AFTER"] = "0.2"
    env["FAKE_VLLM_CRASH_LOG"] = f"token={secret}"
    env["FAKE_VLLM_LOG_ENV"] = "VLLM_API_KEY,HF_TOKEN"
    profile = Path(__file__).parent / "profiles" / "fake-secret.yaml"
    done = mmdemo(
        "run", str(profile), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--follow-logs", env=env,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    run_dir = next((tmp_path / "runs").glob("*"))
    everything = done.stdout + done.stderr + "".join(p.read_text() for p in run_dir.iterdir())
    assert "token=***" in everything
    log = (run_dir / "server.log").read_text()
    assert "env VLLM_API_KEY=***" in log  # the per-run key, whatever it was
    assert "env HF_TOKEN=***" in log
    assert secret not in everything
    report = json.loads((run_dir / "report.json").read_text())
    assert report["server"]["env"] == {"HF_TOKEN": "${HF_TOKEN}"}


def test_missing_token_is_refused_before_launch(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    env = {k: v for k, v in mmdemo_env.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["HF_HOME"] = str(tmp_path / "hf")
    profile = Path(__file__).parent / "profiles" / "fake-secret.yaml"
    done = mmdemo("run", str(profile), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 3
    assert "needs a Hugging Face token and none is set" in done.stderr
    assert "server.log" not in {p.name for p in (tmp_path / "runs").rglob("*")}  # nothing was launched


def test_only_a_chat_type_the_limits_forbid_is_refused(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    llava = "llava-1.5-7b"
    done = mmdemo(
        "run", llava, "--gpu", "H100", "--only", "multi-image", "--vllm-bin", str(FAKE), env=mmdemo_env
    )
    assert done.returncode == 2
    assert (
        "--only multi-image: it sends 2 image(s) per prompt but profile 'llava-1.5-7b' allows 1"
        in done.stderr
    )


def test_a_failing_demo_exits_1_with_the_servers_message(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    code, out, report = run_fake(
        tmp_path, mmdemo_env, "--only", "text-only", chat_status="400", chat_message="This model's maximum context length is 2048 tokens."
    )  # fmt: skip
    assert code == 1, out
    assert report["status"] == "failed"
    demo = report["demos"][0]
    assert demo["status"] == "failed"
    assert demo["http_status"] == 400
    assert "maximum context length is 2048 tokens" in demo["error"]
    assert report["teardown"]["remaining"] == 0
    run_dir = sorted((tmp_path / "runs").glob("*"))[-1]
    failure = ET.parse(run_dir / "junit.xml").getroot().find("testcase/failure")
    assert failure is not None
    assert "maximum context length" in (failure.get("message") or "")


@pytest.mark.parametrize(
    ("switches", "expected", "diagnosis"),
    [
        (
            {
                "crash_after": "0.1",
                "exit_code": "7",
                "crash_log": "torch.OutOfMemoryError: CUDA out of memory.",
            },
            "vllm serve exited before it was ready: exited with code 7",
            "CUDA out of memory",
        ),
        (
            {"crash_after": "0.1", "exit_code": "0", "crash_log": "EngineCore failed to start"},
            "vllm serve exited before it was ready: exited with code 0",
            None,
        ),
        (
            {
                "crash_after": "0.1",
                "exit_code": "2",
                "crash_log": "vllm serve: error: unrecognized arguments: --foo",
            },
            "exited with code 2",
            "vLLM rejected a command-line argument",
        ),
        (
            {
                "crash_after": "0.1",
                "crash_log": "ValueError: Free memory on device (3.2/79.1 GiB) on startup is less than desired GPU memory utilization (0.9, 71.2 GiB).",
            },
            "exited with code 1",
            "free GPU memory is below gpu_memory_utilization",
        ),
        (
            {"crash_after": "0.1", "crash_log": "huggingface_hub.errors.GatedRepoError: 401 Client Error."},
            "exited with code 1",
            "the model is gated and no valid Hugging Face token was given",
        ),
        ({"never_ready": "1"}, "vllm serve was not ready within 1 s (last phase: starting)", None),
    ],
    ids=["oom", "exit-0", "bad-argument", "free-memory", "gated", "never-ready"],
)
def test_server_failures_exit_3_with_evidence(
    tmp_path: Path, mmdemo_env: dict[str, str], switches: dict[str, str], expected: str, diagnosis: str | None
) -> None:
    # Only never-ready waits for the deadline; a crash must be seen however slow the machine is, so a
    # short deadline there would race the fake's own start (a 2-core box under load: over 1 s).
    timeout = "1" if "never_ready" in switches else "120"
    code, out, report = run_fake(tmp_path, mmdemo_env, "--timeout", timeout, **switches)
    assert code == 3, out
    assert expected in out
    assert "last " in out  # the log tail is shown
    assert "| " in out
    assert report["status"] == "error"
    assert schema_problems(report) == []
    assert report["error"]["log_tail"]
    assert report["error"]["diagnosis"] == diagnosis
    if diagnosis:
        assert f"({diagnosis})" in out
        assert "hint:" in out
    assert report["teardown"]["remaining"] == 0


def test_engine_death_during_demos_exits_3(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    code, out, report = run_fake(
        tmp_path, mmdemo_env, "--only", "text-only", engine_death_after="0.05", latency="0.5"
    )
    assert code == 3, out
    assert "vllm serve died during the demos" in out
    assert report["demos"][0]["status"] == "failed"
    assert report["teardown"]["remaining"] == 0


def test_sigterm_ignoring_server_still_passes_and_escalates(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report = run_fake(tmp_path, mmdemo_env, "--only", "text-only", ignore_sigterm="1", workers="2")
    assert code == 0, out
    assert report["teardown"]["signals"] == ["SIGTERM", "SIGKILL"]
    assert report["teardown"]["remaining"] == 0


def test_port_held_by_another_process_is_refused(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, out, _ = run_fake(tmp_path, mmdemo_env, "--port", str(port))
    assert code == 3, out
    assert f"port {port} on 127.0.0.1 is already held by pid" in out


def test_missing_vllm_and_old_vllm_are_refused(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    done = mmdemo(
        "run",
        str(FAKE_PROFILE),
        "--vllm-bin",
        str(tmp_path / "nope"),
        "--runs-dir",
        str(tmp_path),
        env=mmdemo_env,
    )
    assert done.returncode == 3
    assert "not found" in done.stderr
    code, out, _ = run_fake(tmp_path, mmdemo_env, version="0.9.2")
    assert code == 3
    assert "needs vLLM >= 0.10, but" in out


def test_bad_profile_exits_2_with_one_line(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    bad = Path(__file__).parent / "profiles" / "bad-misspelled-key.yaml"
    done = mmdemo("run", str(bad), "--runs-dir", str(tmp_path), env=mmdemo_env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[0] == (
        f"error: {bad}:3: unknown key 'serve.max_model_length' (did you mean 'max_model_len'?)"
    )


def test_concurrent_requests_overlap_on_the_server(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    record = tmp_path / "record.jsonl"
    code, out, _ = run_fake(tmp_path, mmdemo_env, record=str(record), latency="0.3")
    assert code == 0, out
    chats = [json.loads(line) for line in record.read_text().splitlines()]
    chats = [c for c in chats if c["path"] == "/v1/chat/completions"]
    assert len(chats) == 22  # 11 demos, 10 repeats, the worst case: one round after another
    first = sorted(chats, key=lambda c: c["t_start"])[:11]
    latest_start = max(c["t_start"] for c in first)
    earliest_end = min(c["t_end"] for c in first)
    assert latest_start < earliest_end  # every request of the first round was in flight at once


def test_sequential_requests_never_overlap(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    record = tmp_path / "record.jsonl"
    code, out, _ = run_fake(
        tmp_path, mmdemo_env, "--sequential", "--only", "text-only,audio", record=str(record)
    )
    assert code == 0, out
    chats = sorted((json.loads(line) for line in record.read_text().splitlines()), key=lambda c: c["t_start"])
    chats = [c for c in chats if c["path"] == "/v1/chat/completions"]
    assert len(chats) == 8  # text, 3 audio, their 3 repeats, the worst case
    for before, after in itertools.pairwise(chats):
        assert before["t_end"] <= after["t_start"]


def test_report_diff_of_two_runs(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    code_a, _, _ = run_fake(tmp_path, mmdemo_env, "--only", "text-only")
    code_b, _, _ = run_fake(
        tmp_path, mmdemo_env, "--only", "text-only", chat_status="500", chat_message="boom"
    )
    assert (code_a, code_b) == (0, 1)
    run_a, run_b = sorted(p for p in (tmp_path / "runs").glob("*") if not p.is_symlink())  # not runs/latest
    page = tmp_path / "diff.html"
    done = mmdemo("report", "diff", str(run_a), str(run_b), "--html", str(page), env=mmdemo_env)
    assert done.returncode == 1  # a status changed
    assert "text-only/text" in done.stdout
    assert "failed" in done.stdout
    assert "text-only/text" in page.read_text()


def test_the_schema_check_catches_a_broken_report() -> None:
    broken = {"schema_version": 3, "status": "maybe", "demos": [{"name": "x", "latency_s": "fast"}]}
    problems = schema_problems(broken)
    assert "(top): 'profile' is a required property" in problems
    assert any(p.startswith("status: 'maybe' is not one of") for p in problems)
    assert "demos.0.latency_s: 'fast' is not of type 'number'" in problems
    assert "demos.0: 'answer' is a required property" in problems


def test_the_shipped_schema_is_the_one_the_record_generates() -> None:
    from orchestrator.record.report import schema_text

    shipped = (Path(__file__).parent.parent / "orchestrator" / "record" / "report.schema.json").read_text()
    assert shipped == schema_text(), (
        "regenerate: mmdemo report schema > orchestrator/record/report.schema.json"
    )


def test_report_schema_command_prints_the_schema(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("report", "schema", env=mmdemo_env)
    assert done.returncode == 0
    assert json.loads(done.stdout)["properties"]["schema_version"]["const"] == 3


def test_server_text_that_looks_like_markup_is_shown_literally(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    message = "stop string [/INST] not allowed [bold]"
    code, out, report = run_fake(
        tmp_path, mmdemo_env, "--only", "text-only", chat_status="400", chat_message=message
    )
    assert code == 1, out
    assert "[/INST]" in out
    assert report["demos"][0]["error"] == message


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--host", "192.0.2.1"), 3, "error: cannot bind a port on --host 192.0.2.1"),
        (("--host", "no-such-host.invalid"), 3, "error: cannot bind a port on --host no-such-host.invalid"),
        (("--port", "70000"), 2, "argument --port: 70000 is not a port"),
        (("--max-completion-tokens", "0"), 2, "argument --max-completion-tokens: 0 must be >= 1"),
    ],
)
def test_bad_values_are_one_line_refusals(
    tmp_path: Path, mmdemo_env: dict[str, str], args: tuple[str, ...], code: int, message: str
) -> None:
    got, out, _ = run_fake(tmp_path, mmdemo_env, *args)
    assert got == code, out
    assert message in out
    assert "Traceback" not in out


def test_unusable_cache_or_runs_dir_is_a_clear_error(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**mmdemo_env, "MMDEMO_CACHE_DIR": str(blocker)}
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "r"), env=env
    )
    assert done.returncode == 2, done.stderr
    assert "cannot use the cache" in done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(next((tmp_path / "r").glob("*/report.json")).read_text())
    assert report["status"] == "error"  # the report is written for a failed run too
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(blocker), env=mmdemo_env
    )
    assert done.returncode == 2
    assert "cannot create a run directory under" in done.stderr


def test_port_zero_picks_a_free_port(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    code, out, report = run_fake(tmp_path, mmdemo_env, "--port", "0", "--only", "text-only")
    assert code == 0, out
    assert report["server"]["base_url"] != "http://127.0.0.1:0/v1"


def test_max_completion_tokens_flag_wins_over_the_profile(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    record = tmp_path / "record.jsonl"
    code, out, _ = run_fake(
        tmp_path, mmdemo_env, "--only", "multi-image", "--max-completion-tokens", "3", record=str(record)
    )
    assert code == 0, out
    bodies = [json.loads(line)["body"] for line in record.read_text().splitlines()]
    chats = [b for b in bodies if b and "messages" in b]
    assert chats
    assert {b["max_completion_tokens"] for b in chats} == {3}


def test_a_token_from_huggingface_cli_login_is_used(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    home = tmp_path / "hf"
    home.mkdir()
    (home / "token").write_text("hf_from_login_file\n")
    env = {k: v for k, v in mmdemo_env.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["HF_HOME"] = str(home)
    env["FAKE_VLLM_CRASH_AFTER"] = "0.1"
    env["FAKE_VLLM_LOG_ENV"] = "HF_TOKEN"  # the server shows what it got (redacted by mmdemo)
    profile = Path(__file__).parent / "profiles" / "fake-secret.yaml"
    done = mmdemo("run", str(profile), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert done.returncode == 3, done.stdout + done.stderr  # launched (no refusal), then the fake crashed
    run_dir = next((tmp_path / "runs").glob("*"))
    everything = done.stdout + done.stderr + "".join(p.read_text() for p in run_dir.iterdir())
    assert "env HF_TOKEN=***" in everything
    assert "hf_from_login_file" not in everything


EXPECT_PROFILE = Path(__file__).parent / "profiles" / "fake-expect.yaml"


def test_understood_answered_and_the_missing_words(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    from orchestrator.media import known

    # The example's two images, already cached (offline: nothing is downloaded), so the profile's own
    # words grade them; the fake echoes the prompt.
    assets = Path(mmdemo_env["MMDEMO_CACHE_DIR"]) / "assets"
    assets.mkdir(parents=True, exist_ok=True)
    for name, colour in (("duck.jpg", "yellow"), ("lion.jpg", "brown")):
        (assets / name).write_bytes(known.image_jpeg(colour))
    done = mmdemo(
        "run", str(EXPECT_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--grace", "2", "--media", "upstream", env={**mmdemo_env, "FAKE_VLLM_ANSWER": "echo"},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    run_dir = next((tmp_path / "runs").glob("*"))
    report = json.loads((run_dir / "report.json").read_text())
    by_name = {d["name"]: d for d in report["demos"]}
    text = by_name["text-only/text"]
    assert (text["status"], text["verdict"], text["expected"], text["missing"]) == (
        "passed",
        "understood",
        [["Paris", "capital"]],
        [],
    )
    images = by_name["multi-image/url"]
    assert (images["status"], images["verdict"], images["missing"]) == (
        "failed",
        "failed",
        [["zebra", "okapi"]],
    )
    assert {a["provenance"] for a in images["assets"]} == {"cache"}
    assert report["summary"]["understood"] == 1
    markdown = (run_dir / "report.md").read_text()
    assert "failed: missing zebra\\|okapi" in markdown
    assert 'answer: "fake reply to' in markdown  # the answer beside the missing words


def test_dummy_weights_load_random_weights_and_only_answer(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    done = mmdemo(
        "run", str(EXPECT_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--grace", "2", "--dummy-weights", env=mmdemo_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    assert report["flags"] == ["dummy-weights"]
    argv = report["server"]["argv"]
    assert argv[argv.index("--load-format") + 1] == "dummy"
    assert {d["verdict"] for d in report["demos"]} == {"answered"}
    assert any("--dummy-weights" in note for note in report["notes"])
