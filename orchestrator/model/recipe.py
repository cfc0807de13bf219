"""vLLM's community recipes (vllm-project/recipes, `models/<org>/<model>.yaml`) as a profile source.

A recipe says how to serve one model: `model.model_id`, `min_vllm_version`, `base_args`, `base_env`,
`features.<name>.args` (those in `opt_in_features` only when asked), `variants.<name>` (`model_id`,
`precision`, `vram_minimum_gb`, `extra_args`), `hardware_overrides.<platform>` and the one strategy a
single server runs (`strategy_overrides.single_node_tp`); `meta` and `guide` describe. What it does not
say (chat types, per-prompt limits, context for the demos, expected words) is derived for the variant's
model exactly as for a bare model; `apply(...)` lays the recipe over that derivation, each value saying
where it came from. Every refusal is one line naming the recipe file and line.

`autoprofile.resolve` runs the steps: `load` -> `check_version` -> `choose` -> derive -> `apply`.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.core.atomic import write_atomic
from orchestrator.core.environment import Environment
from orchestrator.core.errors import PreflightError, ProfileError, UsageError
from orchestrator.core.paths import cache_dir
from orchestrator.core.tasks import version_tuple
from orchestrator.gpus.classes import CPU, ROCM_CLASSES, Gpu
from orchestrator.profile.schema import Profile
from orchestrator.record.report import RecipeRecord

PREFIX = "recipe:"
RAW_BASE = "https://raw.githubusercontent.com/vllm-project/recipes/main/models"
FIT_SLACK = 1.02  # as profile.fit: a card reported a little under its size still holds it
MAX_RECIPE_BYTES = 1_000_000

# -- the format: which keys mmdemo applies, which only describe, which change serving unapplied -------

APPLIED, IGNORED, NOT_APPLIED = "applied", "ignored", "not applied"
_EACH = "*"  # a mapping of names (features, variants, platforms) to the same spec
_OVERRIDE = {"extra_args": APPLIED, "extra_env": APPLIED, "install_note": IGNORED}


def _keys(kind: str, names: str) -> dict[str, Any]:
    return dict.fromkeys(names.split(), kind)


_SPEC: dict[str, Any] = {
    "meta": IGNORED,  # title, tasks, hardware, ...: read, never serving
    "model": {
        **_keys(APPLIED, "model_id min_vllm_version base_args base_env"),
        **_keys(
            IGNORED, "architecture parameter_count active_parameters context_length install supports_dcp"
        ),
        **_keys(IGNORED, "docker_source"),
        **_keys(NOT_APPLIED, "docker_image nightly_required flashinfer_autotune"),
    },
    "features": {
        _EACH: {
            **_keys(APPLIED, "args"),
            **_keys(IGNORED, "description label hardware strategies"),
            **_keys(NOT_APPLIED, "hardware_overrides modes default_mode"),
        }
    },
    "opt_in_features": APPLIED,
    "variants": {
        _EACH: {
            **_keys(APPLIED, "model_id vram_minimum_gb extra_args extra_env tp min_vllm_version"),
            "hardware_overrides": {_EACH: _OVERRIDE},
            **_keys(IGNORED, "precision description label supported_hardware precision_hardware"),
            **_keys(NOT_APPLIED, "default_modes docker_image"),
        }
    },
    "hardware_overrides": {_EACH: _OVERRIDE},
    # mmdemo runs one server on one node: single_node_tp. The other strategies never run here.
    "strategy_overrides": {
        "single_node_tp": {
            **_keys(APPLIED, "tp extra_args extra_env env"),
            "hardware_overrides": {_EACH: _OVERRIDE},
        },
        _EACH: IGNORED,
    },
    **_keys(IGNORED, "compatible_strategies default_strategy strategy_hardware strategy_min_gpus"),
    **_keys(IGNORED, "kv_offload_support dependencies hardware_notes guide"),
    **_keys(NOT_APPLIED, "omni hardware_opt_in_features"),
}

# Hardware-override platforms a GPU class answers to, generic first (later ones win).
_ARCH = {
    "B200": "blackwell", "H200": "hopper", "H100": "hopper", "GH200": "hopper", "A100-80GB": "ampere",
    "A100-40GB": "ampere", "A6000": "ampere", "A10G": "ampere", "L40S": "ada", "L4": "ada",
    "RTX4090": "ada", "T4": "turing",
}  # fmt: skip
# meta.hardware's names for mmdemo's GPU classes where they are not the class in lower case.
_HARDWARE_KEY = {"A100-80GB": "a100", "A100-40GB": "a100", "RTX4090": "rtx_4090"}


def platforms(variant: str) -> tuple[str, ...]:
    """The `hardware_overrides` keys that apply to a profile variant (a GPU class or cpu), generic first."""
    if variant == CPU:
        return (CPU,)
    if variant in ROCM_CLASSES:
        return ("amd", "rocm")
    return ("nvidia", "cuda", *((_ARCH[variant],) if variant in _ARCH else ()))


def hardware_key(gpu_class: str) -> str:
    """The name `meta.hardware` gives a GPU class: h100, mi300x, a100, ..."""
    return _HARDWARE_KEY.get(gpu_class, gpu_class.lower().replace("-", "_"))


@dataclass(frozen=True)
class Override:
    """Args and environment a platform, strategy or variant adds; `where` names the recipe keys."""

    where: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Variant:
    name: str
    model_id: str | None
    vram_minimum_gb: float | None
    extra: Override
    tp: int | None = None
    min_vllm_version: str | None = None
    hardware: Mapping[str, Override] = field(default_factory=dict)
    not_applied: tuple[str, ...] = ()  # serving keys mmdemo does not apply, as "file:line: key"


@dataclass(frozen=True)
class Recipe:
    """One recipe file, checked: what it applies, by name; the rest only describes the model."""

    path: Path
    text: str
    slug: str  # ORG/MODEL
    model_id: str
    min_vllm_version: str | None
    base: Override
    features: Mapping[str, Override]
    opt_in: tuple[str, ...]
    feature_refusals: Mapping[str, tuple[str, ...]]
    variants: Mapping[str, Variant]
    hardware: Mapping[str, Override]
    strategy: Override
    strategy_tp: int | None
    strategy_hardware: Mapping[str, Override]
    tasks: tuple[str, ...]
    verified: Mapping[str, str]  # meta.hardware: h100 -> verified, ...
    lines: Mapping[str, int]
    refusals: tuple[str, ...] = ()  # serving keys not applied, outside features and variants

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def line(self, key: str) -> str:
        """`file:line` of a dotted key (or the file alone)."""
        number = self.lines.get(key)
        return f"{self.path}:{number}" if number else str(self.path)


# -- finding and reading recipes --------------------------------------------------------------------


def looks_like_recipe(path: Path) -> bool:
    """A YAML file whose `model` is a mapping (a profile's `model` is a string)."""
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        head = path.read_text(encoding="utf-8")[:MAX_RECIPE_BYTES]
        data = yaml.safe_load(head)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict)


