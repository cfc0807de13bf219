"""The benchmark code runs end to end and writes its JSON: a tiny iteration count, no timed assertions."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main

SCENARIOS = {
    "1 readiness",
    "2 demos",
    "3 teardown",
    "4 overhead",
    "5 real server",
    "6 quick start",
    "7 matrix",
    "8 derivation",
    "9 container",
    "10 budget",
}
ROW_KEYS = {"scenario", "metric", "value", "baseline", "delta", "ratio", "target", "met", "unit", "note"}


def test_fast_bench_writes_every_row_and_the_machine(tmp_path: Path) -> None:
    code = main(["--fast", "--iterations", "1", "--latency", "0.05", "--out", str(tmp_path)])
    written = sorted(tmp_path.glob("*.json"))
    assert len(written) == 1
    assert written[0].with_suffix(".md").is_file()
    data = json.loads(written[0].read_text())

    assert {"date", "machine", "args", "targets", "rows", "raw", "skipped", "leaked_processes"} <= set(data)
    assert {"cpu", "cores", "python", "vllm"} <= set(data["machine"])
    assert data["leaked_processes"] == []
    skipped = {k: v for k, v in data["skipped"].items() if k != "9 container" or v != "no podman"}
    assert skipped == {
        "5 real server": "--fast", "6 quick start": "--fast", "8 derivation": "--fast", "10 budget": "--fast",
    }  # fmt: skip
    assert {row["scenario"] for row in data["rows"]} == SCENARIOS
    for row in data["rows"]:
        assert set(row) == ROW_KEYS
        if row["target"] is not None:
            assert isinstance(row["met"], bool), row
            assert isinstance(row["value"], float), row
    judged = [row["met"] for row in data["rows"] if row["met"] is not None]
    assert data["targets"] == {"met": sum(judged), "missed": len(judged) - sum(judged)}
    assert code == (1 if data["targets"]["missed"] else 0)  # a missed target fails the bench (CI can run it)
    assert len([r for r in data["rows"] if r["scenario"] == "1 readiness"]) == 4

    raw = data["raw"]
    assert set(raw) == SCENARIOS
    assert all(len(lags) == 1 for lags in raw["1 readiness"]["lag_s"].values())
    assert all(raw["3 teardown"]["all_gone_and_port_free"])
    assert set(raw["4 overhead"]["cli_start_s"]) == {
        "python -c pass",
        "mmdemo --help",
        "mmdemo plan phi-3.5-vision --gpu H100",
        "python -c 'import openai'",
    }
    floor = [r for r in data["rows"] if r["metric"].startswith("the floor: ")]
    assert len(floor) == 1
    assert floor[0]["target"] is None
    assert floor[0]["value"] > floor[0]["baseline"]  # importing the SDK costs more than an empty python
