"""What the user typed where a profile is expected: a profile, a local model directory, or a hub id.

    parse_ref("cpu-tiny-omni")                  -> ProfileRef   (a name on the search path)
    parse_ref("my/profile.yaml")                -> ProfileRef   (a file)
    parse_ref("~/.cache/mmdemo/models/tiny-x")  -> LocalModel   (a directory with config.json)
    parse_ref("mmdemo:tiny-llava")              -> LocalModel   (a built tiny model)
    parse_ref("Qwen/Qwen2.5-VL-3B-Instruct@main") -> HubModel   (org/name, optionally @revision)
    parse_ref("recipes/models/Qwen/X.yaml")     -> RecipeRef    (a vLLM recipe, a directory of them,
                                                                 or recipe:ORG/MODEL)

`matching_profile(ref)` finds a shipped or user profile whose `model` is that model: it wins over a
derivation. A hub id with a revision matches no profile (a profile pins no revision).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.errors import MMDemoError, ProfileError
from orchestrator.core.paths import models_dir, packaged_profiles_dir
from orchestrator.model.recipe import is_recipe_ref
from orchestrator.profile.schema import LOCAL_MODEL_PREFIX as LOCAL_PREFIX
from orchestrator.profile.schema import iter_profile_files, parse_profile_file

# The hub's repo ids: an owner and a name of letters, digits, '-', '_', '.'; a revision after '@'.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96})(?:@(?P<rev>[\w./-]{1,200}))?$")


@dataclass(frozen=True)
class ProfileRef:
    """A profile name or a path to a profile file: `profile.load_profile` takes it from here."""

    text: str


@dataclass(frozen=True)
class RecipeRef:
    """A vLLM recipe: a file, a directory of recipes, or `recipe:ORG/MODEL` (model/recipe.py)."""

    text: str


@dataclass(frozen=True)
class LocalModel:
    """A model directory on this machine (it has a config.json)."""

    text: str
    path: Path  # absolute, symlinks resolved

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class HubModel:
    """A Hugging Face hub model, optionally at a revision (branch, tag or commit)."""

    text: str
    repo_id: str
    revision: str | None = None

    @property
    def name(self) -> str:
        return self.repo_id.rsplit("/", 1)[1]


ModelRef = LocalModel | HubModel
Ref = ProfileRef | RecipeRef | LocalModel | HubModel


@dataclass(frozen=True)
class ProfileMatch:
    """A profile file whose model is the one asked for; `shipped` when it comes with mmdemo."""

    path: Path
    name: str
    shipped: bool

    @property
    def line(self) -> str:
        """One line saying which profile is used and why."""
        kind = "shipped" if self.shipped else "user"
        return f"using the {kind} profile {self.name!r} ({self.path}) for this model"


def parse_ref(text: str) -> Ref:
    """Classify what was typed; a directory without config.json is an error naming both readings."""
    if is_recipe_ref(text):
        return RecipeRef(text)
    if text.startswith(LOCAL_PREFIX):
        name = text[len(LOCAL_PREFIX) :]
        return LocalModel(text=text, path=(models_dir() / name).resolve())
    path = Path(text).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        return ProfileRef(text)
    if path.is_dir():
        if (path / "config.json").is_file():
            return LocalModel(text=text, path=path.resolve())
        raise ProfileError(
            f"{text}: a directory with no config.json: neither a profile file nor a model directory, "
            "and no vLLM recipe in it"
        )
    if (match := _HUB_ID.match(text)) and not text.startswith((".", "/", "~")):
        return HubModel(text=text, repo_id=match["repo"], revision=match["rev"])
    return ProfileRef(text)


def matching_profile(ref: ModelRef, profiles_dir: str | None = None) -> ProfileMatch | None:
    """The first profile on the search path whose model is `ref` (invalid profiles are passed over)."""
    if isinstance(ref, HubModel) and ref.revision is not None:
        return None
    shipped_dir = packaged_profiles_dir().resolve()
    for path in iter_profile_files(profiles_dir):
        try:
            profile = parse_profile_file(path)
        except MMDemoError:
            continue
        if _same_model(ref, profile.model, profile.model_path):
            shipped = path.resolve().parent == shipped_dir
            return ProfileMatch(path=path, name=profile.name, shipped=shipped)
    return None


def _same_model(ref: ModelRef, model: str, model_path: str) -> bool:
    if isinstance(ref, HubModel):
        return model.casefold() == ref.repo_id.casefold()  # the hub resolves ids case-insensitively
    if model.startswith((LOCAL_PREFIX, "/", "./", "../", "~")):
        return Path(model_path).expanduser().resolve() == ref.path
    return False
