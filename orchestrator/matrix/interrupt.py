"""How cells running in threads learn of Ctrl-C / SIGTERM / SIGHUP: one session Stop they all share.

Python delivers signals to the main thread only. The matrix's main thread routes them into one
`Interrupt` (a session `Stop`); every cell's session polls it in each of its waits, so a running cell
leaves its target (tearing its server down, with the usual grace) as soon as it is set, and the
engines start no new cell. A second signal skips the grace of every server (Stop's hurry).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from orchestrator.session.context import Stop, signals_to


class Interrupt(Stop):
    """A matrix run's stop: set by a signal (or `set()`), seen by every cell's session."""

    def signal_name(self) -> str | None:
        return self.received[0] if self.received else None

    def set(self, name: str = "SIGINT") -> None:
        """Interrupt the matrix: running cells are torn down, no new cell starts."""
        self.request(name)

    @contextlib.contextmanager
    def installed(self, signals: bool = True) -> Iterator[Interrupt]:
        """The signal handlers (main thread only, unless signals=False) for the block."""
        with signals_to(self) if signals else contextlib.nullcontext():
            yield self
