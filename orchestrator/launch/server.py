"""The supervised server: launch `vllm serve`, know the moment it is ready or dead, have it torn down.

The process tree it starts (tag, descendants, watchdog, teardown) is owned by `proctree.ProcessTree`;
the evidence of a failure is gathered by `evidence`.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import functools
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from orchestrator.core.errors import Interrupted, ServerError, describe_returncode
from orchestrator.core.options import DEFAULTS
from orchestrator.launch import api, evidence
from orchestrator.launch.command import LaunchPlan, Redactor
from orchestrator.launch.ports import connect_host, port_is_free
from orchestrator.launch.proctree import ProcessTree
from orchestrator.launch.watchdog import Container
from orchestrator.record.report import TeardownRecord
from orchestrator.vllm.logscan import LogFollower

log = logging.getLogger(__name__)

POLL_S = 0.02
RUNTIME_REFUSED = (125, 126, 127)  # `docker run` / `podman run` itself failed, not the container

Clock = Callable[[], float]


class Probe(enum.Enum):
    """What one readiness probe saw."""

    REFUSED = "refused"  # nothing listens yet: vLLM refuses connections while loading
    NOT_READY = "not ready"  # it answers, but /health or /v1/models is not there yet
    READY = "ready"


@dataclass(frozen=True)
class Ready:
    """The server answered: when, and what it serves."""

    elapsed_s: float
    ready_at: float
    models: tuple[str, ...]


class Timeout(Exception):
    """The deadline passed before the server was ready."""


class Cancelled(Exception):
    """A stop was requested while we waited."""


class Exited(Exception):
    """The server process ended while we waited."""

    def __init__(self, returncode: int) -> None:
        super().__init__(returncode)
        self.returncode = returncode


def wait_until(
    probe: Callable[[float], Probe],
    exited: Callable[[], int | None],
    *,
    timeout_s: float,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = POLL_S,
    on_tick: Callable[[float], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> float:
    """Poll until `probe` says READY within one deadline; returns the monotonic time it did.

    The child is checked on every pass, so a crash fails at once whatever its exit code, and a
    probe that answers after the deadline does not count.
    """
    start = clock()
    deadline = start + timeout_s
    while True:
        if cancelled():
            raise Cancelled
        code = exited()
        if code is not None:
            raise Exited(code)
        now = clock()
        if now >= deadline:
            raise Timeout
        seen = probe(deadline - now)
        answered = clock()
        if seen is Probe.READY:
            if answered > deadline:
                raise Timeout
            code = exited()
            if code is not None:  # answered, then died: not ready
                raise Exited(code)
            return answered
        if on_tick:
            on_tick(answered - start)
        sleep(poll_s)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """`setpriv --pdeathsig KILL --`, where util-linux's setpriv has that option (2.33 and later), else ().

    PR_SET_PDEATHSIG: if mmdemo dies, the API server gets SIGKILL at once (the watchdog sweeps the rest,
    and is the guarantee: without setpriv it ends the server too, a poll later). Set by setpriv, which
    then execs the server in the same process, never by a `preexec_fn`: Python code run in the child
    between fork and exec can hang it there for good. The interpreter's after-fork clean-up destroys
    the other threads' thread-locals in the child; PyAV's video reformatter held in one (the media
    step's thread) waited forever on a condition variable in `sws_freeContext`, and `Popen`, waiting
    for the exec, with it (the fresh-clone CI hung 80 minutes in tests/test_container_gpus.py)."""
    if sys.platform != "linux":
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:  # its help text names the option: read from the binary (~80 KB), not a run on the launch path
        knows = b"pdeathsig" in Path(setpriv).read_bytes()
    except OSError:
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if knows else ()


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Stop signals that arrive while the server is started and put on record are handled once it is.

    A Ctrl-C between fork and `self._proc = ...` would lose the child. Python runs signal handlers in
    the main thread only, so elsewhere there is nothing to hold. Not a signal mask: the child inherits
    a mask, and undoing it in the child takes a `preexec_fn` (see `_pdeathsig_prefix`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, FrameType | None]] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append((signum, frame))

    previous: dict[signal.Signals, Any] = {}
    for sig in _STOP_SIGNALS:
        old = signal.getsignal(sig)
        if old is None or old == signal.SIG_IGN:  # an ignore stays (nohup); None: set outside Python
            continue
        previous[sig] = signal.signal(sig, hold)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        for signum, frame in held:
            old = previous[signal.Signals(signum)]
            if callable(old):
                old(signum, frame)
            else:  # SIG_DFL: its default action, now
                signal.raise_signal(signum)


def seconds(value: float) -> str:
    """A duration as people read it: `600 s`, `1 s`, `0.5 s`, never a sub-second one as `0 s`."""
    if value >= 10:
        return f"{value:.0f} s"
    return f"{value:.2g} s"


_LIVE: set[Server] = set()


@atexit.register
def _atexit_net() -> None:  # pragma: no cover - exercised by the kill-matrix tests
    for server in list(_LIVE):
        server.stop()


class Server:
    """`vllm serve` as a context manager: started on enter, always torn down on exit."""

    def __init__(
        self,
        plan: LaunchPlan,
        *,
        log_path: Path,
        api_key: str | None = None,
        grace_s: float = DEFAULTS.grace_s,
        gpu_pids: Callable[[], set[int] | None] | None = None,
        clock: Clock = time.monotonic,
        container: Container | None = None,
    ) -> None:
        """`plan` is what to start: `vllm serve ...`, or the `docker run ...` line of `container`,
        which the process tree then ends through its runtime."""
        self.plan = plan
        self.log_path = log_path
        # hex, not urlsafe: a key starting with "-" could not be passed back as `--api-key KEY`
        self.api_key = api_key or secrets.token_hex(20)
        self.tree = ProcessTree(grace_s=grace_s, gpu_pids=gpu_pids, clock=clock, container=container)
        self.ready_at: float | None = None
        self.redact = Redactor([*plan.secrets, self.api_key])
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self.follower = LogFollower(log_path)
        self.started_at: float | None = None

    # -- launch ------------------------------------------------------------------------------

    @property
    def tag(self) -> str:
        return self.tree.tag

    @property
    def grace_s(self) -> float:
        return self.tree.grace_s

    @property
    def host(self) -> str:
        return connect_host(self.plan.host)

    @property
    def port(self) -> int:
        return self.plan.port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def display_argv(self) -> list[str]:
        return [self.redact(a) for a in self.plan.argv]

    def start(self) -> None:
        """Start the server in a new session, its output into the log file, the watchdog behind it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.plan.env, "VLLM_API_KEY": self.api_key, **self.tree.env}
        with self.log_path.open("ab") as out:
            out.write(f"# mmdemo: {' '.join(self.display_argv)}\n".encode())
            out.flush()
            # setpriv only before a command that is there: else Popen's own error names it
            found = shutil.which(self.plan.argv[0], path=env.get("PATH")) is not None
            argv = [*_pdeathsig_prefix(), *self.plan.argv] if found else self.plan.argv
            with _stop_signals_held():
                try:
                    self._proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                    self.started_at = self._clock()
                    # On record before stop signals are handled: a Ctrl-C from here on ends the tree.
                    self.tree.adopt(self._proc)
                    _LIVE.add(self)
                except OSError as exc:
                    raise ServerError(
                        f"could not start {self.plan.argv[0]!r}: {exc.strerror or exc}",
                        argv=self.display_argv,
                    ) from None
        self.tree.start()
        log.info("started pid %d: %s", self._proc.pid, " ".join(self.display_argv))

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- readiness ---------------------------------------------------------------------------

    def returncode(self) -> int | None:
        """The exit code once the server process has ended (reaping it), else None."""
        return self._proc.poll() if self._proc else None

    def health_problem(self) -> str | None:
        """Why the server is no longer healthy (exited, or /health not 200), or None if it is."""
        code = self.returncode()
        if code is not None:
            return describe_returncode(code)
        answer = self.request("/health", 5.0)
        if answer is None:
            return "/health does not answer"
        if answer[0] != 200:
            return f"/health answers {answer[0]}: the engine is dead"
        return None

    def request(self, path: str, timeout_s: float) -> tuple[int, bytes] | None:
        """GET path with the API key; None when the connection fails."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=max(timeout_s, 0.05))
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.api_key}"})
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def version(self) -> str | None:
        """The running server's own vLLM version (GET /version), None when it does not say."""
        answer = self.request("/version", 5.0)
        if answer is None or answer[0] != 200:
            return None
        try:
            version = json.loads(answer[1]).get("version")
        except (ValueError, AttributeError):
            return None
        return str(version) if version else None

    def _probe(self, remaining_s: float) -> Probe:
        health = self.request("/health", min(2.0, remaining_s))
        if health is None:
            return Probe.REFUSED
        if health[0] != 200:
            return Probe.NOT_READY
        return Probe.READY if self.plan.served_model_name in self._models(remaining_s) else Probe.NOT_READY

    def _models(self, remaining_s: float) -> tuple[str, ...]:
        answer = self.request("/v1/models", min(5.0, remaining_s))
        if answer is None or answer[0] != 200:
            return ()
        return tuple(api.parse_models(answer[1]) or ())

    def wait_ready(
        self,
        timeout_s: float,
        *,
        on_tick: Callable[[float, str], None] | None = None,
        on_log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Ready:
        """Block until /health is 200 and /v1/models lists the served model, or raise ServerError."""
        assert self._proc is not None, "start() first"

        def tick(elapsed: float) -> None:
            for line in self.follower.poll():
                if on_log:
                    on_log(self.redact(line))
            if on_tick:
                on_tick(elapsed, self.follower.phase)

        start = self.started_at or self._clock()
        try:
            ready_at = wait_until(
                self._probe,
                self.returncode,
                timeout_s=max(0.0, timeout_s - (self._clock() - start)),
                clock=self._clock,
                sleep=sleep,
                on_tick=tick,
                cancelled=cancelled,
            )
        except Cancelled:
            raise Interrupted("stop") from None
        except Exited as died:
            refused = self.tree.container is not None and died.returncode in RUNTIME_REFUSED
            raise self.failure(
                "vllm serve exited before it was ready",
                returncode=died.returncode,
                hint="the container runtime did not start it: its reason is the log's last line"
                if refused
                else None,
            ) from None
        except Timeout:
            raise self.failure(
                f"vllm serve was not ready within {seconds(timeout_s)} (last phase: {self.follower.phase})",
                timeout_s=timeout_s,
                hint="raise --timeout if the model is still downloading or compiling",
            ) from None
        tick(ready_at - start)
        self.ready_at = ready_at
        return Ready(elapsed_s=ready_at - start, ready_at=ready_at, models=self._models(5.0))

    def failure(
        self,
        reason: str,
        *,
        returncode: int | None = None,
        timeout_s: float | None = None,
        hint: str | None = None,
    ) -> ServerError:
        """A ServerError carrying the evidence: argv, how it ended, the log tail and a diagnosis."""
        return evidence.server_error(
            reason,
            argv=self.display_argv,
            follower=self.follower,
            redact=self.redact,
            returncode=returncode,
            timeout_s=timeout_s,
            hint=hint,
        )

    def log_mark(self) -> int:
        """Where the server's log ends now: a mark for `log_since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int, most: int = 40) -> list[str]:
        """The last `most` lines the server logged since `mark`, secrets redacted."""
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(mark)
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [self.redact(line) for line in text.splitlines()[-most:]]

    def redact_log(self) -> None:
        """Rewrite server.log with every secret replaced (once the server has stopped writing it)."""
        evidence.redact_log(self.log_path, self.redact)

    # -- teardown: the process tree's ----------------------------------------------------------

    def hurry(self) -> None:
        """Skip what is left of the grace period (a second Ctrl-C)."""
        self.tree.hurry()

    def census(self) -> set[int]:
        """Live processes of this server: its group and session, tagged ones, and descendants seen."""
        return self.tree.census()

    def stop(self) -> TeardownRecord:
        """End the whole tree; idempotent. Never raises for processes that are already gone."""
        teardown = self.tree.end(port_free=lambda: port_is_free(self.plan.host, self.port))
        _LIVE.discard(self)
        return teardown
