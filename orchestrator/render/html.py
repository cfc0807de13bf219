"""report.html (one run) and matrix.html (a profile x GPU grid): self-contained pages from Jinja2 templates.

Every value reaches the page through the template with autoescape on, and every string passes
text.visible() on the way (the environment's finalize), so no text from outside can add an element
or a control byte. Media are inlined (render.inline): opening the page sends no request.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from markupsafe import Markup, escape

from orchestrator.core.paths import cache_dir
from orchestrator.record.report import AssetRecord, DemoRecord, DiffReport, RunRecord, diff
from orchestrator.render import charts
from orchestrator.render.inline import Inlined, inline
from orchestrator.render.text import visible
from orchestrator.vllm.logscan import DIAGNOSES

if TYPE_CHECKING:
    from jinja2 import Environment

# Log lines worth the reader's eye in a failure's tail.
_HOT = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|Traceback|Error\b|Exception\b|Killed", re.IGNORECASE)


def _finalize(value: Any) -> Any:
    """Every string the template prints is made visible first (Markup was built safely already)."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible(value)
    return value


def shown(text: str | None) -> Markup:
    """Escaped text with each unsafe character shown as a marked escape (`\\x1b` in a span)."""
    parts: list[str] = []
    for char in text or "":
        safe = visible(char)
        parts.append(str(escape(char)) if safe == char else f'<span class="ctl">{escape(safe)}</span>')
    return Markup("".join(parts).replace('</span><span class="ctl">', ""))


def highlight(text: str | None, words: Sequence[str]) -> Markup:
    """shown(text) with every occurrence of the words (case-insensitive) in <mark>."""
    words = sorted({w for w in words if w}, key=len, reverse=True)
    if not words or not text:
        return shown(text)
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    out: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        out += [shown(text[last : match.start()]), Markup("<mark>%s</mark>") % shown(match.group())]
        last = match.end()
    out.append(shown(text[last:]))
    return Markup("".join(out))


@cache
def _environment() -> Environment:
    from jinja2 import Environment, FileSystemBytecodeCache, PackageLoader, StrictUndefined

    class QuietCache(FileSystemBytecodeCache):
        """A cache that is only ever a speed-up: a missing or unwritable directory just compiles."""

        def load_bytecode(self, bucket: Any) -> None:
            with contextlib.suppress(OSError):
                super().load_bytecode(bucket)

        def dump_bytecode(self, bucket: Any) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    # Compiled templates are kept in mmdemo's cache: compiling them costs each run ~60 ms otherwise.
    compiled = cache_dir() / "templates"
    with contextlib.suppress(OSError):
        compiled.mkdir(parents=True, exist_ok=True)
    env = Environment(
        loader=PackageLoader("orchestrator.render", "templates"),
        bytecode_cache=QuietCache(str(compiled)),
        autoescape=True,
        undefined=StrictUndefined,
        finalize=_finalize,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shown=shown, secs=_secs, num=_num)
    return env


def warm() -> None:
    """Load jinja2 and report.html's compiled template now (~30 ms), so writing the page later does not:
    a run does it while its teardown waits for the server to exit."""
    _environment().get_template("report.html.j2")


def _secs(value: float | None) -> str:
    return "–" if value is None else charts.seconds(value)


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


@dataclass(frozen=True)
class DemoView:
    """One demo as the page shows it: the record, its media inlined, its answer marked up."""

    demo: DemoRecord
    media: list[tuple[AssetRecord, Inlined]]
    answer: Markup


def _demo_view(demo: DemoRecord, media: dict[tuple[str | None, str | None], Inlined]) -> DemoView:
    pairs = []
    for asset in demo.assets:
        key = (asset.kind, asset.path)
        if key not in media:  # the same file goes out in several demos: inline it once
            media[key] = inline(asset.kind, asset.path)
        pairs.append((asset, media[key]))
    words = [word for group in demo.expected for word in group]
    return DemoView(demo, pairs, highlight(demo.answer, words))


def _log_lines(record: RunRecord) -> list[tuple[str, bool]]:
    """The failure's last log lines, each with whether it explains the failure."""
    if record.error is None:
        return []
    lines = record.error.log_tail[-40:]
    return [(line, bool(_HOT.search(line) or any(p.search(line) for p, _ in DIAGNOSES))) for line in lines]


def to_html(record: RunRecord) -> str:
    """The whole report.html of one run."""
    media: dict[tuple[str | None, str | None], Inlined] = {}
    views = [_demo_view(demo, media) for demo in record.demos]
    template = _environment().get_template("report.html.j2")
    return template.render(
        r=record,
        demos=views,
        log_lines=_log_lines(record),
        charts=[c for c in (charts.startup(record.startup), charts.timeline(record.timeline)) if c],
        demo_chart=charts.demos(record.demos),
    )


@dataclass(frozen=True)
class MatrixCell:
    """One cell of matrix.html: a profile on a GPU class, and a link to its report.html."""

    profile: str
    gpu: str
    status: str  # passed, failed, error, interrupted, skipped, unsupported, ...
    ready_s: float | None = None
    passed: int = 0
    total: int = 0
    href: str | None = None  # relative to matrix.html, e.g. "phi-3.5-vision/H100/report.html"
    note: str | None = None
    image: str | None = None  # the container image it ran in (a matrix over images: one row each)
    tasks: tuple[tuple[str, str], ...] = ()  # each task past chat the cell ran, and its status


@dataclass(frozen=True)
class Comparison:
    """One profile on one GPU class across the matrix's images: each image's result, and what changed."""

    profile: str
    gpu: str
    results: tuple[str, ...]  # one per image, in the matrix's order
    changes: tuple[str, ...]  # "IMAGE: what changed from the first image", one per later image


_LINK = re.compile(r"[A-Za-z0-9._~/-]+")


def to_matrix_html(
    cells: Sequence[MatrixCell],
    title: str = "mmdemo matrix",
    *,
    images: Sequence[str] = (),
    comparisons: Sequence[Comparison] = (),
) -> str:
    """matrix.html: profiles (on each image) down, GPU classes across, each cell linking to its run's
    page; with images, their results side by side and what changed between them."""
    rows = list(dict.fromkeys((c.profile, c.image) for c in cells))
    gpus = list(dict.fromkeys(c.gpu for c in cells))
    grid = {(c.profile, c.image, c.gpu): c for c in cells}
    # Only plain relative paths become links: no scheme, no '..', so a cell cannot point off the tree.
    links = {
        (c.profile, c.image, c.gpu): c.href
        for c in cells
        if c.href and _LINK.fullmatch(c.href) and ".." not in c.href.split("/") and not c.href.startswith("/")
    }
    template = _environment().get_template("matrix.html.j2")
    return template.render(
        title=title,
        rows=rows,
        profiles=list(dict.fromkeys(c.profile for c in cells)),
        gpus=gpus,
        grid=grid,
        links=links,
        cells=cells,
        images=list(images),
        comparisons=list(comparisons),
    )


def to_diff_html(a: DiffReport, b: DiffReport, label_a: str = "A", label_b: str = "B") -> str:
    """A small page of `report diff`: per demo, status and latency in each run, and both answers."""
    demos_a = {d.name: d for d in a.demos}
    demos_b = {d.name: d for d in b.demos}
    rows = [(row, demos_a.get(row["name"]), demos_b.get(row["name"])) for row in diff(a, b)]
    template = _environment().get_template("diff.html.j2")
    return template.render(a=a, b=b, label_a=label_a, label_b=label_b, rows=rows)
