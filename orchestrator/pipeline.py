"""The run, written out once, in order: load -> preflight -> launch -> ready -> demos -> teardown -> report.

No step calls the next; each takes what the previous one returned. Teardown happens whatever went
wrong, and the report is written even for a failed or interrupted run: it holds the evidence.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from orchestrator import gpu as gpu_mod
from orchestrator import models, preflight, report
from orchestrator.command import Redactor, build_plan, expand_env
from orchestrator.errors import DemoFailed, InternalError, Interrupted, MMDemoError, ServerError, UsageError
from orchestrator.profile import CHAT_TYPE_NEEDS, ChatType, Demo, Profile, load_profile
from orchestrator.server import DEFAULT_GRACE_S, Ready, Server, Teardown

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 128


@dataclass(frozen=True)
class RunOptions:
    """Everything `mmdemo run` / `serve` / `demo` can be told."""

    profile: str | None = None
    gpu: str = "auto"
    host: str = "127.0.0.1"
    port: int | None = None
    vllm_bin: str = "vllm"
    timeout_s: float | None = None
    grace_s: float = DEFAULT_GRACE_S
    only: tuple[ChatType, ...] = ()
    concurrency: int | None = None
    max_completion_tokens: int | None = None
    request_timeout_s: float = 120.0
    offline: bool = False
    runs_dir: Path = Path("runs")
    profiles_dir: str | None = None
    cache_dir: Path | None = None
    base_url: str | None = None
    api_key: str | None = None


class Events(Protocol):
    """What the CLI shows while a run goes on; the pipeline itself never prints."""

    def stage(self, name: str, detail: str = "") -> None: ...
    def waiting(self, elapsed_s: float, phase: str) -> None: ...
    def log_line(self, line: str) -> None: ...
    def demo_done(self, result: Any) -> None: ...
    def ready(self, server: Server, ready: Ready) -> None: ...
    def download(self, key: str, done: int, total: int | None) -> None: ...


class Stop(Protocol):
    """An interrupt owned by the caller: a matrix runs its cells in threads, where SignalGuard cannot."""

    def signal_name(self) -> str | None: ...
    def watch(self, server: Server) -> None: ...


class QuietEvents:
    """Events that show nothing (tests, library use)."""

    def stage(self, name: str, detail: str = "") -> None:
        log.info("%s %s", name, detail)

    def waiting(self, elapsed_s: float, phase: str) -> None:
        pass

    def log_line(self, line: str) -> None:
        pass

    def demo_done(self, result: Any) -> None:
        pass

    def ready(self, server: Server, ready: Ready) -> None:
        pass

    def download(self, key: str, done: int, total: int | None) -> None:
        pass


@dataclass
class Outcome:
    """What a run produced: the report data, where it was written, and the exit code."""

    report: dict[str, Any]
    run_dir: Path | None
    exit_code: int
    error: MMDemoError | None = None
    files: list[Path] = field(default_factory=list)


# -- signals: the first one ends the run (teardown still happens), a second skips the grace ---------


class SignalGuard:
    """SIGINT/SIGTERM/SIGHUP end the run by raising Interrupted; during teardown they only hurry it."""

    def __init__(self) -> None:
        self.servers: list[Server] = []
        self.received: list[str] = []
        self.tearing_down = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        if len(self.received) == 1 and not self.tearing_down:
            raise Interrupted(name)
        for server in self.servers:  # a second signal, or one during teardown: skip the grace
            server.hurry()

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalGuard]:
        # A signal set to be ignored stays ignored: `nohup mmdemo run ...` must survive its SIGHUP.
        watched = [
            s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) != signal.SIG_IGN
        ]
        try:
            previous = {sig: signal.signal(sig, self.handler) for sig in watched}
        except ValueError:  # not the main thread: leave signals to whoever owns them
            yield self
            return
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


# -- the run ---------------------------------------------------------------------------------------


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


def with_max_tokens(demos: tuple[Demo, ...], opts: RunOptions) -> tuple[Demo, ...]:
    """--max-completion-tokens wins over the profile's per-demo value."""
    if opts.max_completion_tokens is None:
        return demos
    return tuple(d.model_copy(update={"max_completion_tokens": opts.max_completion_tokens}) for d in demos)


