"""The download progress bar: bytes, rate and ETA from the prefetch callback."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.cli.progress import DownloadProgress


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_bar_shows_bytes_of_the_total() -> None:
    console, out = _console()
    with DownloadProgress(console, "org/model") as bar:
        bar(3 * 1024 * 1024, 12 * 1024 * 1024)
        assert bar.completed == 3 * 1024 * 1024
        bar(12 * 1024 * 1024, 12 * 1024 * 1024)
    text = out.getvalue()
    assert "org/model" in text
    assert "12.0/12.0 MiB" in text


def test_label_is_not_markup() -> None:
    console, out = _console()
    with DownloadProgress(console, "[bold]org/x[/bold]") as bar:
        bar(1, 2)
    assert "[bold]org/x[/bold]" in out.getvalue()


def test_callback_outside_the_block_is_ignored() -> None:
    console, out = _console()
    bar = DownloadProgress(console, "org/model")
    bar(1, 2)
    assert bar.completed == 0.0
    assert out.getvalue() == ""
