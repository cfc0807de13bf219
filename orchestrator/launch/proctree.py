"""The run's process tree, with one owner: its tag, the descendants seen, the watchdog link, its end.

Teardown is the promise users trust mmdemo for: SIGTERM to the whole process group, a grace period
(vLLM's engine needs ~5 s; an early SIGKILL orphans workers), SIGKILL, a sweep of every process that
carries the run's environment tag (escapees of the group included), then a wait until the port is
free and, on a GPU, until NVML no longer lists the killed PIDs. The watchdog, which does the same if
mmdemo itself dies, is given the same grace.

When the server runs in a container, the tree is the `docker run` / `podman run` client, and the
container is the tree's too, although none of its processes is a descendant of ours: it is ended
first, through the runtime (stop with the grace, kill, remove), then the client, then any container
the label still finds; the watchdog is told the runtime and the label.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from orchestrator.launch import watchdog
from orchestrator.record.report import TeardownRecord

log = logging.getLogger(__name__)

POLL_S = 0.02
PORT_FREE_WAIT_S = 5.0
GPU_RELEASE_WAIT_S = 30.0
TRACK_S = 0.25

Clock = Callable[[], float]


class ProcessTree:
    """Every process of one server: tagged at launch, tracked and guarded while it runs, ended once."""

    def __init__(
        self,
        *,
        grace_s: float,
        gpu_pids: Callable[[], set[int] | None] | None = None,
        clock: Clock = time.monotonic,
        container: watchdog.Container | None = None,
    ) -> None:
        self.tag = secrets.token_hex(8)
        self.grace_s = grace_s
        self.container = container
        self._gpu_pids = gpu_pids
        self._clock = clock
        self._leader: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, int] = {}  # descendant pid -> its start time (guards against pid reuse)
        self._hurry = threading.Event()
        self._stopping = threading.Event()
        self._tracker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._teardown: TeardownRecord | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment entry that tags every process of the tree."""
        return {watchdog.TAG_VAR: self.tag}

    @property
    def pid(self) -> int | None:
        """The leader's pid (also its group and session id), once started."""
        return self._leader.pid if self._leader else None

    def adopt(self, leader: subprocess.Popen[bytes]) -> None:
        """Take `leader`, a session leader just started, as the tree's root: end() ends it from now on."""
        self._leader = leader

    def start(self) -> None:
        """Guard the adopted tree: the watchdog behind it and the descendant tracker."""
        leader = self._leader
        assert leader is not None, "adopt() first"
        argv = [sys.executable, "-S", "-E", watchdog.__file__, self.tag, str(leader.pid), str(self.grace_s)]
        if self.container is not None:
            argv += [self.container.runtime, self.container.label]
        self._watchdog = subprocess.Popen(
            # -S -E: stdlib only, so skip site-packages and PYTHON* settings: a faster start.
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._tracker = threading.Thread(target=self._track, name="descendant-tracker", daemon=True)
        self._tracker.start()

    def census(self) -> set[int]:
        """Live processes of the tree: its group and session, tagged ones, and descendants seen."""
        return watchdog.census(self.tag, self.pid, dict(self._seen))

    def hurry(self) -> None:
        """Skip what is left of the grace period (a second Ctrl-C)."""
        self._hurry.set()

    def remember_descendants(self) -> None:
        """Record the leader's descendants now, so one that leaves group and session is still found."""
        import psutil

        if self._leader is None or self._leader.poll() is not None:
            return
        try:
            children = psutil.Process(self._leader.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            started = watchdog.start_time(child.pid)
            if started is not None and child.pid not in self._seen:
                self._seen[child.pid] = started
                self.tell(f"{child.pid} {started}\n".encode())

    def _track(self) -> None:
        # Descendants are recorded while they are still descendants: once their parent dies, or
        # once they leave the session, nothing else links them to this run.
        while not self._stopping.wait(TRACK_S):
            self.remember_descendants()

    def tell(self, message: bytes) -> None:
        """Send the watchdog a line; a watchdog already gone is not an error."""
        dog = self._watchdog
        if dog is not None and dog.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                dog.stdin.write(message)
                dog.stdin.flush()

    def disarm(self) -> None:
        """Tell the watchdog the tree is ended and wait for it to exit."""
        dog = self._watchdog
        if dog is None or dog.stdin is None:
            return
        with contextlib.suppress(OSError, ValueError):  # ValueError: the pipe is already closed
            dog.stdin.write(watchdog.DISARM)
            dog.stdin.flush()
        with contextlib.suppress(OSError):
            dog.stdin.close()
        try:
            dog.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            dog.kill()
            dog.wait()

    def end(self, port_free: Callable[[], bool]) -> TeardownRecord:
        """End the whole tree, then wait for `port_free()` and the GPU; idempotent, never raises for the gone."""
        with self._lock:
            if self._teardown is None:
                self._teardown = self._end(port_free)
            return self._teardown

    def _end(self, port_free: Callable[[], bool]) -> TeardownRecord:
        if self._leader is None:
            return TeardownRecord(
                duration_s=0.0,
                signals=(),
                processes_signalled=0,
                escaped=0,
                remaining=0,
                returncode=None,
                port_free=True,
                gpu_released=None,
                containers_remaining=0 if self.container else None,
            )
        proc, pgid = self._leader, self._leader.pid
        t0 = self._clock()
        self._stopping.set()
        if self._tracker is not None:
            self._tracker.join()
        self.remember_descendants()
        escaped = len(self.census() - watchdog.group_pids(pgid))
        in_container, container_steps = self._end_container()
        ending = watchdog.end_tree(
            self.tag, pgid, self.grace_s, dict(self._seen), hurry=self._hurry.is_set, reap=proc.poll
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        containers_left = None
        if self.container is not None:  # one the client was still creating when it was ended
            swept = watchdog.end_containers(self.container.runtime, self.container.label, 0)
            container_steps += [f"sweep: {step}" for step in swept.steps]
            containers_left = swept.left
        freed = self._wait(port_free, PORT_FREE_WAIT_S)
        gpu_released = self._wait_gpu_release(ending.signalled | in_container)
        self.disarm()
        teardown = TeardownRecord(
            duration_s=self._clock() - t0,
            signals=tuple(ending.signals),
            processes_signalled=len(ending.signalled),
            escaped=escaped,
            remaining=len(ending.survivors),
            returncode=proc.returncode,
            port_free=freed,
            gpu_released=gpu_released,
            container_steps=tuple(container_steps),
            containers_remaining=containers_left,
        )
        log.info("teardown: %s", teardown)
        return teardown

    def _end_container(self) -> tuple[set[int], list[str]]:
        """Stop, kill and remove the run's container through its runtime: (its processes' host pids,
        for the GPU release check; the runtime commands run)."""
        if self.container is None:
            return set(), []
        import psutil

        runtime, label = self.container.runtime, self.container.label
        pids: set[int] = set()
        if (init := watchdog.container_pid(runtime, self.container.name)) is not None:
            with contextlib.suppress(psutil.Error):
                pids = {init, *(p.pid for p in psutil.Process(init).children(recursive=True))}
        ending = watchdog.end_containers(runtime, label, self.grace_s, hurry=self._hurry.is_set)
        return pids, ending.steps

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