def make_run_dir(runs_dir: Path, name: str) -> Path:
    """runs/<timestamp>-<name>, unique even for two runs in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = runs_dir / (f"{stamp}-{name}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UsageError(
                f"cannot create a run directory under {runs_dir}: {exc.strerror or exc}"
            ) from None
    raise UsageError(f"cannot create a run directory under {runs_dir}")


def machine_info(gpus: Sequence[gpu_mod.Gpu]) -> dict[str, Any]:
    """CPU, cores, Python and accelerators, for the report."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    accelerator = ", ".join(f"{g.name} ({g.memory_total_gib:.0f} GiB)" for g in gpus) or "CPU only"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "accelerator": accelerator,
        "gpus": [asdict(g) for g in gpus],
        "driver": gpus[0].driver if gpus else None,
    }


def run(
    opts: RunOptions,
    events: Events | None = None,
    *,
    probe_gpus: Callable[[], Sequence[gpu_mod.Gpu]] = gpu_mod.detect,
    serve_forever: Callable[[Server], None] | None = None,
    run_dir: Path | None = None,
    server_env: Mapping[str, str] | None = None,
    stop: Stop | None = None,
) -> Outcome:
    """`mmdemo run` (and, with serve_forever, `mmdemo serve`): the whole pipeline."""
    from orchestrator import assets as assets_mod
    from orchestrator import demos as demos_mod

    ev = events or QuietEvents()
    started = _now()
    if serve_forever is None:
        # The openai SDK takes ~0.2 s to import; do it while we wait on vLLM's start instead of after.
        threading.Thread(target=_import_openai, name="import-openai", daemon=True).start()
    # load
    if opts.profile is None:
        raise UsageError("a profile is required")
    profile = load_profile(opts.profile, opts.profiles_dir)
    # Reading vLLM's version takes a subprocess: start it now, collect it in preflight.
    version_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-version")
    version = version_pool.submit(preflight.vllm_version, opts.vllm_bin)
    version_pool.shutdown(wait=False)
    gpus = [] if opts.gpu == gpu_mod.CPU else list(probe_gpus())  # --gpu cpu: no NVML to ask
    variant = preflight.choose_variant(profile, opts.gpu, gpus)
    resolved = profile.resolve(variant)
    chosen = with_max_tokens(select_demos(profile, opts.only, resolved.serve.limit_mm_per_prompt), opts)
    if run_dir is None:
        run_dir = make_run_dir(opts.runs_dir, profile.name)
    else:  # a matrix cell's directory, chosen by the matrix
        run_dir.mkdir(parents=True, exist_ok=True)
    ev.stage("profile", f"{profile.name} ({profile.model}) on {variant}; run directory {run_dir}")

    rep = _new_report(
        started,
        profile=profile.name,
        profile_path=profile.path,
        variant=variant,
        model=profile.model,
        model_path=profile.model_path,
        served_model_name=profile.served_model_name or profile.model,
        machine=machine_info(gpus),
    )
    if profile.local_model:
        rep["notes"].append(
            "This is a tiny model with random weights: its answers are gibberish. The verdict rests on "
            "the server accepting and answering every request."
        )
    error: MMDemoError | None = None
    guard = SignalGuard()
    redact = Redactor()
    try:
        with guard.installed():
            # preflight
            ev.stage("preflight", "vLLM, port, GPU memory, tokens")
            preflight.check_variant(resolved)
            preflight.find_vllm(opts.vllm_bin)  # at once; its version arrives after the assets
            port = preflight.choose_port(opts.host, opts.port)
            preflight.check_gpus(resolved, gpus)
            user_env = preflight.user_env(os.environ)
            preflight.check_env(resolved, expand_env(resolved.env, user_env)[2], user_env)
            # assets (not for `serve`: it runs no demos)
            serving = serve_forever is not None
            store = assets_mod.AssetStore(
                opts.cache_dir or _assets_root(), offline=opts.offline, on_progress=ev.download
            )
            origin = assets_mod.AssetServer(store.root)
            with contextlib.nullcontext() if serving else origin:
                requests = []
                if not serving:
                    media = demos_mod.Media(store=store, url=origin.url_for)
                    requests = demos_mod.build_requests(chosen, media, DEFAULT_MAX_TOKENS)
                    ev.stage("assets", _provenance_summary(requests))
                info = version.result()
                rep["vllm"] = {"version": info.version, "path": info.path}
                preflight.check_version(info, resolved)
                if profile.local_model and not models.is_built(profile.local_model):
                    ev.stage("model", f"building tiny model {profile.local_model}")
                    models.build(profile.local_model, info.path)
                preflight.check_model(resolved)
                plan = build_plan(
                    resolved,
                    vllm_bin=info.path,
                    host=opts.host,
                    port=port,
                    media_dir=None if serving else str(store.root.resolve()),
                    user_env=user_env,
                )
                if server_env:  # e.g. a matrix cell's CUDA_VISIBLE_DEVICES: the server's env only
                    plan = replace(
                        plan, env={**plan.env, **server_env}, display_env={**plan.display_env, **server_env}
                    )
                # launch
                server = Server(
                    plan,
                    log_path=run_dir / "server.log",
                    api_key=opts.api_key,
                    grace_s=opts.grace_s,
                    gpu_pids=None if resolved.is_cpu else gpu_mod.pids_using_gpus,
                )
                redact = server.redact
                guard.servers.append(server)
                rep["server"] = {
                    "command": plan.shell_with_env().replace(plan.argv[0], Path(plan.argv[0]).name, 1),
                    "argv": server.display_argv,
                    "env": dict(plan.display_env),
                    "base_url": server.base_url,
                    "log": "server.log",
                }
                try:
                    ev.stage("launch", plan.shell())
                    server.start()
                    if stop is not None:
                        stop.watch(server)
                    rep["server"]["pid"] = server.pid  # also its process group and session id
                    # ready
                    timeout = opts.timeout_s or resolved.ready_timeout_s
                    ready = server.wait_ready(timeout, on_tick=ev.waiting, on_log=ev.log_line)
                    rep["server"]["ready_s"] = round(ready.elapsed_s, 3)
                    rep["server"]["models"] = list(ready.models)
                    ev.ready(server, ready)
                    if serve_forever is not None:
                        serve_forever(server)
                    else:
                        # demos
                        ev.stage("demos", f"{len(requests)} requests to {plan.served_model_name}")
                        t0 = time.monotonic()
                        results = demos_mod.run_demos(
                            requests,
                            base_url=server.base_url,
                            api_key=server.api_key,
                            model=plan.served_model_name,
                            concurrency=opts.concurrency,
                            timeout_s=opts.request_timeout_s,
                            on_result=ev.demo_done,
                        )
                        rep["demos_wall_s"] = round(time.monotonic() - t0, 3)
                        rep["demos"] = [_demo_record(r) for r in results]
                        rep["asset_server_requests"] = origin.requests_served
                        if (death := server.health_problem()) is not None:
                            raise server.failure(f"vllm serve died during the demos ({death})")
                finally:
                    # teardown, always
                    guard.tearing_down = True
                    ev.stage("teardown", f"grace {opts.grace_s:g} s")
                    rep["teardown"] = _teardown_record(server.stop())
                    server.redact_log()
    except MMDemoError as exc:
        error = exc
    except Exception as exc:  # a bug: teardown has run (finally), and the report still gets written
        log.debug("unexpected error", exc_info=True)
        error = InternalError(exc)
    signame = guard.received[0] if guard.received else (stop.signal_name() if stop else None)
    if signame and not isinstance(error, Interrupted):
        error = Interrupted(signame)
    return _conclude(rep, error, run_dir, redact)


