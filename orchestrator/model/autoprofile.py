"""The profile for what the user typed: the profile named, the profile of that model, or a derived one.

`resolve(text, gpus=...)` is the session's "resolve the profile" step for a name, a path, a local
model directory or a hub id. A shipped or user profile of the model wins (its line says which);
otherwise `derive_for` asks the hub (sizes, gating; nothing downloaded) and vLLM's probe (cached)
and derives one. Where the hub cannot be asked (HF_HUB_OFFLINE, an air-gapped box), a hub id whose
snapshot is complete in the HF cache is derived from it as a model directory is. Every refusal is a
one-line `MMDemoError` raised before anything starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.core.atomic import write_atomic
from orchestrator.core.background import background
from orchestrator.core.errors import HubUnreachable, ProfileError
from orchestrator.core.hfenv import HfEnv
from orchestrator.core.paths import cache_dir
from orchestrator.gpus.detect import Gpu
from orchestrator.launch import checks as preflight
from orchestrator.model import recipe, tiny
from orchestrator.model.derive import Derivation, DeriveOptions, derive
from orchestrator.model.profilegen import to_yaml
from orchestrator.model.recipemerge import apply
from orchestrator.model.ref import (
    HubModel,
    LocalModel,
    ModelRef,
    ProfileMatch,
    ProfileRef,
    RecipeRef,
    matching_profile,
    parse_ref,
)
from orchestrator.model.weights import cached_snapshot, check_access, hub_repo, hub_weights, local_weights
from orchestrator.profile.schema import Profile, load_profile, parse_profile_file
from orchestrator.vllm import runner
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
    # Which vLLM answers, asked only when one must (--image: the image's, pulled if need be); None: the
    # host's, found from vllm_bin.
    vllm: Callable[[], runner.VllmInfo] | None = None
    # A vLLM recipe (model/recipe.py): its variant (None: by memory), features asked and turned off
    variant: str | None = None
    features: tuple[str, ...] = ()
    without: tuple[str, ...] = ()
    offline: bool = False  # a `recipe:ORG/MODEL` is not fetched


def resolve(
    text: str, gpus: Sequence[Gpu], request: DeriveRequest = DeriveRequest(), profiles_dir: str | None = None
) -> Resolved:
    """The profile for `text`: a profile as named, else the profile of that model, else a derived one;
    a vLLM recipe's settings over the profile derived for its model."""
    ref = parse_ref(text)
    if isinstance(ref, RecipeRef):
        return resolve_recipe(ref, gpus, request)
    if isinstance(ref, ProfileRef):
        profile = load_profile(ref.text, profiles_dir)
        return Resolved(profile, f"profile {profile.name}")
    if (match := matching_profile(ref, profiles_dir)) is not None:
        return Resolved(parse_profile_file(match.path), match.line, match=match)
    derivation = derive_for(ref, gpus, request)
    return Resolved(saved(derivation), derivation.line, derivation=derivation)


def resolve_recipe(ref: RecipeRef, gpus: Sequence[Gpu], request: DeriveRequest = DeriveRequest()) -> Resolved:
    """The recipe's variant for the memory found, its features, vLLM's minimum, then its model derived
    and the recipe laid over it (recipemerge.apply); refusals in one line before anything starts."""
    found = recipe.load(recipe.locate(ref.text, offline=request.offline))
    memory, where = recipe.memory_of([] if request.cpu else gpus, _host_memory() if request.cpu else None)
    choice = recipe.choose(
        found,
        memory_gb=memory,
        where=where,
        variant=request.variant,
        features=request.features,
        without=request.without,
    )
    info = request.vllm() if request.vllm else preflight.vllm_version(request.vllm_bin)
    minimum = recipe.check_version(found, choice, info.version, info.path)
    model = parse_ref(recipe.model_text(found, choice))
    if not isinstance(model, (LocalModel, HubModel)):
        raise ProfileError(
            f"{found.line('model.model_id')}: {model.text!r} is neither a hub id nor a model directory"
        )
    derivation = apply(found, choice, derive_for(model, gpus, request), minimum)
    features = ", ".join(choice.features) or "none"
    line = (
        f"recipe {found.slug} ({found.path}): {choice.reason}, features: {features}; "
        f"what it does not say derived from vLLM {derivation.facts.vllm}'s facts"
    )
    return Resolved(saved(derivation), line, derivation=derivation)


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
            random_weights=tiny.random_weights(ref.path),
            cpu=request.cpu,
            host_memory_bytes=host,
        )
        return derive(probing.result(), weights, gpus, options)
    assert isinstance(ref, HubModel)
    hf = HfEnv.read(request.env)
    try:
        repo = hub_repo(ref.repo_id, ref.revision, hf)
    except HubUnreachable as exc:  # HF_HUB_OFFLINE, or no route to the hub: what the cache holds
        return _derive_cached(ref, gpus, request, hf, exc.why)
    check_access(repo, hf)
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


def _derive_cached(
    ref: HubModel, gpus: Sequence[Gpu], request: DeriveRequest, hf: HfEnv, why: str
) -> Derivation:
    """A hub model the hub cannot be asked about, derived from its snapshot in the HF cache exactly as
    from a model directory (vLLM's probe of its files, the sizes on disk); the profile still names the
    hub id, which vLLM finds in the same cache. Not there, or incomplete: one line, exit 3."""
    snapshot = cached_snapshot(hf, ref.text, ref.repo_id, ref.revision, why)
    probing = background(probe, probe_request(str(snapshot), request), name="model-probe")
    weights = local_weights(snapshot)  # while the probe imports vLLM
    options = DeriveOptions(
        name=ref.name,
        revision=ref.revision,
        trust_remote_code=request.trust_remote_code,
        random_weights=tiny.random_weights(snapshot),
        cpu=request.cpu,
        host_memory_bytes=_host_memory(),
    )
    facts = probing.result().model_copy(update={"model": ref.repo_id, "revision": ref.revision})
    derivation = derive(facts, weights, gpus, options)
    note = f"the hub was not asked ({why}): derived from the HF cache's snapshot {snapshot}"
    return dataclasses.replace(derivation, notes=(note, *derivation.notes))


def probe_request(
    model: str,
    request: DeriveRequest = DeriveRequest(),
    revision: str | None = None,
    commit: str | None = None,
) -> ProbeRequest:
    """The probe of `model` with the vLLM `run` would use (the host's: its version ~50 ms to read; or the
    image's). In an image (no network) a hub model's small files are fetched into the HF cache first."""
    info = request.vllm() if request.vllm else runner.host(request.vllm_bin)
    if info.image is not None and not Path(model).is_dir():
        _small_files(model, commit or revision, HfEnv.read(request.env))
    return ProbeRequest(
        model=model,
        vllm=info,
        revision=revision,
        commit=commit,
        trust_remote_code=request.trust_remote_code,
    )


def _small_files(repo_id: str, revision: str | None, hf: HfEnv) -> None:
    """A hub model's config, tokenizer, processor and template files in the HF cache (never weights):
    what vLLM's probe reads inside an image, which has no network."""
    from huggingface_hub import snapshot_download  # deferred: the hub client, for hub models only

    with contextlib.suppress(Exception):  # offline, gated: the probe says what is missing, in one line
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=str(hf.hub_cache),
            allow_patterns=["*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*"],
            token=hf.token,
            endpoint=hf.endpoint,
            local_files_only=hf.offline,
        )


def _host_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return None
