"""The `mmdemo` command: argument parsing, terminal output, and error -> exit code. Nothing else prints."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import InternalError, Interrupted, MMDemoError, ServerError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.pipeline import Outcome, RunOptions
    from orchestrator.server import Ready, Server

EXIT_CODES = """exit codes:
  0    every demo passed (or the command succeeded)
  1    a demo failed
  2    bad usage or a bad profile
  3    the server failed to start, died, or a preflight check refused to launch
  4    mmdemo itself failed unexpectedly (a bug; -vv shows the traceback)
  130  interrupted (Ctrl-C, SIGTERM, SIGHUP)"""


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # CI logs and pipes: rich's 80 columns would wrap every table row
    return console


def _chat_types(value: str) -> tuple[Any, ...]:
    from orchestrator.profile import ChatType

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
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="mmdemo",
        description="Prove a multimodal model works on vLLM: launch, demo every chat type, report, tear down.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    parser.add_argument("--profiles-dir", help="look for profiles here first (also: MMDEMO_PROFILES)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def launcher(p: argparse.ArgumentParser) -> None:
        p.add_argument("profile", help="profile name (see `mmdemo list`) or a path to a YAML file")
        p.add_argument("--gpu", default="auto", help="variant to use: auto (detect), a GPU class, or cpu")
        p.add_argument("--host", default="127.0.0.1", help="address the server binds (default 127.0.0.1)")
        p.add_argument("--port", type=_port, help="server port (default or 0: a free one)")
        p.add_argument(
            "--vllm-bin",
            default=os.environ.get("MMDEMO_VLLM_BIN", "vllm"),
            help="the vLLM command (default: $MMDEMO_VLLM_BIN or `vllm` on PATH)",
        )
        p.add_argument(
            "--timeout", type=_SECONDS, help="seconds to wait for readiness (default: the variant's)"
        )
        p.add_argument("--grace", type=_GRACE, default=15.0, help="seconds between SIGTERM and SIGKILL")
        p.add_argument("--follow-logs", action="store_true", help="stream the server log while waiting")
        p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where run directories go")

    def demo_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--only", type=_chat_types, default=(), help="chat types to run, comma-separated")
        p.add_argument("--concurrency", type=_COUNT, help="at most N requests at once (default: all)")
        p.add_argument("--sequential", action="store_true", help="one request at a time, like the example")
        p.add_argument(
            "--max-completion-tokens", type=_COUNT, help="per request (default: the profile's, else 128)"
        )
        p.add_argument("--request-timeout", type=_SECONDS, default=120.0, help="seconds per demo request")
        p.add_argument("--offline", action="store_true", help="never download media; use synthetic assets")

    sub.add_parser("list", help="profiles with model, chat types, variants, minimum memory")
    p = sub.add_parser("plan", help="the exact `vllm serve` command and demos, without running anything")
    p.add_argument("profile")
    p.add_argument("--gpu", default="auto")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--vllm-bin", default=os.environ.get("MMDEMO_VLLM_BIN", "vllm"))
    p = sub.add_parser("validate", help="validate profiles (all by default); exit 2 on any error")
    p.add_argument("paths", nargs="*")

    p = sub.add_parser("run", help="launch, wait ready, run the demos, report, tear down", epilog=EXIT_CODES)
    launcher(p)
    demo_opts(p)
    p.add_argument("--base-url", help="attach to a running server instead of launching one")
    p.add_argument("--api-key", help="API key of an attached server (default: $VLLM_API_KEY)")

    p = sub.add_parser("serve", help="launch and keep serving until Ctrl-C, then tear down")
    launcher(p)

    p = sub.add_parser("demo", help="run chat types against a running server (no profile)")
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key")
    p.add_argument("--chat-type", "-c", type=_chat_types, default=None, help="default: all six")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"))
    demo_opts(p)

    sub.add_parser("doctor", help="what this machine has: vLLM, GPUs, token, caches, runnable profiles")

    p = sub.add_parser("matrix", help="every profile on every GPU class: one box, a Ray cluster, or SkyPilot")
    p.add_argument("profiles", nargs="*", help="profiles (default: every profile that can run on the engine)")
    p.add_argument(
        "--gpu", dest="gpu_classes", help="GPU classes, comma-separated (default: what the engine has)"
    )
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="this box, or Ray (RAY_ADDRESS)"
    )
    p.add_argument(
        "--emit", choices=("skypilot",), help="print a SkyPilot task that runs this matrix; run nothing"
    )
    p.add_argument("--launch", action="store_true", help="with --emit skypilot: launch it with the `sky` CLI")
    p.add_argument("--bucket", help="with --emit skypilot: a bucket to mount for the matrix directory")
    p.add_argument("--schema", action="store_true", help="print the JSON Schema of matrix.json and exit")
    p.add_argument("--host", default="127.0.0.1", help="address the servers bind (default 127.0.0.1)")
    p.add_argument("--vllm-bin", default=os.environ.get("MMDEMO_VLLM_BIN", "vllm"), help="the vLLM command")
    p.add_argument("--timeout", type=_SECONDS, help="seconds to wait for readiness (default: the variant's)")
    p.add_argument("--grace", type=_GRACE, default=15.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the matrix directory goes")
    demo_opts(p)

    p = sub.add_parser("report", help="work with run reports")
    rsub = p.add_subparsers(dest="report_command", required=True)
    d = rsub.add_parser("diff", help="what changed between two runs")
    d.add_argument("run_a")
    d.add_argument("run_b")

    p = sub.add_parser("models", help="tiny local models for the CPU profiles")
    msub = p.add_subparsers(dest="models_command", required=True)
    b = msub.add_parser("build", help="build a tiny model into the cache (needs the vLLM env's torch)")
    b.add_argument("name", nargs="?", default="tiny-omni")
    b.add_argument("--force", action="store_true")
    b.add_argument("--vllm-bin", default=os.environ.get("MMDEMO_VLLM_BIN", "vllm"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code."""
    # Startup is mostly imports (pydantic, rich, the openai SDK), during which the cyclic collector
    # only costs time (~15%); it is back on once the server is ready (TerminalEvents.ready) or at exit.
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(_COMMANDS[args.command](args))
    except MMDemoError as exc:
        _show_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        _console(stderr=True).print("[red]interrupted[/]")
        return 130
    except Exception as exc:  # a bug; say so in one line (the traceback with -vv)
        logging.getLogger(__name__).debug("unexpected error", exc_info=True)
        internal = InternalError(exc)
        _show_error(internal)
        return internal.exit_code


