"""Scenario 4, overhead: a whole `mmdemo run` minus the fake's own time for the same work; CLI start.

The fake is instantly ready and answers at once, so what is left of a run is mmdemo itself:
imports, the checks (the `vllm` command asked which Python runs it), assets, the report and teardown. The fake's own
time: launch it, wait for its READY_FILE, send the same requests directly (the 11 demos, the 10 repeats of
those with media and the worst case, as a run sends them), SIGTERM, wait.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench import fake
from bench.procs import spawned, timed_run
from bench.result import Row, Scenario, Settings, median
from orchestrator.demos.chat import Media, build_requests, repeats, worst_case
from orchestrator.media import AssetServer, AssetStore
from orchestrator.profile.schema import load_profile

NAME = "4 overhead"
RUN_TARGET_S = 0.3
CLI_TARGET_S = 0.25
LAUNCH_TARGET_S = 0.5


def mmdemo_argv() -> list[str]:
    """The installed `mmdemo` script next to this interpreter, else `python -m orchestrator`."""
    script = Path(sys.executable).parent / "mmdemo"
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def clean_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_VLLM_")}
    return {**env, "MMDEMO_CACHE_DIR": str(settings.cache), "PYTHONUNBUFFERED": "1"}


def mmdemo_run(settings: Settings, vllm: Path) -> float:
    argv = [*mmdemo_argv(), "run", str(fake.PROFILE), "--vllm-bin", str(vllm), "--offline", "--no-prefetch"]
    argv += ["--runs-dir", str(settings.work / "runs"), "--gpu", "cpu"]
    wall, code, out = timed_run(argv, clean_env(settings), cwd=fake.REPO)
    if code != 0:
        raise RuntimeError(f"mmdemo run against the fake failed (exit {code}): {out[-2000:]}")
    return wall


def own_time(settings: Settings, bodies: list[bytes], media_dir: Path) -> float:
    """The fake alone: launch, READY_FILE, the same requests one by one on one connection, SIGTERM, exit."""
    ready = settings.work / f"ready-{uuid.uuid4().hex}"
    plan = fake.plan(settings.work, media_dir, ready_file=str(ready))
    t0 = time.monotonic()
    with spawned(plan.argv, {**clean_env(settings), **plan.env}) as proc:
        fake.wait_for_file(ready)
        conn = http.client.HTTPConnection(plan.host, plan.port, timeout=30)
        try:
            for body in bodies:
                conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"the fake answered {answer.status} to a demo request")
        finally:
            conn.close()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20.0)
        return time.monotonic() - t0


@contextlib.contextmanager
def hanging_mirror() -> Iterator[str]:
    """An asset host that accepts connections and never answers (a proxy or firewall that drops)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def command_to_launch(settings: Settings, vllm: Path, mirror: str | None, *, first: bool = False) -> float:
    """Seconds from starting `mmdemo run` to `vllm serve` started (its log opened), then Ctrl-C. The
    cache has no asset (every one would be downloaded) but, as on any run after the first, the `vllm`
    command's answer kept from the runs before (`first`: nothing at all, a first run ever)."""
    cache = settings.work / f"cache-{uuid.uuid4().hex}"
    if not first:
        keep_answers(settings.cache, cache)
    runs = settings.work / f"runs-{uuid.uuid4().hex}"
    argv = [*mmdemo_argv(), "run", str(fake.PROFILE), "--vllm-bin", str(vllm), "--runs-dir", str(runs)]
    argv += ["--gpu", "cpu", "--grace", "2", "--no-prefetch"] + ([] if mirror else ["--offline"])
    env = {**clean_env(settings), "MMDEMO_CACHE_DIR": str(cache)}
    if mirror:
        env["MMDEMO_ASSET_MIRROR"] = mirror
    return seconds_to_launch(argv, env, runs)


def keep_answers(warm: Path, cache: Path) -> None:
    """Copy what `warm` (a cache earlier runs used) knows of the `vllm` commands into `cache`."""
    if (warm / "backends").is_dir():
        shutil.copytree(warm / "backends", cache / "backends")


def seconds_to_launch(argv: list[str], env: dict[str, str], runs: Path, wait_s: float = 120.0) -> float:
    """Seconds from starting `argv` (an `mmdemo run --runs-dir RUNS`) to its `vllm serve` started (the
    server log opened); then Ctrl-C, and the run awaited."""
    t0 = time.monotonic()
    with spawned(argv, env) as proc:
        while not list(runs.glob("*/server.log")):
            if proc.poll() is not None:
                raise RuntimeError(f"mmdemo run ended (exit {proc.returncode}) before it launched the server")
            time.sleep(0.002)
        launched = time.monotonic() - t0
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=wait_s)
    return launched


IMPORT_OPENAI = "python -c 'import openai'"
# The openai SDK imports aiohttp whenever it is installed (~0.2 s here); the ray/sky extras bring it.
AIOHTTP_NOTE = "; aiohttp installed, so the SDK loads it" if importlib.util.find_spec("aiohttp") else ""


