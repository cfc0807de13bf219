"""The matrix record: matrix.json (a typed model with a JSON Schema), matrix.md and one junit.xml."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from orchestrator.core.atomic import write_atomic
from orchestrator.core.tasks import Task
from orchestrator.matrix.cells import cell_key
from orchestrator.render.html import Comparison, MatrixCell, to_matrix_html
from orchestrator.render.text import markdown_cell

SCHEMA_VERSION = 1
CellStatus = Literal["passed", "failed", "error", "interrupted", "skipped"]
# Worst first: the matrix's exit code is the worst cell's.
_SEVERITY = {130: 5, 4: 4, 3: 3, 2: 2, 1: 1, 0: 0}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellRecord(_Model):
    """One cell: what ran where, its verdict and exit code, or why it did not run."""

    profile: str
    gpu_class: str
    variant: str | None = None
    status: CellStatus
    exit_code: int
    reason: str | None = None  # why it was skipped, or the error that ended it
    gpu_count: int = 0
    gpus: list[int] = []  # the GPU indices it had (as the driver numbers them), on its node
    cuda_visible_devices: str | None = None  # as the server saw it
    platform: str | None = None  # cuda or rocm; None for a cpu cell
    visible_devices: dict[str, str] = {}  # every visible-devices variable the server got (ROCR/HIP/CUDA)
    node: str | None = None
    port: int | None = None
    time_to_ready_s: float | None = None
    demos_passed: int = 0
    demos_total: int = 0
    teardown_remaining: int | None = None
    gpu_released: bool | None = None
    directory: str | None = None  # relative to the matrix directory
    started_s: float | None = None  # seconds after the matrix started
    ended_s: float | None = (
        None  # the same clock as started_s: cells that ran one after another never overlap
    )
    duration_s: float | None = None
    image: str | None = None  # the container image vLLM ran in; None: vLLM on the host
    image_digest: str | None = None
    vllm_version: str | None = None  # as the server reported it
    demo_statuses: dict[str, str] = {}  # demo name -> passed / failed: what a version comparison names
    # "chat" and each task past chat the cell ran -> passed (all its demos passed) / failed
    task_statuses: dict[str, str] = {}
    median_ttft_s: float | None = None
    containers_remaining: int | None = None  # after teardown, with the run's label; must be 0

    @property
    def key(self) -> str:
        return cell_key(self.profile, self.gpu_class, self.image)


class MatrixRecord(_Model):
    """matrix.json: every cell of a `mmdemo matrix` run and the overall verdict."""

    schema_version: Literal[1] = 1
    mmdemo_version: str
    engine: Literal["local", "ray", "skypilot"]
    status: Literal["passed", "failed", "error", "interrupted"]
    exit_code: int
    profiles: list[str]
    gpu_classes: list[str]
    images: list[str] = []  # `--image`s, side by side: every cell ran once in each
    started_at: str
    finished_at: str
    wall_s: float
    cells: list[CellRecord]


def worst_exit_code(cells: Sequence[CellRecord]) -> int:
    """0 when every cell passed (skips do not count), else the worst cell's code."""
    codes = [c.exit_code for c in cells if c.status != "skipped"]
    return max(codes, key=lambda code: _SEVERITY.get(code, 4), default=0)


def verdict(code: int) -> Literal["passed", "failed", "error", "interrupted"]:
    """The matrix status for its exit code."""
    return {0: "passed", 1: "failed", 130: "interrupted"}.get(code, "error")  # type: ignore[return-value]


def schema() -> dict[str, Any]:
    """The JSON Schema of matrix.json, generated from the model."""
    return MatrixRecord.model_json_schema()


def write_all(matrix_dir: Path, record: MatrixRecord) -> list[Path]:
    """matrix.json, matrix.md and junit.xml into the matrix directory."""
    files = [matrix_dir / n for n in ("matrix.json", "matrix.md", "junit.xml", "matrix.html")]
    write_atomic(files[0], record.model_dump_json(indent=2) + "\n")
    write_atomic(files[1], to_markdown(record))
    write_atomic(files[2], to_junit(record, matrix_dir))
    write_atomic(files[3], to_html(record))
    return files


def load(path: Path) -> MatrixRecord:
    """Read matrix.json back (validated)."""
    return MatrixRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))


# -- matrix.md ----------------------------------------------------------------------------------

_MARK = {"passed": "✅", "failed": "❌", "error": "⚠️", "interrupted": "⏹", "skipped": "⏭"}


def _md(text: str, limit: int = 90) -> str:
    return markdown_cell(text, limit)