def _show_error(exc: MMDemoError) -> None:
    err = _console(stderr=True)
    err.print(f"[bold red]error:[/] {_esc(exc)}", markup=True, highlight=False)
    if isinstance(exc, ServerError):
        if exc.argv:
            err.print(f"  command: {shlex.join(exc.argv)}", markup=False)
        if exc.log_path:
            err.print(f"  server log: {exc.log_path}", markup=False)
        if exc.log_tail:
            err.print(f"  last {len(exc.log_tail)} log lines:", markup=False)
            for line in exc.log_tail:
                err.print(f"  | {line}", markup=False)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {_esc(exc.hint)}")


# -- commands without a server ------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from orchestrator.profile import iter_profile_files, parse_profile_file

    table = Table("profile", "model", "chat types", "variants", "min GPU mem")
    bad = 0
    for path in iter_profile_files(args.profiles_dir):
        try:
            p = parse_profile_file(path)
        except MMDemoError as exc:
            table.add_row(_esc(path.stem), f"[red]{_esc(exc)}[/]", "", "", "")
            bad += 1
            continue
        need = p.min_gpu_memory_gib()
        table.add_row(
            _esc(p.name),
            _esc(p.model),
            ", ".join(c.value for c in p.chat_types),
            ", ".join(p.variants),
            f"{need:g} GiB" if need is not None else "CPU",
        )
    _console().print(table)
    return 2 if bad else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from orchestrator import preflight
    from orchestrator.command import build_plan
    from orchestrator.gpu import detect
    from orchestrator.paths import assets_dir
    from orchestrator.pipeline import select_demos
    from orchestrator.profile import load_profile

    profile = load_profile(args.profile, args.profiles_dir)
    variant = preflight.choose_variant(profile, args.gpu, detect() if args.gpu == "auto" else [])
    resolved = profile.resolve(variant)
    plan = build_plan(
        resolved,
        vllm_bin=args.vllm_bin,
        host=args.host,
        port=args.port,
        media_dir=str(assets_dir()),
        user_env=os.environ,
    )
    out = _console()
    out.print(f"# {profile.name}: {profile.model} on {variant}", markup=False)
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


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.profile import iter_profile_files, parse_profile_file

    paths = [Path(p) for p in args.paths] or list(iter_profile_files(args.profiles_dir))
    out, err = _console(), _console(stderr=True)
    failed = 0
    for path in paths:
        try:
            parse_profile_file(path)
            out.print(f"ok    {path}", markup=False)
        except MMDemoError as exc:
            err.print(f"error {exc}", markup=False)
            failed += 1
    return 2 if failed else 0


