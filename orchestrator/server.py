"""The supervised server: launch `vllm serve`, know the moment it is ready or dead, tear it all down.

Teardown is the promise users trust mmdemo for: SIGTERM to the whole process group, a grace period
(vLLM's engine needs ~5 s; an early SIGKILL orphans workers), SIGKILL, a sweep of every process that
carries the run's environment tag (escapees of the group included), then a wait until the port is
free and, on a GPU, until NVML no longer lists the killed PIDs.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import enum
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from orchestrator import watchdog
from orchestrator.command import LaunchPlan, Redactor
from orchestrator.errors import Interrupted, ServerError, describe_returncode
from orchestrator.logscan import LogFollower, diagnose

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 15.0
POLL_S = 0.02
PORT_FREE_WAIT_S = 5.0
GPU_RELEASE_WAIT_S = 30.0
WATCHDOG_GRACE_S = 3.0
TRACK_S = 0.25

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


@dataclass(frozen=True)
class Teardown:
    """How the server ended: for the report. `remaining` must be 0."""

    duration_s: float
    signals: tuple[str, ...]
    processes_signalled: int
    escaped: int
    remaining: int
    returncode: int | None
    port_free: bool
    gpu_released: bool | None


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


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # The parent blocks stop signals around the launch; the server must receive them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # PR_SET_PDEATHSIG: if mmdemo dies the API server gets SIGKILL; the watchdog sweeps its engine.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind would succeed)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def connect_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


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
        grace_s: float = DEFAULT_GRACE_S,
        gpu_pids: Callable[[], set[int] | None] | None = None,
        clock: Clock = time.monotonic,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.plan = plan
        self.log_path = log_path
        # hex, not urlsafe: a key starting with "-" could not be passed back as `--api-key KEY`
        self.api_key = api_key or secrets.token_hex(20)
        self.tag = secrets.token_hex(8)
        self.grace_s = grace_s
        self.redact = Redactor([*plan.secrets, self.api_key])
        self._gpu_pids = gpu_pids
        self._clock = clock
        self._proc: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._hurry = threading.Event()
        self._teardown: Teardown | None = None
        self._lock = threading.Lock()
        self.follower = LogFollower(log_path)
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.extra_env = dict(extra_env or {})
        self._seen: dict[int, int] = {}  # descendant pid -> its start time (guards against pid reuse)
        self._stopping = threading.Event()
        self._tracker: threading.Thread | None = None

    # -- launch ------------------------------------------------------------------------------

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
        env = {
            **os.environ,
            **self.plan.env,
            **self.extra_env,  # e.g. a matrix cell's CUDA_VISIBLE_DEVICES
            "VLLM_API_KEY": self.api_key,
            watchdog.TAG_VAR: self.tag,
        }
        with self.log_path.open("ab") as out:
            out.write(f"# mmdemo: {' '.join(self.display_argv)}\n".encode())
            out.flush()
            # A Ctrl-C between fork and `self._proc = ...` would lose the child: hold stop signals
            # until the server is on record, then take them (the handler raises, teardown runs).
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                self._proc = subprocess.Popen(
                    self.plan.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_child_setup if sys.platform == "linux" else None,  # noqa: PLW1509
                )
                self.started_at = self._clock()
                _LIVE.add(self)
            except OSError as exc:
                raise ServerError(
                    f"could not start {self.plan.argv[0]!r}: {exc.strerror or exc}",
                    argv=self.display_argv,
                ) from None
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._watchdog = subprocess.Popen(
            # -S -E: stdlib only, so skip site-packages and PYTHON* settings: a faster start.
            [
                sys.executable,
                "-S",
                "-E",
                watchdog.__file__,
                self.tag,
                str(self._proc.pid),
                str(WATCHDOG_GRACE_S),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._tracker = threading.Thread(target=self._track, name="descendant-tracker", daemon=True)
        self._tracker.start()
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
        try:
            return tuple(str(m["id"]) for m in json.loads(answer[1])["data"])
        except (ValueError, KeyError, TypeError):
            return ()

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
            raise self.failure("vllm serve exited before it was ready", returncode=died.returncode) from None
        except Timeout:
            raise self.failure(
                f"vllm serve was not ready within {timeout_s:g} s (last phase: {self.follower.phase})",
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
        tail = [self.redact(line) for line in self.follower.tail()]
        found = diagnose(tail)
        return ServerError(
            reason=reason,
            argv=self.display_argv,
            returncode=returncode,
            timeout_s=timeout_s,
            log_tail=tail,
            diagnosis=found.message if found else None,
            log_path=str(self.log_path),
            hint=found.hint if found else hint,
        )

    def redact_log(self) -> None:
        """Rewrite server.log with every secret replaced (once the server has stopped writing it)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        clean = self.redact(text)
        if clean != text:
            tmp = self.log_path.with_name(self.log_path.name + ".tmp")
            tmp.write_text(clean, encoding="utf-8")
            os.replace(tmp, self.log_path)

    # -- teardown ----------------------------------------------------------------------------

    def hurry(self) -> None:
        """Skip what is left of the grace period (a second Ctrl-C)."""
        self._hurry.set()

    def census(self) -> set[int]:
        """Live processes of this server: its group and session, tagged ones, and descendants seen."""
        return watchdog.census(self.tag, self.pid, dict(self._seen))

    def remember_descendants(self) -> None:
        """Record the server's descendants now, so one that leaves group and session is still found."""
        import psutil

        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            children = psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            started = watchdog.start_time(child.pid)
            if started is not None and child.pid not in self._seen:
                self._seen[child.pid] = started
                self._tell_watchdog(f"{child.pid} {started}\n".encode())

    def _track(self) -> None:
        # Descendants are recorded while they are still descendants: once their parent dies, or
        # once they leave the session, nothing else links them to this run.
        while not self._stopping.wait(TRACK_S):
            self.remember_descendants()

    def _tell_watchdog(self, message: bytes) -> None:
        dog = self._watchdog
        if dog is not None and dog.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                dog.stdin.write(message)
                dog.stdin.flush()

    def stop(self) -> Teardown:
        """End the whole tree; idempotent. Never raises for processes that are already gone."""
        with self._lock:
            if self._teardown is None:
                self._teardown = self._stop()
            _LIVE.discard(self)
            return self._teardown

    def _stop(self) -> Teardown:
        if self._proc is None:
            return Teardown(0.0, (), 0, 0, 0, None, True, None)
        proc, pgid = self._proc, self._proc.pid
        t0 = self._clock()
        self._stopping.set()
        if self._tracker is not None:
            self._tracker.join()
        self.remember_descendants()
        escaped = len(self.census() - watchdog.group_pids(pgid))
        ending = watchdog.end_tree(
            self.tag, pgid, self.grace_s, dict(self._seen), hurry=self._hurry.is_set, reap=proc.poll
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        port_free = self._wait(lambda: port_is_free(self.plan.host, self.port), PORT_FREE_WAIT_S)
        gpu_released = self._wait_gpu_release(ending.signalled)
        self._disarm_watchdog()
        teardown = Teardown(
            duration_s=self._clock() - t0,
            signals=tuple(ending.signals),
            processes_signalled=len(ending.signalled),
            escaped=escaped,
            remaining=len(ending.survivors),
            returncode=proc.returncode,
            port_free=port_free,
            gpu_released=gpu_released,
        )
        log.info("teardown: %s", teardown)
        return teardown

    def _wait(self, done: Callable[[], bool], limit_s: float) -> bool:
        deadline = self._clock() + limit_s
        while not done():
            if self._clock() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _wait_gpu_release(self, killed: set[int]) -> bool | None:
        """Wait until NVML lists none of the killed pids; None where there is no NVML to ask."""
        gpu_pids = self._gpu_pids
        if gpu_pids is None or gpu_pids() is None:
            return None
        return self._wait(lambda: not ((gpu_pids() or set()) & killed), GPU_RELEASE_WAIT_S)

    def _disarm_watchdog(self) -> None:
        dog = self._watchdog
        if dog is None or dog.stdin is None:
            return
        with contextlib.suppress(OSError):
            dog.stdin.write(watchdog.DISARM)
            dog.stdin.flush()
        with contextlib.suppress(OSError):
            dog.stdin.close()
        try:
            dog.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            dog.kill()
            dog.wait()
