"""`mmdemo plan`: what `run` with the same options would launch, shown without launching anything.

It goes through the session's own launch steps (`Launched.prepare`, `plan`, `check`), so it cannot
drift from `run`: the same profile (derived or not) and variant, the same refusals, the same port choice
and the same host or container command line, the API key redacted. A variant the profile marks
unsupported on the GPU named is exit 2 with its reason. Planned for a GPU class this machine lacks, the
GPUs are stand-ins of that class (as NVML would report them).
"""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from orchestrator.core.errors import UsageError
from orchestrator.core.options import Options
from orchestrator.core.tasks import ROUTES
from orchestrator.gpus import detect as gpu_mod
from orchestrator.gpus.sizing import gpus_of_class
from orchestrator.launch.command import REDACTED, Redactor
from orchestrator.record.report import VllmRecord
from orchestrator.session.context import QuietEvents, Session, Stop
from orchestrator.session.targets import Launched, LaunchSpec, Planned, Prepared

if TYPE_CHECKING:
    from rich.console import Console


class PlanEvents(QuietEvents):
    """The session's own narration of its steps, kept to be shown as comments."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, str]] = []

    def stage(self, name: str, detail: str = "") -> None:
        self.stages.append((name, detail))


def planned_gpus(
    gpu: str, detect: Callable[[], Sequence[gpu_mod.Gpu]], count: int = 1
) -> Callable[[], list[gpu_mod.Gpu]]:
    """The GPUs `plan` sizes and checks for: those found (auto, or the class named when it is here),
    else `count` stand-ins of the class named."""

    def probe() -> list[gpu_mod.Gpu]:
        found = list(detect())
        name = gpu_mod.canonical_class(gpu)
        if gpu.strip().lower() == "auto" or name in (None, gpu_mod.CPU):
            return found
        mine = [g for g in found if g.gpu_class == name]
        return mine or gpus_of_class(name, count)

    return probe


def prepare(
    opts: Options, detect: Callable[[], Sequence[gpu_mod.Gpu]]
) -> tuple[Launched, Prepared[LaunchSpec], bool]:
    """The run's `prepare` step for the GPUs planned for; (target, prepared, whether they are stand-ins)."""
    found = [] if opts.gpu == gpu_mod.CPU else list(detect())  # cpu: no NVML to ask
    opts = dataclasses.replace(opts, prefetch=False)  # the disk check asks the hub: `run` does, plan does not
    target = Launched(opts, probe_gpus=planned_gpus(opts.gpu, lambda: found))
    prepared = target.prepare(_now())
    spec = prepared.spec
    stand_in = bool(spec.gpus) and not any(g in found for g in spec.gpus)
    need = max(spec.resolved.requires.gpu_count or 1, spec.resolved.serve.tensor_parallel_size or 1)
    if stand_in and need > len(spec.gpus):  # a variant of several GPUs: as many stand-ins
        target = Launched(opts, probe_gpus=planned_gpus(opts.gpu, lambda: found, need))
        prepared = target.prepare(_now())
    return target, prepared, stand_in


