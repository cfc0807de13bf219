"""`mmdemo validate --against-vllm`: vLLM's own parser judges every shipped profile x variant.

The real check (marker `vllm`) runs the CPU vLLM's parser once for every shipped profile and two
bogus ones; the unit tests drive the same code with a stand-in for vLLM's Python.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from orchestrator.cli.validate import check_against_vllm, serve_checks
from orchestrator.core.errors import PreflightError
from orchestrator.profile.schema import parse_profile_file
from tests import vllm_env
from tests.conftest import HERE, REPO, mmdemo, require_real_vllm

SHIPPED = sorted((REPO / "profiles").glob("*.yaml"))
CHAT = REPO / "profiles" / "cpu-tiny-omni.yaml"  # chat demos: the budget is tried
BOGUS_FLAG = HERE / "profiles" / "vllm-rejects-bogus-flag.yaml"
BAD_VALUE = HERE / "profiles" / "vllm-rejects-bad-value.yaml"


@pytest.fixture(scope="module")
def against_vllm() -> subprocess.CompletedProcess[str]:
    """One `mmdemo validate --against-vllm` over every shipped profile and the bogus ones."""
    vllm_bin = require_real_vllm()
    paths = [str(p) for p in (*SHIPPED, BOGUS_FLAG, BAD_VALUE)]
    return mmdemo(
        "validate", "--against-vllm", "--vllm-bin", vllm_bin, *paths, env=dict(os.environ), timeout=600
    )


@pytest.mark.vllm
def test_every_shipped_profile_and_variant_parses_with_vllm(
    against_vllm: subprocess.CompletedProcess[str],
) -> None:
    lines = against_vllm.stdout.splitlines()
    for path in SHIPPED:
        profile = parse_profile_file(path)
        for variant, settings in profile.variants.items():
            if settings.unsupported:
                continue
            expected = f"ok    {path}: variant {variant}: accepted by vLLM 0.32"
            assert any(line.startswith(expected) for line in lines), (expected, against_vllm.stderr)
    assert str(REPO / "profiles") not in against_vllm.stderr


@pytest.mark.vllm
def test_a_flag_vllm_does_not_know_fails_only_against_vllm(
    against_vllm: subprocess.CompletedProcess[str], mmdemo_env: dict[str, str]
) -> None:
    assert mmdemo("validate", str(BOGUS_FLAG), env=mmdemo_env).returncode == 0
    assert against_vllm.returncode == 2
    errors = [line for line in against_vllm.stderr.splitlines() if line.startswith("error ")]
    for variant in ("H100", "L4"):
        assert (
            f"error {BOGUS_FLAG}: variant {variant}: vLLM 0.32.0 refuses the command line (parse): "
            "unrecognized arguments: --not-a-vllm-flag"
        ) in errors
    assert not any("variant T4" in line for line in errors)  # unsupported: never rendered
    assert any(
        line.startswith(f"error {BAD_VALUE}: variant cpu:") and "argument --max-num-seqs: invalid" in line
        for line in errors
    ), errors
    assert len(errors) == 3


# -- the same code with a stand-in for vLLM's Python ------------------------------------------

STAND_IN = """
import json, sys
request = json.load(sys.stdin)
print("INFO vLLM would log here", file=sys.stderr)
if {crash!r}:
    print("ImportError: no module named vllm", file=sys.stderr)
    sys.exit(1)
results = [
    {{"id": c["id"], "ok": "--not-a-vllm-flag" not in c["argv"], "stage": "parse",
      "error": None if "--not-a-vllm-flag" not in c["argv"] else "unrecognized arguments: --not-a-vllm-flag"}}
    for c in request["checks"]
]
json.dump({{"vllm": "9.9.9", "results": results, "argv0": sys.argv[0]}}, sys.stdout)
"""


def stand_in_vllm(tmp_path: Path, *, crash: bool = False) -> Path:
    """A `vllm` wrapper script (the shape `module load vllm` gives) whose environment answers like
    probes/serve_args.py: which Python runs it, only running it can tell."""
    return vllm_env.wrapper(tmp_path, {"serve_args.py": STAND_IN.format(crash=crash)})


def test_serve_checks_render_every_supported_variant() -> None:
    profile = parse_profile_file(BOGUS_FLAG)
    checks = serve_checks([profile])
    assert [c.variant for c in checks] == ["H100", "L4"]
    for check in checks:
        assert check.argv[:2] == ("serve", "org/model")
        assert "--not-a-vllm-flag" in check.argv
        assert "--port" in check.argv  # the line mmdemo would really run, owned flags included
    assert "--max-model-len" in checks[1].argv


def test_verdicts_come_back_per_profile_and_variant(tmp_path: Path) -> None:
    profiles = [parse_profile_file(p) for p in (REPO / "profiles" / "cpu-tiny-omni.yaml", BOGUS_FLAG)]
    report = check_against_vllm(profiles, str(stand_in_vllm(tmp_path)))
    assert report.version == "9.9.9"
    assert [(v.check.profile.name, v.check.variant, v.ok) for v in report.verdicts] == [
        ("cpu-tiny-omni", "cpu", True),
        ("vllm-rejects-bogus-flag", "H100", False),
        ("vllm-rejects-bogus-flag", "L4", False),
    ]
    assert report.failed[0].line("9.9.9") == (
        f"{BOGUS_FLAG}: variant H100: vLLM 9.9.9 refuses the command line (parse): "
        "unrecognized arguments: --not-a-vllm-flag"
    )


def test_a_checker_that_crashes_is_one_line_with_its_last_words(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as info:
        check_against_vllm([parse_profile_file(BOGUS_FLAG)], str(stand_in_vllm(tmp_path, crash=True)))
    assert str(info.value) == (
        "checking with vLLM's parser (serve_args.py) failed (exit 1): ImportError: no module named vllm"
    )


def test_cli_exit_code_with_the_stand_in(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    vllm = str(stand_in_vllm(tmp_path))
    good = mmdemo("validate", "--against-vllm", "--vllm-bin", vllm, str(CHAT), env=mmdemo_env)
    assert good.returncode == 0, good.stderr
    # the stand-in cannot count tokens (no `--version`, no renderer): a note, not a failure
    noted = re.search(
        rf"^note  budget {re.escape(str(CHAT))}(::cpu)?: demos not counted: ", good.stdout, re.M
    )
    assert noted, good.stdout  # `::cpu` once the tiny model is built (the count is tried, and fails)
    bad = mmdemo("validate", "--against-vllm", "--vllm-bin", vllm, str(BOGUS_FLAG), env=mmdemo_env)
    assert bad.returncode == 2
    assert "unrecognized arguments: --not-a-vllm-flag" in bad.stderr
