"""The checks before a launch: each a one-line refusal, all of them in one list (`CHECKS`, at the end)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.errors import PreflightError
from orchestrator.core.hfenv import HfEnv
from orchestrator.core.tasks import too_old, version_tuple
from orchestrator.core.units import human_bytes
from orchestrator.gpus.detect import Gpu
from orchestrator.profile import fit as gpufit
from orchestrator.profile.schema import Profile, ResolvedProfile
from orchestrator.vllm import runner
from orchestrator.vllm.backend import locate_vllm

log = logging.getLogger(__name__)

# The host's vLLM (its command, version, interpreter and environment) is vllm/runner.py's; these names stay
# here for the checks and their callers.
VllmInfo = runner.VllmInfo
vllm_version = runner.vllm_version


def find_vllm(vllm_bin: str | None) -> str:
    """The absolute path of the vLLM command (None: discover it), or a refusal saying how to get one."""
    return locate_vllm(vllm_bin)[0]


VERSION_HINT = "upgrade vLLM or pass --vllm-bin pointing at a newer install"


def check_version(info: VllmInfo, resolved: ResolvedProfile) -> None:
    """Refuse when the profile's flags need a newer vLLM than the one installed."""
    for demo in resolved.profile.tasks:  # a media feature's own release names the demo that needs it
        said = too_old(demo.task, info.version)
        if said:
            raise PreflightError(f"{said}; {info.path} is {info.version}", hint=VERSION_HINT)
    need = resolved.requires.vllm_version
    if need and version_tuple(info.version) < version_tuple(need):
        raise PreflightError(
            f"profile {resolved.profile.name!r} needs vLLM >= {need}, but {info.path} is {info.version}",
            hint=VERSION_HINT,
        )


def choose_variant(profile: Profile, gpu: str, gpus: Sequence[Gpu]) -> str:
    """The variant to run: the class named (any case), or (auto) the GPU found's, or cpu; see gpufit."""
    return gpufit.choose(profile, gpu, gpus).variant  # sizing by memory, AMD and mixed boxes live there


def check_variant(resolved: ResolvedProfile) -> None:
    """Refuse a variant the profile marks unsupported."""
    if resolved.unsupported:
        raise PreflightError(
            f"profile {resolved.profile.name!r} does not support {resolved.variant}: {resolved.unsupported}"
        )


def check_gpus(resolved: ResolvedProfile, gpus: Sequence[Gpu]) -> None:
    """Refuse when the GPUs present cannot hold the variant (count and free memory)."""
    if resolved.is_cpu:
        return
    count = max(resolved.requires.gpu_count or 1, resolved.serve.tensor_parallel_size or 1)
    if len(gpus) < count:
        raise PreflightError(
            f"variant {resolved.variant} of {resolved.profile.name!r} needs {count} GPU(s), found {len(gpus)}"
        )
    need = resolved.requires.gpu_memory_gib
    if need is None:
        return
    for gpu in gpus[:count]:
        free = gpu.memory_free_gib
        if free is not None and free < need:
            raise PreflightError(
                f"GPU {gpu.index} ({gpu.name}) has {free:.1f} GiB free; "
                f"{resolved.profile.name} on {resolved.variant} needs {need:g} GiB",
                hint=f"another process holds GPU memory (see `{'amd-smi' if gpu.platform == 'rocm' else 'nvidia-smi'}`); end it or pick another GPU",
            )


def hf_token(env: Mapping[str, str]) -> str | None:
    """The Hugging Face token: from the environment, else from `hf auth login`'s token file (as HfEnv finds it:
    HF_TOKEN_PATH, else the token file in HF_HOME, itself under XDG_CACHE_HOME when unset)."""
    return HfEnv.read(env).token


def hf_token_present(env: Mapping[str, str]) -> bool:
    """A Hugging Face token in the environment or in the huggingface CLI's token file."""
    return hf_token(env) is not None


