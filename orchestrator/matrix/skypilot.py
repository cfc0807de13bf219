"""`mmdemo matrix --emit skypilot`: the same matrix as SkyPilot tasks, one per GPU class.

A SkyPilot cluster has one accelerator type, so each GPU class is its own task: several classes
make a pipeline (a multi-document YAML for `sky jobs launch`), one class a plain task for
`sky launch`. Each task's `run` starts a Ray of its own on the task's nodes (SkyPilot's internal
Ray is not for user jobs), declaring the `mmdemo-gpu:<class>` resource the ray engine places on,
and runs `mmdemo matrix --engine ray` there; the matrix directory goes to a mounted bucket when
one is given. HF_TOKEN is a secret: its value is never written into the YAML.

With `--image`, each task runs in that image (`image_id: docker:IMAGE`, one task per GPU class and
image) and uses the image's own vLLM: `setup` installs mmdemo alone, not vLLM.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import PreflightError, UsageError
from orchestrator.gpu import CPU, GPU_CLASSES
from orchestrator.matrix.cells import Capacity, plan_cells
from orchestrator.options import Options

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

_RUN = """\
set -e
export PATH=~/mmdemo-venv/bin:$PATH
HEAD_IP=$(echo "$SKYPILOT_NODE_IPS" | head -n1)
RESOURCES="{{\\"{prefix}{gpu_class}\\": $SKYPILOT_NUM_GPUS_PER_NODE}}"
if [ "$SKYPILOT_NODE_RANK" = "0" ]; then
  ray start --head --port 6379 --disable-usage-stats --num-gpus "$SKYPILOT_NUM_GPUS_PER_NODE" --resources "$RESOURCES"
  export RAY_ADDRESS=127.0.0.1:6379
  mmdemo matrix {profiles}--gpu {gpu_class} --engine ray --runs-dir {runs_dir}{flags}
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
        "name": f"mmdemo-matrix-{gpu_class.lower()}" + (f"-{_slug(image).lower()}" if image else ""),
        "workdir": ".",  # launch from the mmdemo checkout: setup installs it from there
        "resources": resources,
        "num_nodes": nodes,
        "secrets": {"HF_TOKEN": None},  # passed at launch (--secret HF_TOKEN), never written here
        "setup": _SETUP_IN_IMAGE if image else _SETUP,
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


def _slug(image: str | None) -> str:
    """An image reference as a name part: `vllm/vllm-openai:v0.11.0` -> `vllm-vllm-openai-v0.11.0`."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", image or "").strip("-")


def emit(
    names: Sequence[str],
    classes: Sequence[str],
    opts: Options,
    *,
    bucket: str | None,
    nodes: int = 1,
    images: Sequence[str] = (),
) -> str:
    """The YAML: one task for one class (and image), else a pipeline of one task per class and image."""
    if not classes:
        raise UsageError("--emit skypilot needs the GPU classes to ask the cloud for: --gpu H100,L4,...")
    for gpu_class in classes:
        accelerator(gpu_class)
    plenty = {c: Capacity(8, GPU_CLASSES[c] * 1024) for c in classes}
    cells = plan_cells(names, classes, plenty, profiles_dir=opts.profiles_dir, where="the task")
    docs: list[dict[str, Any]] = []
    for gpu_class in classes:
        mine = [c for c in cells if c.gpu_class == gpu_class and c.runnable]
        if not mine:
            continue  # every profile is skipped on this class: no machine to rent for it
        gpus = max(c.gpu_count for c in mine)
        each: list[str | None] = [*images] or [None]
        for image in each:
            docs.append(task(gpu_class, list(names), gpus, opts, bucket=bucket, nodes=nodes, image=image))
    if not docs:
        raise UsageError(f"no profile can run on {', '.join(classes)}: nothing to emit")
    head = [
        "# mmdemo matrix as SkyPilot task(s), one per GPU class: "
        + ("`sky launch` it." if len(docs) == 1 else "a pipeline for `sky jobs launch`."),
        "# Launch from the mmdemo checkout (workdir: .), with --secret HF_TOKEN for gated models.",
        f"# Results: {'bucket ' + bucket + ' (mounted at ' + OUT + ')' if bucket else 'on the cluster in ~/mmdemo-runs (rsync CLUSTER:~/mmdemo-runs/ runs/)'}",
    ]
    if len(docs) > 1:
        docs.insert(0, {"name": "mmdemo-matrix"})
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=200)
    return "\n".join(head) + "\n" + body


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (setup, run) as literal blocks, so the YAML reads like a shell script."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def launch(text: str, runs_dir: Path) -> int:
    """Write the YAML under runs_dir and hand it to the `sky` CLI; its exit code."""
    sky = shutil.which("sky")
    if sky is None:
        raise PreflightError("the `sky` command was not found", hint="pip install 'mmdemo[sky]' (SkyPilot)")
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / "matrix.sky.yaml"
    path.write_text(text, encoding="utf-8")
    pipeline = text.count("\n---") > 0
    argv = [sky, "jobs", "launch", "--yes", str(path)] if pipeline else [sky, "launch", "--yes", str(path)]
    if os.environ.get("HF_TOKEN"):  # SkyPilot reads the value from our environment; it never hits the file
        argv += ["--secret", "HF_TOKEN"]
    return subprocess.run(argv, check=False).returncode
