#!/usr/bin/env python3
"""A stand-in for `docker` / `podman` (`fake_runtime.py NAME ARGS...`): the few commands mmdemo runs, with
the fake `vllm serve` (tests/fake_vllm.py) as the container, so the docker path runs without a daemon.

What it keeps of a real runtime: `run` records its argv (one JSON line in $FAKE_RUNTIME_RECORD), is an
attached client streaming the container's output and exiting with its exit code, and the "container"
is no descendant of the client: a monitor process (like podman's conmon) started in a session of its
own runs the server, so killing the client leaves it running. `stop -t N`, `kill`, `rm -f`, `ps
[-a] -q --filter label=K=V`, `inspect --format {{.State.Pid}}`, `image inspect`, `images`, `version` and
`--version` work on the state directory $FAKE_RUNTIME_STATE (one JSON file per container). The
server listens on the published host and port (`-p HOST:PORT:8000`) and gets the `-e` variables
(a bare `-e NAME` takes the client's value), the environment of the test session, without
mmdemo's run tag: only the runtime finds it. Stdlib only.

`run --entrypoint PROGRAM` (how vllm/runner.py runs a script in an image) runs PROGRAM in the
foreground instead, attached to the client's stdin and stdout, found on the image's PATH
($FAKE_IMAGE_PATH first), with the image's environment ($FAKE_IMAGE_ENV, JSON) and the `-e`
variables; each `-v HOST:INSIDE[:ro]` maps INSIDE back to HOST in its arguments and PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAKE_VLLM = HERE / "fake_vllm.py"
VALUED = {"--name", "--label", "-p", "-e", "-v", "--gpus", "--device", "--network", "--entrypoint"}
POLL_S = 0.02


def state_dir() -> Path:
    path = Path(os.environ["FAKE_RUNTIME_STATE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def load(name: str) -> dict | None:
    try:
        return json.loads((state_dir() / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def save(state: dict) -> None:
    path = state_dir() / f"{state['name']}.json"
    # mkstemp's unique name: two runtime commands at once may save one container's state.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state))
    os.replace(tmp, path)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def running(state: dict) -> bool:
    return state.get("status") == "running" and alive(int(state.get("pid") or 0))


def parse_run(args: list[str]) -> tuple[dict[str, list[str]], bool, str, list[str]]:
    """(options with values, --init given, image, the container's arguments)."""
    options: dict[str, list[str]] = {}
    init = False
    i = 0
    while i < len(args):
        word = args[i]
        if word in VALUED:
            options.setdefault(word, []).append(args[i + 1])
            i += 2
        elif word.startswith("-"):
            init = init or word == "--init"
            i += 1
        else:
            return options, init, word, args[i + 1 :]
    raise SystemExit("fake runtime: run needs an image")


def cmd_run(args: list[str]) -> int:
    record = os.environ.get("FAKE_RUNTIME_RECORD")
    if record:
        with open(record, "a", encoding="utf-8") as out:
            out.write(json.dumps({"argv": [sys.argv[1], "run", *args]}) + "\n")
    options, _, image, inside = parse_run(args)
    if "--entrypoint" in options:
        return run_entrypoint(options, inside)
    name = options["--name"][0]
    if load(name) is not None:
        print(f"Error: the container name {name!r} is already in use", file=sys.stderr)
        return 125
    host, port, _ = options["-p"][0].rsplit(":", 2)
    host = host.strip("[]")
    env = {k: v for k, v in os.environ.items() if k != "MMDEMO_RUN_TAG" and not k.startswith("FAKE_RUNTIME")}
    for entry in options.get("-e", []):
        key, eq, value = entry.partition("=")
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    # The server listens where the runtime would publish its port 8000.
    argv = [sys.executable, str(FAKE_VLLM), "serve", *inside]
    argv[argv.index("--host") + 1], argv[argv.index("--port") + 1] = host, port
    labels = dict(label.partition("=")[::2] for label in options.get("--label", []))
    log = state_dir() / f"{name}.log"
    save({"name": name, "image": image, "labels": labels, "status": "created", "pid": 0})
    spec = state_dir() / f"{name}.spec.json"
    spec.write_text(json.dumps({"argv": argv, "env": env, "log": str(log)}))
    # The monitor, in its own session: the container is not the client's descendant.
    subprocess.Popen(
        [sys.executable, __file__, sys.argv[1], "_monitor", name],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return attach(name, log)


def run_entrypoint(options: dict[str, list[str]], inside: list[str]) -> int:
    """The image's PROGRAM in the foreground: a script's run (stdin, stdout, exit code passed through)."""
    mounts = [tuple(v.split(":")[:2]) for v in options.get("-v", [])]

    def on_host(word: str) -> str:
        for host, into in mounts:
            if word == into or word.startswith(into + "/"):
                return host + word[len(into) :]
        return word

    env = {k: v for k, v in os.environ.items() if k != "MMDEMO_RUN_TAG" and not k.startswith("FAKE_")}
    env.update(json.loads(os.environ.get("FAKE_IMAGE_ENV") or "{}"))
    for entry in options.get("-e", []):
        key, eq, value = entry.partition("=")
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    if "PYTHONPATH" in env:
        env["PYTHONPATH"] = os.pathsep.join(on_host(p) for p in env["PYTHONPATH"].split(os.pathsep))
    env["PATH"] = os.pathsep.join(p for p in (os.environ.get("FAKE_IMAGE_PATH"), env.get("PATH")) if p)
    program = options["--entrypoint"][0]
    found = shutil.which(program, path=env["PATH"]) if "/" not in program else program
    if found is None:
        print(f"Error: {program}: executable file not found in $PATH", file=sys.stderr)
        return 127
    return subprocess.run([found, *(on_host(w) for w in inside)], env=env, check=False).returncode


def attach(name: str, log: Path) -> int:
    """Stream the container's log to stdout until it has exited; its exit code."""
    offset = 0
    while True:
        state = load(name)
        if log.exists():
            with log.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            if chunk:
                offset += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        if state is None:
            return 137  # removed under us
        if state["status"] == "exited":
            return int(state.get("exit_code", 1))
        time.sleep(POLL_S)


def cmd_monitor(name: str) -> int:
    spec = json.loads((state_dir() / f"{name}.spec.json").read_text())
    with open(spec["log"], "ab") as out:
        proc = subprocess.Popen(
            spec["argv"], env=spec["env"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    state = load(name)
    if state is None:  # removed before it started
        proc.kill()
        proc.wait()
        return 0
    save({**state, "status": "running", "pid": proc.pid})
    code = proc.wait()
    state = load(name)
    if state is not None:
        save({**state, "status": "exited", "exit_code": code if code >= 0 else 128 - code, "pid": 0})
    return 0


def _signal(state: dict, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, ValueError):
        os.kill(int(state["pid"]), sig)


def _wait_exited(name: str, timeout_s: float) -> bool:
    """Wait until the monitor has recorded the server's exit (or the container is gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = load(name)
        if state is None or state["status"] != "running":
            return True
        time.sleep(POLL_S)
    return False


def cmd_stop(args: list[str]) -> int:
    grace = float(args[args.index("-t") + 1]) if "-t" in args else 10.0
    names = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "-t")]
    for name in names:
        state = load(name)
        if state is None:
            continue
        if running(state):
            _signal(state, signal.SIGTERM)
            if not _wait_exited(name, grace):
                _signal(state, signal.SIGKILL)
                _wait_exited(name, 10.0)
        print(name)
    return 0


def cmd_kill(args: list[str]) -> int:
    for name in (a for a in args if not a.startswith("-")):
        state = load(name)
        if state is not None and running(state):
            _signal(state, signal.SIGKILL)
            _wait_exited(name, 10.0)
    return 0


def cmd_rm(args: list[str]) -> int:
    for name in (a for a in args if not a.startswith("-")):
        state = load(name)
        if state is None:
            continue
        if running(state):
            _signal(state, signal.SIGKILL)
            _wait_exited(name, 10.0)
        for suffix in (".json", ".spec.json", ".log"):
            with contextlib.suppress(OSError):
                (state_dir() / f"{name}{suffix}").unlink()
        print(name)
    return 0


def cmd_ps(args: list[str]) -> int:
    everything = "-a" in args
    wanted = [args[i + 1].removeprefix("label=") for i, a in enumerate(args[:-1]) if a == "--filter"]
    for path in sorted(state_dir().glob("*.json")):
        if path.name.endswith(".spec.json"):
            continue
        state = load(path.stem)
        if state is None or not (everything or running(state)):
            continue
        labels = state["labels"]
        if all(labels.get(w.partition("=")[0]) == w.partition("=")[2] for w in wanted):
            print(state["name"])
    return 0


def cmd_inspect(args: list[str]) -> int:
    name = args[-1]
    state = load(name)
    if state is None:
        print(f"Error: no such container {name}", file=sys.stderr)
        return 125
    print(state["pid"] if running(state) else 0)
    return 0


def main(argv: list[str]) -> int:
    runtime, command, args = argv[0], argv[1] if len(argv) > 1 else "", argv[2:]
    if command == "--version":
        print("Docker version 27.0.0-fake, build 0" if runtime == "docker" else "podman version 4.3.1-fake")
        return 0
    if command == "version":
        print("27.0.0-fake")
        return 0
    if command == "image" and args[:1] == ["inspect"]:
        image = args[-1]
        if "missing" in image:
            print(f"Error: {image}: image not known", file=sys.stderr)
            return 125
        print(
            json.dumps(
                [{"Id": "sha256:" + "f" * 64, "RepoDigests": [f"{image.split(':')[0]}@sha256:{'d' * 64}"]}]
            )
        )
        return 0
    if command == "images":  # what `docker images --format '{{.Repository}}:{{.Tag}} {{.ID}}'` prints
        print("vllm/vllm-openai:v0.11.0 0123456789ab\nbusybox:latest 9876543210fe")
        return 0
    if command == "pull":
        print("Error: no registry reachable from the tests", file=sys.stderr)
        return 125
    if command == "_monitor":
        return cmd_monitor(args[0])
    handlers = {
        "run": cmd_run,
        "stop": cmd_stop,
        "kill": cmd_kill,
        "rm": cmd_rm,
        "ps": cmd_ps,
        "inspect": cmd_inspect,
    }
    if command not in handlers:
        print(f"fake runtime: {command!r} is not faked", file=sys.stderr)
        return 125
    return handlers[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
