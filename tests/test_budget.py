"""The budget check before launch: what vLLM's renderer counted, held against the profile.

The counts themselves come from vLLM (tests/test_budget_vllm.py runs the real renderer); here the
answers are given, and what mmdemo makes of them is checked: the refusal names the demo, its count,
the limit and a value that fits; the cache key ignores the port and not the media; a stop ends the
script's process at once.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.budget import count as budget
from orchestrator.budget.count import Answer, Budget, BudgetRequest, Counted
from orchestrator.core.errors import Interrupted, PreflightError
from orchestrator.demos.chat import DemoRequest
from orchestrator.media.store import Asset
from orchestrator.vllm.runner import VllmInfo
from tests.conftest import marked_pids


def demo(name: str, completion: int = 16, sha: str = "a" * 64) -> DemoRequest:
    asset = Asset(key="k", kind="audio", path=Path("/x.wav"), media_type="audio/wav", sha256=sha,
                  provenance="cached", source_url=None)  # fmt: skip
    return DemoRequest(name=name, chat_type=name.split("/", maxsplit=1)[0], delivery="base64", messages=[],
                       max_completion_tokens=completion, assets=(asset,))  # fmt: skip


def answer(
    *results: Counted, max_model_len: int = 128, model_max_len: int | None = 4096, cache: int = 2048
) -> Answer:
    return Answer(vllm="0.32.0", max_model_len=max_model_len, model_max_len=model_max_len,
                  encoder_cache_size=cache, limits={"audio": 2}, results=results)  # fmt: skip


def checked(answer: Answer, *requests: DemoRequest) -> Budget:
    return Budget(answer, requests, "profiles/x.yaml", seconds=1.0, cached=False)


def test_a_demo_over_the_context_is_refused_with_a_value_that_fits_every_demo() -> None:
    requests = (demo("multi-audio/input_audio"), demo("audio/base64"), demo("text-only/text"))
    found = checked(
        answer(
            Counted(id="multi-audio/input_audio", prompt_tokens=175, items=(("audio", 67), ("audio", 67))),
            Counted(id="audio/base64", prompt_tokens=120, items=(("audio", 67),)),
            Counted(id="text-only/text", prompt_tokens=40),
        ),
        *requests,
    )
    refusal = found.refusal()
    assert isinstance(refusal, PreflightError)
    assert str(refusal) == (
        "multi-audio/input_audio needs 191 tokens (175 prompt + 16 completion), audio/base64 needs 136 tokens "
        "(120 prompt + 16 completion) but max_model_len is 128: set serve.max_model_len: 256 in profiles/x.yaml"
    )
    assert "--no-budget" in str(refusal.hint)
    record = found.record()
    assert [d.prompt_tokens for d in record.demos] == [175, 120, 40]
    assert record.demos[0].items == [["audio", 67], ["audio", 67]]


def test_the_value_never_exceeds_the_models_own_context_and_beyond_it_the_media_knobs_are_named() -> None:
    near = checked(answer(Counted(id="v/url", prompt_tokens=4000), max_model_len=2048), demo("v/url"))
    assert "set serve.max_model_len: 4096 in" in str(near.refusal())  # 4016 rounds up to 4096: the ceiling
    beyond = checked(answer(Counted(id="v/url", prompt_tokens=5000), max_model_len=2048), demo("v/url"))
    message = str(beyond.refusal())
    assert "the model's own context is 4096 tokens, so no max_model_len holds it" in message
    assert "serve.media_io_kwargs" in message


def test_an_item_larger_than_the_encoder_cache_is_refused_with_the_media_knobs() -> None:
    found = checked(
        answer(
            Counted(id="video/url", prompt_tokens=3100, items=(("video", 3000),)),
            max_model_len=8192,
            cache=2048,
        ),
        demo("video/url"),
    )
    message = str(found.refusal())
    assert message.startswith("video/url: one video item is 3000 tokens, more than the encoder cache's 2048")
    assert "num_frames" in message


def test_vllms_refusal_of_too_many_items_refuses_the_run_and_other_errors_are_warnings() -> None:
    too_many = "At most 1 audio(s) may be provided in one prompt."
    found = checked(
        answer(
            Counted(id="multi-audio/input_audio", error=too_many),
            Counted(id="image/url", error="Failed to load image: cannot identify image file"),
            max_model_len=2048,
        ),
        demo("multi-audio/input_audio"),
        demo("image/url"),
    )
    message = str(found.refusal())
    assert message.startswith(f"multi-audio/input_audio: vLLM refuses it: {too_many}")
    assert "serve.limit_mm_per_prompt.audio" in message
    assert found.warnings() == [
        "image/url: vLLM's renderer could not count it before launch: Failed to load image: cannot identify image file"
    ]
    assert len(found.problems()) == 1  # the undecodable image is the demo's failure later, not the profile's


def test_a_demo_that_fits_with_little_room_is_a_warning_not_a_refusal() -> None:
    found = checked(
        answer(
            Counted(id="a/b", prompt_tokens=1700), Counted(id="c/d", prompt_tokens=100), max_model_len=2048
        ),
        demo("a/b"),
        demo("c/d"),
    )
    assert found.refusal() is None
    assert found.warnings() == [
        "a/b uses 1716 of max_model_len 2048 tokens (84%): a larger medium would not fit"
    ]
    assert found.summary() == "2 requests fit; the largest, a/b, needs 1716 of 2048 tokens (1.0 s)"


def request(
    tmp_path: Path, *requests: DemoRequest, argv: tuple[str, ...] = ("serve", "m", "--port", "8000")
) -> BudgetRequest:
    return BudgetRequest(vllm=VllmInfo("/x/vllm", "0.32.0", python=sys.executable), argv=argv, env={"VLLM_X": "1"},
                         model_dir=None, requests=requests, served_model_name="m")  # fmt: skip


def test_the_cache_key_ignores_where_the_server_listens_but_not_the_media_or_the_flags(
    tmp_path: Path,
) -> None:
    base = budget.cache_path(request(tmp_path, demo("a/b")))
    assert (
        budget.cache_path(
            request(tmp_path, demo("a/b"), argv=("serve", "m", "--port=9000", "--host", "0.0.0.0"))
        )
        == base
    )
    assert budget.cache_path(request(tmp_path, demo("a/b", sha="b" * 64))) != base  # another medium
    assert budget.cache_path(request(tmp_path, demo("a/b", completion=32))) != base
    assert (
        budget.cache_path(request(tmp_path, demo("a/b"), argv=("serve", "m", "--max-model-len", "256")))
        != base
    )
    assert budget.counted_argv(["serve", "m", "--api-key", "s3cret", "--port", "1", "--dtype", "half"]) == [
        "serve", "m", "--dtype", "half",
    ]  # fmt: skip


def test_a_second_count_of_the_same_demos_reads_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    runs: list[int] = []

    def script(req: BudgetRequest, check: object) -> Answer:
        runs.append(1)
        return answer(Counted(id="a/b", prompt_tokens=10), max_model_len=2048)

    monkeypatch.setattr(budget, "run_script", script)
    first = budget.count(request(tmp_path, demo("a/b")), "p")
    second = budget.count(request(tmp_path, demo("a/b"), argv=("serve", "m", "--port", "8123")), "p")
    assert (first.cached, second.cached, len(runs)) == (False, True, 1)
    assert second.record().demos[0].prompt_tokens == 10


def test_a_renderer_vllm_cannot_build_is_one_line_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    # The real script under a Python without vLLM: its own one-line answer, never a traceback.
    with pytest.raises(
        PreflightError, match=r"^vLLM could not count the demos' tokens \(import\): ModuleNotFoundError"
    ):
        budget.count(request(tmp_path, demo("a/b")), "p")
    assert not list((tmp_path / "cache").glob("budgets/*.json"))  # a failure is not cached


def test_a_stop_ends_the_counting_script_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "slow.py"
    ready = tmp_path / "started"
    script.write_text(
        textwrap.dedent(f"""
        import pathlib, subprocess, sys, time
        sys.stdin.read()
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a child of its own
        pathlib.Path({str(ready)!r}).write_text("x")
        time.sleep(60)
    """)
    )
    monkeypatch.setattr(budget, "SCRIPT", script)

    def check() -> None:
        if ready.exists():
            raise Interrupted("SIGINT")

    started = time.monotonic()
    with pytest.raises(Interrupted):
        budget.run_script(request(tmp_path, demo("a/b")), check)
    assert time.monotonic() - started < 30  # not the script's 60 s
    assert not [p for p in marked_pids() if b"slow.py" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert not [p for p in marked_pids() if b"time.sleep(60)" in Path(f"/proc/{p}/cmdline").read_bytes()]


def test_megabytes_of_media_reach_a_script_that_reads_only_after_its_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real script imports vLLM (~10 s) before it reads; the demos' base64 media are megabytes, far
    # more than a pipe holds. Every byte must still arrive (communicate() retried would stop writing).
    script = tmp_path / "late_reader.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys, time
        time.sleep(1.0)
        data = sys.stdin.read()
        json.dump({"vllm": "x", "max_model_len": 100, "results": [{"id": "big", "prompt_tokens": len(data)}]},
                  sys.stdout)
    """)
    )
    monkeypatch.setattr(budget, "SCRIPT", script)
    big = DemoRequest(name="big", chat_type="single-image", delivery="base64", max_completion_tokens=1,
                      messages=[{"role": "user", "content": "x" * 3_000_000}])  # fmt: skip
    req = request(tmp_path, big)
    answer = budget.run_script(req)
    sent = json.dumps({"argv": budget.counted_argv(req.argv), "requests": budget.bodies(req)})
    assert answer.results[0].prompt_tokens == len(sent)
