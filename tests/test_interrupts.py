"""Interrupts say what happened: a stop while waiting for readiness and one during the demos both end as
`interrupted by SIGINT`, and the requests in flight are counted (status `interrupted`), not lost.

A loopback server that holds every chat request until released stands in for a busy vLLM; the stop is
requested once all requests have arrived (events, no sleeps)."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.cli import terminal
from orchestrator.core.chattypes import ChatType
from orchestrator.core.errors import Interrupted
from orchestrator.core.options import Options
from orchestrator.demos.chat import DemoRequest, run_demos
from orchestrator.profile.schema import Demo
from orchestrator.record.report import MachineRecord, RunRecord
from orchestrator.session.context import Endpoint, Session, Stop
from orchestrator.session.run import run_session
from orchestrator.session.targets import Prepared, Reach, Remote


class HeldServer:
    """Chat requests wait here until `release`; `arrived` is set once `expected` of them are in."""

    def __init__(self, expected: int) -> None:
        self.expected, self.count = expected, 0
        self.arrived, self.release = threading.Event(), threading.Event()
        lock, held = threading.Lock(), self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    held.count += 1
                    if held.count >= held.expected:
                        held.arrived.set()
                held.release.wait(30)
                body = json.dumps({"error": {"message": "released"}}).encode()
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> HeldServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def text_request(name: str) -> DemoRequest:
    return DemoRequest(
        name=name,
        chat_type="text-only",
        delivery="text",
        messages=[{"role": "user", "content": "What's the capital of France?"}],
        max_completion_tokens=8,
    )


def test_requests_in_flight_come_back_interrupted() -> None:
    with HeldServer(expected=3) as server:
        results = run_demos(
            [text_request(f"r{i}") for i in range(3)],
            base_url=server.base_url,
            api_key="k",
            model="m",
            concurrency=None,
            timeout_s=30,
            cancelled=server.arrived.is_set,
        )
    assert [r.status for r in results] == ["interrupted"] * 3
    assert all(not r.passed and r.answer == "" for r in results)
    assert all((r.error or "").startswith("in flight when the run was interrupted") for r in results)


def test_requests_not_sent_yet_do_not_come_back() -> None:
    with HeldServer(expected=1) as server:  # one at a time: one in flight, two waiting
        results = run_demos(
            [text_request(f"r{i}") for i in range(3)],
            base_url=server.base_url,
            api_key="k",
            model="m",
            concurrency=1,
            timeout_s=30,
            cancelled=server.arrived.is_set,
        )
    assert [(r.name, r.status) for r in results] == [("r0", "interrupted")]


class Target:
    """A target that is ready at once (demos to `base_url`), or whose readiness wait sees the stop."""

    def __init__(self, base_url: str, *, stop_while_waiting: bool = False) -> None:
        self.base_url, self.stop_while_waiting = base_url, stop_while_waiting

    def prepare(self, started_at: str) -> Prepared[str]:
        record = RunRecord(
            mmdemo_version="0",
            profile="held",
            variant="cpu",
            model="m",
            served_model_name="m",
            machine=MachineRecord(cpu="c", cores=1, python="3", platform="p", accelerator="CPU only"),
            started_at=started_at,
        )
        return Prepared(record, (Demo(chat_type=ChatType.TEXT),), Reach(loopback=True, files=False), "spec")

    def plan(self, session: Session, spec: str, media_root: Path | None) -> str:
        return spec

    def check(self, session: Session, plan: str) -> str:
        return plan

    def prepare_model(self, session: Session, plan: str) -> str:
        return plan

    def prefetch(self, session: Session, plan: str) -> str:
        return plan

    def counter(self, session: Session, plan: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext(None)

    def budget(
        self, session: Session, plan: str, counter: object, requests: Callable[[], Sequence[DemoRequest]]
    ) -> dict[str, int | None]:
        return {}

    @contextlib.contextmanager
    def launch(self, session: Session, plan: str) -> Iterator[Remote]:
        yield Remote(self.base_url, "k", "m")

    def ready(self, session: Session, running: Remote) -> Endpoint:
        if self.stop_while_waiting:  # what Server.wait_ready does when its `cancelled` turns true
            session.stop.request("SIGINT")
            raise Interrupted("stop")
        return Endpoint(running.base_url, running.api_key, running.model)


@pytest.fixture
def options(tmp_path: Path) -> Options:
    return Options(runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache", offline=True, worst_case=False)


def test_ctrl_c_while_waiting_for_readiness_names_the_signal(options: Options) -> None:
    outcome = run_session(Target("http://127.0.0.1:9/v1", stop_while_waiting=True), options)
    assert str(outcome.error) == "interrupted by SIGINT"
    assert outcome.exit_code == 130
    report = json.loads((outcome.run_dir / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert report["error"]["message"] == "interrupted by SIGINT"


def test_ctrl_c_during_the_demos_counts_the_requests_in_flight(
    options: Options, capsys: pytest.CaptureFixture[str]
) -> None:
    with HeldServer(expected=1) as server:

        def interrupt() -> None:  # Ctrl-C once the request is in flight
            if server.arrived.wait(30):
                stop.request("SIGINT")

        stop = Stop()
        ctrl_c = threading.Thread(target=interrupt)
        ctrl_c.start()
        outcome = run_session(Target(server.base_url), options, stop=stop)
        ctrl_c.join()
    assert str(outcome.error) == "interrupted by SIGINT"
    summary = outcome.record.summary
    assert (summary.total, summary.passed, summary.failed, summary.interrupted) == (1, 0, 0, 1)
    assert outcome.record.demos[0].status == "interrupted"
    report = json.loads((outcome.run_dir / "report.json").read_text())
    assert report["summary"]["interrupted"] == 1
    shown = io.StringIO()
    terminal.finish(Console(file=shown, width=200), outcome)
    assert "INTERRUPTED 0/1 requests (1 demos), 1 in flight when interrupted" in shown.getvalue()
    assert "error: interrupted by SIGINT" in capsys.readouterr().err
