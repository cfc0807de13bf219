"""A session: the run, on one screen. `run`, `attach` (`demo`), `serve` and each matrix cell go through it.

`run_session` lists every step in order; each takes what the one before returned (targets.py has
the launch steps, one method each). The steps the next capabilities plug into:

    prepare        resolve the profile (a profile file; a model's derived profile goes here)
    preflight      refusals before anything starts
    plan           the exact `vllm serve` command line
    counter        vLLM's renderer starts importing (~10 s, hidden behind the next two steps)
    prepare_model  prefetch
    budget         each demo's tokens counted by that renderer: a demo that cannot fit refuses the run
    launch (a container launcher goes here)  ready  demos  record  teardown

A report is written whenever a run directory exists. Signals never raise inside arbitrary code:
they set `Stop`, which every wait polls; a second signal hurries teardown.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import render
from orchestrator.core.background import background
from orchestrator.core.errors import DemoFailed, InternalError, Interrupted, MMDemoError, ServerError
from orchestrator.core.options import DEFAULT_MAX_TOKENS, Options
from orchestrator.core.paths import assets_dir
from orchestrator.demos.chat import (
    DEFAULT_ASSETS,
    DemoRequest,
    DemoResult,
    Media,
    build_requests,
    plain_http_client,
    repeats,
    run_demos,
    to_record,
    worst_case,
)
from orchestrator.launch.command import Redactor
from orchestrator.media import Asset, AssetServer, AssetStore
from orchestrator.profile.schema import Demo
from orchestrator.record.report import DemoRecord, ErrorRecord, RunRecord, Status, TimelineEvent
from orchestrator.record.rundir import make_run_dir, now_iso
from orchestrator.session.context import Endpoint, Events, QuietEvents, Session, Stop, signals_to
from orchestrator.session.targets import C, P, Prepared, R, Reach, S, Target
from orchestrator.vllm.logscan import explain_demo

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a session produced: the record as written, where, and the exit code."""

    record: RunRecord
    run_dir: Path
    exit_code: int
    error: MMDemoError | None = None


Serve = Callable[[Endpoint, Session], None]


def run_session(
    target: Target[S, C, P, R],
    options: Options,
    events: Events | None = None,
    *,
    stop: Stop | None = None,
    serve: Serve | None = None,
    t0: float | None = None,
) -> Outcome:
    """The run: demos against the target's endpoint (or `serve` until stopped); always a record."""
    events, stop = events or QuietEvents(), stop or Stop()
    with signals_to(stop):
        prepared = target.prepare(now_iso())  # refusals here leave no run directory behind
        session = open_session(prepared, options, events, stop, time.monotonic() if t0 is None else t0)
        redact, error = Redactor(), None
        try:
            with contextlib.ExitStack() as teardown:  # leaving it tears the server down, whatever happened
                # `serve` sends no demos, but the budget counts them: the example client's chat types
                demos = serve is None or options.budget
                media = teardown.enter_context(start_media(session, prepared, options, demos))
                checked = target.preflight(session, prepared.spec)
                plan = target.plan(session, checked, media.root)
                counter = teardown.enter_context(target.counter(session, plan))  # vLLM's renderer, importing
                plan = target.prepare_model(session, plan)
                plan = target.prefetch(session, plan)
                plan = target.budget(
                    session, plan, counter, lambda: demo_requests(media, options, prepared.limits)
                )
                running = teardown.enter_context(target.launch(session, plan))
                redact = running.redact
                endpoint = target.ready(session, running)
                gc.enable()  # start-up is over (cli.main turned the collector off for its imports)
                if serve is not None:
                    serve(endpoint, session)
                else:
                    send_demos(session, endpoint, media.requests(), options, prepared.limits)
        except MMDemoError as exc:
            error = exc
        except Exception as exc:  # a bug: teardown has run, and the record is still written
            log.debug("unexpected error", exc_info=True)
            error = InternalError(exc)
        if stop.received and not isinstance(error, Interrupted):
            error = Interrupted(stop.received[0])
        return close_record(session, error, redact)  # still under the handlers: a signal cannot cut it short


def open_session(prepared: Prepared[Any], options: Options, events: Events, stop: Stop, t0: float) -> Session:
    """The run directory and the record's first moment."""
    record = prepared.record
    run_dir = options.run_dir or make_run_dir(options.runs_dir, record.profile)
    if record.profile_source and record.profile_source != f"profile {record.profile}":
        events.stage("profile", record.profile_source)  # a model's own profile, or a derived one: why
    events.stage("profile", f"{record.profile} on {record.variant}; run directory {run_dir}")
    record.timeline.append(TimelineEvent(event="command start", at_s=0.0))
    return Session(record, run_dir, events, stop, t0)


