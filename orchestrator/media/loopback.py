"""The loopback asset server: the asset cache served on 127.0.0.1 so the model server fetches media by URL."""

from __future__ import annotations

import functools
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from orchestrator.core.errors import AssetError
from orchestrator.media.store import Asset

log = logging.getLogger(__name__)


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
            # its shutdown waits for the loop's next look at the flag: at the end of every run, on the
            # way to the reports (0.05 s cost ~25 ms a run; a look every 10 ms costs nothing to see)
            kwargs={"poll_interval": 0.01},
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

    def url_for(self, asset: Asset, host: str = "127.0.0.1") -> str:
        """The loopback URL of a cached asset, by the address the server names our loopback with
        (a container in podman's user-mode network: 10.0.2.2)."""
        try:
            rel = asset.path.resolve().relative_to(self.root)
        except ValueError:
            raise AssetError(f"asset {asset.key!r}: {asset.path} is outside the served {self.root}") from None
        base = self.base_url.replace("127.0.0.1", host, 1)
        return f"{base}/{urllib.parse.quote(rel.as_posix())}"
