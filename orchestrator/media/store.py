"""The asset cache: downloads once, verifies always, generates the known-answer media
(media/known.py), substitutes synthetic media; encodings to send.

Downloads are trusted on first use: the first download records its sha256 in `<file>.sha256` and
every later run verifies the cached bytes against it, so a changed file is an error, never reused.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from orchestrator.core.atomic import replacing
from orchestrator.core.background import parallel_map
from orchestrator.core.errors import AssetError
from orchestrator.media import known as known_media
from orchestrator.media.registry import MEDIA_TYPES, REGISTRY, USER_AGENT, AssetSpec, Kind, guess
from orchestrator.media.synthetic import EXTENSIONS, GENERATORS

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)
# The cache's files, whatever the umask: a server running as another user must read them.
CACHE_MODE = 0o644

# cache, download: the upstream asset; known: generated with a known truth (media/known.py);
# synthetic: a stand-in with no truth; profile: the profile's (the user's) own file
Provenance = Literal["cache", "download", "known", "synthetic", "profile"]
ProgressHook = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class Asset:
    """A media file ready to send: where it is, what it is, and where it came from."""

    key: str
    kind: Kind
    path: Path
    media_type: str
    sha256: str
    provenance: Provenance
    source_url: str | None
    reason: str | None = None  # why a stand-in (known or synthetic) was sent instead
    fact: tuple[tuple[str, str], ...] = ()  # the truth of a known medium: (("colour", "red"),)
    truth: str | None = None  # that truth in words: "a red shape"


class Unavailable(str):
    """Why an upstream asset cannot be had (offline, a failed download): the text says it."""


Fetched = Asset | Unavailable


class _DownloadFailed(Exception):
    """Every try failed; the message says how the last one ended."""


class AssetStore:
    """The asset cache under `root`: downloads once, verifies always, substitutes synthetic media."""

    def __init__(
        self,
        root: Path,
        offline: bool = False,
        session: requests.Session | None = None,
        *,
        mirror: str | None = None,
        on_progress: ProgressHook | None = None,
        tries: int = 3,
        backoff_s: float = 0.25,
        timeout_s: float = 30.0,
        budget_s: float | None = None,
    ) -> None:
        self.root = Path(root)
        self.offline = offline
        self.mirror = mirror.rstrip("/") if mirror else None  # MMDEMO_ASSET_MIRROR
        self._session = session
        self._on_progress = on_progress
        self._tries = max(1, tries)
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._budget_s = budget_s
        self._deadline: float | None = None  # set by the first download: the budget covers them all
        self._dead_hosts: dict[str, str] = {}  # host -> how it failed: not asked again this run
        self._memo: dict[str, Asset] = {}
        self._unavailable: dict[str, Unavailable] = {}
        self._fallbacks: dict[str, Asset] = {}

    def prefetch(self, keys: Iterable[str]) -> list[Asset]:
        """Fetch registry assets in parallel, under one budget; each still falls back to synthetic."""
        wanted = list(dict.fromkeys(keys))
        return parallel_map(self.get, wanted)

    def url_of(self, spec: AssetSpec) -> str:
        """Where a registry asset is fetched from: upstream, or the same path under the mirror."""
        if self.mirror is None:
            return spec.url
        return self.mirror + urllib.parse.urlsplit(spec.url).path

    def get(self, key: str) -> Asset:
        """The registry asset `key`: from the cache, a download, or a synthetic stand-in."""
        try:
            return self._get(key)
        except OSError as exc:  # the cache itself: not a directory, not writable, disk full
            raise AssetError(
                f"asset {key!r}: cannot use the cache {self.root}: {exc.strerror or exc}"
            ) from None

    def _get(self, key: str) -> Asset:
        fetched = self._upstream(key)
        if isinstance(fetched, Asset):
            return fetched
        if key not in self._fallbacks:
            self._fallbacks[key] = self._synthetic(REGISTRY[key], str(fetched))
        return self._fallbacks[key]

    def upstream(self, key: str) -> Fetched:
        """The registry asset `key` from the cache or a download, or why it cannot be had (no
        stand-in, no warning: the caller substitutes, and says so once)."""
        try:
            return self._upstream(key)
        except OSError as exc:
            raise AssetError(
                f"asset {key!r}: cannot use the cache {self.root}: {exc.strerror or exc}"
            ) from None

    def _upstream(self, key: str) -> Fetched:
        if key in self._memo:
            return self._memo[key]
        if key in self._unavailable:
            return self._unavailable[key]
        spec = REGISTRY.get(key)
        if spec is None:
            raise AssetError(f"unknown asset {key!r}; known: {', '.join(REGISTRY)}")
        url = self.url_of(spec)
        path = self.root / spec.filename
        if path.is_file():
            asset = self._asset(spec, path, self._verify(key, path, spec.sha256), "cache", url)
        elif self.offline:
            self._unavailable[key] = Unavailable("offline mode")
            return self._unavailable[key]
        else:
            try:
                digest = self._download(key, url, path, spec.sha256)
            except _DownloadFailed as exc:
                self._unavailable[key] = Unavailable(f"download of {url} failed: {exc}")
                return self._unavailable[key]
            asset = self._asset(spec, path, digest, "download", url)
        self._memo[key] = asset
        return asset

    def known(self, medium: known_media.Medium, reason: str) -> Asset:
        """A generated medium with a known truth, cached under known/ by its key (bytes that are
        always the same: a damaged copy is regenerated). Raises known_media.KnownMediaUnavailable or
        any error of its generator; the caller falls back to a synthetic stand-in."""
        path = self.root / "known" / medium.filename
        try:
            sidecar = _sidecar(path)
            recorded = _read_sidecar(sidecar)
            if not (path.is_file() and recorded == _sha256(path)):
                data = medium.render()
                with replacing(path, CACHE_MODE) as out:
                    out.write(data)
                recorded = hashlib.sha256(data).hexdigest()
                _write_sidecar(sidecar, recorded, path.name)
        except OSError as exc:
            raise AssetError(
                f"known medium {medium.key}: cannot use the cache {self.root}: {exc.strerror or exc}"
            ) from None
        log.info("asset %s: a known %s (%s)", medium.key, medium.kind, reason)
        return Asset(
            medium.key,
            cast(Kind, medium.kind),
            path,
            medium.mime,
            recorded,
            "known",
            None,
            reason,
            tuple(sorted(medium.fact.items())),
            medium.describe(),
        )

    def substitute(self, key: str, reason: str) -> Asset:
        """A synthetic stand-in (no truth) for the registry asset `key`."""
        spec = REGISTRY.get(key)
        if spec is None:
            raise AssetError(f"unknown asset {key!r}; known: {', '.join(REGISTRY)}")
        try:
            return self._synthetic(spec, reason, quiet=True)
        except OSError as exc:
            raise AssetError(
                f"asset {key!r}: cannot use the cache {self.root}: {exc.strerror or exc}"
            ) from None

    def custom(self, path_or_url: str) -> Asset:
        """Profile-supplied media: a local file (copied into the cache) or an http(s) URL (downloaded)."""
        try:
            return self._custom(path_or_url)
        except OSError as exc:
            raise AssetError(f"profile media {path_or_url!r}: {exc.strerror or exc}") from None

    def _custom(self, path_or_url: str) -> Asset:
        if path_or_url.startswith(("http://", "https://")):
            return self._custom_url(path_or_url)
        local = path_or_url
        if local.startswith("file://"):
            local = urllib.parse.unquote(urllib.parse.urlsplit(local).path)
        source = Path(local).expanduser()
        if not source.is_file():
            raise AssetError(f"profile media {path_or_url!r}: no such file")
        kind, media_type = guess(path_or_url, source.name)
        digest = _sha256(source)
        # Copied under the cache root so file:// (--allowed-local-media-path) and the loopback asset server see it.
        dest = self.root / "custom" / f"{digest[:16]}-{source.name}"
        if not (dest.is_file() and _sha256(dest) == digest):
            with replacing(dest, CACHE_MODE) as out, source.open("rb") as src:
                shutil.copyfileobj(src, out)
        return Asset(
            f"file-{digest[:16]}", kind, dest, media_type, digest, "profile", source.resolve().as_uri()
        )

    # -- internals -------------------------------------------------------------------------------

    def _custom_url(self, url: str) -> Asset:
        name = Path(urllib.parse.urlsplit(url).path).name or "media"
        kind, media_type = guess(url, name)
        key = "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
        path = self.root / "custom" / f"{key}-{name}"
        if path.is_file():
            return Asset(key, kind, path, media_type, self._verify(key, path, None), "cache", url)
        if self.offline:
            raise AssetError(f"profile media {url}: not cached and mmdemo runs offline")
        try:
            digest = self._download(key, url, path, None)
        except _DownloadFailed as exc:
            raise AssetError(f"profile media {url}: download failed: {exc}") from None
        return Asset(key, kind, path, media_type, digest, "download", url)

    @staticmethod
    def _asset(spec: AssetSpec, path: Path, digest: str, provenance: Provenance, url: str | None) -> Asset:
        return Asset(spec.key, spec.kind, path, spec.media_type, digest, provenance, url)

    def _verify(self, key: str, path: Path, pinned: str | None) -> str:
        """The cached file's sha256 after checking it against the recorded and pinned values."""
        actual = _sha256(path)
        sidecar = _sidecar(path)
        recorded = _read_sidecar(sidecar)
        for expected in (recorded, pinned):
            if expected is not None and expected != actual:
                raise AssetError(
                    f"asset {key!r}: cached file {path} has sha256 {actual}, expected {expected}",
                    hint=f"delete {path} and {sidecar.name} to download it again",
                )
        if recorded is None:
            log.info("asset %s: recording sha256 %s of cached %s", key, actual, path)
            _write_sidecar(sidecar, actual, path.name)
        return actual

    def _remaining(self) -> float:
        """Seconds left of the download budget (the first call starts it)."""
        if self._budget_s is None:
            return self._timeout_s
        if self._deadline is None:
            self._deadline = time.monotonic() + self._budget_s
        return self._deadline - time.monotonic()

    def _download(self, key: str, url: str, path: Path, pinned: str | None) -> str:
        """Fetch `url` into `path` atomically with retries; check and record its sha256."""
        import requests  # deferred: the CLI must start fast

        host = urllib.parse.urlsplit(url).hostname or ""
        last = ""
        unreachable = False
        for attempt in range(self._tries):
            if host in self._dead_hosts:  # one host that timed out is not waited on for every asset
                last = f"{host} already failed this run ({self._dead_hosts[host]})"
                break
            if self._remaining() <= 0:
                last = f"the {self._budget_s:g} s budget for media downloads is spent"
                break
            if attempt:
                time.sleep(min(self._backoff_s * 2 ** (attempt - 1), max(0.0, self._remaining())))
            try:
                if self._session is not None:
                    digest = self._fetch(self._session, key, url, path, pinned)
                else:
                    with requests.Session() as session:
                        digest = self._fetch(session, key, url, path, pinned)
            except requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                last = f"HTTP {status}"
                if status is not None and 400 <= status < 500 and status not in (408, 429):
                    break  # a missing or forbidden file does not appear by asking again
            except requests.ConnectionError as exc:
                unreachable = True
                if "NameResolutionError" in str(exc) or "Name or service not known" in str(exc):
                    last = f"cannot resolve {host} (offline?)"
                    break  # no DNS answer now will not become one in half a second
                last = f"cannot connect to {host}: {type(exc).__name__}"
            except requests.Timeout as exc:
                unreachable = True
                last = f"{host} did not answer in time ({type(exc).__name__})"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            except OSError as exc:  # after RequestException, which is one too: this is our disk
                raise AssetError(f"asset {key!r}: cannot write {path}: {exc}") from None
            else:
                log.info("asset %s: downloaded %s (sha256 %s)", key, url, digest)
                return digest
            log.info("asset %s: try %d/%d of %s failed: %s", key, attempt + 1, self._tries, url, last)
        if unreachable:
            self._dead_hosts.setdefault(host, last)
        raise _DownloadFailed(last)

    def _fetch(self, session: requests.Session, key: str, url: str, path: Path, pinned: str | None) -> str:
        headers = {"User-Agent": USER_AGENT}
        limit = max(0.1, min(self._timeout_s, self._remaining()))
        with session.get(url, headers=headers, stream=True, timeout=(min(5.0, limit), limit)) as response:
            response.raise_for_status()
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            hasher = hashlib.sha256()
            done = 0
            with replacing(path, CACHE_MODE) as out:
                for chunk in response.iter_content(chunk_size=1 << 16):
                    out.write(chunk)
                    hasher.update(chunk)
                    done += len(chunk)
                    if self._on_progress is not None:
                        self._on_progress(key, done, total)
                digest = hasher.hexdigest()
                sidecar = _sidecar(path)
                # A sidecar without its file: the hash recorded on first use still binds the new download.
                for expected in (pinned, _read_sidecar(sidecar)):
                    if expected is not None and expected != digest:
                        raise AssetError(
                            f"asset {key!r}: download from {url} has sha256 {digest}, expected {expected}",
                            hint=f"delete {sidecar} if the new content is trusted",
                        )
        _write_sidecar(sidecar, digest, path.name)
        return digest

    def _synthetic(self, spec: AssetSpec, reason: str, *, quiet: bool = False) -> Asset:
        ext = EXTENSIONS[spec.kind]
        media_type = MEDIA_TYPES[ext]
        path = self.root / "synthetic" / f"{spec.key}{ext}"
        sidecar = _sidecar(path)
        recorded = _read_sidecar(sidecar)
        if not (path.is_file() and recorded == _sha256(path)):
            # Ours and deterministic: regenerating a damaged copy loses nothing.
            with replacing(path, CACHE_MODE) as out:
                GENERATORS[spec.kind](out, spec.key)
            recorded = _sha256(path)
            _write_sidecar(sidecar, recorded, path.name)
        # Asked for (offline): say so quietly; a failed download is worth a warning.
        level = logging.INFO if self.offline or quiet else logging.WARNING
        log.log(level, "asset %s: using a synthetic %s (%s)", spec.key, spec.kind, reason)
        return Asset(spec.key, spec.kind, path, media_type, recorded, "synthetic", None, reason)


# -- encodings -------------------------------------------------------------------------------------


def b64(asset: Asset) -> str:
    """The asset's bytes as base64 text."""
    return base64.b64encode(asset.path.read_bytes()).decode("ascii")


def data_url(asset: Asset) -> str:
    """A `data:<media type>;base64,...` URL of the asset."""
    return f"data:{asset.media_type};base64,{b64(asset)}"


def file_url(asset: Asset) -> str:
    """A `file:///abs/path` URL of the asset."""
    return asset.path.resolve().as_uri()


# -- file helpers ----------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(sidecar: Path) -> str | None:
    try:
        return sidecar.read_text(encoding="utf-8").split()[0].lower()
    except (FileNotFoundError, IndexError):
        return None


def _write_sidecar(sidecar: Path, digest: str, filename: str) -> None:
    # sha256sum's format, so `sha256sum -c` works inside the cache directory.
    with replacing(sidecar, CACHE_MODE) as out:
        out.write(f"{digest}  {filename}\n".encode())
