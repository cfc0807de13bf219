"""Scenario 9, containers: the same server on the host and in a podman container (`--image`), time to
ready and teardown as mmdemo's own report records them.

The fake `vllm serve` (fast): `mmdemo run tests/profiles/fake-omni.yaml --offline --only text-only`,
with the fake as --vllm-bin and in an image built here like the tests' (entrypoint `vllm serve`, the
host's /usr borrowed read-only). The real CPU vLLM (not --fast): cpu-tiny-omni on .venv-vllm and in
localhost/mmdemo/vllm-cpu:test (`make image-cpu`). Target: the container adds <= 2 s to time to ready.
Skipped, saying why, without podman; every container it starts is gone at the end, or a row says so.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from typing import Any

from bench import fake
from bench.overhead import clean_env, mmdemo_argv
from bench.procs import timed_run
from bench.real import PROFILE, unavailable, vllm_bin
from bench.result import Row, Scenario, Settings, median

NAME = "9 container"
START_TARGET_S = 2.0
CPU_IMAGE = "localhost/mmdemo/vllm-cpu:test"
CONF = fake.REPO / ".containers" / "containers.conf"  # written by scripts/install-podman.sh where needed


def podman() -> str | None:
    return shutil.which("podman")


def env(settings: Settings) -> dict[str, str]:
    out = clean_env(settings)
    if not out.get("CONTAINERS_CONF") and CONF.is_file():
        out["CONTAINERS_CONF"] = str(CONF)
    return out


def fake_image(runtime: str, settings: Settings) -> str:
    """The fake as an image of the official shape, imported from a rootfs of a few kB."""
    tag = f"localhost/mmdemo/bench-fake:{uuid.uuid4().hex[:8]}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("usr", "etc", "tmp", "proc", "sys", "dev", "run", "opt"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name in ("bin", "lib", "lib64", "sbin"):
            if os.path.islink(f"/{name}"):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{name}")
                tar.addfile(info)
        # the fake, and its routes past chat beside it (it imports them from its own directory)
        for path, content in (
            ("opt/fake/vllm", fake.FAKE.read_bytes()),
            ("opt/fake/fake_tasks.py", (fake.FAKE.parent / "fake_tasks.py").read_bytes()),
        ):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
    changes = [
        'ENTRYPOINT ["/usr/bin/python3", "/opt/fake/vllm", "serve"]',
        'LABEL org.mmdemo.host-mounts=[["/usr","/usr"]]',
    ]
    argv = [runtime, "import", *(w for c in changes for w in ("--change", c)), "-", tag]
    subprocess.run(
        argv, input=buffer.getvalue(), capture_output=True, timeout=120, check=True, env=env(settings)
    )
    return tag


def run(settings: Settings, profile: str, *extra: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """One `mmdemo run`: its report's time to ready and teardown, and its wall time."""
    runs = settings.work / f"runs-container-{uuid.uuid4().hex[:8]}"
    argv = [*mmdemo_argv(), "run", profile, "--offline", "--gpu", "cpu", "--runs-dir", str(runs), *extra]
    wall, code, out = timed_run(argv, env(settings), cwd=fake.REPO, timeout_s=timeout_s)
    if code != 0:
        raise RuntimeError(f"{' '.join(argv[-8:])} failed (exit {code}): {out[-2000:]}")
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    teardown = report["teardown"]
    return {
        "ready_s": report["server"]["ready_s"],
        "teardown_s": teardown["duration_s"],
        "wall_s": wall,
        "containers_remaining": teardown.get("containers_remaining"),
    }


def leftovers(runtime: str, settings: Settings) -> list[str]:
    done = subprocess.run(
        [runtime, "ps", "-aq", "--filter", "label=mmdemo.run"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env(settings),
        check=False,
    )
    return done.stdout.split()


def compare(label: str, host: list[dict[str, Any]], box: list[dict[str, Any]], clean: bool) -> list[Row]:
    note = "" if clean else "a container survived its run"
    ready = Row(
        NAME,
        f"time to ready, {label}: in a podman container vs on the host ({len(box)} run(s) each)",
        median([r["ready_s"] for r in box]),
        median([r["ready_s"] for r in host]),
        target=f"delta <= {START_TARGET_S:g} s",
        met=clean
        and median([r["ready_s"] for r in box]) - median([r["ready_s"] for r in host]) <= START_TARGET_S,
        note=note,
    )
    teardown = Row(
        NAME,
        f"teardown, {label}: podman stop/rm vs the host's process group",
        median([r["teardown_s"] for r in box]),
        median([r["teardown_s"] for r in host]),
        note=note,
    )
    return [ready, teardown]


def run_scenario(settings: Settings, *, real: bool) -> Scenario:
    runtime = podman()
    if runtime is None:
        return Scenario(
            NAME,
            [Row(NAME, "skipped: podman is not installed (make install-podman)", None)],
            skipped="no podman",
        )
    n = settings.count(3)
    image = fake_image(runtime, settings)
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    try:
        vllm = fake.launcher(settings.work)
        profile = str(fake.PROFILE)
        common = ("--only", "text-only", "--grace", "5", "--no-prefetch")
        host = [run(settings, profile, "--vllm-bin", str(vllm), *common) for _ in range(n)]
        box = [
            run(settings, profile, "--image", image, "--container-runtime", "podman", *common)
            for _ in range(n)
        ]
        clean = not leftovers(runtime, settings) and all(r["containers_remaining"] == 0 for r in box)
        rows += compare("the fake", host, box, clean)
        raw["fake"] = {"host": host, "container": box}
    finally:
        subprocess.run(
            [runtime, "rmi", "-f", image], capture_output=True, timeout=60, env=env(settings), check=False
        )
    if not real:
        return Scenario(NAME, rows, raw)
    why = unavailable()
    if (
        why is None
        and subprocess.run([runtime, "image", "exists", CPU_IMAGE], env=env(settings), check=False).returncode
    ):
        why = f"no image {CPU_IMAGE} (make image-cpu)"
    if why is not None:
        rows.append(Row(NAME, f"real CPU vLLM skipped: {why}", None))
        return Scenario(NAME, rows, raw)
    host = [run(settings, PROFILE, "--vllm-bin", str(vllm_bin()), timeout_s=600)]
    box = [run(settings, PROFILE, "--image", CPU_IMAGE, "--container-runtime", "podman", timeout_s=600)]
    clean = not leftovers(runtime, settings) and all(r["containers_remaining"] == 0 for r in box)
    rows += compare("the real CPU vLLM (cpu-tiny-omni)", host, box, clean)
    raw["real"] = {"host": host, "container": box}
    return Scenario(NAME, rows, raw)


def run_bench(settings: Settings) -> Scenario:
    """The fake; then, unless --fast, the real CPU vLLM."""
    return run_scenario(settings, real=not settings.fast)