def attach(opts: RunOptions, chat_types: Sequence[ChatType], events: Events | None = None) -> Outcome:
    """Run demos against a server that is already up: no launch, no teardown."""
    from orchestrator import assets as assets_mod
    from orchestrator import demos as demos_mod

    ev = events or QuietEvents()
    assert opts.base_url
    base_url = opts.base_url.rstrip("/")
    base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
    profile = load_profile(opts.profile, opts.profiles_dir) if opts.profile else None
    demos = select_demos(profile, opts.only) if profile else tuple(Demo(chat_type=c) for c in chat_types)
    demos = with_max_tokens(demos, opts)
    name = profile.name if profile else "attached"
    key = opts.api_key or os.environ.get("VLLM_API_KEY") or "EMPTY"
    redact = Redactor([key] if key != "EMPTY" else [])
    models_served = demos_mod.list_models(base_url, key)
    if not models_served:
        raise UsageError(f"{base_url}/models lists no model")
    run_dir = make_run_dir(opts.runs_dir, name)  # only once there is something to report
    model = (profile.served_model_name or profile.model) if profile else models_served[0]
    if model not in models_served:
        model = models_served[0]
    rep = _new_report(
        _now(),
        profile=name,
        variant="attached",
        model=model,
        served_model_name=model,
        machine=machine_info([]),
        server={"base_url": base_url, "attached": True},
    )
    rep["notes"].append("Attached to a running server: mmdemo neither launched nor stopped it.")
    store = assets_mod.AssetStore(
        opts.cache_dir or _assets_root(), offline=opts.offline, on_progress=ev.download
    )
    local = _is_loopback(base_url)
    with assets_mod.AssetServer(store.root) as origin:
        # A server on this machine fetches URL media from our loopback origin; a remote one (another
        # host, a container) cannot reach it, so it gets the upstream URLs, where there are any.
        url = origin.url_for if local else (lambda a: a.source_url or origin.url_for(a))
        media = demos_mod.Media(store=store, url=url)
        requests = demos_mod.build_requests(demos, media, DEFAULT_MAX_TOKENS)

        def unreachable(request: Any) -> bool:
            if request.variant == "file":  # needs --allowed-local-media-path on our cache
                return True
            return request.variant == "url" and not local and any(not a.source_url for a in request.assets)

        skipped = [r.name for r in requests if unreachable(r)]
        requests = [r for r in requests if r.name not in skipped]
        if skipped:
            rep["notes"].append(
                f"Skipped {', '.join(skipped)}: the attached server cannot reach mmdemo's files."
            )
        ev.stage("demos", f"{len(requests)} requests to {base_url} ({model})")
        results = demos_mod.run_demos(
            requests,
            base_url=base_url,
            api_key=key,
            model=model,
            concurrency=opts.concurrency,
            timeout_s=opts.request_timeout_s,
            on_result=ev.demo_done,
        )
    rep["demos"] = [_demo_record(r) for r in results]
    return _conclude(rep, None, run_dir, redact)


