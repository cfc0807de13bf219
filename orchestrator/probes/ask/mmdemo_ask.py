"""mmdemo's question to a `vllm` command: which Python runs you, in which environment, with which vLLM?

Not a module of mmdemo: orchestrator/vllm/runner.py runs the command (a wrapper script, a
`#!/usr/bin/env python3` launcher, a venv's console script, an image's `vllm`) with this directory
on PYTHONPATH and PYTHONWARNINGS=ignore::mmdemo_ask.Ask. Python imports this module at start-up to
resolve that warning category, before it runs any of the command's own code. The first Python that
has vLLM prints one line, `MMDEMO-ANSWER {json}`, and exits at once (nothing of vLLM is imported).
A Python without vLLM on the way (a `conda shell` helper the wrapper runs first) goes on as if never
asked: `Ask` is a warning category like any other, ignored.

The answer: sys.executable, the environment that Python sees (the wrapper's exports; the question
taken out), and from package metadata (no import) the versions of vLLM, torch and transformers and
the media decoders there are; and its witnesses, each directory the answer was read from (sys.path,
and PATH for ffmpeg) with its modification time: mmdemo keeps the answer until one of them changes
(a `pip install` into any of them does).
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_QUESTION = "ignore::mmdemo_ask.Ask"


class Ask(Warning):
    """The warning category whose lookup imports this module; never raised."""


def _without(value, part, sep):
    return sep.join(p for p in value.split(sep) if p and p != part and os.path.abspath(p) != _HERE)


def _environment():
    env = dict(os.environ)
    for name, part, sep in (("PYTHONPATH", _HERE, os.pathsep), ("PYTHONWARNINGS", _QUESTION, ",")):
        if name in env:
            env[name] = _without(env[name], part, sep)
            if not env[name]:
                del env[name]
    return env


def _answer():
    import importlib.util
    import json
    import shutil
    from importlib import metadata

    def version(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    decoders = ("soundfile", "librosa", "av", "cv2", "torchaudio", "torchcodec", "decord")
    found = [n for n in decoders if importlib.util.find_spec(n)]
    answer = {
        "python": sys.executable,
        "prefix": sys.prefix,
        "env": _environment(),
        "vllm": version("vllm"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "decoders": found + (["ffmpeg"] if shutil.which("ffmpeg") else []),
        "witnesses": _witnesses(),
    }
    sys.stdout.write("\nMMDEMO-ANSWER " + json.dumps(answer) + "\n")
    sys.stdout.flush()
    os._exit(0)  # before the command's own code runs


def _witnesses():
    seen = {}
    for entry in [*sys.path, *os.environ.get("PATH", "").split(os.pathsep)]:
        where = os.path.abspath(entry or ".")
        if where == _HERE or where in seen:
            continue
        try:
            seen[where] = os.stat(where).st_mtime_ns
        except OSError:
            seen[where] = None  # absent: appearing later changes the answer too
    return seen


def _has_vllm():
    import importlib.util

    if "site" not in sys.modules and not sys.flags.no_site:
        import site  # noqa: F401  (this runs before Python imports it: site-packages join sys.path now)
    return importlib.util.find_spec("vllm") is not None


if _has_vllm():
    _answer()
