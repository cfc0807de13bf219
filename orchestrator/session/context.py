"""What every step of a session shares: the record it fills, where it writes, what it shows, the stop.

A leaf under the steps: targets, demos and the matrix take a `Session`, `Stop` or `Events` from here,
never from `session/run.py`, which composes them.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

from orchestrator.core.errors import Interrupted
from orchestrator.record.report import RunRecord, TimelineEvent

log = logging.getLogger(__name__)
T = TypeVar("T")
POLL_S = 0.05


@dataclass(frozen=True)
class Endpoint:
    """A server ready for requests."""

    base_url: str
    api_key: str
    model: str
    check: Callable[[str], None] = lambda when: None  # raises ServerError once the server is dead
    log_mark: Callable[[], int] = lambda: 0  # where the server's log is now
    log_since: Callable[[int], list[str]] = lambda mark: []  # its lines since a mark (redacted)


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


class Halting(Stop):
    """One session's own stop over a shared one (a matrix's, a signal's): it stops when the shared one
    does, and `halt()` ends its own waits alone, no signal received, the other cells untouched."""

    def __init__(self, shared: Stop) -> None:
        super().__init__()
        self.shared = shared
        self.received = shared.received  # the signals are the shared stop's

    def request(self, reason: str) -> None:
        self.shared.request(reason)

    def on_hurry(self, callback: Callable[[], None]) -> None:
        self.shared.on_hurry(callback)

    def halt(self) -> None:
        """End this stop's waits (they raise Interrupted): the run ends on an error of its own, which
        stays its verdict (run_session turns only a received signal into `interrupted`)."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set() or self.shared.is_set()

    def check(self) -> None:
        self.shared.check()
        super().check()

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.is_set() and (left := deadline - time.monotonic()) > 0:
            self._event.wait(min(left, POLL_S))
        self.check()


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


@dataclass(frozen=True)
class Session:
    """What the steps of one run share: the record they fill, its directory, events, stop and clock.

    Nothing else passes between steps through here: each step takes what the one before returned.
    """

    record: RunRecord
    run_dir: Path
    events: Events
    stop: Stop
    t0: float  # time.monotonic() when the command started: zero of the record's timeline

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, event: str) -> None:
        """Add a moment to the record's timeline."""
        self.record.timeline.append(TimelineEvent(event=event, at_s=round(self.now(), 3)))

    def wait(self, future: Future[T]) -> T:
        """The future's result, raising Interrupted as soon as a stop is requested."""
        while True:
            with contextlib.suppress(TimeoutError):
                return future.result(timeout=POLL_S)
            self.stop.check()
