"""Prefetch a hub model's snapshot into the standard Hugging Face cache before vLLM starts.

`plan()` asks the hub for the file list and sizes and compares it with the cache; `check_disk()`
refuses when the cache's filesystem cannot hold what is left; `fetch()` downloads the missing files
with huggingface_hub and reports bytes as they arrive: files the hub serves through Xet go through
hf_xet (whose chunk cache makes a retry cheap); plain HTTP files are written to the cache's
`blobs/<etag>.incomplete` and resumed from there with a Range request after an interruption
(huggingface_hub 2.x downloads to a per-process temporary name it deletes or abandons, so an
interrupted `hf_hub_download` starts again from zero). vLLM then loads from the cache. Where the hub and
the cache are, offline or not, and the token: an `HfEnv` (core/hfenv.py), read on each call, not at
import. Offline (HF_HUB_OFFLINE), or with no route to the hub, the plan is the cache's complete
snapshot, without a request; a model not there is one line naming the cache and how to fill it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tqdm import tqdm

from orchestrator.core.atomic import replacing, write_atomic
from orchestrator.core.errors import HubUnreachable, PreflightError
from orchestrator.core.hfenv import HfEnv
from orchestrator.launch import checks
from orchestrator.model.weights import HUB_TIMEOUT_S, cached_snapshot, unreachable, unreachable_why

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

Progress = Callable[[int, int], None]
FreeSpace = Callable[[Path], int]


def needs_prefetch(model: str) -> bool:
    """True for a hub repository id; False for `mmdemo:` tiny models and local paths."""
    if model.startswith(("mmdemo:", "/", "./", "../", "~")):
        return False
    if Path(model).expanduser().exists():
        return False
    return bool(_HUB_ID.match(model))


@dataclass(frozen=True)
class HubFile:
    """One file of the snapshot: its size, whether the cache has it, bytes of a partial download."""

    path: str
    size: int
    cached: bool
    partial: int = 0


@dataclass(frozen=True)
class HubPlan:
    """What a prefetch of `repo_id` at `revision` (resolved to `commit`) will download."""

    repo_id: str
    revision: str
    commit: str
    files: tuple[HubFile, ...]
    env: HfEnv
    gated: bool = False

    @property
    def storage(self) -> Path:
        """The repository's folder in the HF cache."""
        return self.env.repo_dir(self.repo_id)

    @property
    def snapshot(self) -> Path:
        """The snapshot folder vLLM will load from."""
        return self.storage / "snapshots" / self.commit

    @property
    def total_bytes(self) -> int:
        """Size of the whole snapshot."""
        return sum(f.size for f in self.files)

    @property
    def cached_bytes(self) -> int:
        """Bytes already on disk (complete files and partial downloads)."""
        return sum(f.size if f.cached else f.partial for f in self.files)

    @property
    def missing_bytes(self) -> int:
        """Bytes still to download."""
        return self.total_bytes - self.cached_bytes

    @property
    def missing(self) -> tuple[HubFile, ...]:
        """Files not yet complete in the cache."""
        return tuple(f for f in self.files if not f.cached)


@dataclass(frozen=True)
class Fetched:
    """The outcome of a fetch: bytes that came over the network, how long it took, where it is."""

    bytes_downloaded: int
    seconds: float
    path: Path
    files_downloaded: int


_SESSION_LOCK = threading.Lock()


def _shared_session() -> None:
    """Create huggingface_hub's shared HTTP client once, under a lock.

    Its get_session() checks and creates without holding its lock, so two matrix cells prefetching at
    the same moment each made a client and one leaked (an unclosed socket, a ResourceWarning).
    """
    from huggingface_hub import get_session

    with _SESSION_LOCK:
        get_session()


def plan(
    model: str, *, revision: str | None = None, token: str | None = None, env: HfEnv | None = None
) -> HubPlan:
    """Ask the hub for the snapshot's files and sizes and compare them with the cache.

    Offline (HF_HUB_OFFLINE), or where the hub cannot be reached, the plan is the cache's complete
    snapshot (no request); a model not there is a one-line `HubUnavailable`.
    """
    env = env or HfEnv.read()
    if token is not None:
        env = dataclasses.replace(env, env_token=token)
    rev = revision or "main"
    if env.offline:
        return _plan_cached(model, revision, env, "HF_HUB_OFFLINE is set")
    try:
        return _plan_hub(model, rev, env)
    except HubUnreachable as exc:
        cached = _plan_cached(model, revision, env, exc.why)
        log.warning("%s: %s; using its snapshot in the HF cache %s", model, exc.why, env.hub_cache)
        return cached


