"""The fake `vllm serve` itself: real processes, port 0, files for synchronisation, no sleeps."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import requests

FAKE = Path(__file__).with_name("fake_vllm.py")
TAG_VAR = "FAKE_VLLM_TEST_TAG"  # every process a test starts carries it, escaped ones included
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16
TIMEOUT = 10.0


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def proc_field(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text().strip()
    except OSError:  # gone, or not ours to read
        return ""


def pids_with_tag(tag: str) -> list[int]:
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        stat = proc_field(int(entry.name), "stat") if entry.name.isdigit() else ""
        if stat:
            fields = stat.rpartition(")")[2].split()  # state ppid pgrp ...
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


@dataclass
class Fake:
    proc: subprocess.Popen[bytes]
    dir: Path
    tag: str
    files: list[IO[bytes]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(wait_for(lambda: read_or_empty(self.dir / "port"), "the port file"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stdout(self) -> str:
        return (self.dir / "stdout.log").read_text()

    def stderr(self) -> str:
        return (self.dir / "stderr.log").read_text()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.dir / "record.jsonl").read_text().splitlines()]


def read_or_empty(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Fake]]:
    """Start fakes in their own sessions; afterwards SIGKILL each group and sweep tagged escapees."""
    fakes: list[Fake] = []

    def _launch(*args: str, env: dict[str, str] | None = None) -> Fake:
        run_dir = tmp_path / f"fake{len(fakes)}"
        run_dir.mkdir()
        tag = uuid.uuid4().hex
        inherited = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
        full_env = {**inherited, TAG_VAR: tag, "FAKE_VLLM_PORT_FILE": str(run_dir / "port"),
                    "FAKE_VLLM_MARKER_FILE": str(run_dir / "marker"),
                    "FAKE_VLLM_RECORD": str(run_dir / "record.jsonl"), **(env or {})}  # fmt: skip
        out, err = open(run_dir / "stdout.log", "wb"), open(run_dir / "stderr.log", "wb")  # noqa: SIM115
        argv = [sys.executable, str(FAKE), "serve", "tiny/model", "--host", "127.0.0.1", "--port", "0", *args]
        proc = subprocess.Popen(argv, env=full_env, stdout=out, stderr=err, start_new_session=True)
        fake = Fake(proc, run_dir, tag, [out, err])
        fakes.append(fake)
        return fake

    yield _launch
    for fake in fakes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(fake.proc.pid, signal.SIGKILL)
        fake.proc.wait()
        for pid in pids_with_tag(fake.tag):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for f in fake.files:
            f.close()


def chat(url: str, content: Any, **extra: Any) -> requests.Response:
    body = {"model": "tiny/model", "messages": [{"role": "user", "content": content}], **extra}
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT)


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def test_version_flag() -> None:
    done = subprocess.run([sys.executable, str(FAKE), "--version"], capture_output=True, check=True)
    assert done.stdout.decode().strip() == "0.32.0"
    env = {**os.environ, "FAKE_VLLM_VERSION": "0.40.1"}
    done = subprocess.run([sys.executable, str(FAKE), "--version"], capture_output=True, env=env, check=True)
    assert done.stdout.decode().strip() == "0.40.1"


def test_health_models_version_and_metrics(launch: Callable[..., Fake]) -> None:
    fake = launch(
        "--served-model-name", "tiny", "--max-model-len=2048", "--trust-remote-code", "--dtype", "x"
    )
    url = fake.url
    health = requests.get(f"{url}/health", timeout=TIMEOUT)
    assert (health.status_code, health.content) == (200, b"")
    models = requests.get(f"{url}/v1/models", timeout=TIMEOUT).json()
    assert models["object"] == "list"
    [model] = models["data"]
    assert (model["id"], model["root"], model["max_model_len"]) == ("tiny", "tiny/model", 2048)
    assert requests.get(f"{url}/version", timeout=TIMEOUT).json() == {"version": "0.32.0"}
    assert "vllm:num_requests_running" in requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    log = fake.stdout()
    assert f"pid={fake.proc.pid}" in log.splitlines()[0]
    for line in ("vLLM API server version 0.32.0", f"Starting vLLM API server 0 on http://127.0.0.1:{fake.port}",
                 "Available routes are:", "INFO:     Application startup complete."):  # fmt: skip
        assert line in log


def test_streaming_chat_reports_usage_and_is_recorded(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"FAKE_VLLM_TOKEN_DELAY": "0.001"})
    content = [{"type": "text", "text": "What's in this image?"}, image_part(data_url(JPEG))]
    body = {"model": "tiny/model", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    with requests.post(f"{fake.url}/v1/chat/completions", json=body, stream=True, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: ") :] for line in resp.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == 'fake reply to "What\'s in this image?": 1 image, 0 video, 0 audio'
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(text.split())
    assert chunks[-1]["usage"]["prompt_tokens"] == 4 + 10
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    [record] = [r for r in fake.records() if r["path"] == "/v1/chat/completions"]
    assert record["status"] == 200
    assert record["body"]["messages"][0]["content"][1]["type"] == "image_url"
    assert record["t_start"] <= record["t_end"]


def test_api_key_guards_v1_routes_only(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"VLLM_API_KEY": "secret"})
    url = fake.url
    wrong = requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=TIMEOUT)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "Unauthorized"
    right = requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer secret"}, timeout=TIMEOUT)
    assert right.status_code == 200
    assert requests.get(f"{url}/health", timeout=TIMEOUT).status_code == 200


def test_too_many_images_is_a_400(launch: Callable[..., Fake]) -> None:
    fake = launch("--limit-mm-per-prompt", '{"image": 1}')
    resp = chat(fake.url, [image_part(data_url(JPEG)), image_part(data_url(JPEG))])
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "At most 1 image(s) may be provided in one prompt."
    assert chat(fake.url, [image_part(data_url(JPEG))]).status_code == 200


def test_file_url_must_lie_under_the_allowed_media_path(launch: Callable[..., Fake], tmp_path: Path) -> None:
    allowed, other = tmp_path / "media", tmp_path / "other"
    allowed.mkdir()
    other.mkdir()
    (allowed / "ok.jpg").write_bytes(JPEG)
    (other / "no.jpg").write_bytes(JPEG)
    fake = launch("--allowed-local-media-path", str(allowed))
    resp = chat(fake.url, [image_part((other / "no.jpg").as_uri())])
    assert resp.status_code == 400
    assert "must be a subpath of `--allowed-local-media-path`" in resp.json()["error"]["message"]
    assert chat(fake.url, [image_part((allowed / "ok.jpg").as_uri())]).status_code == 200


def test_workers_are_named_like_vllm_and_end_with_the_group(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"FAKE_VLLM_WORKERS": "2"})
    wait_for((fake.dir / "marker").exists, "the marker file")
    pgid = fake.proc.pid

    # comm is cut at 15 characters; argv[0] holds the full name, as setproctitle leaves it in vLLM
    def worker_names() -> list[str]:
        return sorted(n for p in group_members(pgid) if (n := proc_field(p, "comm")).startswith("VLLM::"))

    wait_for(lambda: worker_names() == ["VLLM::EngineCor", "VLLM::Worker_TP"], "the renamed workers")
    argv0s = {proc_field(p, "cmdline").split("\0")[0] for p in group_members(pgid)}
    assert {"VLLM::EngineCore", "VLLM::Worker_TP0"} <= argv0s
    os.killpg(pgid, signal.SIGTERM)
    assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert "Shutting down" in fake.stdout()
    wait_for(lambda: not group_members(pgid), "the process group to empty")


def test_ignore_sigterm_survives_term_and_dies_on_kill(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"FAKE_VLLM_IGNORE_SIGTERM": "1"})
    url = fake.url
    os.killpg(fake.proc.pid, signal.SIGTERM)
    wait_for(lambda: "Received SIGTERM; ignoring it" in fake.stdout(), "the ignore log line")
    assert fake.proc.poll() is None
    assert requests.get(f"{url}/health", timeout=TIMEOUT).status_code == 200
    os.killpg(fake.proc.pid, signal.SIGKILL)
    assert fake.proc.wait(timeout=TIMEOUT) == -signal.SIGKILL


def test_crash_switch_exits_with_code_and_log(launch: Callable[..., Fake]) -> None:
    log = r"RuntimeError: CUDA out of memory\nsecond line"
    fake = launch(env={"FAKE_VLLM_CRASH_AFTER": "0", "FAKE_VLLM_EXIT_CODE": "3", "FAKE_VLLM_CRASH_LOG": log})
    assert fake.proc.wait(timeout=TIMEOUT) == 3
    assert fake.stderr().splitlines()[-2:] == ["RuntimeError: CUDA out of memory", "second line"]
    assert not (fake.dir / "port").exists()


def test_busy_port_fails_like_vllm(launch: Callable[..., Fake]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        fake = launch("--port", str(busy.getsockname()[1]))
        assert fake.proc.wait(timeout=TIMEOUT) == 1
    assert "OSError: [Errno 98] Address already in use" in fake.stderr()


def test_engine_death_fails_requests_then_exits_zero(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"FAKE_VLLM_ENGINE_DEATH_AFTER": "0"})
    assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert "EngineCore encountered a fatal error" in fake.stdout()


def test_escaped_worker_leaves_the_group_and_needs_the_tag_sweep(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"FAKE_VLLM_ESCAPE": "1"})
    escaped = wait_for(
        lambda: [p for p in pids_with_tag(fake.tag) if proc_field(p, "comm") == "VLLM::Escaped"],
        "the escaped worker",
    )[0]
    os.killpg(fake.proc.pid, signal.SIGTERM)
    assert fake.proc.wait(timeout=TIMEOUT) == 0
    assert proc_field(escaped, "comm") == "VLLM::Escaped"  # still alive: only the fixture's sweep ends it


def test_concurrent_requests_overlap_in_the_record(launch: Callable[..., Fake]) -> None:
    fake = launch(env={"FAKE_VLLM_LATENCY": "0.2"})
    url = fake.url
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda _: chat(url, "hi").status_code, range(2)))
    assert statuses == [200, 200]
    first, second = sorted((r["t_start"], r["t_end"]) for r in fake.records() if r["method"] == "POST")
    assert second[0] < first[1]  # the second started before the first ended
