"""A bounded steady load through the edge that counts every response.

Clients on their own keep-alive connections (stdlib http.client, no retry: a failed request is
counted, never hidden) send a mix of chat, completions and embeddings, streamed and not, paced
under one shared rate so the per-IP limiter never decides. Each request becomes a Record; the
soak benchmark and the steady-load integration test read the same records.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_S = 120.0
PROMPT = "Say hello in one word."


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix."""

    name: str
    path: str
    stream: bool
    body: dict[str, Any]

    def payload(self) -> bytes:
        return json.dumps({**self.body, **({"stream": True} if self.stream else {})}).encode()


def kinds(chat_model: str, embed_model: str | None, max_tokens: int) -> list[Kind]:
    """The mix: chat and completions, each streamed and not, and embeddings when served.
    Streamed kinds are half of the generating ones."""
    chat = {"model": chat_model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": PROMPT}]}
    comp = {"model": chat_model, "max_tokens": max_tokens, "temperature": 0, "prompt": PROMPT}
    mix = [Kind("chat", "/v1/chat/completions", False, chat),
           Kind("chat-stream", "/v1/chat/completions", True, chat),
           Kind("completions", "/v1/completions", False, comp),
           Kind("completions-stream", "/v1/completions", True, comp)]
    if embed_model:
        mix.append(Kind("embeddings", "/v1/embeddings", False,
                        {"model": embed_model, "input": PROMPT}))
    return mix


@dataclass(frozen=True)
class Record:
    """One request: when it started (seconds from the load's start), what it was, its status
    (0: no HTTP answer) and, for a failure, what failed."""

    start: float
    kind: str
    status: int
    seconds: float
    failure: str | None = None  # None: a complete 200 answer

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class Pacer:
    """Request starts at most `rate` per second over all clients (spacing, never a burst to
    catch up), until `deadline` or `limit` requests."""

    rate: float
    deadline: float
    limit: int
    stop: threading.Event = field(default_factory=threading.Event)
    _next: float = 0.0
    _issued: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def next_slot(self) -> int | None:
        """Wait for the next start; its sequence number, or None when the load is over."""
        with self._lock:
            now = time.monotonic()
            if self._issued >= self.limit or now >= self.deadline or self.stop.is_set():
                return None
            due = max(self._next, now)
            self._next = due + 1.0 / self.rate
            n = self._issued
            self._issued += 1
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return n


def _check_body(kind: Kind, data: bytes) -> str | None:
    try:
        body = json.loads(data)
    except ValueError:
        return "bad_json"
    key = "data" if kind.path.endswith("/embeddings") else "choices"
    return None if body.get(key) else "bad_body"


def _read_stream(resp: http.client.HTTPResponse) -> str | None:
    """Read an SSE answer to its end; None when it was complete ([DONE] after data)."""
    chunks = 0
    while True:
        line = resp.readline()
        if not line:
            return "stream_cut"
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            resp.read()
            return None if chunks else "stream_empty"
        if b'"error"' in payload[:20]:
            return "stream_error"
        chunks += 1


class LoadClient:
    """One client: one keep-alive connection to the edge, reopened only when the server said
    it would close it (or after a failure)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
                        "Connection": "keep-alive"}
        self.conn: http.client.HTTPConnection | None = None

    def send(self, kind: Kind, t0: float) -> Record:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        started = time.monotonic()
        status, failure = 0, None
        try:
            self.conn.request("POST", kind.path, body=kind.payload(), headers=self.headers)
            resp = self.conn.getresponse()
            status = resp.status
            if status != 200:
                resp.read()
                failure = f"http_{status}"
            elif kind.stream:
                failure = _read_stream(resp)
            else:
                failure = _check_body(kind, resp.read())
            if resp.will_close:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            failure = type(exc).__name__
            self.close()
        return Record(round(started - t0, 3), kind.name, status,
                      round(time.monotonic() - started, 4), failure)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def run(host: str, port: int, key: str, mix: list[Kind], clients: int, rate: float,
        duration_s: float, max_requests: int,
        on_record: Callable[[Record], None] | None = None,
        stop: threading.Event | None = None) -> list[Record]:
    """`clients` threads share one pacer; request n is of kind mix[n % len(mix)]. Bounded by
    `duration_s` and `max_requests` (and ended early by `stop`, requests in flight finishing);
    returns every record in start order."""
    t0 = time.monotonic()
    pacer = Pacer(rate, t0 + duration_s, max_requests, stop or threading.Event())
    records: list[Record] = []
    lock = threading.Lock()

    def worker() -> None:
        client = LoadClient(host, port, key)
        try:
            while (n := pacer.next_slot()) is not None:
                record = client.send(mix[n % len(mix)], t0)
                with lock:
                    records.append(record)
                if on_record is not None:
                    on_record(record)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + TIMEOUT_S + 30)
    return sorted(records, key=lambda r: r.start)


def failures(records: list[Record]) -> dict[str, int]:
    """{failure kind: count}, empty when every request got its complete 200 answer."""
    out: dict[str, int] = {}
    for r in records:
        if r.failure is not None:
            out[r.failure] = out.get(r.failure, 0) + 1
    return dict(sorted(out.items()))