def find_recipes(directory: Path) -> list[Path]:
    """The recipe files under a directory (a checkout's models/<org>/<model>.yaml, or any layout)."""
    found = [*directory.rglob("*.yaml"), *directory.rglob("*.yml")]
    return sorted(p for p in found if ".git" not in p.parts and looks_like_recipe(p))


def is_recipe_ref(text: str) -> bool:
    """`recipe:ORG/MODEL`, a recipe file, or a directory holding recipes (and no config.json)."""
    if text.startswith(PREFIX):
        return True
    path = Path(text).expanduser()
    if path.is_dir():
        return not (path / "config.json").is_file() and bool(find_recipes(path))
    return looks_like_recipe(path)


def locate(text: str, offline: bool = False) -> Path:
    """The one recipe file `text` names: a file, a directory with one recipe, or `recipe:ORG/MODEL`."""
    if text.startswith(PREFIX):
        return fetch(text[len(PREFIX) :], offline)
    path = Path(text).expanduser()
    if not path.is_dir():
        return path
    found = find_recipes(path)
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(path)) for p in found[:6]) + (", ..." if len(found) > 6 else "")
        raise UsageError(
            f"{text}: a directory of {len(found)} recipes ({names}): name one file",
            hint=f"`mmdemo recipes {text}` lists them and which this machine can run",
        )
    return found[0]


