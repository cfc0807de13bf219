"""Scenario 1, readiness lag: from the fake's first 200 on /health to the instant the waiter says "ready".

Three waiters, each on its own launch of the same fake with the same random start delay: mmdemo
(`Server.wait_ready`), a 0.5 s poller (vLLM's test harness style) and the manual flow (a shell loop
of curl and `sleep 1`). The start delay is drawn per iteration so no poller is phase-locked with
the fake; the order of the three rotates so drift hurts none of them more than the others.
"""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from collections.abc import Callable

from bench import fake
from bench.procs import spawned
from bench.result import Row, Scenario, Settings, median
from orchestrator.launch.server import Server

NAME = "1 readiness"
SEED = 6
READY_AFTER_S = (0.2, 1.2)
TARGET_S = 0.050
TIMEOUT_S = 20.0


def mmdemo_waiter(server: Server) -> float:
    return server.wait_ready(TIMEOUT_S).ready_at


def poller_waiter(server: Server) -> float:
    """`requests.get(/health)` every 0.5 s until it answers 200, as vLLM's RemoteOpenAIServer does."""
    import requests

    url = f"http://{server.host}:{server.port}/health"
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=TIMEOUT_S).status_code == 200:
                return time.monotonic()
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError("the 0.5 s poller timed out")


def curl_waiter(server: Server) -> float:
    """The manual flow: a bash loop of curl with `sleep 1`; "ready" is the moment the loop exits."""
    url = f"http://{server.host}:{server.port}/health"
    loop = f"until curl -sf {url} >/dev/null; do sleep 1; done"
    with spawned(["bash", "-c", loop]) as proc:
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the curl loop timed out") from None
        return time.monotonic()


WAITERS: dict[str, Callable[[Server], float]] = {
    "mmdemo": mmdemo_waiter,
    "0.5 s poller": poller_waiter,
    "curl + sleep 1": curl_waiter,
}


def lag(settings: Settings, waiter: Callable[[Server], float], ready_after: float) -> float:
    """One launch: seconds from the fake's first 200 on /health to the waiter's "ready"."""
    ready_file = settings.work / f"ready-{uuid.uuid4().hex}"
    with fake.server(settings.work, ready_after=f"{ready_after:.3f}", ready_file=str(ready_file)) as server:
        said_ready = waiter(server)
        return said_ready - fake.wait_for_file(ready_file)


def run(settings: Settings) -> Scenario:
    n = settings.count(20)
    rng = random.Random(SEED)
    names = list(WAITERS)
    lags: dict[str, list[float]] = {name: [] for name in names}
    delays = []
    for i in range(n):
        delay = rng.uniform(*READY_AFTER_S)
        delays.append(delay)
        for name in names[i % 3 :] + names[: i % 3]:
            lags[name].append(lag(settings, WAITERS[name], delay))
    ours = lags["mmdemo"]
    rows = []
    for name in names[1:]:
        rows.append(
            Row(
                NAME,
                f"median lag, mmdemo vs {name}",
                median(ours),
                median(lags[name]),
                target=f"<= {TARGET_S * 1000:.0f} ms",
                met=median(ours) <= TARGET_S,
                note=f"{n} launches each",
            )
        )
    for name in names[1:]:
        rows.append(Row(NAME, f"max lag, mmdemo vs {name}", max(ours), max(lags[name])))
    return Scenario(NAME, rows, {"ready_after_s": delays, "lag_s": lags})
