"""Targets of a session: a server mmdemo launches, or one already running.

A target is the launch path cut into the steps `session.run.run_session` lists (read it there: the
order lives in that one place). `Launched` does each; `Attached` (a server already up) has nothing to
check, plan, build, fetch or launch, so each of its steps hands the server on. Refusals in `prepare`
leave no run directory; every other refusal before the start is one list, `launch.checks.CHECKS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import ipaddress
import itertools
import logging
import os
import platform
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from orchestrator.core.background import background
from orchestrator.core.chattypes import CHAT_TYPE_NEEDS, ChatType
from orchestrator.core.errors import PreflightError, ServerError, UsageError
from orchestrator.core.hfenv import HfEnv
from orchestrator.core.options import DEFAULT_MAX_TOKENS, Options
from orchestrator.core.paths import models_dir
from orchestrator.core.units import human_bytes
from orchestrator.gpus import detect as gpu_mod
from orchestrator.launch import checks, ports
from orchestrator.launch import container as containers
from orchestrator.launch.api import list_models
from orchestrator.launch.command import LaunchPlan, Redactor, build_plan, quick_start, with_dummy_weights
from orchestrator.launch.server import Server
from orchestrator.model import autoprofile
from orchestrator.model import tiny as models
from orchestrator.model.capabilities import capabilities
from orchestrator.model.recipe import record_of as recipe_record
from orchestrator.profile import fit as gpufit
from orchestrator.profile.schema import Demo, Profile, ResolvedProfile, TaskDemo, load_profile
from orchestrator.record.report import (
    ContainerRecord,
    DerivationRecord,
    DownloadRecord,
    MachineRecord,
    PhaseSpan,
    RunRecord,
    ServerRecord,
    VllmRecord,
)
from orchestrator.record.rundir import mmdemo_version
from orchestrator.session.context import Endpoint, Session
from orchestrator.vllm import runner

if TYPE_CHECKING:  # the budget and the demos load when a run counts or sends (plan needs neither)
    from orchestrator.budget import count as budgets
    from orchestrator.demos.chat import DemoRequest

log = logging.getLogger(__name__)

RANDOM_MODEL_NOTE = (
    "This is a tiny model with random weights: its answers are gibberish. The verdict rests on the "
    "server accepting and answering every request."
)

DUMMY_WEIGHTS_NOTE = (
    "--dummy-weights: vLLM built the full-size model with random weights (--load-format dummy). This run "
    "checks memory fit, context budget and start-up; its answers mean nothing, so the verdict is 'answered'."
)

S = TypeVar("S")  # what `prepare` resolved, handed to plan
P = TypeVar("P")  # the plan, handed to the checks, the model, the prefetch, the budget and the launch
R = TypeVar("R", bound="Running")  # what is running, handed to `ready`


@dataclass(frozen=True)
class Reach:
    """What media the server can fetch: our loopback asset server (same machine) and file:// from our cache."""

    loopback: bool
    files: bool
    loopback_host: str = "127.0.0.1"  # how the server names our loopback (a podman container: 10.0.2.2)
    domains: tuple[str, ...] | None = None  # the server's --allowed-media-domains (None: any host)

    def refuses(self, url: str) -> str | None:
        """Why the server refuses to fetch `url` (its host is not an allowed media domain), else None."""
        host = urllib.parse.urlsplit(url).hostname
        if self.domains is None or host in self.domains:
            return None
        return f"the server's --allowed-media-domains ({', '.join(self.domains)}) does not list {host}"


@dataclass
class Prepared(Generic[S]):
    """What a target knows before anything starts: the record's skeleton, the demos, and its own spec."""

    record: RunRecord
    demos: tuple[Demo, ...]
    reach: Reach
    spec: S
    check_expectations: bool = True
    limits: Mapping[str, int] | None = None  # limit_mm_per_prompt, where known: the worst case's size
    tasks: tuple[TaskDemo, ...] = ()  # the tasks past chat (demos/tasks.py); none with --only
    # the model's own embeddings of an image: where vLLM runs on this host (image-embeds, demos/features.py)
    embeds: Callable[[Path], Any] | None = None


