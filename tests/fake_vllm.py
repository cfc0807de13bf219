#!/usr/bin/env python3
"""A stand-in for `vllm serve`: the same HTTP API and log lines, with switches for each failure.

Stdlib only so that it starts in a few milliseconds. The command line mimics vLLM's: `--version`, and
`serve MODEL [--host H] [--port P (0: ephemeral)] [--served-model-name N] [--max-model-len N]
[--limit-mm-per-prompt JSON | --limit-mm-per-prompt.image N] [--allowed-local-media-path DIR]
[--allowed-media-domains HOST ...]
[--api-key K]`; unknown flags are accepted and ignored. Env VLLM_API_KEY guards /v1/* as in vLLM.

The switches are environment variables, FAKE_VLLM_ + (all optional; S = seconds, float):
  PORT_FILE / READY_FILE / MARKER_FILE=path  written atomically: the bound port / time.monotonic() at
      which /health first answers / once signal handlers are installed and workers spawned
  RECORD=path        one JSON line per request: path, method, t_start, t_end, status, body, headers
  READY_AFTER=S, NEVER_READY=1       slow start; never listen (logs "Still loading" every second)
  CRASH_AFTER=S, EXIT_CODE=N (1), CRASH_LOG=text ("\n" separates lines, printed to stderr)
  ENGINE_DEATH_AFTER=S   S after ready: /health 503, chat 500, then exit 0 after 0.3 s
  IGNORE_SIGTERM=1   log and ignore SIGTERM/SIGINT (else: shut down, end workers, exit 0)
  WORKERS=K          spawn VLLM::EngineCore + VLLM::Worker_TP{0..K-2} in the server's process group
  WORKER_IGNORE_SIGTERM=1, WORKER_GRACE=S (5)   on shutdown the server SIGKILLs workers after S
  ESCAPE=1           one more worker, VLLM::Escaped, in its own session, deaf to SIGTERM/SIGHUP
  ESCAPE=untagged    the same, without MMDEMO_RUN_TAG in its environment (like a setproctitle'd worker)
  MODELS_DELAY=S     /v1/models lists no model for S after ready
  LATENCY=S, TOKEN_DELAY=S       before each reply (first chunk; an error too) / between streamed chunks
  REQUEST_FILE=path  written when a chat completion has been received (before LATENCY), and logged
  CHAT_STATUS=code, CHAT_MESSAGE=text   every chat completion fails so
  VERSION=x          reported version (0.32.0)
  HANG_PROMPT=text   a chat completion whose prompt holds `text` never answers (no first token)
  FAIL_REPEAT=1      a chat completion with the same messages as an earlier one fails (500), as a
      broken multimodal processor cache does
  DIE_ON_MEDIA=N     a chat completion with N or more media items kills the engine (health 503, exit)
  WARN_LOG=text      WARNING lines logged at start-up ("\n" separates them)
  LOG_ENV=A,B        print those environment variables into its log (for redaction tests)
  UUID_CACHE=0       the processor cache keeps nothing: a part with a `uuid` and no data misses (400)
  With --enable-mm-embeds an `image_embeds` part is read (base64 of a torch.save zip; its storage, as
      tests/probes/fake_image_embeds.py writes it, is the image's own bytes: the fake reads them back);
      without it, refused as vLLM 0.32 does. A part with a `uuid` is cached by it, as vLLM's processor
      cache does; a `uuid` with no data is served from that cache, or refused when not there.
  ANSWER=truth       (default) a perfect model: media mmdemo generated with a known truth (found by
      sha256 under $MMDEMO_CACHE_DIR/assets/known or --allowed-local-media-path/known) are answered
      with their facts ("Pink.", "Red, moving up.", "Lima and Oslo."), the capital of France with
      "Paris."; anything else is echoed as with ANSWER=echo
  ANSWER=echo        'fake reply to "<prompt>": 1 image, 0 video, 0 audio'
  ANSWER=<text>      that text, whatever was asked
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# The routes past chat live beside this file: run as a script its directory is on sys.path, but not
# when a launcher runs it through runpy (bench/fake.py), so it is put there.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_tasks

SWITCHES = ("READY_AFTER", "NEVER_READY", "CRASH_AFTER", "EXIT_CODE", "CRASH_LOG", "ENGINE_DEATH_AFTER",
            "IGNORE_SIGTERM", "WORKERS", "WORKER_IGNORE_SIGTERM", "WORKER_GRACE", "ESCAPE", "MODELS_DELAY",
            "LATENCY", "TOKEN_DELAY", "CHAT_STATUS", "CHAT_MESSAGE", "MARKER_FILE", "PORT_FILE", "REQUEST_FILE",
            "READY_FILE", "RECORD", "VERSION", "LOG_ENV", "HANG_PROMPT", "FAIL_REPEAT", "DIE_ON_MEDIA",
            "WARN_LOG", "NO_TASKS", "TASK_FAULT")  # fmt: skip
MODALITIES = {"image_url": "image", "video_url": "video", "input_audio": "audio", "audio_url": "audio"}
FETCH_TIMEOUT_ENV = {"image": "VLLM_IMAGE_FETCH_TIMEOUT", "video": "VLLM_VIDEO_FETCH_TIMEOUT",
                     "audio": "VLLM_AUDIO_FETCH_TIMEOUT"}  # fmt: skip
ROUTES = {"/health": ("GET",), "/ping": ("GET", "POST"), "/version": ("GET",), "/metrics": ("GET",),
          "/v1/models": ("GET",), "/v1/chat/completions": ("POST",)}  # fmt: skip
STATUS_TYPES = {400: "BadRequestError", 401: "Unauthorized", 404: "NotFoundError", 500: "InternalServerError"}


def env(name: str, default: str = "") -> str:
    return os.environ.get("FAKE_VLLM_" + name, default)


def env_float(name: str) -> float | None:
    value = env(name)
    return float(value) if value else None


# --- logging: os.write of whole lines, so that signal handlers and threads can log safely -------------


def emit(fd: int, line: str) -> None:
    with contextlib.suppress(OSError):  # the reader went away; a real server would not care either
        os.write(fd, (line + "\n").encode())


def log(message: str, level: str = "INFO", source: str = "api_server.py:1") -> None:
    stamp = time.strftime("%m-%d %H:%M:%S")
    emit(1, f"(APIServer pid={os.getpid()}) {level} {stamp} [{source}] {message}")


def write_atomic(path: str, text: str) -> None:
    # mkstemp's unique name, not the pid: the server's request threads may write one file at once.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


# --- command line ---------------------------------------------------------------------------------------


def parse_serve_args(argv: list[str]) -> dict[str, Any]:
    """Parse `serve MODEL [flags]` loosely: known flags are read, the rest ignored."""
    opts: dict[str, Any] = {"model": None, "host": "0.0.0.0", "port": 8000, "served_model_name": None,
                            "max_model_len": 4096, "limits": {}, "allowed_local_media_path": None,
                            "api_key": None, "allowed_media_domains": None,
                            "enable_mm_embeds": False}  # fmt: skip
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("--"):
            if opts["model"] is None:
                opts["model"] = arg
            continue
        name, eq, value = arg[2:].partition("=")
        if name == "allowed-media-domains":  # nargs="+", as vLLM's parser has it
            domains = [value] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                domains.append(argv[i])
                i += 1
            opts["allowed_media_domains"] = domains
            continue
        if not eq:  # `--x value`, or a bare boolean (known by name, or followed by another flag)
            if i < len(argv) and not argv[i].startswith("--") and not is_boolean_flag(name):
                value = argv[i]
                i += 1
            else:
                value = "true"
        key = name.replace("-", "_")
        if key in ("model", "host", "served_model_name", "allowed_local_media_path", "api_key"):
            opts[key] = value
        if key in ("enable_mm_embeds", "no_enable_mm_embeds"):
            opts["enable_mm_embeds"] = key == "enable_mm_embeds" and value.lower() != "false"
        try:
            if key in ("port", "max_model_len"):
                opts[key] = int(value)
            elif key == "limit_mm_per_prompt":  # {"image": 2} or {"video": {"count": 1, "num_frames": 32}}
                for modality, limit in json.loads(value).items():
                    opts["limits"][modality] = int(limit["count"] if isinstance(limit, dict) else limit)
            elif key.startswith("limit_mm_per_prompt."):
                opts["limits"][key.partition(".")[2]] = int(value)
        except (ValueError, TypeError, KeyError, AttributeError):
            emit(2, f"vllm serve: error: argument --{name}: invalid value: {value!r}")
            sys.exit(2)
    if opts["model"] is None:
        emit(2, "vllm serve: error: the following arguments are required: model_tag")
        sys.exit(2)
    opts["name"] = opts["served_model_name"] or opts["model"]
    opts["api_key"] = os.environ.get("VLLM_API_KEY") or opts["api_key"]
    return opts


def is_boolean_flag(name: str) -> bool:
    return name.startswith(("no-", "enable-", "disable-")) or name in ("trust-remote-code", "enforce-eager")


# --- media checks ---------------------------------------------------------------------------------------


def sniff(data: bytes) -> str | None:
    """Name the container format from its magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE"):
        return "webp" if data[8:12] == b"WEBP" else "wav"
    if data.startswith(b"OggS"):
        return "ogg"
    if data.startswith(b"fLaC"):
        return "flac"
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return "mp3"
    if data[4:8] == b"ftyp":
        return "mp4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    return None


