"""vLLM in a container: the `docker run` / `podman run` line for a launch plan (pure), and the runtime's
few questions (which runtime, is the image here, pull it, its digest).

The image's entrypoint is `vllm serve`, as in vLLM's official image (`vllm/vllm-openai:<tag>`): the
container is given the plan's own argv after `vllm serve`, the server bound inside on 0.0.0.0:8000
and published on the host's `--host` and port only (`-p 127.0.0.1:PORT:8000`). It gets the
Hugging Face hub cache (the host's, as HfEnv resolves it, at the image's HF_HOME/hub, and HF_HUB_CACHE
pointing there whatever HF_HOME the image sets; HF_HUB_OFFLINE when the host is offline) and vLLM's
(VLLM_CACHE_ROOT), mmdemo's models
and assets read-only at the same paths (so `--allowed-local-media-path` and a tiny model's directory
mean the same inside), the GPUs of its cell, `--ipc=host`, the profile's environment, and secrets by name only (`-e HF_TOKEN`,
the value in the client's environment, never in an argv). `--init` gives it a PID 1 that passes
SIGTERM on, so `stop` ends it like a host process; the labels find it again, whatever happened to
mmdemo (see watchdog.end_containers).

An image may borrow host directories, read-only: `make image-cpu` builds one around the CPU vLLM of
.venv-vllm without copying 3 GB. It says so in its `org.mmdemo.host-mounts` label, a JSON list of
[host, container] pairs, which the run line mounts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.launch import watchdog
from orchestrator.launch.command import LaunchPlan, is_secret_name
from orchestrator.vllm import runner

log = logging.getLogger(__name__)

RuntimeName = Literal["docker", "podman"]
RUNTIMES: tuple[RuntimeName, ...] = ("docker", "podman")
CONTAINER_PORT = 8000
CONTAINER_HOST = "0.0.0.0"  # inside its own network namespace; the host side is published on --host only
CONTAINER_HF_HOME = "/root/.cache/huggingface"  # the official image runs as root with no HF_HOME set
CONTAINER_HF_HUB_CACHE = f"{CONTAINER_HF_HOME}/hub"  # the host's hub cache goes here, HF_HUB_CACHE says so
# vLLM's own cache (VLLM_CACHE_ROOT): model inspection results, compiled graphs. Keyed by content
# hashes, so the host's serves every image; without it each container re-inspects the model in a
# subprocess of its own (10 s of imports on 2 cores) before it loads anything.
CONTAINER_VLLM_CACHE = "/root/.cache/vllm"
MOUNTS_LABEL = "org.mmdemo.host-mounts"
# podman: user-mode networking that reaches the host's loopback as 10.0.2.2, so the server fetches demo
# media from mmdemo's loopback asset server, as on the host; docker's bridge cannot reach loopback.
PODMAN_NETWORK = "slirp4netns:allow_host_loopback=true"
PODMAN_HOST_LOOPBACK = "10.0.2.2"
LABEL_RUN = "mmdemo.run"
LABEL_PID = "mmdemo.pid"
LABEL_PROFILE = "mmdemo.profile"
# Never passed on: the container sees only its cell's GPUs, numbered from 0 inside.
GPU_SELECTION = "CUDA_VISIBLE_DEVICES"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_.-]+")


@dataclass(frozen=True)
class Runtime:
    """docker or podman, and the command that runs it."""

    name: RuntimeName
    path: str


@dataclass(frozen=True)
class Mount:
    """A host directory bind-mounted into the container."""

    host: str
    container: str
    read_only: bool = True

    def flag(self) -> str:
        return f"{self.host}:{self.container}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class ImageInfo:
    """What the runtime knows of a local image: its id, digest, and the host directories it borrows."""

    ref: str
    id: str
    digest: str | None = None
    mounts: tuple[Mount, ...] = ()


@dataclass(frozen=True)
class ContainerPlan:
    """A server in a container: the `vllm serve` plan and everything the run line is made of.

    `launch` is the line itself (what the supervisor starts); `with_image` adds what the runtime
    knows of the image once it is here (its digest, the host directories it borrows).
    """

    serve: LaunchPlan  # the plan as on the host: argv `vllm serve MODEL ...`, env, host and port
    runtime: Runtime
    image: str
    name: str
    labels: Mapping[str, str]
    gpus: tuple[int, ...] | None = None  # host GPU indices; None: no GPU (a cpu variant)
    hf_hub_cache: str | None = (
        None  # the host's Hugging Face hub cache (HfEnv.hub_cache), mounted at the image's
    )
    hf_offline: bool = False  # the host's HF_HUB_OFFLINE: vLLM inside asks no hub either
    vllm_cache: str | None = None  # the host's vLLM cache (VLLM_CACHE_ROOT), mounted at the image's
    mounts: tuple[Mount, ...] = ()  # mmdemo's models and assets, read-only at the same paths
    secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)  # handed on by name
    image_info: ImageInfo | None = None

    @property
    def launch(self) -> LaunchPlan:
        return run_plan(self)

    @property
    def serve_args(self) -> tuple[str, ...]:
        return serve_args_inside(self.serve.argv)

    @property
    def ref(self) -> watchdog.Container:
        """What teardown and the watchdog need: the runtime, the name, the label of the run."""
        return watchdog.Container(self.runtime.path, self.name, f"{LABEL_RUN}={self.labels[LABEL_RUN]}")

    def with_image(self, info: ImageInfo) -> ContainerPlan:
        return dataclasses.replace(self, image_info=info)


def run_id(run_name: str, token: str) -> str:
    """`<run directory's name>-<token>`: the run's, and unique on the runtime (two matrices have cells
    of the same name; the label that ends a run's containers must find no other run's)."""
    slug = _NAME_BAD.sub("-", run_name).strip("-.") or "run"
    return f"{slug[:80]}-{token}"


def serve_args_inside(argv: Sequence[str]) -> tuple[str, ...]:
    """The plan's argv after `vllm serve`, bound to 0.0.0.0:8000 inside the container (the only change)."""
    if len(argv) < 3 or argv[1] != "serve":
        raise ValueError(f"not a `vllm serve` argv: {list(argv)[:3]}")
    args = list(argv[2:])
    for flag, value in (("--host", CONTAINER_HOST), ("--port", str(CONTAINER_PORT))):
        index = args.index(flag)  # build_plan always sets both; a profile may not (profile.OWNED_FLAGS)
        args[index + 1] = value
    return tuple(args)


