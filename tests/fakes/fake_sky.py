"""A fake `sky` for `mmdemo matrix --launch`: `sky jobs launch --yes --name NAME FILE [--secret HF_TOKEN]`.

Each call is recorded under FAKE_SKY_CALLS (argv, the task file, when it started and ended, and how
many launches had started when it passed the barrier): it waits until FAKE_SKY_TOGETHER calls have
started, so a test sees whether the launches really overlap. Then it prints what the managed job
would: for each task in the file, the matrix directory its `run` makes (every profile of the run
line passed on the task's class), shipped by the real `python -m orchestrator.matrix.gather ship`,
each line prefixed the way SkyPilot prefixes a job's output. FAKE_SKY_FAIL=CLASS: that class's job
prints an error and exits 1 without results. Run by a wrapper the test writes (its venv's Python).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

from orchestrator.matrix import gather
from orchestrator.matrix import record as record_mod
from orchestrator.matrix.record import CellRecord, MatrixRecord


def main() -> int:
    argv = sys.argv[1:]
    if argv[:2] != ["jobs", "launch"]:
        print(f"fake sky: not emulated: {argv}", file=sys.stderr)
        return 2
    name = argv[argv.index("--name") + 1]
    path = Path(next(a for a in argv[2:] if a.endswith(".yaml")))
    calls = Path(os.environ["FAKE_SKY_CALLS"])
    calls.mkdir(parents=True, exist_ok=True)
    started = time.time()
    (calls / f"{name}.started").touch()
    together = int(os.environ.get("FAKE_SKY_TOGETHER", "1"))
    deadline = time.monotonic() + 30
    while len(list(calls.glob("*.started"))) < together and time.monotonic() < deadline:
        time.sleep(0.02)
    saw = len(list(calls.glob("*.started")))
    code = 0
    for task in yaml.safe_load_all(path.read_text()):
        if set(task) <= {"name", "execution", "inter_connection"}:
            continue  # a pipeline's header
        code = max(code, job(task))
    time.sleep(0.3)  # a job takes a while: the launches overlap only if they started together
    record = {"argv": argv, "task": path.read_text(), "started": started, "ended": time.time(), "saw": saw}
    (calls / f"{name}.json").write_text(json.dumps(record))
    return code


def job(task: dict[str, object]) -> int:
    """Print what the task's run would: its class's matrix directory, shipped through the log."""
    prefix = f"({task['name']}, pid=4242) "
    line = next(x for x in str(task["run"]).splitlines() if x.strip().startswith("mmdemo matrix"))
    words = shlex.split(line.replace("|| code=$?", ""))
    gpu_class = words[words.index("--gpu") + 1]
    if os.environ.get("FAKE_SKY_FAIL") == gpu_class:
        print(f"{prefix}ERROR: the cloud has no {gpu_class} left", flush=True)
        return 1
    profiles = [Path(w).stem for w in words[2 : words.index("--gpu")]]
    with tempfile.TemporaryDirectory() as runs:
        matrix_dir = Path(runs) / "20261202-120000-matrix"
        cells = []
        for profile in profiles:
            directory = f"{profile}-{gpu_class}"
            (matrix_dir / directory).mkdir(parents=True)
            (matrix_dir / directory / "report.md").write_text(f"# {profile} on {gpu_class}: passed\n")
            cells.append(
                CellRecord(
                    profile=profile,
                    gpu_class=gpu_class,
                    variant=gpu_class,
                    status="passed",
                    exit_code=0,
                    gpus=[0],
                    node=f"sky-{gpu_class.lower()}-head",
                    port=40000 + len(cells),
                    demos_passed=1,
                    demos_total=1,
                    directory=directory,
                )
            )
        record_mod.write_all(
            matrix_dir,
            MatrixRecord(
                mmdemo_version="fake",
                engine="ray",
                status="passed",
                exit_code=0,
                profiles=profiles,
                gpu_classes=[gpu_class],
                started_at="2026-12-02T12:00:00",
                finished_at="2026-12-02T12:01:00",
                wall_s=60.0,
                cells=cells,
            ),
        )
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            gather.main(["ship", runs, gpu_class])
    print(f"{prefix}matrix   {len(cells)} cell(s) on ray", flush=True)
    for shipped in out.getvalue().splitlines():
        print(f"\x1b[36m{prefix}\x1b[0m{shipped}", flush=True)  # SkyPilot colours the prefix
    return 0


if __name__ == "__main__":
    sys.exit(main())
