"""The one way mmdemo runs a script in vLLM's Python: on the host, or inside the run's image.

Five things run in vLLM's environment (the model probe, the budget's renderer, `validate
--against-vllm`'s parser check, the version read, the tiny-model builders); each goes through here:

- `host(vllm_bin)` / `in_image(...)`: which vLLM, as a `VllmInfo` (its version, its interpreter, the
  environment its command sets up). `vllm_version` is the host's, for preflight and `doctor`.
- `Process` (a context manager) / `run`: the script started in a session of its own (`vllm serve`'s
  model inspection and the like start children: they end with it), its input written by a thread (a
  script that reads only after ~10 s of imports still gets megabytes of base64 media whole, which
  communicate() retried after a timeout would not send), one monotonic deadline, a `check` called
  while it runs (a stop raises), and on leaving, whatever happened (an answer, a timeout, an
  interrupt, an exception), its process group ended, TERM then KILL; in an image, the container too.
- `ScriptError` -> one `PreflightError` line naming the script and the last line of its stderr.

Which Python runs a `vllm` command is asked of the command itself, not read from its first line.
`--vllm-bin` may be a venv's console script (`#!/venv/bin/python`), a `#!/usr/bin/env python3`
launcher (its interpreter is whatever `python3` PATH finds), or a wrapper script (`module load vllm;
exec vllm "$@"`, `conda activate ...; exec vllm "$@"`: how HPC and conda users reach vLLM) that sets
LD_LIBRARY_PATH, PYTHONPATH or CUDA paths before it execs the real command. So mmdemo runs the
command once, as `VLLM_BIN --version`, with orchestrator/probes/ask/ on PYTHONPATH and
PYTHONWARNINGS=ignore::mmdemo_ask.Ask: to resolve that warning category, Python imports
probes/ask/mmdemo_ask.py at start-up, before any of the command's own code, and the first Python that
has vLLM answers (sys.executable, the environment it sees, the versions of vLLM, torch and
transformers from package metadata) and exits: ~30 ms plus the wrapper's own cost, nothing of vLLM
imported. Scripts then run with that interpreter in that environment, exactly where `vllm serve`
would. Considered and not chosen: reading the shebang (wrong for both a wrapper and `env`); `python`
beside the command (a wrapper's directory has none); `python -c` through the command (a wrapper hands
its arguments to vLLM's CLI); /proc/PID/exe of the running command (a race, and wrong where the
wrapper does not exec); a `sitecustomize.py` on PYTHONPATH (tried first: a wrapper that prepends its
own directory with a sitecustomize, as module systems do, shadows it, and `python -S` skips it; the
warning category is looked up whatever else is on the path, even under -S). Where no Python answers
(one run with -I or -E, a wrapper that resets PYTHONWARNINGS, a compiled launcher), the command's
shebang, then the `python` beside it, are used as before, and the version is the last line the
command printed in that same run; a command whose answering Python is not on this host (a wrapper
around a container runtime) is refused in one line that says to use --image.

The answer is kept on disk (cache/backends/host-*.json, per command and environment) until the command
file or one of the directories the answer was read from changes: sys.path's and PATH's directories as
the answering Python saw them, or the command's own directory where none answered. A `pip install`
into the environment changes its site-packages; a new wrapper, the command file. Asking costs a
Python start (0.1-0.4 s) that every `mmdemo run` would otherwise pay before `vllm serve` starts.

In an image the question is asked the same way (`RUNTIME run --rm --network none --entrypoint vllm
IMAGE --version`, the directory mounted), once per image id (cached: an id names its content), and
the scripts run with `--entrypoint PYTHON`: no network, the script's directory, the model directory
and the HF cache mounted read-only, HF_HUB_OFFLINE=1, the image's borrowed host directories.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator.core.atomic import write_atomic
from orchestrator.core.errors import PreflightError, describe_returncode
from orchestrator.core.paths import cache_dir
from orchestrator.vllm.backend import locate_vllm, vllm_python

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

PROBES = Path(__file__).resolve().parents[1] / "probes"
ASK_DIR = PROBES / "ask"  # mmdemo_ask.py: the question
ASK_WARNINGS = "ignore::mmdemo_ask.Ask"  # looking the category up imports probes/ask/mmdemo_ask.py
_MARK = "MMDEMO-ANSWER "
_VERSION_LINE = re.compile(r"^v?\d+\.\d+(\.\d+)?\S*$")
# Inside an image: where the script's directory and the question are mounted.
SCRIPTS_INSIDE = "/mmdemo/scripts"
ASK_INSIDE = "/mmdemo/ask"
# The host's HF hub cache, read-only where the official image (root, no HF_HOME) looks; HF_HUB_CACHE says so.
CONTAINER_HF_HUB_CACHE = "/root/.cache/huggingface/hub"
LABEL = "mmdemo.script"  # every container a script runs in carries it (value: mmdemo's pid)
_POLL_S = 0.25
_TERM_GRACE_S = 3.0


# -- which vLLM ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    """An image whose vLLM runs the scripts: the runtime, the image's id, what it borrows from the host."""

    runtime: str  # the docker or podman command
    runtime_name: str
    ref: str
    id: str
    borrowed: tuple[tuple[str, str], ...] = ()  # (host, inside) directories, read-only
    hf_hub_cache: str | None = None  # the host's HF hub cache, read-only at CONTAINER_HF_HUB_CACHE


