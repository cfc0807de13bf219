"""`mmdemo matrix --emit skypilot`: the same matrix as SkyPilot tasks, one per GPU class.

A SkyPilot cluster has one accelerator type, so each GPU class is its own task. One class is a
plain task for `sky launch`. Several classes are a job group (SkyPilot's multi-document YAML with
`execution: parallel`): their clusters start together, so the matrix takes as long as its slowest
class, not the sum; `--pipeline` gives the old serial pipeline instead. `--launch` (sky_engine.py)
submits one managed job per class at once and gathers their results into one matrix directory.
Each task's `run` starts a Ray of its own on the task's nodes (SkyPilot's internal Ray is not for
user jobs), declaring the `mmdemo-gpu:<class>` resource the ray engine places on, runs `mmdemo
matrix --engine ray` there, then prints its matrix directory into the job's log (gather.py); the
matrix directory also goes to a mounted bucket when one is given. AMD classes install vLLM's ROCm
wheels (PyPI's vllm is the CUDA build). HF_TOKEN is a secret: its value is never written into the YAML.

With `--image` (emitted tasks only), each task runs in that image (`image_id: docker:IMAGE`, one task
per GPU class and image) and uses the image's own vLLM: `setup` installs mmdemo alone, not vLLM.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from typing import Any

import yaml

from orchestrator.core.errors import UsageError
from orchestrator.core.options import Options
from orchestrator.gpus.classes import ROCM_CLASSES
from orchestrator.gpus.detect import CPU, GPU_CLASSES, canonical_class
from orchestrator.matrix.cells import Capacity, plan_cells

# mmdemo GPU class -> SkyPilot accelerator name (SkyPilot's "A100" is the 40 GB card).
SKY_ACCELERATORS: dict[str, str] = {
    "B200": "B200",
    "H200": "H200",
    "H100": "H100",
    "GH200": "GH200",
    "A100-80GB": "A100-80GB",
    "A100-40GB": "A100",
    "L40S": "L40S",
    "A6000": "A6000",
    "L4": "L4",
    "A10G": "A10G",
    "RTX4090": "RTX4090",
    "T4": "T4",
    # AMD Instinct: SkyPilot's catalog names the MI300X so (RunPod, Kubernetes labels); the others alike.
    "MI325X": "MI325X",
    "MI300X": "MI300X",
    "MI250X": "MI250X",
    "MI210": "MI210",
}
RESOURCE_PREFIX = "mmdemo-gpu:"  # the ray engine's custom resource per GPU class
OUT = "/mmdemo-out"

_SETUP = """\
set -e
python3 -m pip install --quiet uv
python3 -m uv venv --allow-existing ~/mmdemo-venv
python3 -m uv pip install --python ~/mmdemo-venv/bin/python -e '.[ray]' 'vllm[audio]'
"""

# In an image: vLLM is the image's (its `vllm` stays on PATH after the venv's bin); mmdemo alone here.
_SETUP_IN_IMAGE = """\
set -e
python3 -m pip install --quiet uv
python3 -m uv venv --allow-existing ~/mmdemo-venv
python3 -m uv pip install --python ~/mmdemo-venv/bin/python -e '.[ray]'
"""
# vLLM's ROCm wheels (docs/getting_started/installation/gpu.rocm.inc.md): Python 3.12 only, from
# wheels.vllm.ai; uv's default index strategy asks that index first, so PyPI's CUDA wheel loses.
_SETUP_ROCM = """\
set -e
python3 -m pip install --quiet uv
python3 -m uv venv --allow-existing --python 3.12 ~/mmdemo-venv
python3 -m uv pip install --python ~/mmdemo-venv/bin/python -e '.[ray]' 'vllm[audio]' --extra-index-url {index}
"""
ROCM_WHEELS = "https://wheels.vllm.ai/rocm/"

_RUN = """\
set -e
export PATH=~/mmdemo-venv/bin:$PATH
HEAD_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n1)
RESOURCES="{{\\"{prefix}{gpu_class}\\": $SKYPILOT_NUM_GPUS_PER_NODE}}"
if [ "$SKYPILOT_NODE_RANK" = "0" ]; then
  ray start --head --port 6379 --disable-usage-stats --num-gpus "$SKYPILOT_NUM_GPUS_PER_NODE" --resources "$RESOURCES"
  export RAY_ADDRESS=127.0.0.1:6379
  code=0
  mmdemo matrix {profiles}--gpu {gpu_class} --engine ray --runs-dir {runs_dir}{flags} || code=$?
  python -m orchestrator.matrix.gather ship {runs_dir} {gpu_class} || true
  exit $code
else
  ray start --address "$HEAD_IP:6379" --disable-usage-stats --num-gpus "$SKYPILOT_NUM_GPUS_PER_NODE" --resources "$RESOURCES" --block
fi
"""


def accelerator(gpu_class: str) -> str:
    """SkyPilot's name for a GPU class; SkyPilot itself accepts any name offline, so mmdemo checks."""
    if gpu_class == CPU:
        raise UsageError("--emit skypilot: cpu is not a GPU class; SkyPilot tasks here are for GPUs")
    try:
        return SKY_ACCELERATORS[gpu_class]
    except KeyError:
        raise UsageError(
            f"--emit skypilot: unknown GPU class {gpu_class!r}", hint=f"known: {', '.join(SKY_ACCELERATORS)}"
        ) from None