# -- commands with a server ---------------------------------------------------------------------


class TerminalEvents:
    """Progress on the terminal: a live line on a TTY, plain periodic lines in CI logs."""

    def __init__(self, console: Console, follow_logs: bool = False, every_s: float = 5.0) -> None:
        self.console = console
        self.follow_logs = follow_logs
        self.tty = console.is_terminal
        self.every_s = every_s
        self._last_plain = -1e9
        self._status: Any = None

    def stage(self, name: str, detail: str = "") -> None:
        self._stop_status()
        if name == "launch":
            self.console.print(f"[bold]launch[/]  {_esc(detail)}", markup=True, highlight=False)
            return
        self.console.print(f"[bold]{name:<8}[/] {_esc(detail)}", highlight=False)

    def waiting(self, elapsed_s: float, phase: str) -> None:
        text = f"waiting for vLLM: {elapsed_s:5.1f} s, {phase}"
        if self.tty:
            if self._status is None:
                self._status = self.console.status(text)
                self._status.start()
            else:
                self._status.update(text)
        elif elapsed_s - self._last_plain >= self.every_s:
            self._last_plain = elapsed_s
            self.console.print(text, markup=False)

    def log_line(self, line: str) -> None:
        if self.follow_logs:
            self.console.print(
                f"[dim]  | {_esc(line)}[/]", markup=True, highlight=False
            ) if self.tty else print(f"  | {line}", flush=True)

    def ready(self, server: Server, ready: Ready) -> None:
        gc.enable()  # the imports are done; a long run or `serve` should collect as usual
        self._stop_status()
        self.console.print(f"[green]ready[/]    in {ready.elapsed_s:.1f} s at {_esc(server.base_url)}")

    def download(self, key: str, done: int, total: int | None) -> None:
        size = f"{done / 2**20:.1f}" + (f"/{total / 2**20:.1f}" if total else "") + " MB"
        if self.tty:
            text = f"downloading {key}: {size}"
            if self._status is None:
                self._status = self.console.status(text)
                self._status.start()
            else:
                self._status.update(text)
        elif total and done >= total:
            self.console.print(f"downloaded {key}: {size}", markup=False)

    def demo_done(self, result: Any) -> None:
        mark = "[green]✓[/]" if result.passed else "[red]✗[/]"
        detail = f"{result.latency_s:.2f} s" if result.passed else (result.error or "failed")
        self.console.print(f"  {mark} {_esc(result.name):<26} {_esc(detail)}", highlight=False)

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _options(args: argparse.Namespace) -> RunOptions:
    from orchestrator.pipeline import RunOptions

    concurrency = 1 if getattr(args, "sequential", False) else getattr(args, "concurrency", None)
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
    return RunOptions(
        profile=getattr(args, "profile", None),
        gpu=getattr(args, "gpu", "auto"),
        host=getattr(args, "host", "127.0.0.1"),
        port=getattr(args, "port", None),
        vllm_bin=getattr(args, "vllm_bin", "vllm"),
        timeout_s=getattr(args, "timeout", None),
        grace_s=getattr(args, "grace", 15.0),
        only=getattr(args, "only", ()) or (),
        concurrency=concurrency,
        max_completion_tokens=getattr(args, "max_completion_tokens", None),
        request_timeout_s=getattr(args, "request_timeout", 120.0),
        offline=getattr(args, "offline", False),
        runs_dir=args.runs_dir,
        profiles_dir=args.profiles_dir,
        base_url=getattr(args, "base_url", None),
        api_key=getattr(args, "api_key", None),
    )


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator import pipeline

    console = _console()
    events = TerminalEvents(console, follow_logs=args.follow_logs)
    opts = _options(args)
    outcome = pipeline.attach(opts, (), events) if opts.base_url else pipeline.run(opts, events)
    events._stop_status()
    return _finish(console, outcome)