def send_demos(
    session: Session,
    endpoint: Endpoint,
    requests: list[DemoRequest],
    options: Options,
    limits: Mapping[str, int] | None,
) -> None:
    """The demos, then each media demo once more, then the worst case; the server must survive each."""
    rounds = [("during the demos", requests), ("during the repeats", repeats(requests))]
    worst = worst_case(requests, limits) if options.worst_case else None
    if worst is not None:
        rounds.append((WORST_CASE_DEATH, [worst]))
    counted = {d.name: d.prompt_tokens for d in session.record.budget.demos} if session.record.budget else {}
    then = f", {len(rounds[1][1])} repeats" + (", the worst case" if worst else "")
    session.events.stage("demos", f"{len(requests)} requests to {endpoint.model}{then}")
    started = time.monotonic()
    for when, batch in rounds:
        if not batch:
            continue
        mark = endpoint.log_mark()
        results = run_demos(
            batch,
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            model=endpoint.model,
            concurrency=options.concurrency,
            timeout_s=options.request_timeout_s,
            on_result=session.events.demo_done,
            cancelled=session.stop.is_set,
        )
        session.stop.check()
        firsts = {d.name: d for d in session.record.demos if d.kind == "demo"}
        session.record.demos += [
            explained(r, started, firsts, endpoint, mark, counted=counted) for r in results
        ]
        session.record.demos_wall_s = round(time.monotonic() - started, 3)
        endpoint.check(when)  # a dead server fails the run with its own evidence
    session.mark("demos done")


# The worst case is where a clean start's memory budget (encoder cache, KV cache) gives out.
WORST_CASE_DEATH = (
    "on the worst-case request (every medium limit_mm_per_prompt allows, at once: lower those limits "
    "or max_model_len, or raise gpu_memory_utilization)"
)
REPEAT_FAILED = (
    "the repeat failed where the first request passed: vLLM's multimodal processor cache served it "
    "(a known source of second-request failures); serve.extra_args [--disable-mm-preprocessor-cache] "
    "works around it"
)


def demo_requests(media: MediaStep, options: Options, limits: Mapping[str, int] | None) -> list[DemoRequest]:
    """The requests a run sends, each once: the demos and, unless skipped, the worst case (the repeats
    are the demos again); none in serve mode."""
    if media.future is None:
        return []
    requests = media.requests()
    worst = worst_case(requests, limits) if options.worst_case else None
    return requests + ([worst] if worst is not None else [])


def explained(
    result: DemoResult,
    started: float,
    firsts: Mapping[str, DemoRecord],
    endpoint: Endpoint,
    mark: int,
    *,
    counted: Mapping[str, int | None] | None = None,
) -> DemoRecord:
    """A result as the record keeps it (with its tokens as counted before launch), a failure with what
    it means; a hang with the server's log."""
    record = to_record(result, started)
    record.prompt_tokens_counted = (counted or {}).get(result.name.removesuffix(" (repeat)"))
    if result.passed:
        return record
    first = firsts.get(result.name.removesuffix(" (repeat)"))
    if result.kind == "repeat" and first is not None and first.status == "passed":
        record.diagnosis = REPEAT_FAILED
    else:
        record.diagnosis = explain_demo(
            result.error or "",
            completion_tokens=result.max_completion_tokens,
            modalities={a.kind for a in result.assets if a.kind},
        )
    if result.status == "hung":
        record.log_lines = endpoint.log_since(mark)
    return record


def close_record(session: Session, error: MMDemoError | None, redact: Redactor) -> Outcome:
    """The verdict (a failed demo when nothing worse happened), written redacted to the run directory."""
    record = session.record
    record.summary = record.summarize()
    if error is None and record.summary.failed:
        error = DemoFailed(record.summary.failed, record.summary.total)
    record.status = status_of(error)
    record.error = error_record(error) if error and not isinstance(error, DemoFailed) else None
    record.finished_at = now_iso()
    clean = RunRecord.model_validate(redact.data(record.model_dump()))
    render.write_all(session.run_dir, clean)
    return Outcome(clean, session.run_dir, error.exit_code if error else 0, error)


def error_record(error: MMDemoError) -> ErrorRecord:
    """The error as report.json keeps it, with the server's evidence when there is some."""
    record = ErrorRecord(type=type(error).__name__, message=str(error), hint=error.hint)
    if isinstance(error, ServerError):
        record.returncode = error.returncode
        record.timeout_s = error.timeout_s
        record.diagnosis = error.diagnosis
        record.log_tail = list(error.log_tail)
    return record


