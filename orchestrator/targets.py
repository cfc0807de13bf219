"""Targets of a session: a server mmdemo launches, or one already running; each yields an Endpoint.

`prepare()` does what needs no run directory (load the profile, pick the variant and demos; for an
attached server, list its models) and may refuse with a usage error; `enter()` is a context manager
that brings the endpoint up and, for a launched server, always tears it down.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from orchestrator import gpu as gpu_mod
from orchestrator import gpufit, models, preflight
from orchestrator.background import background
from orchestrator.command import Redactor, build_plan, quick_start, with_dummy_weights
from orchestrator.errors import ServerError, UsageError
from orchestrator.options import DEFAULT_MAX_TOKENS, Environment, Options
from orchestrator.profile import CHAT_TYPE_NEEDS, ChatType, Demo, Profile, ResolvedProfile, load_profile
from orchestrator.record import (
    DownloadRecord,
    MachineRecord,
    PhaseSpan,
    RunRecord,
    ServerRecord,
    TeardownRecord,
    VllmRecord,
)

if TYPE_CHECKING:
    from orchestrator.session import Session

log = logging.getLogger(__name__)
T = TypeVar("T")

RANDOM_MODEL_NOTE = (
    "This is a tiny model with random weights: its answers are gibberish. The verdict rests on the "
    "server accepting and answering every request."
)

DUMMY_WEIGHTS_NOTE = (
    "--dummy-weights: vLLM built the full-size model with random weights (--load-format dummy). This run "
    "checks memory fit, context budget and start-up; its answers mean nothing, so the verdict is 'answered'."
)


@dataclass(frozen=True)
class Reach:
    """What media the server can fetch: our loopback origin (same machine) and file:// from our cache."""

    loopback: bool
    files: bool


@dataclass(frozen=True)
class Endpoint:
    """A server ready for requests."""

    base_url: str
    api_key: str
    model: str
    check: Callable[[str], None] = lambda when: None  # raises ServerError once the server is dead


@dataclass
class Prepared:
    """What a target knows before anything starts: the record's skeleton and the demos to send."""

    record: RunRecord
    demos: tuple[Demo, ...]
    reach: Reach
    check_expectations: bool = True


class Target(Protocol):
    """A launched or an attached server."""

    def prepare(self, started_at: str) -> Prepared: ...
    def enter(self, session: Session) -> contextlib.AbstractContextManager[Endpoint]: ...


# -- demos of a profile --------------------------------------------------------------------------


def select_demos(
    profile: Profile, only: Sequence[ChatType], limits: Mapping[Any, int] | None = None
) -> tuple[Demo, ...]:
    """The profile's demos, or those named by --only (a chat type it lacks runs with defaults)."""
    if not only:
        return profile.demos
    chosen = []
    for chat_type in only:
        need = CHAT_TYPE_NEEDS[chat_type]
        if need and limits is not None and limits.get(need[0], 0) < need[1]:
            raise UsageError(
                f"--only {chat_type.value}: it sends {need[1]} {need[0]}(s) per prompt but profile "
                f"{profile.name!r} allows {limits.get(need[0], 0)} (limit_mm_per_prompt)"
            )
        match = next((d for d in profile.demos if d.chat_type is chat_type), None)
        chosen.append(match or Demo(chat_type=chat_type))
    return tuple(chosen)


def with_max_tokens(demos: tuple[Demo, ...], options: Options) -> tuple[Demo, ...]:
    """--max-completion-tokens wins over the profile's per-demo value; the example's 128 otherwise."""
    tokens = options.max_completion_tokens
    return tuple(
        d.model_copy(
            update={"max_completion_tokens": tokens or d.max_completion_tokens or DEFAULT_MAX_TOKENS}
        )
        for d in demos
    )


def machine_info(gpus: Sequence[gpu_mod.Gpu]) -> MachineRecord:
    """CPU, cores, Python and accelerators, for the report."""
    import platform

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    accelerator = gpu_mod.describe(gpus)  # the cards, their memory and the platform (CUDA or ROCm)
    return MachineRecord(
        cpu=cpu,
        cores=os.cpu_count(),
        python=platform.python_version(),
        platform=platform.platform(),
        accelerator=accelerator,
        gpus=[asdict(g) for g in gpus],
        driver=gpus[0].driver if gpus else None,
    )


