"""The one sanitiser for text from outside (model answers, server errors, log lines).

Such text never drives a terminal and never breaks a file format: control characters (C0 but
newline and tab, DEL, C1), lone surrogates, non-characters and bidirectional overrides are shown
visibly as `\\xNN` / `\\uNNNN` escapes; everything else is kept as it was.
"""

from __future__ import annotations

import html
import re

# Bidi embeddings/overrides/isolates can reorder what a reader sees ("Trojan source").
_BIDI = "\u202a-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff{_BIDI}]")
_UNSAFE_NO_NEWLINE = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff{_BIDI}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str | None, *, newlines: bool = True) -> str:
    """`text` with every unsafe character replaced by a visible escape (newline and tab kept if asked)."""
    pattern = _UNSAFE if newlines else _UNSAFE_NO_NEWLINE
    return pattern.sub(_escape, text or "")


def one_line(text: str | None, limit: int | None = None) -> str:
    """Visible text with runs of whitespace collapsed to one space, cut to `limit` characters."""
    flat = " ".join(visible(text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return flat


def terminal(text: str | None) -> str:
    """Text safe to embed in rich markup: no control bytes, and no rich markup interpreted."""
    from rich.markup import escape

    safe = visible(text)
    # rich's escape() doubles a trailing backslash only when there is one: a run of two would then
    # escape the markup that follows ("...\\[/]") and lose one. Double the whole run.
    body = safe.rstrip("\\")
    return escape(body) + "\\" * (2 * (len(safe) - len(body)))


_MD_SPECIAL = re.compile(r"([\\`|*_\[\]#~])")


def markdown_cell(text: str | None, limit: int | None = 80) -> str:
    """One table cell of Markdown: one line, HTML escaped, Markdown punctuation backslashed."""
    flat = one_line(text, limit)
    return _MD_SPECIAL.sub(r"\\\1", html.escape(flat, quote=False))


def code_fence(lines: list[str]) -> str:
    """A fence longer than any backtick run in `lines`, so no line can close the block early."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    return "`" * max(3, longest + 1)
