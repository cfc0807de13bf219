"""Profiles: every shipped one validates; every bad fixture gives its own one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import ProfileError
from orchestrator.profile.schema import (
    ChatType,
    find_profile,
    iter_profile_files,
    parse_profile_file,
    parse_profile_text,
)

HERE = Path(__file__).parent
REPO = HERE.parent
SHIPPED = sorted((REPO / "profiles").glob("*.yaml"))

# (fixture, the message it must produce); each message names the file, the line, the key and the value.
BAD = [
    ("bad-misspelled-key", ":3: unknown key 'serve.max_model_length' (did you mean 'max_model_len'?)"),
    ("bad-top-level-typo", ":2: unknown key 'demo' (did you mean 'demos'?)"),
    ("bad-variant-misspelled-key", ":4: unknown key 'variants.H100.serv' (did you mean 'serve'?)"),
    ("bad-demo-misspelled-key", ":4: unknown key 'demos.0.expected' (did you mean 'expect'?)"),
    ("bad-missing-model", ": missing required key 'model'"),
    (
        "bad-unknown-chat-type",
        ":2: demos.1: 'single-imge' is neither a chat type (text-only, single-image, "
        "multi-image, video, audio, multi-audio) nor a task (transcription, translation, realtime, embedding, "
        "score, rerank, classify, responses, uuid, image-embeds) (did you mean 'single-image'?)",
    ),
    (
        "bad-task-and-chat-type",
        ":4: demos.0: names both chat_type 'audio' and task 'transcription': one of the two per demo",
    ),
    ("bad-task-name", ":3: demos.1.task: 'embed': Input should be 'transcription'"),
    (
        "bad-task-media",
        ":3: demos.0: media: only transcription, translation, realtime, image-embeds "
        "take the profile's own media (one file); embedding sends the known-answer images",
    ),
    ("bad-tasks-key", ":4: tasks: unknown key: tasks are named under demos (e.g. `demos: [transcription]`)"),
    (
        "bad-limit-forbids-demo",
        ":4: demos.0: 'multi-image' sends 2 image(s) per prompt but serve.limit_mm_per_prompt allows 1",
    ),
    (
        "bad-variant-limit-forbids-demo",
        ":8: demos.0: 'multi-audio' sends 2 audio(s) per prompt but "
        "variants.L4.serve.limit_mm_per_prompt allows 1",
    ),
    ("bad-bad-limit-key", ":3: serve.limit_mm_per_prompt.images = 'images' is not allowed"),
    (
        "bad-named-flag-in-extra-args",
        ":3: serve.extra_args: --max-model-len repeats the named setting serve.max_model_len",
    ),
    ("bad-owned-flag-in-extra-args", ":3: serve.extra_args: --port is set by mmdemo"),
    (
        "bad-underscore-flag-in-extra-args",
        ":3: serve.extra_args: --max_model_len repeats the named setting serve.max_model_len",
    ),
    (
        "bad-equals-flag-in-extra-args",
        ":3: serve.extra_args: --max-model-len repeats the named setting serve.max_model_len",
    ),
    (
        "bad-dotted-flag-in-extra-args",
        ":3: serve.extra_args: --limit-mm-per-prompt.image repeats the named setting serve.limit_mm_per_prompt",
    ),
    (
        "bad-abbreviated-flag-in-extra-args",
        ":3: serve.extra_args: --max-model (vLLM reads it as --max-model-len) repeats the named setting",
    ),
    (
        "bad-short-flag-in-extra-args",
        ":3: serve.extra_args: -tp repeats the named setting serve.tensor_parallel_size",
    ),
    (
        "bad-negated-flag-in-extra-args",
        ":3: serve.extra_args: --no-enforce_eager repeats the named setting serve.enforce_eager",
    ),
    (
        "bad-underscore-owned-flag-in-extra-args",
        ":3: serve.extra_args: --allowed_local_media_path is set by mmdemo",
    ),
    ("bad-repeated-key", ":4: key 'model' appears twice in one mapping (lines 1 and 4)"),
    (
        "bad-repeated-nested-key",
        ":5: key 'serve.max_model_len' appears twice in one mapping (lines 3 and 5)",
    ),
    ("bad-yaml-alias", ":3: YAML anchor &args is not allowed in a profile"),
    ("bad-expect-empty-alternative", ":5: demos.0.expect: 'duck||bird' has an empty alternative"),
    ("bad-removed-flag", ":3: serve.extra_args: `--task` was replaced by `--runner`"),
    ("bad-unknown-variant", ":2: variants: unknown variant 'H10' (did you mean 'H100'?)"),
    (
        "bad-variant-repeated-in-another-case",
        ":2: variants: variant 'h100' repeats 'H100' (GPU class names ignore case)",
    ),
    ("bad-wrong-type", ":3: serve.max_model_len = 'lots': Input should be a valid integer"),
    ("bad-unparsable", ":3: not valid YAML: expected ',' or ']'"),
    ("bad-not-a-mapping", ": a profile must be a mapping of keys, got list"),
    ("bad-bad-dtype", ":3: serve.dtype = 'bf16' is not allowed"),
    ("bad-bad-env-name", ":2: env: 'HF-TOKEN' is not a valid environment variable name"),
    ("bad-bad-version", ":3: requires.vllm_version: 'latest' is not a version like 0.10 or 0.10.2"),
    ("bad-empty-demos", ":2: demos: the list is empty"),
    ("bad-no-variants", ": variants: none: name at least one target it runs on"),
    (
        "bad-gpu-utilization-out-of-range",
        ":3: serve.gpu_memory_utilization = 1.5: Input should be less than or equal to 1",
    ),
]


@pytest.mark.parametrize(("fixture", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_profile_message(fixture: str, expected: str) -> None:
    path = HERE / "profiles" / f"{fixture}.yaml"
    with pytest.raises(ProfileError) as info:
        parse_profile_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}{expected}")
    assert "\n" not in message


def test_oversized_profile_is_refused_before_parsing(tmp_path: Path) -> None:
    # Generated, not a fixture: a 1 MB file in the repository would cost more than it shows.
    path = tmp_path / "huge.yaml"
    path.write_text("model: org/model\ndemos: [text-only\n" + "# padding\n" * 100_001)
    with pytest.raises(ProfileError) as info:
        parse_profile_file(path)  # unparsable too: the size must be what refuses it
    assert str(info.value) == f"{path}: 1.0 MB is not a profile: a profile may be at most 1 MB"
    with pytest.raises(ProfileError, match="at most 1 MB"):
        parse_profile_text(path.read_text(), "huge", default_name="huge")


def test_alias_is_refused_on_its_own_line() -> None:
    text = "model: org/model\nserve: {max_model_len: 2048}\nvariants:\n  cpu: {serve: *base}\ndemos: [text-only]\n"
    with pytest.raises(ProfileError, match=r"^x\.yaml:4: YAML alias \*base is not allowed in a profile"):
        parse_profile_text(text, "x.yaml", default_name="x")


def test_nested_aliases_do_not_expand() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    text = "\n".join(lines) + "\nmodel: org/model\ndemos: [text-only]\n"
    with pytest.raises(ProfileError, match=r"^bomb:1: YAML anchor &a0 is not allowed"):
        parse_profile_text(text, "bomb", default_name="bomb")


@pytest.mark.parametrize(
    "args",
    [
        ["--seed", "0"],
        ["--max-num-seqs=5"],
        ["--limit-mm-per-prompt-x", "1"],  # not a prefix of a named flag: vLLM judges it
        ["--compilation-config.level", "0"],
        ["-O", "0"],
        ["--seed", "-1"],
    ],
)
def test_extra_args_that_name_no_owned_setting_pass(args: list[str]) -> None:
    text = f"model: org/model\nserve: {{extra_args: {args!r}}}\nvariants: {{cpu: {{}}}}\ndemos: [text-only]\n"
    profile = parse_profile_text(text, "ok.yaml", default_name="ok")
    assert profile.serve.extra_args == tuple(args)


def test_every_bad_fixture_is_tested() -> None:
    fixtures = {p.stem for p in (HERE / "profiles").glob("bad-*.yaml")}
    assert fixtures == {b[0] for b in BAD}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_profiles_validate(path: Path) -> None:
    profile = parse_profile_file(path)
    assert profile.name == path.stem
    assert profile.demos or profile.tasks
    for name in profile.variants:
        resolved = profile.resolve(name)
        assert resolved.variant == name


def test_shipped_gpu_profiles_cover_big_and_24gb_cards() -> None:
    for path in SHIPPED:
        profile = parse_profile_file(path)
        if "cpu" in profile.variants:
            continue
        assert {"H100", "A100-80GB"} <= set(profile.variants), path
        small = [profile.variants.get(n) for n in ("L4", "A10G")]
        assert any(v is not None for v in small), f"{path}: no 24 GB card variant nor a reason"


def test_shipped_gpu_profiles_expect_words_a_real_model_would_say() -> None:
    # Tiny random models answer gibberish and declare none; the trained tiny models (omni, llava,
    # phi3v, ultravox, qwen2vl) declare the text's truth (their media's come from the media themselves); a real
    # model is judged by its words.
    must = {ChatType.TEXT: "Paris", ChatType.SINGLE_IMAGE: "boardwalk", ChatType.MULTI_IMAGE: "mallard"}
    trained = {"tiny-omni", "tiny-llava", "tiny-phi3v", "tiny-ultravox", "tiny-qwen2vl"}
    for path in SHIPPED:
        profile = parse_profile_file(path)
        if profile.local_model:
            declared = {d.chat_type: d.expect for d in profile.demos if d.expect}
            assert declared == ({ChatType.TEXT: ("paris",)} if profile.local_model in trained else {}), path
            continue
        for demo in profile.demos:
            if demo.chat_type in must:
                assert any(must[demo.chat_type] in group.split("|") for group in demo.expect), (path, demo)


def test_shipped_profiles_cover_all_six_chat_types() -> None:
    omni = parse_profile_file(REPO / "profiles" / "qwen2.5-omni-3b.yaml")
    tiny = parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml")
    assert set(omni.chat_types) == set(ChatType)
    assert set(tiny.chat_types) == set(ChatType)


def test_variant_overrides_merge_field_by_field() -> None:
    profile = parse_profile_file(REPO / "profiles" / "llava-1.5-7b.yaml")
    l4 = profile.resolve("L4")
    assert l4.serve.max_model_len == 4096  # inherited: vLLM's example runs it on one L4
    assert l4.serve.gpu_memory_utilization == 0.92
    assert l4.serve.limit_mm_per_prompt == {"image": 1}  # inherited from the base
    assert l4.requires.gpu_memory_gib == 22
    assert l4.requires.gpu_count == 1  # inherited
    assert profile.resolve("H100").serve.max_model_len == 4096


def test_unknown_variant_on_resolve_lists_the_ones_there_are() -> None:
    profile = parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml")
    with pytest.raises(ProfileError) as info:
        profile.resolve("H100")
    assert "has no variant 'H100'" in str(info.value)
    assert info.value.hint == "its variants: cpu"


def test_profile_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "llava-1.5-7b.yaml").write_text("model: my/llava\ndemos: [text-only]\n")
    monkeypatch.setenv("MMDEMO_PROFILES", str(mine))
    assert find_profile("llava-1.5-7b") == (mine / "llava-1.5-7b.yaml").resolve()
    # a --profiles-dir comes before MMDEMO_PROFILES
    other = tmp_path / "other"
    other.mkdir()
    (other / "llava-1.5-7b.yaml").write_text("model: other/llava\ndemos: [text-only]\n")
    assert find_profile("llava-1.5-7b", str(other)) == (other / "llava-1.5-7b.yaml").resolve()
    names = [p.stem for p in iter_profile_files(str(other))]
    assert names.count("llava-1.5-7b") == 1
    assert "cpu-tiny-omni" in names


def test_unknown_profile_name_suggests(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as info:
        find_profile("phi-3.5-visoin")
    assert "did you mean 'phi-3.5-vision'?" in str(info.value)
    with pytest.raises(ProfileError, match="no such profile file"):
        find_profile(str(tmp_path / "nope.yaml"))
