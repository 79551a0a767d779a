"""The stack's `/health`: probes every service's own readiness endpoint, never a model.

Runs in its own small container (stdlib only, Python 3.11) as
`python3 healthd.py CONFIG.json`. Answers 200 when every service is ready, else 503 ("degraded").
nginx proxies `GET /health` with a valid key to `/health` (which service is not ready, probe
details and latencies) and without one to `/summary` (the status alone): the details would
tell an anonymous caller the model names and what is down.

A check is a URL answered 2xx when ready, or for Ollama an object: Ollama answers /api/tags
before a model is pulled and loads a model only on its first request, so it is ready when
its tag is listed and a warm-up request (started here, in the background) has answered.
`GET /ready/<check>` runs one check: `up` polls it for such services.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CACHE_SECONDS = 1.0  # bounds probe traffic however often clients poll /health
WARM_UP_TIMEOUT = 3600.0  # a first load of a large model from a cold disk takes minutes


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


def ollama_tag(tag: str) -> str:
    """A tag as /api/tags lists it: "llama3.1" is "llama3.1:latest"."""
    return tag if ":" in tag.rsplit("/", 1)[-1] else f"{tag}:latest"


class OllamaCheck:
    """Ready when `tag` is listed at `url` (/api/tags) and a POST of `warm_up` to `warm_url`
    has answered 2xx; the warm-up runs in its own thread, once per server start."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.url: str = config["url"]
        self.tag = ollama_tag(config["tag"])
        self.warm_url: str = config["warm_url"]
        self.warm_up = json.dumps(config["warm_up"]).encode()
        self.lock = threading.Lock()
        self.state = "cold"  # cold | warming | warm | failed: <why>

    def _warm(self) -> None:
        request = urllib.request.Request(self.warm_url, data=self.warm_up, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=WARM_UP_TIMEOUT) as resp:
                state = "warm" if 200 <= resp.status < 300 else f"failed: HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            state = f"failed: HTTP {exc.code}"
        except (OSError, ValueError) as exc:
            state = f"failed: {getattr(exc, 'reason', exc)}"
        with self.lock:
            self.state = state

    def __call__(self, timeout: float) -> dict[str, Any]:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(self.url, timeout=timeout) as resp:
                listed = [m.get("name") or m.get("model") for m in
                          json.loads(resp.read() or b"{}").get("models") or []]
        except urllib.error.HTTPError as exc:
            return _result(False, f"HTTP {exc.code}", started)
        except (OSError, ValueError) as exc:
            with self.lock:
                self.state = "cold"  # the server is gone: its next start loads again
            return _result(False, f"unreachable: {getattr(exc, 'reason', exc)}", started)
        if self.tag not in listed:
            return _result(False, f"{self.tag} not pulled yet", started)
        with self.lock:
            state = self.state
            if state == "cold" or state.startswith("failed"):
                self.state = "warming"
                threading.Thread(target=self._warm, daemon=True).start()
        if state == "warm":
            return _result(True, "HTTP 200 (loaded)", started)
        detail = f"loading {self.tag}" + (f" (last warm-up {state})"
                                          if state.startswith("failed") else "")
        return _result(False, detail, started)


def _result(ok: bool, detail: str, started: float) -> dict[str, Any]:
    return {"ready": ok, "detail": detail,
            "latency_ms": round((time.monotonic() - started) * 1000, 1)}


def make_check(check: str | dict[str, Any]) -> Any:
    """A callable (timeout) -> result for one entry of the config's `checks`."""
    if isinstance(check, str):
        return lambda timeout: probe(check, timeout)
    if check.get("kind") == "ollama":
        return OllamaCheck(check)
    raise ValueError(f"unknown check {check!r}")


def status(ready: bool) -> str:
    return "ok" if ready else "degraded"


def summary(code: int) -> bytes:
    """The anonymous answer: the status and nothing else."""
    return (json.dumps({"status": status(code == 200)}) + "\n").encode()


class Checker:
    def __init__(self, checks: dict[str, Any], timeout: float) -> None:
        self.checks = {name: make_check(check) for name, check in checks.items()}
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
                lambda n: self.checks[n](self.timeout), names), strict=True))
            down = [n for n, r in results.items() if not r["ready"]]
            body = {"status": status(not down), "not_ready": down, "services": results}
            code = 200 if not down else 503
            payload = (json.dumps(body, sort_keys=True) + "\n").encode()
            self.cached = (now, code, payload)
            return code, payload

    def one(self, name: str) -> tuple[int, bytes]:
        """One check, uncached: 200 when ready, 503 when not, 404 for an unknown name."""
        if name not in self.checks:
            return 404, b'{"error":"no such check"}\n'
        result = self.checks[name](self.timeout)
        return (200 if result["ready"] else 503), (json.dumps(result) + "\n").encode()


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
            elif path.startswith("/ready/"):
                code, payload = checker.one(urllib.parse.unquote(path[len("/ready/"):]))
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
