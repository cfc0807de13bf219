"""A vLLM recipe laid over the profile derived for its model: what the recipe says wins, the rest is derived.

`apply(recipe, choice, derivation, min_version)` returns a `Derivation` whose provenance says, for each
value, `from recipe: KEY (file:line)` or `derived: ...` (profilegen writes it as the YAML's comments,
`mmdemo plan` prints it). The recipe's argv words that a profile names (`--max-model-len 8192`) become
those settings; the rest stay extra args, in the recipe's order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from orchestrator.core.chattypes import CHAT_TYPE_NEEDS, ChatType
from orchestrator.core.errors import ProfileError
from orchestrator.model.derive import Derivation
from orchestrator.model.recipe import Choice, Recipe, platforms
from orchestrator.profile.schema import (
    OWNED_FLAGS,
    REMOVED_FLAGS,
    Profile,
    RecipeOrigin,
    ServeSettings,
    _plain_option,
    option_name,
)

_NAMED = {"--" + f.replace("_", "-"): f for f in ServeSettings.model_fields if f != "extra_args"}
_BOOLEAN = {"trust_remote_code", "enforce_eager"}
_JSON = {"limit_mm_per_prompt", "mm_processor_kwargs", "media_io_kwargs"}
_INT = {"max_model_len", "tensor_parallel_size"}


def split_args(recipe: Recipe, key: str, args: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """A recipe's argv words: the flags a profile names (`--max-model-len 8192` -> max_model_len) and
    the rest as extra args, in order. Flags mmdemo owns or vLLM removed are refused."""
    named: dict[str, Any] = {}
    extra: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        base = option_name(arg, known=(*_NAMED, *OWNED_FLAGS))
        index += 1
        if base in OWNED_FLAGS or base in REMOVED_FLAGS:
            why = OWNED_FLAGS.get(base or "") or REMOVED_FLAGS.get(base or "")
            raise ProfileError(f"{recipe.line(key)}: {key} passes {arg.split('=', 1)[0]}: {why}")
        if base not in _NAMED:
            extra.append(arg)
            continue
        name = _NAMED[base]
        flag, _, inline = arg.partition("=")
        dotted = flag.split(".", 1)[1] if "." in flag else None
        if name in _BOOLEAN and not inline:
            named[name] = _plain_option(flag) == base and not flag.startswith("--no")
            continue
        if not inline:
            if index >= len(args):
                raise ProfileError(f"{recipe.line(key)}: {key}: {flag} has no value")
            inline, index = args[index], index + 1
        named[name] = _value(recipe, key, flag, inline, name=name, dotted=dotted, before=named.get(name))
    return named, extra


def _value(
    recipe: Recipe, key: str, flag: str, text: str, *, name: str, dotted: str | None, before: Any
) -> Any:
    try:
        if name in _JSON:
            if dotted is not None:
                parsed: Any = {
                    **(before or {}),
                    dotted: json.loads(text) if text[:1] in "{[0123456789" else text,
                }
                return parsed
            return json.loads(text)
        if name in _INT:
            return int(text)
        if name == "gpu_memory_utilization":
            return float(text)
        if name in _BOOLEAN:
            return text.lower() in ("1", "true", "yes")
        if name == "kv_cache_memory_bytes" and text.isdigit():
            return int(text)
        return text
    except ValueError:
        raise ProfileError(f"{recipe.line(key)}: {key}: {flag} {text!r} is not a value it takes") from None


def apply(recipe: Recipe, choice: Choice, derivation: Derivation, min_version: str | None) -> Derivation:
    """The derived profile with the recipe laid over it: each value says `from recipe: KEY (file:line)`
    or `derived: ...`; a demo the recipe's per-prompt limits leave no room for is left out, with a note."""
    data = derivation.profile.model_dump(mode="json", exclude_unset=True, exclude={"path", "name"})
    prov = {k: f"derived: {v}" for k, v in derivation.provenance.items()}
    notes = list(derivation.notes)
    serve = data.setdefault("serve", {})
    derived_extra = list(serve.get("extra_args", []))
    extra: list[str] = []
    env = data.setdefault("env", {})
    layers = [
        (recipe.base, "model.base_args", "model.base_env"),
        *((recipe.features[f], f"features.{f}.args", "") for f in choice.features),
        (
            choice.variant.extra,
            f"variants.{choice.variant.name}.extra_args",
            f"variants.{choice.variant.name}.extra_env",
        ),
        (recipe.strategy, f"{recipe.strategy.where}.extra_args", f"{recipe.strategy.where}.extra_env"),
    ]
    sources: list[str] = []
    top: dict[str, Any] = {}
    for layer, args_key, env_key in layers:
        named, rest = split_args(recipe, args_key, layer.args)
        for name, value in named.items():
            serve[name] = top[name] = value
            prov[f"serve.{name}"] = _from(recipe, args_key)
        if rest:
            extra += rest
            sources.append(_from(recipe, args_key).removeprefix("from recipe: "))
        for var, value in layer.env.items():
            env[var] = value
            prov[f"env.{var}"] = _from(recipe, env_key or args_key)
    tp = choice.variant.tp or recipe.strategy_tp
    if tp is not None:
        tp_key = f"variants.{choice.variant.name}.tp" if choice.variant.tp else f"{recipe.strategy.where}.tp"
        serve["tensor_parallel_size"] = top["tensor_parallel_size"] = tp
        data.setdefault("requires", {})["gpu_count"] = tp
        prov["serve.tensor_parallel_size"] = prov["requires.gpu_count"] = _from(recipe, tp_key)
    if extra or derived_extra:
        serve["extra_args"] = derived_extra + extra
        prov["serve.extra_args"] = (
            "from recipe: " + ", ".join(sources) if sources else prov.get("serve.extra_args", "")
        )
    if min_version is not None:
        data.setdefault("requires", {})["vllm_version"] = min_version
        prov["requires.vllm_version"] = _from(recipe, "model.min_vllm_version")
    for name, variant in data.get("variants", {}).items():
        _platform(
            recipe, choice, name=name, variant=variant, extra=serve.get("extra_args", []), top=top, prov=prov
        )
    if (limits := serve.get("limit_mm_per_prompt")) is not None and "limit_mm_per_prompt" in top:
        kept = _fitting_demos(data["demos"], limits, notes)
        renumbered = {f"demos.{new}.": f"demos.{old}." for new, old in enumerate(kept)}
        moved = {k: v for k, v in prov.items() if not re.match(r"demos\.\d+\.", k)}
        for new_key, old_key in renumbered.items():
            moved.update({new_key + k[len(old_key) :]: v for k, v in prov.items() if k.startswith(old_key)})
        prov = moved
        data["demos"] = [data["demos"][i] for i in kept]
    data["name"] = (
        recipe.path.stem if choice.variant.name == "default" else f"{recipe.path.stem}-{choice.variant.name}"
    )
    data["description"] = (
        f"From the vLLM recipe {recipe.slug} (variant {choice.variant.name}); the rest derived."
    )
    data["source"] = f"vLLM recipe {recipe.path}"
    data["recipe"] = RecipeOrigin(
        path=str(recipe.path.resolve()),
        slug=recipe.slug,
        sha256=recipe.sha256,
        variant=choice.variant.name,
        features=choice.features,
        model_id=choice.model_id(recipe),
    ).model_dump(mode="json")
    prov["model"] = _from(
        recipe, f"variants.{choice.variant.name}.model_id" if choice.variant.model_id else "model.model_id"
    )
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ProfileError(
            f"{recipe.path}: the recipe's settings do not make a profile: {loc}: {first['msg']}"
        ) from None
    return Derivation(profile, prov, tuple(notes), derivation.facts, derivation.weights)


