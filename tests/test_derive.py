"""derive: vLLM's facts + weights + GPUs -> a Profile, its provenance and refusals (pure, no vLLM).

The facts under tests/models/facts/ are what vLLM 0.32's probe said about the tiny models and, through
the loopback hub, about llava-hf/llava-1.5-7b-hf (tests/test_derive_vllm.py re-derives them live).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.gpus.detect import GPU_CLASSES, Gpu
from orchestrator.gpus.sizing import gpus_of_class
from orchestrator.model.derive import EXPECTED_WORDS, Derivation, DeriveOptions, derive
from orchestrator.model.weights import Weights
from orchestrator.profile.schema import ChatType, load_profile
from orchestrator.vllm.probe import ModelFacts

FACTS = Path(__file__).parent / "models" / "facts"
TINY = Weights(2_000_000, ("model.safetensors",), "1 weight file(s) in the tiny model")
LLAVA = Weights(14_130_000_000, ("model-00001-of-00003.safetensors",), "the hub's sizes")
GIB = 1024**3


def facts(name: str, **changes: Any) -> ModelFacts:
    loaded = ModelFacts.model_validate_json((FACTS / f"{name}.json").read_text())
    return loaded.model_copy(update=changes)


def tiny(name: str, **changes: Any) -> Derivation:
    options = DeriveOptions(name=name, random_weights=True, trust_remote_code=True)
    return derive(facts(name, **changes), TINY, [], options)


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("tiny-omni", "cpu-tiny-omni"),
        ("tiny-llava", "cpu-tiny-llava"),
        ("tiny-qwen2vl", "cpu-tiny-qwen2vl"),
        ("tiny-ultravox", "cpu-tiny-ultravox"),
        ("tiny-phi3v", "cpu-tiny-phi3v"),
    ],
)
def test_a_tiny_model_derives_the_chat_types_and_limits_of_its_shipped_profile(
    model: str, profile: str
) -> None:
    shipped = load_profile(profile)
    derived = tiny(model).profile
    assert derived.chat_types == shipped.chat_types
    assert derived.serve.limit_mm_per_prompt == shipped.serve.limit_mm_per_prompt
    cpu = derived.resolve("cpu")
    assert (cpu.serve.dtype, cpu.serve.enforce_eager, cpu.serve.kv_cache_memory_bytes) == (
        "float32",
        True,
        "256M",
    )
    assert list(derived.variants) == ["cpu"]
    assert all(not d.expect and d.max_completion_tokens == 16 for d in derived.demos)  # random weights
    assert derived.serve.max_model_len is not None
    assert derived.serve.max_model_len <= 4096  # never above the config's (4096 for every tiny model)


def test_the_context_is_what_the_longest_demo_needs_not_the_configs() -> None:
    # tiny-omni: two 30 s audios are 2 x 750 tokens; the config allows 4096
    derived = tiny("tiny-omni")
    assert derived.profile.serve.max_model_len == 2048
    assert "multi-audio" in derived.provenance["serve.max_model_len"]
    long = tiny("tiny-omni", max_model_len=131072, demo_tokens={"audio": 10, "image": 10, "video": 10})
    assert long.profile.serve.max_model_len == 2048


def test_a_text_only_model_runs_text_only_with_a_note() -> None:
    derived = tiny("tiny-text")
    assert derived.profile.chat_types == (ChatType.TEXT,)
    assert derived.profile.serve.limit_mm_per_prompt is None
    assert any("text-only model" in note for note in derived.notes)


def test_multi_item_chat_types_only_where_the_limit_allows_two() -> None:
    derived = tiny("tiny-omni", modalities={"image": 1, "audio": None, "video": 1})
    assert ChatType.MULTI_IMAGE not in derived.profile.chat_types
    assert ChatType.MULTI_AUDIO in derived.profile.chat_types
    assert derived.profile.serve.limit_mm_per_prompt == {"image": 1, "audio": 2, "video": 1}
    assert any("multi-image" in note for note in derived.notes)


def test_a_long_video_gets_fewer_frames_and_an_unused_modality_a_zero_limit() -> None:
    frames = {32: 19_000, 16: 9_600, 8: 4_800, 4: 2_400}
    derived = tiny("tiny-qwen2vl", video_tokens=frames, max_model_len=32768)
    assert derived.profile.serve.media_io_kwargs == {"video": {"num_frames": 16}}
    assert derived.profile.serve.max_model_len == 10240
    too_long = tiny("tiny-qwen2vl", video_tokens={32: 90_000}, max_model_len=32768)
    assert ChatType.VIDEO not in too_long.profile.chat_types
    assert too_long.profile.serve.limit_mm_per_prompt == {"image": 2, "video": 0}


REFUSALS = [
    (
        {"error": "not supported", "error_kind": "unsupported-architecture", "supported": False,
         "architectures": ("NoSuchModelForCausalLM",)},
        {},
        "vLLM 0.32.0 does not support the architecture NoSuchModelForCausalLM",
    ),
    (
        {"needs_remote_code": True, "remote_code": ("config.json: AutoConfig",)},
        {"trust_remote_code": False},
        "needs to run its own code (config.json: AutoConfig); pass --trust-remote-code",
    ),
    ({"chat_template": False}, {}, "has no chat template"),
    ({"error": "OSError: bad", "error_kind": "config"}, {}, "cannot read the model (config): OSError: bad"),
    ({"error": "gated", "error_kind": "gated"}, {}, "is a gated model"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "options", "message"), REFUSALS)
def test_a_model_that_cannot_run_is_refused_in_one_line(
    changes: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PreflightError) as caught:
        derive(facts("tiny-llava", **changes), TINY, [], DeriveOptions(random_weights=True, **options))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_llava_agrees_with_the_shipped_profile_on_h100_and_l4() -> None:
    """Memory within 5% (H100) and 10% (L4) of llava-1.5-7b.yaml's, one GPU each; images x2 added."""
    shipped = load_profile("llava-1.5-7b")
    for gpu_class in ("H100", "L4"):
        derived = derive(facts("llava-1.5-7b-hf"), LLAVA, gpus_of_class(gpu_class), DeriveOptions())
        mine, theirs = derived.profile.resolve(gpu_class), shipped.resolve(gpu_class)
        assert mine.requires.gpu_count == theirs.requires.gpu_count == 1
        assert mine.serve.tensor_parallel_size is None
        assert theirs.requires.gpu_memory_gib is not None
        assert mine.requires.gpu_memory_gib == pytest.approx(theirs.requires.gpu_memory_gib, rel=0.1)
        # vLLM allows any number of images; the shipped profile keeps llava-1.5 to one by choice
        assert set(shipped.chat_types) < set(derived.profile.chat_types)
        assert list(derived.profile.variants) == [gpu_class]  # 14 GB: no cpu variant beside a GPU
    words = {d.chat_type: d.expect for d in derived.profile.demos}
    assert words[ChatType.TEXT] == ("Paris",)
    assert words[ChatType.MULTI_IMAGE] == ("duck|mallard|bird", "lion")


