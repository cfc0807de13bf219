"""What vLLM's own log lines say: the startup phase it is in, and why it failed."""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# Ordered by startup; a later phase never goes back to an earlier one. Patterns match vLLM's own
# progress messages only: warnings and config dumps mention "torch.compile" too.
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in (
        ("starting", r"vLLM API server version|non-default args|Resolved architecture"),
        ("downloading weights", r"\bDownloading\b|Fetching \d+ files"),
        (
            "loading weights",
            r"Starting to load model|Loading weights took|Loading safetensors|Model loading took",
        ),
        (
            "profiling memory",
            r"Memory profiling|Available KV cache memory|KV cache size:|init engine \(profile",
        ),
        ("compiling", r"torch\.compile takes|Compiling a graph|Dynamo bytecode transform"),
        ("capturing CUDA graphs", r"Capturing CUDA graph|Graph capturing finished"),
        ("starting API server", r"Starting vLLM (API )?server on|Available routes are"),
        ("ready", r"Application startup complete"),
    )
)
_NOT_PROGRESS = re.compile(r"\b(WARNING|ERROR)\b|with config:")


@dataclass(frozen=True)
class Diagnosis:
    """A known failure: what it means and what to do about it."""

    message: str
    hint: str


DIAGNOSES: tuple[tuple[re.Pattern[str], Diagnosis], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), Diagnosis(message, hint))
    for pattern, message, hint in (
        (
            r"Free memory on device .* is less than desired GPU memory utilization",
            "free GPU memory is below gpu_memory_utilization",
            "another process holds GPU memory (see `nvidia-smi`), or lower serve.gpu_memory_utilization",
        ),
        (
            r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError",
            "CUDA out of memory",
            "pick a variant for a bigger card, or lower max_model_len / limit_mm_per_prompt",
        ),
        (
            r"Available memory on node .* less than desired CPU memory utilization",
            "the KV cache size is not set on CPU",
            "set serve.kv_cache_memory_bytes (e.g. 256M) or env VLLM_CPU_KVCACHE_SPACE",
        ),
        (
            r"No available memory for the cache blocks|larger than the maximum number of tokens that can "
            r"be stored in KV cache|KV cache is needed, which is larger than the available KV cache",
            "the KV cache is too small for max_model_len",
            "raise gpu_memory_utilization / kv_cache_memory_bytes, or lower max_model_len",
        ),
        (
            r"Address already in use",
            "the port is already in use",
            "pass another --port, or stop the process holding it",
        ),
        (
            r"GatedRepoError|401 Client Error|Access to model .* is restricted|Cannot access gated repo",
            "the model is gated and no valid Hugging Face token was given",
            "accept the model's licence on huggingface.co and export HF_TOKEN",
        ),
        (
            r"RepositoryNotFoundError|Repository Not Found|is not a local folder and is not a valid model "
            r"identifier|No such file or directory: .*config\.json",
            "the model was not found (wrong id or path, or no access)",
            "check the profile's model",
        ),
        (
            r"trust_remote_code=True|requires you to execute the configuration file|--trust-remote-code",
            "the model needs remote code",
            "set serve.trust_remote_code: true in the profile",
        ),
        (
            r"unrecognized arguments|error: argument|invalid choice|Failed to parse|JSONDecodeError.*limit",
            "vLLM rejected a command-line argument",
            "this vLLM does not accept a flag of the profile (e.g. the old `image=2` limit form); "
            "see `vllm serve --help`",
        ),
        (
            r"Please install vllm\[audio\]|No module named '(librosa|soundfile)'",
            "vLLM's audio extras are missing",
            "install `vllm[audio]`",
        ),
    )
)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def phase_of(line: str) -> str | None:
    """The startup phase a log line announces, if any."""
    if _NOT_PROGRESS.search(line):
        return None
    for name, pattern in PHASES:
        if pattern.search(line):
            return name
    return None


def diagnose(lines: Iterable[str]) -> Diagnosis | None:
    """The first known failure found in the log, most specific patterns first."""
    text = [_ANSI.sub("", line) for line in lines]
    for pattern, diagnosis in DIAGNOSES:
        if any(pattern.search(line) for line in text):
            return diagnosis
    return None


