"""Expected words: does an answer show the model understood the input, not just that it answered?

A demo's `expect` is a list of groups; each group is a string of alternatives separated by `|`:

    expect: [duck|mallard|bird, lion]    # (duck or mallard or bird) and lion

A group matches when one of its words starts a word of the answer, case-insensitively: `bird`
matches "birds", `wood` matches "wooden", `lion` does not match "million".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

ALTERNATIVES = "|"


def alternatives(group: str) -> tuple[str, ...]:
    """The words of one group, or ValueError naming what is wrong with it."""
    words = tuple(word.strip() for word in group.split(ALTERNATIVES))
    if not all(words):
        raise ValueError(
            f"{group!r} has an empty alternative: write words separated by '|', e.g. 'duck|mallard|bird'"
        )
    return words


def _found(word: str, answer: str) -> bool:
    return re.search(r"(?<!\w)" + re.escape(word.casefold()), answer) is not None


def check_expect(answer: str, expect: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(groups matched, groups missing), each group as written in the profile."""
    text = answer.casefold()
    matched: list[str] = []
    missing: list[str] = []
    for group in expect:
        (matched if any(_found(w, text) for w in alternatives(group)) else missing).append(group)
    return tuple(matched), tuple(missing)
