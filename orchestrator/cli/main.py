"""The `mmdemo` command: argument parsing, terminal output, and error -> exit code. Nothing else prints."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


PROFILE_HELP = (
    "a profile (a name, see `mmdemo list`, or a YAML file) or a model: a hub id (org/name[@revision]) "
    "or a model directory, whose profile is derived when none names it"
)


def _chat_types(value: str) -> tuple[Any, ...]:
    from orchestrator.core.chattypes import ChatType

    out = []
    for item in value.split(","):
        try:
            out.append(ChatType(item.strip()))
        except ValueError:
            known = ", ".join(c.value for c in ChatType)
            raise argparse.ArgumentTypeError(f"unknown chat type {item!r} (known: {known})") from None
    return tuple(out)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535; 0 picks a free one)")
    return port


def _number(kind: type[float] | type[int], minimum: float, strict: bool) -> Any:
    """An argparse type for numbers > minimum (strict) or >= minimum."""

    def parse(value: str) -> float | int:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if number < minimum or (strict and number == minimum):
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return number

    return parse


_SECONDS = _number(float, 0, strict=True)
_GRACE = _number(float, 0, strict=False)
_COUNT = _number(int, 1, strict=False)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; every default comes from options.DEFAULTS."""
    from orchestrator.core.options import DEFAULT_MAX_TOKENS
    from orchestrator.core.options import DEFAULTS as D

    parser = argparse.ArgumentParser(
        prog="mmdemo",
        description="Prove a multimodal model works on vLLM: launch, demo every chat type, report, tear down.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    parser.add_argument("--profiles-dir", help="look for profiles here first (also: MMDEMO_PROFILES)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_opts(p: argparse.ArgumentParser) -> None:
        """What every launched server is told: bind address, vLLM, deadlines, where runs go."""
        p.add_argument("--host", default=D.host, help=f"address the server binds (default {D.host})")
        vllm_bin(p)
        p.add_argument(
            "--timeout",
            type=_SECONDS,
            default=D.timeout_s,
            help="seconds to wait for readiness (default: the variant's)",
        )
        p.add_argument(
            "--grace",
            type=_GRACE,
            default=D.grace_s,
            help=f"seconds between SIGTERM and SIGKILL (default {D.grace_s:g})",
        )
        p.add_argument("--runs-dir", type=Path, default=D.runs_dir, help="where run directories go")
        p.add_argument(
            "--container-runtime",
            choices=("docker", "podman"),
            default=D.container_runtime,
            help="with --image: the runtime (default: the one on PATH, docker first)",
        )
        p.add_argument(
            "--no-budget",
            dest="budget",
            action="store_false",
            default=D.budget,
            help="launch without first counting each demo's tokens with vLLM's renderer (default: count them)",
        )

    def trust(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--trust-remote-code",
            action="store_true",
            help="a model that needs its own code may run it (a derived profile; never added silently)",
        )

    def launcher(p: argparse.ArgumentParser) -> None:
        p.add_argument("profile", help=PROFILE_HELP)
        trust(p)
        p.add_argument("--gpu", default=D.gpu, help="variant to use: auto (detect), a GPU class, or cpu")
        p.add_argument("--port", type=_port, default=D.port, help="server port (default or 0: a free one)")
        server_opts(p)
        p.add_argument("--follow-logs", action="store_true", help="stream the server log while waiting")
        p.add_argument(
            "--api-key",
            default=D.api_key,
            help="the API key the server requires (default: a fresh random key per run; "
            "EMPTY is what vLLM's example client sends); with --base-url: the attached server's key",
        )
        p.add_argument(
            "--quick-start", action="store_true", help="eager mode, no compilation: a faster start for a demo"
        )
        p.add_argument(
            "--no-prefetch",
            dest="prefetch",
            action="store_false",
            default=D.prefetch,
            help="leave the weight download to vLLM (default: prefetch a hub model with a progress bar)",
        )
        p.add_argument(
            "--dummy-weights",
            action="store_true",
            help="random weights from the config (--load-format dummy): no download",
        )
        p.add_argument(
            "--image",
            default=D.image,
            help="run vLLM in this container image, entrypoint `vllm serve` (e.g. vllm/vllm-openai:v0.11.0); "
            "default: the profile's `image:`, else vLLM on the host",
        )

    def vllm_bin(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--vllm-bin",
            default=D.vllm_bin,
            help="the vLLM command (default: $MMDEMO_VLLM_BIN, `vllm` on PATH, then the project's .venv-vllm)",
        )

    def demo_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--only", type=_chat_types, default=D.only, help="chat types to run, comma-separated")
        p.add_argument(
            "--concurrency",
            type=_COUNT,
            default=D.concurrency,
            help="at most N requests at once (default: all)",
        )
        p.add_argument("--sequential", action="store_true", help="one request at a time, like the example")
        p.add_argument(
            "--max-completion-tokens",
            type=_COUNT,
            default=D.max_completion_tokens,
            help=f"per request (default: the profile's, else {DEFAULT_MAX_TOKENS})",
        )
        p.add_argument(
            "--request-timeout", type=_SECONDS, default=D.request_timeout_s, help="seconds per demo request"
        )
        p.add_argument("--offline", action="store_true", help="never download media; use synthetic assets")
        p.add_argument(
            "--no-worst-case",
            dest="worst_case",
            action="store_false",
            default=D.worst_case,
            help="skip the last request, every medium the limits allow at once (default: send it)",
        )

    sub.add_parser("list", help="profiles with model, chat types, variants, minimum memory")
    p = sub.add_parser("plan", help="the exact `vllm serve` command and demos, without running anything")
    p.add_argument("profile", help=PROFILE_HELP)
    trust(p)
    p.add_argument("--gpu", default=D.gpu)
    p.add_argument("--host", default=D.host)
    p.add_argument("--port", type=_port, default=8000)
    vllm_bin(p)
    p = sub.add_parser("validate", help="validate profiles (all by default); exit 2 on any error")
    p.add_argument("paths", nargs="*", help="profile files, or models (hub id, directory) to derive one for")
    trust(p)
    p.add_argument(
        "--against-vllm",
        action="store_true",
        help="also parse every variant's `vllm serve` line with the installed vLLM's own parser",
    )
    vllm_bin(p)

    p = sub.add_parser("run", help="launch, wait ready, run the demos, report, tear down", epilog=EXIT_CODES)
    launcher(p)
    demo_opts(p)
    p.add_argument("--base-url", help="attach to a running server instead of launching one")

    p = sub.add_parser("serve", help="launch and keep serving until Ctrl-C, then tear down")
    launcher(p)

    p = sub.add_parser("demo", help="run chat types against a running server (no profile)")
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", help="the server's API key (default: $VLLM_API_KEY, else EMPTY)")
    p.add_argument("--chat-type", "-c", type=_chat_types, default=None, help="default: all six")
    p.add_argument("--runs-dir", type=Path, default=D.runs_dir)
    demo_opts(p)

    p = sub.add_parser("doctor", help="what this machine has: vLLM, GPUs, token, caches, runnable profiles")
    vllm_bin(p)

    p = sub.add_parser("matrix", help="every profile on every GPU class: one box, a Ray cluster, or SkyPilot")
    p.add_argument(
        "profiles", nargs="*", help="profiles or models (default: every profile that can run on the engine)"
    )
    trust(p)
    p.add_argument(
        "--gpu", dest="gpu_classes", help="GPU classes, comma-separated (default: what the engine has)"
    )
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="this box, or Ray (RAY_ADDRESS)"
    )
    p.add_argument(
        "--emit", choices=("skypilot",), help="print a SkyPilot task that runs this matrix; run nothing"
    )
    p.add_argument(
        "--launch", action="store_true", help="SkyPilot: one managed job per GPU class, at once; results here"
    )
    p.add_argument(
        "--pipeline", action="store_true", help="SkyPilot: one pipeline, the GPU classes one after another"
    )
    p.add_argument("--bucket", help="with --emit skypilot: a bucket to mount for the matrix directory")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of matrix.json and exit")
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        default=[],
        help="run every cell in this container image; repeat it to compare vLLM versions side by side",
    )
    server_opts(p)
    demo_opts(p)

    p = sub.add_parser("report", help="work with run reports")
    rsub = p.add_subparsers(dest="report_command", required=True)
    d = rsub.add_parser("diff", help="what changed between two runs (report schema 1, 2 or 3)")
    d.add_argument("run_a")
    d.add_argument("run_b")
    d.add_argument("--html", metavar="OUT", type=Path, help="also write the diff as a small HTML page")
    rsub.add_parser("schema", help="print the JSON Schema of report.json")

    p = sub.add_parser("models", help="tiny local models for the CPU profiles")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser("build", help="build a tiny model into the cache (needs the vLLM env's torch)")
    b.add_argument("name", nargs="?", default="tiny-omni")
    b.add_argument("--force", action="store_true")
    vllm_bin(b)

    from orchestrator.cli.init import add_init_parser  # `mmdemo init` lives in its own module

    add_init_parser(sub)
    return parser


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
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with translate_errors() as exit_code:
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

    table = Table("profile", "model", "chat types", "variants", "min GPU mem")
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
            ", ".join(c.value for c in p.chat_types),
            ", ".join(p.variants),
            f"{need:g} GiB" if need is not None else "CPU",
        )
    terminal.console().print(table)
    return 2 if bad else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator.core.paths import assets_dir
    from orchestrator.gpus.detect import CPU, canonical_class, detect
    from orchestrator.gpus.sizing import gpus_of_class
    from orchestrator.launch.command import build_plan
    from orchestrator.profile import fit as gpufit
    from orchestrator.session.targets import resolve_profile, select_demos

    gpus = detect() if args.gpu.lower() == "auto" else []
    gpu_class = canonical_class(args.gpu)
    # A model's profile is derived for the GPUs found (auto), or for one GPU of the class named.
    sized_for = gpus_of_class(gpu_class, 1) if not gpus and gpu_class not in (None, CPU) else gpus
    found = resolve_profile(_options(args), sized_for)
    profile = found.profile
    choice = gpufit.choose(profile, args.gpu, gpus)
    variant = choice.variant
    resolved = profile.resolve(variant)
    plan = build_plan(
        resolved,
        vllm_bin=_vllm_for_plan(args.vllm_bin),
        host=args.host,
        port=args.port,
        media_dir=str(assets_dir()),
        user_env=os.environ,
    )
    out = terminal.console()
    if found.line != f"profile {profile.name}":
        out.print(f"# {found.line}", markup=False)
    out.print(f"# {profile.name}: {profile.model} on {variant}", markup=False)
    if choice.reason:  # sized by memory: which variant, and why
        out.print(f"# {choice.reason}", markup=False)
    if resolved.unsupported:
        out.print(f"# unsupported on {variant}: {resolved.unsupported}", markup=False)
    for key, value in plan.display_env.items():
        out.print(f"export {key}={shlex.quote(value)}", markup=False)
    out.print("export VLLM_API_KEY=...  # mmdemo generates a fresh key per run", markup=False)
    out.print(plan.shell(), markup=False)
    demos = select_demos(profile, ())
    out.print(f"# demos: {', '.join(d.chat_type.value for d in demos)}", markup=False)
    out.print(f"# ready timeout: {resolved.ready_timeout_s:g} s", markup=False)
    return 0