class LogFollower:
    """Reads a log file incrementally: new complete lines, the current phase, and a tail."""

    def __init__(self, path: Path, tail: int = 40, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.phase = "launching"
        self._clock = clock
        self.changes: list[tuple[str, float]] = [("launching", clock())]  # (phase, when it began)
        self._offset = 0
        self._partial = b""
        self._tail: deque[str] = deque(maxlen=tail)
        self._order = {name: index for index, (name, _) in enumerate(PHASES)}
        self.warnings: list[str] = []  # start-up lines that predict trouble (warnings_in), as they come

    def poll(self) -> list[str]:
        """Lines written since the last call; updates the phase and the tail."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        lines = [_ANSI.sub("", raw.decode("utf-8", "replace").rstrip("\r")) for raw in complete]
        self.warnings += [w for w in warnings_in(lines) if w not in self.warnings]
        for line in lines:
            self._tail.append(line)
            phase = phase_of(line)
            if phase and self._order[phase] >= self._order.get(self.phase, -1):
                if phase != self.phase:
                    self.changes.append((phase, self._clock()))
                self.phase = phase
        return lines

    def spans(self, start: float, end: float) -> list[tuple[str, float, float]]:
        """Each phase seen with its start and end in seconds since `start`, the last ending at `end`."""
        times = [*self.changes[1:], ("", max(end, self.changes[-1][1]))]
        return [
            (phase, round(max(0.0, began - start), 3), round(max(0.0, until - start, began - start), 3))
            for (phase, began), (_, until) in zip(self.changes, times, strict=True)
        ]

    def tail(self) -> list[str]:
        """The last lines read, including an unterminated last line."""
        self.poll()
        lines = list(self._tail)
        if self._partial:
            lines.append(self._partial.decode("utf-8", "replace"))
        return lines


# -- start-up warnings: vLLM lines that predict trouble later -------------------------------------

WARNINGS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), meaning)
    for pattern, meaning in (
        (
            r"too short to hold the multi-?modal embeddings",
            "max_model_len cannot hold the worst-case multimodal input: a request with all the media "
            "limit_mm_per_prompt allows will be refused; raise serve.max_model_len or lower the limits",
        ),
        (
            r"max_num_seqs .*less than 1|Computed max_num_seqs",
            "the memory left for the KV cache holds less than one full request: expect out-of-memory "
            "or refused requests; raise gpu_memory_utilization or lower max_model_len",
        ),
        (
            r"encoder cache (size|budget)|exceeds the pre-allocated encoder cache",
            "the encoder cache bounds the largest image, video or audio item: larger media are refused",
        ),
        (
            r"\bis deprecated\b|\bdeprecated\b.*\b(flag|argument|option|environment variable)",
            "a setting this vLLM deprecates: it may be gone in the next release",
        ),
        (
            # A flag or argument named: eager mode's own "inductor settings will be ignored" is not news.
            r"(--[a-z][\w-]*|\bargument|\bflag|\boption)\b.*(will be ignored|\bis ignored\b|not supported)",
            "vLLM ignores a setting the command line gives",
        ),
    )
)
_LEVEL = re.compile(r"\b(WARNING|WARN|ERROR)\b")


def warnings_in(lines: Iterable[str]) -> list[str]:
    """The warning lines of a start-up log that predict trouble, each followed by what it means."""
    out: list[str] = []
    for raw in lines:
        line = _ANSI.sub("", raw).strip()
        if not _LEVEL.search(line):
            continue
        # The message alone: the API server and the engine core often log the same one, each with
        # its own pid and time ("(EngineCore pid=7) WARNING 12-02 01:03:53 [vllm.py:1727] ...").
        message = line.split("] ", 1)[1] if "] " in line else line
        for pattern, meaning in WARNINGS:
            if pattern.search(message):
                entry = f"{message[:300]} -> {meaning}"
                if entry not in out:
                    out.append(entry)
                break
    return out


# -- a failed demo: vLLM's own message, explained -------------------------------------------------

_CONTEXT = (
    re.compile(r"Input length \((\d+)\) exceeds model's maximum context length \((\d+)\)"),
    re.compile(r"maximum context length is (?P<limit>\d+) tokens\. However, your (?:prompt contains|request has) "
               r"(?:at least )?(?P<prompt>\d+) input tokens"),
)  # fmt: skip
_TOO_MANY = re.compile(r"At most (\d+) (image|video|audio)\(s\) may be provided")
_ENCODER = re.compile(r"(image|video|audio) item with (\d+) embedding tokens, which exceeds the "
                      r"pre-allocated encoder cache size (\d+)")  # fmt: skip
_FETCH = re.compile(r"Failed to fetch media|timed out|Connection refused|Cannot connect|Name or service not known",
                    re.IGNORECASE)  # fmt: skip
_DECODE = re.compile(r"Format not recogni[sz]ed|Failed to load (audio|video)|could not (decode|open)|"
                     r"Error (opening|loading) (audio|video)|Invalid data found|No backend|torchcodec",
                     re.IGNORECASE)  # fmt: skip
_DOMAIN = re.compile(r"The URL must be from one of the allowed domains: \[(?P<domains>[^\]]*)\]\. "
                     r"Input URL domain: (?P<host>\S+)")  # fmt: skip
FETCH_TIMEOUTS = {"image": "VLLM_IMAGE_FETCH_TIMEOUT (5 s)", "video": "VLLM_VIDEO_FETCH_TIMEOUT (30 s)",
                  "audio": "VLLM_AUDIO_FETCH_TIMEOUT (10 s)"}  # fmt: skip


def explain_demo(
    message: str, *, completion_tokens: int | None, modalities: Iterable[str] = ()
) -> str | None:
    """What a known vLLM error of a demo means, with the profile field to change and a value; else None."""
    for pattern in _CONTEXT:
        if found := pattern.search(message):
            prompt, limit = (int(found.group(1)), int(found.group(2))) if pattern is _CONTEXT[0] else (
                int(found.group("prompt")), int(found.group("limit")))  # fmt: skip
            needed = prompt + (completion_tokens or 0)
            return (
                f"the context is too short: the request needs {needed} tokens ({prompt} prompt + "
                f"{completion_tokens or 0} completion) and max_model_len is {limit}; "
                f"set serve.max_model_len: {round_up(needed)}"
            )
    if found := _TOO_MANY.search(message):
        return (
            f"more {found.group(2)}s than the server allows per prompt ({found.group(1)}); set "
            f"serve.limit_mm_per_prompt.{found.group(2)} to the number the demo sends, or drop the demo"
        )
    if found := _ENCODER.search(message):
        kind, tokens, size = found.group(1), int(found.group(2)), int(found.group(3))
        knob = (
            "media_io_kwargs: {video: {num_frames: N}} or mm_processor_kwargs max_pixels"
            if kind == "video"
            else "mm_processor_kwargs (e.g. max_pixels) to make items smaller"
        )
        return f"one {kind} item is {tokens} tokens, more than the encoder cache's {size}: set serve.{knob}"
    if found := _DOMAIN.search(message):
        return (
            f"refused by the server, not a model failure: its --allowed-media-domains "
            f"({found.group('domains')}) does not list {found.group('host')}, where the demo's media are"
        )
    if _FETCH.search(message):
        timeouts = ", ".join(FETCH_TIMEOUTS[m] for m in modalities if m in FETCH_TIMEOUTS) or ", ".join(
            FETCH_TIMEOUTS.values()
        )
        return (
            "the server could not fetch the media: the network, not the model (a host it cannot reach, "
            f"or slower than {timeouts}; raise that variable in the profile's env)"
        )
    if _DECODE.search(message):
        return (
            "vLLM's environment cannot decode this audio or video: install its decoders there "
            "(`vllm[audio]` for soundfile/librosa, PyAV or ffmpeg for video); the report lists those found"
        )
    return None


def round_up(tokens: int, step: int = 256) -> int:
    """A max_model_len that holds `tokens`: the next multiple of `step`."""
    return max(step, -(-tokens // step) * step)