def gpu_flags(runtime: RuntimeName, gpus: Sequence[int] | None) -> list[str]:
    """The GPUs of the cell: docker `--gpus '"device=0,1"'`, podman CDI `--device nvidia.com/gpu=N`."""
    if gpus is None:
        return []
    if runtime == "docker":
        # docker reads --gpus as CSV: a list of devices must be quoted inside the value itself.
        return ["--gpus", f'"device={",".join(str(g) for g in gpus)}"' if gpus else "all"]
    return [w for g in gpus for w in ("--device", f"nvidia.com/gpu={g}")] or [
        "--device",
        "nvidia.com/gpu=all",
    ]


def publish_flag(host: str, port: int) -> str:
    """`127.0.0.1:PORT:8000`: the container's port on the asked host address only."""
    address = f"[{host}]" if ":" in host else host
    return f"{address}:{port}:{CONTAINER_PORT}"


def run_plan(plan: ContainerPlan) -> LaunchPlan:
    """The `RUNTIME run ...` line of a container plan. Pure: the same plan gives the same argv.

    Secrets go by name (`-e HF_TOKEN`), their values in the returned plan's env, which the supervisor
    gives the client; the API key (VLLM_API_KEY) always goes so, its value set by the supervisor.
    """
    serve, runtime = plan.serve, plan.runtime
    if LABEL_RUN not in plan.labels:
        raise ValueError(f"the labels must carry {LABEL_RUN}")
    argv = [runtime.path, "run", "--name", plan.name]
    for key, value in plan.labels.items():
        argv += ["--label", f"{key}={value}"]
    argv += ["--init", "--ipc=host", "--pull=never", "-p", publish_flag(serve.host, serve.port)]
    if runtime.name == "podman":
        argv += ["--network", PODMAN_NETWORK]
    mounts = [Mount(plan.hf_hub_cache, CONTAINER_HF_HUB_CACHE, read_only=False)] if plan.hf_hub_cache else []
    mounts += [Mount(plan.vllm_cache, CONTAINER_VLLM_CACHE, read_only=False)] if plan.vllm_cache else []
    mounts += [*plan.mounts, *(plan.image_info.mounts if plan.image_info else ())]
    seen: set[str] = set()
    for mount in mounts:
        if mount.container not in seen:  # one directory, one mount: the first named wins
            seen.add(mount.container)
            argv += ["-v", mount.flag()]
    by_name: dict[str, str] = {}
    secrets = set(serve.secrets)
    for key, value in serve.env.items():
        if key == GPU_SELECTION:
            continue
        if value in secrets or is_secret_name(key):
            by_name[key] = value
        else:
            argv += ["-e", f"{key}={value}"]
    if plan.hf_hub_cache:  # after the profile's: the mount is where it is
        argv += ["-e", f"HF_HUB_CACHE={CONTAINER_HF_HUB_CACHE}"]
    if plan.hf_offline:
        argv += ["-e", "HF_HUB_OFFLINE=1"]
    by_name.update(plan.secret_env)
    for key in [*by_name, "VLLM_API_KEY"]:
        argv += ["-e", key]  # by name: the value comes from the client's environment
    argv += gpu_flags(runtime.name, plan.gpus)
    argv += [plan.image, *plan.serve_args]
    return LaunchPlan(
        argv=tuple(argv),
        env=by_name,
        display_env={k: v for k, v in serve.display_env.items() if k != GPU_SELECTION},
        missing_env=serve.missing_env,
        secrets=tuple(s for s in (*serve.secrets, *by_name.values()) if s),
        served_model_name=serve.served_model_name,
        host=serve.host,
        port=serve.port,
    )


