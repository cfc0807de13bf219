"""A session: the run, on one screen. `run`, `attach` (`demo`), `serve` and each matrix cell go through it.

`run_session` lists every step in order, each taking what the one before returned; read the order
there, not in a copy. A report is written whenever a run directory exists. Signals never raise inside
arbitrary code: they set `Stop`, which every wait polls; a second signal hurries teardown.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator import render
from orchestrator.core.background import background
from orchestrator.core.errors import (
    DemoFailed,
    InternalError,
    Interrupted,
    MMDemoError,
    PreflightError,
    ServerError,
)
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
    worst_case,
)
from orchestrator.demos.taskcore import TaskRequest
from orchestrator.demos.tasks import build_task_requests, run_all, to_record
from orchestrator.launch.command import Redactor
from orchestrator.media import Asset, AssetServer, AssetStore
from orchestrator.media import known as known_media
from orchestrator.profile.schema import Demo, TaskDemo
from orchestrator.record.report import DemoRecord, ErrorRecord, RunRecord, Status, TimelineEvent
from orchestrator.record.rundir import make_run_dir, now_iso
from orchestrator.session.context import (
    POLL_S,
    Endpoint,
    Events,
    Halting,
    QuietEvents,
    Session,
    Stop,
    signals_to,
)
from orchestrator.session.targets import P, Prepared, R, Reach, S, Target
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
    target: Target[S, P, R],
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
                plan = target.plan(session, prepared.spec, media.root)
                plan = target.check(session, plan)  # every refusal before the start, in one list
                # vLLM's renderer, importing meanwhile; only chat demos are counted (none: no renderer)
                counted_demos = (
                    target.counter(session, plan) if prepared.demos else contextlib.nullcontext(None)
                )
                counter = teardown.enter_context(counted_demos)
                plan = target.prepare_model(session, plan)
                plan = target.prefetch(session, plan)

                def budget(
                    at: Session,
                ) -> Mapping[str, int | None]:  # each demo's tokens: one too many refuses
                    return target.budget(
                        at, plan, counter, lambda: demo_requests(media, options, prepared.limits)
                    )

                counted = budget(session) if options.count_first else {}
                running = teardown.enter_context(target.launch(session, plan))
                # left first: the reports' renderer loads while the teardown waits for the server's exit
                teardown.callback(background, render.warm, name="reports")
                redact = running.redact
                if options.count_first:
                    endpoint = target.ready(session, running)
                else:  # counted while vLLM loads: a refusal ends its start at once
                    endpoint, counted = ready_beside_the_count(
                        session, lambda at: target.ready(at, running), budget, running.hurry
                    )
                start_up_over()
                if serve is not None:
                    serve(endpoint, session)
                else:
                    send_demos(session, endpoint, media.requests(), options, prepared.limits, counted=counted)
        except MMDemoError as exc:
            error = exc
        except Exception as exc:  # a bug: teardown has run, and the record is still written
            log.debug("unexpected error", exc_info=True)
            error = InternalError(exc)
        if stop.received and not (isinstance(error, Interrupted) and error.signame == stop.received[0]):
            error = Interrupted(stop.received[0])  # the signal's name, wherever the stop was noticed
        return close_record(session, error, redact)  # still under the handlers: a signal cannot cut it short


def ready_beside_the_count(
    session: Session,
    ready: Callable[[Session], Endpoint],
    count: Callable[[Session], Mapping[str, int | None]],
    hurry: Callable[[], None],
) -> tuple[Endpoint, Mapping[str, int | None]]:
    """Wait for readiness and the budget's count at once (neither's wait eats the other's deadline).
    Both are needed before the demos. The first failure wins, the count's refusal before a readiness
    failure seen in the same moment; the other side is then halted (this run's waits only) and awaited,
    so nothing of it writes after the run ends. A refusal ends the starting server without grace."""
    pair = dataclasses.replace(session, stop=Halting(session.stop))
    counting = background(count, pair, name="budget")
    readying = background(ready, pair, name="ready")
    pending: set[Future[Any]] = {counting, readying}
    halting = pair.stop
    assert isinstance(halting, Halting)
    try:
        while pending:
            done, pending = futures.wait(pending, timeout=POLL_S, return_when=futures.FIRST_COMPLETED)
            session.stop.check()
            failed = [f for f in (counting, readying) if f in done and f.exception() is not None]
            if failed:
                error = failed[0].exception()
                assert error is not None
                if failed[0] is counting and isinstance(error, PreflightError):
                    hurry()
                raise error
    finally:  # a failure or a signal: the other side's waits end at once, and it is awaited (its
        if pending:  # script, a container with --image, is ended by it before the run goes on)
            halting.halt()
            futures.wait(pending, timeout=HALT_WAIT_S)
    return readying.result(), counting.result()


def start_up_over() -> None:
    """Turn the collector back on where cli.main turned it off for the imports. What the imports made
    lives as long as the process: frozen first, the collector never walks it again (a first collection
    over the SDK's and pydantic's objects cost the demos ~50 ms); cli.main unfreezes it on return."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


HALT_WAIT_S = 30.0  # a halted wait polls every POLL_S; a script's group is ended within its grace


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
    *,
    counted: Mapping[str, int | None] | None = None,
) -> None:
    """The demos, then each media demo once more, then the worst case; the server must survive each.
    `counted`: each request's prompt tokens as the budget counted them, kept beside the server's."""
    rounds = [("during the demos", requests), ("during the repeats", repeats(requests))]
    worst = worst_case(chat_only(requests), limits) if options.worst_case else None
    if worst is not None:
        rounds.append((WORST_CASE_DEATH, [worst]))
    then = f", {len(rounds[1][1])} repeats" + (", the worst case" if worst else "")
    session.events.stage("demos", f"{len(requests)} requests to {endpoint.model}{then}")
    started = time.monotonic()
    for when, batch in rounds:
        if not batch:
            continue
        mark = endpoint.log_mark()
        results = run_all(  # chat demos through the chat runner, tasks past chat through theirs
            batch,
            base_url=endpoint.base_url,
            api_key=endpoint.api_key,
            model=endpoint.model,
            concurrency=options.concurrency,
            timeout_s=options.request_timeout_s,
            on_result=session.events.demo_done,
            cancelled=session.stop.is_set,
        )
        firsts = {d.name: d for d in session.record.demos if d.kind == "demo"}
        session.record.demos += [
            explained(r, started, firsts, endpoint, mark, counted=counted) for r in results
        ]
        session.record.demos_wall_s = round(time.monotonic() - started, 3)
        session.stop.check()  # after the record: the summary counts what finished and what was in flight
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
    requests = chat_only(media.requests())  # vLLM's renderer counts chat prompts, not a task's upload
    worst = worst_case(requests, limits) if options.worst_case else None
    return requests + ([worst] if worst is not None else [])