def plan_run(
    opts: Options, out: Console, detect: Callable[[], Sequence[gpu_mod.Gpu]] = gpu_mod.detect
) -> int:
    """Print the plan of `run` with `opts`; 0 when it would launch, else the refusal's exit code (raised)."""
    from orchestrator.core.paths import assets_dir
    from orchestrator.record.rundir import run_dir_name

    target, prepared, stand_in = prepare(opts, detect)
    record, spec = prepared.record, prepared.spec
    resolved = spec.resolved
    if resolved.unsupported:  # the profile says this variant cannot run: a usage error, before any check
        raise UsageError(
            f"profile {resolved.profile.name!r} cannot run on {resolved.variant}: {resolved.unsupported}",
            hint=f"its variants: {', '.join(resolved.profile.variants)}",
        )
    events = PlanEvents()
    session = Session(record, opts.runs_dir / run_dir_name(record.profile), events, Stop(), time.monotonic())
    show = _Printer(out)
    if record.profile_source and record.profile_source != f"profile {record.profile}":
        show(record.profile_source)
    show(f"{record.profile}: {record.model} on {record.variant}")
    for note in record.notes:
        show(note)
    if record.recipe is not None and record.derivation is not None:  # each value: the recipe's, or derived
        from orchestrator.cli.recipes import provenance_lines

        for line in provenance_lines(resolved.profile.model_dump(mode="json"), record.derivation.values):
            show(line)
    if spec.gpus:
        where = f"stand-ins: no {spec.gpus[0].gpu_class} here" if stand_in else "found here"
        show(f"GPUs: {len(spec.gpus)} x {spec.gpus[0].name} ({where})")
    planned = target.plan(session, spec, assets_dir() if prepared.reach.files else None)
    planned = target.check(session, planned)  # the run's one refusal step: a refusal is its exit code
    for name, detail in events.stages:
        show(f"{name}: {detail} (passed)" if name == "checks" else f"{name}: {detail}")
    if opts.prefetch and not opts.dummy_weights:
        show("disk: `run` checks it against the hub's file list before the download (plan asks no hub)")
    show(_vllm_line(planned, record.vllm))
    _command(out, planned, opts)
    if not opts.port:
        show(f"port {planned.command.port}: free now; `run` picks a free one again (--port N pins it)")
    show(f"demos: {', '.join(d.chat_type.value for d in prepared.demos) or 'no chat type'}")
    if prepared.tasks:  # the tasks past chat, each with the route it calls (core/tasks.py)
        show(f"tasks: {', '.join(f'{t.task.value} ({ROUTES[t.task].path})' for t in prepared.tasks)}")
    served = record.capabilities
    if served is not None and served.tasks.served is not None:  # probed: what the model serves, and run
        from orchestrator.model.capabilities import line as offered

        show(f"chat types served: {offered(served.chat_types.served, served.chat_types.run)}")
        show(f"tasks served: {offered(served.tasks.served, served.tasks.run)}")
    show(f"ready timeout: {opts.timeout_s or resolved.ready_timeout_s:g} s")
    if not opts.budget:
        show("budget: not counted (--no-budget)")
    elif planned.vllm_path is None:
        show(
            f"budget: `run` counts each demo's tokens with the vLLM in {spec.image} (a container, no network)"
        )
    else:
        when = "before the launch (--count-first)" if opts.count_first else "beside vLLM's start"
        show(f"budget: `run` counts each demo's tokens with vLLM's renderer, {when}")
    return 0


def _vllm_line(planned: Planned, vllm: VllmRecord | None) -> str:
    if planned.container is not None:
        return f"vLLM: the image's, {planned.spec.image} ({planned.container.runtime.name})"
    if vllm is not None:
        return f"vLLM {vllm.version}: {vllm.path}"
    return f"vLLM: {planned.vllm_path}"


def _command(out: Console, planned: Planned, opts: Options) -> None:
    """The command line as `run` starts it: on the host with its environment, else the container's run
    line; every secret (the API key, tokens) shown redacted."""
    launched = planned.launched
    redact = Redactor(
        [*launched.secrets, *planned.command.secrets, *([opts.api_key] if opts.api_key else [])]
    )
    if planned.container is None:
        for key, value in launched.display_env.items():
            out.print(redact(f"export {key}={shlex.quote(value)}"), markup=False, highlight=False)
    key = (
        f"{REDACTED}  # the key given with --api-key"
        if opts.api_key
        else "...  # mmdemo generates a fresh key per run"
    )
    out.print(f"export VLLM_API_KEY={key}", markup=False, highlight=False)
    out.print(redact(launched.shell()), markup=False, highlight=False)


class _Printer:
    """One comment line of the plan."""

    def __init__(self, out: Console) -> None:
        self.out = out

    def __call__(self, text: str) -> None:
        self.out.print(f"# {text}", markup=False, highlight=False)


def _now() -> str:
    from orchestrator.record.rundir import now_iso

    return now_iso()
