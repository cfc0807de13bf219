"""A session: the run, on one screen. `run`, `attach`, `serve` and each matrix cell go through it.

    prepare the target -> open the record in a run directory -> start the media -> enter the target
    (an endpoint) -> send the demos (or serve until stopped) -> leave the target -> close the record

A report is written whenever a run directory exists. Signals never raise inside arbitrary code:
they set `Stop`, which every wait polls; a second signal hurries teardown.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from orchestrator import render
from orchestrator.command import Redactor
from orchestrator.errors import DemoFailed, InternalError, Interrupted, MMDemoError, ServerError, UsageError
from orchestrator.options import Options
from orchestrator.record import ErrorRecord, RunRecord, Status, TimelineEvent
from orchestrator.targets import Endpoint, Target

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.05


class Events(Protocol):
    """What the CLI shows while a session goes on; the session itself never prints."""

    def stage(self, name: str, detail: str = "") -> None: ...
    def waiting(self, elapsed_s: float, phase: str) -> None: ...
    def log_line(self, line: str) -> None: ...
    def demo_done(self, result: Any) -> None: ...
    def ready(self, endpoint: Endpoint, elapsed_s: float) -> None: ...
    def download(self, key: str, done: int, total: int | None) -> None: ...
    def download_bar(self, label: str) -> contextlib.AbstractContextManager[Callable[[int, int], None]]: ...


class QuietEvents:
    """Events that show nothing (tests, library use, matrix cells)."""

    def stage(self, name: str, detail: str = "") -> None:
        log.info("%s %s", name, detail)

    def waiting(self, elapsed_s: float, phase: str) -> None:
        pass

    def log_line(self, line: str) -> None:
        pass

    def demo_done(self, result: Any) -> None:
        pass

    def ready(self, endpoint: Endpoint, elapsed_s: float) -> None:
        pass

    def download(self, key: str, done: int, total: int | None) -> None:
        pass

    def download_bar(self, label: str) -> contextlib.AbstractContextManager[Callable[[int, int], None]]:
        return contextlib.nullcontext(lambda done, total: None)


class Stop:
    """The request to end a session (a signal, or a matrix driver); every wait polls it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.received: list[str] = []
        self._hurry: list[Callable[[], None]] = []

    def request(self, reason: str) -> None:
        """The first request stops the session; any later one skips what is left of teardown's grace."""
        self.received.append(reason)
        if self._event.is_set():
            for hurry in list(self._hurry):
                hurry()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Interrupted once a stop was requested."""
        if self._event.is_set():
            raise Interrupted(self.received[0] if self.received else "stop")

    def sleep(self, seconds: float) -> None:
        """Wait up to `seconds`; raise Interrupted as soon as a stop is requested."""
        self._event.wait(seconds)
        self.check()

    def on_hurry(self, callback: Callable[[], None]) -> None:
        self._hurry.append(callback)


@contextlib.contextmanager
def signals_to(stop: Stop) -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP request the stop (main thread only; elsewhere the owner does)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.request(signal.Signals(signum).name)

    # A signal set to be ignored stays ignored: `nohup mmdemo run ...` must survive its SIGHUP.
    watched = [
        s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN
    ]
    try:
        previous = {sig: signal.signal(sig, handler) for sig in watched}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class Session:
    """What a target and the steps share: the record, the run directory, events, stop and clock."""

    record: RunRecord
    run_dir: Path
    events: Events
    stop: Stop
    origin: float  # time.monotonic() when the command started
    media_root: Path | None = None
    redact: Redactor = field(default_factory=Redactor)

    def now(self) -> float:
        return time.monotonic() - self.origin

    def mark(self, event: str) -> None:
        """Add a moment to the record's timeline."""
        self.record.timeline.append(TimelineEvent(event=event, at_s=round(self.now(), 3)))

    def wait(self, future: Future[T]) -> T:
        """The future's result, raising Interrupted as soon as a stop is requested."""
        while True:
            with contextlib.suppress(TimeoutError):
                return future.result(timeout=POLL_S)
            self.stop.check()


