"""Work in daemon threads: a run that is stopped must not wait at exit for a download that hangs.

concurrent.futures' pools join their threads when the interpreter exits, so a media download stuck
on a host that never answers would hold `mmdemo` up to its timeout after Ctrl-C. These never do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def background(function: Callable[..., T], *args: Any, name: str | None = None) -> Future[T]:
    """`function(*args)` in a daemon thread; its result or exception in the returned future."""
    future: Future[T] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(
        target=run, name=name or getattr(function, "__name__", "background"), daemon=True
    ).start()
    return future


def parallel_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[function(x) for x in items]`, each in its own daemon thread; the first exception is raised."""
    futures = [background(function, item) for item in items]
    return [f.result() for f in futures]
