"""The Hugging Face environment, resolved once: where the hub is, where its cache is, offline, the token.

Every part of mmdemo that touches the hub or its cache (the prefetch, the derivation, the container's
mount, the disk and token checks, `doctor`, the report) takes an `HfEnv` built here, so all of them
name the same directory. The rules are huggingface_hub's own (its `constants.py`), read from a mapping
rather than at import:

    hub cache   HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE (its old name), else HF_HOME/hub
    HF_HOME     HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface
    token       HF_TOKEN, else HUGGING_FACE_HUB_TOKEN, else the file HF_TOKEN_PATH (HF_HOME/token)
    endpoint    HF_ENDPOINT, else https://huggingface.co
    offline     HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is 1, true, yes or on

An empty variable counts as unset. Nothing here does I/O but `token`, which reads the token file.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HfEnv:
    """Where the hub and its cache are, whether to ask the hub at all, and the token."""

    hub_cache: Path  # where snapshots live: models--ORG--NAME/{blobs,refs,snapshots}
    endpoint: str = DEFAULT_ENDPOINT
    offline: bool = False
    env_token: str | None = field(default=None, repr=False)  # HF_TOKEN / HUGGING_FACE_HUB_TOKEN
    token_path: Path | None = None  # `hf auth login`'s file; None: none is read
    hub_cache_from: str = "given"  # the variable that decided the hub cache, for doctor and errors

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> HfEnv:
        """Resolve the variables of `environ` (default: os.environ) as huggingface_hub does."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            return env.get(name) or None

        home_from = (
            "HF_HOME" if get("HF_HOME") else "XDG_CACHE_HOME" if get("XDG_CACHE_HOME") else "the default"
        )
        home = _path(get("HF_HOME") or os.path.join(get("XDG_CACHE_HOME") or "~/.cache", "huggingface"))
        cache_from = next((n for n in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE") if get(n)), None)
        hub_cache = _path(env[cache_from]) if cache_from else home / "hub"
        offline = (get("HF_HUB_OFFLINE") or get("TRANSFORMERS_OFFLINE") or "").strip().lower() in _TRUE
        return cls(
            hub_cache=hub_cache,
            endpoint=(get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            offline=offline,
            env_token=get("HF_TOKEN") or get("HUGGING_FACE_HUB_TOKEN"),
            token_path=_path(get("HF_TOKEN_PATH") or str(home / "token")),
            hub_cache_from=cache_from or home_from,
        )

    @property
    def token(self) -> str | None:
        """The token: from the environment, else from the token file (read now)."""
        if self.env_token:
            return self.env_token
        if self.token_path is None:
            return None
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return self.token_path.read_text(encoding="utf-8").strip() or None
        return None

    @property
    def token_source(self) -> str | None:
        """Where the token comes from, for `doctor` (never the token itself); None: no token."""
        if self.env_token:
            return "the environment"
        return f"the token file {self.token_path}" if self.token is not None else None

    @property
    def where(self) -> str:
        """The hub cache and the variable that put it there: `/data/hub (HF_HUB_CACHE)`."""
        return f"{self.hub_cache} ({self.hub_cache_from})"

    def repo_dir(self, repo_id: str) -> Path:
        """A model repository's folder in the hub cache."""
        return self.hub_cache / ("models--" + repo_id.replace("/", "--"))

    def snapshot(self, repo_id: str, revision: str | None = None) -> Path | None:
        """The cached snapshot folder of `repo_id` at `revision` (a branch, tag or commit), if there is one.

        As huggingface_hub finds it offline: a commit names its folder, a branch or tag its `refs/` file.
        """
        rev = revision or "main"
        storage = self.repo_dir(repo_id)
        commit = rev if _COMMIT.match(rev) else None
        if commit is None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                commit = (storage / "refs" / rev).read_text(encoding="utf-8").strip() or None
        folder = storage / "snapshots" / commit if commit else None
        return folder if folder is not None and folder.is_dir() else None


def _path(text: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(text)))