def chat_only(requests: Sequence[DemoRequest]) -> list[DemoRequest]:
    """The chat demos: the worst case and the budget are about chat prompts, not the tasks past chat."""
    return [r for r in requests if not isinstance(r, TaskRequest)]


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
    if result.passed or result.status == "interrupted":  # cut short by us: nothing to explain
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
        self,
        session: Session,
        future: Future[list[DemoRequest]] | None,
        reach: Reach,
        root: Path | None,
        seed: int = known_media.DEFAULT_SEED,
    ) -> None:
        self.session = session
        self.seed = seed
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
        why = {r.name: reason for r in built if (reason := self._unreachable(r))}
        for reason in dict.fromkeys(why.values()):  # one note per reason, naming its demos
            names = ", ".join(name for name, said in why.items() if said == reason)
            self.session.record.notes.append(f"Skipped {names}: {reason}.")
        chosen = [r for r in built if r.name not in why]
        self.session.events.stage("assets", provenance_summary(chosen))
        self.session.record.notes += media_notes(chosen, self.seed)
        return chosen

    def _unreachable(self, request: DemoRequest) -> str | None:
        """Why the server cannot fetch this request's media (a refusal, not a model failure), else None."""
        if request.delivery == "file":  # needs --allowed-local-media-path on our cache
            return None if self.reach.files else "the attached server cannot reach mmdemo's files"
        if request.delivery != "url":
            return None
        if not self.reach.loopback:
            if not all(a.source_url for a in request.assets):
                return "the attached server cannot reach mmdemo's files"
            urls = [a.source_url or "" for a in request.assets]
        else:
            urls = [f"http://{self.reach.loopback_host}/"]  # mmdemo's asset server
        return next((said for url in urls if (said := self.reach.refuses(url))), None)


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
    # random weights: an answer is all there is to expect
    unchecked = None if prepared.check_expectations else RANDOM_WEIGHTS_UNCHECKED
    with AssetServer(store.root) as assets:
        # A server on this machine fetches URL media from our loopback asset server; a remote one (another
        # host, a container behind docker's bridge) cannot reach it, so it gets the upstream URLs, where
        # there are any.
        reach = prepared.reach

        def url(asset: Asset) -> str:
            if reach.loopback:  # by the address the server knows our loopback by (a container's own)
                return assets.url_for(asset, host=reach.loopback_host)
            return asset.source_url or assets.url_for(asset)

        media = Media(
            store=store,
            url=url,
            choice=options.media,
            seed=options.asset_seed,
            unchecked=unchecked,
            embeds=prepared.embeds,
        )
        future = background(_warm_then_build, demos, media, prepared.tasks, name="media")
        future.add_done_callback(
            lambda done: None if done.cancelled() or done.exception() else session.mark("media ready")
        )
        try:
            root = store.root if prepared.reach.files else None
            yield MediaStep(session, future, prepared.reach, root, options.asset_seed)
        finally:
            future.cancel()
            session.record.asset_server_requests = assets.requests_served