def _vllm_for_plan(vllm_bin: str | None) -> str:
    """The vLLM the run would use; the plan still prints where none is installed."""
    from orchestrator.vllm.backend import locate_vllm

    try:
        return locate_vllm(vllm_bin)[0]
    except MMDemoError:
        return vllm_bin or "vllm"


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.model.ref import ProfileRef, parse_ref
    from orchestrator.profile.schema import Profile, iter_profile_files, parse_profile_file
    from orchestrator.session.targets import resolve_profile

    paths = list(args.paths) or [str(p) for p in iter_profile_files(args.profiles_dir)]
    out, err = terminal.console(), terminal.console(stderr=True)
    failed = 0
    valid: list[Profile] = []
    for path in paths:
        try:
            if Path(path).is_file() or isinstance(parse_ref(path), ProfileRef):
                valid.append(parse_profile_file(Path(path)))
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

        checked = check_against_vllm(valid, args.vllm_bin)
        for verdict in checked.verdicts:
            line = terminal.esc(verdict.line(checked.version))
            (out if verdict.ok else err).print(
                f"{'ok   ' if verdict.ok else 'error'} {line}", highlight=False
            )
        failed += len(checked.failed)
        from orchestrator.budget.count import check_profiles

        for counted in check_profiles(
            valid, args.vllm_bin
        ):  # each demo's tokens, where the model's files are here
            console = err if counted.status == "error" else out
            console.print(f"{counted.status:<5} budget {terminal.esc(counted.line())}", highlight=False)
            failed += counted.status == "error"
    return 2 if failed else 0


