"""Scenario 3, teardown: from the end of the last demo to "all tagged processes gone and port free".

Two fakes with two workers each (EngineCore, one TP worker): a well-behaved one, compared with the
time a plain Popen of the same fake takes to exit after SIGTERM to its group, measured in the same
run; and one that ignores SIGTERM, stopped with a short grace, compared with grace + 0.5 s.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from bench import fake
from bench.procs import spawned
from bench.result import Row, Scenario, Settings, median
from orchestrator.demos.chat import Media, build_requests, run_demos
from orchestrator.launch.ports import port_is_free
from orchestrator.media import AssetStore
from orchestrator.profile.schema import ChatType

NAME = "3 teardown"
WORKERS = "2"
GRACE_S = 1.0
WELL_BEHAVED_EXTRA_S = 0.3
IGNORING_EXTRA_S = 0.5


def mmdemo_teardown(settings: Settings, grace_s: float, ignore_sigterm: bool) -> tuple[float, bool]:
    """End of the last demo -> stop() returned; and whether the tree is really gone and the port free."""
    marker = settings.work / f"marker-{uuid.uuid4().hex}"
    text = build_requests(fake.demos(ChatType.TEXT), Media(AssetStore(settings.assets, offline=True), str))
    with fake.server(
        settings.work,
        grace_s=grace_s,
        workers=WORKERS,
        marker_file=str(marker),
        ignore_sigterm="1" if ignore_sigterm else "",
    ) as server:
        server.wait_ready(20.0)
        fake.wait_for_file(marker)  # workers spawned, signal handlers installed
        model = server.plan.served_model_name
        results = run_demos(
            text,
            base_url=server.base_url,
            api_key=server.api_key,
            model=model,
            concurrency=None,
            timeout_s=30.0,
        )
        if not all(r.passed for r in results):
            raise RuntimeError(f"the demo failed before teardown: {results[0].error}")
        server.stop()
        gone = time.monotonic()
        clean = not server.census() and port_is_free(server.plan.host, server.port)
    return gone - max(r.ended_at for r in results), clean


def own_exit(settings: Settings) -> float:
    """A plain Popen of the same fake: SIGTERM to its group -> the fake has exited."""
    plan = fake.plan(
        settings.work, workers=WORKERS, ready_file=str(settings.work / f"ready-{uuid.uuid4().hex}")
    )
    with spawned(plan.argv, {**os.environ, **plan.env}) as proc:
        fake.wait_for_file(Path(plan.env["FAKE_VLLM_READY_FILE"]))
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20.0)
        return time.monotonic() - t0


def run(settings: Settings) -> Scenario:
    n = settings.count(5)
    ours: list[float] = []
    plain: list[float] = []
    ignoring: list[float] = []
    clean: list[bool] = []
    for _ in range(n):
        took, ok = mmdemo_teardown(settings, grace_s=5.0, ignore_sigterm=False)
        ours.append(took)
        clean.append(ok)
        plain.append(own_exit(settings))
        took, ok = mmdemo_teardown(settings, grace_s=GRACE_S, ignore_sigterm=True)
        ignoring.append(took)
        clean.append(ok)
    gone = all(clean)
    note = "" if gone else "a process or the port survived a teardown"
    rows = [
        Row(
            NAME,
            "well-behaved fake: mmdemo vs the fake's own exit",
            median(ours),
            median(plain),
            target=f"delta <= {WELL_BEHAVED_EXTRA_S:g} s",
            met=gone and median(ours) - median(plain) <= WELL_BEHAVED_EXTRA_S,
            note=note,
        ),
        Row(
            NAME,
            f"SIGTERM-ignoring fake: mmdemo vs grace {GRACE_S:g} s",
            median(ignoring),
            GRACE_S,
            target=f"delta <= {IGNORING_EXTRA_S:g} s",
            met=gone and median(ignoring) - GRACE_S <= IGNORING_EXTRA_S,
            note=note,
        ),
    ]
    raw = {"mmdemo_s": ours, "own_exit_s": plain, "ignoring_s": ignoring, "all_gone_and_port_free": clean}
    return Scenario(NAME, rows, raw)
