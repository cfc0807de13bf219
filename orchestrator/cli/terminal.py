"""The terminal: progress while a run goes on, the result table, errors with their evidence.

Only the CLI talks to the terminal, through this module; every text from outside passes `_esc`
(render/text.py's sanitiser: no control bytes, no rich markup or emoji interpreted).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from orchestrator.core.errors import MMDemoError, ServerError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.core.tasks import Task
    from orchestrator.record.report import RunRecord
    from orchestrator.session.context import Endpoint
    from orchestrator.session.run import Outcome


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    # emoji=False: an answer saying ":smile:" is text, not a picture.
    console = Console(stderr=stderr, highlight=False, soft_wrap=True, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # CI logs and pipes: rich's 80 columns would wrap every table row
    return console


class TerminalEvents:
    """Progress on the terminal: a live line on a TTY, plain periodic lines in CI logs."""

    def __init__(self, console: Console, follow_logs: bool = False, every_s: float = 5.0) -> None:
        self.console = console
        self.follow_logs = follow_logs
        self.tty = console.is_terminal
        self.every_s = every_s
        self._last_plain = -1e9
        self._status: Any = None
        # Readiness and the budget report from two threads at once (session.run.ready_beside_the_count):
        # one lock around the spinner and each line, so neither sees the other's half-done state.
        self._lock = threading.RLock()

    def stage(self, name: str, detail: str = "") -> None:
        with self._lock:
            self._stage(name, detail)

    def _stage(self, name: str, detail: str) -> None:
        self._stop_status()
        if name == "launch":
            self.console.print(f"[bold]launch[/]  {esc(detail)}", markup=True, highlight=False)
            return
        self.console.print(f"[bold]{name:<8}[/] {esc(detail)}", highlight=False)

    def waiting(self, elapsed_s: float, phase: str) -> None:
        with self._lock:
            self._waiting(elapsed_s, phase)

    def _waiting(self, elapsed_s: float, phase: str) -> None:
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
        if not self.follow_logs:
            return
        with self._lock:
            self._log_line(line)

    def _log_line(self, line: str) -> None:
        if self.tty:
            self.console.print(f"[dim]  | {esc(line)}[/]", highlight=False)
        else:
            from orchestrator.render.text import visible

            print(f"  | {visible(line)}", flush=True)

    def ready(self, endpoint: Endpoint, elapsed_s: float) -> None:
        with self._lock:
            self._stop_status()
            self.console.print(f"[green]ready[/]    in {elapsed_s:.1f} s at {esc(endpoint.base_url)}")

    def download(self, key: str, done: int, total: int | None) -> None:
        with self._lock:
            self._download(key, done, total)

    def _download(self, key: str, done: int, total: int | None) -> None:
        size = f"{done / 2**20:.1f}" + (f"/{total / 2**20:.1f}" if total else "") + " MB"
        if self.tty:
            text = f"downloading {esc(key)}: {size}"
            if self._status is None:
                self._status = self.console.status(text)
                self._status.start()
            else:
                self._status.update(text)
        elif total and done >= total:
            self.console.print(f"downloaded {esc(key)}: {size}", highlight=False)

    def demo_done(self, result: Any) -> None:
        mark = "[green]✓[/]" if result.passed else "[red]✗[/]"
        detail = f"{result.latency_s:.2f} s" if result.passed else (result.error or "failed")
        from orchestrator.render.text import one_line

        with self._lock:
            self.console.print(
                f"  {mark} {esc(result.name):<26} {esc(one_line(detail, 200))}", highlight=False
            )

    def download_bar(self, label: str) -> contextlib.AbstractContextManager[Callable[[int, int], None]]:
        from orchestrator.cli.progress import DownloadProgress

        with self._lock:
            self._stop_status()
        return DownloadProgress(self.console, label)

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def finish(console: Console, outcome: Outcome) -> int:
    from rich.table import Table

    from orchestrator.render.markdown import failed_line
    from orchestrator.render.text import one_line

    record = outcome.record
    if record.demos:
        table = Table("demo", "status", "latency", "TTFT", "tokens in/out", "answer or error", title="demos")
        for d in record.demos:
            ok = d.status == "passed"
            status = (
                ("[green]understood[/]" if d.verdict == "understood" else "[green]passed[/]")
                if ok
                else f"[red]{d.status}[/]"
            )
            table.add_row(
                esc(d.name),
                status,
                f"{d.latency_s:.2f} s",
                f"{d.ttft_s:.2f} s" if d.ttft_s is not None else "–",
                f"{_n(d.prompt_tokens)}/{_n(d.completion_tokens)}",
                esc(
                    failed_line(d, 70) if d.verdict == "failed" else one_line(d.answer if ok else d.error, 70)
                ),
            )
        console.print(table)
        for d in record.demos:
            if d.diagnosis:
                console.print(f"[yellow]why[/]      {esc(d.name)}: {esc(d.diagnosis)}", highlight=False)
    teardown = record.teardown
    if teardown:
        steps = [*teardown.container_steps, *teardown.signals]
        left = f"{teardown.remaining} process(es)"
        if teardown.containers_remaining is not None:
            left += f" and {teardown.containers_remaining} container(s)"
        console.print(
            f"teardown {teardown.duration_s:.2f} s ({' -> '.join(steps) or 'already gone'}), "
            f"{left} left, port {'free' if teardown.port_free else 'HELD'}",
            highlight=False,
        )
    for note in record.notes:
        console.print(f"[dim]note: {esc(note)}[/]")
    if outcome.error is not None:
        show_error(outcome.error)
    summary = record.summary
    verdict = "[green]PASSED[/]" if outcome.exit_code == 0 else f"[red]{record.status.upper()}[/]"
    understood = f", {summary.understood} understood" if summary.understood else ""
    hung = f", {summary.hung} hung" if summary.hung else ""
    hung += f", {summary.interrupted} in flight when interrupted" if summary.interrupted else ""
    page = outcome.run_dir / "report.html"
    where = page if page.exists() else outcome.run_dir
    console.print(
        f"{verdict} {summary.passed}/{summary.total} requests ({rounds(record)}){understood}{hung}; "
        f"report: {esc(where)}"
    )
    return outcome.exit_code


def rounds(record: RunRecord) -> str:
    """'11 demos, 10 repeats, the worst case': what the requests were."""
    counts = {
        kind: sum(1 for d in record.demos if d.kind == kind) for kind in ("demo", "repeat", "worst case")
    }
    parts = [f"{counts['demo']} demos"]
    if counts["repeat"]:
        parts.append(f"{counts['repeat']} repeats")
    if counts["worst case"]:
        parts.append("the worst case")
    return ", ".join(parts)


def esc(value: object) -> str:
    """Text from outside (answers, server messages, paths, log lines): no control bytes, no markup."""
    from orchestrator.render.text import terminal

    return terminal(str(value))


def _n(value: object) -> str:
    return "–" if value is None else str(value)


EXAMPLE = "openai_chat_completion_client_for_multimodal.py"


def serve_banner(endpoint: Endpoint, *, chats: bool = True, tasks: Sequence[Task] = ()) -> str:
    """What `mmdemo serve` prints once ready: the endpoint, a curl line, and how to run vLLM's example
    client of each chat type (when the profile runs any) and of each task past chat it runs."""
    model, key = endpoint.model, endpoint.api_key
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    lines = [
        f"base URL: {endpoint.base_url}",
        f"model:    {model}",
        f"API key:  {key}",
    ]
    if chats:
        lines += [
            "try:",
            "  curl -s "
            + shlex.quote(f"{endpoint.base_url}/chat/completions")
            + f" -H {shlex.quote('Authorization: Bearer ' + key)} -H 'Content-Type: application/json' -d "
            + shlex.quote(body),
        ]
    unmodified = endpoint.base_url.endswith(":8000/v1") and key == "EMPTY"
    if chats and unmodified:
        lines.append(f"vLLM's example client ({EXAMPLE}, unmodified) works against this server:")
        lines += [f"  python {EXAMPLE} -c {c}" for c in CHAT_TYPES]
    elif chats:
        lines.append(
            f"vLLM's example client ({EXAMPLE}) expects http://localhost:8000/v1 and the key EMPTY: "
            "serve with --port 8000 --api-key EMPTY to run it unmodified"
        )
    if tasks:
        lines += task_clients(endpoint, tasks, unmodified)
    return "\n".join(lines)


# How each task's example client (core/tasks.py ROUTES[task].example, in vLLM's repository) is run:
# its arguments, and whether it reaches any server (--host/--port, a route vLLM does not guard with the
# key: only /v1, /v2, /inference and /cohere are, vllm/entrypoints/serve/middleware/authenticate.py)
# or only http://localhost:8000/v1 with the key EMPTY, hard-coded.
TASK_CLIENT_ARGS: dict[str, tuple[str, bool]] = {
    "transcription": ("--audio_path CLIP.wav", False),
    "translation": ("--audio_path CLIP.wav", False),
    "realtime": ("--audio_path CLIP.wav", False),
    "embedding": ("--model clip  # or siglip, vlm2vec, ...: the run_* of your model", False),
    "score": ("--host {host} --port {port}", True),
    "rerank": ("--host {host} --port {port}", True),
    "classify": ("--host {host} --port {port}", True),
    "responses": ("", False),
}
# The media features have no example client: the docs page that shows their payloads (ROUTES[t].example).
NO_CLIENT = {"uuid": "a uuid with no data", "image-embeds": "image_embeds with --enable-mm-embeds"}


def task_clients(endpoint: Endpoint, tasks: Sequence[Task], unmodified: bool) -> list[str]:
    """The lines that run each task's example client against this server, or say what it needs."""
    from urllib.parse import urlsplit

    from orchestrator.core.tasks import ROUTES

    url = urlsplit(endpoint.base_url)
    lines = ["vLLM's example client of each task (in vLLM's repository):"]
    for task in dict.fromkeys(tasks):
        if task.value in NO_CLIENT:
            lines.append(
                f"  {task.value}: no example client; {ROUTES[task].example} shows {NO_CLIENT[task.value]}"
            )
            continue
        args, anywhere = TASK_CLIENT_ARGS[task.value]
        args = args.format(host=url.hostname or "localhost", port=url.port or 80)
        line = f"  python {ROUTES[task].example} {args}".rstrip()
        if not (anywhere or unmodified):
            line += "  # needs --port 8000 --api-key EMPTY"
        lines.append(line)
    return lines


CHAT_TYPES = ("text-only", "single-image", "multi-image", "video", "audio", "multi-audio")


def show_error(exc: MMDemoError) -> None:
    """The error, its evidence (command, log tail) and hint, on stderr, sanitised."""
    err = console(stderr=True)
    err.print(f"[bold red]error:[/] {esc(exc)}", highlight=False)
    if isinstance(exc, ServerError):
        if exc.argv:
            err.print(f"  command: {esc(shlex.join(exc.argv))}", highlight=False)
        if exc.log_path:
            err.print(f"  server log: {esc(exc.log_path)}", highlight=False)
        if exc.log_tail:
            err.print(f"  last {len(exc.log_tail)} log lines:", markup=False)
            for line in exc.log_tail:
                err.print(f"  | {esc(line)}", highlight=False)
    if exc.hint:
        err.print(f"[yellow]hint:[/] {esc(exc.hint)}")