def _finish(console: Console, outcome: Outcome) -> int:
    from rich.table import Table

    rep = outcome.report
    if rep["demos"]:
        table = Table("demo", "status", "latency", "TTFT", "tokens in/out", "answer or error", title="demos")
        for d in rep["demos"]:
            ok = d["status"] == "passed"
            text = " ".join(str(d["answer"] if ok else d["error"]).split())
            table.add_row(
                _esc(d["name"]),
                "[green]passed[/]" if ok else "[red]failed[/]",
                f"{d['latency_s']:.2f} s" if d["latency_s"] is not None else "–",
                f"{d['ttft_s']:.2f} s" if d["ttft_s"] is not None else "–",
                f"{_n(d['prompt_tokens'])}/{_n(d['completion_tokens'])}",
                _esc(text[:70] + ("…" if len(text) > 70 else "")),
            )
        console.print(table)
    teardown = rep.get("teardown")
    if teardown:
        console.print(
            f"teardown {teardown['duration_s']:.2f} s ({' -> '.join(teardown['signals']) or 'already gone'}), "
            f"{teardown['remaining']} process(es) left, port {'free' if teardown['port_free'] else 'HELD'}",
            highlight=False,
        )
    for note in rep.get("notes") or []:
        console.print(f"[dim]note: {_esc(note)}[/]")
    if outcome.error is not None:
        _show_error(outcome.error)
    summary = rep["summary"]
    verdict = "[green]PASSED[/]" if outcome.exit_code == 0 else f"[red]{rep['status'].upper()}[/]"
    console.print(
        f"{verdict} {summary.get('passed', 0)}/{summary.get('total', 0)} demos; report: {_esc(outcome.run_dir)}"
    )
    return outcome.exit_code


def _esc(value: object) -> str:
    """Text from outside (server messages, paths, log lines) shown literally, never as rich markup."""
    from rich.markup import escape

    return escape(str(value))


