"""Checks before launch, each a one-line refusal: vLLM present and new enough, port, GPU, token."""

from __future__ import annotations

import errno
import importlib.metadata
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator import gpufit
from orchestrator.backend import locate_vllm
from orchestrator.errors import PreflightError
from orchestrator.gpu import Gpu
from orchestrator.profile import Profile, ResolvedProfile

log = logging.getLogger(__name__)

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_VERSION_LINE = re.compile(r"^v?\d+\.\d+(\.\d+)?\S*$")


@dataclass(frozen=True)
class VllmInfo:
    """The vLLM command that will run, its version, and the rule that found it."""

    path: str
    version: str
    found_by: str = ""


def find_vllm(vllm_bin: str | None) -> str:
    """The absolute path of the vLLM command (None: discover it), or a refusal saying how to get one."""
    return locate_vllm(vllm_bin)[0]


def vllm_version(vllm_bin: str | None, timeout_s: float = 120.0) -> VllmInfo:
    """The installed vLLM's version: read from its package metadata, else `vllm --version`."""
    path, found_by = locate_vllm(vllm_bin)
    # `vllm --version` imports torch and vLLM (~7 s on a small CPU); the metadata answers in ~50 ms.
    version = _version_from_metadata(path)
    if version:
        return VllmInfo(path=path, version=version, found_by=found_by)
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


def _version_from_metadata(path: str) -> str | None:
    """Ask the Python of the command's environment for the `vllm` distribution's version."""
    from orchestrator.backend import vllm_python

    try:
        python = str(vllm_python(path))
    except PreflightError:
        return None
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        # vLLM installed beside mmdemo: ask our own metadata, no process needed.
        try:
            return importlib.metadata.version("vllm")
        except importlib.metadata.PackageNotFoundError:
            return None
    try:
        done = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('vllm'))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and _VERSION_LINE.match(text) else None


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


def port_owner(port: int) -> str | None:
    """Who listens on a TCP port, as 'pid N (cmdline)', when psutil can tell."""
    import psutil

    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return "another process"
            try:
                cmd = " ".join(psutil.Process(conn.pid).cmdline()) or psutil.Process(conn.pid).name()
            except psutil.Error:
                cmd = "?"
            return f"pid {conn.pid} ({cmd[:80]})"
    return None


def choose_port(host: str, port: int | None) -> int:
    """The given port if nothing holds it (else refuse, naming the owner), or a free one."""
    from orchestrator.server import connect_host

    if not port:  # None or 0: pick one
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0))
            except OSError as exc:
                raise PreflightError(
                    f"cannot bind a port on --host {host}: {exc.strerror or exc}",
                    hint="--host must be an address of this machine (default 127.0.0.1)",
                ) from None
            return int(sock.getsockname()[1])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held = _answers(connect_host(host), port)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PreflightError(
                    f"cannot bind {host}:{port}: {exc.strerror or exc}",
                    hint="--host must be an address of this machine (default 127.0.0.1)",
                ) from None
            held = True
    if held:
        owner = port_owner(port) or "another process"
        raise PreflightError(
            f"port {port} on {host} is already held by {owner}",
            hint="stop it, pass another --port, or leave --port out to pick a free one",
        )
    return port


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


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
