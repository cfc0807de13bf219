"""A small Chrome DevTools Protocol client: headless Chromium opens a page and reports what it saw.

Only what the report tests need: load a file:// URL, record console errors, exceptions and every
network request, wait until the page's media decoded their metadata, measure the elements, take a
screenshot. Chromium runs in its own session and profile directory and is always ended.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root in a container
    "--disable-gpu",
    "--disable-breakpad",  # no crashpad handler: it leaves Chromium's session and would outlive the test
    "--remote-debugging-port=0",  # Chromium picks the port and writes it to DevToolsActivePort
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
)
# Resolves when every <audio>/<video> has its metadata (readyState >= 1) or failed, then measures.
MEASURE = """
new Promise((resolve) => {
  const media = [...document.querySelectorAll('audio, video')];
  const done = () => media.every((m) => m.readyState >= 1 || m.error);
  const report = () => resolve({
    images: [...document.images].map((i) => ({alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth})),
    media: media.map((m) => ({tag: m.tagName.toLowerCase(), readyState: m.readyState,
                              error: m.error ? m.error.code : null, duration: m.duration})),
    title: document.title,
    height: document.documentElement.scrollHeight,
  });
  const poll = () => (done() ? report() : setTimeout(poll, 20));
  poll();
})
"""


def find_chromium() -> str | None:
    """The Chromium binary: MMDEMO_CHROMIUM, else the first of CANDIDATES on PATH."""
    if chosen := os.environ.get("MMDEMO_CHROMIUM"):
        return chosen
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class PageVisit:
    """What the browser saw while loading one page."""

    url: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""


class Browser:
    """One headless Chromium with one page, driven over its DevTools websocket."""

    def __init__(self, binary: str, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._profile = Path(tempfile.mkdtemp(prefix="mmdemo-chromium-"))
        self._log = (self._profile / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile / 'profile'}", "about:blank"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        self.ws: websocket.WebSocket | None = None
        try:
            self.ws = self._connect()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> websocket.WebSocket:
        port_file = self._profile / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not port_file.is_file() or len(port_file.read_text().splitlines()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start: {self.log_tail()}")
            time.sleep(0.02)
        port = port_file.read_text().splitlines()[0]
        # The page target Chromium opened with about:blank.
        browser = websocket.create_connection(
            f"ws://127.0.0.1:{port}{port_file.read_text().splitlines()[1]}",
            timeout=self.timeout_s,
            suppress_origin=True,
        )
        try:
            browser.send(json.dumps({"id": 1, "method": "Target.getTargets"}))
            while (reply := json.loads(browser.recv())).get("id") != 1:
                pass
        finally:
            browser.close()
        page = next(t for t in reply["result"]["targetInfos"] if t["type"] == "page")
        return websocket.create_connection(
            f"ws://127.0.0.1:{port}/devtools/page/{page['targetId']}",
            timeout=self.timeout_s,
            suppress_origin=True,
        )

    def log_tail(self) -> str:
        """The end of Chromium's own output, for a failure message."""
        self._log.flush()
        return (self._profile / "chromium.log").read_text(errors="replace")[-2000:]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        assert self.ws is not None, "not connected"
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._events.append(message)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The next event `method`, within the timeout."""
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for index, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(index)
            assert self.ws is not None, "not connected"
            self._events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {method} within {self.timeout_s} s")

    def visit(self, path: Path, width: int = 1200, height: int = 1600) -> PageVisit:
        """Open a local file, wait for it and its media, and report what happened."""
        url = path.resolve().as_uri()
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")
        measured = self.call("Runtime.evaluate", expression=MEASURE, awaitPromise=True, returnByValue=True)
        shot = self.call("Page.captureScreenshot", format="png")
        visit = PageVisit(
            url=url, measured=measured["result"]["value"], screenshot=base64.b64decode(shot["data"])
        )
        for event in self._events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                visit.requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                visit.console_errors.append(json.dumps(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                visit.console_errors.append(json.dumps(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                visit.console_errors.append(params["entry"].get("text", ""))
        return visit

    def close(self) -> None:
        """End Chromium and everything it started; remove its profile."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.call("Browser.close")
            with contextlib.suppress(Exception):
                self.ws.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=self.timeout_s)
        # Chromium's helpers (zygote, renderers, GPU process) share its session: end any straggler.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)


@contextlib.contextmanager
def browser(binary: str) -> Iterator[Browser]:
    """A headless Chromium for the block; ended however the block ends."""
    session = Browser(binary)
    try:
        yield session
    finally:
        session.close()
