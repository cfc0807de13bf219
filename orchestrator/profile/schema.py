"""The profile: one YAML file per model, parsed in one place into typed, frozen objects.

Every validation failure becomes one `ProfileError` line naming the file, the line, the key path and
the bad value, with a "did you mean ...?" hint for misspelled keys.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from orchestrator.core.chattypes import CHAT_TYPE_NEEDS, ChatType
from orchestrator.core.errors import ProfileError
from orchestrator.core.paths import models_dir, profile_search_path
from orchestrator.core.tasks import MEDIA_FEATURES, ROUTES, SPEECH_TASKS, Task, version_tuple
from orchestrator.gpus.detect import CPU, VARIANT_NAMES, canonical_class
from orchestrator.profile.expect import alternatives

LOCAL_MODEL_PREFIX = "mmdemo:"

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")
# An image reference as docker and podman take it: [registry[:port]/]name[:tag][@digest], no spaces.
IMAGE_REF = r"^[a-z0-9][a-z0-9._/:@-]*[A-Za-z0-9_.-]*$"

# Flags mmdemo itself owns for every launch; a profile may not set them through extra_args.
OWNED_FLAGS = {
    "--host": "the host comes from `--host` on mmdemo's command line",
    "--port": "the port comes from `--port` on mmdemo's command line",
    "--api-key": "mmdemo passes a fresh API key per run through VLLM_API_KEY",
    "--allowed-local-media-path": "mmdemo points it at its asset directory",
    "--served-model-name": "use the profile's served_model_name",
    "--model": "use the profile's model",
}
# Flags vLLM removed; a hint beats the server's own argparse error minutes into a run.
REMOVED_FLAGS = {
    "--task": "`--task` was replaced by `--runner` in vLLM 0.10+; use serve.runner",
    "--device": "`--device` is gone: the platform comes from the installed build",
}


# Other spellings vLLM's serve parser accepts for a flag mmdemo names or owns (vLLM 0.32's parser).
FLAG_ALIASES = {
    "-tp": "--tensor-parallel-size",
    "--device-memory-utilization": "--gpu-memory-utilization",
}


def _plain_option(arg: str) -> str | None:
    """The option an argv word spells, normalised the way vLLM's FlexibleArgumentParser does.

    `--max_model_len=10` -> `--max-model-len`; `--limit-mm-per-prompt.image` -> `--limit-mm-per-prompt`;
    `--no-enforce-eager` -> `--enforce-eager`; `-tp` -> `--tensor-parallel-size`; values -> None.
    """
    if not arg.startswith("-") or arg in ("-", "--") or arg[1:2].isdigit():
        return None
    key = arg.split("=", 1)[0].split(".", 1)[0]
    if not key.startswith("--"):
        return FLAG_ALIASES.get(key, key)
    key = "--" + key[2:].replace("_", "-")
    if key.startswith("--no-"):
        key = "--" + key[len("--no-") :]
    return FLAG_ALIASES.get(key, key)


def option_name(arg: str, known: Iterable[str] = ()) -> str | None:
    """The flag vLLM's parser takes an argv word for, `known` flags' abbreviations resolved.

    argparse accepts any unambiguous prefix of a long option (`--max-model` is `--max-model-len`);
    no vLLM 0.32 serve flag is a prefix of one mmdemo names or owns, so such a prefix can only be that.
    """
    key = _plain_option(arg)
    if key is None or not key.startswith("--"):
        return key
    known = tuple(known)
    if key in known or key in REMOVED_FLAGS:
        return key
    longer = sorted(k for k in known if k.startswith(key) and len(key) > 3)
    return longer[0] if len(longer) == 1 else key


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServeSettings(_Frozen):
    """Named `vllm serve` settings; each owns its flag. None means "not passed"."""

    max_model_len: int | None = Field(None, gt=0)
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    runner: Literal["auto", "generate", "pooling", "draft"] | None = None
    trust_remote_code: bool | None = None
    enforce_eager: bool | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int | None = Field(None, gt=0)
    kv_cache_memory_bytes: int | Annotated[str, Field(pattern=r"^\d+(\.\d+)?[KMGT]i?B?$")] | None = None
    limit_mm_per_prompt: dict[Literal["image", "video", "audio"], Annotated[int, Field(ge=0)]] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None
    chat_template: str | None = None
    # vLLM >= 0.11.1: accept `image_embeds` parts; set by `resolve` where the image-embeds demo runs
    enable_mm_embeds: bool | None = None
    extra_args: tuple[str, ...] = ()

    @field_validator("extra_args")
    @classmethod
    def _no_owned_flags(cls, args: tuple[str, ...]) -> tuple[str, ...]:
        named = {_flag(name) for name in cls.model_fields if name != "extra_args"}
        for arg in args:
            base = option_name(arg, known=(*named, *OWNED_FLAGS))
            if base is None:
                continue
            shown = arg.split("=", 1)[0]
            if base != _plain_option(arg):
                shown = f"{shown} (vLLM reads it as {base})"
            if base in named:
                field = base[2:].replace("-", "_")
                raise ValueError(f"{shown} repeats the named setting serve.{field}; set it there instead")
            if base in OWNED_FLAGS:
                raise ValueError(f"{shown} is set by mmdemo: {OWNED_FLAGS[base]}")
            if base in REMOVED_FLAGS:
                raise ValueError(REMOVED_FLAGS[base])
        return args

    def merged(self, override: ServeSettings) -> ServeSettings:
        """These settings with the fields `override` sets replacing ours."""
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class Requirements(_Frozen):
    """What a machine needs for this profile (or variant) to run."""

    gpu_memory_gib: float | None = Field(None, ge=0)
    gpu_count: int | None = Field(None, ge=0)
    hf_token: bool | None = None
    vllm_version: str | None = None

    @field_validator("vllm_version")
    @classmethod
    def _version_form(cls, value: str | None) -> str | None:
        if value is not None and not _VERSION.match(value):
            raise ValueError(f"{value!r} is not a version like 0.10 or 0.10.2")
        return value

    def merged(self, override: Requirements) -> Requirements:
        return self.model_copy(update=override.model_dump(exclude_unset=True))


class Variant(_Frozen):
    """Overrides for one target (a GPU class or `cpu`)."""

    serve: ServeSettings = ServeSettings()
    image: str | None = Field(None, pattern=IMAGE_REF)  # run vLLM in this container image
    env: dict[str, str] = {}
    requires: Requirements = Requirements()
    ready_timeout_s: float | None = Field(None, gt=0)
    unsupported: str | None = None
    notes: str | None = None


class Demo(_Frozen):
    """One chat type to run, with optional per-demo settings."""

    chat_type: ChatType
    max_completion_tokens: int | None = Field(None, gt=0)
    expect: tuple[str, ...] = ()  # groups of alternatives, "duck|mallard|bird" (see expect.py)
    media: tuple[str, ...] = ()

    @field_validator("expect")
    @classmethod
    def _expect_groups(cls, groups: tuple[str, ...]) -> tuple[str, ...]:
        for group in groups:
            alternatives(group)
        return groups


class TaskDemo(_Frozen):
    """One task past chat to run (core/tasks.py), named under `demos:` beside the chat types."""

    task: Task
    expect: tuple[str, ...] = ()  # transcription/translation: the words; classify: the labels allowed
    media: tuple[str, ...] = ()  # speech tasks: the profile's own clip instead of the known-answer one

    @model_validator(mode="after")
    def _media_for_speech(self) -> TaskDemo:
        takes = (*SPEECH_TASKS, Task.IMAGE_EMBEDS)  # a clip; image-embeds: a torch-saved embeddings file
        if self.media and self.task not in takes:
            raise ValueError(
                f"media: only {', '.join(t.value for t in takes)} take the profile's own "
                f"media (one file); {self.task.value} sends the known-answer images"
            )
        if len(self.media) > 1:
            raise ValueError(f"media: {self.task.value} sends one file; {len(self.media)} are listed")
        return self

    @field_validator("expect")
    @classmethod
    def _expect_groups(cls, groups: tuple[str, ...]) -> tuple[str, ...]:
        for group in groups:
            alternatives(group)
        return groups


def _split_demos(data: Any) -> Any:
    """`demos:` names chat types and tasks alike: tasks move to `tasks`, each checked here so that a
    bad one is named by its place under `demos`."""
    if not isinstance(data, dict):
        return data
    if "tasks" in data:
        raise ValueError("[tasks] unknown key: tasks are named under demos (e.g. `demos: [transcription]`)")
    demos = data.get("demos")
    if not isinstance(demos, list):
        return data
    chats: list[Any] = []
    tasks: list[TaskDemo] = []
    chat_names = [c.value for c in ChatType]
    task_names = [t.value for t in Task]
    for index, entry in enumerate(demos):
        name = entry if isinstance(entry, str) else None
        if isinstance(entry, dict) and "task" in entry:
            if "chat_type" in entry:
                raise ValueError(
                    f"[demos.{index}] names both chat_type {entry['chat_type']!r} and task "
                    f"{entry['task']!r}: one of the two per demo"
                )
            try:
                tasks.append(TaskDemo.model_validate(entry))
            except ValidationError as exc:
                first = exc.errors()[0]
                key = ".".join(str(p) for p in first["loc"])
                message = str(first["msg"]).removeprefix("Value error, ")
                if not key:  # the demo as a whole (its own check names the key)
                    raise ValueError(f"[demos.{index}] {message}") from None
                raise ValueError(f"[demos.{index}.{key}] {entry.get(key, '')!r}: {message}") from None
        elif name in task_names:
            tasks.append(TaskDemo(task=Task(name)))
        elif name is not None and name not in chat_names:
            hint = _did_you_mean(name, [*chat_names, *task_names])
            raise ValueError(
                f"[demos.{index}] {name!r} is neither a chat type ({', '.join(chat_names)}) nor a task "
                f"({', '.join(task_names)}){hint}"
            )
        else:
            chats.append(entry)
    return {**data, "demos": chats, "tasks": tasks}


class RecipeOrigin(_Frozen):
    """The vLLM recipe a profile was made from (orchestrator/model/recipe.py): which file, variant, features."""

    path: str  # the recipe file (a fetched `recipe:ORG/MODEL` is cached under mmdemo's cache)
    slug: str  # ORG/MODEL, as the recipes repository files it (models/ORG/MODEL.yaml)
    sha256: str  # of the recipe's text: a patch is made against the text that ran
    variant: str
    features: tuple[str, ...] = ()
    model_id: str


class Profile(_Frozen):
    """A model, the flags it needs per target, the environment and the demos to run."""

    name: str
    model: str
    served_model_name: str | None = None
    description: str = ""
    source: str = ""
    serve: ServeSettings = ServeSettings()
    image: str | None = Field(None, pattern=IMAGE_REF)  # run vLLM in this container image (--image wins)
    env: dict[str, str] = {}
    requires: Requirements = Requirements()
    ready_timeout_s: float = Field(900, gt=0)
    variants: dict[str, Variant] = {}
    demos: tuple[Demo, ...]  # the chat types
    tasks: tuple[TaskDemo, ...] = ()  # the tasks past chat, named under `demos:` too (_split_demos)
    recipe: RecipeOrigin | None = None  # made from a vLLM recipe: `report --recipe-patch` reads it
    path: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _tasks_apart(cls, data: Any) -> Any:
        return _split_demos(data)

    @model_serializer(mode="wrap")
    def _tasks_back(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A dump names the tasks under `demos:`, as the YAML does: it parses back to this profile."""
        data = handler(self)
        if isinstance(data, dict) and "tasks" in data:
            data["demos"] = [*data.get("demos", []), *data.pop("tasks")]
        return data

    @field_validator("demos", mode="before")
    @classmethod
    def _demo_shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"chat_type": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not _ENV_NAME.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return env

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, variants: dict[str, Variant]) -> dict[str, Variant]:
        canonical: dict[str, Variant] = {}  # keys in any case ("h100"), kept as GPU_CLASSES spells them
        for name, variant in variants.items():
            known = canonical_class(name)
            if known is None:
                hint = _did_you_mean(name, VARIANT_NAMES)
                raise ValueError(f"unknown variant {name!r}{hint}; known: {', '.join(VARIANT_NAMES)}")
            if known in canonical:
                raise ValueError(f"variant {name!r} repeats {known!r} (GPU class names ignore case)")
            canonical[known] = variant
        return canonical

    @model_validator(mode="after")
    def _embeds_enabled(self) -> Profile:
        if not any(t.task is Task.IMAGE_EMBEDS for t in self.tasks):
            return self
        settings = [("serve", self.serve)] + [
            (f"variants.{n}.serve", v.serve) for n, v in self.variants.items()
        ]
        for where, serve in settings:
            if serve.enable_mm_embeds is False:
                raise ValueError(
                    f"[{where}.enable_mm_embeds] false: the image-embeds demo needs --enable-mm-embeds "
                    "(vLLM refuses image_embeds without it)"
                )
        return self

    @model_validator(mode="after")
    def _demos_fit_limits(self) -> Profile:
        if not self.demos and not self.tasks:
            raise ValueError("[demos] the list is empty: name at least one chat type or task")
        targets: list[tuple[str, ServeSettings]] = [("serve", self.serve)]
        targets += [(f"variants.{n}.serve", self.serve.merged(v.serve)) for n, v in self.variants.items()]
        for where, serve in targets:
            limits = serve.limit_mm_per_prompt
            if limits is None:
                continue  # vLLM's default allows any number of each modality
            for index, demo in enumerate(self.demos):
                need = CHAT_TYPE_NEEDS[demo.chat_type]
                if need and limits.get(need[0], 0) < need[1]:  # type: ignore[call-overload]
                    modality, count = need
                    allowed = limits.get(modality, 0)  # type: ignore[call-overload]
                    raise ValueError(
                        f"[demos.{index}] {demo.chat_type.value!r} sends {count} {modality}(s) per prompt "
                        f"but {where}.limit_mm_per_prompt allows {allowed}"
                    )
        if not self.variants:
            raise ValueError(
                "[variants] none: name at least one target it runs on (e.g. H100: {} or cpu: {})"
            )
        return self

    # -- derived views -------------------------------------------------------------------------

    @property
    def chat_types(self) -> tuple[ChatType, ...]:
        return tuple(d.chat_type for d in self.demos)

    @property
    def local_model(self) -> str | None:
        """The tiny-model builder name for `mmdemo:NAME` models, else None."""
        if self.model.startswith(LOCAL_MODEL_PREFIX):
            return self.model[len(LOCAL_MODEL_PREFIX) :]
        return None

    @property
    def model_path(self) -> str:
        """What `vllm serve` is given: the hub id, the local path, or the built tiny model's directory."""
        if (local := self.local_model) is not None:
            return str(models_dir() / local)
        return self.model

    def resolve(self, variant: str) -> ResolvedProfile:
        """The settings, env and requirements for one variant (which must exist; any case)."""
        variant = canonical_class(variant) or variant
        if variant not in self.variants:
            raise ProfileError(
                f"{self.label}: profile {self.name!r} has no variant {variant!r}",
                hint=f"its variants: {', '.join(self.variants) or '(none)'}",
            )
        v = self.variants[variant]
        serve, requires = self.serve.merged(v.serve), self.requires.merged(v.requires)
        features = [t.task for t in self.tasks if t.task in MEDIA_FEATURES]
        if Task.IMAGE_EMBEDS in features and serve.enable_mm_embeds is None:  # the demo needs it: it runs
            serve = serve.model_copy(update={"enable_mm_embeds": True})
        if features:  # the newest release a feature needs: the `vllm` check refuses an older one
            need = max((ROUTES[t].added_in for t in features), key=version_tuple)
            have = requires.vllm_version
            if have is None or version_tuple(have) < version_tuple(need):
                requires = requires.model_copy(update={"vllm_version": need})
        return ResolvedProfile(
            profile=self,
            variant=variant,
            serve=serve,
            env={**self.env, **v.env},
            requires=requires,
            ready_timeout_s=v.ready_timeout_s or self.ready_timeout_s,
            unsupported=v.unsupported,
            image=v.image or self.image,
        )

    @property
    def label(self) -> str:
        return self.path or self.name

    def min_gpu_memory_gib(self) -> float | None:
        """The smallest GPU memory any supported GPU variant needs (for listings)."""
        needs = [
            self.requires.merged(v.requires).gpu_memory_gib
            for n, v in self.variants.items()
            if n != CPU and not v.unsupported
        ]
        known = [n for n in needs if n is not None]
        return min(known) if known else self.requires.gpu_memory_gib


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile with one variant applied: what the command line and preflight work from."""

    profile: Profile
    variant: str
    serve: ServeSettings
    env: Mapping[str, str]
    requires: Requirements
    ready_timeout_s: float
    unsupported: str | None
    image: str | None = None  # the container image vLLM runs in; None: vLLM on the host

    @property
    def is_cpu(self) -> bool:
        return self.variant == CPU


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


# -- loading ---------------------------------------------------------------------------------------


def find_profile(name: str, profiles_dir: str | None = None) -> Path:
    """The file for a profile name, or a path given directly."""
    candidate = Path(name).expanduser()
    if candidate.suffix in (".yaml", ".yml") or "/" in name:
        if candidate.is_file():
            return candidate
        raise ProfileError(f"{name}: {'a directory, not' if candidate.is_dir() else 'no such'} profile file")
    for directory in profile_search_path(profiles_dir):
        for suffix in (".yaml", ".yml"):
            path = directory / f"{name}{suffix}"
            if path.is_file():
                return path
    known = sorted({p.stem for p in iter_profile_files(profiles_dir)})
    raise ProfileError(
        f"no profile named {name!r}{_did_you_mean(name, known)}",
        hint=f"available: {', '.join(known)}" if known else "no profiles found; pass --profiles-dir",
    )


def iter_profile_files(profiles_dir: str | None = None) -> Iterator[Path]:
    """Every profile file on the search path; a name found earlier shadows later ones."""
    seen: set[str] = set()
    for directory in profile_search_path(profiles_dir):
        if not directory.is_dir():
            continue
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            if path.stem not in seen:
                seen.add(path.stem)
                yield path


def load_profile(name_or_path: str, profiles_dir: str | None = None) -> Profile:
    """Find, parse and validate one profile."""
    return parse_profile_file(find_profile(name_or_path, profiles_dir))


def parse_profile_file(path: Path) -> Profile:
    """Parse and validate one YAML file into a Profile, or raise a one-line ProfileError."""
    label = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_PROFILE_BYTES:  # refused before reading: a profile is a few hundred bytes
            raise ProfileError(_too_big(label, size))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{label}: cannot read profile: {exc}") from None
    return parse_profile_text(text, label, default_name=path.stem)


def parse_profile_text(text: str, label: str, default_name: str) -> Profile:
    """Parse YAML text (called `label` in messages: its file name) into a Profile."""
    if (size := len(text.encode("utf-8", "surrogatepass"))) > MAX_PROFILE_BYTES:
        raise ProfileError(_too_big(label, size))
    try:
        _refuse_anchors(text, label)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_repeated_keys(node, label, ())
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark is not None else label
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{label}: a profile must be a mapping of keys, got {type(data).__name__}")
    data.setdefault("name", default_name)
    data["path"] = label
    _anchor_media(data, Path(label).parent)
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        # Unknown keys first: a misspelled key often also makes a required key "missing".
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise ProfileError(_describe(errors[0], label, node)) from None


MAX_PROFILE_BYTES = 1_000_000


def _too_big(label: str, size: int) -> str:
    return f"{label}: {size / 1e6:.1f} MB is not a profile: a profile may be at most 1 MB"


def _refuse_anchors(text: str, label: str) -> None:
    """Refuse `&anchor` and `*alias`: 400 bytes of nested aliases expand into gigabytes of argv."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        name = getattr(event, "anchor", None)
        if name is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            where = f"{label}:{event.start_mark.line + 1}" if event.start_mark else label
            raise ProfileError(
                f"{where}: YAML {'alias' if sign == '*' else 'anchor'} {sign}{name} is not "
                "allowed in a profile (anchors and aliases can expand without bound): write the value out"
            )


