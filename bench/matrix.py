"""Scenario 6, matrix: `mmdemo matrix` on fake GPUs with the fake server, against the ideal schedule.

Seven cells on a fake box of two H100s and one L4: five profiles whose fake servers take 0.4 to
1.6 s to be ready, one of them needing both H100s. mmdemo's wall time for the whole matrix is
compared with the sum of the cells' own times (running them one by one) and with the ideal
makespan of the same cells (their measured times) on the same GPUs: the best greedy schedule
over every order of the cells. Target: wall <= 1.1x the ideal makespan.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

from bench import fake
from bench.result import Row, Scenario, Settings, median
from orchestrator.core.options import Options
from orchestrator.gpus.detect import Gpu
from orchestrator.matrix.local import LocalEngine
from orchestrator.matrix.record import CellRecord
from orchestrator.matrix.run import run_matrix

NAME = "7 matrix"
TARGET_RATIO = 1.1
# profile -> (seconds until the fake is ready, tensor parallel size)
PROFILES = {"m-a": (1.6, 1), "m-b": (1.2, 1), "m-c": (0.8, 1), "m-d": (0.4, 1), "m-tp2": (1.0, 2)}
GPUS = [("NVIDIA H100 80GB HBM3", 81559), ("NVIDIA H100 80GB HBM3", 81559), ("NVIDIA L4", 23034)]


def write_profiles(work: Path) -> list[str]:
    """One fake profile per entry of PROFILES, each with its own start time (through the fake's env)."""
    paths = []
    for name, (ready_s, tp) in PROFILES.items():
        path = work / "matrix-profiles" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        variants = "  H100: {}\n" + ("  L4: {}\n" if tp == 1 else "")
        path.write_text(
            f"model: fake/{name}\nserved_model_name: {name}\n"
            f"serve: {{max_model_len: 2048, tensor_parallel_size: {tp}}}\n"
            f'env: {{FAKE_VLLM_READY_AFTER: "{ready_s}"}}\nready_timeout_s: 30\n'
            f"variants:\n{variants}demos: [text-only]\n"
        )
        paths.append(str(path))
    return paths


def ideal_makespan(cells: Sequence[CellRecord], gpus: dict[str, int]) -> float:
    """The shortest greedy schedule of these cells (their measured times), per GPU class over every order."""
    return max(_best_order([c for c in cells if c.gpu_class == cls], n) for cls, n in gpus.items())


def _best_order(cells: Sequence[CellRecord], gpus: int) -> float:
    best = float("inf")
    for order in itertools.permutations(cells):
        free = [0.0] * gpus  # when each GPU is next free
        end = 0.0
        for cell in order:
            slots = sorted(free)
            start = slots[cell.gpu_count - 1]  # the earliest moment enough GPUs are free
            finish = start + (cell.duration_s or 0.0)
            free = [finish] * cell.gpu_count + slots[cell.gpu_count :]
            end = max(end, finish)
        best = min(best, end)
    return best


def one_matrix(settings: Settings, profiles: list[str], n: int) -> tuple[float, float, float]:
    """(wall, sum of the cells' times, ideal makespan) of one matrix run."""
    box = [Gpu(i, name, memory, memory - 500) for i, (name, memory) in enumerate(GPUS)]
    opts = Options(
        vllm_bin=str(fake.launcher(settings.work)),
        offline=True,
        prefetch=False,  # the fake needs no weights
        grace_s=2.0,
        runs_dir=settings.work / f"matrix-runs-{n}",
        cache_dir=settings.assets,
    )
    outcome = run_matrix(profiles, [], opts, LocalEngine(lambda: box))
    ran = [c for c in outcome.record.cells if c.status != "skipped"]
    if outcome.exit_code != 0 or len(ran) != 9:
        raise RuntimeError(f"the matrix did not pass: {outcome.record.model_dump_json(indent=1)}")
    return (
        outcome.record.wall_s,
        sum(c.duration_s or 0.0 for c in ran),
        ideal_makespan(ran, {"H100": 2, "L4": 1}),
    )


def run(settings: Settings) -> Scenario:
    """Run the matrix a few times; medians of the wall time, the serial sum and the ideal makespan."""
    os.environ.setdefault("MMDEMO_CACHE_DIR", str(settings.cache))
    profiles = write_profiles(settings.work)
    samples = [one_matrix(settings, profiles, n) for n in range(settings.count(3))]
    walls, sums, ideals = (list(column) for column in zip(*samples, strict=True))
    ratios = [w / i for w, i in zip(walls, ideals, strict=True)]
    wall, serial, ideal = median(walls), median(sums), median(ideals)
    cells = "9 cells (5 profiles x H100/L4, 1 skipped), 2 H100 + 1 L4, fake ready 0.4-1.6 s"
    return Scenario(
        NAME,
        [
            Row(
                NAME,
                f"wall vs ideal makespan ({cells})",
                wall,
                ideal,
                target=f"ratio <= {TARGET_RATIO}",
                met=median(ratios) <= TARGET_RATIO,
            ),
            Row(NAME, "wall vs the cells one by one (sum of the cells' times)", wall, serial),
        ],
        raw={"wall_s": walls, "sum_s": sums, "ideal_s": ideals, "ratio": ratios},
    )
