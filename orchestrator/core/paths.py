"""Where mmdemo keeps things: the cache (assets, tiny models), run directories, shipped profiles."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.core.environment import Environment


def cache_dir() -> Path:
    """The cache root: $MMDEMO_CACHE_DIR, else $XDG_CACHE_HOME/mmdemo, else ~/.cache/mmdemo."""
    env = Environment.read()
    if env.cache_dir:
        return Path(env.cache_dir).expanduser()
    xdg = env.xdg_cache_home or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "mmdemo"


def models_dir() -> Path:
    """Where locally built tiny models live."""
    return cache_dir() / "models"


def assets_dir() -> Path:
    """Where downloaded and synthetic demo media live."""
    return cache_dir() / "assets"


def packaged_profiles_dir() -> Path:
    """The shipped profiles: inside the wheel as package data, or at the top of a source checkout."""
    inside = Path(__file__).resolve().parents[1] / "profiles"
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parents[2] / "profiles"


def profile_search_path(profiles_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for `NAME.yaml`, first match wins."""
    dirs: list[Path] = []
    if profiles_dir:
        dirs.append(Path(profiles_dir))
    dirs.extend(Path(entry) for entry in Environment.read().profiles)
    dirs.append(Path.cwd() / "profiles")
    dirs.append(packaged_profiles_dir())
    unique: list[Path] = []
    for d in dirs:
        resolved = d.expanduser().resolve()
        if resolved not in unique:
            unique.append(resolved)
    return unique