def test_too_big_for_the_gpu_found_says_what_would_fit() -> None:
    with pytest.raises(PreflightError) as caught:
        derive(facts("llava-1.5-7b-hf"), LLAVA, gpus_of_class("T4"), DeriveOptions())
    message = str(caught.value)
    assert "needs ~18.2 GiB on one GPU" in message
    assert "the T4 found has 15.0 GiB" in message
    assert "it would fit 2 x T4 (tensor parallel) or one L4 (24 GB) or larger" in message


def test_two_small_gpus_share_the_model_by_tensor_parallelism() -> None:
    derived = derive(facts("llava-1.5-7b-hf"), LLAVA, gpus_of_class("T4", 2), DeriveOptions())
    t4 = derived.profile.resolve("T4")
    assert (t4.serve.tensor_parallel_size, t4.requires.gpu_count) == (2, 2)
    assert t4.serve.dtype is None  # a float16 checkpoint runs as is on a T4
    bf16 = derive(
        facts("llava-1.5-7b-hf", config_dtype="bfloat16"), LLAVA, gpus_of_class("T4", 2), DeriveOptions()
    )
    assert bf16.profile.resolve("T4").serve.dtype == "half"  # no bfloat16 before compute capability 8.0


@pytest.mark.parametrize(
    ("gpus", "tp"),
    [(gpus_of_class("H100", 4), 2), (gpus_of_class("L4", 8), 8), (gpus_of_class("A100-80GB", 8), 2)],
)
def test_the_gpu_count_is_the_smallest_divisor_of_the_heads_that_fits(gpus: list[Gpu], tp: int) -> None:
    big = facts("llava-1.5-7b-hf", num_attention_heads=64, num_key_value_heads=8, num_hidden_layers=80,
                hidden_size=8192, head_dim=128)  # fmt: skip
    weights = Weights(140 * 10**9, ("w",), "70 B parameters in 16 bits")
    derived = derive(big, weights, gpus, DeriveOptions())
    variant = derived.profile.resolve(gpus[0].variant or "")
    assert variant.serve.tensor_parallel_size == tp
    assert variant.requires.gpu_count == tp
    assert 64 % tp == 0


def test_the_cpu_variant_refuses_a_model_bigger_than_the_machine() -> None:
    with pytest.raises(PreflightError, match="on the CPU it needs ~"):
        derive(facts("llava-1.5-7b-hf"), LLAVA, [], DeriveOptions(host_memory_bytes=16 * GIB))
    derived = derive(facts("llava-1.5-7b-hf"), LLAVA, [], DeriveOptions(host_memory_bytes=128 * GIB))
    cpu = derived.profile.resolve("cpu")
    assert cpu.serve.kv_cache_memory_bytes == "4G"  # 2 x 2048 tokens x 1 MiB (32 layers, float32)
    assert cpu.ready_timeout_s == 1800


