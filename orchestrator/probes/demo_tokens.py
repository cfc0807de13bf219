"""Each demo request's prompt tokens, as the `vllm serve` line would count them; no weights, no GPU.

Runs under the Python of the vLLM environment, imports only the stdlib and vLLM. Reads JSON on
stdin:

    {"argv": ["serve", MODEL, "--flag", ...], "requests": [{"id": NAME, "body": {CHAT REQUEST}}, ...]}

and writes one JSON object to stdout:

    {"vllm": VERSION, "max_model_len": N, "model_max_len": N, "encoder_cache_size": N|null,
     "limits": {MODALITY: N}, "max_tokens_per_item": {MODALITY: N}|null,
     "results": [{"id": NAME, "prompt_tokens": N|null, "items": [[MODALITY, N], ...], "error": TEXT|null}]}

or `{"error": ONE LINE, "stage": STAGE}` when the renderer cannot be built. Everything vLLM prints
goes to stderr.

It is what `vllm launch render` (vLLM's GPU-less render server) does, without the HTTP: the serve
parser on the plan's own argv, `AsyncEngineArgs.from_cli_args`, `create_engine_config` (so the
encoder cache is sized as the real server sizes it), `init_render_app_state`, then each body through
`OnlineRenderer.render_chat`: the chat template, the media fetched and decoded, the model's own
processor. The context is widened while rendering so a prompt longer than `--max-model-len` is
still counted; the caller compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import sys
import time
from argparse import Namespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from serve_args import ParseFailure, _serve_parser

STARTED = time.monotonic()

WIDE = 1 << 24  # the context rendering runs with: any real prompt fits, so every one is counted


class Failure(Exception):
    def __init__(self, stage: str, exc: BaseException) -> None:
        text = " ".join(str(exc).split()) or type(exc).__name__
        super().__init__(f"{type(exc).__name__}: {text[:400]}")
        self.stage = stage


_PARSER: list = []  # the serve parser, built once by `preload`


def preload() -> str | None:
    """Import what counting needs (vLLM, its serve parser, its renderer: ~10 s on 2 cores) before the
    request arrives, so the caller can start this process early; the import error, if any."""
    try:
        import vllm  # noqa: F401
        from starlette.datastructures import State  # noqa: F401
        from vllm.entrypoints.launchers.render.app_state import init_render_app_state  # noqa: F401
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest  # noqa: F401

        _PARSER.append(_serve_parser())
    except Exception as exc:  # reported with the answer, in its stage
        return Failure("import", exc).args[0]
    return None


def parse(argv: list[str]) -> Namespace:
    parser, command = _PARSER[0] if _PARSER else _serve_parser()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = parser.parse_args(argv)
    except (ParseFailure, SystemExit) as exc:
        raise Failure("parse", exc) from None
    if getattr(args, "model_tag", None) is not None:
        args.model = args.model_tag
    command.validate(args)
    return args


def engine_config(args: Namespace):
    """The VllmConfig `vllm serve` would build from these arguments (the scheduler's sizes included)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext

    engine_args = AsyncEngineArgs.from_cli_args(args)
    config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    own = engine_args.max_model_len is None
    model_max = config.model_config.max_model_len if own else _model_max_len(args)
    return config, model_max


def _model_max_len(args: Namespace) -> int | None:
    """The context the model's own config allows (what the profile's max_model_len may go up to)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    try:
        wide = Namespace(**{**vars(args), "max_model_len": None})
        return int(AsyncEngineArgs.from_cli_args(wide).create_model_config().max_model_len)
    except Exception as exc:  # the count still stands; only the advice loses its ceiling
        print(f"demo_tokens: the model's own context not read: {exc}", file=sys.stderr)
        return None


def encoder_budget(config) -> tuple[int | None, dict[str, int] | None, dict[str, int]]:
    """(the encoder cache size in tokens, the most tokens one item of each modality can become, the
    items of each modality one prompt may carry), as the engine core sizes them at start-up."""
    if not config.model_config.is_multimodal_model:
        return None, None, {}
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    budget = MultiModalBudget(config, MULTIMODAL_REGISTRY)
    most = getattr(budget, "mm_max_toks_per_item", None)
    limits = {k: int(v) for k, v in dict(getattr(budget, "mm_limits", None) or {}).items()}
    size = int(budget.encoder_cache_size)
    with contextlib.suppress(Exception):
        budget.reset_cache()
    return size, ({k: int(v) for k, v in most.items()} if most else None), limits


async def renderer(config, args: Namespace):
    from starlette.datastructures import State
    from vllm.entrypoints.launchers.render.app_state import init_render_app_state

    state = State()
    await init_render_app_state(config, state, args)
    return state.online_renderer


def _embeds(placeholder) -> int:
    count = getattr(placeholder, "get_num_embeds", None)
    value = count() if callable(count) else count
    return int(value if value is not None else placeholder.length)


async def render_one(online, model_config, body: dict) -> dict:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.renderers.inputs.preprocess import extract_prompt_len

    try:
        request = ChatCompletionRequest.model_validate(body)
        result = await online.render_chat(request, skip_mm_cache=True)
    except Exception as exc:
        return {"prompt_tokens": None, "items": [], "error": _one_line(exc)}
    if not isinstance(result, tuple):  # an ErrorResponse: vLLM's own words for the client
        error = getattr(result, "error", result)
        return {"prompt_tokens": None, "items": [], "error": _one_line(getattr(error, "message", error))}
    _, inputs = result
    engine_input = inputs[0]
    items = []
    placeholders = engine_input.get("mm_placeholders") if isinstance(engine_input, dict) else None
    for modality, ranges in (placeholders or {}).items():
        items += [[modality, _embeds(p)] for p in ranges]
    items.sort(key=lambda item: next(iter(p.offset for p in placeholders[item[0]])) if placeholders else 0)
    return {
        "prompt_tokens": int(extract_prompt_len(model_config, engine_input)),
        "items": items,
        "error": None,
    }


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    text = re.sub(r" at 0x[0-9a-f]+>", ">", text)
    return text[:400]


async def run(request: dict, import_error: str | None = None) -> dict:
    if import_error is not None:
        return {"error": import_error, "stage": "import"}
    import vllm

    out: dict = {"vllm": getattr(vllm, "__version__", "?")}
    stage = "parse"
    timings: dict[str, float] = {"import_s": round(time.monotonic() - STARTED, 2)}
    try:
        args = parse(list(request["argv"]))
        stage = "config"
        config, model_max = engine_config(args)
        timings["config_s"] = round(time.monotonic() - STARTED - sum(timings.values()), 2)
        stage = "encoder-budget"
        cache_size, most, limits = encoder_budget(config)
        timings["encoder_budget_s"] = round(time.monotonic() - STARTED - sum(timings.values()), 2)
        stage = "renderer"
        online = await renderer(config, args)
        timings["renderer_s"] = round(time.monotonic() - STARTED - sum(timings.values()), 2)
    except Failure as exc:
        return out | {"error": exc.args[0], "stage": exc.stage}
    except Exception as exc:
        return out | {"error": Failure(stage, exc).args[0], "stage": stage}
    model_config = config.model_config
    out |= {
        "max_model_len": int(model_config.max_model_len),
        "model_max_len": model_max,
        "encoder_cache_size": cache_size,
        "max_tokens_per_item": most,
        "limits": limits,
        "results": [],
    }
    model_config.max_model_len = WIDE  # count every prompt, even one the real context would refuse
    for item in request["requests"]:
        out["results"].append({"id": item["id"]} | await render_one(online, model_config, item["body"]))
    timings["requests_s"] = round(time.monotonic() - STARTED - sum(timings.values()), 2)
    out["timings"] = timings
    return out


def main() -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM logs to stdout; keep stdout for the answer
    sys.stdout = sys.stderr
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import_error = preload()
    text = sys.stdin.read()
    if not text.strip():  # started ahead of time and not needed after all (the counts were cached)
        return 0
    json.dump(asyncio.run(run(json.loads(text), import_error)), out)
    out.write("\n")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
