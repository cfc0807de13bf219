"""report.html and matrix.html read back with an HTML5 parser: the right elements, nothing from outside."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path
from xml.etree.ElementTree import Element

import html5lib
import pytest
from PIL import Image

from orchestrator.record.report import AssetRecord, RunRecord, load
from orchestrator.render import inline as inline_module
from orchestrator.render import write_all
from orchestrator.render.html import MatrixCell, highlight, shown, to_diff_html, to_html, to_matrix_html
from orchestrator.render.inline import Inlined, inline
from tests.records import failed_run, passed_run

# What each chat type sends, as the page must show it: (images, videos, audios).
MEDIA_PER_CHAT_TYPE = {
    "text-only": (0, 0, 0),
    "single-image": (1, 0, 0),
    "multi-image": (2, 0, 0),
    "video": (0, 1, 0),
    "audio": (0, 0, 1),
    "multi-audio": (0, 0, 2),
}


def parse(text: str) -> Element:
    return html5lib.parse(text, namespaceHTMLElements=True)


def find(root: Element, tag: str, cls: str | None = None) -> list[Element]:
    """Elements by local name (HTML or SVG namespace) and, if given, class."""
    found = (e for e in root.iter() if isinstance(e.tag, str) and e.tag.rpartition("}")[2] == tag)
    return [e for e in found if cls is None or cls in (e.get("class") or "").split()]


def text_of(element: Element) -> str:
    return "".join(element.itertext())


def decode_data_uri(uri: str) -> bytes:
    head, _, data = uri.partition(",")
    assert head.startswith("data:"), head[:40]
    assert head.endswith(";base64"), head[:40]
    return base64.b64decode(data)


@pytest.fixture(scope="module")
def record(cache_root: Path) -> RunRecord:
    return passed_run(cache_root)


@pytest.fixture(scope="module")
def passed_page(record: RunRecord) -> Element:
    return parse(to_html(record))


@pytest.mark.parametrize("chat_type", list(MEDIA_PER_CHAT_TYPE))
def test_each_chat_type_shows_the_media_it_sent(passed_page: Element, chat_type: str) -> None:
    cards = [a for a in find(passed_page, "article", "demo") if a.get("data-chat-type") == chat_type]
    assert cards, f"no demo card for {chat_type}"
    images, videos, audios = MEDIA_PER_CHAT_TYPE[chat_type]
    for card in cards:
        assert len(find(card, "img")) == images
        assert len(find(card, "video")) == videos
        assert len(find(card, "audio")) == audios
        assert len(find(card, "figure")) == images + videos + audios
        for element in [*find(card, "img"), *find(card, "video"), *find(card, "audio")]:
            assert element.get("src", "").startswith("data:"), element.get("src", "")[:60]
        for video in find(card, "video"):
            poster = Image.open(io.BytesIO(decode_data_uri(video.get("poster", ""))))
            assert poster.width > 0
            assert decode_data_uri(video.get("src", ""))[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
        for img in find(card, "img"):
            assert Image.open(io.BytesIO(decode_data_uri(img.get("src", "")))).format == "JPEG"
        for audio in find(card, "audio"):
            assert decode_data_uri(audio.get("src", ""))[:4] == b"RIFF"  # the synthetic WAV as sent


def test_page_lists_every_demo_with_its_figures(passed_page: Element, record: RunRecord) -> None:
    cards = find(passed_page, "article", "demo")
    assert [text_of(find(c, "h3")[0]) for c in cards] == [d.name for d in record.demos]
    first = text_of(cards[0])
    for figure in ("300 ms", "200 ms", "40 in / 16 out", "42.0 tok/s"):
        assert figure in first
    captions = " ".join(text_of(f) for f in find(passed_page, "figcaption"))
    assert "synthetic (offline mode)" in captions


def test_nothing_in_the_page_points_outside_it(passed_page: Element) -> None:
    for element in passed_page.iter():
        for attribute in ("src", "href", "poster"):
            value = element.get(attribute)
            assert value is None or value.startswith("data:"), (element.tag, attribute, value[:60])
    assert not find(passed_page, "script")
    assert not find(passed_page, "iframe")
    header = text_of(find(passed_page, "header")[0])
    for fact in ("cpu-tiny-omni", "mmdemo:tiny-omni", "0.32.0+cpu", "21.30 s", "11/11 passed", "quick-start"):
        assert fact in header


def test_expected_words_are_marked_and_control_bytes_shown(passed_page: Element) -> None:
    answers = find(passed_page, "pre", "answer")
    assert [text_of(m) for m in find(answers[0], "mark")] == ["Paris"]
    assert [text_of(s) for s in find(answers[1], "span", "ctl")] == ["\\x07", "\\x1b"]
    assert "<b>bold</b>" in text_of(answers[1])  # the model's markup is text, not an element
    assert not find(answers[1], "b")


def test_missing_words_are_named() -> None:
    assert str(highlight("a Duck and a duck", ["duck"])) == "a <mark>Duck</mark> and a <mark>duck</mark>"
    assert str(shown("<x>\x00\x01")) == '&lt;x&gt;<span class="ctl">\\x00\\x01</span>'


def test_missing_and_corrupt_media_say_why(record: RunRecord, tmp_path: Path) -> None:
    gone = AssetRecord(key="duck", kind="image", provenance="cached", path=str(tmp_path / "gone.jpg"))
    broken = AssetRecord(key="video", kind="video", path=str(Path(__file__).parent / "media" / "corrupt.jpg"))
    demos = [record.demos[4].model_copy(update={"assets": [gone, broken]})]
    page = parse(to_html(record.model_copy(update={"demos": demos})))
    notes = [text_of(e) for e in find(page, "div", "na")]
    assert notes == [
        "image not available: the file is gone",
        "video not available: cannot decode it (InvalidDataError)",
    ]
    assert not find(page, "img")
    assert not find(page, "video")


def test_failed_start_shows_diagnosis_command_and_highlighted_log() -> None:
    record = failed_run()
    assert record.error is not None
    page = parse(to_html(record))
    failure = find(page, "section")[0]
    assert failure.get("id") == "failure"
    assert "CUDA out of memory" in text_of(failure)
    assert "pick a variant for a bigger card" in text_of(failure)
    hot = [text_of(e) for e in find(failure, "span", "hot")]
    assert hot == [record.error.log_tail[i] for i in (2, 4, 5)]  # traceback, the OOM, the ERROR
    assert text_of(find(page, "pre", "log")[0]).count("\n") >= 2
    command = next(s for s in find(page, "section") if s.get("id") == "command")
    assert "vllm serve microsoft/Phi-3.5-vision-instruct" in text_of(command)
    assert not find(page, "article")


def test_charts_have_one_bar_per_phase_event_and_demo(passed_page: Element, record: RunRecord) -> None:
    charts = find(passed_page, "svg")
    assert [text_of(find(c, "title")[0]) for c in charts] == [
        "vLLM startup, from launch",
        "the run: each moment, since the command started",
        "demo requests: latency (TTFT darker)",
    ]
    startup, timeline, demos = (find(c, "g") for c in charts)
    assert [text_of(find(g, "text")[0]) for g in startup] == [s.phase for s in record.startup]
    assert len(timeline) == len(record.timeline)
    assert len(demos) == len(record.demos)
    assert all(len(find(g, "rect")) == 2 for g in demos)  # latency with TTFT inside
    widths = [float(find(g, "rect")[0].get("width", "0")) for g in startup]
    spans = [s.end_s - s.start_s for s in record.startup]
    assert widths.index(max(widths)) == spans.index(max(spans))  # the longest phase is the longest bar


def test_write_all_writes_report_html(tmp_path: Path) -> None:
    files = write_all(tmp_path / "run", failed_run())
    assert tmp_path / "run" / "report.html" in files
    assert "CUDA out of memory" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")


def test_inline_kinds_without_file_or_kind() -> None:
    assert inline("image", None).unavailable == "not available: the record names no file"
    assert inline(None, "x.jpg").unavailable == "not available: unknown kind None"


def test_a_preview_is_made_once_then_read_from_the_cache_until_the_file_changes(
    record: RunRecord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    video = next(a for d in record.demos for a in d.assets if a.kind == "video")
    assert video.path
    clip = tmp_path / "clip.mp4"
    shutil.copy(video.path, clip)
    first = inline("video", clip)
    assert first.src
    assert first.src.startswith("data:video/webm;base64,")
    assert first.poster
    saved = list((tmp_path / "cache" / "inline").glob("*.json"))
    assert len(saved) == 1

    made: list[Path] = []

    def remake(path: Path) -> Inlined:
        made.append(path)
        return Inlined("video", src="data:video/webm;base64,AAAA", poster=first.poster, width=2, height=2)

    monkeypatch.setitem(inline_module._MAKERS, "video", remake)
    assert inline("video", clip) == first
    assert made == []  # read back, not decoded again
    saved[0].write_text('{"kind": "video", "src": "javascript:alert(1)"}')  # not ours: ignored
    assert inline("video", clip).src == "data:video/webm;base64,AAAA"
    assert made == [clip]
    stat = clip.stat()
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file changed: made anew
    assert inline("video", clip).src == "data:video/webm;base64,AAAA"
    assert made == [clip, clip]


def test_the_preview_cache_keeps_the_newest_entries_and_survives_any_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(inline_module, "CACHE_ENTRIES", 3)
    monkeypatch.setitem(
        inline_module._MAKERS, "image", lambda path: Inlined("image", src="data:image/jpeg;base64,AA")
    )
    entries = []
    for n in range(5):
        (tmp_path / f"{n}.jpg").write_bytes(b"x")
        inline("image", tmp_path / f"{n}.jpg")
        entry = inline_module._cache_file("image", tmp_path / f"{n}.jpg")
        assert entry is not None
        os.utime(entry, (1000 + n, 1000 + n))  # entry n is the n-th oldest
        entries.append(entry)
    assert sorted((tmp_path / "cache" / "inline").glob("*.json")) == sorted(entries[2:])
    entries[4].write_text("[" * 100_000 + "]" * 100_000)  # deeper than the JSON parser recurses
    assert inline("image", tmp_path / "4.jpg").src == "data:image/jpeg;base64,AA"


def test_matrix_grid_links_each_cell_to_its_report() -> None:
    cells = [
        MatrixCell("phi-3.5-vision", "H100", "passed", 95.0, 6, 6, "phi-3.5-vision/H100/report.html"),
        MatrixCell("phi-3.5-vision", "L4", "failed", 301.5, 4, 6, "phi-3.5-vision/L4/report.html"),
        MatrixCell("qwen2.5-omni-3b", "H100", "error", None, 0, 0, "javascript:alert(1)", note="OOM <b>"),
        MatrixCell("qwen2.5-omni-3b", "A10G", "interrupted", None, 0, 11, "../../etc/passwd"),
    ]
    page = parse(to_matrix_html(cells))
    header = [text_of(th) for th in find(find(page, "thead")[0], "th")]
    assert header == ["profile", "H100", "L4", "A10G"]
    rows = find(find(page, "tbody")[0], "tr")
    assert [text_of(find(r, "th")[0]) for r in rows] == ["phi-3.5-vision", "qwen2.5-omni-3b"]
    assert [a.get("href") for a in find(page, "a")] == [
        "phi-3.5-vision/H100/report.html",
        "phi-3.5-vision/L4/report.html",
    ]
    cells_text = [text_of(td).split() for td in find(page, "td")]
    assert cells_text[0][:3] == ["passed", "6/6", "demos"]
    assert cells_text[2] == ["–"]  # phi on A10G was not run
    assert "OOM <b>" in text_of(page)
    assert not find(page, "b")


def test_diff_page_shows_both_runs_per_demo(record: RunRecord, tmp_path: Path) -> None:
    first = tmp_path / "a.json"
    first.write_text(record.to_json(), encoding="utf-8")
    demos = [d.model_copy(update={"latency_s": d.latency_s * 2}) for d in record.demos[1:]]
    demos[0] = demos[0].model_copy(update={"status": "failed", "answer": "now <i>this</i>\x1b"})
    second = tmp_path / "b.json"
    second.write_text(record.model_copy(update={"demos": demos}).to_json(), encoding="utf-8")
    page = parse(to_diff_html(load(first), load(second), "runs/a", "runs/b"))
    rows = {
        text_of(find(tr, "th")[0]): [text_of(td).strip() for td in find(tr, "td")]
        for tr in find(page, "tr")[1:]
    }
    assert rows["text-only/text"][:2] == ["passed", "absent"]
    assert rows["single-image/url"][:2] == ["passed", "failed"]
    assert rows["single-image/file"][4:] == ["2.00x", "same"]
    answers = [text_of(p).strip() for p in find(page, "pre", "answer")]
    assert answers == ["bell\\x07 esc\\x1b[31m red <b>bold</b> | pipe", "now <i>this</i>\\x1b"]
    assert not find(page, "i")
    assert not find(page, "b")


def test_a_vanished_template_cache_never_breaks_the_page(
    record: RunRecord, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from orchestrator.render import html

    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    html._environment.cache_clear()
    try:
        html._environment()  # the cache directory is chosen (and made) now ...
        shutil.rmtree(tmp_path / "cache")  # ... and is gone by the time a page is rendered
        page = html.to_html(record)
        assert "<html" in page
    finally:
        html._environment.cache_clear()
