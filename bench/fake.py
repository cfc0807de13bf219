"""The fake `vllm serve` (tests/fake_vllm.py) for the benchmarks: plans, supervised launches, plain launches.

Every side launches the fake the same way, through `launcher()`: with this interpreter, since the
`python3` on PATH may be a slow shim.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from orchestrator.launch.command import LaunchPlan, build_plan
from orchestrator.launch.server import Server
from orchestrator.profile.schema import ChatType, Demo, load_profile

REPO = Path(__file__).resolve().parent.parent
FAKE = REPO / "tests" / "fake_vllm.py"
PROFILE = REPO / "tests" / "profiles" / "fake-omni.yaml"
_serial = itertools.count()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def demos(only: ChatType | None = None) -> tuple[Demo, ...]:
    """The fake profile's demos (all six chat types), or just one of them."""
    profile = load_profile(str(PROFILE))
    return tuple(d for d in profile.demos if only is None or d.chat_type is only)


def launcher(work: Path) -> Path:
    """An executable `vllm`: the fake, run by this interpreter."""
    path = work / "bin" / "vllm"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"#!{sys.executable}\n"
            "import runpy, sys\n"
            f"sys.argv[0] = {str(FAKE)!r}\n"
            f"runpy.run_path({str(FAKE)!r}, run_name='__main__')\n"
        )
        path.chmod(0o755)
    return path


def plan(work: Path, media_dir: Path | None = None, **switches: str) -> LaunchPlan:
    """mmdemo's own plan for the fake profile, run by this interpreter, with FAKE_VLLM_<switch> set."""
    resolved = load_profile(str(PROFILE)).resolve("cpu")
    vllm = str(launcher(work))
    built = build_plan(
        resolved, vllm_bin=vllm, port=free_port(), media_dir=str(media_dir) if media_dir else None
    )
    env = {**built.env, **{f"FAKE_VLLM_{k.upper()}": v for k, v in switches.items()}}
    return replace(built, argv=(sys.executable, *built.argv), env=env)


@contextlib.contextmanager
def server(
    work: Path, media_dir: Path | None = None, grace_s: float = 5.0, **switches: str
) -> Iterator[Server]:
    """A started, supervised fake; stopped on the way out whatever happened."""
    log_path = work / "logs" / f"fake-{next(_serial)}.log"
    supervised = Server(plan(work, media_dir, **switches), log_path=log_path, grace_s=grace_s)
    supervised.start()
    try:
        yield supervised
    finally:
        supervised.stop()


def wait_for_file(path: Path, timeout_s: float = 20.0, poll_s: float = 0.002) -> float:
    """The number a fake writes into READY_FILE (a time.monotonic() instant), once it exists."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            return float(path.read_text())
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fake never wrote {path}")
        time.sleep(poll_s)
