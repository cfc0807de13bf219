"""The error tree: every failure mmdemo reports is one of these, and each writes its own message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class MMDemoError(Exception):
    """Base class: `str(err)` is the one-line message, `hint` an optional next step."""

    exit_code = 1
    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class UsageError(MMDemoError):
    """A bad command line (unknown profile, bad flag value)."""

    exit_code = 2


class ProfileError(UsageError):
    """A profile that does not parse or does not validate; the message names file, key and value."""


class PreflightError(MMDemoError):
    """A check before launch refused to start the server (port held, no vLLM, too little memory)."""

    exit_code = 3


class HubUnreachable(PreflightError):
    """The hub cannot be asked: HF_HUB_OFFLINE is set, or no connection (refused, no route, a timeout).

    `why` says which, for the caller that falls back to the HF cache and for `HubUnavailable`.
    """

    def __init__(self, what: str, why: str) -> None:
        self.why = why
        super().__init__(f"{what}: the hub cannot be asked: {why}")


class HubUnavailable(PreflightError):
    """A hub model the hub cannot be asked about (HF_HUB_OFFLINE, or no route to it) and the HF cache lacks.

    One line: the model, the cache searched, why the hub was not asked, and how to fill the cache.
    """

    def __init__(self, model: str, hub_cache: str, why: str, gap: str | None = None) -> None:
        self.model, self.hub_cache, self.why, self.gap = model, hub_cache, why, gap
        repo, _, revision = model.partition("@")
        args = f"{repo} --revision {revision}" if revision else repo
        state = (
            f"is incomplete in the HF cache {hub_cache} ({gap})"
            if gap
            else f"is not in the HF cache {hub_cache}"
        )
        super().__init__(
            f"{model} {state} and {why}: run `hf download {args}` (or `huggingface-cli download {args}`) "
            f"on a machine with access, then copy its models--{repo.replace('/', '--')} folder into {hub_cache}"
        )


class AssetError(MMDemoError):
    """A demo asset could not be fetched, generated or verified."""

    exit_code = 2


@dataclass
class ServerError(MMDemoError):
    """The server failed to become ready, or died: carries the evidence that explains it."""

    reason: str
    argv: Sequence[str] = ()
    returncode: int | None = None
    timeout_s: float | None = None
    log_tail: Sequence[str] = field(default_factory=list)
    diagnosis: str | None = None
    log_path: str | None = None
    hint: str | None = None

    exit_code = 3

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = [self.reason]
        if self.returncode is not None:
            parts.append(describe_returncode(self.returncode))
        message = ": ".join(parts)
        if self.diagnosis:
            message += f" ({self.diagnosis})"
        return message


class DemoFailed(MMDemoError):
    """At least one demo request failed; the report holds the details."""

    exit_code = 1

    def __init__(self, failed: int, total: int) -> None:
        super().__init__(f"{failed} of {total} demo requests failed")
        self.failed = failed
        self.total = total


class Interrupted(MMDemoError):
    """The run was interrupted by a signal (Ctrl-C, SIGTERM, SIGHUP)."""

    exit_code = 130

    def __init__(self, signame: str) -> None:
        super().__init__(f"interrupted by {signame}")
        self.signame = signame


class InternalError(MMDemoError):
    """mmdemo itself failed unexpectedly: a bug. The server is torn down and the report written all the same."""

    exit_code = 4
    hint = "this is a bug in mmdemo: run again with -vv and report the traceback"

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"unexpected {type(exc).__name__}: {exc}")


def describe_returncode(returncode: int) -> str:
    """Say how a process ended, naming the signal for negative codes."""
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"
