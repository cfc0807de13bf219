"""A loopback Hugging Face hub for the prefetch tests: real HTTP on 127.0.0.1, port 0.

It answers what huggingface_hub's model_info / list_repo_tree / hf_hub_download ask for a small repo:
    GET  /api/models/{repo}[/revision/{rev}]   model info; `?blobs=True` adds sizes and LFS hashes;
                                               `safetensors` (parameters by dtype) where the repo has them
    GET  /api/models/{repo}/tree/{rev}[/path]  the file listing
    HEAD /{repo}/resolve/{rev}/{file}          X-Repo-Commit, ETag, Content-Length
    GET  /{repo}/resolve/{rev}/{file}          the bytes; honours `Range: bytes=N-` (206)
Errors carry the hub's X-Error-Code (RepoNotFound, RevisionNotFound, GatedRepo, EntryNotFound).
A gated repo lists its files to anyone but answers 401 without a token and 403 with a token it
does not know. `sizes[file] = N` lists a file of N bytes that is never served (weights a test
must not download: model_info and the tree show it, a download of it is refused and recorded).
`stall_after[file] = N` makes the first download of that file send N bytes and then
hang until `release()`: the moment a test interrupts a download.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN = 1024  # files at least this big are LFS files, as the hub stores weights


@dataclass
class FakeRepo:
    """A model repository with one commit, reachable by `main` and by its hash."""

    repo_id: str
    files: dict[str, bytes]
    gated: bool = False
    tokens: frozenset[str] = frozenset()  # tokens allowed to download a gated repo
    sizes: dict[str, int] = field(default_factory=dict)  # listed, never served (see the module doc)
    parameters: dict[str, int] = field(default_factory=dict)  # dtype -> count, as the hub computes

    @property
    def sha(self) -> str:
        digest = hashlib.sha1(self.repo_id.encode())
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha1(self.files[name]).digest())
        for name in sorted(self.sizes):
            digest.update(name.encode() + str(self.sizes[name]).encode())
        return digest.hexdigest()

    @property
    def listing(self) -> list[str]:
        """Every file name, served or only listed."""
        return sorted({*self.files, *self.sizes})

    def etag(self, name: str) -> str:
        data = self.files[name]
        if len(data) >= LFS_MIN:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo]
    stall_after: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _gate: threading.Event = field(default_factory=threading.Event)
    _stalled: set[str] = field(default_factory=set)
    stalled: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        """Let every stalled download go on (a killed client's connection then just fails)."""
        self._gate.set()

    def downloads(self, name: str) -> list[Request]:
        """The GET requests for a file's bytes."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and "/resolve/" in r.path and r.path.endswith("/" + name)
        ]


_API = re.compile(
    r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?$"
)
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _error(self, status: int, code: str) -> None:
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("Content-Type", "application/json")
            payload = json.dumps({"error": code}).encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _json(self, obj: object) -> None:
            payload = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _repo(self, repo_id: str, rev: str | None) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound")  # the real hub does not tell unknown from private
                return None
            if rev not in (None, "main", repo.sha):
                self._error(404, "RevisionNotFound")
                return None
            return repo

        def _serve(self, *, body: bool) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            hub.requests.append(Request(self.command, path, {k.lower(): v for k, v in self.headers.items()}))
            if m := _API.match(path):
                repo = self._repo(m["repo"], m["rev"])
                if repo is not None:
                    self._api(repo, m["kind"], parse_qs(url.query))
            elif m := _RESOLVE.match(path):
                repo = self._repo(m["repo"], m["rev"])
                if repo is not None:
                    self._resolve(repo, m["file"], body=body)
            else:
                self._error(404, "RepoNotFound")

        def _api(self, repo: FakeRepo, kind: str | None, query: dict[str, list[str]]) -> None:
            if kind == "tree":
                self._json([_tree_entry(repo, name) for name in repo.listing])
                return
            blobs = query.get("blobs", ["false"])[0].lower() == "true"
            siblings = []
            for name in repo.listing:
                sibling: dict[str, object] = {"rfilename": name}
                if blobs:
                    entry = _tree_entry(repo, name)
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if "lfs" in entry:
                        lfs = entry["lfs"]
                        assert isinstance(lfs, dict)
                        sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": 134}
                siblings.append(sibling)
            extra: dict[str, object] = {}
            if repo.parameters:
                extra["safetensors"] = {"parameters": repo.parameters, "total": sum(repo.parameters.values())}
            self._json(
                {
                    **extra,
                    "_id": repo.sha[:24],
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": siblings,
                }
            )

        def _resolve(self, repo: FakeRepo, name: str, *, body: bool) -> None:
            if repo.gated:
                auth = self.headers.get("Authorization", "")
                if not auth.startswith("Bearer "):
                    self._error(401, "GatedRepo")
                    return
                if auth.removeprefix("Bearer ") not in repo.tokens:
                    self._error(403, "GatedRepo")
                    return
            data = repo.files.get(name)
            if data is None:
                self._error(404, "EntryNotFound")  # also a listed-only file: never downloaded
                return
            start = 0
            if (rng := re.match(r"bytes=(\d+)-$", self.headers.get("Range", ""))) and body:
                start = min(int(rng[1]), len(data))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{repo.etag(name)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            stall = hub.stall_after.get(name)
            if stall is not None and name not in hub._stalled and start < stall:
                hub._stalled.add(name)
                self.wfile.write(data[start:stall])
                self.wfile.flush()
                hub.stalled.set()
                hub._gate.wait()
                self.close_connection = True
                return  # the client was killed or gave up; never finish this response
            self.wfile.write(data[start:])

    return Handler


def _tree_entry(repo: FakeRepo, name: str) -> dict[str, object]:
    if name in repo.sizes:  # an LFS file we only list: its pointer's hashes stand for the content's
        size, data = repo.sizes[name], name.encode()
    else:
        data = repo.files[name]
        size = len(data)
    oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    entry: dict[str, object] = {"type": "file", "path": name, "size": size, "oid": oid}
    if size >= LFS_MIN:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
    return entry


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """Run the fake hub on 127.0.0.1 (a free port) for the duration of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.release()
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class RefusingHub:
    """A hub address that takes no request: each connection is accepted, counted and closed unanswered."""

    url: str = ""
    connections: int = 0


@contextmanager
def refusing() -> Iterator[RefusingHub]:
    """An air-gapped box's view of the hub, on 127.0.0.1: every connection dropped, and counted."""
    import socket

    hub = RefusingHub()
    listener = socket.create_server(("127.0.0.1", 0))
    hub.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    done = threading.Event()

    def drop() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener closed
                return
            hub.connections += 1
            conn.close()

    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        done.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join()
