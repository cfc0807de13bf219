"""The profile for what the user typed: the profile named, the profile of that model, or a derived one.

`resolve(text, gpus=...)` is the session's "resolve the profile" step for a name, a path, a local
model directory or a hub id. A shipped or user profile of the model wins (its line says which);
otherwise `derive_for` asks the hub (sizes, gating; nothing downloaded) and vLLM's probe (cached)
and derives one. Every refusal is a one-line `MMDemoError` raised before anything starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchestrator.core.atomic import write_atomic
from orchestrator.core.background import background
from orchestrator.core.paths import cache_dir
from orchestrator.gpus.detect import Gpu
from orchestrator.launch import checks as preflight
from orchestrator.model.derive import Derivation, DeriveOptions, derive
from orchestrator.model.profilegen import to_yaml
from orchestrator.model.ref import (
    HubModel,
    LocalModel,
    ModelRef,
    ProfileMatch,
    ProfileRef,
    matching_profile,
    parse_ref,
)
from orchestrator.model.weights import check_access, hub_repo, hub_weights, local_weights
from orchestrator.profile.schema import Profile, load_profile, parse_profile_file
from orchestrator.vllm import backend
from orchestrator.vllm.probe import ProbeRequest, probe

TINY_MARKER = "mmdemo-model.json"  # written by every tiny-model builder (models.MARKER): random weights


@dataclass(frozen=True)
class Resolved:
    """The profile to run, the one line that says where it came from, and how it was found."""

    profile: Profile
    line: str
    match: ProfileMatch | None = None
    derivation: Derivation | None = None


@dataclass(frozen=True)
class DeriveRequest:
    """How to derive: what the user allowed and which vLLM answers."""

    trust_remote_code: bool = False
    vllm_bin: str | None = None
    cpu: bool | None = None  # see DeriveOptions.cpu
    env: Mapping[str, str] | None = None  # HF_ENDPOINT, HF_TOKEN, ... (default: os.environ)


def resolve(
    text: str, gpus: Sequence[Gpu], request: DeriveRequest = DeriveRequest(), profiles_dir: str | None = None
) -> Resolved:
    """The profile for `text`: a profile as named, else the profile of that model, else a derived one."""
    ref = parse_ref(text)
    if isinstance(ref, ProfileRef):
        profile = load_profile(ref.text, profiles_dir)
        return Resolved(profile, f"profile {profile.name}")
    if (match := matching_profile(ref, profiles_dir)) is not None:
        return Resolved(parse_profile_file(match.path), match.line, match=match)
    derivation = derive_for(ref, gpus, request)
    return Resolved(saved(derivation), derivation.line, derivation=derivation)


def saved(derivation: Derivation) -> Profile:
    """The derived profile written as `mmdemo init` writes it (into the cache) and read back from there.

    A run of it is then a run of a profile file: what a matrix cell names, what the report points at,
    what the user may copy and commit; the file round-trips to the same profile (tested).
    """
    text = to_yaml(derivation)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = cache_dir() / "derived" / key / f"{derivation.profile.name}.yaml"
    write_atomic(path, text)
    return parse_profile_file(path)


def derive_for(ref: ModelRef, gpus: Sequence[Gpu], request: DeriveRequest = DeriveRequest()) -> Derivation:
    """Ask the hub and vLLM about the model and derive its profile for these GPUs."""
    host = _host_memory()
    if isinstance(ref, LocalModel):
        probing = background(probe, probe_request(str(ref.path), request), name="model-probe")
        weights = local_weights(ref.path)  # while the probe imports vLLM
        options = DeriveOptions(
            name=ref.name,
            served_model_name=ref.name,
            trust_remote_code=request.trust_remote_code,
            random_weights=(ref.path / TINY_MARKER).is_file(),
            cpu=request.cpu,
            host_memory_bytes=host,
        )
        return derive(probing.result(), weights, gpus, options)
    assert isinstance(ref, HubModel)
    from orchestrator.model.prefetch import HubEnv

    hub = HubEnv.from_environ(request.env)
    repo = hub_repo(ref.repo_id, ref.revision, endpoint=hub.endpoint, token=hub.token, offline=hub.offline)
    check_access(repo, endpoint=hub.endpoint, token=hub.token)
    facts = probe(probe_request(ref.repo_id, request, revision=ref.revision, commit=repo.sha))
    options = DeriveOptions(
        name=ref.name,
        revision=ref.revision,
        trust_remote_code=request.trust_remote_code,
        gated=repo.gated,
        cpu=request.cpu,
        host_memory_bytes=host,
    )
    return derive(facts, hub_weights(repo), gpus, options)


def probe_request(
    model: str,
    request: DeriveRequest = DeriveRequest(),
    revision: str | None = None,
    commit: str | None = None,
) -> ProbeRequest:
    """The probe of `model` with the vLLM `run` would use (its Python, its version: ~50 ms to read)."""
    info = preflight.vllm_version(request.vllm_bin)
    return ProbeRequest(
        model=model,
        python=backend.vllm_python(info.path),
        vllm_version=info.version,
        revision=revision,
        commit=commit,
        trust_remote_code=request.trust_remote_code,
    )


def _host_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None
