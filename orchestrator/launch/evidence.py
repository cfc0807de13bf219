"""Failure evidence: what was run, how it ended and the log lines that explain it; a log without secrets."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.core.atomic import write_atomic
from orchestrator.core.errors import ServerError
from orchestrator.launch.runtime_failures import diagnose_runtime
from orchestrator.vllm.logscan import LogFollower, diagnose


def server_error(
    reason: str,
    *,
    argv: Sequence[str],
    follower: LogFollower,
    redact: Callable[[str], str],
    returncode: int | None = None,
    timeout_s: float | None = None,
    hint: str | None = None,
) -> ServerError:
    """A ServerError carrying the evidence: argv, how it ended, the redacted log tail and a diagnosis."""
    tail = [redact(line) for line in follower.tail()]
    found = diagnose_runtime(tail, os.environ) or diagnose(tail)  # the runtime's own failure comes first
    return ServerError(
        reason=reason,
        argv=list(argv),
        returncode=returncode,
        timeout_s=timeout_s,
        log_tail=tail,
        diagnosis=found.message if found else None,
        log_path=str(follower.path),
        hint=found.hint if found else hint,
    )


def redact_log(log_path: Path, redact: Callable[[str], str]) -> None:
    """Rewrite a log with every secret replaced (once nothing writes to it any more)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    clean = redact(text)
    if clean != text:
        write_atomic(log_path, clean)
