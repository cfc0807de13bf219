"""The command-line contract: every command's parser comes from one option table (cli/options.py), its
arguments land in Options, options that cannot go together are refused, and `-v`, `--version` and
runs/latest do what scripts expect."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from orchestrator.cli import options as table
from orchestrator.cli.main import build_parser, main
from orchestrator.core.errors import UsageError
from orchestrator.core.options import DEFAULTS, Options
from orchestrator.record.rundir import LATEST, make_run_dir
from tests.conftest import mmdemo

# Options fields no command line sets: the library's and the matrix's own (a cell's directory and GPUs).
INTERNAL = {"cache_dir", "media_budget_s", "run_dir", "server_env", "environment"}


def base_argv(command: str, leave_out: str | None = None) -> list[str]:
    """The command's words and what it requires (its positionals, `demo`'s --base-url), from the table."""
    argv = command.split()
    for row in table.rows(command):
        if row.name == leave_out:
            continue
        if row.positional and row.nargs is None:
            argv.append(row.example or "x")
        elif row.required:
            argv += [row.flags[-1], row.example or "x"]
    return argv


def parse(argv: list[str]) -> Any:
    return build_parser().parse_args(argv)


# Commands that run (`report` and `models` only hold theirs).
LEAVES = [c.name for c in table.COMMANDS if not any(o.name.startswith(c.name + " ") for o in table.COMMANDS)]
CASES = [
    pytest.param(command, row, id=f"{command}:{row.shown}")
    for command in LEAVES
    for row in table.rows(command)
    if row.field is not None
]


@pytest.mark.parametrize(("command", "row"), CASES)
def test_every_commands_arguments_land_in_options(command: str, row: table.Option) -> None:
    argv = base_argv(command, leave_out=row.name)
    if row.action == "store_true":
        argv.append(row.flags[-1])
        expected: Any = True
    elif row.action == "store_false":
        argv.append(row.flags[-1])
        expected = False
    else:
        assert row.example is not None, f"{row.shown}: the table row needs an example value"
        expected = row.type(row.example) if row.type else row.example
        argv += [row.example] if row.positional else [row.flags[-1], row.example]
    assert expected != getattr(DEFAULTS, row.field or ""), f"{row.shown}: its example is its default"
    args = parse(argv)
    if command == "plan" and row.field == "base_url":  # plan launches nothing: it says so
        with pytest.raises(UsageError, match="nothing is launched"):
            table.options_from(args)
        return
    opts = table.options_from(args)
    assert getattr(opts, row.field or "") == expected


@pytest.mark.parametrize("command", LEAVES)
def test_without_options_a_command_has_the_defaults_of_options(command: str) -> None:
    opts = table.options_from(parse(base_argv(command)))
    given = {row.field for row in table.rows(command) if row.field and (row.positional or row.required)}
    for field in dataclasses.fields(Options):
        if field.name not in given | {"environment"}:
            assert getattr(opts, field.name) == getattr(DEFAULTS, field.name), field.name


def test_every_field_of_options_is_an_option_or_named_internal() -> None:
    fields = {f.name for f in dataclasses.fields(Options)}
    on_the_command_line = {row.field for row in table.OPTIONS if row.field}
    assert on_the_command_line <= fields
    assert fields - on_the_command_line == INTERNAL


def test_sequential_is_concurrency_one() -> None:
    assert table.options_from(parse(["run", "p", "--sequential"])).concurrency == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "p", "--base-url", "http://h:8000", "--image", "i"], "--image applies only to a server mmdemo launches"),
        (["run", "p", "--base-url", "http://h:8000", "--port", "9000"], "--port applies only"),
        (["run", "p", "--base-url", "http://h:8000", "--quick-start"], "--quick-start applies only"),
        (["run", "p", "--sequential", "--concurrency", "4"], "--sequential and --concurrency cannot go together"),
        (["matrix", "--sequential", "--concurrency", "2"], "--sequential and --concurrency cannot go together"),
        (["demo", "--base-url", "http://h:8000", "-c", "text-only", "--only", "audio"],
         "-c/--chat-type and --only cannot go together"),
        (["plan", "p", "--base-url", "http://h:8000"], "plan --base-url: nothing is launched"),
    ],
)  # fmt: skip
def test_options_that_cannot_go_together_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.splitlines()[0].startswith("error: ")


def test_verbose_before_and_after_the_command() -> None:
    assert parse(["plan", "p", "-vv"]).verbose == 2
    assert parse(["-v", "plan", "p"]).verbose == 1
    assert parse(["plan", "p"]).verbose == 0
    assert parse(["report", "diff", "a", "b", "-v"]).verbose == 1
    assert parse(["--profiles-dir", "d", "list"]).profiles_dir == "d"  # not overwritten by the subcommand's
    assert parse(["list", "--profiles-dir", "e"]).profiles_dir == "e"


def test_plan_vv_after_the_command_logs_debug(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("plan", "cpu-tiny-omni", "-vv", env=mmdemo_env)
    assert "unrecognized arguments" not in done.stderr
    assert "DEBUG " in done.stderr


def test_version(mmdemo_env: dict[str, str]) -> None:
    from orchestrator.record.rundir import mmdemo_version

    done = mmdemo("--version", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"mmdemo {mmdemo_version()}"


def test_adding_an_option_is_one_row() -> None:
    row = table.Option(("--x-test",), ("run", "demo"), "a test option", dest="x_test", example="1")
    saved = table.OPTIONS
    table.OPTIONS = (*saved, row)
    try:
        assert parse(["run", "p", "--x-test", "7"]).x_test == "7"
        assert parse(["demo", "--base-url", "u", "--x-test", "8"]).x_test == "8"
        with pytest.raises(SystemExit):
            parse(["serve", "p", "--x-test", "7"])
    finally:
        table.OPTIONS = saved


# -- runs/latest ------------------------------------------------------------------------------------


def test_runs_latest_points_at_the_newest_run(tmp_path: Path) -> None:
    first = make_run_dir(tmp_path, "a")
    assert (tmp_path / LATEST).resolve() == first.resolve()
    second = make_run_dir(tmp_path, "a")  # the same second: a -1 suffix
    latest = tmp_path / LATEST
    assert latest.is_symlink()
    assert os.readlink(latest) == second.name  # relative: the runs directory may move
    assert latest.resolve() == second.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name, LATEST])


def test_a_latest_that_is_a_directory_does_not_fail_the_run(tmp_path: Path) -> None:
    (tmp_path / LATEST).mkdir()
    made = make_run_dir(tmp_path, "b")
    assert made.is_dir()
    assert (tmp_path / LATEST).is_dir()
    assert not (tmp_path / LATEST).is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
