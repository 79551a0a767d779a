"""The stack's /health service against real local HTTP servers (no Docker)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llmstack import healthd
from tests.helpers import free_port, wait_for


def _server(code: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def backends() -> Iterator[tuple[str, str]]:
    ok, loading = _server(200), _server(503)
    yield (f"http://127.0.0.1:{ok.server_port}/health",
           f"http://127.0.0.1:{loading.server_port}/health")
    ok.shutdown()
    loading.shutdown()


def test_all_ready_is_200(backends: tuple[str, str]) -> None:
    code, body = healthd.Checker({"a": backends[0], "b": backends[0]}, 1.0).report()
    data = json.loads(body)
    assert code == 200 and data["status"] == "ok" and data["not_ready"] == []


def test_names_what_is_not_ready(backends: tuple[str, str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/health"
    checks = {"litellm": backends[0], "model:loading": backends[1], "model:dead": dead}
    code, body = healthd.Checker(checks, 1.0).report()
    data = json.loads(body)
    assert code == 503
    assert sorted(data["not_ready"]) == ["model:dead", "model:loading"]
    assert data["services"]["model:loading"]["detail"] == "HTTP 503 (loading)"
    assert data["services"]["model:dead"]["detail"].startswith("unreachable")


def test_served_over_http(backends: tuple[str, str], tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "health.json"
    config.write_text(json.dumps({"port": port, "checks": {"litellm": backends[1]}}))
    healthd_host = threading.Thread(target=healthd.serve, args=(str(config), "127.0.0.1"),
                                    daemon=True)
    healthd_host.start()

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    assert wait_for(lambda: get("/live")[0] == 200, timeout=10, what="healthd up")
    code, body = get("/health")
    assert code == 503 and json.loads(body)["not_ready"] == ["litellm"]
    # What nginx serves without a key: the status, and not which service is down.
    code, body = get("/summary")
    assert code == 503 and json.loads(body) == {"status": "degraded"}
    assert get("/nope")[0] == 404


class FakeOllama:
    """Ollama's /api/tags and a warm-up route that answers once `loaded` is set."""

    def __init__(self) -> None:
        self.tags: list[str] = []
        self.loaded = threading.Event()
        self.warm_ups: list[dict[str, object]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"models": [{"name": t, "model": t} for t in outer.tags]})
                self._send(200, body.encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                outer.warm_ups.append({"path": self.path,
                                       "body": json.loads(self.rfile.read(length))})
                outer.loaded.wait(10)
                self._send(200, b'{"done": true, "done_reason": "load"}')

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}"


def test_ollama_is_ready_only_with_its_tag_listed_and_a_warm_up_answered() -> None:
    from llmstack.backends import BACKENDS
    from llmstack.spec import ModelSpec

    ollama = FakeOllama()
    model = ModelSpec(name="llama3", backend="ollama", source="ollama:llama3.1")
    check = BACKENDS["ollama"].ready_check(model, ollama.base)
    checker = healthd.Checker({"model:llama3": check}, 1.0)
    code, body = checker.one("model:llama3")
    # /api/tags answers 200 before the model is pulled: not ready.
    assert code == 503 and json.loads(body)["detail"] == "llama3.1:latest not pulled yet"
    assert ollama.warm_ups == []
    ollama.tags = ["llama3.1:latest"]
    code, body = checker.one("model:llama3")
    assert code == 503 and json.loads(body)["detail"] == "loading llama3.1:latest"
    assert wait_for(lambda: ollama.warm_ups, timeout=5, what="a warm-up request") == [
        {"path": "/api/generate", "body": {"model": "llama3.1", "prompt": ""}}]
    assert checker.one("model:llama3")[0] == 503  # still loading: one warm-up, not two
    ollama.loaded.set()
    assert wait_for(lambda: checker.one("model:llama3")[0] == 200, timeout=5, what="ready")
    assert len(ollama.warm_ups) == 1
    assert checker.one("model:none")[0] == 404
    ollama.server.shutdown()
    # The server gone (a restart loads the model again): not ready, and warmed up anew.
    assert checker.one("model:llama3")[0] == 503


def test_an_ollama_embedding_model_warms_up_by_embedding() -> None:
    from llmstack.backends import BACKENDS
    from llmstack.spec import ModelSpec

    model = ModelSpec(name="embed", backend="ollama", task="embedding",
                      source="ollama:nomic-embed-text")
    check = BACKENDS["ollama"].ready_check(model, "http://m:11434")
    assert check is not None
    assert (check["warm_url"], check["warm_up"]) == (
        "http://m:11434/api/embed", {"model": "nomic-embed-text", "input": "warm-up"})