def cell_text(cell: CellRecord) -> str:
    """What one grid square says: verdict, demos and time to ready, or the reason."""
    mark = _MARK[cell.status]
    if cell.status == "skipped":
        return f"{mark} skipped: {_md(cell.reason or '')}"
    parts = [f"{mark} {cell.status}"]
    if cell.demos_total:
        parts.append(f"{cell.demos_passed}/{cell.demos_total}")
    if cell.time_to_ready_s is not None:
        parts.append(f"ready {cell.time_to_ready_s:.1f} s")
    text = ", ".join(parts)
    if cell.status != "passed" and cell.reason:
        text += f" (exit {cell.exit_code}: {_md(cell.reason, 70)})"
    if cell.directory:
        text = f"[{text}]({cell.directory}/report.md)"
    return text


def to_html(record: MatrixRecord) -> str:
    """matrix.html: the grid, each square linking to its cell's report.html; the versions compared."""
    cells = [
        MatrixCell(
            profile=c.profile,
            gpu=c.gpu_class,
            status=c.status,
            ready_s=c.time_to_ready_s,
            passed=c.demos_passed,
            total=c.demos_total,
            href=f"{c.directory}/report.html" if c.directory else None,
            note=c.reason,
            image=c.image,
            tasks=tuple((task, status) for task, status in c.task_statuses.items() if task != "chat"),
        )
        for c in record.cells
    ]
    return to_matrix_html(
        cells,
        title=f"mmdemo matrix ({record.engine}): {record.status}",
        images=[image_label(record, i) for i in record.images],
        comparisons=compare_images(record),
    )


# -- vLLM versions side by side --------------------------------------------------------------------


def image_label(record: MatrixRecord, image: str) -> str:
    """`IMAGE (vLLM 0.32.0)`, the version as its cells' servers reported it."""
    versions = sorted({c.vllm_version for c in record.cells if c.image == image and c.vllm_version})
    return f"{image} (vLLM {', '.join(versions)})" if versions else image


def _summary(cell: CellRecord) -> str:
    parts: list[str] = [cell.status]
    if cell.demos_total:
        parts.append(f"{cell.demos_passed}/{cell.demos_total}")
    if cell.time_to_ready_s is not None:
        parts.append(f"ready {cell.time_to_ready_s:.1f} s")
    if cell.median_ttft_s is not None:
        parts.append(f"TTFT {cell.median_ttft_s * 1000:.0f} ms")
    return ", ".join(parts)


def changes(a: CellRecord, b: CellRecord) -> list[str]:
    """What changed from cell a to cell b (the same profile and GPU class on another image)."""
    out = []
    if a.vllm_version != b.vllm_version:
        out.append(f"vLLM {a.vllm_version or '?'} → {b.vllm_version or '?'}")
    if a.status != b.status:
        out.append(f"{a.status} → {b.status}")
    broke = [n for n, s in b.demo_statuses.items() if s != "passed" and a.demo_statuses.get(n) == "passed"]
    fixed = [
        n
        for n, s in b.demo_statuses.items()
        if s == "passed" and a.demo_statuses.get(n) not in (None, "passed")
    ]
    if broke:
        out.append(f"failed now: {', '.join(broke)}")
    if fixed:
        out.append(f"passes now: {', '.join(fixed)}")
    if a.time_to_ready_s is not None and b.time_to_ready_s is not None:
        out.append(f"ready {b.time_to_ready_s - a.time_to_ready_s:+.1f} s")
    if a.median_ttft_s is not None and b.median_ttft_s is not None:
        out.append(f"TTFT {(b.median_ttft_s - a.median_ttft_s) * 1000:+.0f} ms")
    return out


def compare_images(record: MatrixRecord) -> list[Comparison]:
    """Per profile and GPU class run on two images or more: each image's result, and what changed
    from the first image to each of the others."""
    if len(record.images) < 2:
        return []
    by_key = {(c.profile, c.gpu_class, c.image): c for c in record.cells}
    rows = []
    for profile in record.profiles:
        for gpu in record.gpu_classes:
            cells = [by_key.get((profile, gpu, image)) for image in record.images]
            ran = [c for c in cells if c is not None and c.status != "skipped"]
            if len(ran) < 2:
                continue
            base = ran[0]
            changed = [
                f"{c.image}: {'; '.join(diff) if (diff := changes(base, c)) else 'no change'}"
                for c in ran[1:]
            ]
            rows.append(
                Comparison(
                    profile=profile,
                    gpu=gpu,
                    results=tuple(_summary(c) if c else "–" for c in cells),
                    changes=tuple(changed),
                )
            )
    return rows