ACCEPTED = {"image": {"jpeg", "png", "gif", "webp"}, "video": {"mp4", "webm"},
            "audio": {"wav", "ogg", "flac", "mp3", "mp4", "webm"}}  # fmt: skip


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_media(modality: str, data: bytes, origin: str) -> bytes:
    kind = sniff(data)
    if kind not in ACCEPTED[modality]:
        raise ApiError(400, f"Failed to load {modality} from {origin}: unrecognised {modality} data "
                            f"({len(data)} bytes, format {kind or 'unknown'}).")  # fmt: skip
    return data


def known_truths(media_root: str | None) -> dict[str, dict[str, str]]:
    """sha256 -> fact of every known-answer medium mmdemo generated (its file name holds the fact:
    known-v1-video-colour-red-direction-up.mp4)."""
    import hashlib

    dirs = (
        [Path(os.environ["MMDEMO_CACHE_DIR"]) / "assets" / "known"]
        if os.environ.get("MMDEMO_CACHE_DIR")
        else []
    )
    if media_root:
        dirs.append(Path(media_root) / "known")
    truths: dict[str, dict[str, str]] = {}
    for folder in dirs:
        for path in sorted(folder.glob("known-v*-*.*")) if folder.is_dir() else []:
            if path.name.endswith(".sha256"):
                continue
            parts = path.stem.split("-")[3:]  # known, v1, kind, then key-value pairs
            with contextlib.suppress(OSError):
                truths[hashlib.sha256(path.read_bytes()).hexdigest()] = dict(
                    zip(parts[::2], parts[1::2], strict=False)
                )
    return truths