def mmdemo_version() -> str:
    """The installed mmdemo's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmdemo")
    except PackageNotFoundError:
        return "0+unknown"


# -- launched -------------------------------------------------------------------------------------


class Launched:
    """`vllm serve` for a profile, launched, supervised and always torn down by mmdemo."""

    def __init__(
        self,
        options: Options,
        *,
        probe_gpus: Callable[[], Sequence[gpu_mod.Gpu]] = gpu_mod.detect,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self._probe_gpus = probe_gpus
        self._environ = dict(os.environ if environ is None else environ)
        self._version: Future[preflight.VllmInfo] | None = None
        self.resolved: ResolvedProfile | None = None
        self.gpus: list[gpu_mod.Gpu] = []
        self.quick_flags: tuple[str, ...] = ()

    def prepare(self, started_at: str) -> Prepared:
        """Load the profile, start reading vLLM's version, pick the variant and the demos."""
        opts = self.options
        if opts.profile is None:
            raise UsageError("a profile is required")
        profile = load_profile(opts.profile, opts.profiles_dir)
        # Reading vLLM's version takes a subprocess (seconds): start it now, collect it in preflight.
        self._version = background(preflight.vllm_version, opts.vllm_bin)
        self.gpus = [] if opts.gpu == gpu_mod.CPU else list(self._probe_gpus())  # cpu: no NVML to ask
        choice = gpufit.choose(
            profile, opts.gpu, self.gpus
        )  # any case; a card without its variant: by memory
        variant, self.gpus = choice.variant, list(choice.gpus)  # a mixed box: the named class's platform only
        self.resolved = resolved = self._adjusted(profile.resolve(variant))
        demos = with_max_tokens(select_demos(profile, opts.only, resolved.serve.limit_mm_per_prompt), opts)
        flags = [
            name
            for name, on in (("quick-start", opts.quick_start), ("dummy-weights", opts.dummy_weights))
            if on
        ]
        record = RunRecord(
            mmdemo_version=mmdemo_version(),
            profile=profile.name,
            profile_path=profile.path,
            variant=variant,
            model=profile.model,
            model_path=profile.model_path,
            served_model_name=profile.served_model_name or profile.model,
            flags=flags,
            machine=machine_info(self.gpus),
            started_at=started_at,
        )
        if choice.reason:  # which variant and why, where it is not the card's own
            record.notes.append(choice.reason + ".")
        if profile.local_model is not None:
            record.notes.append(RANDOM_MODEL_NOTE)
        if opts.dummy_weights:
            record.notes.append(DUMMY_WEIGHTS_NOTE)
        if self.quick_flags:
            record.notes.append(f"--quick-start added {', '.join(self.quick_flags)}.")
        random_weights = profile.local_model is not None or opts.dummy_weights
        return Prepared(
            record, demos, Reach(loopback=True, files=True), check_expectations=not random_weights
        )

    def _adjusted(self, resolved: ResolvedProfile) -> ResolvedProfile:
        """The variant's serve settings with what the run options add (--dummy-weights, --quick-start)."""
        serve = resolved.serve
        if self.options.dummy_weights:
            serve = with_dummy_weights(serve, f"profile {resolved.profile.name!r}")
        if self.options.quick_start:
            serve, self.quick_flags = quick_start(serve)
        return dataclasses.replace(resolved, serve=serve)

    def _prefetch(self, session: Session) -> None:
        """Download a hub model's snapshot before launch, with progress; refuse what cannot fit."""
        from orchestrator import prefetch

        model = self.resolved.profile.model_path if self.resolved else ""
        if not (self.options.prefetch and not self.options.dummy_weights and prefetch.needs_prefetch(model)):
            return
        hub = prefetch.plan(model)
        prefetch.check_disk(hub)
        if hub.missing_bytes:
            session.events.stage("weights", f"{model}: {prefetch.human_bytes(hub.missing_bytes)} to download")
        with session.events.download_bar(model) as bar:
            fetched = session.wait(background(prefetch.fetch, hub, bar))
        session.record.download = DownloadRecord(
            repo=model,
            bytes_total=hub.total_bytes,
            bytes_downloaded=fetched.bytes_downloaded,
            seconds=round(fetched.seconds, 3),
            path=str(fetched.path),
        )
        session.mark("weights ready")

    @contextlib.contextmanager
    def enter(self, session: Session) -> Iterator[Endpoint]:
        """Preflight, launch, wait until ready; yield the endpoint; tear the whole tree down, always."""
        from orchestrator.server import Server

        assert self.resolved is not None, "prepare() first"
        assert self._version is not None
        opts, resolved, record, events = self.options, self.resolved, session.record, session.events
        events.stage("preflight", "vLLM, port, GPU memory, tokens")
        preflight.check_variant(resolved)
        port = preflight.choose_port(opts.host, opts.port)
        preflight.check_gpus(resolved, self.gpus)
        vllm_path = preflight.find_vllm(opts.vllm_bin)  # its version is read meanwhile, checked below
        user_env = preflight.user_env(self._environ)
        plan = build_plan(
            resolved,
            vllm_bin=vllm_path,
            host=opts.host,
            port=port,
            media_dir=str(session.media_root.resolve()) if session.media_root else None,
            user_env=user_env,
            extra_env=opts.server_env,
        )
        preflight.check_env(resolved, plan.missing_env, user_env)
        local_model = resolved.profile.local_model
        if local_model and not models.is_built(local_model):
            events.stage("model", f"building tiny model {local_model}")
            models.build(local_model, vllm_path)
        preflight.check_model(resolved)
        session.mark("preflight done")
        self._prefetch(session)
        session.stop.check()
        server = Server(
            plan,
            log_path=session.run_dir / "server.log",
            api_key=opts.api_key,
            grace_s=opts.grace_s,
            gpu_pids=None if resolved.is_cpu else gpu_mod.pids_using_gpus,
        )
        session.redact = server.redact
        session.stop.on_hurry(server.hurry)
        record.server = ServerRecord(
            base_url=server.base_url,
            command=plan.shell_with_env().replace(plan.argv[0], Path(plan.argv[0]).name, 1),
            argv=server.display_argv,
            env=dict(plan.display_env),
            log="server.log",
        )
        try:
            events.stage("launch", plan.shell())
            server.start()
            session.mark("launch")
            record.server.pid = server.pid  # also its process group and session id
            # Launched first, checked while it loads: a refused version tears the server down at once.
            info = session.wait(self._version)
            record.vllm = VllmRecord(version=info.version, path=info.path)
            preflight.check_version(info, resolved)
            timeout = opts.timeout_s or resolved.ready_timeout_s
            ready = server.wait_ready(
                timeout, on_tick=events.waiting, on_log=events.log_line, cancelled=session.stop.is_set
            )
            session.mark("server ready")
            record.server.ready_s = round(ready.elapsed_s, 3)
            record.server.models = list(ready.models)

            def check(when: str) -> None:
                if (death := server.health_problem()) is not None:
                    raise server.failure(f"vllm serve died {when} ({death})")

            endpoint = Endpoint(server.base_url, server.api_key, plan.served_model_name, check)
            events.ready(endpoint, ready.elapsed_s)
            yield endpoint
        finally:
            events.stage("teardown", f"grace {opts.grace_s:g} s")
            end = time.monotonic()
            record.teardown = TeardownRecord(**asdict(server.stop()))
            if server.started_at is not None:
                spans = server.follower.spans(server.started_at, server.ready_at or end)
                record.startup = [PhaseSpan(phase=p, start_s=a, end_s=b) for p, a, b in spans]
            server.redact_log()
            session.mark("teardown done")