class Running(Protocol):
    """A server that is up (or being brought up): the secrets its record and log must not show."""

    @property
    def redact(self) -> Redactor: ...

    def hurry(self) -> None:
        """Its teardown skips the grace period (a start that a refusal ends serves nothing yet)."""


class Target(Protocol[S, P, R]):
    """A launched or an attached server, as the steps of a session."""

    def prepare(self, started_at: str) -> Prepared[S]: ...
    def plan(self, session: Session, spec: S, media_root: Path | None) -> P: ...
    def check(self, session: Session, plan: P) -> P: ...
    def prepare_model(self, session: Session, plan: P) -> P: ...
    def prefetch(self, session: Session, plan: P) -> P: ...
    def counter(
        self, session: Session, plan: P
    ) -> contextlib.AbstractContextManager[budgets.Counter | None]: ...
    def budget(
        self,
        session: Session,
        plan: P,
        counter: budgets.Counter | None,
        requests: Callable[[], Sequence[DemoRequest]],
    ) -> Mapping[str, int | None]: ...
    def launch(self, session: Session, plan: P) -> contextlib.AbstractContextManager[R]: ...
    def ready(self, session: Session, running: R) -> Endpoint: ...


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


def model_embeds(vllm_bin: str | None, model: str, image: Path) -> Any:
    """demos/features.model_embeds, imported when a run has an image-embeds demo (not by `plan`)."""
    from orchestrator.demos import features

    return features.model_embeds(vllm_bin, model, image)


def _limits(resolved: ResolvedProfile) -> dict[str, int] | None:
    """The variant's limit_mm_per_prompt, or None where vLLM's default (no practical limit) applies."""
    limits = resolved.serve.limit_mm_per_prompt
    return None if limits is None else {str(kind): count for kind, count in limits.items()}


def resolve_profile(
    opts: Options, gpus: Sequence[gpu_mod.Gpu], environ: Mapping[str, str] | None = None
) -> autoprofile.Resolved:
    """The profile named, else the profile of the model named, else one derived for it (vLLM's probe)."""
    if opts.profile is None:
        raise UsageError("a profile (or a model: a hub id or a model directory) is required")
    request = autoprofile.DeriveRequest(
        trust_remote_code=opts.trust_remote_code,
        vllm_bin=opts.vllm_bin,
        cpu=True if opts.gpu == gpu_mod.CPU else None,
        env=environ,
        variant=opts.recipe_variant,
        features=opts.recipe_features,
        without=opts.recipe_without,
        offline=opts.offline,
        vllm=image_vllm(opts, environ),
    )
    return autoprofile.resolve(opts.profile, gpus, request, opts.profiles_dir)


def image_vllm(
    opts: Options, environ: Mapping[str, str] | None = None
) -> Callable[[], runner.VllmInfo] | None:
    """With --image: how to ask the image's vLLM (pulled if need be; derivation, validate); None: the host's."""
    image = opts.image
    if not image:
        return None

    @functools.cache
    def ask() -> runner.VllmInfo:
        runtime = containers.find_runtime(opts.container_runtime)
        return containers.vllm_in_image(runtime, image, str(HfEnv.read(environ).hub_cache))

    return ask


def derivation_record(found: autoprofile.Resolved) -> DerivationRecord | None:
    """The derivation as report.json keeps it, when the profile was derived."""
    if found.derivation is None:
        return None
    return DerivationRecord(line=found.line, **found.derivation.to_record())


# -- launched -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchSpec:
    """What `prepare` resolved: the profile's variant as this run adjusts it, the GPUs, vLLM's version."""

    resolved: ResolvedProfile
    gpus: tuple[gpu_mod.Gpu, ...]
    # The host's vLLM: its package metadata, read in the background (~50 ms), checked before the start.
    # In a container (`runtime` and `image` set) the version is the running server's own (GET /version).
    version: Future[checks.VllmInfo] | None
    runtime: containers.Runtime | None = None
    image: str | None = None


