"""Demo media: the upstream example's assets, a verified cache, synthetic stand-ins and a loopback origin.

Downloads are trusted on first use: the first download records its sha256 in `<file>.sha256` and
every later run verifies the cached bytes against it, so a changed file is an error, never reused.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.parse
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from orchestrator.errors import AssetError

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

Kind = Literal["image", "video", "audio"]
Provenance = Literal["cache", "download", "synthetic", "profile"]
ProgressHook = Callable[[str, int, int | None], None]

S3 = "https://vllm-public-assets.s3.us-west-2.amazonaws.com"
# The upstream example's own header: some hosts refuse requests without a User-Agent.
USER_AGENT = "vLLM Example Client"


# Extension -> media type, for the registry and for profile media: a fixed table, not the host's mime.types.
# fmt: off
MEDIA_TYPES: dict[str, str] = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".wav": "audio/wav", ".ogg": "audio/ogg", ".mp3": "audio/mpeg", ".flac": "audio/flac",
}
# fmt: on
_SYNTHETIC = {"image": ".jpg", "video": ".mp4", "audio": ".wav"}


def _guess(ref: str, name: str) -> tuple[Kind, str]:
    media_type = MEDIA_TYPES.get(Path(name).suffix.lower())
    if media_type is None:
        known = " ".join(MEDIA_TYPES)
        raise AssetError(f"media {ref!r}: cannot tell image, video or audio from its extension ({known})")
    return cast(Kind, media_type.split("/", 1)[0]), media_type


@dataclass(frozen=True)
class AssetSpec:
    """One upstream asset: where it lives and what it is; sha256 None means trust on first use."""

    key: str
    url: str
    media_type: str
    kind: Kind
    filename: str
    sha256: str | None = None


def _spec(key: str, url: str, sha256: str | None = None) -> AssetSpec:
    filename = url.rsplit("/", 1)[1]
    kind, media_type = _guess(url, filename)
    return AssetSpec(key, url, media_type, kind, filename, sha256)


REGISTRY: dict[str, AssetSpec] = {
    spec.key: spec
    for spec in (
        _spec("image", f"{S3}/vision_model_images/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"),
        _spec("duck", f"{S3}/multimodal_asset/duck.jpg"),
        _spec("lion", f"{S3}/multimodal_asset/lion.jpg"),
        _spec("winning_call", f"{S3}/multimodal_asset/winning_call.ogg"),
        _spec("azacinto_foscolo", f"{S3}/multimodal_asset/azacinto_foscolo.ogg"),
        _spec("video", "http://commondatastorage.googleapis.com/gtv-videos-bucket/sample/ForBiggerFun.mp4"),
    )
}


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
        origin: str | None = None,
        on_progress: ProgressHook | None = None,
        tries: int = 3,
        backoff_s: float = 0.25,
        timeout_s: float = 30.0,
    ) -> None:
        self.root = Path(root)
        self.offline = offline
        self.origin = origin.rstrip("/") if origin else None
        self._session = session
        self._on_progress = on_progress
        self._tries = max(1, tries)
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._memo: dict[str, Asset] = {}

    def url_of(self, spec: AssetSpec) -> str:
        """Where a registry asset is fetched from: upstream, or the same path under `origin`."""
        if self.origin is None:
            return spec.url
        return self.origin + urllib.parse.urlsplit(spec.url).path

    def get(self, key: str) -> Asset:
        """The registry asset `key`: from the cache, a download, or a synthetic stand-in."""
        try:
            return self._get(key)
        except OSError as exc:  # the cache itself: not a directory, not writable, disk full
            raise AssetError(
                f"asset {key!r}: cannot use the cache {self.root}: {exc.strerror or exc}"
            ) from None

    def _get(self, key: str) -> Asset:
        if key in self._memo:
            return self._memo[key]
        spec = REGISTRY.get(key)
        if spec is None:
            raise AssetError(f"unknown asset {key!r}; known: {', '.join(REGISTRY)}")
        url = self.url_of(spec)
        path = self.root / spec.filename
        if path.is_file():
            asset = self._asset(spec, path, self._verify(key, path, spec.sha256), "cache", url)
        elif self.offline:
            asset = self._synthetic(spec, "offline mode")
        else:
            try:
                digest = self._download(key, url, path, spec.sha256)
            except _DownloadFailed as exc:
                asset = self._synthetic(spec, f"download of {url} failed: {exc}")
            else:
                asset = self._asset(spec, path, digest, "download", url)
        self._memo[key] = asset
        return asset

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
        kind, media_type = _guess(path_or_url, source.name)
        digest = _sha256(source)
        # Copied under the cache root so file:// (--allowed-local-media-path) and the loopback origin see it.
        dest = self.root / "custom" / f"{digest[:16]}-{source.name}"
        if not (dest.is_file() and _sha256(dest) == digest):
            with _atomic(dest) as out, source.open("rb") as src:
                shutil.copyfileobj(src, out)
        return Asset(
            f"file-{digest[:16]}", kind, dest, media_type, digest, "profile", source.resolve().as_uri()
        )

    # -- internals -------------------------------------------------------------------------------

    def _custom_url(self, url: str) -> Asset:
        name = Path(urllib.parse.urlsplit(url).path).name or "media"
        kind, media_type = _guess(url, name)
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

    def _download(self, key: str, url: str, path: Path, pinned: str | None) -> str:
        """Fetch `url` into `path` atomically with retries; check and record its sha256."""
        import requests  # deferred: the CLI must start fast

        last = ""
        for attempt in range(self._tries):
            if attempt:
                time.sleep(self._backoff_s * 2 ** (attempt - 1))
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
                host = urllib.parse.urlsplit(url).hostname
                if "NameResolutionError" in str(exc) or "Name or service not known" in str(exc):
                    last = f"cannot resolve {host} (offline?)"
                    break  # no DNS answer now will not become one in half a second
                last = f"cannot connect to {host}: {type(exc).__name__}"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {exc}"
            except OSError as exc:  # after RequestException, which is one too: this is our disk
                raise AssetError(f"asset {key!r}: cannot write {path}: {exc}") from None
            else:
                log.info("asset %s: downloaded %s (sha256 %s)", key, url, digest)
                return digest
            log.info("asset %s: try %d/%d of %s failed: %s", key, attempt + 1, self._tries, url, last)
        raise _DownloadFailed(last)

    def _fetch(self, session: requests.Session, key: str, url: str, path: Path, pinned: str | None) -> str:
        headers = {"User-Agent": USER_AGENT}
        with session.get(url, headers=headers, stream=True, timeout=(5.0, self._timeout_s)) as response:
            response.raise_for_status()
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            hasher = hashlib.sha256()
            done = 0
            with _atomic(path) as out:
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

    def _synthetic(self, spec: AssetSpec, reason: str) -> Asset:
        ext = _SYNTHETIC[spec.kind]
        media_type = MEDIA_TYPES[ext]
        path = self.root / "synthetic" / f"{spec.key}{ext}"
        sidecar = _sidecar(path)
        recorded = _read_sidecar(sidecar)
        if not (path.is_file() and recorded == _sha256(path)):
            # Ours and deterministic: regenerating a damaged copy loses nothing.
            with _atomic(path) as out:
                _GENERATORS[spec.kind](out, spec.key)
            recorded = _sha256(path)
            _write_sidecar(sidecar, recorded, path.name)
        # Asked for (offline): say so quietly; a failed download is worth a warning.
        level = logging.INFO if self.offline else logging.WARNING
        log.log(level, "asset %s: using a synthetic %s (%s)", spec.key, spec.kind, reason)
        return Asset(spec.key, spec.kind, path, media_type, recorded, "synthetic", None)


# -- the loopback origin ---------------------------------------------------------------------------


class _Handler(SimpleHTTPRequestHandler):
    server: _CountingServer

    def send_head(self) -> Any:
        with self.server.lock:
            self.server.served += 1
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "no directory listings")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("asset server: " + format, *args)


class _CountingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # vLLM fetches every URL of a concurrent run at once; 5 would drop SYNs

    def __init__(self, address: tuple[str, int], handler: Callable[..., _Handler]) -> None:
        super().__init__(address, handler)
        self.served = 0
        self.lock = threading.Lock()


class AssetServer:
    """Serve a directory on 127.0.0.1 (a free port) so the model server fetches media by URL."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._server: _CountingServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> AssetServer:
        handler = functools.partial(_Handler, directory=str(self.root))
        self._server = _CountingServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="asset-server",
            daemon=True,
        )
        self._thread.start()
        log.debug("asset server: serving %s at %s", self.root, self.base_url)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT` while serving."""
        if self._server is None:
            raise RuntimeError("the asset server is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests_served(self) -> int:
        """How many GET/HEAD requests have been answered so far."""
        return self._server.served if self._server is not None else 0

    def url_for(self, asset: Asset) -> str:
        """The loopback URL of a cached asset."""
        try:
            rel = asset.path.resolve().relative_to(self.root)
        except ValueError:
            raise AssetError(f"asset {asset.key!r}: {asset.path} is outside the served {self.root}") from None
        return f"{self.base_url}/{urllib.parse.quote(rel.as_posix())}"


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
    with _atomic(sidecar) as out:
        out.write(f"{digest}  {filename}\n".encode())


@contextmanager
def _atomic(path: Path) -> Iterator[IO[bytes]]:
    """A temporary file beside `path`, renamed over it only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a server running as another user must read the cache
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- synthetic media (deterministic per key) -------------------------------------------------------

_PALETTES = {
    "duck": ((250, 230, 120), (255, 200, 0), (230, 120, 20)),
    "lion": ((110, 160, 70), (200, 140, 60), (120, 70, 20)),
}
_TONES = {"winning_call": (440.0, 660.0, 880.0), "azacinto_foscolo": (262.0, 330.0, 392.0, 523.0)}


def _make_jpeg(out: IO[bytes], key: str) -> None:
    from PIL import Image, ImageDraw  # deferred: the CLI must start fast

    bg, a, b = _PALETTES.get(key, ((90, 140, 210), (240, 240, 240), (40, 120, 60)))
    image = Image.new("RGB", (256, 256), bg)
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 40, 150, 150), fill=a)
    draw.rectangle((130, 120, 230, 220), fill=b)
    draw.polygon([(20, 230), (90, 170), (120, 240)], fill=(200, 30, 30))
    image.save(out, format="JPEG", quality=90)


def _make_mp4(out: IO[bytes], key: str) -> None:
    import av  # deferred: the CLI must start fast
    import numpy as np

    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(16):
            frame = np.zeros((64, 64, 3), dtype=np.uint8)
            frame[:, :] = (30, 60, 120)
            x = 4 * i  # a square crossing the frame, so frames differ
            frame[20:40, x : x + 16] = (250, 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make_wav(out: IO[bytes], key: str) -> None:
    import numpy as np  # deferred: the CLI must start fast

    rate, seconds_per_tone = 16000, 0.75
    t = np.arange(int(rate * seconds_per_tone)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.02)  # no clicks between tones
    tones = [0.3 * np.sin(2 * np.pi * f * t) * fade for f in _TONES.get(key, (500.0, 700.0))]
    pcm = (np.concatenate(tones) * 32767).astype("<i2")
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


_GENERATORS: dict[str, Callable[[IO[bytes], str], None]] = {
    "image": _make_jpeg,
    "video": _make_mp4,
    "audio": _make_wav,
}