# -- attached -------------------------------------------------------------------------------------


def normalise_base_url(url: str) -> str:
    """http://host:port[/v1][/] -> http://host:port/v1; one line naming the URL when it is not one."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--base-url {url!r} is not an http(s) URL")
    base = url.strip().rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def is_loopback(base_url: str) -> bool:
    """True when the URL's host is this machine."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Attached:
    """A server already running: mmdemo neither launches nor stops it."""

    def __init__(self, options: Options, chat_types: Sequence[ChatType] = ()) -> None:
        self.options = options
        self.chat_types = tuple(chat_types)
        self.model = ""
        self.api_key = ""
        self.base_url = ""

    def prepare(self, started_at: str) -> Prepared:
        """List the server's models (no run directory before there is a server), pick the demos."""
        from orchestrator.demos import list_models

        opts = self.options
        assert opts.base_url, "Attached needs a base URL"
        self.base_url = normalise_base_url(opts.base_url)
        self.api_key = opts.api_key or Environment.read().api_key or "EMPTY"
        profile = load_profile(opts.profile, opts.profiles_dir) if opts.profile else None
        if profile:
            demos = select_demos(profile, opts.only)
        else:
            demos = tuple(Demo(chat_type=c) for c in (opts.only or self.chat_types or tuple(ChatType)))
        served = list_models(self.base_url, self.api_key)
        if not served:
            raise ServerError(f"{self.base_url}/models lists no model")
        wanted = (profile.served_model_name or profile.model) if profile else None
        self.model = wanted if wanted in served else served[0]
        record = RunRecord(
            mmdemo_version=mmdemo_version(),
            profile=profile.name if profile else "attached",
            profile_path=profile.path if profile else None,
            variant="attached",
            model=self.model,
            served_model_name=self.model,
            machine=machine_info([]),
            server=ServerRecord(base_url=self.base_url, attached=True, models=served),
            started_at=started_at,
            notes=["Attached to a running server: mmdemo neither launched nor stopped it."],
        )
        return Prepared(
            record,
            with_max_tokens(demos, opts),
            Reach(loopback=is_loopback(self.base_url), files=False),
            check_expectations=profile is not None and profile.local_model is None,
        )

    @contextlib.contextmanager
    def enter(self, session: Session) -> Iterator[Endpoint]:
        """The server is already up."""
        session.redact = Redactor([self.api_key] if self.api_key != "EMPTY" else [])
        yield Endpoint(self.base_url, self.api_key, self.model)
