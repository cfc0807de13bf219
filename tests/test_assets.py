"""The asset store against a loopback origin: download once, verify always, synthesise when offline."""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import urllib.parse
import wave
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import pytest
import requests
from PIL import Image

from orchestrator import media
from orchestrator.core.errors import AssetError
from orchestrator.media import (
    REGISTRY,
    USER_AGENT,
    AssetServer,
    AssetStore,
    b64,
    data_url,
    file_url,
)


class Origin:
    """A loopback stand-in for the S3 bucket: serves `files` by path, records every request."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.status: int | None = None  # answer every request with this status instead
        self.requests: list[tuple[str, str | None]] = []  # (path, User-Agent)
        self._lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with origin._lock:
                    origin.requests.append((self.path, self.headers.get("User-Agent")))
                body = origin.files.get(urllib.parse.urlsplit(self.path).path)
                status = origin.status or (200 if body is not None else 404)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if status == 200 and body else 0))
                self.end_headers()
                if status == 200 and body:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})

    def serve(self, key: str, body: bytes) -> bytes:
        self.files[urllib.parse.urlsplit(REGISTRY[key].url).path] = body
        return body

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    o.thread.start()
    try:
        yield o
    finally:
        o.server.shutdown()
        o.server.server_close()
        o.thread.join()


def content(key: str, size: int = 4096) -> bytes:
    return (key.encode() * size)[:size]


def store(root: Path, origin: Origin, **kwargs: Any) -> AssetStore:
    return AssetStore(root, offline=False, mirror=origin.url, backoff_s=0.0, **kwargs)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- download and cache ----------------------------------------------------------------------------


def test_every_registry_asset_downloads_once_then_comes_from_the_cache(
    tmp_path: Path, origin: Origin
) -> None:
    bodies = {key: origin.serve(key, content(key)) for key in REGISTRY}
    first = {key: store(tmp_path, origin).get(key) for key in REGISTRY}
    for key, asset in first.items():
        spec = REGISTRY[key]
        assert asset.provenance == "download"
        assert asset.path == tmp_path / spec.filename
        assert asset.path.read_bytes() == bodies[key]
        assert asset.sha256 == sha(bodies[key])
        assert asset.source_url == origin.url + urllib.parse.urlsplit(spec.url).path
        assert (asset.kind, asset.media_type) == (spec.kind, spec.media_type)
        sidecar = tmp_path / f"{spec.filename}.sha256"
        assert sidecar.read_text() == f"{sha(bodies[key])}  {spec.filename}\n"
    assert len(origin.requests) == len(REGISTRY)
    assert {ua for _, ua in origin.requests} == {USER_AGENT}

    again = store(tmp_path, origin)
    for key in REGISTRY:
        asset = again.get(key)
        assert asset.provenance == "cache"
        assert asset.sha256 == first[key].sha256
    assert len(origin.requests) == len(REGISTRY)  # the second run downloaded nothing
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_registry_points_at_the_upstream_example_urls() -> None:
    s3 = "https://vllm-public-assets.s3.us-west-2.amazonaws.com"
    assert REGISTRY["image"].url == (
        f"{s3}/vision_model_images/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"
    )
    assert REGISTRY["duck"].url == f"{s3}/multimodal_asset/duck.jpg"
    assert REGISTRY["lion"].url == f"{s3}/multimodal_asset/lion.jpg"
    assert REGISTRY["winning_call"].url == f"{s3}/multimodal_asset/winning_call.ogg"
    assert REGISTRY["azacinto_foscolo"].url == f"{s3}/multimodal_asset/azacinto_foscolo.ogg"
    assert REGISTRY["video"].url == (
        "http://commondatastorage.googleapis.com/gtv-videos-bucket/sample/ForBiggerFun.mp4"
    )
    assert {k: s.kind for k, s in REGISTRY.items()} == {
        "image": "image",
        "duck": "image",
        "lion": "image",
        "winning_call": "audio",
        "azacinto_foscolo": "audio",
        "video": "video",
    }
    assert REGISTRY["winning_call"].media_type == "audio/ogg"
    assert AssetStore(Path("unused")).url_of(REGISTRY["duck"]) == REGISTRY["duck"].url


def test_progress_hook_sees_every_byte(tmp_path: Path, origin: Origin) -> None:
    body = origin.serve("video", content("video", 300_000))
    calls: list[tuple[str, int, int | None]] = []
    store(tmp_path, origin, on_progress=lambda *args: calls.append(args)).get("video")
    assert len(calls) > 1
    assert all(key == "video" and total == len(body) for key, _, total in calls)
    assert [done for _, done, _ in calls] == sorted(done for _, done, _ in calls)
    assert calls[-1][1] == len(body)


# -- verification ----------------------------------------------------------------------------------


def test_a_tampered_cache_file_is_an_error_naming_both_hashes(tmp_path: Path, origin: Origin) -> None:
    body = origin.serve("duck", content("duck"))
    path = store(tmp_path, origin).get("duck").path
    path.write_bytes(b"not the duck")
    with pytest.raises(AssetError) as caught:
        store(tmp_path, origin).get("duck")
    message = str(caught.value)
    assert "'duck'" in message
    assert sha(body) in message
    assert sha(b"not the duck") in message
    assert len(origin.requests) == 1  # never silently replaced by a fresh download either


def test_a_pinned_hash_rejects_a_different_download(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(REGISTRY, "lion", replace(REGISTRY["lion"], sha256="0" * 64))
    body = origin.serve("lion", content("lion"))
    with pytest.raises(AssetError) as caught:
        store(tmp_path, origin).get("lion")
    assert "0" * 64 in str(caught.value)
    assert sha(body) in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-trusted left behind


def test_a_pinned_hash_accepts_the_matching_download(
    tmp_path: Path, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = origin.serve("lion", content("lion"))
    monkeypatch.setitem(REGISTRY, "lion", replace(REGISTRY["lion"], sha256=sha(body)))
    assert store(tmp_path, origin).get("lion").provenance == "download"
    assert store(tmp_path, origin).get("lion").provenance == "cache"


def test_the_first_recorded_hash_binds_a_later_download(tmp_path: Path, origin: Origin) -> None:
    origin.serve("duck", content("duck"))
    path = store(tmp_path, origin).get("duck").path
    path.unlink()  # the sidecar stays
    origin.serve("duck", b"the upstream file changed")
    with pytest.raises(AssetError, match="duck"):
        store(tmp_path, origin).get("duck")
    assert not path.exists()


def test_a_cached_file_without_sidecar_is_recorded_on_first_use(tmp_path: Path) -> None:
    (tmp_path / "duck.jpg").write_bytes(b"my own duck")
    asset = AssetStore(tmp_path, offline=True).get("duck")
    assert asset.provenance == "cache"
    assert (tmp_path / "duck.jpg.sha256").read_text().split()[0] == sha(b"my own duck")


# -- synthetic stand-ins ---------------------------------------------------------------------------


def test_a_missing_file_falls_back_to_synthetic_without_retrying(
    tmp_path: Path, origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.media.store"):
        asset = store(tmp_path, origin).get("winning_call")
    assert asset.provenance == "synthetic"
    assert asset.path == tmp_path / "synthetic" / "winning_call.wav"
    assert asset.media_type == "audio/wav"
    assert asset.source_url is None
    assert len(origin.requests) == 1  # a 404 does not get better by asking again
    assert "HTTP 404" in caplog.text
    assert "synthetic" in caplog.text


def test_a_server_error_is_retried_then_falls_back_to_synthetic(tmp_path: Path, origin: Origin) -> None:
    origin.serve("video", content("video"))
    origin.status = 503
    asset = store(tmp_path, origin).get("video")
    assert asset.provenance == "synthetic"
    assert len(origin.requests) == 3
    assert not (tmp_path / "ForBiggerFun.mp4").exists()


def test_an_unreachable_origin_falls_back_to_synthetic(tmp_path: Path) -> None:
    dead = Origin()
    dead.server.server_close()  # a port that refuses connections
    asset = AssetStore(tmp_path, mirror=dead.url, backoff_s=0.0, tries=2).get("image")
    assert asset.provenance == "synthetic"


def test_offline_uses_the_cache_or_synthesises_without_any_request(tmp_path: Path, origin: Origin) -> None:
    origin.serve("duck", content("duck"))
    store(tmp_path, origin).get("duck")
    offline = AssetStore(tmp_path, offline=True, mirror=origin.url)
    assert offline.get("duck").provenance == "cache"
    lion = offline.get("lion")
    assert lion.provenance == "synthetic"
    assert lion.path == tmp_path / "synthetic" / "lion.jpg"
    assert origin.paths() == ["/multimodal_asset/duck.jpg"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> AssetStore:
    return AssetStore(tmp_path_factory.mktemp("synthetic"), offline=True)


@pytest.mark.parametrize("key", ["image", "duck", "lion"])
def test_synthetic_images_are_jpegs(synthetic: AssetStore, key: str) -> None:
    asset = synthetic.get(key)
    assert (asset.kind, asset.media_type, asset.path.suffix) == ("image", "image/jpeg", ".jpg")
    with Image.open(asset.path) as image:
        assert image.format == "JPEG"
        assert image.size == (256, 256)
        image.load()


def test_synthetic_video_is_an_mp4_with_16_frames(synthetic: AssetStore) -> None:
    asset = synthetic.get("video")
    assert (asset.kind, asset.media_type) == ("video", "video/mp4")
    with av.open(str(asset.path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) >= 16
    assert (frames[0].width, frames[0].height) == (64, 64)


@pytest.mark.parametrize("key", ["winning_call", "azacinto_foscolo"])
def test_synthetic_audio_is_16khz_mono_wav(synthetic: AssetStore, key: str) -> None:
    asset = synthetic.get(key)
    assert (asset.kind, asset.media_type) == ("audio", "audio/wav")
    with wave.open(str(asset.path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (1, 16000, 2)
        assert w.getnframes() / 16000 >= 2.0


def test_synthetic_assets_differ_per_key_and_repeat_per_run(synthetic: AssetStore, tmp_path: Path) -> None:
    assert synthetic.get("duck").sha256 != synthetic.get("lion").sha256
    assert synthetic.get("winning_call").sha256 != synthetic.get("azacinto_foscolo").sha256
    fresh = AssetStore(tmp_path, offline=True)
    for key in ("duck", "winning_call"):
        assert fresh.get(key).sha256 == synthetic.get(key).sha256


def test_a_damaged_synthetic_file_is_regenerated(tmp_path: Path) -> None:
    first = AssetStore(tmp_path, offline=True).get("duck")
    first.path.write_bytes(b"broken")
    again = AssetStore(tmp_path, offline=True).get("duck")
    assert again.sha256 == first.sha256
    assert again.path.read_bytes() != b"broken"


def test_an_unknown_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"unknown asset 'dog'.*duck"):
        AssetStore(tmp_path, offline=True).get("dog")


# -- profile media ---------------------------------------------------------------------------------


def test_a_local_profile_file_is_copied_into_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "elsewhere" / "cat.PNG"
    source.parent.mkdir()
    source.write_bytes(b"\x89PNG cat")
    cache = tmp_path / "cache"
    asset = AssetStore(cache, offline=True).custom(str(source))
    assert (asset.kind, asset.media_type, asset.provenance) == ("image", "image/png", "profile")
    assert asset.path.parent == cache / "custom"
    assert asset.path.read_bytes() == b"\x89PNG cat"
    assert asset.sha256 == sha(b"\x89PNG cat")
    assert asset.source_url == source.resolve().as_uri()
    assert AssetStore(cache, offline=True).custom(source.as_uri()) == asset


def test_a_missing_or_unknown_profile_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(AssetError, match=r"nope\.jpg.*no such file"):
        AssetStore(tmp_path, offline=True).custom(str(missing))
    odd = tmp_path / "notes.txt"
    odd.write_text("hi")
    with pytest.raises(AssetError, match=r"notes\.txt.*extension"):
        AssetStore(tmp_path, offline=True).custom(str(odd))


def test_a_profile_url_downloads_once(tmp_path: Path, origin: Origin) -> None:
    origin.files["/media/clip.wav"] = b"RIFF clip"
    url = f"{origin.url}/media/clip.wav"
    asset = store(tmp_path, origin).custom(url)
    assert (asset.kind, asset.media_type, asset.provenance) == ("audio", "audio/wav", "download")
    assert asset.source_url == url
    assert asset.path.read_bytes() == b"RIFF clip"
    again = store(tmp_path, origin).custom(url)
    assert (again.provenance, again.path) == ("cache", asset.path)
    assert origin.paths() == ["/media/clip.wav"]


def test_a_profile_url_that_fails_is_an_error_not_a_substitute(tmp_path: Path, origin: Origin) -> None:
    url = f"{origin.url}/media/gone.mp4"
    with pytest.raises(AssetError, match=r"gone\.mp4.*HTTP 404"):
        store(tmp_path, origin).custom(url)
    with pytest.raises(AssetError, match="offline"):
        AssetStore(tmp_path, offline=True).custom(url)


# -- the loopback origin and encodings -------------------------------------------------------------


def test_asset_server_serves_the_cache_and_counts_requests(tmp_path: Path) -> None:
    store_ = AssetStore(tmp_path, offline=True)
    duck = store_.get("duck")
    with AssetServer(tmp_path) as server:
        url = server.url_for(duck)
        assert url == f"{server.base_url}/synthetic/duck.jpg"
        assert url.startswith("http://127.0.0.1:")
        with requests.get(url, timeout=5) as response:
            assert response.status_code == 200
            assert response.content == duck.path.read_bytes()
        with requests.get(f"{server.base_url}/synthetic/", timeout=5) as response:
            assert response.status_code == 404  # no directory listings
        assert server.requests_served == 2
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=5)


def test_asset_server_refuses_files_outside_its_root(tmp_path: Path) -> None:
    outside = AssetStore(tmp_path / "other", offline=True).get("duck")
    with AssetServer(tmp_path / "root") as server, pytest.raises(AssetError, match="outside"):
        server.url_for(outside)


def test_encodings(tmp_path: Path) -> None:
    asset = AssetStore(tmp_path, offline=True).get("winning_call")
    raw = asset.path.read_bytes()
    assert base64.b64decode(b64(asset)) == raw
    url = data_url(asset)
    assert url.startswith("data:audio/wav;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == raw
    assert file_url(asset) == "file://" + str(asset.path.resolve())
    assert media.file_url(asset).startswith("file:///")


def test_an_unwritable_cache_is_an_asset_error(tmp_path: Path, origin: Origin) -> None:
    origin.serve("duck", content("duck"))
    (tmp_path / "file").write_text("a file where the cache directory should be")
    with pytest.raises(AssetError, match="cannot write"):
        store(tmp_path / "file" / "cache", origin).get("duck")
