"""Scenario 10, budget: what counting each demo's tokens costs, per tiny profile, and what it costs the launch.

The check runs one process in vLLM's Python (the serve parser, the engine config, the GPU-less
renderer, each demo's media through the model's own processor); its floor is importing vLLM, timed
in the same run. Cold counts from nothing; cached reads one file (a second run of the same profile).
The launch row: `mmdemo run cpu-tiny-omni` with no count cached, command -> `vllm serve` started; the
count goes on beside vLLM's start, so it must not hold the launch back.
"""

from __future__ import annotations

import statistics
import time
import uuid

from bench import fake, real
from bench.overhead import clean_env, keep_answers, mmdemo_argv, seconds_to_launch
from bench.procs import timed_run
from bench.result import Row, Scenario, Settings
from orchestrator.budget import count as budget
from orchestrator.core.errors import MMDemoError
from orchestrator.core.paths import models_dir
from orchestrator.model import tiny as models
from orchestrator.profile.schema import load_profile
from orchestrator.vllm.backend import vllm_python

NAME = "10 budget"
PROFILES = ("cpu-tiny-omni", "cpu-tiny-llava", "cpu-tiny-phi3v", "cpu-tiny-ultravox", "cpu-tiny-qwen2vl")
CACHED_TARGET_S = 1.0
EXTRA_TARGET_S = 15.0  # cold, beyond importing vLLM: well under what one vLLM start costs
LAUNCH_TARGET_S = 1.0  # command -> `vllm serve`, the count cold


def run(settings: Settings) -> Scenario:
    why = real.unavailable()
    profiles = [load_profile(name) for name in PROFILES]
    for profile in profiles:
        local = profile.local_model
        if why is None and local is not None and not models.is_built(local):
            try:
                models.build(local, str(real.vllm_bin()))
            except MMDemoError as exc:
                why = f"the tiny model {local} is not built and building it failed: {exc}"
    if why is not None:
        return Scenario(NAME, [Row(NAME, f"skipped: {why}", None)], skipped=why)
    python = str(vllm_python(str(real.vllm_bin())))
    floor = []
    for _ in range(settings.iterations or 1):
        wall, code, out = timed_run([python, "-c", "import vllm"], None, cwd=fake.REPO, timeout_s=300)
        if code != 0:
            raise RuntimeError(f"importing vLLM failed (exit {code}): {out[-2000:]}")
        floor.append(wall)
    floor_s = statistics.median(floor)
    rows = [Row(NAME, "the floor: python -c 'import vllm'", floor_s)]
    raw: dict[str, object] = {"import_s": floor}
    for profile in profiles:
        cold, cached = [], []
        for _ in range(settings.iterations or 1):
            cold.append(_timed(profile, use_cache=False))
            cached.append(_timed(profile, use_cache=True))
        cold_s, cached_s = statistics.median(cold), statistics.median(cached)
        rows += [
            Row(NAME, f"{profile.name}: cold, vs importing vLLM", cold_s, floor_s,
                f"<= import + {EXTRA_TARGET_S:g} s", cold_s <= floor_s + EXTRA_TARGET_S),
            Row(NAME, f"{profile.name}: cached, vs cold", cached_s, cold_s, f"<= {CACHED_TARGET_S:g} s",
                cached_s <= CACHED_TARGET_S),
        ]  # fmt: skip
        raw[profile.name] = {"cold_s": cold, "cached_s": cached}
    launch = [_launch_with_a_cold_count(settings) for _ in range(settings.iterations or 3)]
    launch_s = statistics.median(launch)
    rows.append(
        Row(NAME, "command -> `vllm serve` started, the count cold (cpu-tiny-omni), vs importing vLLM", launch_s,
            floor_s, f"<= {LAUNCH_TARGET_S:g} s", launch_s <= LAUNCH_TARGET_S, note="the tiny model built")
    )  # fmt: skip
    raw["launch_cold_count_s"] = launch
    return Scenario(NAME, rows, raw)


def _launch_with_a_cold_count(settings: Settings) -> float:
    """Seconds from `mmdemo run cpu-tiny-omni --offline` to `vllm serve` started, no count cached (the built
    tiny models linked, and the `vllm` command's answer copied, into an otherwise empty cache); then Ctrl-C."""
    cache = settings.work / f"cache-{uuid.uuid4().hex}"
    cache.mkdir()
    keep_answers(settings.cache, cache)
    (cache / "models").symlink_to(models_dir())
    runs = settings.work / f"runs-{uuid.uuid4().hex}"
    argv = [*mmdemo_argv(), "run", "cpu-tiny-omni", "--offline", "--vllm-bin", str(real.vllm_bin())]
    argv += ["--runs-dir", str(runs), "--grace", "5"]
    env = {**clean_env(settings), "MMDEMO_CACHE_DIR": str(cache)}
    return seconds_to_launch(argv, env, runs)


def _timed(profile: object, *, use_cache: bool) -> float:
    start = time.monotonic()
    found = budget.check_profiles([profile], str(real.vllm_bin()), use_cache=use_cache)  # type: ignore[list-item]
    wall = time.monotonic() - start
    bad = [f.line() for f in found if f.status != "ok"]
    if bad:
        raise RuntimeError(f"the budget check of {bad[0]}")
    return wall
