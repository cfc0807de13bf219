"""The session in-process, over a fake target: a record whenever a run directory exists, stops, serve."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.core.options import Options
from orchestrator.demos.chat import DemoRequest
from orchestrator.record.report import MachineRecord, RunRecord
from orchestrator.session.context import Endpoint, Session, Stop
from orchestrator.session.run import run_session
from orchestrator.session.targets import Prepared, Reach, Remote


@dataclasses.dataclass(frozen=True)
class Started(Remote):
    """The fake's running server: hurrying its teardown is counted by the target."""

    target: FakeTarget | None = None

    def hurry(self) -> None:
        if self.target is not None:
            self.target.hurry()


class FakeTarget:
    """A target whose launch does what the test says, and records the steps it went through."""

    def __init__(
        self,
        *,
        refuse: bool = False,
        fail: Exception | None = None,
        stop_inside: bool = False,
        refuse_count: bool = False,
    ) -> None:
        self.refuse, self.fail, self.stop_inside = refuse, fail, stop_inside
        self.refuse_count = refuse_count
        self.ready_entered = threading.Event()
        self.left = False
        self.hurried = 0
        self.steps: list[str] = []

    def prepare(self, started_at: str) -> Prepared[str]:
        if self.refuse:
            raise UsageError("no such profile")
        record = RunRecord(
            mmdemo_version="0",
            profile="fake",
            variant="cpu",
            model="m",
            served_model_name="m",
            machine=MachineRecord(cpu="c", cores=1, python="3", platform="p", accelerator="CPU only"),
            started_at=started_at,
        )
        return Prepared(record, (), Reach(loopback=True, files=True), "spec")

    def plan(self, session: Session, spec: str, media_root: Path | None) -> str:
        self.steps.append(f"plan {spec} {'with' if media_root else 'without'} media root")
        return "plan"

    def check(self, session: Session, plan: str) -> str:
        self.steps.append(f"check {plan}")
        return "checked"

    def prepare_model(self, session: Session, plan: str) -> str:
        self.steps.append(f"model {plan}")
        return plan

    def prefetch(self, session: Session, plan: str) -> str:
        self.steps.append(f"prefetch {plan}")
        return plan

    def counter(self, session: Session, plan: str) -> contextlib.AbstractContextManager[None]:
        self.steps.append(f"counter {plan}")
        return contextlib.nullcontext(None)

    def budget(
        self, session: Session, plan: str, counter: object, requests: Callable[[], Sequence[DemoRequest]]
    ) -> dict[str, int | None]:
        self.steps.append(f"budget {plan} of {len(requests())} requests")
        if self.refuse_count:
            self.ready_entered.wait(30)  # readiness is being waited for when the refusal comes
            raise PreflightError("single-image/image_url needs 300 tokens but max_model_len is 128")
        return {}

    @contextlib.contextmanager
    def launch(self, session: Session, plan: str) -> Iterator[Remote]:
        self.steps.append(f"launch {plan}")
        session.stop.on_hurry(self.hurry)
        try:
            session.mark("launch")
            if self.fail is not None:
                raise self.fail
            if self.stop_inside:
                session.stop.request("SIGTERM")
                session.stop.request("SIGINT")  # a second one hurries teardown
                session.stop.check()
            yield Started("http://127.0.0.1:9/v1", "k", "m", self)
        finally:
            self.left = True
            session.mark("teardown done")

    def ready(self, session: Session, running: Remote) -> Endpoint:
        self.steps.append("ready")
        if self.refuse_count:  # a server still loading when the count refuses: the wait must end
            while not session.stop.is_set():
                self.ready_entered.set()
                session.stop.sleep(0.05)  # raises Interrupted once this run's waits are halted
            self.steps.append("never here")
        return Endpoint(running.base_url, running.api_key, running.model)

    def hurry(self) -> None:
        self.hurried += 1