def _plan_hub(model: str, rev: str, env: HfEnv) -> HubPlan:
    """One model_info request, the cache compared file by file."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    _shared_session()
    api = HfApi(endpoint=env.endpoint, token=env.token or False)
    where = f"{model} on {env.endpoint}"
    try:
        info = api.model_info(model, revision=rev, files_metadata=True, timeout=HUB_TIMEOUT_S)
    except RevisionNotFoundError:
        raise PreflightError(f"revision {rev!r} of {where} does not exist") from None
    except GatedRepoError:
        raise _gated(model, env) from None
    except RepositoryNotFoundError:
        raise PreflightError(
            f"model {where} not found (or private and HF_TOKEN has no access)",
            hint="check the model id; for a private model set HF_TOKEN",
        ) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise PreflightError(f"the hub answered HTTP {status} for {where}") from None
    except Exception as exc:  # transport errors differ between huggingface_hub releases
        if unreachable(exc):
            raise HubUnreachable(model, unreachable_why(env, exc)) from None
        raise PreflightError(f"cannot reach the hub for {where}: {type(exc).__name__}: {exc}") from None
    if not info.sha:
        raise PreflightError(f"the hub gave no commit for {where}")
    gated = bool(info.gated)
    siblings = list(info.siblings or [])
    if gated and siblings:
        _check_access(model, info.sha, siblings[0].rfilename, env)
    storage = env.repo_dir(model)
    files = []
    for s in siblings:
        size = (s.lfs.size if s.lfs else None) or s.size or 0
        etag = s.lfs.sha256 if s.lfs else s.blob_id
        cached = (storage / "snapshots" / info.sha / s.rfilename).exists()
        partial = 0
        if not cached and etag:
            incomplete = storage / "blobs" / f"{etag}.incomplete"
            partial = min(incomplete.stat().st_size, size) if incomplete.exists() else 0
        files.append(HubFile(s.rfilename, size, cached, partial))
    return HubPlan(model, rev, info.sha, tuple(files), env, gated)


def _gated(model: str, env: HfEnv) -> PreflightError:
    url = f"{env.endpoint}/{model}"
    if not env.token:
        return PreflightError(
            f"model {model} is gated and no HF_TOKEN is set",
            hint=f"accept its terms at {url}, then export HF_TOKEN",
        )
    return PreflightError(
        f"model {model} is gated and HF_TOKEN has no access to it", hint=f"accept its terms at {url}"
    )


def _check_access(model: str, commit: str, filename: str, env: HfEnv) -> None:
    """A gated repo lists its files to anyone; one metadata request shows whether the token may download."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

    url = hf_hub_url(model, filename, revision=commit, endpoint=env.endpoint)
    try:
        get_hf_file_metadata(url, token=env.token or False)
    except GatedRepoError:
        raise _gated(model, env) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise _gated(model, env) from None
        raise PreflightError(f"the hub answered HTTP {status} for {model} on {env.endpoint}") from None
    except Exception as exc:
        if unreachable(exc):
            raise HubUnreachable(model, unreachable_why(env, exc)) from None
        raise


def _plan_cached(model: str, revision: str | None, env: HfEnv, why: str) -> HubPlan:
    """The hub cannot be asked: the cache's complete snapshot is all there is; no request is made."""
    rev = revision or "main"
    shown = f"{model}@{revision}" if revision else model
    snapshot = cached_snapshot(env, shown, model, revision, why)
    files = tuple(
        HubFile(p.relative_to(snapshot).as_posix(), p.stat().st_size, True)
        for p in sorted(snapshot.rglob("*"))
        if p.is_file()
    )
    return HubPlan(model, rev, snapshot.name, files, env)


def check_disk(hub_plan: HubPlan, *, free_space: FreeSpace = checks.free_space) -> None:
    """Refuse (one line) when the cache's filesystem cannot hold the bytes still to download."""
    need = checks.DiskNeed(hub_plan.repo_id, hub_plan.missing_bytes, hub_plan.env.hub_cache)
    checks.check_disk(need, free=free_space)


class _Counter:
    """Bytes on disk across the download threads, reported to on_progress as they grow."""

    def __init__(self, start: int, total: int, on_progress: Progress | None) -> None:
        self.done = start
        self.downloaded = 0
        self.total = total
        self._on_progress = on_progress
        self._lock = threading.Lock()

    def add(self, n: int, *, network: bool) -> None:
        with self._lock:
            self.done += n
            if network:
                self.downloaded += n
            done = self.done
        if self._on_progress is not None:
            self._on_progress(done, self.total)


