"""Reading vLLM's log: startup phases from a real CPU startup, and the known failure diagnoses."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.vllm.logscan import LogFollower, diagnose, phase_of

REAL_LOG = Path(__file__).parent / "logs" / "vllm-0.32-cpu-startup.log"


def test_phases_of_a_real_vllm_startup_in_order() -> None:
    seen: list[str] = []
    for line in REAL_LOG.read_text().splitlines():
        phase = phase_of(line)
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
    assert seen == ["starting", "loading weights", "profiling memory", "starting API server", "ready"]


def test_warnings_about_compilation_are_not_a_compiling_phase() -> None:
    line = (
        "(APIServer pid=1) WARNING 11-25 17:38:22 [vllm.py:1703] Enforce eager set, disabling torch.compile"
    )
    assert phase_of(line) is None
    assert (
        phase_of("(EngineCore pid=1) INFO [backends.py:1] Dynamo bytecode transform time: 5.2 s")
        == "compiling"
    )


def test_follower_reads_incrementally_and_keeps_a_tail(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    follower = LogFollower(log, tail=3)
    assert follower.poll() == []  # no file yet
    log.write_text("a\nb\nINFO Loading weights took 1.0 seconds\npartial")
    assert follower.poll() == ["a", "b", "INFO Loading weights took 1.0 seconds"]
    assert follower.phase == "loading weights"
    with log.open("a") as handle:
        handle.write(" line\nINFO:     Application startup complete.\n")
    assert follower.poll() == ["partial line", "INFO:     Application startup complete."]
    assert follower.phase == "ready"
    assert follower.tail() == [
        "INFO Loading weights took 1.0 seconds",
        "partial line",
        "INFO:     Application startup complete.",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "CUDA out of memory"),
        (
            "ValueError: Free memory on device (3.1/79.2 GiB) on startup is less than desired GPU memory "
            "utilization (0.9, 71.3 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.",
            "free GPU memory is below gpu_memory_utilization",
        ),
        ("OSError: [Errno 98] Address already in use", "the port is already in use"),
        (
            "huggingface_hub.errors.GatedRepoError: 401 Client Error.",
            "the model is gated and no valid Hugging Face token was given",
        ),
        (
            "OSError: fixie-ai/nope is not a local folder and is not a valid model identifier",
            "the model was not found (wrong id or path, or no access)",
        ),
        (
            "ValueError: The repository for x contains custom code which must be executed to correctly load the model. "
            "Please pass the argument `trust_remote_code=True` to allow custom code to be run.",
            "the model needs remote code",
        ),
        (
            "vllm serve: error: argument --limit-mm-per-prompt: Value image=2 cannot be converted",
            "vLLM rejected a command-line argument",
        ),
        (
            "vllm serve: error: unrecognized arguments: --task generate",
            "vLLM rejected a command-line argument",
        ),
        (
            "ValueError: Available memory on node 0 (1.2/23.4 GiB) on startup is less than desired CPU memory utilization",
            "the KV cache size is not set on CPU",
        ),
        (
            "ValueError: To serve at least one request with the models's max seq len (8192), (1.0 GiB KV cache is needed, "
            "which is larger than the available KV cache memory (0.5 GiB).",
            "the KV cache is too small for max_model_len",
        ),
        ("ImportError: Please install vllm[audio] for audio support", "vLLM's audio extras are missing"),
    ],
)
def test_diagnoses(line: str, message: str) -> None:
    found = diagnose(["INFO starting", f"(APIServer pid=1) ERROR {line}"])
    assert found is not None
    assert found.message == message
    assert found.hint


def test_no_diagnosis_for_an_ordinary_log() -> None:
    assert diagnose(REAL_LOG.read_text().splitlines()) is None