def _warm_then_build(
    demos: Sequence[Demo], media: Media, tasks: Sequence[TaskDemo] = ()
) -> list[DemoRequest]:
    """Import the openai SDK and its HTTP transport (~0.6 s on 2 slow cores) while vLLM starts, fetch the
    media in parallel, build the requests."""
    with contextlib.suppress(Exception):
        plain_http_client().close()  # the SDK, and its transport's modules that load on first use
    if media.choice != "known":
        media.store.prefetch(key for d in demos if not d.media for key in DEFAULT_ASSETS[d.chat_type])
    return [*build_requests(demos, media, DEFAULT_MAX_TOKENS), *build_task_requests(tasks, media)]


RANDOM_WEIGHTS_UNCHECKED = "a model with random weights: its answers mean nothing, so none is checked"


def provenance_summary(requests: Sequence[DemoRequest]) -> str:
    """'6 media: 4 cached, 2 known (offline)' for the terminal: one line, the reasons in the report."""
    seen = {a.key: a for r in requests for a in r.assets}
    counts: dict[str, int] = {}
    why: dict[str, dict[str, None]] = {}
    for asset in seen.values():
        counts[asset.provenance] = counts.get(asset.provenance, 0) + 1
        if asset.reason:
            why.setdefault(asset.provenance, {})[_short(asset.reason)] = None
    detail = ", ".join(
        f"{n} {p}" + (f" ({', '.join(why[p])})" if p in why else "") for p, n in sorted(counts.items())
    )
    return f"{len(seen)} media: {detail}" if seen else "no media"


def _short(reason: str) -> str:
    """A substitute's reason in a word or two, for the terminal's one line."""
    if reason == "offline mode":
        return "offline"
    if reason.startswith("download of"):
        return "download failed"
    if reason.startswith("known media could not be made"):
        return "known media could not be made"
    return reason


def media_notes(requests: Sequence[DemoRequest], seed: int) -> list[str]:
    """What the record says about the media sent: known-answer media and their seed, a stand-in
    with no truth, eSpeak NG missing."""
    seen = {a.key: a for r in requests for a in r.assets}
    notes = []
    known = [a for a in seen.values() if a.provenance == "known"]
    if known:
        reasons = ", ".join(dict.fromkeys(a.reason or "" for a in known))
        notes.append(
            f"Known-answer media (--asset-seed {seed}; {reasons}): generated media whose truth is "
            f"known, and the words a right answer names: "
            + "; ".join(f"{a.key}: {a.truth}" for a in known)
            + "."
        )
        if any(dict(a.fact).get("beeps") for a in known):
            notes.append((known_media.espeak_missing() or "eSpeak NG failed") + ".")
    synthetic = [a for a in seen.values() if a.provenance == "synthetic"]
    if synthetic:
        notes.append(
            "Synthetic stand-ins with no truth (their demos are 'answered', never checked): "
            + "; ".join(f"{a.key} ({a.reason})" for a in synthetic)
            + "."
        )
    return notes