def to_markdown(record: MatrixRecord) -> str:
    """A profile x GPU class grid to paste into an issue."""
    counts: dict[str, int] = {}
    for cell in record.cells:
        counts[cell.status] = counts.get(cell.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    head = {"passed": "✅ passed", "interrupted": "⏹ interrupted"}.get(record.status, f"❌ {record.status}")
    lines = [
        f"# mmdemo matrix — {head} (exit {record.exit_code})",
        "",
        f"- engine: {record.engine}; {len(record.cells)} cells: {summary}",
        f"- wall time: {record.wall_s:.1f} s; started {record.started_at}",
    ]
    if record.images:
        lines.append(f"- images: {', '.join(_md(image_label(record, i)) for i in record.images)}")
    lines += [
        "",
        "| profile | " + " | ".join(record.gpu_classes) + " |",
        "|---|" + "---|" * len(record.gpu_classes),
    ]
    by_key = {(c.profile, c.gpu_class, c.image): c for c in record.cells}
    for profile in record.profiles:
        images: list[str | None] = [*record.images] or [None]
        for image in images:
            row = [
                cell_text(c) if (c := by_key.get((profile, g, image))) else "–" for g in record.gpu_classes
            ]
            label = f"{profile} on {image}" if image else profile
            lines.append(f"| {_md(label)} | " + " | ".join(row) + " |")
    lines += _task_table(record)
    if comparisons := compare_images(record):
        lines += ["", "## vLLM versions side by side", ""]
        lines.append(
            "| profile | GPU | "
            + " | ".join(_md(image_label(record, i)) for i in record.images)
            + " | what changed |"
        )
        lines.append("|---|---|" + "---|" * (len(record.images) + 1))
        for compared in comparisons:
            results = " | ".join(_md(r) for r in compared.results)
            changed = _md("; ".join(compared.changes), 300)
            lines.append(f"| {_md(compared.profile)} | {compared.gpu} | {results} | {changed} |")
    return "\n".join(lines) + "\n"


def task_columns(record: MatrixRecord) -> list[str]:
    """Chat and each task past chat some cell ran, in core/tasks.py's order: the task table's columns."""
    ran = {t for c in record.cells for t in c.task_statuses}
    return [t for t in ("chat", *(t.value for t in Task)) if t in ran]


def _task_table(record: MatrixRecord) -> list[str]:
    """Per cell, a column per task: whether its demos passed; only where a cell ran a task past chat."""
    columns = task_columns(record)
    if columns in ([], ["chat"]):
        return []
    marks = {"passed": "✅", "failed": "❌"}
    lines = ["", "## Tasks", "", "| profile | GPU | " + " | ".join(columns) + " |"]
    lines.append("|---|---|" + "---|" * len(columns))
    for cell in record.cells:
        if cell.task_statuses:
            row = [marks.get(cell.task_statuses.get(t, ""), "–") for t in columns]
            lines.append(f"| {_md(cell.profile)} | {cell.gpu_class} | " + " | ".join(row) + " |")
    return lines


# -- junit.xml ----------------------------------------------------------------------------------

_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: str | None) -> str:
    return _XML_BAD.sub("?", text or "")


def to_junit(record: MatrixRecord, matrix_dir: Path) -> str:
    """One <testsuite> per cell: the cell's own demo cases where it ran, else one skipped/errored case."""
    root = ET.Element("testsuites", name="mmdemo.matrix")
    for cell in record.cells:
        suite = _cell_suite(cell, matrix_dir)
        suite.set("name", f"mmdemo.matrix.{cell.key}")
        root.append(suite)
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, "0")) for s in root)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _cell_suite(cell: CellRecord, matrix_dir: Path) -> ET.Element:
    if cell.directory and (path := matrix_dir / cell.directory / "junit.xml").is_file():
        try:
            suite = ET.parse(path).getroot()
        except ET.ParseError:
            suite = None
        if suite is not None and suite.tag == "testsuite":
            suite.set("skipped", "0")
            return suite
    suite = ET.Element("testsuite", tests="1", failures="0", errors="0", skipped="0", time="0")
    case = ET.SubElement(suite, "testcase", classname=f"mmdemo.matrix.{cell.profile}", name=cell.gpu_class)
    if cell.status == "skipped":
        ET.SubElement(case, "skipped", message=_x(cell.reason))
        suite.set("skipped", "1")
    elif cell.status != "passed":
        ET.SubElement(case, "error", message=_x(cell.reason or cell.status))
        suite.set("errors", "1")
    return suite