def truthful(prompt: str, media: list[bytes], media_root: str | None) -> str | None:
    """A perfect model's short answer, where the truth is known; None elsewhere."""
    import hashlib

    if not media:
        return "Paris." if "capital of France" in prompt else None
    truths = known_truths(media_root)
    facts = [truths.get(hashlib.sha256(data).hexdigest()) for data in media]
    if not all(facts):
        return None
    said = []
    for fact in facts:
        assert fact is not None
        if "word" in fact:
            said.append(fact["word"].capitalize())
        elif "beeps" in fact:
            said.append(fact["beeps"])
        else:
            said.append(
                fact["colour"].capitalize() + (f", moving {fact['direction']}" if "direction" in fact else "")
            )
    return " and ".join(said) + "."


def decode_b64(modality: str, text: str, origin: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"Failed to load {modality} from {origin}: invalid base64 data.") from None


def load_url(modality: str, url: str, media_root: str | None, domains: list[str] | None = None) -> bytes:
    """Load one media URL the way vLLM's MediaConnector does, raising ApiError on failure."""
    scheme = urllib.parse.urlparse(url).scheme
    host = urllib.parse.urlparse(url).hostname
    if scheme in ("http", "https") and domains and host not in domains:  # vLLM 0.32's words
        raise ApiError(
            400, f"The URL must be from one of the allowed domains: {domains}. Input URL domain: {host}"
        )
    if scheme == "data":
        header, comma, payload = url[5:].partition(",")
        if not comma or not header.endswith(";base64"):
            raise ApiError(400, "Failed to load data URL: only base64-encoded data URLs are supported.")
        return check_media(modality, decode_b64(modality, payload, "data URL"), "data URL")
    if scheme in ("http", "https"):
        from urllib.request import Request, urlopen  # imported here: 13 ms at startup otherwise

        timeout = float(os.environ.get(FETCH_TIMEOUT_ENV[modality], "5"))
        request = Request(url, headers={"User-Agent": "fake-vllm"})
        try:
            with urlopen(request, timeout=timeout) as response:
                data = response.read()
        except Exception as exc:  # vLLM answers any fetch failure with a 500
            raise ApiError(500, f"Failed to fetch {modality} from {url}: {exc}") from None
        return check_media(modality, data, url)
    if scheme == "file":
        path = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path))
        if not media_root:
            raise ApiError(400, "Cannot load local files without `--allowed-local-media-path`.")
        root = Path(media_root).resolve()
        if root not in path.resolve().parents:
            raise ApiError(400, f"The file path {path} must be a subpath of "
                                f"`--allowed-local-media-path` {root}.")  # fmt: skip
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ApiError(400, f"Failed to load {modality} from {url}: {exc.strerror}.") from None
        return check_media(modality, data, url)
    raise ApiError(400, "The URL must be either a HTTP, data or file URL.")