def fetch(slug: str, offline: bool = False) -> Path:
    """models/ORG/MODEL.yaml from the recipes repository's raw files, kept in mmdemo's cache."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", slug):
        raise UsageError(f"recipe:{slug}: name a recipe as recipe:ORG/MODEL (models/ORG/MODEL.yaml)")
    base = Environment.read().recipes_url or RAW_BASE
    url = f"{base.rstrip('/')}/{slug}.yaml"
    if offline:
        raise PreflightError(
            f"recipe:{slug}: offline, and a recipe is fetched from {url}",
            hint="download the file and pass its path",
        )
    try:
        with urllib.request.urlopen(url, timeout=20) as answer:
            text = answer.read(MAX_RECIPE_BYTES + 1).decode("utf-8")
    except urllib.error.HTTPError as exc:
        raise PreflightError(f"recipe:{slug}: {url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, UnicodeDecodeError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise PreflightError(
            f"recipe:{slug}: cannot fetch {url} ({reason})", hint="download the file and pass its path"
        ) from None
    path = cache_dir() / "recipes" / f"{slug}.yaml"
    write_atomic(path, text)
    return path


def load(path: Path) -> Recipe:
    """Read and check one recipe: every key known, each applied key of the right type, one line per error."""
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{label}: cannot read recipe: {exc}") from None
    if len(text) > MAX_RECIPE_BYTES:
        raise ProfileError(f"{label}: {len(text) / 1e6:.1f} MB is not a recipe (at most 1 MB)")
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1 if event.start_mark else 0
                raise ProfileError(f"{label}:{line}: YAML anchors and aliases are not allowed in a recipe")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        raise ProfileError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ProfileError(f"{label}: not a vLLM recipe (no `model:` mapping)")
    lines: dict[str, int] = {}
    _index_lines(root, (), lines)
    not_applied = list(_check_keys(data, _SPEC, (), label, lines))
    return _build(path, text, data, lines, not_applied)


def _index_lines(node: yaml.Node | None, path: tuple[str, ...], lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            dotted = (*path, str(key.value))
            lines[".".join(dotted)] = key.start_mark.line + 1
            _index_lines(value, dotted, lines)


def _check_keys(
    data: Any, spec: Any, path: tuple[str, ...], label: str, lines: Mapping[str, int]
) -> Iterator[str]:
    """Refuse unknown keys at once; yield the known serving keys mmdemo does not apply (refused if used)."""
    if spec in (APPLIED, IGNORED) or not isinstance(data, dict):
        return
    for key, value in data.items():
        dotted = ".".join((*path, str(key)))
        where = f"{label}:{lines.get(dotted, '?')}"
        inner = spec.get(str(key), spec.get(_EACH)) if isinstance(spec, dict) else None
        if inner is None:
            options = [k for k in spec if k != _EACH] if isinstance(spec, dict) else []
            close = difflib.get_close_matches(str(key), options, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProfileError(
                f"{where}: unknown recipe key {dotted!r}{hint}: it may change how vLLM serves, "
                "and mmdemo applies only the keys it knows"
            )
        if inner == NOT_APPLIED:
            yield f"{where}: recipe key {dotted!r} changes how vLLM serves and mmdemo does not apply it"
            continue
        yield from _check_keys(value, inner, (*path, str(key)), label, lines)


def _build(path: Path, text: str, data: dict[str, Any], lines: dict[str, int], refusals: list[str]) -> Recipe:
    label = str(path)

    def where(key: str) -> str:
        return f"{label}:{lines.get(key, '?')}"

    def strings(value: Any, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise ProfileError(f"{where(key)}: {key} must be a list of strings, got {value!r}")
        return tuple(str(v) for v in value)

    def env(value: Any, key: str) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(re.fullmatch(r"[A-Za-z_]\w*", str(k)) for k in value):
            raise ProfileError(f"{where(key)}: {key} must map variable names to values, got {value!r}")
        if any(isinstance(v, (dict, list)) for v in value.values()):
            raise ProfileError(f"{where(key)}: {key} values must be plain strings")
        return {str(k): _env_text(v) for k, v in value.items()}

    def mapping(value: Any, key: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ProfileError(f"{where(key)}: {key} must be a mapping, got {value!r}")
        return value

    def version(value: Any, key: str) -> str | None:
        if value is None:
            return None
        text = str(value).strip()
        if text != "nightly" and not re.fullmatch(r"\d+(\.\d+){0,2}", text):
            raise ProfileError(f"{where(key)}: {key} = {value!r} is not a version like 0.11.0 (or nightly)")
        return text

    def number(value: Any, key: str, kind: type[int] | type[float]) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ProfileError(f"{where(key)}: {key} = {value!r} is not a number >= 0")
        if kind is int and (value != int(value) or value < 1):
            raise ProfileError(f"{where(key)}: {key} = {value!r} is not a whole number >= 1")
        return kind(value)

    def overrides(value: Any, key: str) -> dict[str, Override]:
        out = {}
        for name, inner in mapping(value, key).items():
            k = f"{key}.{name}"
            body = mapping(inner, k)
            out[str(name).lower()] = Override(
                k,
                strings(body.get("extra_args"), f"{k}.extra_args"),
                env(body.get("extra_env"), f"{k}.extra_env"),
            )
        return out

    model = data["model"]
    model_id = model.get("model_id")
    if not isinstance(model_id, str) or not model_id.strip():
        raise ProfileError(f"{where('model')}: missing recipe key 'model.model_id'")
    features: dict[str, Override] = {}
    feature_refusals: dict[str, tuple[str, ...]] = {}
    for name, value in mapping(data.get("features"), "features").items():
        key = f"features.{name}"
        features[str(name)] = Override(key, strings(mapping(value, key).get("args"), f"{key}.args"))
        feature_refusals[str(name)] = tuple(r for r in refusals if f"'{key}." in r)
    opt_in = strings(data.get("opt_in_features"), "opt_in_features")
    for name in opt_in:
        if name not in features:
            raise ProfileError(
                f"{where('opt_in_features')}: opt_in_features names {name!r}, no feature of the recipe"
            )
    variants: dict[str, Variant] = {}
    for name, value in mapping(data.get("variants"), "variants").items():
        key = f"variants.{name}"
        body = mapping(value, key)
        vid = body.get("model_id")
        if vid is not None and not isinstance(vid, str):
            raise ProfileError(f"{where(key + '.model_id')}: {key}.model_id must be a string")
        variants[str(name)] = Variant(
            name=str(name),
            model_id=vid,
            vram_minimum_gb=number(body.get("vram_minimum_gb"), f"{key}.vram_minimum_gb", float),
            extra=Override(
                key,
                strings(body.get("extra_args"), f"{key}.extra_args"),
                env(body.get("extra_env"), f"{key}.extra_env"),
            ),
            tp=number(body.get("tp"), f"{key}.tp", int),
            min_vllm_version=version(body.get("min_vllm_version"), f"{key}.min_vllm_version"),
            hardware=overrides(body.get("hardware_overrides"), f"{key}.hardware_overrides"),
            not_applied=tuple(r for r in refusals if f"'{key}." in r),
        )
    if not variants:
        variants["default"] = Variant("default", None, None, Override("model"))
    single = mapping(mapping(data.get("strategy_overrides"), "strategy_overrides").get("single_node_tp"), "s")
    skey = "strategy_overrides.single_node_tp"
    senv = {**env(single.get("env"), f"{skey}.env"), **env(single.get("extra_env"), f"{skey}.extra_env")}
    meta = mapping(data.get("meta"), "meta")
    unused = ("'features.", "'variants.")
    return Recipe(
        path=path,
        text=text,
        slug=_slug(path, model_id),
        model_id=model_id.strip(),
        min_vllm_version=version(model.get("min_vllm_version"), "model.min_vllm_version"),
        base=Override(
            "model",
            strings(model.get("base_args"), "model.base_args"),
            env(model.get("base_env"), "model.base_env"),
        ),
        features=features,
        opt_in=opt_in,
        feature_refusals=feature_refusals,
        variants=variants,
        hardware=overrides(data.get("hardware_overrides"), "hardware_overrides"),
        strategy=Override(skey, strings(single.get("extra_args"), f"{skey}.extra_args"), senv),
        strategy_tp=number(single.get("tp"), f"{skey}.tp", int),
        strategy_hardware=overrides(single.get("hardware_overrides"), f"{skey}.hardware_overrides"),
        tasks=tuple(str(t) for t in meta.get("tasks") or ()),
        verified={str(k): str(v) for k, v in mapping(meta.get("hardware"), "meta.hardware").items()},
        lines=lines,
        refusals=tuple(r for r in refusals if not any(u in r for u in unused)),
    )


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _slug(path: Path, model_id: str) -> str:
    """ORG/MODEL: from the path under models/, else the file's directory and name."""
    parts = path.resolve().parts
    if "models" in parts[:-1]:
        index = len(parts) - 1 - parts[::-1].index("models")
        rest = parts[index + 1 :]
        if len(rest) == 2:
            return f"{rest[0]}/{Path(rest[1]).stem}"
    return f"{path.resolve().parent.name}/{path.stem}"


