"""What a scenario returns: rows (mmdemo's figure, its baseline, the target) and the raw samples."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One figure: mmdemo's value beside a baseline from the same run, and the target it must meet."""

    scenario: str
    metric: str
    value: float | None
    baseline: float | None = None
    target: str | None = None
    met: bool | None = None
    unit: str = "s"
    note: str = ""

    @property
    def delta(self) -> float | None:
        """value - baseline, when both exist."""
        if self.value is None or self.baseline is None:
            return None
        return self.value - self.baseline

    @property
    def ratio(self) -> float | None:
        """value / baseline, when both exist and the baseline is not zero."""
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def as_dict(self) -> dict[str, Any]:
        """The row for the JSON file, delta and ratio included, rounded to the microsecond."""
        out: dict[str, Any] = {
            "scenario": self.scenario,
            "metric": self.metric,
            "value": self.value,
            "baseline": self.baseline,
            "delta": self.delta,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "unit": self.unit,
            "note": self.note,
        }
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


@dataclass
class Scenario:
    """A scenario's rows and raw samples, or the reason it was skipped."""

    name: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


@dataclass(frozen=True)
class Settings:
    """What every scenario is told: iteration count (None: its own default), latency, scratch space."""

    work: Path
    iterations: int | None = None
    latency_s: float = 0.5
    fast: bool = False  # --fast: a scenario with a real-server part leaves it out

    @property
    def cache(self) -> Path:
        """An isolated MMDEMO_CACHE_DIR (synthetic assets only)."""
        return self.work / "cache"

    @property
    def assets(self) -> Path:
        return self.cache / "assets"

    def count(self, default: int) -> int:
        """Iterations for a scenario whose own default is `default`."""
        return max(1, self.iterations) if self.iterations is not None else default


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)
