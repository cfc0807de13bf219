"""A rich progress bar (bytes, rate, ETA) for downloads; the CLI hands it to `prefetch.fetch`."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class DownloadProgress:
    """`with DownloadProgress(console, "Qwen/...") as bar: fetch(plan, bar)`: one bar, updated from any thread."""

    def __init__(self, console: Console, label: str, *, transient: bool = False) -> None:
        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=transient,
        )
        # The label may be a model id from a profile: plain text, never rich markup.
        self._label = label
        self._task: TaskID | None = None

    def __enter__(self) -> DownloadProgress:
        self._progress.start()
        self._task = self._progress.add_task(self._label, total=None)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def __call__(self, done: int, total: int) -> None:
        """The `on_progress` callback of `prefetch.fetch`: bytes on disk so far, of the total."""
        if self._task is not None:
            self._progress.update(self._task, completed=done, total=total)

    @property
    def completed(self) -> float:
        """Bytes shown as done (for tests and the caller's summary line)."""
        return 0.0 if self._task is None else self._progress.tasks[0].completed
