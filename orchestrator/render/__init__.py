"""Renderers of the run record: report.md, junit.xml and report.html; the files, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator.record import RunRecord
from orchestrator.render.html import to_html
from orchestrator.render.junit import to_junit
from orchestrator.render.markdown import to_markdown


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import (os.umask can only be read by setting it)


def write_atomic(path: Path, text: str) -> None:
    """Write a file so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it 0600: reports are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all(run_dir: Path, record: RunRecord) -> list[Path]:
    """Write report.json, report.md, junit.xml and report.html into the run directory."""
    files = {
        "report.json": record.to_json(),
        "report.md": to_markdown(record),
        "junit.xml": to_junit(record),
        "report.html": to_html(record),
    }
    for name, text in files.items():
        write_atomic(run_dir / name, text)
    return [run_dir / name for name in files]
