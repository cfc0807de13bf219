"""The architecture as a checked fact: import-linter's contract holds, breaks on an upward import, and
no module of orchestrator/ is in an import cycle (TYPE_CHECKING and function-level imports count)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter on the `orchestrator` package found under `root`, with the project's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--config", str(REPO / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )


def test_the_layers_contract_holds() -> None:
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "upward"),
    [
        ("core/errors.py", "from orchestrator import session"),  # the ground reaching for the top
        (
            "demos/chat.py",
            "    from orchestrator.session.targets import Prepared",
        ),  # a step reaching for its caller
        ("model/derive.py", "import rich"),  # only the CLI and the renderers draw
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, upward: str) -> None:
    copy = tmp_path / "orchestrator"
    shutil.copytree(REPO / "orchestrator", copy, ignore=shutil.ignore_patterns("__pycache__"))
    source = copy / module
    text = source.read_text()
    if upward.startswith(" "):  # inside a function: deferred imports count as much as any other
        text += f"\n\ndef _late() -> None:\n{upward}\n"
    else:
        text += f"\n{upward}\n"
    source.write_text(text)
    done = lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN" in done.stdout
    imported = upward.split()[1]
    dotted = module.removesuffix(".py").replace("/", ".")
    assert f"orchestrator.{dotted} -> {imported}" in done.stdout


def test_no_module_is_in_an_import_cycle() -> None:
    graph = grimp.build_graph("orchestrator", exclude_type_checking_imports=False)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    cycles = strongly_connected(edges)
    assert not cycles, f"import cycles: {cycles}"


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
