"""`mmdemo validate --against-vllm`: every profile x variant checked by the installed vLLM's own parser.

One run of probes/serve_args.py in vLLM's Python (vllm/runner.py: the host's vLLM, however
`--vllm-bin` reaches it, or with --image the image's) checks every command line: the serve parser,
vLLM's serve-argument checks and its engine-argument conversion. No server, no GPU.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from orchestrator.core.errors import PreflightError
from orchestrator.core.paths import assets_dir
from orchestrator.launch.command import build_plan
from orchestrator.profile.schema import Profile
from orchestrator.vllm import runner

PROBE = Path(__file__).resolve().parents[1] / "probes" / "serve_args.py"


class _Result(BaseModel):
    id: str
    ok: bool
    stage: str = ""
    error: str | None = None


class _Answer(BaseModel):
    """What probes/serve_args.py writes."""

    vllm: str = "?"
    results: list[_Result]


@dataclass(frozen=True)
class ServeCheck:
    """One profile x variant and the `vllm serve` argv (without the command itself) it renders to."""

    profile: Profile
    variant: str
    argv: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.profile.label}::{self.variant}"


@dataclass(frozen=True)
class Verdict:
    """What vLLM said about one check: ok, or the stage that refused it and vLLM's words."""

    check: ServeCheck
    ok: bool
    stage: str
    error: str | None

    def line(self, version: str) -> str:
        """One line naming the profile file, the variant and vLLM's reason (which names the flag)."""
        where = f"{self.check.profile.label}: variant {self.check.variant}"
        if self.ok:
            return f"{where}: accepted by vLLM {version}"
        return f"{where}: vLLM {version} refuses the command line ({self.stage}): {self.error}"


@dataclass(frozen=True)
class Report:
    vllm_path: str
    version: str
    verdicts: tuple[Verdict, ...]

    @property
    def failed(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.ok)


def serve_checks(profiles: Sequence[Profile]) -> list[ServeCheck]:
    """Every supported variant of every profile, rendered the way `mmdemo run` renders it."""
    checks = []
    for profile in profiles:
        for variant in profile.variants:
            resolved = profile.resolve(variant)
            if resolved.unsupported:
                continue
            plan = build_plan(resolved, vllm_bin="vllm", media_dir=str(assets_dir()))
            checks.append(ServeCheck(profile=profile, variant=variant, argv=plan.argv[1:]))
    return checks


def check_against_vllm(
    profiles: Sequence[Profile],
    vllm_bin: str | None = None,
    timeout_s: float = 600.0,
    *,
    vllm: runner.VllmInfo | None = None,
) -> Report:
    """Run every check through the installed vLLM (or `vllm`, an image's) in one script."""
    info = vllm or runner.host(vllm_bin)
    checks = serve_checks(profiles)
    request = {"checks": [{"id": c.key, "argv": list(c.argv)} for c in checks]}
    script = runner.Script(PROBE, "checking with vLLM's parser")
    # In an image, the model directories (and any other local directory a command line names) are
    # mounted read-only at the same paths; on the host the mounts change nothing.
    local = sorted({Path(w) for c in checks for w in c.argv if w.startswith("/") and Path(w).is_dir()})
    answer = runner.run(info, script, _Answer, json.dumps(request), timeout_s=timeout_s, mounts=local)
    by_id = {r.id: r for r in answer.results}
    if missing := [c.key for c in checks if c.key not in by_id]:
        raise PreflightError(f"{script.what} ({PROBE.name}) gave no verdict on {missing[0]}")
    verdicts = tuple(
        Verdict(check=c, ok=by_id[c.key].ok, stage=by_id[c.key].stage, error=by_id[c.key].error)
        for c in checks
    )
    return Report(vllm_path=info.name, version=answer.vllm, verdicts=verdicts)
