"""Renderers of the run record: report.md, junit.xml and report.html; the files, written atomically."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.atomic import write_atomic
from orchestrator.record.report import RunRecord
from orchestrator.render.html import to_html, warm
from orchestrator.render.junit import to_junit
from orchestrator.render.markdown import to_markdown

__all__ = ["warm", "write_all"]


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
