"""Expected words: does an answer show the model understood the input, not just that it answered?

A demo's `expect` is a list of groups; each group is a string of alternatives separated by `|`:

    expect: [duck|mallard|bird, lion]    # (duck or mallard or bird) and lion

A group matches when one of its words starts a word of the answer, case-insensitively: `bird`
matches "birds", `wood` matches "wooden", `lion` does not match "million".

The known-answer demos (media/known.py) add distractors, `reject`, in the same syntax: an answer
that names any of them fails, so a list of every colour cannot pass (grade()).
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


def _found(word: str, answer: str, *, whole: bool = False) -> bool:
    # whole: the word itself or its plural ("red", "reds"; not "reduce"): a known truth is one word
    end = r"(?:s|es)?(?!\w)" if whole else ""
    return re.search(r"(?<!\w)" + re.escape(word.casefold()) + end, answer) is not None


def check_expect(
    answer: str, expect: Sequence[str], *, whole: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(groups matched, groups missing), each group as written in the profile."""
    text = answer.casefold()
    matched: list[str] = []
    missing: list[str] = []
    for group in expect:
        found = any(_found(w, text, whole=whole) for w in alternatives(group))
        (matched if found else missing).append(group)
    return tuple(matched), tuple(missing)


def without(answer: str, phrases: Sequence[str]) -> str:
    """The answer with each phrase removed (case-insensitively, at a word's start): what is graded
    when some phrases must not count, e.g. where a moving shape came from ("from the right")."""
    for phrase in phrases:
        answer = re.sub(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", " ", answer, flags=re.IGNORECASE)
    return answer


def grade(
    answer: str,
    expect: Sequence[str],
    reject: Sequence[str] = (),
    ignore: Sequence[str] = (),
    *,
    whole: bool = False,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(expected groups missing, distractor groups found) in the answer, `ignore` phrases left out:
    both empty means the answer holds every expected word and no distractor. `whole`: the expected
    words must stand as words (a known truth: "red" is not found in "reduce", "up" not in "upon");
    distractors always count from a word's start, so "reddish" still names red."""
    text = without(answer, ignore)
    return check_expect(text, expect, whole=whole)[1], check_expect(text, reject)[0]
