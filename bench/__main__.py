"""`python -m bench [--fast] [--iterations N] [--out DIR]`: run the scenarios, print the table, write the JSON."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from bench import (
    budget,
    container,
    demos,
    derivation,
    matrix,
    overhead,
    quickstart,
    readiness,
    real,
    report,
    teardown,
)
from bench.procs import marked, sweep
from bench.result import Row, Scenario, Settings

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS: list[tuple[Callable[[Settings], Scenario], bool]] = [
    (readiness.run, True),
    (demos.run, True),
    (teardown.run, True),
    (overhead.run, True),
    (real.run, False),  # not fast: a real CPU vLLM, about two minutes
    (quickstart.run, False),  # not fast: three real CPU vLLM starts
    (matrix.run, True),
    (derivation.run, False),  # not fast: the real vLLM's probe, cold and cached
    (container.run_bench, True),  # the fake in a container; without --fast, the real CPU vLLM too
    (budget.run, False),  # not fast: vLLM's renderer on each tiny profile, cold and cached
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--fast", action="store_true", help="skip scenario 5 (the real CPU vLLM)")
    parser.add_argument("--iterations", type=int, help="iterations of every scenario (default: each its own)")
    parser.add_argument("--latency", type=float, default=0.5, help="the fake's per-request latency (s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where <date>.json goes ({RESULTS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; the exit code is 1 when a target is missed or a process was left running."""
    args = build_parser().parse_args(argv)
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:  # started in the background: as from a terminal,
        signal.signal(signal.SIGINT, signal.default_int_handler)  # so the Ctrl-C it sends is not ignored
    console = report.console()
    started = datetime.now()
    scenarios: list[Scenario] = []
    with marked() as session, tempfile.TemporaryDirectory(prefix="mmdemo-bench-") as tmp:
        settings = Settings(Path(tmp), args.iterations, args.latency, fast=args.fast)
        try:
            report.prepare_assets(settings)
            for run, fast in SCENARIOS:
                if args.fast and not fast:
                    continue
                t0 = time.monotonic()
                console.print(f"running {run.__module__.rsplit('.', 1)[1]} …", highlight=False)
                scenarios.append(run(settings))
                scenarios[-1].raw["scenario_wall_s"] = time.monotonic() - t0
        finally:
            leaked = sweep(session)
    if args.fast:
        for name in (real.NAME, quickstart.NAME, derivation.NAME, budget.NAME):
            scenarios.append(Scenario(name, [Row(name, "skipped: --fast", None)], skipped="--fast"))
    data = report.to_json(scenarios, started, vars(args) | {"out": str(args.out)}, leaked)
    console.print(report.table(scenarios))
    path = report.write(args.out, started, data)
    console.print(f"{data['targets']['met']} target(s) met, {data['targets']['missed']} missed; {path}")
    if leaked:
        console.print(f"[red]processes left running (killed now):[/] {leaked}")
        return 1
    return 1 if data["targets"]["missed"] else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