@dataclass(frozen=True)
class VllmInfo:
    """The vLLM that will run: its command (or image), version, the rule that found it, its environment."""

    path: str  # the `vllm` command; for an image, the image's reference
    version: str
    found_by: str = ""
    torch: str | None = None
    transformers: str | None = None
    decoders: tuple[str, ...] = ()  # the audio/video decoders vLLM's environment has
    python: str | None = None  # the interpreter that runs its scripts (inside the image, for an image)
    env: Mapping[str, str | None] = field(default_factory=dict)  # what its command sets (None: unsets)
    image: Image | None = None

    @property
    def name(self) -> str:
        """How messages name it: the command, or the image and its runtime."""
        return f"{self.path} ({self.image.runtime_name})" if self.image else self.path


_asked: dict[tuple[str, str], VllmInfo] = {}
_asked_lock = threading.Lock()


def host(vllm_bin: str | None = None, timeout_s: float = 120.0) -> VllmInfo:
    """The host's vLLM: found by backend's rules, asked which Python runs it; its version read."""
    path, found_by = locate_vllm(vllm_bin)
    return dataclasses.replace(_ask_host(path, timeout_s), found_by=found_by)


def vllm_version(vllm_bin: str | None, timeout_s: float = 120.0) -> VllmInfo:
    """The installed vLLM's version and environment (preflight, doctor): `host`, by its older name."""
    return host(vllm_bin, timeout_s)