@dataclass(frozen=True)
class Planned:
    """The exact `vllm serve` command line and environment, with what it was made from; in a container,
    the `docker run` / `podman run` line around it."""

    spec: LaunchSpec
    command: LaunchPlan
    vllm_path: str | None  # None: vLLM runs in a container (or is missing: the checks say so)
    user_env: Mapping[str, str]  # what `${VAR}`s and the token resolved against
    container: containers.ContainerPlan | None = None
    hub: Any = None  # the weights still to fetch (prefetch.HubPlan), found by the checks' disk check
    model_dir: Path | None = None  # the model's config and processor files, once there (for the budget)

    @property
    def launched(self) -> LaunchPlan:
        """What the supervisor starts: the run line of the container, else `vllm serve` itself."""
        return self.container.launch if self.container else self.command


@dataclass
class Launch:
    """The launched server and its plan: what `ready` waits on."""

    server: Server
    planned: Planned

    @property
    def redact(self) -> Redactor:
        return self.server.redact

    def hurry(self) -> None:
        self.server.hurry()


def _random_weights(profile: Profile) -> bool:
    """A tiny model mmdemo built with random weights (by name or by path): its answers are not graded."""
    if profile.local_model is not None:
        return models.random_weights(models_dir() / profile.local_model)
    path = Path(profile.model_path)
    return path.is_dir() and models.random_weights(path)