def user_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment `${VAR}` references resolve against: HF_TOKEN filled from a CLI login."""
    resolved = dict(env)
    if not resolved.get("HF_TOKEN") and (token := hf_token(env)):
        resolved["HF_TOKEN"] = token
    return resolved


def check_env(resolved: ResolvedProfile, missing: Sequence[str], env: Mapping[str, str]) -> None:
    """Refuse when a needed token or a `${VAR}` the profile refers to is absent."""
    if resolved.requires.hf_token and not hf_token_present(env):
        raise PreflightError(
            f"profile {resolved.profile.name!r} needs a Hugging Face token and none is set",
            hint="export HF_TOKEN=... (a token with access to the model's gated repo)",
        )
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise PreflightError(
            f"profile {resolved.profile.name!r} refers to unset environment variable(s): {names}",
            hint=f"export {missing[0]}=...",
        )


def check_model(resolved: ResolvedProfile) -> None:
    """A local model path must exist (hub ids are vLLM's to fetch; a tiny model is built next)."""
    model = resolved.profile.model_path
    if resolved.profile.local_model is not None:
        return
    if (
        model.startswith(("/", "./", "../", "~"))
        and not (Path(os.path.expanduser(model)) / "config.json").is_file()
    ):
        raise PreflightError(
            f"model directory {model} has no config.json",
            hint=(
                f"build it: mmdemo models build {resolved.profile.local_model}"
                if resolved.profile.local_model
                else "check the profile's model path"
            ),
        )


# -- the one refusal step --------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskNeed:
    """Bytes still to download into a directory (the HF hub cache), and what they are."""

    what: str
    need_bytes: int
    directory: Path


@dataclass(frozen=True)
class Facts:
    """What the checks look at, all known before anything starts (nothing here waits on a network)."""

    resolved: ResolvedProfile
    gpus: Sequence[Gpu]
    vllm: VllmInfo | PreflightError | None  # the host's vLLM, or why there is none; None: the image's
    env: Mapping[str, str]  # what `${VAR}`s and the token resolve against
    missing_env: Sequence[str]  # `${VAR}`s the plan could not fill
    host: str
    port: int | None  # the port asked for (None: a free one was picked)
    disk: DiskNeed | None = None  # None: nothing to download


def _vllm(facts: Facts) -> None:
    if isinstance(facts.vllm, PreflightError):
        raise facts.vllm
    if facts.vllm is not None:
        check_version(facts.vllm, facts.resolved)


def _port(facts: Facts) -> None:
    from orchestrator.launch.ports import check_port  # the port's owner needs psutil: only when asked

    if facts.port:
        check_port(facts.host, facts.port)


def _disk(facts: Facts) -> None:
    if facts.disk is not None:
        check_disk(facts.disk)


@dataclass(frozen=True)
class Check:
    """One reason not to start, checked in order; `run` raises the one-line refusal."""

    name: str
    what: str
    run: Callable[[Facts], None]


# Every check that can refuse a launch, in the order they run, before `vllm serve` (or its container)
# starts. The profile itself (schema, remote code, a derivation vLLM refuses) is refused earlier, where
# it is read; the budget (each demo's tokens) runs beside the launch, or before it with --count-first.
CHECKS: tuple[Check, ...] = (
    Check("variant", "the profile supports this GPU class", lambda f: check_variant(f.resolved)),
    Check(
        "gpus",
        "enough GPUs, each with the memory the variant needs free",
        lambda f: check_gpus(f.resolved, f.gpus),
    ),
    Check("vllm", "vLLM is there, and as new as the profile needs", _vllm),
    Check(
        "environment",
        "the HF token and every ${VAR} the profile names",
        lambda f: check_env(f.resolved, f.missing_env, f.env),
    ),
    Check("port", "the port asked for is not held", _port),
    Check("model", "a local model directory holds a config.json", lambda f: check_model(f.resolved)),
    Check("disk", "the weights still to download fit on the HF cache's disk", _disk),
)


def run_checks(facts: Facts, checks: Sequence[Check] = CHECKS) -> tuple[str, ...]:
    """Every check, in order: the first refusal raises; the names of those passed otherwise."""
    for check in checks:
        check.run(facts)
    return tuple(check.name for check in checks)


def free_space(directory: Path) -> int:
    """Free bytes on the filesystem that holds `directory` (its nearest existing parent)."""
    path = directory
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_disk(need: DiskNeed, *, free: Callable[[Path], int] = free_space) -> None:
    """Refuse when the directory's filesystem cannot hold the bytes still to download."""
    available = free(need.directory)
    if need.need_bytes > available:
        raise PreflightError(
            f"{need.what} needs {human_bytes(need.need_bytes)} more in {need.directory}, "
            f"which has {human_bytes(available)} free",
            hint="free some space, or point HF_HUB_CACHE (or HF_HOME) at a larger disk",
        )