def task(
    gpu_class: str,
    profiles: Sequence[str],
    gpus: int,
    opts: Options,
    *,
    bucket: str | None,
    nodes: int,
    image: str | None = None,
) -> dict[str, Any]:
    """One SkyPilot task (as its YAML mapping) running the matrix's cells of one GPU class (in one image)."""
    where = f"{gpu_class}/{_slug(image)}" if image else gpu_class
    runs_dir = f"{OUT}/{where}" if bucket else f"~/mmdemo-runs/{where}"
    flags = ""
    if opts.offline:
        flags += " --offline"
    if opts.only:
        flags += " --only " + ",".join(c.value for c in opts.only)
    if opts.timeout_s:
        flags += f" --timeout {opts.timeout_s:g}"
    resources: dict[str, Any] = {"accelerators": f"{accelerator(gpu_class)}:{gpus}"}
    if image:
        resources["image_id"] = f"docker:{image}"
    config: dict[str, Any] = {
        "name": task_name(gpu_class, image),
        "workdir": ".",  # launch from the mmdemo checkout: setup installs it from there
        "resources": resources,
        "num_nodes": nodes,
        "secrets": {"HF_TOKEN": None},  # passed at launch (--secret HF_TOKEN), never written here
        "setup": _SETUP_IN_IMAGE
        if image
        else _SETUP_ROCM.format(index=ROCM_WHEELS)
        if gpu_class in ROCM_CLASSES
        else _SETUP,
        "run": _RUN.format(
            prefix=RESOURCE_PREFIX,
            gpu_class=gpu_class,
            profiles="".join(shlex.quote(p) + " " for p in profiles),
            runs_dir=runs_dir,
            flags=flags,
        ),
    }
    if bucket:
        config["file_mounts"] = {OUT: {"name": bucket, "mode": "MOUNT"}}
    return config


def task_name(gpu_class: str, image: str | None = None) -> str:
    """The task's (and its managed job's) name for a GPU class (and an image)."""
    return f"mmdemo-matrix-{gpu_class.lower()}" + (f"-{_slug(image).lower()}" if image else "")


def _slug(image: str | None) -> str:
    """An image reference as a name part: `vllm/vllm-openai:v0.11.0` -> `vllm-vllm-openai-v0.11.0`."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", image or "").strip("-")


def tasks(
    names: Sequence[str],
    classes: Sequence[str],
    opts: Options,
    *,
    bucket: str | None,
    nodes: int = 1,
    images: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """One task per GPU class (and image) that can run any of the profiles (a class nothing runs on
    rents nothing), keyed by the class, or by `CLASS IMAGE` with images."""
    if not classes:
        raise UsageError("--emit skypilot needs the GPU classes to ask the cloud for: --gpu H100,L4,...")
    classes = [canonical_class(c) or c for c in classes]
    for gpu_class in classes:
        accelerator(gpu_class)
    plenty = {c: Capacity(8, GPU_CLASSES[c] * 1024) for c in classes}
    cells = plan_cells(names, classes, plenty, profiles_dir=opts.profiles_dir, where="the task")
    out = {}
    for gpu_class in classes:
        mine = [c for c in cells if c.gpu_class == gpu_class and c.runnable]
        if mine:
            gpus = max(c.gpu_count for c in mine)
            each: list[str | None] = [*images] or [None]
            for image in each:
                key = f"{gpu_class} {image}" if image else gpu_class
                out[key] = task(gpu_class, list(names), gpus, opts, bucket=bucket, nodes=nodes, image=image)
    if not out:
        raise UsageError(f"no profile can run on {', '.join(classes)}: nothing to emit")
    return out


def emit(
    names: Sequence[str],
    classes: Sequence[str],
    opts: Options,
    *,
    bucket: str | None,
    nodes: int = 1,
    pipeline: bool = False,
    images: Sequence[str] = (),
) -> str:
    """The YAML: one task for one class; else a job group (in parallel), or with pipeline=True a pipeline."""
    found = tasks(names, classes, opts, bucket=bucket, nodes=nodes, images=images)
    docs: list[dict[str, Any]] = list(found.values())
    if len(docs) == 1:
        how = "`sky launch` it (or `sky jobs launch` for a managed job)."
    elif pipeline:
        how = "a pipeline: `sky jobs launch` runs the classes one after another."
        docs.insert(0, {"name": "mmdemo-matrix"})
    else:
        how = "a job group: `sky jobs launch` starts every class at once (mmdemo matrix --launch: one job per class)."
        # inter_connection false: the classes need not reach each other, so they may land on different clouds.
        docs.insert(0, {"name": "mmdemo-matrix", "execution": "parallel", "inter_connection": False})
    head = [
        "# mmdemo matrix as SkyPilot task(s), one per GPU class: " + how,
        "# Launch from the mmdemo checkout (workdir: .), with --secret HF_TOKEN for gated models.",
        f"# Results: {'bucket ' + bucket + ' (mounted at ' + OUT + ') and ' if bucket else ''}each job's log (mmdemo matrix --launch unpacks them)",
    ]
    return "\n".join(head) + "\n" + dump(docs)


def dump(docs: Sequence[dict[str, Any]]) -> str:
    """YAML documents as SkyPilot reads them, shell scripts as literal blocks."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=200)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as literal blocks, so the YAML reads like a shell script."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
