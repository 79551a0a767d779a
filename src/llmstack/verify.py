"""`llmstack verify`: the live stack checked end to end through its real edge, as a client.

Target: the host of the engine (127.0.0.1 for a local engine, HOST of ssh://user@HOST or
tcp://HOST:PORT), or --address. Requests go to the HTTPS listener when it is enabled (TLS
verified against certs/ca.crt, SNI = stack.yaml's domain), else to the LAN or local listener.
Checks, in order: tls, health, models, chat_stream, embeddings, auth, rate_limit; the rate
limit goes last because it leaves this client limited for about burst/rate seconds.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .checks import RUNTIME, Finding, exit_code
from .spec import url_host

if TYPE_CHECKING:
    import httpx

    from .project import Loaded
    from .spec import Listener, StackSpec

WRONG_KEY = "sk-llmstack-verify-" + "0" * 32  # well-formed, never issued
RATE_PROBE_MAX = 400  # most requests the rate-limit check sends
RATE_PROBE_EXTRA = 10
CHAT_PROMPT = "Count from 1 to 20, separated by spaces."
CHAT_MAX_TOKENS = 8
# A stream whose content chunks all arrive within this many seconds of each other was
# buffered somewhere (nginx proxy_buffering): the client saw no token until the end.
BUFFERED_SPREAD_S = 0.002


def Check(check: str, status: str, detail: str, fix: str = "",
          data: dict[str, Any] | None = None) -> Finding:
    """A verify finding (ok | fail | skip): the live stack as a client sees it, so a failure
    is runtime-scope (exit 2)."""
    return Finding(check, status, detail, fix, scope=RUNTIME, data=data or {})


def check_dict(c: Finding) -> dict[str, Any]:
    """The shape of a check in `verify --json` (docs/CI.md section 8)."""
    return {"check": c.check, "status": c.status, "detail": c.detail, "fix": c.fix,
            "seconds": round(c.seconds, 3), "data": c.data}


@dataclass
class Endpoint:
    scheme: str  # http | https
    address: str  # where to connect
    port: int
    listener: str  # local | lan | https
    server_name: str  # SNI and certificate name for https

    @property
    def base(self) -> str:
        return f"{self.scheme}://{url_host(self.address)}:{self.port}"


@dataclass
class Result:
    target: str
    endpoint: str
    checks: list[Finding]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def exit_code(self) -> int:
        return int(exit_code(self.checks))

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.checks:
            for key in ("ttft_ms", "total_ms", "dimension", "sent", "limited", "tls_version"):
                if key in c.data:
                    out[f"{c.check}.{key}"] = c.data[key]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "exit_code": self.exit_code, "target": self.target,
                "endpoint": self.endpoint, "checks": [check_dict(c) for c in self.checks],
                "metrics": self.metrics()}


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def reachable_address(listener: Listener, address: str) -> str | None:
    """Where a listener bound to `listener.bind` on the engine's host is reached from here,
    given that host's `address`; None when it is bound to the host's loopback only."""
    if listener.bind in ("0.0.0.0", "::"):
        return address
    if ipaddress.ip_address(listener.bind).is_loopback:
        return listener.bind if _is_loopback(address) else None
    return listener.bind


def endpoints(spec: StackSpec, address: str) -> tuple[Endpoint | None, Endpoint | None, str]:
    """(TLS endpoint or None, endpoint for the API checks or None, why none)."""
    lst = spec.listeners
    tls_ep = None
    why = ""
    if lst.https.enabled:
        where = reachable_address(lst.https, address)
        if where:
            tls_ep = Endpoint("https", where, lst.https.port, "https", spec.domain)
        else:
            why = (f"listeners.https binds {lst.https.bind} on the engine's host, which "
                   f"{address} cannot reach")
    if tls_ep:
        return tls_ep, tls_ep, ""
    for name in ("lan", "local"):
        listener = getattr(lst, name)
        if listener.enabled:
            where = reachable_address(listener, address)
            if where:
                return None, Endpoint("http", where, listener.port, name, spec.domain), why
            why = why or (f"listeners.{name} binds {listener.bind} on the engine's host, "
                          f"which {address} cannot reach")
    return None, None, why or "every listener is disabled"


class Client:
    """HTTP to one endpoint; for HTTPS the certificate is verified against certs/ca.crt and
    the name in stack.yaml, whatever address is dialled."""

    def __init__(self, ep: Endpoint, ca_file: str, timeout: float) -> None:
        import httpx

        self.ep = ep
        verify: ssl.SSLContext | bool = False
        if ep.scheme == "https":
            verify = ssl.create_default_context(cafile=ca_file)
        self.http = httpx.Client(base_url=ep.base, verify=verify, timeout=httpx.Timeout(
            timeout, connect=10.0), limits=httpx.Limits(max_connections=16))
        self.ext = {"sni_hostname": ep.server_name} if ep.scheme == "https" else {}
        self.host_header = ep.server_name if ep.scheme == "https" else None

    def request(self, method: str, path: str, key: str | None = None,
                body: Any = None) -> httpx.Response:
        headers = {"Host": self.host_header} if self.host_header else {}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.http.request(method, path, headers=headers, json=body,
                                 extensions=self.ext)

    def stream(self, path: str, key: str, body: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
        if self.host_header:
            headers["Host"] = self.host_header
        return self.http.stream("POST", path, headers=headers, json=body,
                                extensions=self.ext)

    def close(self) -> None:
        self.http.close()


def _body(resp: httpx.Response, limit: int = 200) -> str:
    return " ".join(resp.text.split())[:limit]


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _refused(check: str, what: str) -> Finding:
    return Check(check, "fail", f"{what}: LITELLM_MASTER_KEY from .env was refused (401); "
                 "the running stack does not accept the key in .env",
                 "run `llmstack up` to ship .env's key to the edge, or restore the key the "
                 "stack was deployed with")


def _timed(name: str, fn: Callable[[], Finding]) -> Finding:
    import httpx

    started = time.monotonic()
    try:
        result = fn()
    except httpx.HTTPError as exc:
        result = Check(name, "fail", f"request failed: {type(exc).__name__}: {exc}",
                       "is the stack up? `llmstack status`; is the port open from here?")
    return replace(result, seconds=time.monotonic() - started)


# --- The checks -----------------------------------------------------------------------------------


def check_tls(ep: Endpoint, ca_file: str, timeout: float) -> Finding:
    ctx = ssl.create_default_context(cafile=ca_file)
    try:
        with socket.create_connection((ep.address, ep.port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=ep.server_name) as tls_sock:
            cert = tls_sock.getpeercert() or {}
            version = tls_sock.version() or "?"
            cipher = (tls_sock.cipher() or ("?",))[0]
    except ssl.SSLCertVerificationError as exc:
        return Check("tls", "fail", f"{ep.address}:{ep.port}: certificate not trusted for "
                     f"{ep.server_name}: {exc.verify_message}",
                     "the edge serves another certificate than certs/: run `llmstack up` (it "
                     "ships certs/tls.crt), or `llmstack init --force --domain NAME` when the "
                     "name is wrong")
    except (ssl.SSLError, OSError) as exc:
        return Check("tls", "fail", f"TLS handshake with {ep.address}:{ep.port} failed: {exc}",
                     "is the stack up (`llmstack status`) and the port reachable from here?")
    not_after = str(cert.get("notAfter", "?"))
    return Check("tls", "ok", f"{version} {cipher}, certificate for {ep.server_name} valid "
                 f"until {not_after}, signed by certs/ca.crt",
                 data={"tls_version": version, "cipher": cipher, "not_after": not_after})


def check_health(c: Client, key: str) -> Finding:
    """With the key, /health names the services; without it, it answers the status alone."""
    anonymous = c.request("GET", "/health")
    if set(_json(anonymous)) - {"status"}:
        return Check("health", "fail", "GET /health without a key shows service details: "
                     + _body(anonymous), "run `llmstack up` to apply the current nginx.conf")
    resp = c.request("GET", "/health", key)
    if resp.status_code != 200:
        return Check("health", "fail", f"GET /health answered {resp.status_code}: {_body(resp)}",
                     "`llmstack status` and `llmstack logs SERVICE` for the service named")
    data = resp.json()
    return Check("health", "ok", f"GET /health 200, status {data.get('status')!r}, services: "
                 + ", ".join(sorted(data.get("services", {}))), data={"status": resp.status_code})


def check_models(c: Client, key: str, wanted: list[str]) -> Finding:
    resp = c.request("GET", "/v1/models", key=key)
    if resp.status_code == 401:
        return _refused("models", "GET /v1/models")
    if resp.status_code != 200:
        return Check("models", "fail", f"GET /v1/models answered {resp.status_code}: "
                     f"{_body(resp)}", "`llmstack status`; `llmstack logs litellm`")
    ids = [m.get("id") for m in resp.json().get("data", [])]
    missing = [n for n in wanted if n not in ids]
    if missing:
        return Check("models", "fail", "stack models missing from /v1/models: "
                     + ", ".join(missing) + f" (listed: {', '.join(map(str, ids))})",
                     "run `llmstack up` (the deployed config is older than stack.yaml)")
    return Check("models", "ok", f"{len(ids)} models listed: {', '.join(map(str, ids))}",
                 data={"models": ids})


def check_chat_stream(c: Client, key: str, model: str) -> Finding:
    body = {"model": model, "stream": True, "max_tokens": CHAT_MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": CHAT_PROMPT}]}
    started = time.monotonic()
    arrivals: list[float] = []
    text: list[str] = []
    done = False
    with c.stream("/v1/chat/completions", key, body) as resp:
        if resp.status_code == 401:
            return _refused("chat_stream", f"a streaming chat with {model}")
        if resp.status_code != 200:
            resp.read()
            return Check("chat_stream", "fail", f"streaming chat with {model} answered "
                         f"{resp.status_code}: {_body(resp)}",
                         f"`llmstack logs {model}` and `llmstack logs litellm`")
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            try:
                delta = json.loads(payload)["choices"][0].get("delta", {})
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if delta.get("content"):
                arrivals.append(time.monotonic() - started)
                text.append(delta["content"])
    total = time.monotonic() - started
    if not arrivals:
        return Check("chat_stream", "fail", f"the stream from {model} carried no tokens",
                     f"`llmstack logs {model}`")
    data = {"model": model, "ttft_ms": round(arrivals[0] * 1000, 1),
            "total_ms": round(total * 1000, 1), "chunks": len(arrivals),
            "text": "".join(text)[:80]}
    if not done:
        return Check("chat_stream", "fail", f"the stream from {model} ended without [DONE] "
                     f"after {len(arrivals)} chunks", "check proxy timeouts (timeouts.read)",
                     data=data)
    spread = arrivals[-1] - arrivals[0]
    if len(arrivals) >= 4 and spread < BUFFERED_SPREAD_S:
        return Check("chat_stream", "fail", f"all {len(arrivals)} chunks arrived at once after "
                     f"{total * 1000:.0f} ms: the stream is buffered, not streamed",
                     "the edge must not buffer (nginx proxy_buffering off); re-render with "
                     "`llmstack up`", data=data)
    return Check("chat_stream", "ok", f"{model}: first token after {data['ttft_ms']} ms, "
                 f"{len(arrivals)} chunks in {data['total_ms']} ms, unbuffered", data=data)


def check_embeddings(c: Client, key: str, model: str) -> Finding:
    resp = c.request("POST", "/v1/embeddings", key=key,
                     body={"model": model, "input": "llmstack verify"})
    if resp.status_code == 401:
        return _refused("embeddings", f"POST /v1/embeddings with {model}")
    if resp.status_code != 200:
        return Check("embeddings", "fail", f"POST /v1/embeddings with {model} answered "
                     f"{resp.status_code}: {_body(resp)}", f"`llmstack logs {model}`")
    try:
        vector = resp.json()["data"][0]["embedding"]
    except (ValueError, KeyError, IndexError, TypeError):
        return Check("embeddings", "fail", f"unexpected embeddings answer: {_body(resp)}",
                     f"`llmstack logs {model}`")
    if not vector:
        return Check("embeddings", "fail", f"{model} returned an empty vector",
                     f"`llmstack logs {model}`")
    return Check("embeddings", "ok", f"{model}: vector of dimension {len(vector)}",
                 data={"model": model, "dimension": len(vector)})


def check_auth(c: Client) -> Finding:
    results = {}
    for label, key in (("wrong key", WRONG_KEY), ("no key", None)):
        resp = c.request("GET", "/v1/models", key=key)
        results[label] = resp.status_code
        if resp.status_code != 401:
            what = "ACCEPTED: the API is open to anyone" if resp.status_code == 200 else \
                f"answered {resp.status_code} instead of 401"
            return Check("auth", "fail", f"GET /v1/models with {label}: {what}",
                         "run `llmstack up` to restore the edge's key check; never expose a "
                         "stack without it", data=results)
        if "error" not in resp.text:
            return Check("auth", "fail", f"GET /v1/models with {label}: 401 without an "
                         f"OpenAI-style error body: {_body(resp)}", "run `llmstack up`",
                         data=results)
    return Check("auth", "ok", "a wrong key and a missing key are refused with 401",
                 data=results)


def check_rate_limit(c: Client, rate: int, burst: int) -> Finding:
    """Send burst + rate + a few GET /health quickly (8 at a time, bounded); expect 429."""
    planned = burst + rate + RATE_PROBE_EXTRA
    count = min(planned, RATE_PROBE_MAX)
    stop = threading.Event()
    codes: list[int] = []
    lock = threading.Lock()
    retry_after: list[str] = []

    def one(_: int) -> None:
        if stop.is_set():
            return
        resp = c.request("GET", "/health")
        with lock:
            codes.append(resp.status_code)
            if resp.status_code == 429:
                retry_after.append(resp.headers.get("Retry-After", ""))
                stop.set()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(one, range(count)))
    elapsed = time.monotonic() - started
    limited = codes.count(429)
    passed = sum(1 for x in codes if x != 429)
    data = {"sent": len(codes), "passed": passed, "limited": limited,
            "seconds": round(elapsed, 3), "rate": rate, "burst": burst}
    if limited:
        return Check("rate_limit", "ok", f"429 after {passed} requests in {elapsed:.2f}s "
                     f"(limit {rate} r/s, burst {burst}; Retry-After: "
                     f"{retry_after[0] or '-'})", data=data)
    expected = burst + 1 + rate * elapsed
    note = "" if count == planned else f" (capped at {RATE_PROBE_MAX})"
    return Check("rate_limit", "fail", f"no 429 after {len(codes)} requests{note} in "
                 f"{elapsed:.2f}s: the limit of {rate} r/s with burst {burst} would allow "
                 f"about {expected:.0f}", "the edge does not enforce rate_limit from stack.yaml: "
                 "run `llmstack plan` (is the deployed config older?) and `llmstack up`",
                 data=data)


def run(loaded: Loaded, address: str, target: str, timeout: float = 60.0) -> Result:
    spec = loaded.spec
    key = loaded.keys().master
    ca = str(loaded.paths.certs / "ca.crt")
    tls_ep, api_ep, why = endpoints(spec, address)
    checks: list[Finding] = []
    if tls_ep:
        checks.append(_timed("tls", lambda: check_tls(tls_ep, ca, 10.0)))
    elif spec.listeners.https.enabled:
        checks.append(Check("tls", "fail", why, "bind listeners.https to 0.0.0.0 (behind a "
                            "firewall), or run verify on the host or with --address"))
    else:
        checks.append(Check("tls", "skip", "listeners.https is disabled"))
    if api_ep is None:
        checks.append(Check("health", "fail", f"no listener reachable from here: {why}",
                            "bind a listener to 0.0.0.0 or run verify on the host"))
        return Result(target, "", checks)
    client = Client(api_ep, ca, timeout)
    try:
        chat = next((m.name for m in spec.models if m.task == "chat"), None)
        embed = next((m.name for m in spec.models if m.task == "embedding"), None)
        public = [n for m in spec.models for n in m.public_names]
        checks.append(_timed("health", lambda: check_health(client, key)))
        checks.append(_timed("models", lambda: check_models(client, key, public)))
        checks.append(_timed("chat_stream", lambda: check_chat_stream(client, key, chat))
                      if chat else Check("chat_stream", "skip", "no chat model in stack.yaml"))
        checks.append(_timed("embeddings", lambda: check_embeddings(client, key, embed))
                      if embed else Check("embeddings", "skip",
                                          "no embedding model in stack.yaml"))
        checks.append(_timed("auth", lambda: check_auth(client)))
        rl = spec.rate_limit
        checks.append(_timed("rate_limit", lambda: check_rate_limit(
            client, rl.requests_per_second, rl.burst)))
    finally:
        client.close()
    return Result(target, f"{api_ep.base} (listeners.{api_ep.listener})", checks)