def ask_env(base: Mapping[str, str], ask_dir: str) -> dict[str, str]:
    """`base` with the question added: the ask directory on PYTHONPATH, its warning category asked for."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ask_dir, base.get("PYTHONPATH")) if p)
    env["PYTHONWARNINGS"] = ",".join(p for p in (base.get("PYTHONWARNINGS"), ASK_WARNINGS) if p)
    return env


def parse_answer(
    stdout: str, path: str, base: Mapping[str, str] | None, *, check_python: bool = True
) -> VllmInfo | None:
    """The answer line of the question, as a VllmInfo (env: what differs from `base`); None when none."""
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(_MARK)), None)
    if line is None:
        return None
    try:
        data = json.loads(line[len(_MARK) :])
        python = str(data["python"])
        seen = {str(k): str(v) for k, v in dict(data.get("env") or {}).items()}
    except (ValueError, KeyError, TypeError):
        return None
    if check_python and not os.access(python, os.X_OK):
        raise PreflightError(
            f"{path} runs vLLM with {python}, which is not on this host (a wrapper around a container?)",
            hint="run vLLM in its image with --image IMAGE instead of --vllm-bin",
        )
    env: dict[str, str | None] = {}
    if base is not None:
        shells = ("_", "SHLVL", "PWD", "OLDPWD")  # what a wrapper's shell sets of itself
        env = {k: v for k, v in seen.items() if base.get(k) != v and k not in shells}
        env.update({k: None for k in base if k not in seen})
    decoders = data.get("decoders")
    return VllmInfo(
        path=path,
        version=_text(data.get("vllm")) or "?",
        torch=_text(data.get("torch")),
        transformers=_text(data.get("transformers")),
        decoders=tuple(str(d) for d in decoders) if isinstance(decoders, list) else (),
        python=python,
        env=env,
    )


# What the shell sets of itself: not part of what a command sees of its environment.
_SHELL_VARS = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})


class _Asked(BaseModel):
    """A command's answer as kept on disk, with what it depends on: the command file's stat and the
    directories it was read from (their mtimes); any change and the command is asked again."""

    command: tuple[int, int, int]  # the command file's mtime_ns, size, inode
    witnesses: dict[str, int | None]  # directory -> mtime_ns (None: absent when asked)
    version: str
    python: str | None
    torch: str | None = None
    transformers: str | None = None
    decoders: tuple[str, ...] = ()
    env: dict[str, str | None] = {}


def _ask_host(path: str, timeout_s: float) -> VllmInfo:
    """The command's own answer: memoised per command and environment in this process, and kept on
    disk until the command or a directory the answer came from changes (the ask costs a Python start,
    0.1-0.4 s, in front of every `vllm serve`)."""
    base = dict(os.environ)
    key = (path, json.dumps(sorted(base.items())))
    with _asked_lock:
        if key in _asked:
            return _asked[key]
    kept = _host_cache(path, base)
    info = _read_kept(kept, path)
    if info is None:
        info, asked = _ask(path, base, timeout_s)
        if asked is not None:
            with contextlib.suppress(OSError):  # 0600: what a wrapper exports may be a token
                write_atomic(kept, asked.model_dump_json(indent=1) + "\n", mode=0o600)
    with _asked_lock:
        _asked[key] = info
    return info


def _ask(path: str, base: dict[str, str], timeout_s: float) -> tuple[VllmInfo, _Asked | None]:
    """Run `path --version` with the question; the answer, and what to keep of it (None: nothing)."""
    stat = _stat(path)
    script = Script(Path(path), "the question which Python runs vLLM", args=("--version",), direct=True)
    with Process(None, script, env=ask_env(base, str(ASK_DIR)), replace_env=True) as proc:
        result = proc.finish(timeout_s=timeout_s)
    info = parse_answer(result.stdout, path, base)
    if info is None:  # no Python answered: the command's first line (else the python beside it) runs
        # scripts, and the command went on to answer `--version` itself
        log.info("%s did not say which Python runs it (exit %s): its shebang then", path, result.returncode)
        info = VllmInfo(path=path, version=_printed_version(path, result), python=str(vllm_python(path)))
        # a reinstall rewrites the command's directory (its console scripts)
        witnesses: dict[str, int | None] | None = _mtimes([str(Path(path).parent)])
    else:
        if not _VERSION_LINE.match(info.version):  # no version in its metadata (a source checkout)
            info = dataclasses.replace(info, version=_version_by_running(path, timeout_s))
        witnesses = _answer_witnesses(result.stdout)
    if stat is None or witnesses is None:
        return info, None
    asked = _Asked(
        command=stat,
        witnesses=witnesses,
        version=info.version,
        python=info.python,
        torch=info.torch,
        transformers=info.transformers,
        decoders=info.decoders,
        env=dict(info.env),
    )
    return info, asked


def _read_kept(kept: Path, path: str) -> VllmInfo | None:
    """The kept answer, if the command and every witness are as they were when it was asked."""
    try:
        asked = _Asked.model_validate_json(kept.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if asked.command != _stat(path) or asked.witnesses != _mtimes(list(asked.witnesses)):
        return None
    if asked.python is None or not os.access(asked.python, os.X_OK):
        return None
    return VllmInfo(
        path=path,
        version=asked.version,
        torch=asked.torch,
        transformers=asked.transformers,
        decoders=asked.decoders,
        python=asked.python,
        env=asked.env,
    )


def _host_cache(path: str, base: Mapping[str, str]) -> Path:
    """Where the answer of `path` in this environment is kept (the shell's own variables aside)."""
    env = sorted((k, v) for k, v in base.items() if k not in _SHELL_VARS)
    digest = hashlib.sha256(json.dumps([os.path.realpath(path), env]).encode()).hexdigest()[:32]
    return cache_dir() / "backends" / f"host-{digest}.json"


def _stat(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _mtimes(directories: Sequence[str]) -> dict[str, int | None]:
    seen: dict[str, int | None] = {}
    for where in directories:
        try:
            seen[where] = os.stat(where).st_mtime_ns
        except OSError:
            seen[where] = None
    return seen


def _answer_witnesses(stdout: str) -> dict[str, int | None] | None:
    """The directories the answer was read from, as it names them (None: an answer without them)."""
    line = next((x for x in reversed(stdout.splitlines()) if x.startswith(_MARK)), "")
    try:
        named = json.loads(line[len(_MARK) :]).get("witnesses")
    except (ValueError, AttributeError):
        return None
    if not isinstance(named, dict) or not named:
        return None
    return {str(k): v if isinstance(v, int) else None for k, v in named.items()}


def _printed_version(path: str, result: Result) -> str:
    """The version `path --version` printed (its last line), else the one-line refusal."""
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0:
        raise result.error()
    match = _VERSION_LINE.match(lines[-1].strip()) if lines else None
    if match is None:
        shown = lines[-1][:60] if lines else "nothing"
        raise PreflightError(f"`{path} --version` printed {shown!r}, not a version: is it vLLM?")
    return match.group(0)


def _version_by_running(path: str, timeout_s: float) -> str:
    """`vllm --version`'s last line (~7 s: it imports torch), where package metadata has no version."""
    script = Script(Path(path), f"`{path} --version`", args=("--version",), direct=True)
    with Process(None, script) as proc:
        result = proc.finish(timeout_s=timeout_s)
    return _printed_version(path, result)


def in_image(image: Image, timeout_s: float = 300.0) -> VllmInfo:
    """The image's vLLM: asked inside it once per image id (`--entrypoint vllm`), then read from the cache."""
    cached = cache_dir() / "backends" / f"image-{_safe(image.id or image.ref)}.json"
    stdout = None
    if image.id:
        with contextlib.suppress(OSError):
            stdout = cached.read_text(encoding="utf-8")
    info = parse_answer(stdout, image.ref, None, check_python=False) if stdout else None
    if info is None:
        name = _container_name()
        argv = [
            image.runtime, "run", "--rm", "--network", "none", "--pull=never", "--name", name,
            "--label", f"{LABEL}={os.getpid()}", "--entrypoint", "vllm",
            "-v", f"{ASK_DIR}:{ASK_INSIDE}:ro", *_mount_flags(image.borrowed),
            "-e", f"PYTHONPATH={ASK_INSIDE}", "-e", f"PYTHONWARNINGS={ASK_WARNINGS}", image.ref, "--version",
        ]  # fmt: skip
        script = Script(Path("vllm"), f"the question which Python runs vLLM in {image.ref}", direct=True)
        with Process(None, script, argv=argv, container=(image.runtime, name)) as proc:
            result = proc.finish(timeout_s=timeout_s)
        info = parse_answer(result.stdout, image.ref, None, check_python=False)
        if info is None:
            raise PreflightError(
                f"image {image.ref}: `vllm --version` inside it gave no answer to mmdemo's question "
                f"(exit {result.returncode}): {result.tail()}",
                hint="the image needs a `vllm` command on its PATH (the official vllm/vllm-openai has one)",
            )
        if image.id:
            line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith(_MARK))
            with contextlib.suppress(OSError):
                write_atomic(cached, line + "\n")
    return VllmInfo(
        path=image.ref,
        version=info.version,
        found_by=f"the image's own ({image.runtime_name})",
        torch=info.torch,
        transformers=info.transformers,
        decoders=info.decoders,
        python=info.python,
        image=image,
    )


def _container_name() -> str:
    return f"mmdemo-script-{os.getpid()}-{secrets.token_hex(3)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:100]


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- running a script ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """A script to run in vLLM's Python, and how messages name it."""

    path: Path
    what: str  # "vLLM's model probe": the subject of its messages
    args: tuple[str, ...] = ()
    direct: bool = False  # the path is itself the command (the `vllm` command asked), not a script

    def shown(self, python: str | None) -> str:
        """The command line a user can run by hand to see the script's own error."""
        words = (
            [str(self.path), *self.args]
            if self.direct or python is None
            else [python, str(self.path), *self.args]
        )
        return " ".join(shlex.quote(w) for w in words)


@dataclass(frozen=True)
class Result:
    """How the script ended: its exit status and what it wrote."""

    script: Script
    returncode: int
    stdout: str
    stderr: str
    hint: str | None = None

    def tail(self) -> str:
        """The last line of its stderr (else stdout), for a one-line message."""
        lines = self.stderr.strip().splitlines() or self.stdout.strip().splitlines() or ["(no output)"]
        return lines[-1].strip()[:300]

    def error(self) -> PreflightError:
        """The one-line refusal: which script, how it ended, its last words."""
        return PreflightError(
            f"{self.script.what} ({self.script.path.name}) failed ({_how(self.returncode)}): {self.tail()}",
            hint=self.hint,
        )

    def parse(self, model: type[M]) -> M:
        """Its stdout as the script's typed answer, else the one-line error."""
        try:
            return model.model_validate_json(self.stdout)
        except ValidationError:
            raise self.error() from None


def _how(returncode: int) -> str:
    return f"exit {returncode}" if returncode >= 0 else describe_returncode(returncode)


class Process:
    """One script in vLLM's Python (`info`; None: `script` is itself the command), started on entering,
    answered once, its process group (and container) ended on leaving, whatever happened."""

    def __init__(
        self,
        info: VllmInfo | None,
        script: Script,
        *,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[Path] = (),
        replace_env: bool = False,
        argv: Sequence[str] | None = None,
        container: tuple[str, str] | None = None,
    ) -> None:
        self.info = info
        self.script = script
        # (runtime, name) of the container the script runs in: removed on leaving
        self._container: tuple[str, str] | None = container
        self.argv, self.env = self._command(dict(env or {}), mounts, replace_env, argv)
        self._proc: subprocess.Popen[str] | None = None
        self._error: PreflightError | None = None
        self._killed = False  # it was still running when it was ended: its container may be too

    def _command(
        self, extra: dict[str, str], mounts: Sequence[Path], replace_env: bool, argv: Sequence[str] | None
    ) -> tuple[list[str], dict[str, str] | None]:
        info, script = self.info, self.script
        if argv is not None:
            return list(argv), None
        if info is None or info.image is None:
            env = dict(extra) if replace_env else dict(os.environ)
            if not replace_env:
                for key, value in (info.env if info else {}).items():  # what the vllm command sets up
                    if value is None:
                        env.pop(key, None)
                    else:
                        env[key] = value
                env.update(extra)
            if script.direct or info is None:
                return [str(script.path), *script.args], env
            return [info.python or str(vllm_python(info.path)), str(script.path), *script.args], env
        image = info.image
        name = _container_name()
        self._container = (image.runtime, name)
        flags = [
            image.runtime, "run", "--rm", "-i", "--network", "none", "--pull=never",
            "--name", name, "--label", f"{LABEL}={os.getpid()}",
            "--entrypoint", info.python or "python3",
            "-v", f"{script.path.resolve().parent}:{SCRIPTS_INSIDE}:ro",
        ]  # fmt: skip
        flags += _mount_flags(image.borrowed)
        inside = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": "/tmp/hf_modules"}
        if image.hf_hub_cache:
            flags += ["-v", f"{image.hf_hub_cache}:{CONTAINER_HF_HUB_CACHE}:ro"]
            inside["HF_HUB_CACHE"] = CONTAINER_HF_HUB_CACHE
        seen = {SCRIPTS_INSIDE, CONTAINER_HF_HUB_CACHE, *(into for _, into in image.borrowed)}
        for mount in mounts:  # the model's directory, the media: read-only at the same paths
            where = str(Path(mount).resolve())
            if where not in seen and Path(where).exists():
                seen.add(where)
                flags += ["-v", f"{where}:{where}:ro"]
        # The HF cache is read-only and the network is none: vLLM must not try the hub or write its modules.
        inside.update(extra)
        for key in inside:
            flags += ["-e", key]  # by name: the values travel in the runtime client's environment
        env = dict(os.environ) | inside
        return [*flags, image.ref, f"{SCRIPTS_INSIDE}/{script.path.name}", *script.args], env

    def __enter__(self) -> Process:
        with _LIVE_LOCK:  # the exit net: a thread abandoned at exit (a stopped wait) still ends it,
            if _EXITING:  # and once the interpreter is exiting nothing new starts
                self._error = PreflightError(f"not started: mmdemo is exiting ({self.script.what})")
                return self
            _LIVE.add(self)
            self._start()
        return self

    def _start(self) -> None:
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.env,
                start_new_session=True,  # what it starts (vLLM's model inspection) ends with its group
            )
        except OSError as exc:
            self._error = PreflightError(
                f"cannot run {self.script.what} ({self.argv[0]}): {exc.strerror or exc}"
            )

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def finish(
        self, input: str = "", *, timeout_s: float, check: Callable[[], None] = lambda: None
    ) -> Result:
        """Write `input`, wait for the end (calling `check` meanwhile) within `timeout_s`; then end it all."""
        if self._error is not None:
            raise self._error
        proc = self._proc
        assert proc is not None, "a Process answers once, inside its `with`"
        out: list[str] = []
        err: list[str] = []
        pipes = [
            threading.Thread(target=_write_all, args=(proc.stdin, input), daemon=True),
            threading.Thread(target=_read_all, args=(proc.stdout, out), daemon=True),
            threading.Thread(target=_read_all, args=(proc.stderr, err), daemon=True),
        ]
        for thread in pipes:
            thread.start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    proc.wait(timeout=_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    check()
                    if time.monotonic() > deadline:
                        raise PreflightError(
                            f"{self.script.what} ({self.script.path.name}) did not answer within "
                            f"{timeout_s:.0f} s",
                            hint=f"it ran as: {self.shown()}",
                        ) from None
        finally:
            self._end_group(proc)  # what it started ends with it: the pipes close
            for thread in pipes:
                thread.join(timeout=10)
            self.close()
        return Result(
            self.script,
            proc.returncode,
            "".join(out),
            "".join(err),
            hint=f"run `{self.shown()}` by hand (its input on stdin) to see vLLM's own error",
        )

    def answer(
        self,
        model: type[M],
        input: str = "",
        *,
        timeout_s: float,
        check: Callable[[], None] = lambda: None,
    ) -> M:
        """The script's typed answer on stdout, else one line naming it and its last words."""
        return self.finish(input, timeout_s=timeout_s, check=check).parse(model)

    def shown(self) -> str:
        """The command line, for messages (the container's own, in an image)."""
        if self.info is not None and self.info.image is None and not self.script.direct:
            return self.script.shown(self.info.python)
        return " ".join(shlex.quote(w) for w in self.argv)

    def close(self) -> None:
        """End the process group (TERM, then KILL), its container, and reap it; idempotent."""
        _LIVE.discard(self)
        proc, self._proc = self._proc, None
        if proc is not None:
            self._end_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_TERM_GRACE_S + 5)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):
                        stream.close()
        if self._container is not None and self._killed:
            (runtime, name), self._container = self._container, None
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # gone already with --rm: fine
                subprocess.run(
                    [runtime, "rm", "-f", "-t", "0", name],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=60,
                    check=False,
                )

    def _end_group(self, proc: subprocess.Popen[str]) -> None:
        """TERM to the group, KILL to what is left after a short grace."""
        if proc.poll() is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_TERM_GRACE_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group's other members, even when the leader is gone
        _wait_group_gone(proc.pid, _TERM_GRACE_S + 5)


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Until no live (non-zombie) process is left in the group: a SIGKILL is delivered, not yet done."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = False
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                    left = True
                    break
        if not left:
            return
        time.sleep(0.01)


