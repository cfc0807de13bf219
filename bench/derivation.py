"""Scenario 8, derivation: `mmdemo init` of a tiny model directory with an empty probe cache, then cached.

Cold pays vLLM's probe (a process importing vLLM and asking about the model, ~10 s); cached reads
one file. Each cold run gets an empty MMDEMO_CACHE_DIR of its own (the tiny model directory comes
from the usual cache); the cached runs reuse the last one. The whole CLI is timed.
"""

from __future__ import annotations

import os
import statistics

from bench import fake, real
from bench.overhead import mmdemo_argv
from bench.procs import timed_run
from bench.result import Row, Scenario, Settings
from orchestrator.core.errors import MMDemoError
from orchestrator.model import tiny as models

NAME = "8 derivation"
MODEL = "tiny-llava"
COLD_TARGET_S, CACHED_TARGET_S = 20.0, 1.0
TIMEOUT_S = 300.0


def run(settings: Settings) -> Scenario:
    why = real.unavailable()
    if why is None and not models.is_built(MODEL):
        try:
            models.build(MODEL, str(real.vllm_bin()))
        except MMDemoError as exc:
            why = f"the tiny model {MODEL} is not built and building it failed: {exc}"
    if why is not None:
        return Scenario(NAME, [Row(NAME, f"skipped: {why}", None)], skipped=why)
    argv = [
        *mmdemo_argv(),
        "init",
        str(models.model_dir(MODEL)),
        "--gpu",
        "cpu",
        "--vllm-bin",
        str(real.vllm_bin()),
    ]
    cold: list[float] = []
    cached: list[float] = []
    for index in range(settings.iterations or 1):
        env = {
            **os.environ,
            "MMDEMO_CACHE_DIR": str(settings.work / f"derive-{index}"),
            "PYTHONUNBUFFERED": "1",
        }
        cold.append(_timed(argv, env))
        cached += [_timed(argv, env) for _ in range(3)]
    cold_s, cached_s = statistics.median(cold), statistics.median(cached)
    rows = [
        Row(NAME, f"mmdemo init {MODEL}: cold (vLLM's probe)", cold_s, None, f"<= {COLD_TARGET_S:g} s",
            cold_s <= COLD_TARGET_S),
        Row(NAME, f"mmdemo init {MODEL}: cached vs cold", cached_s, cold_s, f"<= {CACHED_TARGET_S:g} s",
            cached_s <= CACHED_TARGET_S),
    ]  # fmt: skip
    return Scenario(NAME, rows, {"cold_s": cold, "cached_s": cached})


def _timed(argv: list[str], env: dict[str, str]) -> float:
    wall, code, out = timed_run(argv, env, cwd=fake.REPO, timeout_s=TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"mmdemo init {MODEL} failed (exit {code}): {out[-2000:]}")
    return wall
