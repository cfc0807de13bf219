"""Run directories, and what every record starts with: when, and which mmdemo."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from orchestrator.core.errors import UsageError


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