def record_of(profile: Profile) -> RecipeRecord | None:
    """The recipe a profile was made from, as report.json keeps it."""
    if profile.recipe is None:
        return None
    return RecipeRecord(**profile.recipe.model_dump(mode="json"))


# -- choosing: the variant by memory, the features asked, the vLLM version --------------------------


@dataclass(frozen=True)
class Choice:
    """The recipe's variant and features a run applies, and why this variant."""

    variant: Variant
    features: tuple[str, ...]
    reason: str

    def model_id(self, recipe: Recipe) -> str:
        return self.variant.model_id or recipe.model_id


def choose(
    recipe: Recipe,
    *,
    memory_gb: float | None,
    where: str,
    variant: str | None = None,
    features: Sequence[str] = (),
    without: Sequence[str] = (),
) -> Choice:
    """The variant (`variant`, else the one `memory_gb` holds: default first, else the largest that
    fits) and the features: every one not opt-in, opt-in ones only when asked, less those `without`."""
    for name in (*features, *without):
        if name not in recipe.features:
            raise UsageError(
                f"{recipe.path}: no feature {name!r}{_close(name, recipe.features)}",
                hint=f"its features: {', '.join(recipe.features) or '(none)'}",
            )
    chosen, reason = _variant(recipe, memory_gb, where, variant)
    applied = tuple(
        f for f in recipe.features if (f not in recipe.opt_in or f in features) and f not in without
    )
    refusals = [*recipe.refusals, *chosen.not_applied]
    refusals += [r for f in applied for r in recipe.feature_refusals.get(f, ())]
    if refusals:
        raise ProfileError(refusals[0])
    return Choice(chosen, applied, reason)