# Scripts started and not yet ended. A wait that a stop ended leaves its thread (a daemon) behind; at
# the interpreter's exit, before daemon threads are dropped, each such script's group and container end.
_LIVE: set[Process] = set()
_LIVE_LOCK = threading.Lock()
_EXITING = False


@atexit.register
def _end_live() -> None:
    global _EXITING
    with _LIVE_LOCK:
        _EXITING = True
        live = list(_LIVE)
    for process in live:
        with contextlib.suppress(Exception):
            process.close()


def run(
    info: VllmInfo,
    script: Script,
    model: type[M],
    input: str = "",
    *,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    mounts: Sequence[Path] = (),
    check: Callable[[], None] = lambda: None,
) -> M:
    """Run `script` once in `info`'s Python and return its typed answer (see `Process`)."""
    with Process(info, script, env=env, mounts=mounts) as proc:
        return proc.answer(model, input, timeout_s=timeout_s, check=check)


def _mount_flags(pairs: Sequence[tuple[str, str]]) -> list[str]:
    return [w for host_dir, inside in pairs for w in ("-v", f"{host_dir}:{inside}:ro")]


def _write_all(stream: IO[str] | None, text: str) -> None:
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):  # the script ended early (a stop, a crash)
        if text:
            stream.write(text)
        stream.close()


def _read_all(stream: IO[str] | None, into: list[str]) -> None:
    if stream is not None:
        with contextlib.suppress(OSError, ValueError):
            into.append(stream.read())
