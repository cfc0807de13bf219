"""A derived profile as commented YAML: each derived value followed by `# from ...` saying where it came from.

`to_yaml(derivation)` writes the text that `profile.parse_profile_text` parses back into an equal
Profile (tests/test_profilegen.py holds it to that).
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from orchestrator.model.derive import Derivation

_BLOCKS = ("serve", "requires", "env", "variants")  # written as blocks; deeper mappings as {flow}
_ORDER = (
    "model",
    "served_model_name",
    "description",
    "source",
    "serve",
    "env",
    "requires",
    "ready_timeout_s",
)
_WIDTH = 110


def to_yaml(derivation: Derivation) -> str:
    """The profile of `derivation` as YAML with the provenance as comments."""
    profile, origin = derivation.profile, derivation.profile.recipe
    # A recipe's values say `from recipe: ...` or `derived: ...` themselves (model/recipemerge.py).
    provenance = {k: v if origin else f"from {v}" for k, v in derivation.provenance.items()}
    data = _tidy(profile.model_dump(mode="json", exclude_unset=True, exclude={"name", "path"}))
    lines = [
        f"# Derived by mmdemo from what vLLM {derivation.facts.vllm} says about {profile.model}",
        "# (orchestrator/model/derive.py); each derived value says where it came from. Edit freely.",
    ]
    if origin is not None:
        lines = [
            f"# Made by mmdemo from the vLLM recipe {origin.slug} (variant {origin.variant}) and what",
            f"# vLLM {derivation.facts.vllm} says about {profile.model}: each value says which. Edit freely.",
        ]
    lines += [f"# note: {line}" for note in derivation.notes for line in _wrap(note, 100)]
    keys = [k for k in _ORDER if k in data] + [k for k in data if k not in _ORDER and k != "demos"]
    for key in keys:
        _emit(lines, key, data[key], key, indent=0, provenance=provenance)
    if "demos" in data:
        _demos(lines, data["demos"], provenance)
    return "\n".join(lines) + "\n"


def _emit(lines: list[str], key: str, value: Any, path: str, *, indent: int, provenance: Any) -> None:
    pad = " " * indent
    block = path in _BLOCKS or (path.startswith("variants.") and path.count(".") == 1)
    if block and isinstance(value, dict) and value:
        _line(lines, f"{pad}{key}:", provenance.get(path), indent)
        for child, inner in value.items():
            _emit(lines, child, inner, f"{path}.{child}", indent=indent + 2, provenance=provenance)
        return
    _line(lines, f"{pad}{key}: {flow(value)}", provenance.get(path), indent)


def _demos(lines: list[str], demos: list[dict[str, Any]], provenance: Any) -> None:
    _line(lines, "demos:", provenance.get("demos"), 0)
    for index, demo in enumerate(demos):
        for position, (key, value) in enumerate(demo.items()):
            lead = "  - " if position == 0 else "    "
            _line(lines, f"{lead}{key}: {flow(value)}", provenance.get(f"demos.{index}.{key}"), 4)


def _line(lines: list[str], text: str, source: str | None, indent: int) -> None:
    if source is None:
        lines.append(text)
        return
    first, *rest = _wrap(source, max(_WIDTH - len(text) - 4, 60))
    lines.append(f"{text}  # {first}")
    lines.extend(f"{' ' * indent}#   {more}" for more in rest)


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False) or [""]


def _tidy(value: Any) -> Any:
    """300.0 -> 300: a whole number reads as one (the schema's floats take it back)."""
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def flow(value: Any) -> str:
    """One value on one line, quoted where YAML would read it otherwise."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()
