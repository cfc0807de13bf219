"""How many bytes a model's weights are, without downloading them; and whether the hub lets us in.

A local directory (or a hub snapshot in the HF cache): the sizes of its weight files. A hub id: one
`model_info(files_metadata=True)` request, which lists every file with its size (the LFS size for
weights), the commit the revision points at, whether the repo is gated and, where the hub computed
it, the parameter count by dtype. A gated repo without a token, or with a token it refuses, is a
one-line refusal. Where the hub cannot be asked (HF_HUB_OFFLINE, or no connection), `hub_repo` raises
`HubUnreachable` and the caller turns to the cache: `cached_snapshot` finds a complete snapshot there
or refuses in one line (`HubUnavailable`) naming the cache and how to fill it. Where the hub and the
cache are, and the token, is the caller's `HfEnv` (core/hfenv.py).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.errors import HubUnavailable, HubUnreachable, PreflightError
from orchestrator.core.hfenv import HfEnv

log = logging.getLogger(__name__)

GIB = 1024**3
# huggingface_hub waits forever by default: a route that drops packets would hang the run (each network
# step, not the whole answer, must come within this).
HUB_TIMEOUT_S = 15.0
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # a sharded checkpoint's map
_TOKEN_HINT = "accept the model's licence on its hub page, then export HF_TOKEN=... (a token with access)"


@dataclass(frozen=True)
class Weights:
    """The weight files vLLM would load and their total size on disk."""

    bytes: int
    files: tuple[str, ...]
    source: str  # where the sizes come from, for the derivation's provenance
    parameters: Mapping[str, int] = field(default_factory=dict)  # dtype -> count, where the hub says

    @property
    def gib(self) -> float:
        return self.bytes / GIB


@dataclass(frozen=True)
class HubRepo:
    """What the hub says about one model repository at one revision."""

    repo_id: str
    revision: str | None
    sha: str | None
    gated: bool
    files: Mapping[str, int]  # path -> size in bytes (0 where the hub gave none)
    parameters: Mapping[str, int] = field(default_factory=dict)


def weight_files(sizes: Mapping[str, int]) -> dict[str, int]:
    """The files vLLM loads of a listing: top-level safetensors, else PyTorch checkpoints."""
    top = {name: size for name, size in sizes.items() if "/" not in name}
    safetensors = {n: s for n, s in top.items() if n.endswith(".safetensors")}
    if safetensors:
        # Mistral repos carry consolidated.safetensors beside the sharded copy; vLLM loads one.
        sharded = {n: s for n, s in safetensors.items() if not n.startswith("consolidated")}
        return sharded or safetensors
    return {
        n: s
        for n, s in top.items()
        if n.endswith((".bin", ".pt", ".pth")) and n.startswith(("pytorch_model", "model"))
    }


def local_weights(directory: Path) -> Weights:
    """The weight bytes of a model directory."""
    sizes = {p.name: p.stat().st_size for p in directory.iterdir() if p.is_file()}
    chosen = weight_files(sizes)
    return Weights(
        bytes=sum(chosen.values()),
        files=tuple(sorted(chosen)),
        source=f"{len(chosen)} weight file(s) in {directory}",
    )


def hub_weights(repo: HubRepo) -> Weights:
    """The weight bytes of a hub repo, from its file listing (nothing downloaded)."""
    chosen = weight_files(repo.files)
    at = f"@{repo.sha[:12]}" if repo.sha else ""
    return Weights(
        bytes=sum(chosen.values()),
        files=tuple(sorted(chosen)),
        source=f"the hub's sizes of {len(chosen)} weight file(s) of {repo.repo_id}{at}",
        parameters=dict(repo.parameters),
    )


def hub_repo(repo_id: str, revision: str | None, hf: HfEnv) -> HubRepo:
    """One model_info request to the hub; a missing repo or revision is a one-line refusal.

    Raises `HubUnreachable` where the hub cannot be asked (HF_HUB_OFFLINE, no connection): the caller
    may turn to the cache (`cached_snapshot`).
    """
    where = f"{repo_id}@{revision}" if revision else repo_id
    if hf.offline:
        raise HubUnreachable(where, "HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        api = HfApi(endpoint=hf.endpoint, token=hf.token or False)
        info = api.model_info(repo_id, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except RevisionNotFoundError:
        raise PreflightError(f"{where}: the hub has no revision {revision!r} of {repo_id}") from None
    except RepositoryNotFoundError:
        raise PreflightError(
            f"{where}: no such profile, and no model {repo_id!r} on the hub (or it is private)",
            hint="`mmdemo list` shows the profiles; a private model needs HF_TOKEN",
        ) from None
    except HfHubHTTPError as exc:
        raise PreflightError(f"{where}: the hub answered: {_first_line(exc)}") from None
    except Exception as exc:  # transport errors differ between huggingface_hub (httpx, requests) releases
        if unreachable(exc):
            raise HubUnreachable(where, unreachable_why(hf, exc)) from None
        if isinstance(exc, OSError):
            raise PreflightError(
                f"{where}: asking the hub at {hf.endpoint} failed: {_first_line(exc)}"
            ) from None
        raise
    files = {s.rfilename: (s.lfs.size if s.lfs else s.size) or 0 for s in info.siblings or ()}
    parameters = dict(info.safetensors.parameters) if info.safetensors else {}
    return HubRepo(
        repo_id=repo_id,
        revision=revision,
        sha=info.sha,
        gated=bool(info.gated),
        files=files,
        parameters=parameters,
    )


def check_access(repo: HubRepo, hf: HfEnv) -> None:
    """Refuse a gated repo without a token, or one whose token the hub turns away (a HEAD of config.json)."""
    if not repo.gated:
        return
    token = hf.token
    if not token:
        raise PreflightError(
            f"{repo.repo_id} is a gated model and no Hugging Face token is set", hint=_TOKEN_HINT
        )
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    url = hf_hub_url(repo.repo_id, "config.json", revision=repo.sha or repo.revision, endpoint=hf.endpoint)
    try:
        get_hf_file_metadata(url, token=token)
    except GatedRepoError:
        raise PreflightError(
            f"{repo.repo_id} is a gated model and the hub refuses this token access to it", hint=_TOKEN_HINT
        ) from None
    except HfHubHTTPError as exc:
        raise PreflightError(f"{repo.repo_id}: the hub answered: {_first_line(exc)}") from None
    except Exception as exc:
        if unreachable(exc):
            raise HubUnreachable(repo.repo_id, unreachable_why(hf, exc)) from None
        if isinstance(exc, OSError):
            raise PreflightError(
                f"{repo.repo_id}: asking the hub at {hf.endpoint} failed: {_first_line(exc)}"
            ) from None
        raise


# Connection failures, by class name: httpx (huggingface_hub 1.x), requests (0.x), huggingface_hub's own.
_UNREACHABLE = {
    "ConnectError",
    "ConnectionError",
    "NetworkError",
    "OfflineModeIsEnabled",
    "ProxyError",
    "RemoteProtocolError",
    "Timeout",
    "TimeoutException",
    "TransportError",
}


def unreachable(exc: BaseException) -> bool:
    """True for a failure to talk to the hub at all (refused, no route, no name, a timeout, offline mode)."""
    if isinstance(exc, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    return any(c.__name__ in _UNREACHABLE for c in type(exc).__mro__)


def unreachable_why(hf: HfEnv, exc: BaseException) -> str:
    """`the hub at URL cannot be reached (ConnectError: ...)`: one line."""
    return f"the hub at {hf.endpoint} cannot be reached ({type(exc).__name__}: {_first_line(exc)})"


def cached_snapshot(hf: HfEnv, model: str, repo_id: str, revision: str | None, why: str) -> Path:
    """The complete snapshot of `repo_id` in the HF cache, or a one-line refusal naming the cache searched."""
    folder = hf.snapshot(repo_id, revision)
    if folder is None:
        raise HubUnavailable(model, str(hf.hub_cache), why)
    if (gap := snapshot_gap(folder)) is not None:
        raise HubUnavailable(model, str(hf.hub_cache), why, gap)
    return folder


def snapshot_gap(folder: Path) -> str | None:
    """What a cached snapshot lacks for vLLM to serve it (a file whose blob is missing, the config, the
    weights or one of their shards), or None when it is complete."""
    broken = sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() and not p.exists()
    )
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        return f"{broken[0]}{more} not downloaded"
    if not (folder / "config.json").is_file():
        return "no config.json"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    index = next((n for n in _INDEXES if n in sizes), None)
    if index is not None:
        try:
            shards = set(json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} does not parse"
        if missing := sorted(str(s) for s in shards if s not in sizes):
            return f"{len(missing)} of the {len(shards)} weight shards in {index} missing, {missing[0]} first"
        if shards:
            return None
    return None if weight_files(sizes) else "no weight files"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
