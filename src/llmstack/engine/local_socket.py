"""Read-only GETs to the local Docker engine's unix socket with the standard library only.

For the no-change `up` fast path (quickup.py), which must not pay for importing the Docker
SDK (requests, paramiko, ...): one container list and a few image inspections, nothing else.
Every other engine call goes through `engine.api.Engine` (containers.py). Hand-written on
purpose: http.client over AF_UNIX is a dozen lines; any error here means "take the full path".
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

TIMEOUT = 5.0  # seconds; the socket is local


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class LocalSocket:
    """One keep-alive connection to the engine at `path` (a unix socket)."""

    def __init__(self, path: str, timeout: float = TIMEOUT) -> None:
        self._conn = _UnixConnection(path, timeout)

    def get(self, url: str) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body or None); OSError/ValueError on failure."""
        self._conn.request("GET", url)
        resp = self._conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if body else None)

    def containers(self, label: str) -> list[dict[str, Any]]:
        """`docker ps -a --filter label=LABEL`, the engine's own JSON."""
        filters = urllib.parse.quote(json.dumps({"label": [label]}))
        status, data = self.get(f"/containers/json?all=1&filters={filters}")
        if status != 200 or not isinstance(data, list):
            raise ValueError(f"container list: HTTP {status}")
        return data

    def image_id(self, ref: str) -> str | None:
        """The id `ref` resolves to on the engine now (None: not there)."""
        status, data = self.get(f"/images/{urllib.parse.quote(ref, safe='')}/json")
        if status == 404:
            return None
        if status != 200 or not isinstance(data, dict):
            raise ValueError(f"image {ref}: HTTP {status}")
        return str(data.get("Id") or "") or None

    def close(self) -> None:
        self._conn.close()
