"""How cells running in threads learn of Ctrl-C / SIGTERM / SIGHUP.

Python delivers signals to the main thread only, so the run pipeline's SignalGuard cannot work in a
cell's thread. The matrix's main thread installs this handler instead: it only records the signal
and sets an event. An enforcer thread, waiting on that event, stops every server a cell has put
under watch (each in its own thread, with the usual grace); a server started after the interrupt is
stopped as soon as it is watched. The pipeline sees `signal_name()` and records the cell as
interrupted; the engines start no new cell. A second signal skips the grace of every server.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from orchestrator.server import Server

log = logging.getLogger(__name__)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupt:
    """A matrix run's stop: set by a signal (or `set()`), seen by every cell; implements pipeline.Stop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._servers: set[Server] = set()
        self._stoppers: list[threading.Thread] = []
        self.received: list[str] = []

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)

    def signal_name(self) -> str | None:
        return self.received[0] if self.received else None

    def set(self, name: str = "SIGINT") -> None:
        """Interrupt the matrix: running cells are torn down, no new cell starts."""
        self.received.append(name)
        if len(self.received) > 1:  # a second signal: hurry every teardown
            for server in list(self._servers):
                server.hurry()
        self._event.set()

    def watch(self, server: Server) -> None:
        """Stop `server` when the matrix is interrupted (at once if it already is)."""
        with self._lock:
            if not self._event.is_set():
                self._servers.add(server)
                return
        server.stop()

    def _enforce(self) -> None:
        self._event.wait()
        with self._lock:  # from here on, watch() stops servers itself
            servers = list(self._servers)
        log.info("interrupted: stopping %d server(s)", len(servers))
        for server in servers:
            thread = threading.Thread(target=server.stop, name="matrix-stop", daemon=True)
            thread.start()
            self._stoppers.append(thread)

    def join(self) -> None:
        """Wait for every stop the enforcer began."""
        for thread in self._stoppers:
            thread.join()

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.set(signal.Signals(signum).name)

    @contextlib.contextmanager
    def installed(self, signals: bool = True) -> Iterator[Interrupt]:
        """The enforcer thread and (main thread only, unless signals=False) the signal handlers."""
        enforcer = threading.Thread(target=self._enforce, name="matrix-interrupt", daemon=True)
        enforcer.start()
        # A signal set to be ignored stays ignored (`nohup mmdemo matrix ...`).
        watched = [s for s in _SIGNALS if signals and signal.getsignal(s) != signal.SIG_IGN]
        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread
            for sig in watched:
                previous[sig] = signal.signal(sig, self.handler)
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            if not self._event.is_set():
                self._event.set()  # release the enforcer; no server is watched any more
            enforcer.join()
            self.join()