def _refuse_repeated_keys(node: yaml.Node | None, label: str, path: tuple[str, ...]) -> None:
    """A key twice in one mapping is an error: YAML loaders silently keep the last one."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                dotted = ".".join((*path, key))
                raise ProfileError(
                    f"{label}:{line}: key {dotted!r} appears twice in one mapping "
                    f"(lines {seen[key]} and {line}); keep one"
                )
            if key is not None:
                seen[key] = line
            _refuse_repeated_keys(value_node, label, (*path, key or "?"))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_repeated_keys(item, label, (*path, str(index)))


def _anchor_media(data: dict[str, Any], base: Path) -> None:
    """Relative media paths in demos are relative to the profile file, not to where mmdemo runs."""
    demos = data.get("demos")
    if not isinstance(demos, list):
        return
    for demo in demos:
        media = demo.get("media") if isinstance(demo, dict) else None
        if isinstance(media, list):
            demo["media"] = [
                str(base / m)
                if isinstance(m, str) and "://" not in m and not Path(m).expanduser().is_absolute()
                else m
                for m in media
            ]


def _describe(error: Mapping[str, Any], label: str, root: yaml.Node | None) -> str:
    loc = tuple(error["loc"])
    kind = error["type"]
    if kind != "extra_forbidden":  # an unknown key's location is the key itself, whatever its name
        # pydantic appends union member names to the location; keep only real keys and indexes.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS)))
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc and (marked := _LOC_MARK.match(message)):
        # A whole-profile check names the key it is about as "[a.b] ..."
        loc = tuple(int(p) if p.isdigit() else p for p in marked.group(1).split("."))
        message = message[marked.end() :]
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(root, loc)
    where = f"{label}:{line}" if line else label
    if kind == "extra_forbidden":
        options = _fields_at(Profile, loc[:-1])
        return f"{where}: unknown key {key!r}{_did_you_mean(str(loc[-1]), options)}"
    if kind == "missing":
        return f"{where}: missing required key {key!r}"
    value = error.get("input")
    if kind.startswith(("literal_", "enum")):
        return f"{where}: {key} = {value!r} is not allowed: {message}"
    if isinstance(value, (str, int, float, bool)) and not kind.startswith("value_error"):
        return f"{where}: {key} = {value!r}: {message}"
    return f"{where}: {key}: {message}"


_LOC_MARK = re.compile(r"^\[([\w.\-]+)\] ")
_UNION_TAGS = {"int", "str", "float", "bool", "constrained-str", "function-after"}


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest YAML node that `loc` reaches."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == str(part)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The field names of the model reached by walking `path` through nested annotations."""
    current: Any = model
    for part in path:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            current = _container_value(current)  # a dict key or a list index
    inner = _inner_model(current)
    return list(inner.model_fields) if inner else []


def _container_value(annotation: Any) -> Any:
    """The value type of dict[K, V] / tuple[V, ...] / list[V], looking through `| None`."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        outer = typing.get_origin(candidate)
        args = typing.get_args(candidate)
        if outer is dict and len(args) == 2:
            return args[1]
        if outer in (tuple, list) and args:
            return args[0]
    return None


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The model class itself, or the model inside `Model | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                return arg
    return None


def _did_you_mean(word: str, options: Any) -> str:
    import difflib  # deferred: only a misspelt name needs it

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
