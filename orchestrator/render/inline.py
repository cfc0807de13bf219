"""Media as data URIs for report.html: image thumbnails, a video's poster frame and preview, audio.

The page must open offline and send no request, so every medium is embedded; large ones are made
small first. A file that is gone or does not decode yields a reason instead of a URI, never an error.
A thumbnail or a preview is kept in mmdemo's cache, keyed by the file's path, size and mtime: the same
asset goes out run after run, and re-encoding a video preview costs each run ~0.15 s.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from orchestrator.core.atomic import write_atomic
from orchestrator.core.paths import cache_dir

log = logging.getLogger(__name__)

THUMB_PX = 320  # the longest side of an image thumbnail or a video preview
PREVIEW_S = 4.0  # a video preview holds the clip's first seconds
PREVIEW_FPS = 8
AUDIO_MAX_BYTES = 4 * 1024 * 1024  # larger audio is named, not embedded
CACHED_KINDS = ("image", "video")  # audio is embedded as it is: nothing to save
CACHE_VERSION = 1  # bump when what a maker produces changes
CACHE_ENTRIES = 256  # the newest this many are kept; each test session's media are new files
AUDIO_TYPES = {".wav": "audio/wav", ".ogg": "audio/ogg", ".mp3": "audio/mpeg", ".flac": "audio/flac"}


@dataclass(frozen=True)
class Inlined:
    """One medium ready for the page: data URIs, or why there are none."""

    kind: str
    src: str | None = None  # the image thumbnail, the video preview (webm) or the audio itself
    poster: str | None = None  # video only: the first frame, as a JPEG
    width: int | None = None
    height: int | None = None
    unavailable: str | None = None  # why the medium cannot be shown


def data_uri(media_type: str, data: bytes) -> str:
    """A data: URI holding `data`."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _jpeg(image: Any) -> tuple[str, int, int]:
    """A thumbnail of a PIL image as a JPEG data URI, with its size."""
    image = image.convert("RGB")
    image.thumbnail((THUMB_PX, THUMB_PX))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return data_uri("image/jpeg", out.getvalue()), image.width, image.height


def _image(path: Path) -> Inlined:
    from PIL import Image  # deferred: the CLI must start fast

    with Image.open(path) as image:
        image.load()
        src, width, height = _jpeg(image)
    return Inlined("image", src=src, width=width, height=height)


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)  # yuv420p wants even dimensions


def _video(path: Path) -> Inlined:
    """The first frame as a poster, and the first seconds re-encoded small as VP8 (any browser plays it)."""
    import av  # deferred: the CLI must start fast

    frames: list[Any] = []  # small PIL images, PREVIEW_FPS a second
    with av.open(str(path)) as source:
        for frame in source.decode(source.streams.video[0]):
            at = frame.time or 0.0
            if at > PREVIEW_S:
                break
            if frames and at < len(frames) / PREVIEW_FPS:
                continue
            image = frame.to_image()  # type: ignore[no-untyped-call]
            image.thumbnail((THUMB_PX, THUMB_PX))
            frames.append(image)
    if not frames:
        raise ValueError("no video frame decoded")
    poster, width, height = _jpeg(frames[0])
    out = io.BytesIO()
    with av.open(out, mode="w", format="webm") as target:
        encoder = target.add_stream("libvpx", rate=Fraction(PREVIEW_FPS))
        encoder.width, encoder.height, encoder.pix_fmt = _even(width), _even(height), "yuv420p"
        encoder.options = {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "400k"}
        for image in frames:
            small = image.convert("RGB").resize((encoder.width, encoder.height))
            still = av.VideoFrame.from_image(small)  # type: ignore[no-untyped-call]
            for packet in encoder.encode(still):
                target.mux(packet)
        for packet in encoder.encode():
            target.mux(packet)
    return Inlined(
        "video", src=data_uri("video/webm", out.getvalue()), poster=poster, width=width, height=height
    )


def _audio(path: Path) -> Inlined:
    size = path.stat().st_size
    if size > AUDIO_MAX_BYTES:
        return Inlined("audio", unavailable=f"not embedded: {size / 2**20:.1f} MiB is too large for the page")
    media_type = AUDIO_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return Inlined("audio", src=data_uri(media_type, path.read_bytes()))


_MAKERS = {"image": _image, "video": _video, "audio": _audio}


def inline(kind: str | None, path: str | Path | None) -> Inlined:
    """The medium at `path` ready for the page, or the reason it cannot be shown."""
    label = kind or "medium"
    if kind not in _MAKERS:
        return Inlined(label, unavailable=f"not available: unknown kind {kind!r}")
    if not path:
        return Inlined(label, unavailable="not available: the record names no file")
    file = Path(path).expanduser()
    if not file.is_file():
        return Inlined(label, unavailable="not available: the file is gone")
    saved = _cache_file(kind, file) if kind in CACHED_KINDS else None
    if saved and (hit := _load(saved, kind)):
        return hit
    try:
        made = _MAKERS[kind](file)
    except Exception as exc:  # a medium that does not decode must not break the page
        log.debug("cannot inline %s", file, exc_info=True)
        return Inlined(label, unavailable=f"not available: cannot decode it ({type(exc).__name__})")
    if saved:
        _save(saved, made)
    return made


def _cache_file(kind: str, file: Path) -> Path | None:
    """Where the inlined form of this version of the file is kept, or None when it cannot be keyed."""
    try:
        stat = file.stat()
        key = f"{CACHE_VERSION}|{kind}|{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    except OSError:
        return None
    key += f"|{THUMB_PX}|{PREVIEW_S}|{PREVIEW_FPS}"
    return cache_dir() / "inline" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def _load(path: Path, kind: str) -> Inlined | None:
    """A saved Inlined of this kind, or None when there is none or it is not one (never an error)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found = Inlined(**data)
    except Exception:  # gone, unreadable, not JSON, nested too deep, not our fields: not a hit
        return None
    uris_ok = all(
        value is None or (isinstance(value, str) and value.startswith("data:"))
        for value in (found.src, found.poster)
    )
    sizes_ok = all(value is None or type(value) is int for value in (found.width, found.height))
    if found.kind != kind or found.unavailable is not None or not found.src or not uris_ok or not sizes_ok:
        return None
    return found


def _save(path: Path, made: Inlined) -> None:
    """Keep `made` for the next run; the cache is only a speed-up, so any failure is ignored."""

    if made.unavailable is not None:
        return
    with contextlib.suppress(OSError):
        write_atomic(path, json.dumps(dataclasses.asdict(made)))
        _prune(path.parent)


def _prune(directory: Path, stale_s: float = 3600.0) -> None:
    """Drop all but the CACHE_ENTRIES newest entries, and temporary files a killed writer left behind."""
    now = time.time()
    entries: list[tuple[float, Path]] = []
    for item in directory.iterdir():
        with contextlib.suppress(OSError):
            modified = item.stat().st_mtime
            if item.name.startswith("."):  # write_atomic's temporary file
                if now - modified > stale_s:
                    item.unlink()
            elif item.suffix == ".json":
                entries.append((modified, item))
    for _, old in sorted(entries, reverse=True)[CACHE_ENTRIES:]:
        with contextlib.suppress(OSError):
            old.unlink()
