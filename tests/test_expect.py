"""Expected words with alternatives, and the dummy-weights switch of the command layer."""

from __future__ import annotations

import pytest

from orchestrator.core.errors import UsageError
from orchestrator.launch.command import serve_args, with_dummy_weights
from orchestrator.profile.expect import alternatives, check_expect
from orchestrator.profile.schema import ServeSettings

# (answer, expect, matched groups, missing groups)
CASES = [
    ("The capital of France is Paris.", ["Paris"], ["Paris"], []),
    ("paris, of course", ["Paris"], ["Paris"], []),
    ("I don't know.", ["Paris"], [], ["Paris"]),
    ("A mallard and a lion.", ["duck|mallard|bird", "lion"], ["duck|mallard|bird", "lion"], []),
    ("Two BIRDS.", ["duck|mallard|bird", "lion"], ["duck|mallard|bird"], ["lion"]),
    ("A million ducks", ["lion"], [], ["lion"]),  # a word's start, not any substring
    ("A wooden boardwalk through grass", ["wood|path"], ["wood|path"], []),
    ("", ["duck | mallard"], [], ["duck | mallard"]),
    ("anything", [], [], []),
    ("Café crème", ["CAFÉ"], ["CAFÉ"], []),
    ("a (duck) in a pond", ["duck"], ["duck"], []),
]


@pytest.mark.parametrize(("answer", "expect", "matched", "missing"), CASES)
def test_check_expect(answer: str, expect: list[str], matched: list[str], missing: list[str]) -> None:
    assert check_expect(answer, expect) == (tuple(matched), tuple(missing))


def test_alternatives_are_trimmed_and_empty_ones_refused() -> None:
    assert alternatives(" duck | mallard|bird ") == ("duck", "mallard", "bird")
    for bad in ("", "duck|", "|duck", "duck||bird", " | "):
        with pytest.raises(ValueError, match="empty alternative"):
            alternatives(bad)


# (extra_args, the argv after with_dummy_weights, or the refusal)
DUMMY = [
    ((), ["--load-format", "dummy"]),
    (("--seed", "0"), ["--seed", "0", "--load-format", "dummy"]),
    (("--load-format", "safetensors"), "already sets '--load-format'"),
    (("--load_format=pt",), "already sets '--load_format=pt'"),
    (("--load-form", "pt"), "already sets '--load-form'"),  # vLLM's parser takes the abbreviation
]


@pytest.mark.parametrize(("extra", "expected"), DUMMY)
def test_dummy_weights(extra: tuple[str, ...], expected: list[str] | str) -> None:
    serve = ServeSettings(max_model_len=2048, extra_args=extra)
    if isinstance(expected, str):
        with pytest.raises(UsageError, match=expected) as info:
            with_dummy_weights(serve, where="profiles/x.yaml")
        assert str(info.value).startswith("--dummy-weights adds --load-format dummy, but profiles/x.yaml")
        return
    dummy = with_dummy_weights(serve)
    assert serve_args(dummy) == ["--max-model-len", "2048", *expected]
    assert serve.extra_args == extra  # the original is untouched
