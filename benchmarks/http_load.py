"""Bounded HTTP load against one stack: latency, time to first token, limiter bursts.

Stdlib http.client on keep-alive connections: the least client overhead, identical for every
variant, so differences between variants are the server path's. Every loop is bounded by a
request count and every socket by a timeout.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

TIMEOUT_S = 60.0
PROMPT = [{"role": "user", "content": "Say hello in one word."}]


@dataclass(frozen=True)
class Target:
    """One way to reach the model: direct, through LiteLLM, through nginx (+TLS)."""

    name: str
    host: str
    port: int
    path: str  # chat completions path
    key: str | None = None
    tls_ca: str | None = None  # verify the server certificate against this CA
    model: str | None = None  # the model it asks for, when not the run's chat model

    def connect(self) -> http.client.HTTPConnection:
        if self.tls_ca:
            # Verified as a client would: the certificate names 127.0.0.1 and localhost.
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=TIMEOUT_S, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        return conn

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Connection": "keep-alive"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h


@dataclass
class Sample:
    target: str
    seconds: float
    status: int
    tokens: int = 0


@dataclass
class Collected:
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)

    def ok_seconds(self, target: str) -> list[float]:
        return [s.seconds for s in self.samples if s.target == target and s.status == 200]


def read_status(sock: socket.socket) -> int:
    """The status code of the HTTP response arriving on `sock` (0 if none came)."""
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0

def chat_body(model: str, max_tokens: int, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": PROMPT, "max_tokens": max_tokens,
                       "temperature": 0, "stream": stream}).encode()


class Client:
    """Keep-alive connections of one thread, one per target (reconnects when closed)."""

    def __init__(self) -> None:
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def _conn(self, target: Target) -> http.client.HTTPConnection:
        conn = self.conns.get(target.name)
        if conn is None:
            conn = self.conns[target.name] = target.connect()
        return conn

    def _send(self, target: Target, body: bytes) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            conn = self._conn(target)
            try:
                conn.request("POST", target.path, body=body, headers=target.headers())
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # The server closed an idle keep-alive connection: reconnect once.
                conn.close()
                del self.conns[target.name]
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def chat(self, target: Target, model: str, max_tokens: int) -> Sample:
        """One non-streaming completion; the time until the whole answer has arrived."""
        body = chat_body(target.model or model, max_tokens, stream=False)
        started = time.perf_counter()
        resp = self._send(target, body)
        data = resp.read()
        elapsed = time.perf_counter() - started
        tokens = 0
        if resp.status == 200:
            tokens = int(json.loads(data).get("usage", {}).get("completion_tokens", 0))
        self._close_if_needed(target, resp)
        return Sample(target.name, elapsed, resp.status, tokens)

    def first_token(self, target: Target, model: str, max_tokens: int) -> Sample:
        """One streaming completion; the time until the first content token arrives."""
        body = chat_body(target.model or model, max_tokens, stream=True)
        started = time.perf_counter()
        resp = self._send(target, body)
        first: float | None = None
        tokens = 0
        if resp.status != 200:
            resp.read()
            self._close_if_needed(target, resp)
            return Sample(target.name, time.perf_counter() - started, resp.status)
        while True:
            line = resp.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            try:
                choices = json.loads(payload).get("choices") or []
            except ValueError:
                continue
            content = (choices[0].get("delta") or {}).get("content") if choices else None
            if content:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - started
        resp.read()  # drain to the end so the connection can be reused
        self._close_if_needed(target, resp)
        status = 200 if first is not None else 599  # a stream with no token is a failure
        return Sample(target.name, first if first is not None else 0.0, status, tokens)

    def _close_if_needed(self, target: Target, resp: http.client.HTTPResponse) -> None:
        if resp.will_close:
            self.conns.pop(target.name).close()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


Op = Callable[[Client, Target], Sample]


def interleaved(targets: list[Target], op: Op, rounds: int, concurrency: int, seed: int,
                deadline: float, warmup: int = 1) -> Collected:
    """`rounds` rounds; in each, every target (in a shuffled order) gets a burst of
    `concurrency` simultaneous requests. Interleaving spreads drift over all targets."""
    rng = random.Random(seed)
    collected = Collected()
    local = threading.local()
    clients: list[Client] = []
    clients_lock = threading.Lock()

    def client() -> Client:
        if not hasattr(local, "client"):
            local.client = Client()
            with clients_lock:
                clients.append(local.client)
        c: Client = local.client
        return c

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        def burst(target: Target, record: bool) -> None:
            barrier = threading.Barrier(concurrency)

            def one() -> None:
                c = client()
                barrier.wait(timeout=TIMEOUT_S)
                try:
                    sample = op(c, target)
                except (OSError, http.client.HTTPException):
                    sample = Sample(target.name, 0.0, 0)  # counted as a failure
                    broken = c.conns.pop(target.name, None)
                    if broken is not None:
                        broken.close()
                if record:
                    collected.add(sample)

            for f in [pool.submit(one) for _ in range(concurrency)]:
                f.result()

        for _ in range(warmup):
            if time.monotonic() > deadline:
                break
            for target in targets:
                burst(target, record=False)
        for i in range(rounds):
            if i and time.monotonic() > deadline:
                break  # at least one measured round, however slow the machine is
            order = list(targets)
            rng.shuffle(order)
            for target in order:
                burst(target, record=True)
    for c in clients:
        c.close()
    return collected


def summary(values: list[float], scale: float = 1000.0) -> dict[str, float | int]:
    """n, p50, p95, p99, mean, min, max (ms when values are seconds)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(ordered), "p50": round(percentile(ordered, 50) * scale, 2),
            "p95": round(percentile(ordered, 95) * scale, 2),
            "p99": round(percentile(ordered, 99) * scale, 2),
            "mean": round(sum(ordered) / len(ordered) * scale, 2),
            "min": round(ordered[0] * scale, 2), "max": round(ordered[-1] * scale, 2)}


def percentile(ordered: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- Rate limiter ---------------------------------------------------------------------------


def burst_at_once(host: str, port: int, path: str, key: str, count: int) -> dict[str, Any]:
    """`count` GETs sent as close to simultaneously as possible (connections opened first,
    then every request written after one barrier); returns statuses and the send spread."""
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Authorization: Bearer {key}\r\nConnection: close\r\n\r\n").encode()
    socks = [socket.create_connection((host, port), timeout=TIMEOUT_S) for _ in range(count)]
    sent_at: list[float] = [0.0] * count
    statuses: list[int] = [0] * count
    barrier = threading.Barrier(count)

    def one(i: int) -> None:
        sock = socks[i]
        try:
            barrier.wait(timeout=TIMEOUT_S)
            sent_at[i] = time.perf_counter()
            sock.sendall(request)
            statuses[i] = read_status(sock)
        except OSError:
            statuses[i] = 0
        finally:
            sock.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    spread = max(sent_at) - min(sent_at)
    return {"sent": count, "accepted": statuses.count(200), "rejected": statuses.count(429),
            "other": count - statuses.count(200) - statuses.count(429),
            "send_spread_ms": round(spread * 1000, 2)}
