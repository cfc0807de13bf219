"""Deadline logic of the readiness loop, with a fake clock: no real time passes."""

from __future__ import annotations

import pytest

from orchestrator.launch.server import Exited, Probe, Timeout, seconds, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_ready_before_the_deadline_returns_the_instant_it_answered() -> None:
    clock = FakeClock()
    answers = iter([Probe.REFUSED, Probe.REFUSED, Probe.NOT_READY, Probe.READY])

    def probe(remaining: float) -> Probe:
        clock.now += 0.001
        return next(answers)

    ready_at = wait_until(probe, lambda: None, timeout_s=10, clock=clock, sleep=clock.sleep, poll_s=0.02)
    assert ready_at == pytest.approx(100.0 + 3 * 0.02 + 4 * 0.001)


def test_an_answer_after_the_deadline_does_not_count() -> None:
    clock = FakeClock()

    def slow_probe(remaining: float) -> Probe:
        clock.now += remaining + 0.5  # the probe itself outlives the deadline
        return Probe.READY

    with pytest.raises(Timeout):
        wait_until(slow_probe, lambda: None, timeout_s=5, clock=clock, sleep=clock.sleep)


def test_never_ready_times_out_at_the_deadline() -> None:
    clock = FakeClock()
    calls = []

    def probe(remaining: float) -> Probe:
        calls.append(remaining)
        return Probe.REFUSED

    with pytest.raises(Timeout):
        wait_until(probe, lambda: None, timeout_s=1.0, clock=clock, sleep=clock.sleep, poll_s=0.125)
    assert clock.now == 101.0
    assert len(calls) == 8
    assert calls[0] == pytest.approx(1.0)  # each probe is bounded by what is left


def test_exit_code_zero_before_ready_is_a_failure() -> None:
    clock = FakeClock()
    codes = iter([None, None, 0])
    with pytest.raises(Exited) as info:
        wait_until(lambda r: Probe.REFUSED, lambda: next(codes), timeout_s=10, clock=clock, sleep=clock.sleep)
    assert info.value.returncode == 0


def test_died_right_after_answering_is_not_ready() -> None:
    clock = FakeClock()
    codes = iter([None, 1])
    with pytest.raises(Exited):
        wait_until(lambda r: Probe.READY, lambda: next(codes), timeout_s=10, clock=clock, sleep=clock.sleep)


def test_ticks_report_elapsed_time() -> None:
    clock = FakeClock()
    answers = iter([Probe.REFUSED, Probe.REFUSED, Probe.READY])
    ticks: list[float] = []
    wait_until(
        lambda r: next(answers),
        lambda: None,
        timeout_s=10,
        clock=clock,
        sleep=clock.sleep,
        poll_s=0.5,
        on_tick=ticks.append,
    )
    assert ticks == [0.0, 0.5]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0.5, "0.5 s"),
        (0.04, "0.04 s"),
        (1.0, "1 s"),
        (2.25, "2.2 s"),
        (9.94, "9.9 s"),
        (10.0, "10 s"),
        (600, "600 s"),
    ],
)
def test_deadlines_are_shown_truthfully(value: float, shown: str) -> None:
    assert seconds(value) == shown
