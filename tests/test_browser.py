"""report.html and matrix.html opened in a real headless Chromium: they load, decode and send nothing.

Chromium comes from `make install-chromium` (Debian's package). Under CI=true a missing browser is a
failure, never a skip. One screenshot per kind of page is kept in tests/output/ for review.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageStat

from orchestrator.record.report import RunRecord, load
from orchestrator.render.html import MatrixCell, to_diff_html, to_html, to_matrix_html
from tests.cdp import Browser, PageVisit, browser, find_chromium
from tests.records import failed_run, passed_run

pytestmark = pytest.mark.browser
OUTPUT = Path(__file__).parent / "output"


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """A fresh headless Chromium per test, so the census of conftest sees it ended."""
    binary = find_chromium()
    if binary is None:
        message = "Chromium not found: run `make install-chromium` (or set MMDEMO_CHROMIUM)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    with browser(binary) as session:
        yield session


def open_page(chromium: Browser, html: str, name: str) -> PageVisit:
    """Write the page, open it, keep its screenshot in tests/output/NAME.png."""
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    visit = chromium.visit(path)
    (OUTPUT / f"{name}.png").write_bytes(visit.screenshot)
    return visit


def assert_clean(visit: PageVisit) -> None:
    """No console error, no request but the file and data: URIs, every medium decoded, not blank."""
    assert visit.console_errors == []
    assert visit.requests[0] == visit.url
    assert [u[:40] for u in visit.requests[1:] if not u.startswith("data:")] == []
    for image in visit.measured["images"]:
        assert image["complete"], image
        assert image["naturalWidth"] > 0, image
    for medium in visit.measured["media"]:
        assert medium["error"] is None, medium
        assert medium["readyState"] >= 1, medium
    screenshot = Image.open(io.BytesIO(visit.screenshot)).convert("L")
    assert screenshot.size == (1200, 1600)
    assert ImageStat.Stat(screenshot).stddev[0] > 10, "the screenshot is blank"


def test_passed_run_page_loads_and_decodes_every_medium(chromium: Browser, cache_root: Path) -> None:
    record: RunRecord = passed_run(cache_root)
    visit = open_page(chromium, to_html(record), "report-passed")
    assert_clean(visit)
    assert visit.measured["title"] == "mmdemo: cpu-tiny-omni on cpu: passed"
    sent = [a.kind for d in record.demos for a in d.assets]
    assert len(visit.measured["images"]) == sent.count("image")
    media = [m["tag"] for m in visit.measured["media"]]
    assert media.count("video") == sent.count("video")
    assert media.count("audio") == sent.count("audio")
    assert all(m["duration"] > 0 for m in visit.measured["media"])


def test_failed_run_page_loads(chromium: Browser) -> None:
    visit = open_page(chromium, to_html(failed_run()), "report-failed")
    assert_clean(visit)
    assert visit.measured["title"] == "mmdemo: phi-3.5-vision on L4: error"
    assert visit.measured["media"] == []


def test_matrix_page_loads(chromium: Browser) -> None:
    cells = [
        MatrixCell("phi-3.5-vision", "H100", "passed", 95.0, 6, 6, "phi/H100/report.html"),
        MatrixCell("phi-3.5-vision", "L4", "failed", 301.5, 4, 6, "phi/L4/report.html"),
        MatrixCell("cpu-tiny-omni", "cpu", "passed", 21.3, 11, 11, "tiny/cpu/report.html"),
    ]
    assert_clean(open_page(chromium, to_matrix_html(cells), "matrix"))


def test_diff_page_loads(chromium: Browser, cache_root: Path, tmp_path: Path) -> None:
    record = passed_run(cache_root)
    runs = []
    for name, demos in (("a", record.demos), ("b", record.demos[::-1])):
        path = tmp_path / f"{name}.json"
        path.write_text(record.model_copy(update={"demos": demos}).to_json(), encoding="utf-8")
        runs.append(load(path))
    assert_clean(open_page(chromium, to_diff_html(*runs, "runs/a", "runs/b"), "diff"))


def test_the_checks_see_requests_errors_and_broken_media(chromium: Browser, tmp_path: Path) -> None:
    """The harness itself: a page that breaks each rule is caught (so a clean visit means something)."""
    missing = (tmp_path / "missing.png").as_uri()
    html = (
        f'<img src="{missing}" alt="x"><audio src="{missing}"></audio><script>console.error("boom")</script>'
    )
    path = tmp_path / "bad.html"
    path.write_text(html, encoding="utf-8")
    visit = chromium.visit(path)
    assert missing in visit.requests
    assert any("boom" in error for error in visit.console_errors)
    assert visit.measured["images"][0]["naturalWidth"] == 0
    assert visit.measured["media"][0]["error"] is not None
    with pytest.raises(AssertionError):
        assert_clean(visit)