def _n(value: object) -> str:
    return "–" if value is None else str(value)


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator import pipeline

    console = _console()
    events = TerminalEvents(console, follow_logs=args.follow_logs)

    def serve_forever(server: Server) -> None:
        model = server.plan.served_model_name
        console.print(
            f"base URL: {server.base_url}\nmodel:    {model}\nAPI key:  {server.api_key}", markup=False
        )
        body = '{"model": "%s", "messages": [{"role": "user", "content": "Hello!"}]}' % model  # noqa: UP031
        console.print(
            "try:\n  curl -s "
            + shlex.quote(f"{server.base_url}/chat/completions")
            + f" -H 'Authorization: Bearer {server.api_key}' -H 'Content-Type: application/json' -d "
            + shlex.quote(body),
            markup=False,
        )
        console.print("serving until Ctrl-C", markup=False)
        while True:
            code = server.returncode()
            if code is not None:
                raise server.failure("vllm serve exited while serving", returncode=code)
            time.sleep(0.2)

    outcome = pipeline.run(_options(args), events, serve_forever=serve_forever)
    events._stop_status()
    if outcome.error is not None and not isinstance(outcome.error, Interrupted):
        _show_error(outcome.error)
        return outcome.exit_code
    teardown = outcome.report.get("teardown") or {}
    console.print(
        f"stopped: teardown {teardown.get('duration_s', 0):.2f} s, {teardown.get('remaining')} left"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator import pipeline
    from orchestrator.profile import ChatType

    console = _console()
    opts = _options(args)
    chat_types = args.chat_type or tuple(ChatType)
    return _finish(console, pipeline.attach(opts, chat_types, TerminalEvents(console)))


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
    console = _console()
    if args.emit == "skypilot" or args.launch:
        task = skypilot.emit(args.profiles, classes, opts, bucket=args.bucket)
        if not args.launch:
            print(task, end="")
            return 0
        return skypilot.launch(task, opts.runs_dir)
    if args.engine == "ray":
        from orchestrator.matrix.ray_engine import RayEngine

        engine: Any = RayEngine()
    else:
        from orchestrator.matrix.local import LocalEngine

        engine = LocalEngine()

    def planned(cells: Sequence[Any], matrix_dir: Path) -> None:
        runnable = sum(1 for c in cells if c.runnable)
        console.print(
            f"matrix   {len(cells)} cell(s), {runnable} to run, on {engine.name}; {_esc(matrix_dir)}"
        )

    def finished(cell: Any) -> None:
        took = f" in {cell.duration_s:.1f} s" if cell.duration_s is not None else ""
        where = f" GPU {cell.cuda_visible_devices}" if cell.cuda_visible_devices else ""
        text = cell_text(cell.model_copy(update={"directory": None})).replace("\\", "")
        console.print(f"  {_esc(cell.key):<32} {_esc(text)}{where}{took}", highlight=False)

    outcome = run_matrix(args.profiles, classes, opts, engine, on_cell=finished, on_plan=planned)
    rec = outcome.record
    verdict = "[green]PASSED[/]" if rec.exit_code == 0 else f"[red]{rec.status.upper()}[/]"
    console.print(
        f"{verdict} {sum(c.status == 'passed' for c in rec.cells)}/{len(rec.cells)} cells passed "
        f"({sum(c.status == 'skipped' for c in rec.cells)} skipped) in {rec.wall_s:.1f} s; "
        f"matrix: {_esc(outcome.matrix_dir)}"
    )
    return outcome.exit_code


def cmd_doctor(args: argparse.Namespace) -> int:
    from orchestrator.doctor import doctor

    return doctor(args, _console())


def cmd_report(args: argparse.Namespace) -> int:
    from rich.table import Table

    from orchestrator import report

    a, b = report.load(args.run_a), report.load(args.run_b)
    if a["profile"] != b["profile"]:
        _console(stderr=True).print(
            f"note: comparing different profiles ({a['profile']} vs {b['profile']})", markup=False
        )
    table = Table("demo", "A", "B", "answer", "latency B/A")
    changed = 0
    for row in report.diff(a, b):
        moved = row["status_a"] != row["status_b"]
        changed += moved
        ratio = row["latency_ratio"]
        table.add_row(
            _esc(row["name"]),
            row["status_a"],
            f"[bold]{row['status_b']}[/]" if moved else row["status_b"],
            "changed" if row["answer_changed"] else "same",
            f"{ratio:.2f}x" if ratio is not None else "–",
        )
    _console().print(table)
    return 1 if changed else 0


def cmd_models(args: argparse.Namespace) -> int:
    from orchestrator import models

    path = models.build(args.name, args.vllm_bin, force=args.force)
    _console().print(f"{args.name}: {path}", markup=False)
    return 0


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
}


if __name__ == "__main__":
    sys.exit(main())
