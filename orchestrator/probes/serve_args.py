"""Check `vllm serve` command lines with the installed vLLM's own parser; no server, no GPU.

Runs under the Python of the vLLM environment, imports only the stdlib and vLLM. Reads JSON on
stdin, `{"checks": [{"id": ID, "argv": ["serve", MODEL, "--flag", ...]}, ...]}`, and writes one
JSON object to stdout, `{"vllm": VERSION, "results": [{"id": ID, "ok": bool, "stage": STAGE,
"error": TEXT}, ...]}`. Everything vLLM itself prints goes to stderr.

Each argv goes through what `vllm serve` does before it loads a model: the serve subcommand's
parser (vllm/entrypoints/cli/main.py builds it the same way), `validate_parsed_serve_args`,
`AsyncEngineArgs.from_cli_args` (the engine arguments' own checks), `create_load_config`, and the
multimodal config built from the parsed limits and kwargs. `create_engine_config` is not reached:
it reads the model's config from the hub.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys


class ParseFailure(Exception):
    """argparse's error(), raised instead of printing usage and exiting."""


def _raise(message: str) -> None:
    raise ParseFailure(message)


def _serve_parser():
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    command = ServeSubcommand()
    serve = command.subparser_init(subparsers)
    for p in (parser, serve):
        p.error = _raise
        p.exit_on_error = False
    return parser, command


def check(parser, command, argv: list[str]) -> tuple[str, str | None]:
    """(the last stage reached, the error text or None)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    stage = "parse"
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # argparse's usage text
            args = parser.parse_args(argv)
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        stage = "validate"
        command.validate(args)
        stage = "engine-args"
        engine_args = AsyncEngineArgs.from_cli_args(args)
        stage = "load-config"
        engine_args.create_load_config()
        stage = "multimodal-config"
        _multimodal_config(engine_args)
    except (ParseFailure, argparse.ArgumentError) as exc:
        return stage, re.sub(r" at 0x[0-9a-f]+>", ">", str(exc).splitlines()[0])
    except SystemExit as exc:  # a parser that exits anyway
        return stage, f"the parser exited ({exc.code})"
    except Exception as exc:  # vLLM's own checks raise ValueError, TypeError, pydantic errors ...
        text = " ".join(str(exc).split())
        return stage, f"{type(exc).__name__}: {text[:400]}"
    return "done", None


def _multimodal_config(engine_args) -> None:
    try:
        from vllm.config.multimodal import MultiModalConfig
    except ImportError:  # another vLLM layout: the parser and engine-args checks still ran
        return
    kwargs = {
        "limit_per_prompt": engine_args.limit_mm_per_prompt,
        "media_io_kwargs": engine_args.media_io_kwargs,
        "mm_processor_kwargs": engine_args.mm_processor_kwargs,
    }
    MultiModalConfig(**{k: v for k, v in kwargs.items() if v})


def main() -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM logs to stdout; keep stdout for the answer
    sys.stdout = sys.stderr
    request = json.load(sys.stdin)
    import vllm

    parser, command = _serve_parser()
    results = []
    for item in request["checks"]:
        stage, error = check(parser, command, list(item["argv"]))
        results.append({"id": item["id"], "ok": error is None, "stage": stage, "error": error})
    json.dump({"vllm": getattr(vllm, "__version__", "?"), "results": results}, out)
    out.write("\n")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