@pytest.fixture
def options(tmp_path: Path) -> Options:
    return Options(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache", offline=True)


def report_of(outcome_dir: Path) -> dict:
    return json.loads((outcome_dir / "report.json").read_text())


def test_a_refused_prepare_leaves_no_run_directory(options: Options) -> None:
    with pytest.raises(UsageError):
        run_session(FakeTarget(refuse=True), options)
    assert not options.runs_dir.exists()


def test_a_failure_inside_the_target_is_recorded_and_the_target_left(options: Options) -> None:
    target = FakeTarget(fail=PreflightError("port 8000 is taken"))
    outcome = run_session(target, options)
    assert target.left
    assert outcome.exit_code == 3
    report = report_of(outcome.run_dir)
    assert report["status"] == "error"
    assert report["error"]["message"] == "port 8000 is taken"
    events = [e["event"] for e in report["timeline"] if e["event"] != "media ready"]  # that one races
    assert events == ["command start", "launch", "teardown done"]
    assert (outcome.run_dir / "junit.xml").exists()


def test_a_bug_is_an_internal_error_with_a_record(options: Options) -> None:
    outcome = run_session(FakeTarget(fail=KeyError("oops")), options)
    assert outcome.exit_code == 4
    assert report_of(outcome.run_dir)["error"]["type"] == "InternalError"


def test_a_stop_interrupts_tears_down_and_a_second_one_hurries(options: Options) -> None:
    target = FakeTarget(stop_inside=True)
    outcome = run_session(target, options)
    assert target.left
    assert target.hurried == 1
    assert outcome.exit_code == 130
    assert report_of(outcome.run_dir)["status"] == "interrupted"
    assert str(outcome.error) == "interrupted by SIGTERM"


def test_serve_waits_until_stopped(options: Options) -> None:
    stop = Stop()
    seen: list[str] = []

    def serve(endpoint: Endpoint, session: Session) -> None:
        seen.append(endpoint.base_url)
        stop.request("SIGINT")
        session.stop.sleep(5)  # raises at once: the stop is set

    outcome = run_session(FakeTarget(), options, stop=stop, serve=serve)
    assert seen == ["http://127.0.0.1:9/v1"]
    assert outcome.exit_code == 130
    assert report_of(outcome.run_dir)["status"] == "interrupted"


def test_each_step_takes_what_the_one_before_returned(options: Options) -> None:
    target = FakeTarget()
    run_session(target, options)
    assert (
        target.steps
        == [
            "plan spec with media root",
            "check plan",  # no counter: a run with no chat demo starts no renderer
            "model checked",
            "prefetch checked",
            "launch checked",
            *target.steps[-2:],
        ]
    )
    # beside the start, at once: media and the count never hold vLLM back, nor eat its ready timeout
    assert sorted(target.steps[-2:]) == ["budget checked of 0 requests", "ready"]


def test_count_first_counts_before_the_start(options: Options) -> None:
    target = FakeTarget()
    run_session(target, dataclasses.replace(options, count_first=True))
    assert target.steps.index("budget checked of 0 requests") < target.steps.index("launch checked")


def test_a_count_that_refuses_ends_the_start_at_once_and_sends_no_demo(options: Options) -> None:
    target = FakeTarget(refuse_count=True)
    outcome = run_session(target, options)
    assert outcome.exit_code == 3
    assert target.left  # torn down
    assert "ready" in target.steps  # it was waiting for the server when the refusal came,
    assert "never here" not in target.steps  # and its wait was cut short: no endpoint, no demo
    assert target.hurried == 1  # no grace: the server that was starting serves nothing
    report = report_of(outcome.run_dir)
    assert report["status"] == "error"
    assert "max_model_len is 128" in report["error"]["message"]
    assert report["demos"] == []


def test_no_demos_is_a_pass_with_a_complete_record(options: Options) -> None:
    outcome = run_session(FakeTarget(), options)
    assert outcome.exit_code == 0
    report = report_of(outcome.run_dir)
    assert report["summary"] == {
        "total": 0,
        "passed": 0,
        "failed": 0,
        "understood": 0,
        "hung": 0,
        "interrupted": 0,
    }
    assert report["finished_at"]


def test_report_diff_says_absent_not_same_for_a_demo_one_run_lacks(tmp_path: Path) -> None:
    from orchestrator.record.report import diff, load

    a = {"schema_version": 1, "profile": "p", "status": "passed", "demos": [
        {"name": "text-only/text", "status": "passed", "answer": "Paris", "latency_s": 0.2},
        {"name": "audio/url", "status": "passed", "answer": "a call", "latency_s": 0.4},
    ]}  # fmt: skip
    b = {**a, "demos": [{"name": "text-only/text", "status": "passed", "answer": "Paris!", "latency_s": 0.4}]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    rows = {r["name"]: r for r in diff(load(tmp_path / "a.json"), load(tmp_path / "b.json"))}
    assert rows["text-only/text"]["answer"] == "changed"
    assert rows["text-only/text"]["latency_ratio"] == pytest.approx(2.0)
    assert (rows["audio/url"]["status_b"], rows["audio/url"]["answer"]) == ("absent", "–")


def test_report_files_are_readable_by_others_as_the_umask_allows(options: Options) -> None:
    import os
    import stat

    outcome = run_session(FakeTarget(), options)
    mask = os.umask(0)
    os.umask(mask)
    for name in ("report.json", "report.md", "junit.xml", "report.html"):
        mode = stat.S_IMODE((outcome.run_dir / name).stat().st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


def test_start_up_over_freezes_what_the_imports_made_only_under_the_clis_start_up() -> None:
    import gc

    from orchestrator.session.run import start_up_over

    assert gc.isenabled()
    start_up_over()  # in-process, the collector is on: nothing frozen
    assert gc.get_freeze_count() == 0
    gc.disable()  # as cli.main does for its imports
    try:
        start_up_over()
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()
    assert gc.get_freeze_count() == 0
