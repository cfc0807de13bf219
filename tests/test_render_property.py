"""Every artifact stays valid whatever text comes from outside (issue 9), checked over arbitrary unicode.

The text a model, a server or a profile can put into the record (answers, error texts, log lines,
model names, notes) is drawn by hypothesis, mixed with the fragments that break formats (escape
sequences, markup, table pipes, XML and HTML closers). Each renderer must keep its file valid.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.etree.ElementTree import Element

import html5lib
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from rich.console import Console

from orchestrator.record.report import DemoRecord, ErrorRecord, RunRecord
from orchestrator.render.html import to_html
from orchestrator.render.junit import to_junit
from orchestrator.render.markdown import to_markdown
from orchestrator.render.text import terminal, visible
from tests.records import failed_run

# The fragments that have broken a format somewhere; hypothesis joins them with arbitrary text.
NASTY = [
    "\x1b[31m", "\x1b]0;title\x07", "\x9b2J", "\x00", "\r", "\x0c", "\x7f", "\x85", "\u2028", "\u202e",
    "\ufffe", "</pre>", "<script>alert(1)</script>", "<b>", "&amp;", "&#0;", "<!--", "-->", "]]>",
    "|", "\\|", "\\", "`", "```", "\n", "\t", "[bold]x[/bold]", "[/]", ":smile:", "{{ r }}", "{% if %}",
    '"', "'", "*_#~", "<img src=x onerror=alert(1)>",
]  # fmt: skip
# Any code point, lone surrogates included: report.json writes them as JSON escapes.
CHARS = st.characters()
TEXT = st.lists(st.one_of(st.text(CHARS, max_size=12), st.sampled_from(NASTY)), max_size=6).map("".join)
PROFILE = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Outside:
    """Every piece of outside text one record carries."""

    answer: str
    error: str
    log_line: str
    model: str
    note: str

    def placeholder(self) -> Outside:
        """The same record shape with harmless text: what the page's structure must be."""
        return Outside(*("a" if value else "" for value in self.__dict__.values()))


OUTSIDE = st.builds(Outside, TEXT, TEXT, TEXT, TEXT, TEXT)


def record_with(text: Outside) -> RunRecord:
    """A record with one passed and one failed demo, a server error and a note, all from `text`."""
    base = failed_run()
    passed = DemoRecord(
        name="text-only/text", chat_type="text-only", delivery="text", status="passed",
        latency_s=0.4, prompt="What's the capital of France?", answer=text.answer,
    )  # fmt: skip
    failed = passed.model_copy(
        update={
            "name": "audio/url",
            "status": "failed",
            "verdict": "no answer",
            "answer": "",
            "error": text.error,
        }
    )
    assert base.error is not None
    error = ErrorRecord(
        type="ServerDied", message=text.error, diagnosis=text.note, log_tail=[text.log_line, "after"]
    )
    return base.model_copy(
        update={
            "model": text.model,
            "served_model_name": text.model,
            "demos": [passed, failed],
            "error": error,
            "notes": [text.note],
        }
    )


def cell_count(row: str) -> int:
    """The cells of a Markdown table row: pipes not escaped by a backslash, less the two borders."""
    count, escaped = 0, False
    for char in row:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "|":
            count += 1
    return count - 1


# Spans the template writes where the text asks for them: a control character, a log line that
# reads like an error. Everything else must be the same as with harmless text.
MARKS = {("span", "ctl"), ("span", "hot")}


def structure(page: str) -> list[tuple[str, str]]:
    """(tag, class) of every element the parser built, less the template's content-dependent marks."""
    root: Element = html5lib.parse(page, namespaceHTMLElements=False)
    return [
        (e.tag, e.get("class") or "")
        for e in root.iter()
        if isinstance(e.tag, str) and (e.tag, e.get("class")) not in MARKS
    ]


@PROFILE
@given(OUTSIDE)
def test_report_json_keeps_the_exact_text(text: Outside) -> None:
    record = record_with(text)
    back = RunRecord.model_validate(json.loads(record.to_json()))
    assert back == record
    assert back.demos[0].answer == text.answer


@PROFILE
@given(OUTSIDE)
def test_junit_xml_always_parses(text: Outside) -> None:
    root = ET.fromstring(to_junit(record_with(text)).encode("utf-8"))
    assert [case.get("name") for case in root.iter("testcase")] == ["text-only/text", "audio/url"]
    assert root.find("testcase/system-out") is not None


@PROFILE
@given(OUTSIDE)
def test_report_md_has_no_control_byte_and_rows_keep_their_cells(text: Outside) -> None:
    markdown = to_markdown(record_with(text))
    assert not CONTROL.search(markdown.replace("\n", "").replace("\t", ""))
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(rows) == 3  # the header and the two demos: no newline added a row
    assert {cell_count(row) for row in rows} == {8}


@PROFILE
@given(OUTSIDE)
def test_report_html_text_cannot_leave_its_element(text: Outside) -> None:
    page = to_html(record_with(text))
    assert structure(page) == structure(to_html(record_with(text.placeholder())))
    root: Element = html5lib.parse(page, namespaceHTMLElements=False)
    shown = {e.get("class"): "".join(e.itertext()) for e in root.iter("pre")}
    assert shown["answer"] == visible(text.answer)
    assert shown["answer error-text"] == visible(text.error)


@PROFILE
@given(TEXT)
@example("ends with two backslashes \\\\")  # rich's escape() alone lost one and unescaped the tag
@example(":smile: [bold]x[/bold] \\[red]")
def test_terminal_text_carries_no_control_byte_and_no_markup(answer: str) -> None:
    buffer = io.StringIO()
    # The CLI's console, forced to be a terminal so rich writes its own escape codes too. emoji=False:
    # with rich's default, an answer saying ":smile:" would print as an emoji (cli/terminal.py must set it).
    console = Console(
        file=buffer, force_terminal=True, highlight=False, soft_wrap=True, emoji=False, record=True
    )
    console.print(f"[dim]{terminal(answer)}[/dim]", end="")  # embedded in markup, as the CLI does
    # Every character printed as text, none taken as markup (whitespace aside: rich expands tabs).
    assert console.export_text().split() == visible(answer).split()
    own_codes = re.compile(r"\x1b\[[0-9;]*m")  # rich's own SGR codes
    assert not CONTROL.search(own_codes.sub("", buffer.getvalue()).replace("\n", "").replace("\t", ""))
