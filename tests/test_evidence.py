"""Failure evidence: the error carries the redacted log tail and its diagnosis; the log loses its secrets."""

from __future__ import annotations

from pathlib import Path

from orchestrator.launch.command import Redactor
from orchestrator.launch.evidence import redact_log, server_error
from orchestrator.vllm.logscan import LogFollower


def test_the_error_carries_the_redacted_tail_and_the_diagnosis(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("loading with token hf_secret_123\ntorch.OutOfMemoryError: CUDA out of memory.\n")
    follower = LogFollower(log)
    follower.poll()
    error = server_error(
        "vllm serve exited before it was ready",
        argv=["vllm", "serve", "m"],
        follower=follower,
        redact=Redactor(["hf_secret_123"]),
        returncode=1,
        hint="unused: the diagnosis has its own",
    )
    assert error.log_tail == ["loading with token ***", "torch.OutOfMemoryError: CUDA out of memory."]
    assert error.diagnosis == "CUDA out of memory"
    assert error.hint != "unused: the diagnosis has its own"
    assert error.log_path == str(log)
    assert list(error.argv) == ["vllm", "serve", "m"]


def test_without_a_diagnosis_the_callers_hint_stays(tmp_path: Path) -> None:
    follower = LogFollower(tmp_path / "absent.log")
    error = server_error(
        "not ready", argv=[], follower=follower, redact=Redactor(), timeout_s=2.0, hint="wait"
    )
    assert error.diagnosis is None
    assert error.hint == "wait"
    assert error.timeout_s == 2.0


def test_redact_log_rewrites_secrets_and_leaves_a_missing_log_alone(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("key=abcd1234 and abcd1234 again\n")
    redact_log(log, Redactor(["abcd1234"]))
    assert log.read_text() == "key=*** and *** again\n"
    assert [p.name for p in tmp_path.iterdir()] == ["server.log"]
    redact_log(tmp_path / "absent.log", Redactor(["abcd1234"]))
    assert not (tmp_path / "absent.log").exists()