def test_a_gated_model_needs_the_token_and_a_revision_is_passed_on() -> None:
    options = DeriveOptions(gated=True, revision="refs-pr-1")
    derived = derive(facts("llava-1.5-7b-hf"), LLAVA, gpus_of_class("H100"), options)
    assert derived.profile.requires.hf_token is True
    assert derived.profile.env == {"HF_TOKEN": "${HF_TOKEN}"}
    assert derived.profile.serve.extra_args == ("--revision", "refs-pr-1")


def test_every_derived_value_says_where_it_came_from() -> None:
    derived = derive(facts("llava-1.5-7b-hf"), LLAVA, gpus_of_class("L4"), DeriveOptions(gated=True))
    for key in ("model", "serve.max_model_len", "serve.limit_mm_per_prompt", "requires.vllm_version",
                "requires.hf_token", "env.HF_TOKEN", "variants.L4", "demos", "demos.0.expect"):  # fmt: skip
        assert derived.provenance[key], key
    assert "fits 1 x L4 (22.5 GiB)" in derived.provenance["variants.L4"]
    record = derived.to_record()
    assert record["values"] == dict(derived.provenance)
    assert derived.line.startswith("no profile for llava-hf/llava-1.5-7b-hf: derived one from vLLM 0.32.0")


def test_the_expected_words_are_those_of_the_shipped_profiles() -> None:
    """One copy in derive.EXPECTED_WORDS: every shipped GPU profile's expectations agree with it."""
    seen = set()
    for name in (
        "llava-1.5-7b",
        "phi-3.5-vision",
        "ultravox-0.5-1b",
        "llava-onevision-0.5b",
        "qwen2.5-omni-3b",
    ):
        for demo in load_profile(name).demos:
            if demo.expect:
                assert demo.expect == EXPECTED_WORDS[demo.chat_type], (name, demo.chat_type)
                seen.add(demo.chat_type)
    assert seen == set(EXPECTED_WORDS)


def test_every_gpu_class_has_a_stand_in_of_its_own_class() -> None:
    for gpu_class in GPU_CLASSES:
        assert [g.variant for g in gpus_of_class(gpu_class, 2)] == [gpu_class, gpu_class]


# -- tasks past chat (orchestrator/core/tasks.py): read from vLLM's model class by the probe -------------


@pytest.mark.parametrize(
    ("model", "profile"), [("tiny-whisper", "cpu-tiny-whisper"), ("tiny-clip", "cpu-tiny-clip")]
)
def test_a_tiny_task_model_derives_the_tasks_runner_and_context_of_its_shipped_profile(
    model: str, profile: str
) -> None:
    shipped = load_profile(profile)
    derived = tiny(model).profile
    assert derived.chat_types == shipped.chat_types == ()
    assert derived.tasks == shipped.tasks
    assert derived.serve.runner == shipped.serve.runner
    assert derived.serve.max_model_len == shipped.serve.max_model_len


def test_a_speech_model_derives_transcription_and_translation_and_no_chat_type() -> None:
    whisper = facts(
        "tiny-ultravox", architectures=("WhisperForConditionalGeneration",), model_type="whisper",
        tasks=("transcription", "translation"), runner="generate", convert="none", chat_template=False,
        max_model_len=448, needs_remote_code=False, remote_code=(),
    )  # fmt: skip
    derived = derive(whisper, TINY, [], DeriveOptions(name="w", random_weights=True)).profile
    assert derived.chat_types == ()
    assert [t.task.value for t in derived.tasks] == ["transcription", "translation"]
    assert derived.serve.max_model_len == 448
    assert derived.serve.runner is None


def test_an_embedding_model_derives_the_pooling_tasks_and_the_pooling_runner() -> None:
    clip = facts(
        "tiny-llava", architectures=("CLIPModel",), model_type="clip", tasks=("embedding", "score", "rerank"),
        runner="pooling", convert="none", chat_template=False, max_model_len=77,
    )  # fmt: skip
    derivation = derive(clip, TINY, [], DeriveOptions(name="c", random_weights=True))
    derived = derivation.profile
    assert derived.chat_types == ()
    assert [t.task.value for t in derived.tasks] == ["embedding", "score", "rerank"]
    assert derived.serve.runner == "pooling"
    assert "pooling model" in derivation.provenance["serve.runner"]


def test_a_converted_classifier_gets_convert_and_its_labels() -> None:
    model = facts(
        "tiny-qwen2vl", tasks=("classify",), runner="pooling", convert="classify", labels=("cat", "dog"),
    )  # fmt: skip
    derived = derive(model, TINY, [], DeriveOptions(name="q", random_weights=True)).profile
    assert derived.serve.extra_args == ("--convert", "classify")
    [task] = derived.tasks
    assert (task.task.value, task.expect) == ("classify", ("cat|dog",))


def test_a_chat_model_derives_no_task_and_responses_is_not_run_by_default() -> None:
    derived = tiny("tiny-llava", tasks=("chat", "responses"), runner="generate").profile
    assert derived.chat_types == tiny("tiny-llava").profile.chat_types
    assert derived.tasks == ()