def gpu_indices(cell_devices: str | None, detected: Sequence[int]) -> tuple[int, ...]:
    """The host GPUs a container gets: its cell's CUDA_VISIBLE_DEVICES, else every GPU found."""
    if cell_devices:
        return tuple(int(d) for d in cell_devices.split(",") if d.strip().isdigit())
    return tuple(detected)


# -- the runtime's answers (I/O) -------------------------------------------------------------------


def _run(argv: Sequence[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(f"`{' '.join(argv[:3])}` did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise PreflightError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None


def _daemon_answers(docker: str) -> bool:
    """True when docker's daemon answers (a docker client alone, as on this CI machine, does not)."""
    try:
        done = subprocess.run(
            [docker, "version", "--format", "{{.Server.Version}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_runtime(
    name: str | None,
    *,
    which: Callable[[str], str | None] = shutil.which,
    daemon_answers: Callable[[str], bool] = _daemon_answers,
) -> Runtime:
    """The runtime asked for, or (None) the one on PATH, docker first: docker whose daemon does not
    answer gives way to podman."""
    if name is not None:
        if name not in RUNTIMES:
            raise UsageError(f"--container-runtime {name!r}: not docker or podman")
        path = which(name)
        if path is None:
            raise PreflightError(
                f"--container-runtime {name}: `{name}` is not on PATH",
                hint="make install-podman installs podman (Debian)" if name == "podman" else None,
            )
        return Runtime(name, path)
    docker, podman = which("docker"), which("podman")
    if docker and (podman is None or daemon_answers(docker)):
        return Runtime("docker", docker)
    if podman:
        return Runtime("podman", podman)
    raise PreflightError(
        "--image needs docker or podman, and neither is on PATH",
        hint="install one (make install-podman installs podman), or run vLLM on the host without --image",
    )


def parse_image_inspect(ref: str, text: str) -> ImageInfo:
    """`RUNTIME image inspect REF` (JSON, docker's or podman's) -> id, digest, borrowed host mounts."""
    try:
        data = json.loads(text)
        item = data[0] if isinstance(data, list) else data
        config = item.get("Config") or {}
        labels = config.get("Labels") or item.get("Labels") or {}
    except (ValueError, IndexError, AttributeError, TypeError):
        raise PreflightError(f"image {ref}: the runtime's inspect output is not JSON it knows") from None
    repo_digests = [d for d in item.get("RepoDigests") or [] if "@" in d]
    digest = item.get("Digest") or (repo_digests[0].split("@", 1)[1] if repo_digests else None)
    return ImageInfo(ref=ref, id=str(item.get("Id", "")), digest=digest, mounts=parse_mounts(ref, labels))


def parse_mounts(ref: str, labels: Mapping[str, str]) -> tuple[Mount, ...]:
    """The image's `org.mmdemo.host-mounts` label: [[host, container], ...], each read-only."""
    raw = labels.get(MOUNTS_LABEL)
    if not raw:
        return ()
    try:
        pairs = json.loads(raw)
        return tuple(Mount(str(host), str(inside)) for host, inside in pairs)
    except (ValueError, TypeError):
        raise PreflightError(
            f"image {ref}: label {MOUNTS_LABEL} is not a JSON list of [host, container]"
        ) from None


def inspect_image(runtime: Runtime, image: str) -> ImageInfo | None:
    """The local image, or None when the runtime does not have it."""
    done = _run([runtime.path, "image", "inspect", image])
    if done.returncode != 0:
        log.debug("%s image inspect %s: %s", runtime.name, image, done.stderr.strip())
        return None
    return parse_image_inspect(image, done.stdout)


def pull(runtime: Runtime, image: str, timeout_s: float = 3600.0) -> None:
    """`RUNTIME pull IMAGE`, or a refusal with the runtime's own last line."""
    done = _run([runtime.path, "pull", image], timeout_s=timeout_s)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise PreflightError(
            f"image {image} is not here and `{runtime.name} pull` failed: {last}",
            hint="check the name and tag, or build it (`make image-cpu` builds localhost/mmdemo/vllm-cpu:test)",
        )


def ensure_image(runtime: Runtime, image: str) -> ImageInfo:
    """The image's info, pulled first when the runtime does not have it; its borrowed host paths checked."""
    info = inspect_image(runtime, image)
    if info is None:
        pull(runtime, image)
        info = inspect_image(runtime, image)
        if info is None:
            raise PreflightError(
                f"image {image}: pulled, yet `{runtime.name} image inspect` does not find it"
            )
    check_borrowed(info)
    return info


def check_borrowed(info: ImageInfo) -> None:
    """Refuse an image that borrows a host directory this machine lacks (built on another one)."""
    for mount in info.mounts:
        if not os.path.exists(mount.host):
            raise PreflightError(
                f"image {info.ref} borrows {mount.host} from the host (label {MOUNTS_LABEL}), and it is missing",
                hint="rebuild the image on this machine: make image-cpu",
            )


def runtime_version(runtime: Runtime) -> str | None:
    """`podman version 4.3.1` -> '4.3.1' (the client's version); None when it does not say."""
    try:
        done = _run([runtime.path, "--version"], timeout_s=10.0)
    except PreflightError:
        return None
    words = done.stdout.split()
    return words[2].rstrip(",") if done.returncode == 0 and len(words) >= 3 else None


def local_images(runtime: Runtime, contains: str = "vllm") -> list[str]:
    """Local images whose name holds `contains` ('REPO:TAG (ID)'), for `doctor`."""
    try:
        done = _run([runtime.path, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"], timeout_s=20.0)
    except PreflightError:
        return []
    if done.returncode != 0:
        return []
    shown = []
    for line in done.stdout.splitlines():
        ref, _, image_id = line.partition(" ")
        if contains in ref:
            shown.append(f"{ref} ({image_id[:12]})")
    return shown


def script_image(runtime: Runtime, info: ImageInfo, hub_cache: str | None) -> runner.Image:
    """The image as vllm/runner.py runs vLLM's scripts in it: its id, the host directories it borrows,
    the host's HF hub cache (read-only there)."""
    borrowed = tuple((m.host, m.container) for m in info.mounts)
    return runner.Image(runtime.path, runtime.name, info.ref, info.id, borrowed, hf_hub_cache=hub_cache)


def vllm_in_image(runtime: Runtime, image: str, hub_cache: str | None) -> runner.VllmInfo:
    """The image's vLLM (pulled first if need be), for the model probe, the budget and validate."""
    return runner.in_image(script_image(runtime, ensure_image(runtime, image), hub_cache))