def _variant(recipe: Recipe, memory_gb: float | None, where: str, asked: str | None) -> tuple[Variant, str]:
    def need(v: Variant) -> str:
        return f"{v.vram_minimum_gb:g} GB ({recipe.line(f'variants.{v.name}.vram_minimum_gb')})"

    def fits(v: Variant) -> bool:
        return memory_gb is None or v.vram_minimum_gb is None or v.vram_minimum_gb <= memory_gb * FIT_SLACK

    have = f"{where} has {memory_gb:.0f} GB" if memory_gb is not None else ""
    if asked is not None:
        if asked not in recipe.variants:
            raise UsageError(
                f"{recipe.path}: no variant {asked!r}{_close(asked, recipe.variants)}",
                hint=f"its variants: {', '.join(recipe.variants)}",
            )
        v = recipe.variants[asked]
        if not fits(v):
            raise PreflightError(f"recipe variant {asked!r} needs {need(v)} and {have}")
        return v, f"variant {asked} (asked for)"
    fitting = [v for v in recipe.variants.values() if fits(v)]
    if not fitting:
        needs = ", ".join(f"{v.name} {v.vram_minimum_gb:g} GB" for v in recipe.variants.values())
        raise PreflightError(f"{recipe.path}: no variant fits: {have}; the variants need {needs}")
    if "default" in recipe.variants and recipe.variants["default"] in fitting:
        v = recipe.variants["default"]
    else:
        v = max(fitting, key=lambda c: c.vram_minimum_gb or 0)
    sized = f"{v.vram_minimum_gb:g} GB needed, {have}" if v.vram_minimum_gb is not None and have else ""
    return v, f"variant {v.name}" + (f" ({sized})" if sized else "")


