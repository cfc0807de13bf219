"""The budget check and the diagnoses on the real CPU vLLM (marker `vllm`).

A profile whose context is too short for its media is refused before launch (no `vllm serve` is
started) with the demo, its count and a value that then passes; a demo over the server's
`limit_mm_per_prompt`, sent to a real server, gets the diagnosis that names the field. (That the
counts equal the server's own usage.prompt_tokens is checked on every seed architecture, in
test_vllm_seeds.py and test_vllm_e2e.py.)
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.vllm.logscan import round_up
from tests.conftest import REPO, free_port, marked_pids, mmdemo, signal_mmdemo
from tests.fake_hub import FakeHub
from tests.hub_models import LLAVA_ID, llava_repo

NEEDS = re.compile(r"(\S+) needs (\d+) tokens \((\d+) prompt \+ (\d+) completion\)")


def context_refusal(line: str, limit: int, profile: Path) -> dict[str, int]:
    """The refusal of a context too short, checked whole: every request it names needs prompt + completion
    tokens, more than `limit`, the largest first, and the value named holds the largest. Each request's
    prompt tokens, by name (the counts follow the model's tokenizer and the media, so they are read)."""
    head, _, fix = line.partition(f" but max_model_len is {limit}: ")
    needs = [(name, int(n), int(p), int(c)) for name, n, p, c in NEEDS.findall(head)]
    assert needs, line
    assert ", ".join(f"{x} needs {n} tokens ({p} prompt + {c} completion)" for x, n, p, c in needs) == head
    assert all(n == p + c and n > limit for _, n, p, c in needs), line
    assert [n for _, n, _, _ in needs] == sorted((n for _, n, _, _ in needs), reverse=True), line
    assert fix == f"set serve.max_model_len: {round_up(needs[0][1])} in {profile}", line
    return {name: p for name, _, p, _ in needs}


pytestmark = pytest.mark.vllm

TINY_OMNI = REPO / "profiles" / "cpu-tiny-omni.yaml"


def profile_with(tmp_path: Path, name: str, **serve: object) -> Path:
    """cpu-tiny-omni with its serve settings changed, as a file of its own."""
    data = yaml.safe_load(TINY_OMNI.read_text())
    data["serve"].update(serve)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def vllm_serve_running() -> bool:
    """Whether a `vllm serve` of this test session is running now."""
    for pid in marked_pids():
        try:
            if b"\0serve\0" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_a_context_too_short_for_the_media_is_refused_before_launch_with_a_value_that_passes(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    # The issue's own measurement: cpu-tiny-omni cut to max_model_len 128 started (32 s), then
    # multi-audio failed. Now the count (cold: this session's fresh cache) refuses it: beside the start
    # by default (the starting server is ended at once, no demo sent), before it with --count-first.
    short = profile_with(tmp_path, "short-omni", max_model_len=128)
    args = ("--only", "multi-audio", "--no-worst-case", "--vllm-bin", vllm_bin, "--grace", "15")
    for order in ("beside", "first"):
        runs = tmp_path / f"short-{order}"
        started = time.monotonic()
        extra = ("--count-first",) if order == "first" else ()
        done = mmdemo("run", str(short), *args, *extra, "--runs-dir", str(runs), env=mmdemo_env, timeout=600)
        refused_s = time.monotonic() - started
        out = done.stdout + done.stderr
        assert done.returncode == 3, out
        line = next(x for x in out.splitlines() if x.startswith("error: "))
        counted = context_refusal(line.removeprefix("error: "), 128, short)
        assert list(counted) == ["multi-audio/input_audio"], out
        report = json.loads(next(runs.glob("*/report.json")).read_text())
        assert report["status"] == "error"
        assert report["demos"] == []  # no request reached a server
        if order == "first":
            assert report["server"]["pid"] is None  # no vllm serve was started
            assert not list(runs.glob("*/server.log"))
        else:
            assert report["teardown"]["remaining"] == 0
        assert report["budget"]["demos"][0]["prompt_tokens"] == counted["multi-audio/input_audio"]
        assert report["budget"]["max_model_len"] == 128
        assert not vllm_serve_running()
        print(f"refused ({order}) in {refused_s:.1f} s")

    # The value it named, written into the profile: the same demo passes on the real server.
    found = re.search(r"serve\.max_model_len: (\d+)", line)
    assert found is not None
    fixed = profile_with(tmp_path, "fixed-omni", max_model_len=int(found.group(1)))
    done = mmdemo(
        "run", str(fixed), *args, "--runs-dir", str(tmp_path / "fixed"), env=mmdemo_env, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(next((tmp_path / "fixed").glob("*/report.json")).read_text())
    first = report["demos"][0]
    assert (first["name"], first["status"]) == ("multi-audio/input_audio", "passed")
    assert first["prompt_tokens"] == first["prompt_tokens_counted"] == counted["multi-audio/input_audio"]
    assert report["teardown"]["remaining"] == 0


def test_a_demo_over_the_servers_limit_mm_per_prompt_gets_the_diagnosis(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    # A server someone started with one audio per prompt (here `mmdemo serve` of a profile that says
    # so); `mmdemo demo` sends the example's multi-audio request (two audios) to it.
    one_audio = profile_with(tmp_path, "one-audio", limit_mm_per_prompt={"image": 2, "video": 1, "audio": 1})
    data = yaml.safe_load(one_audio.read_text())
    data["demos"] = [d for d in data["demos"] if d["chat_type"] != "multi-audio"]
    one_audio.write_text(yaml.safe_dump(data, sort_keys=False))
    port, out = free_port(), tmp_path / "serve.txt"
    attached: list[subprocess.CompletedProcess[str]] = []
    demo = ["demo", "--base-url", f"http://127.0.0.1:{port}/v1", "--api-key", "EMPTY", "-c", "multi-audio"]

    def ready_then_demo() -> bool:
        if "serving until Ctrl-C" not in out.read_text(errors="replace"):
            return False
        attached.append(mmdemo(*demo, "--runs-dir", str(tmp_path / "attached"), env=mmdemo_env, timeout=300))
        return True

    args = [
        "serve", str(one_audio), "--vllm-bin", vllm_bin, "--port", str(port), "--api-key", "EMPTY",
        "--runs-dir", str(tmp_path / "served"), "--grace", "15",
    ]  # fmt: skip
    code = signal_mmdemo(args, mmdemo_env, out, ready_then_demo, signal.SIGINT, timeout_s=150)
    assert code == 0, out.read_text()
    done = attached[0]
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(next((tmp_path / "attached").glob("*/report.json")).read_text())
    first = report["demos"][0]
    assert (first["name"], first["status"], first["http_status"]) == (
        "multi-audio/input_audio",
        "failed",
        400,
    )
    assert "At most 1 audio(s) may be provided in one prompt" in first["error"]
    assert first["diagnosis"] == (
        "more audios than the server allows per prompt (1); set serve.limit_mm_per_prompt.audio to the "
        "number the demo sends, or drop the demo"
    )
    assert marked_pids() == set()


def test_validate_counts_every_profile_whose_files_are_here_a_gpu_profile_through_the_hub_too(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str, session_hub: FakeHub
) -> None:
    # llava-1.5-7b's config, tokenizer and processor files on the loopback hub (its weights only
    # listed): vLLM's own Llava processor counts the shipped GPU profile's demos on this CPU box.
    built = mmdemo("models", "build", "tiny-omni", "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    short = profile_with(tmp_path, "short-omni", max_model_len=128)
    llava, phi = REPO / "profiles" / "llava-1.5-7b.yaml", REPO / "profiles" / "phi-3.5-vision.yaml"
    session_hub.repos[LLAVA_ID] = llava_repo()
    try:
        done = mmdemo(
            "validate", "--against-vllm", "--vllm-bin", vllm_bin, str(TINY_OMNI), str(short), str(llava), str(phi),
            env=mmdemo_env, timeout=900,
        )  # fmt: skip
    finally:
        session_hub.repos.pop(LLAVA_ID)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out  # the short profile
    lines = [x.split(" budget ", 1) for x in out.splitlines() if " budget " in x]
    by_key = {text.split(": ", 1)[0]: (status.strip(), text.split(": ", 1)[1]) for status, text in lines}
    assert by_key[f"{TINY_OMNI}::cpu"][0] == "ok"
    fits = re.fullmatch(
        r"12 requests fit; the largest, worst-case/all-media, needs (\d+) of 2048 tokens \(.*\)",
        by_key[f"{TINY_OMNI}::cpu"][1],
    )
    assert fits is not None, by_key[f"{TINY_OMNI}::cpu"]
    assert by_key[f"{short}::cpu"][0] == "error"
    refused = context_refusal(by_key[f"{short}::cpu"][1], 128, short)
    assert next(iter(refused)) == "worst-case/all-media"  # the largest: every medium at once
    assert refused["worst-case/all-media"] + 16 == int(fits.group(1))
    variants = [k for k in by_key if k.startswith(f"{llava}::")]
    assert len(variants) == 8  # every supported variant (T4 is not), one count: GPU placement changes none
    texts = {by_key[k][1].rsplit(" (", 1)[0] for k in variants}
    assert len(texts) == 1, texts
    # the largest request: the image (576 patches of Llava's 336 px CLIP grid) and the prompt
    found = re.search(r"needs (\d+) of 4096 tokens", texts.pop())
    assert found is not None
    assert int(found.group(1)) > 576
    assert all(by_key[k][0] == "ok" for k in variants)
    # counted twice: once for the variants that differ only in GPU placement, once for MI300X (its
    # own VLLM_* fetch timeouts are part of what is counted)
    assert sum(by_key[k][1].endswith("(cached)") for k in variants) == 6
    for shard in llava_repo().sizes:
        assert not session_hub.downloads(shard)  # no weights, ever
    assert by_key[str(phi)][0] == "note"
    assert by_key[str(phi)][1].startswith(
        "demos not counted: the config and processor files of microsoft/Phi-3.5-vision-instruct are not at hand"
    )
