"""Chart geometry for report.html: bars proportional to the seconds, whatever the record holds."""

from __future__ import annotations

import pytest

from orchestrator.record.report import DemoRecord, PhaseSpan, TimelineEvent
from orchestrator.render import charts


def test_startup_bars_are_proportional_and_never_negative() -> None:
    chart = charts.startup(
        [
            PhaseSpan(phase="launching", start_s=0.0, end_s=2.0),
            PhaseSpan(phase="loading weights", start_s=2.0, end_s=8.0),
            PhaseSpan(phase="starting", start_s=8.0, end_s=0.0),  # cut short by a crash
        ]
    )
    assert chart is not None
    first, second, third = chart.bars
    assert second.width == pytest.approx(3 * first.width)
    assert second.x == pytest.approx(first.x + first.width)
    assert first.x + first.width + second.width == pytest.approx(chart.plot_x + chart.plot_w)
    assert third.value == "0 ms"
    assert third.width == 1.0  # a moment stays visible


def test_timeline_bars_run_from_the_moment_before() -> None:
    events = [
        TimelineEvent(event="server ready", at_s=20.0),
        TimelineEvent(event="command start", at_s=0.0),
        TimelineEvent(event="launch", at_s=5.0),
        TimelineEvent(event="launch", at_s=10.0),  # names may repeat
    ]
    chart = charts.timeline(events)
    assert chart is not None
    assert [b.label for b in chart.bars] == ["command start", "launch", "launch", "server ready"]
    assert [b.value for b in chart.bars] == ["at 0 ms", "at 5.00 s", "at 10.00 s", "at 20.00 s"]
    scale = chart.plot_w / 20.0
    assert [round((b.x - chart.plot_x) / scale, 6) for b in chart.bars] == [0.0, 0.0, 5.0, 10.0]


def test_demo_bars_hold_ttft_and_mark_failures() -> None:
    demo = DemoRecord(
        name="audio/url", chat_type="audio", delivery="url", status="passed", latency_s=2.0, ttft_s=0.5,
        answer="x", started_s=0.0,
    )  # fmt: skip
    failed = demo.model_copy(update={"name": "video/url", "status": "failed", "ttft_s": None})
    chart = charts.demos([demo, failed])
    assert chart is not None
    ok, bad = chart.bars
    assert ok.inner_width == pytest.approx(ok.width / 4)
    assert bad.inner_width is None
    assert ok.color != bad.color


@pytest.mark.parametrize(
    ("value", "text"), [(0.0123, "12 ms"), (3.4, "3.40 s"), (125.0, "2 min 05 s"), (0.0, "0 ms")]
)
def test_seconds_reads_naturally(value: float, text: str) -> None:
    assert charts.seconds(value) == text


def test_empty_record_has_no_chart() -> None:
    assert charts.startup([]) is None
    assert charts.timeline([]) is None
    assert charts.demos([]) is None
