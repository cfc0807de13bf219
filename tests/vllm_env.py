"""A stand-in vLLM environment reached the way HPC and conda users reach theirs: no vLLM, but the shape.

`wrapper(root, stand_ins)` builds, under `root`:

    site/vllm/__init__.py, site/vllm-9.9.9.dist-info   a `vllm` package (empty) and its metadata
    site/sitecustomize.py                              runs a stand-in in place of a named script
    bin/vllm                                           `export PYTHONPATH=site; exec python -c ... "$@"`

so `--vllm-bin bin/vllm` is a wrapper script (what `module load vllm` gives): which Python runs vLLM, and
in which environment, only running it can tell. `launcher(root, stand_ins)` builds the same environment
reached through a `#!/usr/bin/env python3` launcher instead (`bin/python3` on PATH, PYTHONPATH set by
the caller). `stand_ins` maps a script's file name (serve_args.py, model_facts.py, ...) to Python code run
in its place, stdin and stdout as the script's.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

VERSION = "9.9.9"

SITECUSTOMIZE = """
import os, sys
_STAND_INS = {stand_ins!r}
_name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
if _name in _STAND_INS:
    sys.argv = sys.argv[:]
    try:
        exec(compile(_STAND_INS[_name], _name, "exec"), {{"__name__": "__main__"}})
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
"""


def site(root: Path, stand_ins: Mapping[str, str]) -> Path:
    """The environment's site directory: a `vllm` of VERSION, and the stand-ins."""
    where = root / "site"
    (where / "vllm").mkdir(parents=True, exist_ok=True)
    (where / "vllm" / "__init__.py").write_text("")
    meta = where / f"vllm-{VERSION}.dist-info"
    meta.mkdir(exist_ok=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {VERSION}\n")
    (where / "sitecustomize.py").write_text(SITECUSTOMIZE.format(stand_ins=dict(stand_ins)))
    return where


def wrapper(root: Path, stand_ins: Mapping[str, str] = {}) -> Path:
    """`bin/vllm`, a shell script that sets the environment up and execs the Python that has vLLM."""
    where = site(root, stand_ins)
    command = root / "bin" / "vllm"
    command.parent.mkdir(parents=True, exist_ok=True)
    command.write_text(
        "#!/bin/sh\n# like `module load vllm`: the environment first, then the real command\n"
        f'export PYTHONPATH="{where}${{PYTHONPATH:+:$PYTHONPATH}}"\n'
        f'exec {sys.executable} -c \'import sys; print("vllm", sys.argv[1:])\' "$@"\n'
    )
    command.chmod(0o755)
    return command


def launcher(root: Path, stand_ins: Mapping[str, str] = {}) -> tuple[Path, dict[str, str]]:
    """`bin/vllm`, a `#!/usr/bin/env python3` launcher, and what the environment must add (PATH with its
    `python3`, PYTHONPATH with its site) for `env` to find that Python."""
    where = site(root, stand_ins)
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "python3").symlink_to(sys.executable)
    command = bin_dir / "vllm"
    command.write_text("#!/usr/bin/env python3\nimport sys\nprint('vllm', sys.argv[1:])\n")
    command.chmod(0o755)
    return command, {"PATH": str(bin_dir), "PYTHONPATH": str(where)}
