"""How many bytes a model's weights are, without downloading them; and whether the hub lets us in.

A local directory: the sizes of its weight files. A hub id: one `model_info(files_metadata=True)`
request, which lists every file with its size (the LFS size for weights), the commit the revision
points at, whether the repo is gated and, where the hub computed it, the parameter count by dtype.
A gated repo without a token, or with a token it refuses, is a one-line refusal. The hub's address
and the token are the caller's (autoprofile reads them with `prefetch.HubEnv`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.core.errors import PreflightError

log = logging.getLogger(__name__)

GIB = 1024**3
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


def hub_repo(
    repo_id: str, revision: str | None, *, endpoint: str, token: str | None, offline: bool = False
) -> HubRepo:
    """One model_info request to `endpoint`; a missing repo or revision is a one-line refusal."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = f"{repo_id}@{revision}" if revision else repo_id
    if offline:
        raise PreflightError(f"{where}: HF_HUB_OFFLINE is set, so the hub cannot tell what the model is")
    try:
        api = HfApi(endpoint=endpoint, token=token or False)
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise PreflightError(f"{where}: the hub has no revision {revision!r} of {repo_id}") from None
    except RepositoryNotFoundError:
        raise PreflightError(
            f"{where}: no such profile, and no model {repo_id!r} on the hub (or it is private)",
            hint="`mmdemo list` shows the profiles; a private model needs HF_TOKEN",
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise PreflightError(f"{where}: cannot reach the hub: {_first_line(exc)}") from None
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


def check_access(repo: HubRepo, *, endpoint: str, token: str | None) -> None:
    """Refuse a gated repo without a token, or one whose token the hub turns away (a HEAD of config.json)."""
    if not repo.gated:
        return
    if not token:
        raise PreflightError(
            f"{repo.repo_id} is a gated model and no Hugging Face token is set", hint=_TOKEN_HINT
        )
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    url = hf_hub_url(repo.repo_id, "config.json", revision=repo.sha or repo.revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, token=token)
    except GatedRepoError:
        raise PreflightError(
            f"{repo.repo_id} is a gated model and the hub refuses this token access to it", hint=_TOKEN_HINT
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise PreflightError(f"{repo.repo_id}: cannot reach the hub: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