# -- commands with a server ---------------------------------------------------------------------


def _options(args: argparse.Namespace) -> Options:
    """The parsed command line as Options (defaults already from options.DEFAULTS), and the environment."""
    from orchestrator.core.environment import Environment
    from orchestrator.core.options import DEFAULTS

    concurrency = 1 if getattr(args, "sequential", False) else getattr(args, "concurrency", None)
    given: dict[str, Any] = {
        "profile": getattr(args, "profile", None),
        "gpu": getattr(args, "gpu", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "vllm_bin": getattr(args, "vllm_bin", None),
        "timeout_s": getattr(args, "timeout", None),
        "grace_s": getattr(args, "grace", None),
        "only": getattr(args, "only", None),
        "concurrency": concurrency,
        "max_completion_tokens": getattr(args, "max_completion_tokens", None),
        "request_timeout_s": getattr(args, "request_timeout", None),
        "offline": getattr(args, "offline", None),
        "runs_dir": getattr(args, "runs_dir", None),
        "profiles_dir": getattr(args, "profiles_dir", None),
        "base_url": getattr(args, "base_url", None),
        "api_key": getattr(args, "api_key", None),
        "follow_logs": getattr(args, "follow_logs", None),
        "quick_start": getattr(args, "quick_start", None),
        "dummy_weights": getattr(args, "dummy_weights", None),
        "prefetch": getattr(args, "prefetch", None),
        "worst_case": getattr(args, "worst_case", None),
        "budget": getattr(args, "budget", None),
        "trust_remote_code": getattr(args, "trust_remote_code", None),
        "image": getattr(args, "image", None),
        "container_runtime": getattr(args, "container_runtime", None),
    }
    given = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(DEFAULTS, **given, environment=Environment.read())


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.session.run import run_session
    from orchestrator.session.targets import Attached, Launched

    console = terminal.console()
    events = terminal.TerminalEvents(console, follow_logs=args.follow_logs)
    opts = _options(args)
    target: Target[Any, Any, Any, Any] = Attached(opts) if opts.base_url else Launched(opts)
    try:
        outcome = run_session(target, opts, events, t0=STARTED)
    finally:
        events._stop_status()
    return terminal.finish(console, outcome)


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.session.run import run_session
    from orchestrator.session.targets import Launched

    console = terminal.console()
    events = terminal.TerminalEvents(console, follow_logs=args.follow_logs)

    def serve_forever(endpoint: Endpoint, session: Session) -> None:
        console.print(terminal.esc(terminal.serve_banner(endpoint)), highlight=False)
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

    path = models.build(args.name, args.vllm_bin, force=args.force)
    terminal.console().print(f"{args.name}: {path}", markup=False)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from orchestrator.cli.init import cmd_init as init

    return init(args, terminal.console(stderr=True))


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
}


if __name__ == "__main__":
    sys.exit(main())