@dataclass
class Outcome:
    """What a session produced: the record as written, where, and the exit code."""

    record: RunRecord
    run_dir: Path
    exit_code: int
    error: MMDemoError | None = None


Serve = Callable[[Endpoint, Session], None]


def run_session(
    target: Target,
    options: Options,
    events: Events | None = None,
    *,
    stop: Stop | None = None,
    serve: Serve | None = None,
    origin: float | None = None,
) -> Outcome:
    """The run: demos against the target's endpoint (or `serve` until stopped); always a record."""
    from orchestrator import demos

    events = events or QuietEvents()
    stop = stop or Stop()
    origin = time.monotonic() if origin is None else origin
    with signals_to(stop):
        prepared = target.prepare(now_iso())  # refusals here leave no run directory behind
        run_dir = options.run_dir or make_run_dir(options.runs_dir, prepared.record.profile)
        session = Session(prepared.record, run_dir, events, stop, origin)
        events.stage(
            "profile", f"{prepared.record.profile} on {prepared.record.variant}; run directory {run_dir}"
        )
        session.record.timeline.append(TimelineEvent(event="command start", at_s=0.0))
        error: MMDemoError | None = None
        try:
            with (
                demos.MediaStep.start(session, prepared, options, enabled=serve is None) as media,
                target.enter(session) as endpoint,
            ):
                if serve is not None:
                    serve(endpoint, session)
                else:
                    send_demos(session, endpoint, media.requests(), options)
        except MMDemoError as exc:
            error = exc
        except Exception as exc:  # a bug: teardown has run, and the record is still written
            log.debug("unexpected error", exc_info=True)
            error = InternalError(exc)
        if stop.received and not isinstance(error, Interrupted):
            error = Interrupted(stop.received[0])
        return close_record(session, error)  # still under the handlers: a signal cannot cut it short


def send_demos(session: Session, endpoint: Endpoint, requests: list[Any], options: Options) -> None:
    """Send every request, record each result, and check the server survived them."""
    from orchestrator import demos

    session.events.stage("demos", f"{len(requests)} requests to {endpoint.model}")
    started = time.monotonic()
    results = demos.run_demos(
        requests,
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        model=endpoint.model,
        concurrency=options.concurrency,
        timeout_s=options.request_timeout_s,
        on_result=session.events.demo_done,
        cancelled=session.stop.is_set,
    )
    session.stop.check()
    session.record.demos_wall_s = round(time.monotonic() - started, 3)
    session.record.demos = [demos.to_record(result, started) for result in results]
    session.mark("demos done")
    endpoint.check("during the demos")


def close_record(session: Session, error: MMDemoError | None) -> Outcome:
    """The verdict (a failed demo when nothing worse happened), written redacted to the run directory."""
    record = session.record
    record.summary = record.summarize()
    if error is None and record.summary.failed:
        error = DemoFailed(record.summary.failed, record.summary.total)
    record.status = status_of(error)
    record.error = error_record(error) if error and not isinstance(error, DemoFailed) else None
    record.finished_at = now_iso()
    clean = RunRecord.model_validate(session.redact.data(record.model_dump()))
    render.write_all(session.run_dir, clean)
    return Outcome(clean, session.run_dir, error.exit_code if error else 0, error)


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<timestamp>-<name>, unique even for two runs in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = runs_dir / (f"{stamp}-{name}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(
                f"cannot create a run directory under {runs_dir}: {exc.strerror or exc}"
            ) from None
    raise UsageError(f"cannot create a run directory under {runs_dir}")


def error_record(error: MMDemoError) -> ErrorRecord:
    """The error as report.json keeps it, with the server's evidence when there is some."""
    record = ErrorRecord(type=type(error).__name__, message=str(error), hint=error.hint)
    if isinstance(error, ServerError):
        record.returncode = error.returncode
        record.timeout_s = error.timeout_s
        record.diagnosis = error.diagnosis
        record.log_tail = list(error.log_tail)
    return record


def status_of(error: MMDemoError | None) -> Status:
    if error is None:
        return "passed"
    if isinstance(error, Interrupted):
        return "interrupted"
    if isinstance(error, DemoFailed):
        return "failed"
    return "error"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