def check_version(recipe: Recipe, choice: Choice, installed: str, vllm_path: str) -> str | None:
    """Refuse a vLLM older than the recipe's minimum (the variant's own first); the minimum, or None."""
    need = choice.variant.min_vllm_version or recipe.min_vllm_version
    key = (
        f"variants.{choice.variant.name}.min_vllm_version"
        if choice.variant.min_vllm_version
        else "model.min_vllm_version"
    )
    if need is None:
        return None
    if need == "nightly":
        if "dev" not in installed:
            raise PreflightError(
                f"{recipe.line(key)}: the recipe needs a nightly vLLM, and {vllm_path} is {installed}"
            )
        return None
    if version_tuple(installed) < version_tuple(need):
        raise PreflightError(
            f"{recipe.line(key)}: the recipe needs vLLM >= {need}, and {vllm_path} is {installed}",
            hint="upgrade vLLM, pass --vllm-bin pointing at a newer one, or --image vllm/vllm-openai:v"
            + need,
        )
    return ".".join(need.split(".")[:3])


def model_text(recipe: Recipe, choice: Choice) -> str:
    """The variant's model as `parse_ref` takes it: a directory beside the recipe is made absolute."""
    text = choice.model_id(recipe)
    beside = recipe.path.parent / text
    return str(beside.resolve()) if not Path(text).is_absolute() and beside.is_dir() else text


def memory_of(gpus: Sequence[Gpu], host_bytes: int | None) -> tuple[float | None, str]:
    """What a variant must fit, in GB as `vram_minimum_gb` counts: the GPUs of the smallest class found,
    together, else the host's memory (None: not checked)."""
    by_class: dict[str, list[Gpu]] = {}
    for g in gpus:
        by_class.setdefault(g.gpu_class or g.name, []).append(g)
    if not by_class:
        if host_bytes is None:
            return None, "this machine"
        return host_bytes / 1e9, "this machine (no GPU: its memory)"
    name, found = min(by_class.items(), key=lambda kv: sum(g.memory_total_mib for g in kv[1]))
    return sum(g.memory_total_mib for g in found) * 2**20 / 1e9, f"{len(found)} x {name}"


def _close(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
