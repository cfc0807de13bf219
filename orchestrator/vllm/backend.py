"""The vLLM mmdemo talks to: which `vllm` command, found by which rule, and the Python beside it.

The rules, first match wins: `--vllm-bin`, then `$MMDEMO_VLLM_BIN`, then `vllm` on `PATH`, then the
`.venv-vllm` that the project's install targets (`make install-vllm-cpu`, `make install-vllm`) put
in the checkout mmdemo is installed from, then the one in the current directory. A command named
explicitly (flag or variable) that does not exist is refused: falling back would run another vLLM
than the one asked for.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from orchestrator.core.environment import Environment
from orchestrator.core.errors import PreflightError

ENV_VAR = "MMDEMO_VLLM_BIN"
BACKEND_VENV = ".venv-vllm"
INSTALL_HINT = "install it (`make install-vllm-cpu` on CPU, `make install-vllm` on GPU) or pass --vllm-bin"


def project_checkout() -> Path | None:
    """The source checkout mmdemo runs from (an editable install), None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else None


def locate_vllm(
    explicit: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    checkout: Path | None = None,
) -> tuple[str, str]:
    """(absolute path of the vLLM command, the rule that found it), or a refusal naming where it looked."""
    env = os.environ if env is None else env
    path_var = env.get("PATH", os.defpath)
    for value, rule in ((explicit, "--vllm-bin"), (Environment.read(env).vllm_bin, f"${ENV_VAR}")):
        if value:
            found = shutil.which(value, path=path_var)
            if found is None:
                raise PreflightError(f"vLLM command {value!r} (from {rule}) not found", hint=INSTALL_HINT)
            return os.path.abspath(found), rule
    if found := shutil.which("vllm", path=path_var):
        return os.path.abspath(found), "`vllm` on PATH"
    places = (
        (checkout if checkout is not None else project_checkout(), "of the checkout mmdemo runs from"),
        (cwd if cwd is not None else Path.cwd(), "of the current directory"),
    )
    looked: list[str] = []
    for base, which in places:
        if base is None:
            continue
        candidate = Path(os.path.abspath(base)) / BACKEND_VENV / "bin" / "vllm"
        if str(candidate) in looked:
            continue
        looked.append(str(candidate))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate), f"the {BACKEND_VENV} {which}, where `make install-vllm*` puts it"
    raise PreflightError(
        f"no vLLM found: no --vllm-bin, no ${ENV_VAR}, no `vllm` on PATH, nothing at {' or '.join(looked)}",
        hint=INSTALL_HINT,
    )


def vllm_python(vllm_path: str) -> Path:
    """The Python of the environment that holds this `vllm` command: its shebang's, else the one beside it."""
    try:
        with open(vllm_path, "rb") as handle:
            first = handle.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        first = ""
    if first.startswith("#!") and "python" in first:
        words = first[2:].split()
        if words and Path(words[0]).name == "env":  # `#!/usr/bin/env [-S] python3`: the PATH's python3
            named = next((w for w in words[1:] if not w.startswith("-") and "=" not in w), None)
            found = shutil.which(named) if named else None
            if found:
                return Path(found)
        elif words:
            python = Path(words[0])
            if python.is_absolute() and os.access(python, os.X_OK):
                return python
    python = Path(vllm_path).parent / "python"
    if not python.exists():
        raise PreflightError(f"no python next to {vllm_path}: mmdemo needs the environment vLLM runs in")
    return python
