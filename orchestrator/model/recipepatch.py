"""Verified out: a recipe's `meta.hardware` block as runs found it, written as a patch of the recipe file.

`hardware_patch(recipe, marks)` sets `<gpu class>: verified  # <run record, vLLM version>` for each
class a run verified (which runs count is the CLI's to decide from their records: cli/recipes.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from orchestrator.model.recipe import Recipe


def hardware_patch(recipe: Recipe, marks: Mapping[str, str]) -> str:
    """A unified diff of the recipe file setting `meta.hardware.<key>: verified  # <comment>` for each
    mark (key -> comment); an entry already verified stays as it is. Empty when nothing changes."""
    lines = recipe.text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new = list(lines)
    entries = {
        k.split(".", 2)[2]: n
        for k, n in recipe.lines.items()
        if k.startswith("meta.hardware.") and k.count(".") == 2
    }
    todo = {k: c for k, c in marks.items() if recipe.verified.get(k) != "verified"}
    if not todo:
        return ""
    inserts: list[tuple[int, list[str]]] = []  # (0-based index to insert before, lines)
    if entries:
        last = max(entries.values())
        indent = _indent(lines[last - 1])
        added = []
        for key, comment in todo.items():
            text = f"{indent}{key}: verified  # {comment}\n"
            if key in entries:
                new[entries[key] - 1] = text
            else:
                added.append(text)
        inserts.append((last, added))
    else:
        hw = recipe.lines.get("meta.hardware")
        meta = recipe.lines.get("meta")
        block = sorted(todo.items())
        if hw is not None:  # `hardware: {}` or an empty value
            indent = _indent(lines[hw - 1])
            new[hw - 1] = f"{indent}hardware:\n"
            inserts.append((hw, [f"{indent}  {k}: verified  # {c}\n" for k, c in block]))
        elif meta is not None:
            child = next(
                (n for k, n in recipe.lines.items() if k.startswith("meta.") and k.count(".") == 1), None
            )
            indent = _indent(lines[child - 1]) if child else "  "
            inserts.append(
                (meta, [f"{indent}hardware:\n", *(f"{indent}  {k}: verified  # {c}\n" for k, c in block)])
            )
        else:
            inserts.append(
                (0, ["meta:\n", "  hardware:\n", *(f"    {k}: verified  # {c}\n" for k, c in block)])
            )
    for at, more in sorted(inserts, key=lambda i: i[0], reverse=True):
        new[at:at] = more
    name = f"models/{recipe.slug}.yaml"
    return "".join(difflib.unified_diff(lines, new, fromfile=f"a/{name}", tofile=f"b/{name}"))


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]