def status_of(error: MMDemoError | None) -> Status:
    if error is None:
        return "passed"
    if isinstance(error, Interrupted):
        return "interrupted"
    if isinstance(error, DemoFailed):
        return "failed"
    return "error"


# -- media, prepared while the server starts -------------------------------------------------------


class MediaStep:
    """The demo requests and their media, built in the background while vLLM loads."""

    def __init__(
        self, session: Session, future: Future[list[DemoRequest]] | None, reach: Reach, root: Path | None
    ) -> None:
        self.session = session
        self.future = future
        self.reach = reach
        self.root = root  # the directory file:// media come from, for --allowed-local-media-path
        self._chosen: list[DemoRequest] | None = None  # the budget step asks first, the demos after

    def requests(self) -> list[DemoRequest]:
        """The requests, once their media are ready; those the server cannot reach are left out."""
        assert self.future is not None, "no media in serve mode"
        if self._chosen is None:
            self._chosen = self._choose()
        return list(self._chosen)

    def _choose(self) -> list[DemoRequest]:
        assert self.future is not None
        built = self.session.wait(self.future)
        skipped = [r.name for r in built if not self._reachable(r)]
        if skipped:
            self.session.record.notes.append(
                f"Skipped {', '.join(skipped)}: the attached server cannot reach mmdemo's files."
            )
        chosen = [r for r in built if r.name not in skipped]
        self.session.events.stage("assets", provenance_summary(chosen))
        return chosen

    def _reachable(self, request: DemoRequest) -> bool:
        if request.delivery == "file":  # needs --allowed-local-media-path on our cache
            return self.reach.files
        if request.delivery == "url" and not self.reach.loopback:
            return all(a.source_url for a in request.assets)
        return True


@contextlib.contextmanager
def start_media(
    session: Session, prepared: Prepared[Any], options: Options, enabled: bool
) -> Iterator[MediaStep]:
    """Start building the requests (downloads included); the asset server serves media until the end."""
    if not enabled:  # `serve --no-budget`: no demo is sent or counted
        yield MediaStep(session, None, prepared.reach, None)
        return
    store = AssetStore(
        options.cache_dir or assets_dir(),
        offline=options.offline,
        on_progress=session.events.download,
        mirror=options.environment.asset_mirror,
        budget_s=options.media_budget_s,
    )
    demos = prepared.demos
    if not prepared.check_expectations:  # random weights: an answer is all there is to expect
        demos = tuple(d.model_copy(update={"expect": ()}) for d in demos)
    with AssetServer(store.root) as assets:
        # A server on this machine fetches URL media from our loopback asset server; a remote one (another
        # host, a container behind docker's bridge) cannot reach it, so it gets the upstream URLs, where
        # there are any.
        reach = prepared.reach

        def url(asset: Asset) -> str:
            if reach.loopback:  # by the address the server knows our loopback by (a container's own)
                return assets.url_for(asset, host=reach.loopback_host)
            return asset.source_url or assets.url_for(asset)

        future = background(_warm_then_build, demos, Media(store=store, url=url), name="media")
        future.add_done_callback(
            lambda done: None if done.cancelled() or done.exception() else session.mark("media ready")
        )
        try:
            yield MediaStep(session, future, prepared.reach, store.root if prepared.reach.files else None)
        finally:
            future.cancel()
            session.record.asset_server_requests = assets.requests_served


def _warm_then_build(demos: Sequence[Demo], media: Media) -> list[DemoRequest]:
    """Import the openai SDK and its HTTP transport (~0.6 s on 2 slow cores) while vLLM starts, fetch the
    media in parallel, build the requests."""
    with contextlib.suppress(Exception):
        plain_http_client().close()  # the SDK, and its transport's modules that load on first use
    media.store.prefetch(key for d in demos if not d.media for key in DEFAULT_ASSETS[d.chat_type])
    return build_requests(demos, media, DEFAULT_MAX_TOKENS)


def provenance_summary(requests: Sequence[DemoRequest]) -> str:
    """'6 media: 4 cached, 2 synthetic' for the terminal."""
    seen = {a.key: a.provenance for r in requests for a in r.assets}
    counts: dict[str, int] = {}
    for provenance in seen.values():
        counts[provenance] = counts.get(provenance, 0) + 1
    detail = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    return f"{len(seen)} media: {detail}" if seen else "no media"
