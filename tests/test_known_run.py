"""Known-answer media in a run: offline, the demos ask about generated media and are graded
against their truth (distractors count, the answer is shown beside what is missing); a stand-in
with no truth is 'answered' with its reason; the real asset's words never grade a substitute."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.chattypes import ChatType
from orchestrator.demos.chat import Media, MediaChoice, build_requests
from orchestrator.media import Asset, AssetStore
from orchestrator.profile.schema import Demo
from tests.conftest import FAKE, FAKE_PROFILE, mmdemo

ALL = [Demo(chat_type=t) for t in ChatType]
MEDIA_TYPES = ("single-image", "multi-image", "video", "audio", "multi-audio")


def url(asset: Asset) -> str:
    return f"http://media.test/{asset.key}"


def run_fake(
    tmp_path: Path, env: dict[str, str], *extra: str, answer: str | None = None
) -> tuple[int, str, dict[str, Any], Path]:
    # a cache of its own: offline, an example's image another test left in the session's cache would be
    # sent as it is and graded "answered" (as for a user who has it), not the known-answer media
    env = {**env, "MMDEMO_CACHE_DIR": str(tmp_path / "cache")}
    if answer is not None:
        env = {**env, "FAKE_VLLM_ANSWER": answer}
    done = mmdemo(
        "run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--grace", "2", "--no-budget", "--no-worst-case", *extra, env=env,
    )  # fmt: skip
    run_dir = sorted((tmp_path / "runs").glob("*"))[-1]
    report = json.loads((run_dir / "report.json").read_text())
    return done.returncode, done.stdout + done.stderr, report, run_dir


def test_offline_a_truthful_model_is_understood_on_known_media(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    # a cache of its own: an example's image another test left in the session's cache would be sent
    # as it is, offline, and graded "answered" (as for a user who has it)
    code, out, report, run_dir = run_fake(
        tmp_path, {**mmdemo_env, "MMDEMO_CACHE_DIR": str(tmp_path / "cache")}
    )
    assert code == 0, out
    assert {d["verdict"] for d in report["demos"]} == {"understood"}
    assert all(d["expect_source"] == "known" for d in report["demos"])
    media = {a["key"]: a for d in report["demos"] for a in d["assets"]}
    assert media
    assert all(a["provenance"] == "known" and a["fact"] and a["truth"] for a in media.values())
    assert all(a["reason"] == "offline mode" for a in media.values())
    # One quiet line for the assets, no warning per asset; the reasons stay in the report.
    assert f"assets   {len(media)} media: {len(media)} known (offline)" in out
    assert "WARNING" not in out
    markdown = (run_dir / "report.md").read_text()
    for asset in media.values():
        assert asset["truth"] in markdown
    html = (run_dir / "report.html").read_text()
    assert "truth: <strong>" in html


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ("Red and blue and green and yellow and orange and purple and pink and brown.", True),
        ("The capital is Berlin, and the shape is teal.", None),
    ],
)
def test_distractors_and_missing_words_fail_with_the_answer_shown(
    tmp_path: Path, mmdemo_env: dict[str, str], answer: str, named: bool | None
) -> None:
    code, out, report, run_dir = run_fake(
        tmp_path, mmdemo_env, "--only", "text-only,single-image", answer=answer
    )
    assert code == 1, out
    demos = report["demos"]
    assert {d["verdict"] for d in demos} == {"failed"}
    image = next(d for d in demos if d["chat_type"] == "single-image")
    if named:  # naming the right colour among all the others fails
        assert not image["missing"]
        assert len(image["distractors"]) == 7
    else:
        assert image["missing"]
        assert not image["distractors"]
    text = next(d for d in demos if d["chat_type"] == "text-only")
    assert text["missing"] == [["paris"]]
    assert text["distractors"] == ([] if named else [["berlin"]])
    # The answer beside the missing words: terminal, report.md, junit.xml's message, report.html.
    assert answer[:30] in " ".join(out.split())
    assert answer[:30] in (run_dir / "report.md").read_text()
    suite = ET.parse(run_dir / "junit.xml").getroot()
    messages = [f.get("message", "") for f in suite.iter("failure")]
    assert messages
    assert all(answer[:30] in m and ("missing" in m or "names" in m) for m in messages)
    html = (run_dir / "report.html").read_text()
    assert answer[:30] in html


def test_a_stand_in_with_no_truth_is_answered_with_its_reason(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    code, out, report, _ = run_fake(tmp_path, mmdemo_env, "--only", "single-image", "--media", "upstream")
    assert code == 0, out
    (image, *_) = report["demos"]
    assert image["verdict"] == "answered"
    assert image["expected"] == []
    assert image["expect_source"] is None
    assert "synthetic stand-in with no truth" in image["verdict_reason"]
    assert "offline mode" in image["verdict_reason"]
    assert all(a["provenance"] == "synthetic" and a["fact"] is None for a in image["assets"])


def test_escaped_answers_never_drive_the_terminal(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    code, out, _, run_dir = run_fake(tmp_path, mmdemo_env, "--only", "text-only", answer="Berlin \x1b[31mred")
    assert code == 1
    assert "\x1b[31m" not in out
    assert "\x1b" not in (run_dir / "report.md").read_text()


# -- the plan of each demo (no server) ----------------------------------------------------------------


@pytest.fixture
def offline(tmp_path: Path) -> AssetStore:
    return AssetStore(tmp_path / "assets", offline=True)


def expected(store: AssetStore, seed: int) -> dict[str, tuple[str, ...]]:
    requests = build_requests(ALL, Media(store, url, seed=seed))
    return {r.chat_type: r.expect for r in requests}


def test_asset_seeds_one_and_two_expect_different_words(offline: AssetStore) -> None:
    one, two = expected(offline, 1), expected(offline, 2)
    for chat_type in MEDIA_TYPES:
        assert one[chat_type] != two[chat_type], chat_type
    assert one["text-only"] == two["text-only"] == ("paris",)


def test_the_real_assets_words_never_grade_a_substitute(offline: AssetStore) -> None:
    boardwalk = Demo(chat_type=ChatType.SINGLE_IMAGE, expect=("boardwalk|wood",))
    animals = Demo(chat_type=ChatType.MULTI_IMAGE, expect=("duck", "lion"))
    choices: tuple[MediaChoice, ...] = ("auto", "known", "upstream")
    for choice in choices:
        media = Media(offline, url, choice=choice)
        for demo in (boardwalk, animals):
            planned = media.plan(demo)
            assert not set(planned.expect) & set(demo.expect), (choice, planned)
            if choice == "upstream":  # synthetic stand-ins: nothing to check, and why
                assert planned.expect == ()
                assert planned.unchecked
            else:
                assert planned.expect_source == "known"
                assert planned.reject


def test_profile_media_are_checked_only_against_the_profiles_words(
    offline: AssetStore, tmp_path: Path
) -> None:
    from orchestrator.media import known

    image = tmp_path / "mine.jpg"
    image.write_bytes(known.image_jpeg("blue"))
    plain = Media(offline, url).plan(Demo(chat_type=ChatType.SINGLE_IMAGE, media=(str(image),)))
    assert plain.expect == ()
    assert plain.unchecked
    assert "own media" in plain.unchecked
    worded = Media(offline, url).plan(
        Demo(chat_type=ChatType.SINGLE_IMAGE, media=(str(image),), expect=("blue",))
    )
    assert worded.expect == ("blue",)
    assert worded.expect_source == "profile"


def test_random_weights_send_known_media_but_check_nothing(offline: AssetStore) -> None:
    planned = Media(offline, url, unchecked="random weights").plan(Demo(chat_type=ChatType.VIDEO))
    assert planned.assets[0].provenance == "known"
    assert planned.expect == ()
    assert planned.reject == ()
    assert planned.unchecked == "random weights"


def test_known_media_that_cannot_be_made_fall_back_to_a_stand_in(
    offline: AssetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.media import known

    def broken(self: known.Medium) -> bytes:
        raise RuntimeError("no encoder\nhere")

    monkeypatch.setattr(known.Medium, "render", broken)
    planned = Media(offline, url).plan(Demo(chat_type=ChatType.VIDEO, expect=("people",)))
    assert planned.expect == ()
    assert planned.assets[0].provenance == "synthetic"
    assert planned.unchecked is not None
    assert "no encoder here" in planned.unchecked


def test_known_demos_ask_for_a_short_answer(offline: AssetStore) -> None:
    from orchestrator.media import known

    for request in build_requests(ALL, Media(offline, url, choice="known")):
        assert request.max_completion_tokens == known.KNOWN_MAX_TOKENS
        assert request.prompt == known.PROMPTS[request.chat_type] or request.chat_type in known.TONE_PROMPTS


def test_the_default_seed_is_one_value() -> None:
    from orchestrator.core.options import DEFAULT_ASSET_SEED, DEFAULTS
    from orchestrator.media import known

    assert DEFAULT_ASSET_SEED == known.DEFAULT_SEED == DEFAULTS.asset_seed
