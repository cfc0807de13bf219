"""Scenario 6, quick start: time to ready of the real CPU `vllm serve` for cpu-tiny-omni, three ways.

- compile: the profile with `enforce_eager: false` (vLLM's default path: torch.compile)
- profile: the profile as shipped (`enforce_eager: true`)
- quick-start: the compile settings through `command.quick_start` (eager, -O0, --max-num-seqs 16)
Each is the same `build_plan` argv; ready is /health 200 and the model listed in /v1/models.
Ratios are against the compile run of the same benchmark. One launch each (they take ~20-60 s).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import requests

from bench import real
from bench.procs import spawned
from bench.result import Row, Scenario, Settings
from orchestrator.core.paths import assets_dir
from orchestrator.launch.command import build_plan, quick_start
from orchestrator.profile.schema import ResolvedProfile, ServeSettings, load_profile

NAME = "6 quick start"
TIMEOUT_S = 600.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def variants() -> dict[str, ResolvedProfile]:
    """The three launches, from the shipped profile."""
    shipped = load_profile(real.PROFILE).resolve("cpu")
    compiled = shipped.serve.model_copy(update={"enforce_eager": False})
    quick, _ = quick_start(compiled)
    return {
        "compile": _with(shipped, compiled),
        "profile": shipped,
        "quick-start": _with(shipped, quick),
    }


def _with(resolved: ResolvedProfile, serve: ServeSettings) -> ResolvedProfile:
    return replace(resolved, serve=serve)


def time_to_ready(resolved: ResolvedProfile, log: Path) -> float:
    """Launch, poll every 20 ms until ready; seconds from spawn to ready. The group is ended after."""
    port = _port()
    plan = build_plan(
        resolved, vllm_bin=str(real.vllm_bin()), port=port, media_dir=str(assets_dir()), user_env=os.environ
    )
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        t0 = time.monotonic()
        with spawned(plan.argv, {**os.environ, **plan.env}, stdout=out.fileno(), grace_s=15.0) as proc:
            deadline = t0 + TIMEOUT_S
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited {proc.returncode} before ready; see {log}")
                try:
                    if requests.get(f"{base}/health", timeout=1).status_code == 200:
                        models = requests.get(f"{base}/v1/models", timeout=1).json()
                        if any(m.get("id") == plan.served_model_name for m in models.get("data", [])):
                            return time.monotonic() - t0
                except requests.RequestException:
                    pass
                time.sleep(0.02)
    raise RuntimeError(f"not ready within {TIMEOUT_S:g} s; see {log}")


def run(settings: Settings) -> Scenario:
    why = real.unavailable()
    if why is not None:
        return Scenario(NAME, [Row(NAME, f"skipped: {why}", None)], skipped=why)
    launches = variants()
    flags = {name: " ".join(r.serve.extra_args) or "-" for name, r in launches.items()}
    secs = {name: time_to_ready(r, settings.work / f"quick-{name}.log") for name, r in launches.items()}
    rows = [
        Row(NAME, "time to ready: profile as shipped (eager) vs compile", secs["profile"], secs["compile"]),
        Row(NAME, "time to ready: --quick-start vs compile", secs["quick-start"], secs["compile"]),
        Row(NAME, "time to ready: --quick-start vs profile as shipped", secs["quick-start"], secs["profile"]),
    ]
    return Scenario(NAME, rows, {"seconds": secs, "extra_args": flags})
