"""RunRecords for the renderer tests: every chat type with real (synthetic) media, and a failed start.

Built here rather than by a run so the page's tests do not depend on the session's wiring; the
media are the real files the asset store makes, so the browser decodes what a run would send.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.demos.chat import DEFAULT_ASSETS, DELIVERIES, PROMPTS
from orchestrator.media import AssetStore
from orchestrator.record.report import (
    AssetRecord,
    DemoRecord,
    ErrorRecord,
    MachineRecord,
    PhaseSpan,
    RunRecord,
    ServerRecord,
    Summary,
    TeardownRecord,
    TimelineEvent,
    VllmRecord,
)

MACHINE = MachineRecord(cpu="AMD EPYC", cores=2, python="3.11.7", platform="Linux", accelerator="CPU only")
STARTUP = [
    PhaseSpan(phase="launching", start_s=0.0, end_s=1.2),
    PhaseSpan(phase="starting", start_s=1.2, end_s=6.5),
    PhaseSpan(phase="loading weights", start_s=6.5, end_s=9.0),
    PhaseSpan(phase="profiling memory", start_s=9.0, end_s=19.8),
    PhaseSpan(phase="starting API server", start_s=19.8, end_s=21.3),
]
TIMELINE = [  # the moments the session records
    TimelineEvent(event="command start", at_s=0.0),
    TimelineEvent(event="preflight done", at_s=0.4),
    TimelineEvent(event="launch", at_s=0.5),
    TimelineEvent(event="media ready", at_s=0.9),
    TimelineEvent(event="server ready", at_s=21.8),
    TimelineEvent(event="demos done", at_s=22.3),
    TimelineEvent(event="teardown done", at_s=22.7),
]


def asset_record(store: AssetStore, key: str) -> AssetRecord:
    """The record of one registry asset as the store provides it offline (synthetic)."""
    asset = store.get(key)
    return AssetRecord(
        key=asset.key,
        kind=asset.kind,
        provenance="synthetic",
        sha256=asset.sha256,
        source_url=asset.source_url,
        path=str(asset.path),
        reason="offline mode",
    )


def demo_records(store: AssetStore) -> list[DemoRecord]:
    """One passed demo per chat type and delivery, as a run of cpu-tiny-omni records them."""
    demos = []
    for index, (chat_type, deliveries) in enumerate(DELIVERIES.items()):
        assets = [asset_record(store, key) for key in DEFAULT_ASSETS[chat_type]]
        for delivery in deliveries:
            demos.append(
                DemoRecord(
                    name=f"{chat_type.value}/{delivery}",
                    chat_type=chat_type.value,
                    delivery=delivery,
                    status="passed",
                    http_status=200,
                    latency_s=0.3 + 0.02 * len(demos),
                    ttft_s=0.2,
                    prompt_tokens=40 + 10 * index,
                    completion_tokens=16,
                    tokens_per_s=42.0,
                    prompt=PROMPTS[chat_type],
                    answer=f"answer {len(demos)} for {chat_type.value}",
                    started_s=0.01 * len(demos),
                    assets=assets,
                )
            )
    return demos


def passed_run(cache: Path) -> RunRecord:
    """A run where every chat type answered; one demo with expected words, one with control bytes."""
    demos = demo_records(AssetStore(cache, offline=True))
    demos[0] = demos[0].model_copy(
        update={"answer": "The capital is Paris.", "expected": [["paris"]], "verdict": "understood"}
    )
    demos[1] = demos[1].model_copy(update={"answer": "bell\x07 esc\x1b[31m red <b>bold</b> | pipe"})
    record = RunRecord(
        mmdemo_version="0.1.0",
        status="passed",
        profile="cpu-tiny-omni",
        variant="cpu",
        model="mmdemo:tiny-omni",
        served_model_name="tiny-omni",
        flags=["quick-start"],
        vllm=VllmRecord(version="0.32.0+cpu", path=".venv-vllm/bin/vllm"),
        machine=MACHINE,
        server=ServerRecord(
            base_url="http://127.0.0.1:49879/v1",
            command="vllm serve ~/.cache/mmdemo/models/tiny-omni --port 49879",
            ready_s=21.3,
        ),
        startup=STARTUP,
        timeline=TIMELINE,
        demos=demos,
        teardown=TeardownRecord(
            duration_s=0.38,
            signals=["SIGTERM"],
            processes_signalled=3,
            escaped=0,
            remaining=0,
            returncode=0,
            port_free=True,
            gpu_released=None,
        ),
        notes=["This is a tiny model with random weights: its answers are gibberish."],
        started_at="2026-11-25T17:38:16",
        finished_at="2026-11-25T17:38:39",
    )
    return record.model_copy(update={"summary": record.summarize()})


def failed_run() -> RunRecord:
    """A server that died while starting: no demos, a diagnosis and the log's last lines."""
    tail = [
        "INFO 11-25 17:38:20 [api_server.py:1] vLLM API server version 0.32.0",
        "INFO 11-25 17:38:25 [gpu_model_runner.py:1] Starting to load model /models/x",
        "Traceback (most recent call last):",
        '  File "worker.py", line 12, in load',
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "ERROR 11-25 17:38:31 [core.py:1] EngineCore failed to start.",
    ]
    return RunRecord(
        mmdemo_version="0.1.0",
        status="error",
        profile="phi-3.5-vision",
        variant="L4",
        model="microsoft/Phi-3.5-vision-instruct",
        served_model_name="phi",
        vllm=VllmRecord(version="0.11.0", path="vllm"),
        machine=MACHINE.model_copy(update={"accelerator": "NVIDIA L4 (22 GiB)"}),
        server=ServerRecord(command="vllm serve microsoft/Phi-3.5-vision-instruct --port 40001"),
        startup=STARTUP[:3],
        timeline=TIMELINE[:2],
        error=ErrorRecord(
            type="ServerDied",
            message="vLLM exited with code 1 while starting",
            hint="pick a variant for a bigger card",
            returncode=1,
            diagnosis="CUDA out of memory",
            log_tail=tail,
        ),
        summary=Summary(),
        started_at="2026-11-25T17:38:16",
        finished_at="2026-11-25T17:38:32",
    )
