"""The stack's `/health`: probes every service's own readiness endpoint, never a model.

Runs in its own small container (stdlib only, Python 3.11) as
`python3 healthd.py CONFIG.json`. Answers 200 when every service is ready, else 503 ("degraded").
nginx proxies `GET /health` with a valid key to `/health` (which service is not ready, probe
details and latencies) and without one to `/summary` (the status alone): the details would
tell an anonymous caller the model names and what is down.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CACHE_SECONDS = 1.0  # bounds probe traffic however often clients poll /health


def probe(url: str, timeout: float) -> dict[str, Any]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            ok = 200 <= resp.status < 300
            detail = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        ok, detail = False, f"HTTP {exc.code}" + (" (loading)" if exc.code == 503 else "")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        ok, detail = False, f"unreachable: {reason}"
    return {"ready": ok, "detail": detail,
            "latency_ms": round((time.monotonic() - started) * 1000, 1)}


def status(ready: bool) -> str:
    return "ok" if ready else "degraded"


def summary(code: int) -> bytes:
    """The anonymous answer: the status and nothing else."""
    return (json.dumps({"status": status(code == 200)}) + "\n").encode()


class Checker:
    def __init__(self, checks: dict[str, str], timeout: float) -> None:
        self.checks = checks
        self.timeout = timeout
        self.lock = threading.Lock()
        self.cached: tuple[float, int, bytes] | None = None
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(16, len(checks))))

    def report(self) -> tuple[int, bytes]:
        with self.lock:
            now = time.monotonic()
            if self.cached and now - self.cached[0] < CACHE_SECONDS:
                return self.cached[1], self.cached[2]
            names = list(self.checks)
            results = dict(zip(names, self.pool.map(
                lambda n: probe(self.checks[n], self.timeout), names), strict=True))
            down = [n for n, r in results.items() if not r["ready"]]
            body = {"status": status(not down), "not_ready": down, "services": results}
            code = 200 if not down else 503
            payload = (json.dumps(body, sort_keys=True) + "\n").encode()
            self.cached = (now, code, payload)
            return code, payload


def serve(config_path: str, bind: str = "0.0.0.0") -> None:
    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    checker = Checker(config["checks"], float(config.get("timeout", 2.0)))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/live":  # the health service itself is up (its own readiness)
                code, payload = 200, b'{"status":"live"}\n'
            elif path == "/summary":
                code = checker.report()[0]
                payload = summary(code)
            elif path not in ("/health", "/"):
                code, payload = 404, b'{"error":"not found"}\n'
            else:
                code, payload = checker.report()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # nginx logs every request already

    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("0.0.0.0", int(config["port"])), Handler)
    server.serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1])