def _model_files(resolved: ResolvedProfile, download: DownloadRecord | None) -> Path | None:
    """The local directory of the model's config and processor files: a tiny model's, a model directory,
    or the hub snapshot the prefetch filled; None when there is none yet."""
    profile = resolved.profile
    if profile.local_model is not None:
        return models_dir() / profile.local_model
    model = Path(download.path) if download is not None and download.path else Path(profile.model_path)
    return model if model.is_dir() else None


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

    def prepare(self, started_at: str) -> Prepared[LaunchSpec]:
        """Resolve the profile, start reading vLLM's version, pick the variant and the demos."""
        opts = self.options
        probed = () if opts.gpu == gpu_mod.CPU else tuple(self._probe_gpus())  # cpu: no NVML to ask
        found = resolve_profile(opts, probed, self._environ)
        profile = found.profile
        choice = gpufit.choose(profile, opts.gpu, probed)  # any case; a card without its variant: by memory
        variant, gpus = choice.variant, tuple(choice.gpus)  # a mixed box: the named class's platform only
        resolved, quick_flags = self._adjusted(profile.resolve(variant))
        image = opts.image or resolved.image
        runtime = containers.find_runtime(opts.container_runtime) if image else None
        # vLLM's version, from its package metadata (a subprocess): started now, checked before the start.
        version = None if image else background(checks.vllm_version, opts.vllm_bin)
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
            profile_source=found.line,
            derivation=derivation_record(found),
            recipe=recipe_record(profile),
            variant=variant,
            model=profile.model,
            model_path=profile.model_path,
            served_model_name=profile.served_model_name or profile.model,
            flags=flags,
            machine=machine_info(gpus),
            started_at=started_at,
        )
        if choice.reason:  # which variant and why, where it is not the card's own
            record.notes.append(choice.reason + ".")
        if image and runtime:
            record.container = ContainerRecord(runtime=runtime.name, image=image)
        if _random_weights(profile):
            record.notes.append(RANDOM_MODEL_NOTE)
        if opts.dummy_weights:
            record.notes.append(DUMMY_WEIGHTS_NOTE)
        if quick_flags:
            record.notes.append(f"--quick-start added {', '.join(quick_flags)}.")
        random_weights = opts.dummy_weights or _random_weights(profile)
        tasks = () if opts.only else profile.tasks
        facts = found.derivation.facts if found.derivation else None
        record.capabilities = capabilities(facts, [d.chat_type for d in demos], [t.task for t in tasks])
        return Prepared(
            record,
            demos,
            dataclasses.replace(reach(runtime), domains=allowed_media_domains(resolved.serve.extra_args)),
            LaunchSpec(resolved, gpus, version, runtime, image),
            check_expectations=not random_weights,
            limits=_limits(resolved),
            tasks=tasks,
            embeds=None if image else functools.partial(model_embeds, opts.vllm_bin, profile.model_path),
        )

    def _adjusted(self, resolved: ResolvedProfile) -> tuple[ResolvedProfile, tuple[str, ...]]:
        """The variant's serve settings with what the run options add (--dummy-weights, --quick-start)."""
        serve = resolved.serve
        added: tuple[str, ...] = ()
        if self.options.dummy_weights:
            serve = with_dummy_weights(serve, f"profile {resolved.profile.name!r}")
        if self.options.quick_start:
            serve, added = quick_start(serve)
        return dataclasses.replace(resolved, serve=serve), added

    def plan(self, session: Session, spec: LaunchSpec, media_root: Path | None) -> Planned:
        """The exact command line, on a free port or the one asked for (the checks see that it is free)."""
        opts, resolved = self.options, spec.resolved
        vllm_path = None if spec.image else self._vllm_path()
        user_env = checks.user_env(self._environ)
        command = build_plan(
            resolved,
            vllm_bin=vllm_path or "vllm",  # in a container: the image's `vllm serve`
            host=opts.host,
            port=opts.port or ports.free_port(opts.host),
            media_dir=str(media_root.resolve()) if media_root else None,
            user_env=user_env,
            extra_env=opts.server_env,
        )
        in_container = self._container(session, spec, user_env, command) if spec.image else None
        return Planned(spec, command, vllm_path, user_env, in_container)

    def _vllm_path(self) -> str | None:
        """The host's vLLM command, or None: the `vllm` check refuses then, with the reason."""
        try:
            return checks.find_vllm(self.options.vllm_bin)
        except PreflightError:
            return None

    def check(self, session: Session, plan: Planned) -> Planned:
        """The one refusal step: every check of `launch.checks.CHECKS`, in order, before anything starts."""
        spec, record = plan.spec, session.record
        session.events.stage("checks", ", ".join(check.name for check in checks.CHECKS))
        info: checks.VllmInfo | PreflightError | None = None
        if spec.version is not None:  # the host's, from its package metadata
            try:
                info = session.wait(spec.version)
            except PreflightError as exc:
                info = exc
        elif plan.container is not None and plan.container.image_info is not None:  # the image's, asked
            try:  # in a container with no network, once per image id
                info = session.wait(background(self._image_vllm(spec), name="image vllm"))
            except PreflightError as exc:  # an image that cannot be asked: its server says, once it serves
                record.notes.append(f"The image's vLLM version was read once it served: before, {exc}")
        hub = self._hub(plan)
        facts = checks.Facts(
            resolved=spec.resolved,
            gpus=spec.gpus,
            vllm=info,
            env=plan.user_env,
            missing_env=plan.command.missing_env,
            host=self.options.host,
            port=self.options.port,
            disk=checks.DiskNeed(hub.repo_id, hub.missing_bytes, hub.env.hub_cache) if hub else None,
        )
        checks.run_checks(facts)
        if isinstance(info, checks.VllmInfo):
            where = f"{spec.image} ({spec.runtime.name})" if spec.image and spec.runtime else info.path
            record.vllm = VllmRecord(
                version=info.version,
                path=where,
                torch=info.torch,
                transformers=info.transformers,
                decoders=list(info.decoders),
            )
        session.mark("checks done")
        return dataclasses.replace(plan, hub=hub)

    def _image_vllm(self, spec: LaunchSpec) -> Callable[[], checks.VllmInfo]:
        """How to ask the image's vLLM (a container with no network, cached per image id)."""
        runtime, image = spec.runtime, spec.image
        assert runtime is not None, "only for a run in a container"
        assert image is not None, "only for a run in a container"
        hub_cache = str(HfEnv.read(self._environ).hub_cache)
        return lambda: containers.vllm_in_image(runtime, image, hub_cache)

    def _hub(self, plan: Planned) -> Any:
        """The hub snapshot still to fetch (files and sizes, the cache compared), or None: nothing to fetch."""
        from orchestrator.model import prefetch  # deferred: huggingface_hub, for hub models only

        model = plan.spec.resolved.profile.model_path
        if not (self.options.prefetch and not self.options.dummy_weights and prefetch.needs_prefetch(model)):
            return None
        return prefetch.plan(model, env=HfEnv.read(self._environ))

    def _container(
        self, session: Session, spec: LaunchSpec, user_env: Mapping[str, str], command: LaunchPlan
    ) -> containers.ContainerPlan:
        """The run line around `vllm serve`: named after the run, labelled, its mounts, GPUs and secrets."""
        resolved = spec.resolved
        assert spec.runtime is not None
        assert spec.image is not None
        info = containers.inspect_image(spec.runtime, spec.image)  # None: not here yet, pulled by prefetch
        if info is not None:
            containers.check_borrowed(info)
        run_id = containers.run_id(session.run_dir.name, secrets.token_hex(3))
        name = f"mmdemo-{run_id}"
        labels = {
            containers.LABEL_RUN: run_id,
            containers.LABEL_PID: str(os.getpid()),
            containers.LABEL_PROFILE: resolved.profile.name,
        }
        mounts = []
        model = Path(resolved.profile.model_path)
        if resolved.profile.local_model is not None:
            model = models_dir() / resolved.profile.local_model
        if model.is_absolute() and model.is_dir():  # a local model directory, at the same path inside
            mounts.append(containers.Mount(str(model), str(model)))
        if (media := _option_value(command.argv, "--allowed-local-media-path")) is not None:
            Path(media).mkdir(parents=True, exist_ok=True)  # the media step fills it meanwhile
            mounts.append(containers.Mount(media, media))
        hf = HfEnv.read(self._environ)  # the hub cache prefetch fills, at the image's HF_HOME/hub
        hf.hub_cache.mkdir(parents=True, exist_ok=True)  # else the runtime would create it, owned by root
        cache_home = Path(self._environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        vllm_cache = Path(self._environ.get("VLLM_CACHE_ROOT") or cache_home / "vllm")
        vllm_cache.mkdir(parents=True, exist_ok=True)
        devices = self.options.server_env.get(containers.GPU_SELECTION) or self._environ.get(
            containers.GPU_SELECTION
        )
        gpus = None if resolved.is_cpu else containers.gpu_indices(devices, [g.index for g in spec.gpus])
        token = user_env.get("HF_TOKEN")
        return containers.ContainerPlan(
            serve=command,
            runtime=spec.runtime,
            image=spec.image,
            name=name,
            labels=labels,
            gpus=gpus,
            hf_hub_cache=str(hf.hub_cache),
            hf_offline=hf.offline,
            vllm_cache=str(vllm_cache),
            mounts=tuple(mounts),
            secret_env={"HF_TOKEN": token} if token else {},
            image_info=info,
        )

    def prepare_model(self, session: Session, plan: Planned) -> Planned:
        """Build a tiny model that is not built yet; a local model directory must hold a config."""
        local_model = plan.spec.resolved.profile.local_model
        if local_model and not models.is_built(local_model):
            session.events.stage("model", f"building tiny model {local_model}")
            models.build(local_model, plan.vllm_path)
        return dataclasses.replace(plan, model_dir=_model_files(plan.spec.resolved, None))

    def prefetch(self, session: Session, plan: Planned) -> Planned:
        """Download a hub model's snapshot before launch, with progress; refuse what cannot fit."""
        from orchestrator.model import prefetch  # deferred: tqdm and huggingface_hub, for hub models only

        plan = self._pull(session, plan)
        model, hub = plan.spec.resolved.profile.model_path, plan.hub
        if hub is None:  # nothing to fetch (a local or tiny model, --no-prefetch, --dummy-weights)
            return plan
        if hub.missing_bytes:
            session.events.stage("weights", f"{model}: {human_bytes(hub.missing_bytes)} to download")
        with session.events.download_bar(model) as bar:
            fetched = session.wait(background(prefetch.fetch, hub, bar))
        session.record.download = DownloadRecord(
            repo=model,
            bytes_total=hub.total_bytes,
            bytes_downloaded=fetched.bytes_downloaded,
            seconds=round(fetched.seconds, 3),
            path=str(fetched.path),
            hf_cache=str(hub.env.hub_cache),
        )
        session.mark("weights ready")
        return dataclasses.replace(plan, model_dir=Path(fetched.path))

    def counter(
        self, session: Session, plan: Planned
    ) -> contextlib.AbstractContextManager[budgets.Counter | None]:
        """vLLM's renderer, importing ahead of the budget step (~10 s that the model's preparation and the
        prefetch hide); None where the budget is not counted on this host."""
        if (
            not self.options.budget or plan.spec.version is None
        ):  # vLLM in an image: the budget step starts it
            return contextlib.nullcontext(None)
        try:
            info = session.wait(plan.spec.version)
        except PreflightError:  # no vLLM here: the checks said so; the budget step notes it
            return contextlib.nullcontext(None)
        from orchestrator.budget import count as budgets

        return budgets.Counter(info, plan.command.env)

    def budget(
        self,
        session: Session,
        plan: Planned,
        counter: budgets.Counter | None,
        requests: Callable[[], Sequence[DemoRequest]],
    ) -> Mapping[str, int | None]:
        """Each demo's prompt tokens, counted by vLLM's renderer (the host's, or in the run's image: no
        network, the model and the media mounted read-only) on the media it will send (the chat template
        applied, no weights): a demo that cannot fit refuses the run. Each request's count, by its name
        (none when not counted)."""
        from orchestrator.budget import count as budgets

        record, label = session.record, plan.spec.resolved.profile.label
        if not self.options.budget:
            record.notes.append("--no-budget: the demos' tokens were not counted before launch.")
            return {}
        chosen = tuple(requests())
        if not chosen:  # nothing to count
            return {}
        with contextlib.ExitStack() as stack:
            try:
                info = counter.vllm if counter is not None else self._budget_vllm(plan)
                where = f" in {plan.spec.image}" if info.image is not None else ""
                session.events.stage(
                    "budget",
                    f"counting {len(chosen)} requests with vLLM {info.version}'s renderer{where} (no weights)",
                )
                request = budgets.BudgetRequest(
                    vllm=info,
                    argv=plan.command.argv[1:],
                    env=plan.command.env,
                    model_dir=plan.model_dir or _model_files(plan.spec.resolved, None),
                    requests=chosen,
                    served_model_name=plan.command.served_model_name,
                )
                if counter is None:  # in an image: started now, the image pulled and the model fetched
                    counter = stack.enter_context(budgets.Counter(info, request.env, budgets.mounts(request)))
                found = budgets.count(request, label, check=session.stop.check, counter=counter)
            except PreflightError as exc:  # vLLM cannot build its renderer here: the run goes on without it
                record.notes.append(f"The demos' tokens were not counted before launch: {exc}")
                session.events.stage("budget", f"not counted: {exc}")
                return {}
        counts = found.record()
        record.budget = counts
        if (refusal := found.refusal()) is not None:
            raise refusal
        for warning in found.warnings():
            record.warnings.append(warning)
            session.events.stage("warning", warning)
        session.events.stage("budget", found.summary())
        session.mark("budget done")
        return {demo.name: demo.prompt_tokens for demo in counts.demos}

    def _budget_vllm(self, plan: Planned) -> runner.VllmInfo:
        """The vLLM that counts when none was started ahead: the image's (asked once per image id)."""
        container = plan.container
        if container is None:
            raise PreflightError("no vLLM to count with: neither on this host nor in an image")
        image = container.image_info or containers.ensure_image(container.runtime, container.image)
        return runner.in_image(containers.script_image(container.runtime, image, container.hf_hub_cache))

    def _pull(self, session: Session, plan: Planned) -> Planned:
        """The container image, pulled when the runtime does not have it yet (with its digest)."""
        if plan.container is None or plan.container.image_info is not None:
            return plan
        runtime, image = plan.container.runtime, plan.container.image
        session.events.stage("image", f"{runtime.name} pull {image}")
        info = session.wait(background(containers.ensure_image, runtime, image))
        session.mark("image ready")
        self._check_image_vllm(session, plan.spec)  # pulled only now: its vLLM checked before the start
        return dataclasses.replace(plan, container=plan.container.with_image(info))

    def _check_image_vllm(self, session: Session, spec: LaunchSpec) -> None:
        """The image's vLLM, asked (once per image id) and checked against the profile; recorded."""
        try:
            info = session.wait(background(self._image_vllm(spec), name="image vllm"))
        except PreflightError as exc:  # an image that cannot be asked: its server says, once it serves
            session.record.notes.append(f"The image's vLLM version was read once it served: before, {exc}")
            return
        checks.check_version(info, spec.resolved)
        session.record.vllm = VllmRecord(
            version=info.version,
            path=f"{spec.image} ({spec.runtime.name})" if spec.runtime else str(spec.image),
            torch=info.torch,
            transformers=info.transformers,
            decoders=list(info.decoders),
        )

    @contextlib.contextmanager
    def launch(self, session: Session, plan: Planned) -> Iterator[Launch]:
        """Start `vllm serve` (on the host, or in its container); on leaving, tear it all down, always."""
        session.stop.check()
        opts, command, record = self.options, plan.launched, session.record
        server = Server(
            command,
            log_path=session.run_dir / "server.log",
            api_key=opts.api_key,
            grace_s=opts.grace_s,
            gpu_pids=None if plan.spec.resolved.is_cpu else gpu_mod.pids_using_gpus,
            container=plan.container.ref if plan.container else None,
        )
        session.stop.on_hurry(server.hurry)
        shown = command.shell() if plan.container else command.shell_with_env()
        record.server = ServerRecord(
            base_url=server.base_url,
            command=server.redact(shown.replace(command.argv[0], Path(command.argv[0]).name, 1)),
            argv=server.display_argv,
            env=dict(command.display_env),
            log="server.log",
        )
        try:
            session.events.stage("launch", command.shell())
            server.start()
            session.mark("launch")
            if plan.container is not None:  # after the start: the runtime's version is not worth a delay
                record.container = container_record(plan.container, record.server.command)
            record.server.pid = server.pid  # also its process group and session id
            yield Launch(server, plan)
        finally:
            session.events.stage("teardown", f"grace {opts.grace_s:g} s")
            end = time.monotonic()
            record.teardown = server.stop()
            if server.started_at is not None:
                spans = server.follower.spans(server.started_at, server.ready_at or end)
                record.startup = [PhaseSpan(phase=p, start_s=a, end_s=b) for p, a, b in spans]
            server.redact_log()
            session.mark("teardown done")

    def ready(self, session: Session, running: Launch) -> Endpoint:
        """Wait until it serves; in a container, the image's vLLM is then checked (a refused one tears down)."""
        server, spec, record = running.server, running.planned.spec, session.record
        ready = server.wait_ready(
            self.options.timeout_s or spec.resolved.ready_timeout_s,
            on_tick=session.events.waiting,
            on_log=session.events.log_line,
            cancelled=session.stop.is_set,
        )
        session.mark("server ready")
        record.server.ready_s = round(ready.elapsed_s, 3)
        record.server.models = list(ready.models)
        started = [server.redact(w) for w in server.follower.warnings]
        record.warnings += started
        for warning in started:
            session.events.stage("warning", warning)
        if spec.image is not None and spec.runtime is not None and record.vllm is None:  # pulled at prefetch:
            version = server.version() or "unknown"  # the image's vLLM says which it is once it serves
            record.vllm = VllmRecord(version=version, path=f"{spec.image} ({spec.runtime.name})")
            if version != "unknown":
                checks.check_version(checks.VllmInfo(spec.image, version), spec.resolved)

        def check(when: str) -> None:
            if (death := server.health_problem()) is not None:
                raise server.failure(f"vllm serve died {when} ({death})")

        endpoint = Endpoint(
            server.base_url,
            server.api_key,
            running.planned.command.served_model_name,
            check,
            log_mark=server.log_mark,
            log_since=server.log_since,
        )
        session.events.ready(endpoint, ready.elapsed_s)
        return endpoint


def reach(runtime: containers.Runtime | None) -> Reach:
    """What a launched server can fetch: everything on the host; in podman, our loopback as 10.0.2.2;
    behind docker's bridge, not our loopback (URL demos go upstream)."""
    if runtime is None:
        return Reach(loopback=True, files=True)
    if runtime.name == "podman":
        return Reach(loopback=True, files=True, loopback_host=containers.PODMAN_HOST_LOOPBACK)
    return Reach(loopback=False, files=True)


def allowed_media_domains(argv: Sequence[str]) -> tuple[str, ...] | None:
    """The hosts `--allowed-media-domains A B ...` (or `=A`) lists in a serve argv; None when absent."""
    words = list(argv)
    for i, word in enumerate(words):
        if word == "--allowed-media-domains":
            return tuple(itertools.takewhile(lambda w: not w.startswith("-"), words[i + 1 :]))
        if word.startswith("--allowed-media-domains="):
            return (word.split("=", 1)[1],)
    return None


def _option_value(argv: Sequence[str], flag: str) -> str | None:
    """The word after `flag` in an argv, None when it is not there."""
    words = list(argv)
    return words[words.index(flag) + 1] if flag in words[:-1] else None


def container_record(plan: containers.ContainerPlan, run_line: str | None) -> ContainerRecord:
    """The container as report.json keeps it: what to pull and run again to reproduce the run."""
    info = plan.image_info
    return ContainerRecord(
        runtime=plan.runtime.name,
        runtime_version=containers.runtime_version(plan.runtime),
        image=plan.image,
        image_id=info.id if info else None,
        digest=info.digest if info else None,
        name=plan.name,
        labels=dict(plan.labels),
        gpus=list(plan.gpus) if plan.gpus is not None else None,
        run_line=run_line,
    )


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


@dataclass(frozen=True)
class Remote:
    """A server already running, as `prepare` found it."""

    base_url: str
    api_key: str
    model: str

    @property
    def redact(self) -> Redactor:
        return Redactor([self.api_key] if self.api_key != "EMPTY" else [])

    def hurry(self) -> None:
        """Not ours to stop: nothing to hurry."""


class Attached:
    """A server already running: mmdemo neither launches nor stops it."""

    def __init__(self, options: Options, chat_types: Sequence[ChatType] = ()) -> None:
        self.options = options
        self.chat_types = tuple(chat_types)

    def prepare(self, started_at: str) -> Prepared[Remote]:
        """List the server's models (no run directory before there is a server), pick the demos."""
        opts = self.options
        assert opts.base_url, "Attached needs a base URL"
        base_url = normalise_base_url(opts.base_url)
        api_key = opts.api_key or opts.environment.api_key or "EMPTY"
        profile = load_profile(opts.profile, opts.profiles_dir) if opts.profile else None
        if profile:
            demos = select_demos(profile, opts.only)
        else:
            demos = tuple(Demo(chat_type=c) for c in (opts.only or self.chat_types or tuple(ChatType)))
        served = list_models(base_url, api_key)
        if not served:
            raise ServerError(f"{base_url}/models lists no model")
        wanted = (profile.served_model_name or profile.model) if profile else None
        model = wanted if wanted in served else served[0]
        record = RunRecord(
            mmdemo_version=mmdemo_version(),
            profile=profile.name if profile else "attached",
            profile_path=profile.path if profile else None,
            variant="attached",
            model=model,
            served_model_name=model,
            machine=machine_info([]),
            server=ServerRecord(base_url=base_url, attached=True, models=served),
            started_at=started_at,
            notes=["Attached to a running server: mmdemo neither launched nor stopped it."],
        )
        return Prepared(
            record,
            with_max_tokens(demos, opts),
            Reach(loopback=is_loopback(base_url), files=False),
            Remote(base_url, api_key, model),
            check_expectations=profile is not None and profile.local_model is None,
            tasks=profile.tasks if profile and not opts.only else (),
        )

    # The server is up already: nothing to check, plan, build, fetch or launch; each step hands it on.

    def plan(self, session: Session, spec: Remote, media_root: Path | None) -> Remote:
        return spec

    def check(self, session: Session, plan: Remote) -> Remote:
        return plan

    def prepare_model(self, session: Session, plan: Remote) -> Remote:
        return plan

    def prefetch(self, session: Session, plan: Remote) -> Remote:
        return plan

    def counter(
        self, session: Session, plan: Remote
    ) -> contextlib.AbstractContextManager[budgets.Counter | None]:
        return contextlib.nullcontext(None)

    def budget(
        self,
        session: Session,
        plan: Remote,
        counter: budgets.Counter | None,
        requests: Callable[[], Sequence[DemoRequest]],
    ) -> Mapping[str, int | None]:
        return {}  # the server is up already: its own answers count the tokens

    def launch(self, session: Session, plan: Remote) -> contextlib.AbstractContextManager[Remote]:
        return contextlib.nullcontext(plan)

    def ready(self, session: Session, running: Remote) -> Endpoint:
        return Endpoint(running.base_url, running.api_key, running.model)
