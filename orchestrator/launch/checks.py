"""Checks before launch, each a one-line refusal: vLLM present and new enough, port, GPU, token."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.atomic import write_atomic
from orchestrator.core.errors import PreflightError
from orchestrator.core.paths import cache_dir
from orchestrator.gpus.detect import Gpu
from orchestrator.profile import fit as gpufit
from orchestrator.profile.schema import Profile, ResolvedProfile
from orchestrator.vllm.backend import locate_vllm, vllm_python

log = logging.getLogger(__name__)

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_VERSION_LINE = re.compile(r"^v?\d+\.\d+(\.\d+)?\S*$")


@dataclass(frozen=True)
class VllmInfo:
    """The vLLM command that will run, its version, the rule that found it, and its environment."""

    path: str
    version: str
    found_by: str = ""
    torch: str | None = None
    transformers: str | None = None
    decoders: tuple[str, ...] = ()  # the audio/video decoders vLLM's environment has


# Run by the backend's Python: versions from package metadata and decoders found, nothing imported.
_FACTS = """
import importlib.metadata as m, importlib.util as u, json, shutil
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
found = [n for n in ("soundfile", "librosa", "av", "cv2", "torchaudio", "torchcodec", "decord") if u.find_spec(n)]
print(json.dumps({"vllm": version("vllm"), "torch": version("torch"), "transformers": version("transformers"),
                  "decoders": found + (["ffmpeg"] if shutil.which("ffmpeg") else [])}))
"""


def find_vllm(vllm_bin: str | None) -> str:
    """The absolute path of the vLLM command (None: discover it), or a refusal saying how to get one."""
    return locate_vllm(vllm_bin)[0]


def vllm_version(vllm_bin: str | None, timeout_s: float = 120.0) -> VllmInfo:
    """The installed vLLM's version: read from its package metadata, else `vllm --version`."""
    path, found_by = locate_vllm(vllm_bin)
    # `vllm --version` imports torch and vLLM (~7 s on a small CPU); the metadata answers in ~50 ms.
    facts = backend_facts(path)
    version = facts.get("vllm")
    if isinstance(version, str) and _VERSION_LINE.match(version):
        decoders = facts.get("decoders")
        return VllmInfo(
            path=path,
            version=version,
            found_by=found_by,
            torch=_text(facts.get("torch")),
            transformers=_text(facts.get("transformers")),
            decoders=tuple(str(d) for d in decoders) if isinstance(decoders, list) else (),
        )
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(f"`{path} --version` did not answer within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise PreflightError(f"cannot run {path}: {exc.strerror or exc}") from None
    # The version is stdout's last line; stderr carries torch's and vLLM's warnings.
    lines = done.stdout.strip().splitlines()
    match = _VERSION_LINE.match(lines[-1].strip()) if lines else None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or lines or ["(no output)"])[-1]
        raise PreflightError(f"`{path} --version` failed (exit {done.returncode}): {last}")
    if match is None:
        shown = lines[-1][:60] if lines else "nothing"
        raise PreflightError(f"`{path} --version` printed {shown!r}, not a version: is it vLLM?")
    return VllmInfo(path=path, version=match.group(0), found_by=found_by)


def backend_facts(path: str) -> dict[str, object]:
    """vLLM's, torch's and transformers' versions and the media decoders of the command's environment.

    Read from package metadata by that environment's Python (no import), once per environment: the
    answer is kept in the cache until its site-packages change.
    """
    try:
        python = str(vllm_python(path))
    except PreflightError:
        return {}
    key = _facts_key(python)
    cached = cache_dir() / "backends" / f"{key}.json" if key else None
    if cached is not None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(cached.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
    try:
        done = subprocess.run([python, "-c", _FACTS], capture_output=True, text=True, timeout=30, check=False)
        data = json.loads(done.stdout) if done.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    if cached is not None:
        with contextlib.suppress(OSError):
            write_atomic(cached, json.dumps(data))
    return data


def _facts_key(python: str) -> str | None:
    """A key that changes when the environment's packages do (site-packages' mtime), or None."""
    venv = Path(python).parent.parent
    try:
        stamps = [f"{p}:{p.stat().st_mtime_ns}" for p in sorted(venv.glob("lib/python*/site-packages"))]
    except OSError:
        return None
    if not stamps:
        return None
    return hashlib.sha256("|".join([os.path.realpath(python), *stamps]).encode()).hexdigest()[:24]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.10.2+cpu' -> (0, 10, 2)."""
    match = _VERSION.search(version)
    if match is None:
        return ()
    return tuple(int(p) for p in match.groups() if p is not None)


def check_version(info: VllmInfo, resolved: ResolvedProfile) -> None:
    """Refuse when the profile's flags need a newer vLLM than the one installed."""
    need = resolved.requires.vllm_version
    if need and version_tuple(info.version) < version_tuple(need):
        raise PreflightError(
            f"profile {resolved.profile.name!r} needs vLLM >= {need}, but {info.path} is {info.version}",
            hint="upgrade vLLM or pass --vllm-bin pointing at a newer install",
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
    """The Hugging Face token: from the environment, else from `huggingface-cli login`'s token file."""
    if token := env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN"):
        return token
    home = Path(env.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    try:
        return (home / "token").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


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
    """A local model path must exist (hub ids are vLLM's to fetch)."""
    model = resolved.profile.model_path
    looks_local = model.startswith(("/", "./", "../", "~")) or resolved.profile.local_model is not None
    if looks_local and not (Path(os.path.expanduser(model)) / "config.json").is_file():
        raise PreflightError(
            f"model directory {model} has no config.json",
            hint=(
                f"build it: mmdemo models build {resolved.profile.local_model}"
                if resolved.profile.local_model
                else "check the profile's model path"
            ),
        )