def cli_start(n: int) -> dict[str, list[float]]:
    """Wall times of `mmdemo --help`, `mmdemo plan ...`, importing the openai SDK and `python -c pass`,
    interleaved. The SDK's import is the floor of a whole run: the demos cannot be sent without it."""
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "mmdemo --help": [*mmdemo_argv(), "--help"],
        "mmdemo plan phi-3.5-vision --gpu H100": [*mmdemo_argv(), "plan", "phi-3.5-vision", "--gpu", "H100"],
        IMPORT_OPENAI: [sys.executable, "-c", "import openai"],
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(n):
        for name, argv in commands.items():
            wall, code, out = timed_run(argv, cwd=fake.REPO)
            if code != 0:
                raise RuntimeError(f"`{name}` failed (exit {code}): {out[-500:]}")
            samples[name].append(wall)
    return samples


def slowest_imports(top: int = 8) -> list[tuple[str, float]]:
    """The modules with the largest cumulative import time in `mmdemo plan` (python -X importtime)."""
    argv = [sys.executable, "-X", "importtime", "-m", "orchestrator", "plan", "phi-3.5-vision"]
    _, _, out = timed_run([*argv, "--gpu", "H100"], cwd=fake.REPO)
    found = []
    for line in out.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            found.append((match.group(3), int(match.group(1)) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:top]


def run(settings: Settings) -> Scenario:
    n = settings.count(5)
    vllm = fake.launcher(settings.work)
    store = AssetStore(settings.assets, offline=True)
    runs: list[float] = []
    own: list[float] = []
    with AssetServer(store.root) as assets:
        demos = build_requests(fake.demos(), Media(store=store, url=assets.url_for))
        limits = load_profile(str(fake.PROFILE)).resolve("cpu").serve.limit_mm_per_prompt
        worst = worst_case(demos, {str(k): v for k, v in (limits or {}).items()})
        requests = [*demos, *repeats(demos), *([worst] if worst else [])]
        bodies = [
            json.dumps({"model": "fake-omni", "messages": r.messages, "max_completion_tokens": 128}).encode()
            for r in requests
        ]
        for _ in range(n):
            runs.append(mmdemo_run(settings, vllm))
            own.append(own_time(settings, bodies, store.root.resolve()))
    with hanging_mirror() as mirror:
        hanging = [command_to_launch(settings, vllm, mirror) for _ in range(n)]
    offline = [command_to_launch(settings, vllm, None) for _ in range(n)]
    first = [command_to_launch(settings, vllm, None, first=True) for _ in range(n)]
    cli = cli_start(max(n, 5))
    python = median(cli["python -c pass"])
    floor = median(cli[IMPORT_OPENAI]) - python  # no demo goes out before the SDK is imported
    rows = [
        Row(
            NAME,
            "whole `mmdemo run` vs the fake's own time",
            median(runs),
            median(own),
            target=f"delta <= floor ({floor:.2f} s) + {RUN_TARGET_S:g} s",
            met=median(runs) - median(own) <= floor + RUN_TARGET_S,
            note=f"zero-latency fake, {len(requests)} requests, {n} runs" + AIOHTTP_NOTE,
        ),
        Row(
            NAME,
            "command -> `vllm serve` started: asset host that never answers vs --offline",
            median(hanging),
            median(offline),
            target=f"<= {LAUNCH_TARGET_S:g} s",
            met=median(hanging) <= LAUNCH_TARGET_S,
            note=f"no asset cached, the `vllm` command's answer kept, {n} runs each",
        ),
        # No target: once per `vllm` command and environment, the command is asked which Python runs it.
        Row(
            NAME,
            "command -> `vllm serve` started: a first run ever (nothing kept) vs --offline",
            median(first),
            median(offline),
            note=f"empty cache, {n} runs",
        ),
    ]
    for name in ("mmdemo --help", "mmdemo plan phi-3.5-vision --gpu H100"):
        value = median(cli[name])
        rows.append(
            Row(
                NAME,
                f"CLI start: `{name}` vs `python -c pass`",
                value,
                python,
                target=f"delta <= {CLI_TARGET_S:g} s",
                met=value - python <= CLI_TARGET_S,
            )
        )
    # No target: what any client built on the SDK pays before its first request.
    rows.append(
        Row(NAME, f"the floor: `{IMPORT_OPENAI}` vs `python -c pass`", median(cli[IMPORT_OPENAI]), python)
    )
    imports = slowest_imports()
    raw = {
        "launch_first_s": first,
        "launch_hanging_s": hanging,
        "launch_offline_s": offline,
        "mmdemo_run_s": runs,
        "fake_own_s": own,
        "cli_start_s": cli,
        "slowest_imports_s": imports,
    }
    return Scenario(NAME, rows, raw)
