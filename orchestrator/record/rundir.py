"""Run directories, and what every record starts with: when, and which mmdemo."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.core.errors import UsageError

log = logging.getLogger(__name__)


LATEST = "latest"  # runs/latest: a symlink to the newest run directory, for scripts


def run_dir_name(name: str) -> str:
    """<timestamp>-<name>: a run directory's name (made unique by make_run_dir)."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}"


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<timestamp>-<name>, unique even for two runs in the same second; runs/latest points at it."""
    stem = run_dir_name(name)
    for n in range(1000):
        path = runs_dir / (stem + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            point_latest(path)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(
                f"cannot create a run directory under {runs_dir}: {exc.strerror or exc}"
            ) from None
    raise UsageError(f"cannot create a run directory under {runs_dir}")


def point_latest(run_dir: Path) -> None:
    """Point runs/latest at `run_dir`, atomically: a symlink made under a temporary name, renamed over
    the old one, so a reader sees the previous run or this one, never no link. Best effort: a run does
    not fail for it (a filesystem without symlinks, a `latest` that is a real directory)."""
    link = run_dir.parent / LATEST
    temporary = run_dir.parent / f".{LATEST}.{os.getpid()}.{threading.get_ident()}"
    try:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(run_dir.name)  # relative: the runs directory may move
        os.replace(temporary, link)
    except OSError as exc:
        log.warning("cannot point %s at %s: %s", link, run_dir.name, exc.strerror or exc)
        with contextlib.suppress(OSError):
            temporary.unlink()


def now_iso() -> str:
    """This moment in UTC, to the second: a record's started_at and finished_at."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def mmdemo_version() -> str:
    """The installed mmdemo's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmdemo")
    except PackageNotFoundError:
        return "0+unknown"
