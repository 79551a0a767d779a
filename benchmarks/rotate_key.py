"""Benchmark: `llmstack rotate-key` under steady load.

Measures the cutover (command start -> the new key answering 200 through nginx) and counts
failed requests among those sent with a key valid at that moment, while a few streams are in
flight across the switch. The load runs `seconds / 2` before the command and `seconds / 2`
after it returns.

    python benchmarks/rotate_key.py [--dir STACK_DIR] [--seconds 15] [--rate 16] [--grace 0]

Without --dir it brings up its own stack (unique name, free 127.0.0.1 ports, the rate limit
raised so the limiter is not what is measured) and removes it afterwards. Prints JSON.
`measure(stack_dir, seconds)` is the entry point for benchmarks/run.py; the integration test
tests/integration/test_rotate.py drives `rotate_under_load` for its assertions.

An nginx reload closes the old workers' idle keep-alive connections; a request written on one
at that instant is never read and the client sees "server disconnected without sending a
response" (about 1 in 10 reloads at 40 r/s here). Clients resend exactly that case (the
OpenAI SDK does by default), and so does this load, once: `connection_resets_retried` counts
them, `failed_without_client_retry` is what a client that never resends would have seen.

Every loop is bounded (a time cap, timeouts on every socket), and all traffic goes to
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

TIMEOUT_S = 60.0
# Streams are as long as the demo model allows (--n-predict 256): about 2 s on an idle
# 2-core machine, so they are still streaming when nginx reloads (about 1 s into the command).
STREAM_TOKENS = 256
NEVER_ANSWERED = "without sending a response"  # httpx: closed before any response byte
PROMPT = [{"role": "user", "content": "Count from 1 to 100, one number per line."}]


def read_master(env: Path) -> str:
    for line in env.read_text(encoding="utf-8").splitlines():
        if line.startswith("LITELLM_MASTER_KEY="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"no LITELLM_MASTER_KEY in {env}")


class EnvKey:
    """The key in `.env`, re-read when the file is replaced (cheap enough per request)."""

    def __init__(self, env: Path) -> None:
        self.env = env
        self.lock = threading.Lock()
        self.stamp: tuple[int, int] | None = None
        self.key = ""

    def __call__(self) -> str:
        st = self.env.stat()
        stamp = (st.st_ino, st.st_mtime_ns)
        with self.lock:
            if stamp != self.stamp:
                self.key, self.stamp = read_master(self.env), stamp
            return self.key


@dataclass
class Outcome:
    kind: str  # models | chat | stream
    key: str
    sent: float  # time.monotonic()
    done: float = 0.0
    status: int = 0  # 0: no HTTP answer
    error: str = ""
    chunks: int = 0  # streams: data lines with content
    complete: bool = False  # streams: finish_reason and [DONE] seen
    due: float = 0.0  # when the steady schedule wanted it sent
    resets: int = 0  # times the connection closed before any answer (then retried)

    @property
    def ok(self) -> bool:
        return self.status == 200 and (self.kind != "stream" or self.complete) \
            and not self.error


def _stream(client: httpx.Client, base: str, key: str, model: str, tokens: int,
            first: threading.Event) -> Outcome:
    out = Outcome("stream", key, time.monotonic())
    body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "stream": True,
            "temperature": 0, "ignore_eos": True}  # llama.cpp: always the full length
    finish = None
    try:
        with client.stream("POST", f"{base}/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
            out.status = resp.status_code
            for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    out.complete = finish is not None
                    break
                choice = (json.loads(payload).get("choices") or [{}])[0]
                if (choice.get("delta") or {}).get("content"):
                    out.chunks += 1
                    first.set()
                finish = choice.get("finish_reason") or finish
    except (httpx.HTTPError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        first.set()
    out.done = time.monotonic()
    return out


def _one(client: httpx.Client, base: str, key_now: Callable[[], str], kind: str, model: str,
         due: float, retries: int) -> Outcome:
    key = key_now()  # the key a client holds when it sends, not when the request was planned
    out = Outcome(kind, key, time.monotonic(), due=due)
    headers = {"Authorization": f"Bearer {key}"}
    for attempt in range(1 + retries):
        try:
            if kind == "chat":
                resp = client.post(f"{base}/chat/completions", headers=headers, json={
                    "model": model, "messages": PROMPT, "max_tokens": 1, "temperature": 0})
            else:
                resp = client.get(f"{base}/models", headers=headers)
            out.status, out.error = resp.status_code, ""
            break
        except httpx.RemoteProtocolError as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            if NEVER_ANSWERED not in str(exc) or attempt == retries:
                break
            # A reload's old worker closed this idle keep-alive connection as the request
            # went out: nginx never read it. Clients retry exactly this case (the OpenAI SDK
            # does by default); count it.
            out.resets += 1
        except httpx.HTTPError as exc:
            out.error = f"{type(exc).__name__}: {exc}"
            break
    out.done = time.monotonic()
    return out


@dataclass
class Run:
    """What happened during one rotation under load; `summary()` is the benchmark's JSON."""

    grace: str
    switch: str
    rate: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    streams: list[Outcome] = field(default_factory=list)
    command_started: float = 0.0
    command_returned: float = 0.0
    command_rc: int | None = None
    command_stdout: str = ""
    command_stderr: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, line)
    cutover_ms: float | None = None  # command start -> new key answering 200 (seen outside)
    old_key_after_return: int | None = None  # status of the old key right after return
    old_key: str = ""
    new_key: str = ""
    stream_tokens: int = 0

    def marker(self, text: str) -> float | None:
        """When the command printed a progress line containing `text`."""
        return next((t for t, line in self.command_stderr if text in line), None)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes + self.streams if not o.ok]

    def summary(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for o in self.outcomes + self.streams:
            label = str(o.status) if not o.error else o.error.split(":")[0]
            statuses[label] = statuses.get(label, 0) + 1
        lat = sorted(o.done - o.sent for o in self.outcomes if o.kind == "models" and o.ok)
        try:
            reported = json.loads(self.command_stdout)
        except ValueError:
            reported = {}
        reload_at = self.marker("nginx reloaded")
        final_at = self.marker("old key ")  # printed after the final reload was verified
        return {
            "grace": self.grace, "client_switch": self.switch,
            "rate_rps": self.rate, "seconds": self.seconds,
            "requests_sent": len(self.outcomes) + len(self.streams),
            "failed_requests": len(self.failures),
            "connection_resets_retried": sum(o.resets for o in self.outcomes),
            # What a client that never resends would have seen fail.
            "failed_without_client_retry": len(self.failures)
            + sum(o.resets for o in self.outcomes),
            "statuses": dict(sorted(statuses.items())),
            "with_old_key": sum(o.key == self.old_key for o in self.outcomes),
            "with_new_key": sum(o.key == self.new_key for o in self.outcomes),
            "max_send_delay_ms": round(max((o.sent - o.due for o in self.outcomes),
                                           default=0.0) * 1000, 1),
            "streams": len(self.streams), "stream_tokens": self.stream_tokens,
            "streams_complete": sum(s.ok for s in self.streams),
            "streams_spanning_reload": sum(s.sent < reload_at < s.done for s in self.streams)
            if reload_at else 0,
            "streams_spanning_final_reload": sum(s.done > final_at for s in self.streams)
            if final_at else 0,
            "stream_seconds": [round(s.done - s.sent, 1) for s in self.streams],
            "cutover_ms": None if self.cutover_ms is None else round(self.cutover_ms, 1),
            "command_ms": round((self.command_returned - self.command_started) * 1000, 1),
            "command_cutover_ms": reported.get("cutover_ms"),
            "command_duration_ms": reported.get("duration_ms"),
            "command_rc": self.command_rc,
            "old_key_status_after_return": self.old_key_after_return,
            "models_latency_ms": {"p50": round(lat[len(lat) // 2] * 1000, 1),
                                  "p99": round(lat[int(len(lat) * 0.99)] * 1000, 1),
                                  "max": round(lat[-1] * 1000, 1)} if lat else None,
        }


def _base_url(stack_dir: Path) -> tuple[str, str]:
    spec = yaml.safe_load((stack_dir / "stack.yaml").read_text())
    local = (spec.get("listeners") or {}).get("local") or {}
    chat = [m for m in spec["models"] if m.get("task", "chat") == "chat"]
    return f"http://127.0.0.1:{local.get('port', 4000)}/v1", str(chat[0]["name"])


def llmstack_cmd() -> list[str]:
    script = Path(sys.executable).with_name("llmstack")
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmstack"]


def rotate_under_load(stack_dir: Path, seconds: float = 15.0, rate: float = 16.0,
                      grace: str = "0", switch: str = "env", streams: int = 2,
                      chat_every: int = 0, retries: int = 1,
                      extra_args: tuple[str, ...] = ()) -> Run:
    """Steady load for `seconds`; `llmstack rotate-key --grace GRACE` in the middle.

    `switch` is when clients take the new key: "env" (as soon as `.env` holds it; the only
    safe choice with no grace window) or "return" (when the command has returned; needs a
    grace window, since the old key is dropped just before the command returns).
    The steady load is GET /v1/models (key check at the edge, then LiteLLM); with
    `chat_every` N, every Nth request is a one-token chat completion instead (the CPU model's
    speed then shows in the figures, and under heavy CPU contention its timeouts too).
    `retries`: how often a client resends a request whose keep-alive connection was closed
    before any answer (see `_one`); 0 counts those as failures.
    """
    env_path = stack_dir / ".env"
    base, model = _base_url(stack_dir)
    run = Run(grace, switch, rate, seconds)
    run.old_key = read_master(env_path)
    env_key = EnvKey(env_path)
    returned = threading.Event()

    def key_now() -> str:
        if switch == "env":
            return env_key()
        return env_key() if returned.is_set() else run.old_key

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=32)
    with httpx.Client(timeout=TIMEOUT_S, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=96) as pool:
        futures: list[Future[Outcome]] = []
        stream_futures: list[Future[Outcome]] = []
        started = time.monotonic()
        # The load runs `seconds / 2` before the command and `seconds / 2` after it returns
        # (the end is set then); the cap keeps it bounded if something hangs.
        stop_at = [started + seconds + 4 * TIMEOUT_S]

        def pace() -> None:
            i = 0
            while True:
                due = started + i / rate
                if due >= stop_at[0]:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                kind = "chat" if chat_every and i % chat_every == chat_every - 1 \
                    else "models"
                futures.append(pool.submit(_one, client, base, key_now, kind, model, due,
                                           retries))
                i += 1

        pacer = threading.Thread(target=pace, daemon=True)
        pacer.start()
        time.sleep(max(0.0, started + seconds / 2 - time.monotonic()))
        run.stream_tokens = STREAM_TOKENS
        # Streams in flight across the switch: start them and wait for their first token.
        firsts = [threading.Event() for _ in range(streams)]
        for ev in firsts:
            stream_futures.append(pool.submit(_stream, client, base, run.old_key, model,
                                              run.stream_tokens, ev))
        for ev in firsts:
            ev.wait(TIMEOUT_S)

        run.command_started = time.monotonic()
        watcher = threading.Thread(target=_watch_cutover, args=(run, env_path, base),
                                   daemon=True)
        watcher.start()
        cmd = [*llmstack_cmd(), "rotate-key", "--json", "--grace", grace, "-C",
               str(stack_dir), *extra_args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True,
                                env={**os.environ, "CI": "true"})
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            run.command_stderr.append((time.monotonic(), line.rstrip()))
        run.command_stdout = proc.stdout.read()
        run.command_rc = proc.wait(timeout=TIMEOUT_S)
        run.command_returned = time.monotonic()
        returned.set()
        # The contract without grace: refused at once after the command returns.
        run.old_key_after_return = httpx.get(
            f"{base}/models", headers={"Authorization": f"Bearer {run.old_key}"},
            timeout=TIMEOUT_S).status_code
        run.new_key = read_master(env_path)
        stop_at[0] = min(stop_at[0], run.command_returned + seconds / 2)
        pacer.join(seconds + TIMEOUT_S)
        watcher.join(TIMEOUT_S)
        run.outcomes = [f.result(timeout=TIMEOUT_S * 2) for f in futures]
        run.streams = [f.result(timeout=TIMEOUT_S * 5) for f in stream_futures]
    return run


def _watch_cutover(run: Run, env_path: Path, base: str) -> None:
    """From the command's start: poll `.env` for a new key, then ask with it until 200."""
    deadline = run.command_started + TIMEOUT_S
    key = run.old_key
    while key == run.old_key and time.monotonic() < deadline:
        key = read_master(env_path)  # replaced by rename: always whole, never missing
        if key == run.old_key:
            time.sleep(0.005)
    while time.monotonic() < deadline:
        try:
            status = httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {key}"},
                               timeout=5).status_code
        except httpx.HTTPError:
            status = 0
        if status == 200:
            run.cutover_ms = (time.monotonic() - run.command_started) * 1000
            return
        time.sleep(0.01)


def measure(stack_dir: Path, seconds: float) -> dict[str, Any]:
    """One rotation (no grace window) under load on the running stack in `stack_dir`:
    cutover time and failed requests. For benchmarks/run.py."""
    return rotate_under_load(Path(stack_dir), seconds=seconds).summary()


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="a running stack's folder (default: bring "
                        "up a temporary one)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=16.0, help="requests per second")
    parser.add_argument("--grace", default="0")
    parser.add_argument("--runs", type=int, default=1, help="rotations, one per load run")
    parser.add_argument("--chat-every", type=int, default=0, help="every Nth request a "
                        "one-token chat completion (default: none, GET /v1/models only)")
    parser.add_argument("--retries", type=int, default=1, help="resends of a request whose "
                        "keep-alive connection closed before any answer")
    args = parser.parse_args(argv)
    switch = "env" if args.grace in ("0", "0s") else "return"

    def runs(stack_dir: Path) -> list[dict[str, Any]]:
        return [rotate_under_load(stack_dir, args.seconds, args.rate, args.grace, switch,
                                  chat_every=args.chat_every, retries=args.retries).summary()
                for _ in range(args.runs)]

    if args.dir:
        results = runs(args.dir.resolve())
    else:
        results = _with_own_stack(runs, Path(tempfile.mkdtemp(prefix="bench-rotate-")))
    print(json.dumps({"benchmark": "rotate_key", "runs": results}, indent=2))
    return 0 if all(r["failed_requests"] == 0 and r["command_rc"] == 0 for r in results) else 1


def _with_own_stack(body: Callable[[Path], list[dict[str, Any]]], root: Path
                    ) -> list[dict[str, Any]]:
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.harness import BenchStack, cleanup, client, unique_project

    stack = BenchStack.create(root / "stack", unique_project("bench-rotate"), embed=False)
    stack.rewrite(rate=(1000, 1000))  # the limiter is not what this measures
    try:
        stack.cli("up").check("llmstack up")
        return body(stack.root)
    finally:
        cleanup(client(), stack.project)


if __name__ == "__main__":
    sys.exit(main())