def _new_report(started: str, **fields: Any) -> dict[str, Any]:
    """A report.json skeleton; the run fills in what it learns and _conclude the verdict."""
    return {
        "schema_version": report.SCHEMA_VERSION,
        "mmdemo_version": _version(),
        "status": "failed",
        "vllm": None,
        "server": {},
        "demos": [],
        "summary": report.summarize([]),
        "teardown": None,
        "error": None,
        "notes": [],
        "started_at": started,
        "finished_at": None,
        **fields,
    }


def _conclude(rep: dict[str, Any], error: MMDemoError | None, run_dir: Path, redact: Redactor) -> Outcome:
    """The verdict (a failed demo when nothing worse happened), written redacted to the run directory."""
    rep["summary"] = report.summarize(rep["demos"])
    if error is None and rep["summary"]["failed"]:
        error = DemoFailed(rep["summary"]["failed"], rep["summary"]["total"])
    rep["status"] = _status(error)
    rep["error"] = _error_record(error) if error and not isinstance(error, DemoFailed) else None
    rep["finished_at"] = _now()
    clean = redact.data(rep)
    files = report.write_all(run_dir, clean)
    return Outcome(clean, run_dir, error.exit_code if error else 0, error, files)


def _provenance_summary(requests: Sequence[Any]) -> str:
    """'6 media: 4 cached, 2 synthetic' for the terminal."""
    seen = {a.key: a.provenance for r in requests for a in r.assets}
    counts: dict[str, int] = {}
    for provenance in seen.values():
        counts[provenance] = counts.get(provenance, 0) + 1
    detail = ", ".join(f"{n} {p}" for p, n in sorted(counts.items()))
    return f"{len(seen)} media: {detail}" if seen else "no media"


def _import_openai() -> None:
    with contextlib.suppress(Exception):
        import openai  # noqa: F401


def _is_loopback(base_url: str) -> bool:
    import ipaddress
    import urllib.parse

    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _demo_record(result: Any) -> dict[str, Any]:
    record = {key: getattr(result, key, None) for key in report.DEMO_KEYS}
    record["chat_type"] = getattr(result.chat_type, "value", result.chat_type)
    for key in ("latency_s", "ttft_s", "tokens_per_s"):
        value = record[key]
        if isinstance(value, float):
            record[key] = round(value, 4)
    return record


def _teardown_record(teardown: Teardown) -> dict[str, Any]:
    record = asdict(teardown)
    record["duration_s"] = round(teardown.duration_s, 3)
    return record


def _error_record(error: MMDemoError) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type(error).__name__, "message": str(error), "hint": error.hint}
    if isinstance(error, ServerError):
        record.update(
            returncode=error.returncode,
            timeout_s=error.timeout_s,
            diagnosis=error.diagnosis,
            log_tail=list(error.log_tail),
        )
    return record


def _status(error: MMDemoError | None) -> str:
    if error is None:
        return "passed"
    if isinstance(error, Interrupted):
        return "interrupted"
    if isinstance(error, DemoFailed):
        return "failed"
    return "error"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mmdemo")
    except PackageNotFoundError:
        return "0+unknown"


def _assets_root() -> Path:
    from orchestrator.paths import assets_dir

    return assets_dir()