def _bar_class(counter: _Counter) -> type[tqdm[Any]]:
    """A silent tqdm for huggingface_hub's byte bars that forwards each update to the counter."""

    class _Bar(tqdm):  # type: ignore[type-arg]  # generic only in the stubs
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            # A resumed download starts its bar at the bytes an earlier attempt left on disk.
            counter.add(int(kwargs.get("initial") or 0), network=False)

        def update(self, n: float | None = 1) -> bool | None:
            counter.add(int(n or 0), network=True)
            return super().update(n)

    return _Bar


def fetch(hub_plan: HubPlan, on_progress: Progress | None = None, *, max_workers: int = 8) -> Fetched:
    """Download what the plan says is missing; nothing cached is requested again (no network at all)."""
    start = time.monotonic()
    todo = hub_plan.missing
    # Partial blobs are resumed by huggingface_hub and reported as new bytes from their offset on.
    counter = _Counter(hub_plan.total_bytes - sum(f.size for f in todo), hub_plan.total_bytes, on_progress)
    if todo:
        if hub_plan.env.offline:
            raise PreflightError(f"HF_HUB_OFFLINE is set and {hub_plan.repo_id} is incomplete in the cache")
        bar = _bar_class(counter)

        def one(f: HubFile) -> None:
            try:
                _download(hub_plan, f.path, bar)
            except Exception as exc:  # the connection lost mid-download: one line, not a bug
                if unreachable(exc):
                    why = unreachable_why(hub_plan.env, exc)
                    raise PreflightError(f"{hub_plan.repo_id}: downloading {f.path} failed: {why}") from None
                raise

        log.info("prefetching %d file(s) of %s", len(todo), hub_plan.repo_id)
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(todo)))) as pool:
            for future in [pool.submit(one, f) for f in todo]:
                future.result()
    elif on_progress is not None:
        on_progress(hub_plan.total_bytes, hub_plan.total_bytes)
    _write_ref(hub_plan)
    return Fetched(counter.downloaded, time.monotonic() - start, hub_plan.snapshot, len(todo))


def _download(hub_plan: HubPlan, filename: str, bar: type[tqdm[Any]]) -> None:
    """One file into the cache: blobs/<etag>, linked from snapshots/<commit>/<filename>."""
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # documented, not re-exported

    env = hub_plan.env
    token = env.token or False
    url = hf_hub_url(hub_plan.repo_id, filename, revision=hub_plan.commit, endpoint=env.endpoint)
    meta = get_hf_file_metadata(url, token=token)
    if meta.xet_file_data is not None or not meta.etag:
        hf_hub_download(
            hub_plan.repo_id,
            filename,
            revision=hub_plan.commit,
            cache_dir=env.hub_cache,
            endpoint=env.endpoint,
            token=token,
            tqdm_class=cast(Any, bar),
        )
        return
    blob = hub_plan.storage / "blobs" / meta.etag
    lock = env.hub_cache / ".locks" / hub_plan.storage.name / f"{meta.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):  # the lock huggingface_hub takes for this blob
        if not blob.exists():
            incomplete = blob.with_name(blob.name + ".incomplete")
            with incomplete.open("ab") as out:
                http_get(
                    meta.location,
                    out,
                    resume_size=out.tell(),
                    headers=build_hf_headers(token=token),
                    expected_size=meta.size,
                    displayed_filename=filename,
                    tqdm_class=cast(Any, bar),
                )
            incomplete.replace(blob)
    pointer = hub_plan.snapshot / filename
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not pointer.exists():
        try:
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except FileExistsError:  # another cell of a matrix, fetching the same model, linked it first
            pass
        except OSError:  # no symlinks here (as huggingface_hub does): a copy
            with open(blob, "rb") as src, replacing(pointer) as out:
                shutil.copyfileobj(src, out)


def _write_ref(hub_plan: HubPlan) -> None:
    """Point refs/<revision> at the commit, as snapshot_download does, so a load by name finds it."""
    if _COMMIT.match(hub_plan.revision):
        return
    ref = hub_plan.storage / "refs" / hub_plan.revision
    if ref.is_file() and ref.read_text() == hub_plan.commit:
        return
    write_atomic(ref, hub_plan.commit)  # a unique temporary name: a matrix's cells are threads of one process
