"""The `mmdemo` command: argument parsing, terminal output, and error -> exit code. Nothing else prints."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.cli import options as cli_options
from orchestrator.cli import terminal
from orchestrator.core.errors import InternalError, Interrupted, MMDemoError, UsageError

if TYPE_CHECKING:
    from orchestrator.core.options import Options
    from orchestrator.session.context import Endpoint, Session
    from orchestrator.session.targets import Target

STARTED = time.monotonic()  # the command's start: zero of the run's timeline

EXIT_CODES = """exit codes:
  0    every demo passed (or the command succeeded)
  1    a demo failed
  2    bad usage or a bad profile
  3    the server failed to start, died, or a preflight check refused to launch
  4    mmdemo itself failed unexpectedly (a bug; -vv shows the traceback)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP)"""


DESCRIPTION = "Prove a multimodal model works on vLLM: launch, demo every chat type, report, tear down."


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, built from the option table (cli/options.py)."""
    return cli_options.build_parser(DESCRIPTION, EXIT_CODES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code."""
    # Start-up is mostly imports (pydantic, rich, the openai SDK), during which the cyclic collector
    # only costs time (~15%). It is back on once start-up is over: when a session's server is ready
    # (run, serve, demo, each matrix cell), when a matrix has planned its cells, and at exit; the
    # other commands are start-up and little else.
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.unfreeze()  # what start-up froze (session/run.start_up_over) is collectable again
        gc.enable()


def entry() -> NoReturn:
    """The process's entry (the `mmdemo` script, `python -m orchestrator`): `main`, then a quick exit.

    Once the command is done and everything it writes is written, the interpreter's own teardown frees
    every object one by one (the openai SDK's thousands of types and pydantic's schemas: ~0.1 s of a
    whole run's overhead, measured with `python -c 'import openai'`). So the end is what that teardown
    begins with, explicitly: the other threads joined, the exit handlers run (the exit nets of servers
    and scripts, logging's flush), the streams flushed; then the process ends without the rest."""
    code = main()
    try:
        getattr(threading, "_shutdown", lambda: None)()  # joins non-daemon threads, as at exit
        getattr(atexit, "_run_exitfuncs", lambda: None)()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with translate_errors() as exit_code:
        cli_options.refuse_conflicts(args)
        exit_code.append(int(_COMMANDS[args.command](args)))
    return exit_code[-1]


@contextlib.contextmanager
def translate_errors() -> Iterator[list[int]]:
    """The one edge where errors become messages and exit codes (pypa/build's _handle_build_error)."""
    codes: list[int] = []
    try:
        yield codes
    except MMDemoError as exc:
        terminal.show_error(exc)
        codes.append(exc.exit_code)
    except KeyboardInterrupt:
        terminal.console(stderr=True).print("[red]interrupted[/]")
        codes.append(130)
    except Exception as exc:  # a bug; say so in one line (the traceback with -vv)
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        internal = InternalError(exc)
        terminal.show_error(internal)
        codes.append(internal.exit_code)


# -- commands without a server ------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from orchestrator.profile.schema import iter_profile_files, parse_profile_file

    table = Table("profile", "model", "chat types and tasks", "variants", "min GPU mem")
    bad = 0
    for path in iter_profile_files(args.profiles_dir):
        try:
            p = parse_profile_file(path)
        except MMDemoError as exc:
            table.add_row(terminal.esc(path.stem), f"[red]{terminal.esc(exc)}[/]", "", "", "")
            bad += 1
            continue
        need = p.min_gpu_memory_gib()
        table.add_row(
            terminal.esc(p.name),
            terminal.esc(p.model),
            ", ".join([*(c.value for c in p.chat_types), *(t.task.value for t in p.tasks)]),
            ", ".join(p.variants),
            f"{need:g} GiB" if need is not None else "CPU",
        )
    terminal.console().print(table)
    return 2 if bad else 0


def cmd_plan(args: argparse.Namespace) -> int:
    """What `run` with these options would launch, through the session's own steps up to the launch."""
    from orchestrator.cli.plan import plan_run

    return plan_run(_options(args), terminal.console())


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.cli.recipes import recipe_files
    from orchestrator.model.recipe import is_recipe_ref
    from orchestrator.model.ref import ProfileRef, parse_ref
    from orchestrator.profile.schema import Profile, iter_profile_files, load_profile
    from orchestrator.session.targets import resolve_profile

    paths = list(args.paths) or [str(p) for p in iter_profile_files(args.profiles_dir)]
    paths = recipe_files(paths)  # a directory of vLLM recipes: each of them
    out, err = terminal.console(), terminal.console(stderr=True)
    failed = 0
    valid: list[Profile] = []
    for path in paths:
        try:
            if (Path(path).is_file() and not is_recipe_ref(path)) or isinstance(parse_ref(path), ProfileRef):
                valid.append(load_profile(path, args.profiles_dir))  # a file, or a profile's name
                out.print(f"ok    {path}", markup=False)
            else:  # a model: the profile derived for it (or the profile of it) is what is validated
                found = resolve_profile(dataclasses.replace(_options(args), profile=path), [])
                valid.append(found.profile)
                out.print(f"ok    {path}: {found.line} ({found.profile.path})", markup=False)
        except MMDemoError as exc:
            err.print(f"error {exc}", markup=False)
            failed += 1
    if args.against_vllm and valid:
        from orchestrator.cli.validate import check_against_vllm
        from orchestrator.session.targets import image_vllm

        in_image = image_vllm(_options(args))  # --image: the image's vLLM checks, not the host's
        vllm = in_image() if in_image else None
        checked = check_against_vllm(valid, args.vllm_bin, vllm=vllm)
        for verdict in checked.verdicts:
            line = terminal.esc(verdict.line(checked.version))
            (out if verdict.ok else err).print(
                f"{'ok   ' if verdict.ok else 'error'} {line}", highlight=False
            )
        failed += len(checked.failed)
        from orchestrator.budget.count import check_profiles

        for counted in check_profiles(
            valid, args.vllm_bin, vllm=vllm
        ):  # each demo's tokens, where the model's files are here
            console = err if counted.status == "error" else out
            console.print(f"{counted.status:<5} budget {terminal.esc(counted.line())}", highlight=False)
            failed += counted.status == "error"
    return 2 if failed else 0


# -- commands with a server ---------------------------------------------------------------------


def _options(args: argparse.Namespace) -> Options:
    """The parsed command line as Options (defaults already from options.DEFAULTS), and the environment."""
    return cli_options.options_from(args)


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.session.run import run_session
    from orchestrator.session.targets import Attached, Launched

    console = terminal.console()
    events = terminal.TerminalEvents(console, follow_logs=args.follow_logs)
    opts = _options(args)
    target: Target[Any, Any, Any] = Attached(opts) if opts.base_url else Launched(opts)
    try:
        outcome = run_session(target, opts, events, t0=STARTED)
    finally:
        events._stop_status()
    return terminal.finish(console, outcome)


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.core.tasks import Task
    from orchestrator.session.run import run_session
    from orchestrator.session.targets import Launched

    console = terminal.console()
    events = terminal.TerminalEvents(console, follow_logs=args.follow_logs)

    def serve_forever(endpoint: Endpoint, session: Session) -> None:
        offered = session.record.capabilities
        chats = offered is None or bool(offered.chat_types.run) or not offered.tasks.run
        tasks = [Task(t) for t in offered.tasks.run] if offered is not None else []
        banner = terminal.serve_banner(endpoint, chats=chats, tasks=tasks)
        console.print(terminal.esc(banner), highlight=False)
        console.print("serving until Ctrl-C", markup=False)
        while True:
            endpoint.check("while serving")  # the server died: its evidence becomes the error
            session.stop.sleep(0.2)

    opts = _options(args)
    try:
        outcome = run_session(Launched(opts), opts, events, serve=serve_forever, t0=STARTED)
    finally:
        events._stop_status()
    if outcome.error is not None and not isinstance(outcome.error, Interrupted):
        terminal.show_error(outcome.error)
        return outcome.exit_code
    teardown = outcome.record.teardown
    if teardown:
        console.print(
            f"stopped: teardown {teardown.duration_s:.2f} s, {teardown.remaining} left", highlight=False
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.core.chattypes import ChatType
    from orchestrator.session.run import run_session
    from orchestrator.session.targets import Attached

    console = terminal.console()
    opts = _options(args)
    target = Attached(opts, args.chat_type or tuple(ChatType))
    return terminal.finish(console, run_session(target, opts, terminal.TerminalEvents(console), t0=STARTED))


def cmd_matrix(args: argparse.Namespace) -> int:
    from orchestrator.matrix import skypilot
    from orchestrator.matrix.cells import parse_classes
    from orchestrator.matrix.record import cell_text
    from orchestrator.matrix.run import run_matrix

    if args.schema:
        import json

        from orchestrator.matrix.record import schema

        print(json.dumps(schema(), indent=2))
        return 0
    classes = parse_classes(args.gpu_classes) if args.gpu_classes else ()
    opts = _options(args)
    console = terminal.console()
    images = tuple(dict.fromkeys(args.images))  # one cell per image; the same image twice is one
    if (args.pipeline or args.bucket) and not (args.emit or args.launch):  # never silently ignored
        raise UsageError("--pipeline and --bucket go with --emit skypilot or --launch (SkyPilot)")
    if args.emit == "skypilot" and not args.launch:
        task = skypilot.emit(
            args.profiles, classes, opts, bucket=args.bucket, pipeline=args.pipeline, images=images
        )
        print(task, end="")
        return 0
    if args.launch and images:
        raise UsageError(
            "--launch runs the image's vLLM only through --emit skypilot for now",
            hint="emit the tasks with --emit skypilot --image ... and `sky jobs launch` them",
        )
    if args.launch:  # one SkyPilot managed job per GPU class, at once; results gathered here
        from orchestrator.matrix.sky_engine import SkyEngine

        engine: Any = SkyEngine(args.profiles, classes, bucket=args.bucket, pipeline=args.pipeline)
    elif args.engine == "ray":
        from orchestrator.matrix.ray_engine import RayEngine

        engine = RayEngine()
    else:
        from orchestrator.matrix.local import LocalEngine

        engine = LocalEngine()

    def planned(cells: Sequence[Any], matrix_dir: Path) -> None:
        runnable = sum(1 for c in cells if c.runnable)
        console.print(
            f"matrix   {len(cells)} cell(s), {runnable} to run, on {engine.name}; {terminal.esc(matrix_dir)}"
        )

    def finished(cell: Any) -> None:
        took = f" in {cell.duration_s:.1f} s" if cell.duration_s is not None else ""
        # A container's server sees its GPUs from 0: the cell's own indices say which it had.
        gpus = cell.cuda_visible_devices or ",".join(str(g) for g in cell.gpus)
        where = f" GPU {gpus}" if gpus else ""
        text = cell_text(cell.model_copy(update={"directory": None})).replace("\\", "")
        console.print(f"  {terminal.esc(cell.key):<32} {terminal.esc(text)}{where}{took}", highlight=False)

    outcome = run_matrix(
        args.profiles, classes, opts, engine, on_cell=finished, on_plan=planned, images=images
    )
    rec = outcome.record
    verdict = "[green]PASSED[/]" if rec.exit_code == 0 else f"[red]{rec.status.upper()}[/]"
    console.print(
        f"{verdict} {sum(c.status == 'passed' for c in rec.cells)}/{len(rec.cells)} cells passed "
        f"({sum(c.status == 'skipped' for c in rec.cells)} skipped) in {rec.wall_s:.1f} s; "
        f"matrix: {terminal.esc(outcome.matrix_dir)}"
    )
    return outcome.exit_code


def cmd_doctor(args: argparse.Namespace) -> int:
    from orchestrator.cli.doctor import doctor

    return doctor(args, terminal.console())


def cmd_report(args: argparse.Namespace) -> int:
    from rich.table import Table

    from orchestrator.record import report as record

    if args.recipe_patch is not None:  # cli/recipes.py: the recipe's meta.hardware as the runs found it
        from orchestrator.cli.recipes import recipe_patch

        return recipe_patch(args.recipe_patch, terminal.console(stderr=True))
    if args.report_command is None:
        raise UsageError("report: name a command (diff, schema) or give --recipe-patch RUN_DIR|MATRIX_DIR")
    if args.report_command == "schema":
        sys.stdout.write(record.schema_text())
        return 0
    a, b = record.load(args.run_a), record.load(args.run_b)
    if args.html:
        from orchestrator.core.atomic import write_atomic
        from orchestrator.render.html import to_diff_html

        write_atomic(args.html, to_diff_html(a, b, str(args.run_a), str(args.run_b)))
    if a.profile != b.profile:
        terminal.console(stderr=True).print(
            f"note: comparing different profiles ({terminal.esc(a.profile)} vs {terminal.esc(b.profile)})"
        )
    if a.backend != b.backend:  # two images, two vLLM versions: say which is which
        terminal.console().print(
            f"A: {terminal.esc(a.backend)}\nB: {terminal.esc(b.backend)}", highlight=False
        )
    table = Table("demo", "A", "B", "answer", "latency B/A")
    changed = 0
    for row in record.diff(a, b):
        moved = row["status_a"] != row["status_b"]
        changed += moved
        ratio = row["latency_ratio"]
        table.add_row(
            terminal.esc(row["name"]),
            terminal.esc(row["status_a"]),
            f"[bold]{terminal.esc(row['status_b'])}[/]" if moved else terminal.esc(row["status_b"]),
            row["answer"],
            f"{ratio:.2f}x" if ratio is not None else "–",
        )
    terminal.console().print(table)
    return 1 if changed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from orchestrator.model import tiny as models

    if args.models_command == "list":
        from orchestrator.cli.models import cmd_list

        return cmd_list(args, terminal.console())
    path = models.build(args.name, args.vllm_bin, force=args.force)
    terminal.console().print(f"{args.name}: {path}", markup=False)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from orchestrator.cli.init import cmd_init as init

    return init(args, terminal.console(stderr=True))


def cmd_recipes(args: argparse.Namespace) -> int:
    from orchestrator.cli.recipes import cmd_recipes as recipes

    return recipes(args, terminal.console())


_COMMANDS = {
    "list": cmd_list,
    "plan": cmd_plan,
    "validate": cmd_validate,
    "run": cmd_run,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
    "matrix": cmd_matrix,
    "report": cmd_report,
    "models": cmd_models,
    "init": cmd_init,
    "recipes": cmd_recipes,
}


if __name__ == "__main__":
    sys.exit(main())
