"""The served models, as GET /v1/models lists them: one reader for readiness and for attaching."""

from __future__ import annotations

import http.client
import json
import urllib.parse

from orchestrator.core.errors import ServerError


def list_models(base_url: str, api_key: str | None, timeout_s: float = 10.0) -> list[str]:
    """The model ids the server at `base_url` (ending in /v1) serves, or a ServerError saying why not."""
    url = base_url.rstrip("/") + "/models"
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        conn = connection(parts.hostname or "", parts.port, timeout=max(timeout_s, 0.05))
    except ValueError:
        raise ServerError(f"cannot connect to {url}: not a host and port") from None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        conn.request("GET", parts.path or "/", headers=headers)
        response = conn.getresponse()
        status, body = response.status, response.read()
    except (OSError, http.client.HTTPException):
        raise ServerError(f"cannot connect to {url}", hint="is the server running at that address?") from None
    finally:
        conn.close()
    if status != 200:
        hint = "pass --api-key (or VLLM_API_KEY)" if status == 401 else None
        raise ServerError(f"GET {url} answered HTTP {status}", hint=hint)
    models = parse_models(body)
    if models is None:
        raise ServerError(f"GET {url} answered without a model list")
    return models


def parse_models(body: bytes) -> list[str] | None:
    """The ids in a /v1/models body, or None when it is not a model list."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    return [str(entry["id"]) for entry in entries if isinstance(entry, dict) and "id" in entry]
