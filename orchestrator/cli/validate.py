"""`mmdemo validate --against-vllm`: every profile x variant checked by the installed vLLM's own parser.

One subprocess in vLLM's Python (probes/serve_args.py) checks every command line: the serve
parser, vLLM's serve-argument checks and its engine-argument conversion. No server, no GPU.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.errors import PreflightError
from orchestrator.core.paths import assets_dir
from orchestrator.launch.command import build_plan
from orchestrator.profile.schema import Profile
from orchestrator.vllm.backend import locate_vllm, vllm_python

PROBE = Path(__file__).resolve().parents[1] / "probes" / "serve_args.py"


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
    profiles: Sequence[Profile], vllm_bin: str | None = None, timeout_s: float = 600.0
) -> Report:
    """Run every check through the installed vLLM in one subprocess."""
    path, _ = locate_vllm(vllm_bin)
    python = vllm_python(path)
    checks = serve_checks(profiles)
    request = {"checks": [{"id": c.key, "argv": list(c.argv)} for c in checks]}
    try:
        done = subprocess.run(
            [str(python), str(PROBE)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PreflightError(f"vLLM's parser ({python}) did not answer within {timeout_s:.0f} s") from None
    except OSError as exc:
        raise PreflightError(f"cannot run {python}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(done.stdout)
        by_id = {r["id"]: r for r in answer["results"]}
        verdicts = tuple(
            Verdict(
                check=c, ok=bool(by_id[c.key]["ok"]), stage=by_id[c.key]["stage"], error=by_id[c.key]["error"]
            )
            for c in checks
        )
    except (ValueError, KeyError, TypeError):
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PreflightError(
            f"checking with vLLM's parser failed (exit {done.returncode}): {last[:300]}",
            hint=f"run `{python} {PROBE}` by hand to see vLLM's own error",
        ) from None
    return Report(vllm_path=path, version=str(answer.get("vllm", "?")), verdicts=verdicts)
