"""Chart geometry for report.html, computed from the record; templates/charts.html.j2 draws it as SVG.

Bars only: where vLLM's startup spent its seconds, where the run did, and each demo's latency with
its time to first token. No JavaScript, no library: a few rectangles with their labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from orchestrator.record.report import DemoRecord, PhaseSpan, TimelineEvent

WIDTH = 760  # the SVG's user units; the page scales it to its column
LABEL_W = 190  # the label column left of the bars
VALUE_W = 70  # the value column right of the bars
ROW_H = 22
Row = tuple[str, float, float, float | None, str]  # label, start, length, inner length, hover text (s)
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#e15759")


@dataclass(frozen=True)
class Bar:
    """One row of a chart: a label, a bar from x to x + width, and an optional inner bar."""

    label: str
    value: str
    x: float
    width: float
    y: float
    color: str
    inner_width: float | None = None  # e.g. the TTFT inside a demo's latency
    title: str = ""


@dataclass(frozen=True)
class Chart:
    """Rows of bars over one time axis, with its ticks."""

    title: str
    bars: list[Bar]
    ticks: list[tuple[float, str]] = field(default_factory=list)
    height: float = 0.0
    plot_x: float = LABEL_W
    plot_w: float = WIDTH - LABEL_W - VALUE_W
    width: float = WIDTH


def seconds(value: float) -> str:
    """A duration as people read it: 12 ms, 3.40 s, 2 min 05 s."""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    minutes, rest = divmod(value, 60)
    return f"{minutes:.0f} min {rest:02.0f} s"


def _ticks(total: float, plot_x: float, plot_w: float) -> list[tuple[float, str]]:
    """About five round ticks over 0..total seconds."""
    if total <= 0:
        return [(plot_x, "0 s")]
    raw = total / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    count = int(total // step)
    return [
        (plot_x + plot_w * i * step / total, seconds(i * step).replace(".00 s", " s") if i else "0")
        for i in range(count + 1)
    ]


def _chart(title: str, rows: Sequence[Row], total: float) -> Chart:
    """One bar per row, on an axis from 0 to total seconds."""
    chart = Chart(title=title, bars=[])
    scale = chart.plot_w / total if total > 0 else 0.0
    for index, (label, start, length, inner, hover) in enumerate(rows):
        chart.bars.append(
            Bar(
                label=label,
                value=seconds(length),
                x=chart.plot_x + start * scale,
                width=max(1.0, length * scale),
                y=24 + index * ROW_H,
                color=PALETTE[index % len(PALETTE)],
                inner_width=None if inner is None else max(1.0, inner * scale),
                title=hover,
            )
        )
    return Chart(
        title=title,
        bars=chart.bars,
        ticks=_ticks(total, chart.plot_x, chart.plot_w),
        height=24 + len(rows) * ROW_H + 26,
    )


def startup(spans: Sequence[PhaseSpan]) -> Chart | None:
    """vLLM's startup phases, each from its start to its end, on one axis from launch."""
    if not spans:
        return None
    total = max(max(span.start_s, span.end_s) for span in spans)
    rows: list[Row] = [
        (
            span.phase,
            span.start_s,
            max(0.0, span.end_s - span.start_s),  # a phase cut short by a crash never runs backwards
            None,
            f"{span.phase}: {span.start_s:.2f} s → {span.end_s:.2f} s",
        )
        for span in spans
    ]
    return _chart("vLLM startup, from launch", rows, total)


def timeline(events: Sequence[TimelineEvent]) -> Chart | None:
    """The run's moments in order: each bar spans from the moment before to this one."""
    if not events:
        return None
    ordered = sorted(events, key=lambda e: e.at_s)
    rows: list[Row] = []
    previous = 0.0
    for event in ordered:
        rows.append(
            (event.event, previous, event.at_s - previous, None, f"{event.event} at {event.at_s:.3f} s")
        )
        previous = event.at_s
    chart = _chart("the run: each moment, since the command started", rows, ordered[-1].at_s)
    bars = [replace(bar, value=f"at {seconds(e.at_s)}") for bar, e in zip(chart.bars, ordered, strict=True)]
    return replace(chart, bars=bars)


def demos(records: Sequence[DemoRecord]) -> Chart | None:
    """Each demo's latency from its start, the time to its first token drawn inside."""
    if not records:
        return None
    total = max((d.started_s or 0.0) + d.latency_s for d in records)
    rows: list[Row] = [
        (
            d.name,
            d.started_s or 0.0,
            d.latency_s,
            d.ttft_s,
            f"{d.name}: latency {d.latency_s:.3f} s"
            + (f", TTFT {d.ttft_s:.3f} s" if d.ttft_s is not None else ""),
        )
        for d in records
    ]
    chart = _chart("demo requests: latency (TTFT darker)", rows, total)
    failed = {d.name for d in records if d.status != "passed"}
    bars = [replace(bar, color="#e15759" if bar.label in failed else "#4e79a7") for bar in chart.bars]
    return replace(chart, bars=bars)