def _from(recipe: Recipe, key: str) -> str:
    return f"from recipe: {key} ({recipe.line(key)})"


def _platform(
    recipe: Recipe,
    choice: Choice,
    *,
    name: str,
    variant: dict[str, Any],
    extra: list[str],
    top: Mapping[str, Any],
    prov: dict[str, str],
) -> None:
    """One profile variant (a GPU class or cpu): the recipe's top-level settings win over the derived
    ones, and the overrides of its platforms (generic first) apply."""
    serve = variant.setdefault("serve", {})
    for field_name in top:
        serve.pop(field_name, None)
    if "tensor_parallel_size" in top:
        variant.get("requires", {}).pop("gpu_count", None)
    keys = platforms(name)
    overrides = [
        *(recipe.hardware[k] for k in keys if k in recipe.hardware),
        *(recipe.strategy_hardware[k] for k in keys if k in recipe.strategy_hardware),
        *(choice.variant.hardware[k] for k in keys if k in choice.variant.hardware),
    ]
    more: list[str] = []
    for override in overrides:
        named, rest = split_args(recipe, f"{override.where}.extra_args", override.args)
        for field_name, value in named.items():
            serve[field_name] = value
            prov[f"variants.{name}.serve.{field_name}"] = _from(recipe, f"{override.where}.extra_args")
        if rest:
            more += rest
            prov[f"variants.{name}.serve.extra_args"] = _from(recipe, f"{override.where}.extra_args")
        for var, value in override.env.items():
            variant.setdefault("env", {})[var] = value
            prov[f"variants.{name}.env.{var}"] = _from(recipe, f"{override.where}.extra_env")
    if more:
        serve["extra_args"] = [*extra, *more]
    if not serve:
        variant.pop("serve")


def _fitting_demos(demos: list[dict[str, Any]], limits: Mapping[str, int], notes: list[str]) -> list[int]:
    """The indexes of the demos the recipe's per-prompt limits allow; a note for each one left out."""
    kept = []
    for index, demo in enumerate(demos):
        if "chat_type" not in demo:  # a task past chat (core/tasks.py) sends no chat media
            kept.append(index)
            continue
        need = CHAT_TYPE_NEEDS[ChatType(demo["chat_type"])]
        if need is not None and limits.get(need[0], 0) < need[1]:
            notes.append(
                f"{demo['chat_type']} left out: the recipe's limit_mm_per_prompt allows "
                f"{limits.get(need[0], 0)} {need[0]}(s) per prompt, it sends {need[1]}"
            )
            continue
        kept.append(index)
    return kept