# --- the server -----------------------------------------------------------------------------------------


class FakeServer:
    """State shared by the request handlers: options, readiness and engine health, the request log."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.version = env("VERSION", "0.32.0")
        self.ready_at = 0.0
        self.engine_dead = False
        self.requests_total = 0
        self.seen: set[str] = set()  # the messages of every chat completion so far (FAIL_REPEAT)
        self.mm_cache: dict[str, bytes] = {}  # uuid -> the medium's bytes, as the processor cache keeps it
        self.record_lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        path = env("RECORD")
        if not path:
            return
        with self.record_lock, open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # as asyncio does: no 40 ms delayed-ACK stall per kept-alive answer
    server_version = "uvicorn"
    sys_version = ""
    fake: FakeServer  # set on the subclass made in become_ready()

    # -- plumbing ----------------------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        pass  # log_request() writes uvicorn-style access lines instead

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self._status = int(code) if str(code).isdigit() else 0
        host, port = self.client_address[:2]
        phrase = self.responses.get(self._status, ("",))[0]
        emit(1, f'INFO:     {host}:{port} - "{self.requestline}" {code} {phrase}')

    def send_json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.record()
        self.wfile.write(body)

    def send_error_json(self, status: int, message: str) -> None:
        error = {"message": message, "type": STATUS_TYPES.get(status, "APIError"), "param": None,
                 "code": status}  # fmt: skip
        self.send_json(status, {"error": error})

    def send_empty(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.record()
        self.end_headers()

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def record(self) -> None:
        """Append this request to FAKE_VLLM_RECORD: just before the response's last bytes go out, so
        that a client holding a complete response finds its record already written."""
        if not self._recorded:
            self._recorded = True
            self.fake.record({"path": self.path, "method": self.command, "t_start": self._t_start,
                              "t_end": time.monotonic(), "status": self._status, "body": self._body,
                              "headers": {"authorization": self.headers.get("Authorization")}})  # fmt: skip

    def dispatch(self, method: str) -> None:
        self._t_start = time.monotonic()
        self._status, self._body, self._recorded = 0, None, False
        body: Any = None
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                multipart = (self.headers.get("Content-Type") or "").startswith("multipart/form-data")
                body = raw if multipart else json.loads(raw) if raw else None  # the tasks: fake_tasks.py
                self._body = None if multipart else body
            except ValueError:
                body = None
                if method == "POST":
                    raise ApiError(400, "Invalid JSON in request body.") from None
            self.route(method, urllib.parse.urlparse(self.path).path, body)
        except ApiError as exc:
            self.send_error_json(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a malformed request the checks above let through
            if self._status:
                raise
            self.send_error_json(500, f"{type(exc).__name__}: {exc}")
        finally:
            self.record()

    def route(self, method: str, path: str, body: Any) -> None:
        fake = self.fake
        if path not in ROUTES and not fake_tasks.served(path):
            self.send_json(404, {"detail": "Not Found"})
            return
        if path in ROUTES and method not in ROUTES[path]:
            self.send_json(405, {"detail": "Method Not Allowed"})
            return
        key = fake.opts["api_key"]
        if key and path.startswith("/v1/") and self.headers.get("Authorization") != f"Bearer {key}":
            raise ApiError(401, "Unauthorized")
        if path in ("/health", "/ping"):
            self.send_empty(503 if fake.engine_dead else 200)
        elif path == "/version":
            self.send_json(200, {"version": fake.version})
        elif path == "/metrics":
            self.send_metrics()
        elif path == "/v1/models":
            self.send_models()
        elif path in fake_tasks.TASK_ROUTES:
            fake_tasks.handle(sys.modules[__name__], self, path, body)
        else:
            self.chat(body)

    # -- endpoints ---------------------------------------------------------------------------------------

    def send_models(self) -> None:
        opts = self.fake.opts
        delay = env_float("MODELS_DELAY") or 0.0
        data = [{"id": opts["name"], "object": "model", "created": int(time.time()), "owned_by": "vllm",
                 "root": opts["model"], "parent": None, "max_model_len": opts["max_model_len"],
                 "permission": []}]  # fmt: skip
        if time.monotonic() < self.fake.ready_at + delay:
            data = []
        self.send_json(200, {"object": "list", "data": data})

    def send_metrics(self) -> None:
        name = self.fake.opts["name"]
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{name}"}} 0.0\n'
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{model_name="{name}"}} {float(self.fake.requests_total)}\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.record()
        self.wfile.write(text)

    def chat(self, body: Any) -> None:
        fake, opts = self.fake, self.fake.opts
        if fake.engine_dead:
            raise ApiError(500, "EngineCore encountered an issue. See stack trace (above) for the cause.")
        status = env("CHAT_STATUS")
        if status:  # after LATENCY, as every reply: a cell of a failing profile is still serving then
            time.sleep(env_float("LATENCY") or 0.0)
            raise ApiError(int(status), env("CHAT_MESSAGE", f"fake error {status}"))
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise ApiError(400, "Field 'messages' is required and must be a list.")
        model = body.get("model")
        if model is not None and model != opts["name"]:
            raise ApiError(404, f"The model `{model}` does not exist.")
        prompt, media = parse_messages(body["messages"])
        counts = {m: sum(1 for mod, _, _ in media if mod == m) for m in ("image", "video", "audio")}
        seen = json.dumps(body["messages"], sort_keys=True)
        repeated, _ = seen in fake.seen, fake.seen.add(seen)
        if env("FAIL_REPEAT") and repeated:
            raise ApiError(500, "fake processor cache: the cached item does not match the prompt")
        if env("DIE_ON_MEDIA") and len(media) >= int(env("DIE_ON_MEDIA")):
            fake.engine_dead = True
            log("CUDA out of memory. Tried to allocate 2.00 GiB (fake, on the encoder)", "ERROR", "core.py:1")
            log("EngineDeadError: EngineCore encountered an issue.", "ERROR", "async_llm.py:1")
            threading.Timer(0.3, os._exit, (0,)).start()
            raise ApiError(500, "EngineCore encountered an issue. See stack trace (above) for the cause.")
        if env("HANG_PROMPT") and env("HANG_PROMPT") in prompt:
            log("Added request (it will never be scheduled: fake HANG_PROMPT)", source="async_llm.py:1")
            while True:  # the scheduler never runs it; the server itself stays healthy
                time.sleep(1.0)
        for modality, count in counts.items():
            limit = opts["limits"].get(modality)
            if limit is not None and count > limit:
                raise ApiError(400, f"At most {limit} {modality}(s) may be provided in one prompt.")
        loaded = []
        index: dict[str, int] = {}
        for modality, part, item_uuid in media:
            at = index[modality] = index.get(modality, -1) + 1
            if part is None:  # a uuid and no data: the processor cache's, or a miss
                if item_uuid not in fake.mm_cache:
                    raise ApiError(400, f"Cache miss for {modality} at index {at} but data is not provided.")
                loaded.append(fake.mm_cache[item_uuid])
                continue
            if isinstance(part, dict):  # image_embeds
                if not opts["enable_mm_embeds"]:
                    raise ApiError(400, "You must set `--enable-mm-embeds` to input `image_embeds`")
                data = embedded_image(part["embeds"])
            elif isinstance(part, tuple):  # input_audio: raw base64 data
                data = check_media(modality, decode_b64(modality, part[0], "input_audio"), "input_audio")
            else:
                data = load_url(
                    modality, part, opts["allowed_local_media_path"], opts["allowed_media_domains"]
                )
            loaded.append(data)
            if item_uuid is not None and env("UUID_CACHE", "1") != "0":
                fake.mm_cache[item_uuid] = data

        reply = f'fake reply to "{prompt}": {counts["image"]} image, {counts["video"]} video, '
        reply += f"{counts['audio']} audio"
        answer = env("ANSWER", "truth")
        if answer == "truth":
            reply = truthful(prompt, loaded, opts["allowed_local_media_path"]) or reply
        elif answer != "echo":
            reply = answer
        words = reply.split(" ")
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(cap, int) and cap < len(words):
            words, finish = words[:cap], "length"
        prompt_tokens = sum(len(t.split()) for t in all_texts(body["messages"])) + 10 * len(media)
        usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + len(words),
                 "completion_tokens": len(words), "prompt_tokens_details": None}  # fmt: skip
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": opts["name"]}
        if env("REQUEST_FILE"):  # a chat request is in flight: tests signal mmdemo "while serving a demo"
            write_atomic(env("REQUEST_FILE"), str(time.monotonic()))
            # The same moment, seen from outside a container (where the file is not): its log line.
            log(f"Added request {base['id']}.", source="async_llm.py:1")
        time.sleep(env_float("LATENCY") or 0.0)
        fake.requests_total += 1
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self.stream(base, words, finish, usage if include_usage else None)
            return
        message = {"role": "assistant", "content": " ".join(words), "refusal": None, "tool_calls": []}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                  "stop_reason": None}  # fmt: skip
        self.send_json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage,
                             "prompt_logprobs": None})  # fmt: skip

    def stream(self, base: dict[str, Any], words: list[str], finish: str, usage: dict | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay = env_float("TOKEN_DELAY") or 0.0

        def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> None:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish_reason}]  # fmt: skip
            payload = {**base, "object": "chat.completion.chunk", "choices": choices, **extra}
            if usage is not None:
                payload.setdefault("usage", None)
            self.send_chunk(f"data: {json.dumps(payload)}\n\n")

        chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            if i and delay:
                time.sleep(delay)
            chunk({"content": word if i == 0 else " " + word})
        chunk({}, finish)
        if usage is not None:
            chunk(None, usage=usage)
        self.record()
        self.send_chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def send_chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def parse_messages(messages: list[Any]) -> tuple[str, list[tuple[str, Any, str | None]]]:
    """Return the last user text and the media parts of a conversation: (modality, url, (b64,),
    {"embeds": b64} or None for a uuid with no data; the part's uuid or None)."""
    prompt, media = "", []
    for message in messages:
        if not isinstance(message, dict):
            raise ApiError(400, "Each message must be an object.")
        content = message.get("content")
        texts = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    texts.append(str(part.get("text", "")))
                elif kind in ("image_url", "video_url", "audio_url"):
                    value = part.get(kind)
                    url = value.get("url") if isinstance(value, dict) else value
                    item_uuid = part.get("uuid")
                    if url is None and item_uuid is not None:  # vLLM >= 0.11: served from the cache
                        media.append((MODALITIES[kind], None, str(item_uuid)))
                        continue
                    if not isinstance(url, str):
                        raise ApiError(400, f"Field '{kind}.url' is required.")
                    media.append((MODALITIES[kind], url, None if item_uuid is None else str(item_uuid)))
                elif kind == "image_embeds":
                    value, item_uuid = part.get("image_embeds"), part.get("uuid")
                    if value is None and item_uuid is not None:
                        media.append(("image", None, str(item_uuid)))
                        continue
                    if not isinstance(value, str):
                        raise ApiError(400, "Field 'image_embeds' must be a base64 string.")
                    media.append(("image", {"embeds": value}, None if item_uuid is None else str(item_uuid)))
                elif kind == "input_audio":
                    data = (part.get("input_audio") or {}).get("data")
                    if not isinstance(data, str):
                        raise ApiError(400, "Field 'input_audio.data' is required.")
                    media.append(("audio", (data,), None))
                else:
                    raise ApiError(400, f"Unknown part type: {kind}")
        if message.get("role") == "user" and texts:
            prompt = " ".join(texts)
    return prompt, media


def embedded_image(text: str) -> bytes:
    """The image an `image_embeds` part stands for: the tensor's storage in the torch.save zip
    (ARCHIVE/data/0), which the fake's embeddings hold (tests/probes/fake_image_embeds.py)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(text, validate=True))) as archive:
            names = archive.namelist()
            storage = next((n for n in names if n.endswith("/data/0")), None)
            data = archive.read(storage) if storage else None
    except (ValueError, binascii.Error, zipfile.BadZipFile, KeyError) as exc:
        raise ApiError(400, f"Failed to load image_embeds: not a torch-saved tensor ({exc}).") from None
    if data is None or not any(n.endswith("/data.pkl") for n in names):
        raise ApiError(
            400, "Failed to load image_embeds: not a torch-saved tensor (no data.pkl, no storage)."
        )
    return data


def all_texts(messages: list[Any]) -> list[str]:
    texts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [str(p.get("text", "")) for p in content if p.get("type") == "text"]
    return texts


# --- processes ------------------------------------------------------------------------------------------


def run_worker(name: str) -> None:
    """A child that looks like vLLM's renamed EngineCore/worker processes and sleeps until killed."""
    escaped = name == "VLLM::Escaped"
    if escaped:
        os.setsid()
    # comm holds 15 characters; argv[0] (set by the parent) carries the full name, as setproctitle does.
    Path("/proc/self/comm").write_text(name[:15])
    ignore = escaped or env("WORKER_IGNORE_SIGTERM") == "1"
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore else signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API server handles Ctrl-C and ends its workers
    if escaped:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        signal.pause()


class Main:
    def __init__(self, opts: dict[str, Any]) -> None:
        self.opts = opts
        self.fake = FakeServer(opts)
        self.stop_requested = False
        self.workers: list[subprocess.Popen[bytes]] = []

    def on_signal(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if env("IGNORE_SIGTERM") == "1":
            log(f"Received {name}; ignoring it (FAKE_VLLM_IGNORE_SIGTERM=1)", "WARNING")
            return
        self.stop_requested = True

    def wait(self, seconds: float | None) -> bool:
        """Sleep up to `seconds` (None: forever); return True as soon as a shutdown is requested."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while not self.stop_requested:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    def spawn(self, name: str, untagged: bool = False) -> None:
        argv = [name, str(Path(__file__).resolve()), "--worker", name]
        # untagged: the worker's environment lacks mmdemo's run tag, as /proc/PID/environ reads for a
        # vLLM worker that renamed itself with setproctitle (which overwrites that memory).
        child_env = {k: v for k, v in os.environ.items() if not (untagged and k == "MMDEMO_RUN_TAG")}
        self.workers.append(
            subprocess.Popen(argv, executable=sys.executable, stdin=subprocess.DEVNULL, env=child_env)
        )

    def end_workers(self) -> None:
        """Terminate the workers (not the escaped one), then kill any that outlive the grace period."""
        owned = [w for w in self.workers if w.args[0] != "VLLM::Escaped"]
        for w in owned:
            w.terminate()
        deadline = time.monotonic() + float(env("WORKER_GRACE", "5"))
        for w in owned:
            try:
                w.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"Worker {w.pid} did not exit on SIGTERM; killing it", "WARNING", "core_client.py:1")
                w.kill()
                w.wait()

    def exit(self, code: int, server: ThreadingHTTPServer | None = None) -> None:
        if server is not None:
            server.shutdown()
            server.server_close()
        self.end_workers()
        sys.exit(code)

    def run(self) -> None:
        opts = self.opts
        switches = {s: env(s) for s in SWITCHES if env(s)}
        log(f"fake vllm serve pid={os.getpid()} switches={json.dumps(switches)}", source="fake_vllm.py:1")
        log(f"vLLM API server version {self.fake.version}")
        for name in filter(None, env("LOG_ENV").split(",")):  # a careless server that prints its secrets
            log(f"env {name}={os.environ.get(name, '(unset)')}")
        args = {"model_tag": opts["model"], "port": opts["port"]}
        log(f"non-default args: {args}", source="utils.py:1")
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        workers = int(env("WORKERS", "0"))
        for i in range(workers):
            self.spawn("VLLM::EngineCore" if i == 0 else f"VLLM::Worker_TP{i - 1}")
        if env("ESCAPE") in ("1", "untagged"):
            self.spawn("VLLM::Escaped", untagged=env("ESCAPE") == "untagged")
        if env("MARKER_FILE"):
            write_atomic(env("MARKER_FILE"), str(os.getpid()))

        crash_after = env_float("CRASH_AFTER")
        if crash_after is not None:
            if self.wait(crash_after):
                self.shutdown_gracefully(None)
            for line in env("CRASH_LOG", "RuntimeError: fake crash").replace("\\n", "\n").splitlines():
                emit(2, line)
            self.exit(int(env("EXIT_CODE", "1")))
        if env("NEVER_READY") == "1":
            while not self.wait(1.0):
                log("Still loading the model weights...", source="gpu_model_runner.py:1")
            self.shutdown_gracefully(None)
        if self.wait(env_float("READY_AFTER") or 0.0):
            self.shutdown_gracefully(None)
        log("Loading weights took 0.01 seconds", source="default_loader.py:1")
        for line in filter(None, env("WARN_LOG").replace("\\n", "\n").splitlines()):
            log(line, "WARNING", "config.py:1")
        server = self.become_ready()

        death_after = env_float("ENGINE_DEATH_AFTER")
        if not self.wait(death_after):  # only reached when the engine dies
            self.fake.engine_dead = True
            log("EngineCore encountered a fatal error.", "ERROR", "core.py:1")
            log("EngineDeadError: EngineCore encountered an issue.", "ERROR", "async_llm.py:1")
            time.sleep(0.3)
            emit(1, "INFO:     Shutting down")
            self.exit(0, server)
        self.shutdown_gracefully(server)

    def become_ready(self) -> ThreadingHTTPServer:
        opts = self.opts
        handler = type("BoundHandler", (Handler,), {"fake": self.fake})
        ThreadingHTTPServer.allow_reuse_address = True  # like uvicorn (SO_REUSEADDR, not SO_REUSEPORT)
        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer.request_queue_size = 2048  # uvicorn's backlog; socketserver's 5 drops SYNs
        family = socket.AF_INET6 if ":" in opts["host"] else socket.AF_INET
        ThreadingHTTPServer.address_family = family
        try:
            server = ThreadingHTTPServer((opts["host"], opts["port"]), handler)
        except OSError as exc:
            emit(2, "Traceback (most recent call last):")
            emit(2, '  File "vllm/entrypoints/openai/api_server.py", line 1, in run_server')
            emit(2, f"OSError: [Errno {exc.errno}] {exc.strerror}")
            self.exit(1)
        port = server.server_address[1]
        # Set before the first request can be served: MODELS_DELAY counts from it, and a /v1/models
        # answered while it was still 0 listed the model at once, then not (a flake under load).
        self.fake.ready_at = time.monotonic()  # /health answers from here on
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        log(f"Starting vLLM API server 0 on http://{opts['host']}:{port}", source="launcher.py:1")
        log("Available routes are:", source="launcher.py:1")
        for route, methods in ROUTES.items():
            log(f"Route: {route}, Methods: {', '.join(methods)}", source="launcher.py:1")
        emit(1, f"INFO:     Started server process [{os.getpid()}]")
        emit(1, "INFO:     Waiting for application startup.")
        emit(1, "INFO:     Application startup complete.")
        # Written after the log lines so that a test seeing the file also sees them; the ready file
        # still holds the instant the socket started listening.
        if env("PORT_FILE"):
            write_atomic(env("PORT_FILE"), str(port))
        if env("READY_FILE"):
            write_atomic(env("READY_FILE"), str(self.fake.ready_at))
        return server

    def shutdown_gracefully(self, server: ThreadingHTTPServer | None) -> None:
        if server is not None:
            emit(1, "INFO:     Shutting down")
        log("Shutting down", source="launcher.py:1")
        self.exit(0, server)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--version"]:
        print(env("VERSION", "0.32.0"))
    elif argv[:1] == ["--worker"]:
        run_worker(argv[1])
    elif argv[:1] == ["serve"]:
        Main(parse_serve_args(argv[1:])).run()
    else:
        emit(2, "usage: vllm [-h] [-v] {serve,chat,complete,bench,collect-env,run-batch} ...")
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
