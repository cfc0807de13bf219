"""Scenario 2, demo wall time: all six chat types with every variant against a fake with a fixed latency.

mmdemo sends its 11 requests at once; the target compares that wall time with the slowest single
request (each request's latency when sent alone, median over iterations). The upstream flow runs
the example client once per chat type, one process each, one request at a time, each process
listing the models and downloading its media from the loopback asset server again.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import fake
from bench.procs import timed_run
from bench.result import Row, Scenario, Settings, median
from orchestrator.demos.chat import DEFAULT_ASSETS, DemoRequest, DemoResult, Media, build_requests, run_demos
from orchestrator.launch.server import Server
from orchestrator.media import AssetServer, AssetStore

NAME = "2 demos"
TARGET_RATIO = 1.3
UPSTREAM = Path(__file__).with_name("upstream_client.py")


def send(server: Server, requests: Sequence[DemoRequest], concurrency: int | None) -> list[DemoResult]:
    """mmdemo's runner; any failed request makes the figure meaningless, so it stops the benchmark."""
    results = run_demos(
        requests,
        base_url=server.base_url,
        api_key=server.api_key,
        model=server.plan.served_model_name,
        concurrency=concurrency,
        timeout_s=60.0,
    )
    failed = [f"{r.name}: {r.error}" for r in results if not r.passed]
    if failed:
        raise RuntimeError(f"demo requests failed against the fake: {failed}")
    return results


def upstream_flow(server: Server, media: Media) -> float:
    """Wall time of the example client run once per chat type, one after the other."""
    t0 = time.monotonic()
    for chat_type, keys in DEFAULT_ASSETS.items():
        urls = {key: media.url(media.store.get(key)) for key in keys}
        argv = [sys.executable, str(UPSTREAM), "-c", chat_type.value, "--base-url", server.base_url]
        argv += ["--api-key", server.api_key, "--media", json.dumps(urls)]
        _, code, out = timed_run(argv)
        if code != 0:
            raise RuntimeError(f"the upstream client failed for {chat_type.value}: {out[-2000:]}")
    return time.monotonic() - t0


def run(settings: Settings) -> Scenario:
    n = settings.count(3)
    store = AssetStore(settings.assets, offline=True)
    walls: list[float] = []
    upstream: list[float] = []
    alone: dict[str, list[float]] = {}
    with AssetServer(store.root) as assets:
        media = Media(store=store, url=assets.url_for)
        requests = build_requests(fake.demos(), media)
        latency = f"{settings.latency_s:g}"
        with fake.server(settings.work, media_dir=store.root.resolve(), latency=latency) as server:
            server.wait_ready(20.0)
            import openai  # noqa: F401  warm: the import is charged to scenario 4, a whole run

            for _ in range(n):
                t0 = time.monotonic()
                send(server, requests, concurrency=None)
                walls.append(time.monotonic() - t0)
                for result in send(server, requests, concurrency=1):
                    alone.setdefault(result.name, []).append(result.latency_s)
                upstream.append(upstream_flow(server, media))
    slowest = max(median(samples) for samples in alone.values())
    wall = median(walls)
    rows = [
        Row(
            NAME,
            "wall, mmdemo (11 at once) vs slowest single request",
            wall,
            slowest,
            target=f"ratio <= {TARGET_RATIO:g}",
            met=wall <= TARGET_RATIO * slowest,
            note=f"latency {settings.latency_s:g} s per request, {n} runs",
        ),
        Row(
            NAME,
            "wall, mmdemo vs upstream flow (6 client runs)",
            wall,
            median(upstream),
            note="upstream: 10 requests (no file:// variant), 6 processes",
        ),
    ]
    raw = {"latency_s": settings.latency_s, "mmdemo_wall_s": walls, "upstream_wall_s": upstream}
    raw["alone_latency_s"] = alone
    return Scenario(NAME, rows, raw)
