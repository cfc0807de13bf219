"""One matrix cell: one session over a launched target on the cell's GPUs (the one adapter)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.core.errors import InternalError, MMDemoError
from orchestrator.core.options import Options
from orchestrator.gpus.detect import Gpu, platform_of
from orchestrator.matrix.cells import Cell
from orchestrator.matrix.record import CellRecord
from orchestrator.session.context import QuietEvents, Stop
from orchestrator.session.run import run_session
from orchestrator.session.targets import Launched

log = logging.getLogger(__name__)
_STATUS_CODES = {"passed": 0, "failed": 1, "interrupted": 130}
VISIBLE_DEVICES = ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")


def not_run(cell: Cell, status: str, exit_code: int, reason: str) -> CellRecord:
    """The record of a cell that never started: skipped, refused, or interrupted before its turn."""
    return CellRecord(
        profile=cell.profile,
        gpu_class=cell.gpu_class,
        variant=cell.variant,
        status=status,
        exit_code=exit_code,
        reason=reason,
        gpu_count=cell.gpu_count,
        platform=platform_of(cell.gpu_class),
        image=cell.image,
    )


def run_cell(
    cell: Cell,
    opts: Options,
    cell_dir: Path,
    *,
    gpus: Sequence[Gpu] = (),
    port: int | None = None,
    server_env: Mapping[str, str] | None = None,
    stop: Stop | None = None,
    node: str | None = None,
    relative_to: Path | None = None,
) -> CellRecord:
    """Run one cell (its profile's variant on the given GPUs) into cell_dir; never raises for a run error."""
    assert cell.variant is not None
    cell_dir.mkdir(parents=True, exist_ok=True)
    cell_opts = replace(
        opts,
        profile=cell.profile_path,
        gpu=cell.variant,
        port=port,
        run_dir=cell_dir,
        server_env=dict(server_env or {}),
        image=cell.image or opts.image,
    )
    gpus = list(gpus)
    t0 = time.monotonic()
    try:
        target = Launched(cell_opts, probe_gpus=lambda: gpus)
        outcome = run_session(target, cell_opts, QuietEvents(), stop=stop)
    except MMDemoError as exc:  # refused before the run had a report (profile, variant, demos)
        error: MMDemoError = exc
    except Exception as exc:  # a bug in mmdemo: the cell says so, the other cells go on
        log.debug("cell %s failed unexpectedly", cell.key, exc_info=True)
        error = InternalError(exc)
    else:
        record = _from_report(
            cell,
            outcome.record.model_dump(),
            exit_code=outcome.exit_code,
            cell_dir=cell_dir,
            relative_to=relative_to,
            gpus=gpus,
            node=node,
        )
        return record.model_copy(update={"duration_s": round(time.monotonic() - t0, 3)})
    record = not_run(cell, "error", error.exit_code, str(error))
    return record.model_copy(
        update={"gpus": [g.index for g in gpus], "node": node, "visible_devices": dict(server_env or {})}
    )


def _from_report(
    cell: Cell,
    rep: Mapping[str, Any],
    *,
    exit_code: int,
    cell_dir: Path,
    relative_to: Path | None,
    gpus: Sequence[Gpu],
    node: str | None,
) -> CellRecord:
    server = rep.get("server") or {}
    teardown = rep.get("teardown") or {}
    summary = rep.get("summary") or {}
    error = rep.get("error") or {}
    status = rep.get("status", "error")
    reason = error.get("message")
    if status == "failed" and reason is None:
        reason = f"{summary.get('failed', 0)} of {summary.get('total', 0)} demo requests failed"
        first = next((d for d in rep.get("demos") or [] if d.get("status") != "passed"), None)
        if first is not None:  # the server's own words for the first failure: the grid's evidence
            reason += f"; {first.get('name')}: {' '.join(str(first.get('error')).split())[:200]}"
    env = server.get("env") or {}
    container = rep.get("container") or {}
    demos = rep.get("demos") or []
    ttfts = sorted(d["ttft_s"] for d in demos if d.get("ttft_s") is not None)
    return CellRecord(
        profile=cell.profile,
        gpu_class=cell.gpu_class,
        variant=rep.get("variant", cell.variant),
        status=status,
        exit_code=exit_code if exit_code else _STATUS_CODES.get(status, 0),
        reason=reason,
        gpu_count=cell.gpu_count,
        gpus=[g.index for g in gpus],
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        platform=platform_of(cell.gpu_class),
        visible_devices={k: v for k, v in env.items() if k in VISIBLE_DEVICES},
        node=node,
        port=_port(server.get("base_url")),
        time_to_ready_s=server.get("ready_s"),
        demos_passed=summary.get("passed", 0),
        demos_total=summary.get("total", 0),
        teardown_remaining=teardown.get("remaining"),
        gpu_released=teardown.get("gpu_released"),
        directory=str(cell_dir.relative_to(relative_to)) if relative_to else str(cell_dir),
        image=cell.image or container.get("image"),
        image_digest=container.get("digest"),
        vllm_version=(rep.get("vllm") or {}).get("version"),
        demo_statuses={d["name"]: d["status"] for d in demos},
        task_statuses=task_statuses(demos),
        median_ttft_s=ttfts[len(ttfts) // 2] if ttfts else None,
        containers_remaining=teardown.get("containers_remaining"),
    )


def _port(base_url: str | None) -> int | None:
    import urllib.parse

    try:
        return urllib.parse.urlsplit(base_url).port if base_url else None
    except ValueError:
        return None


def task_statuses(demos: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each task past chat, and chat (every chat demo): passed when all its demos passed, else failed."""
    out: dict[str, str] = {}
    for demo in demos:
        kind = demo.get("task") or "chat"
        passed = demo.get("status") == "passed" and out.get(kind, "passed") == "passed"
        out[kind] = "passed" if passed else "failed"
    return out
