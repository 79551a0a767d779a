"""stack.yaml -> the files the services read. Pure and deterministic: same input, same bytes."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from . import capacity, keepalive, names
from .backends import BACKENDS
from .resources import data_dir
from .secrets import Keys
from .spec import StackSpec
from .teamkeys import EdgeKeys, Store, edge_keys

NGINX_CONF_DIR = names.config_dir(names.NGINX)
# nginx's secret files, as paths in its config volume (shipped by `edge`, read by `up`):
SECRETS_SUBDIR = "secrets"
KEYS_FILE = f"{SECRETS_SUBDIR}/keys.conf"  # accepted client keys, the internal key
# Per-key limits of the team keys, included in every server block (limit_req/limit_conn).
KEY_LIMITS_FILE = f"{SECRETS_SUBDIR}/key-limits.conf"
TLS_CERT_FILE = f"{SECRETS_SUBDIR}/tls.crt"
TLS_KEY_FILE = f"{SECRETS_SUBDIR}/tls.key"
SECRETS_DIR = f"{NGINX_CONF_DIR}/{SECRETS_SUBDIR}"
# Seconds old nginx workers get to finish in-flight requests after a reload (key rotation,
# `up`). Long enough for long LLM streams on slow hardware: 30 s cut streams measured on
# CPU. Old workers take no new request (keep-alive ends with the request in flight), so
# this never extends an old key's life; it only bounds how long old workers may linger.
WORKER_SHUTDOWN_TIMEOUT = 600
# Request bodies larger than nginx's body buffer are written here: a disk-backed volume (see
# plan.NGINX_SPOOL), not /tmp, whose tmpfs counts against the container's memory limit.
NGINX_SPOOL_DIR = "/var/lib/nginx"
# Retry-After (seconds) on nginx's 503: the gateway is away, or a model restarts stop-first.
RETRY_AFTER_S = 5
NGINX_SPOOL_BODY = "body"  # request bodies, in a folder owned by nginx's user
# nginx's pid file (in its /tmp tmpfs); removed when the master process exits.
NGINX_PID_FILE = "/tmp/nginx.pid"
# nginx's own counts (`observability.metrics`): nginx sends a line per request to mtail's unix
# datagram socket (the edge-metrics service) in a volume both mount; mtail serves the counts.
EDGE_LOG_DIR = "/run/llmstack-edge"
EDGE_LOG_SUBDIR = "sock"  # owned by the services' user, so mtail can create its socket
EDGE_LOG_SOCKET = f"{EDGE_LOG_DIR}/{EDGE_LOG_SUBDIR}/access.sock"
EDGE_LOG_TAG = "llmstack_edge"  # nginx's syslog tag: the program matches only its lines
EDGE_PROGRAM = "edge.mtail"
EDGE_REQUESTS = "llmstack_edge_requests_total"
EDGE_SECONDS = "llmstack_edge_request_seconds"
# Upper bounds of the time histogram. mtail's first `buckets` value is the lowest bucket's
# exclusive lower bound (edge.mtail.j2 puts -1 there, so 0.000 s counts in the first bucket).
EDGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60,
                120, 300)
# LiteLLM's callback refusing models a team key may not use; litellm.yaml names its `handler`.
LITELLM_KEYS_MODULE = "llmstack_keys.py"


# `route: direct` (docs/ROUTES.md): nginx reads the top-level "model" of a request body with
# this PCRE (nginx's own regex engine; no njs in the image). It walks the body's top-level
# members and skips nested objects, arrays and strings whole (recursion; possessive
# quantifiers, so no backtracking blow-up), so a "model" inside metadata, a tool schema or a
# message is never taken for the request's model. A body it cannot read (not an object, a
# model name with escapes, a body over the body buffer, which nginx spools to disk) leaves
# the name empty: the request takes the gateway, which answers it as it always did.
_JSON_STRING = r'"(?:[^"\\]|\\.)*+"'
_JSON_NESTED = r'(?:[^{}\[\]"]++|' + _JSON_STRING + r"|(?&llmstack_jo)|(?&llmstack_ja))*+"
BODY_MODEL_RE = (
    r"(?(DEFINE)(?<llmstack_jo>\{" + _JSON_NESTED + r"\})(?<llmstack_ja>\[" + _JSON_NESTED
    + r"\]))^\s*+\{(?:\s*+" + _JSON_STRING + r"\s*+:\s*+(?:" + _JSON_STRING
    + r'|(?&llmstack_jo)|(?&llmstack_ja)|[^\s,{}\[\]"]++)\s*+,)*?\s*+"model"\s*+:\s*+"'
    r'(?<llmstack_model>[A-Za-z0-9][A-Za-z0-9._:-]{0,63})"'
)
# The nginx upstream of a directly routed model's container.
DIRECT_UPSTREAM_PREFIX = "llmstack_direct_"


def nginx_double_quoted(text: str) -> str:
    """`text` as an nginx double-quoted string (nginx unescapes only \\\\ and \\" there)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def pcre_literal(text: str) -> str:
    """`text` as a literal inside a regex (model names: [A-Za-z0-9._:-])."""
    return re.sub(r"([.\\^$|?*+()\[\]{}-])", r"\\\1", text)


def nginx_single_quoted(text: str) -> str:
    """`text` as an nginx single-quoted string (a JSON body with an API key's name in it)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["sq"] = nginx_single_quoted
    env.filters["dq"] = nginx_double_quoted
    env.filters["pcre"] = pcre_literal
    return env


@dataclass(frozen=True)
class Rendered:
    """Rendered files by service: {service: {file name: bytes}}. No secrets inside."""

    services: dict[str, dict[str, bytes]]

    def files(self) -> dict[str, bytes]:
        """What `config/` holds on disk, for users to read and diff."""
        out: dict[str, bytes] = {}
        for service in (names.NGINX, names.LITELLM, names.HEALTH, names.EDGE_METRICS):
            for name, data in self.services.get(service, {}).items():
                if name.endswith(".py"):
                    continue  # program code shipped with the config, not config
                out[name] = data
        return out


def _litellm_entries(spec: StackSpec) -> list[dict[str, str]]:
    entries = []
    for model in spec.models:
        backend = BACKENDS[model.backend]
        host = names.container(spec.project, names.model_service(model.name))
        base = f"http://{host}:{backend.port}{backend.api_base_path}"
        for public in model.public_names:
            entries.append({
                "public": public,
                "model": f"openai/{backend.served_name(model)}",
                "api_base": base,
                "mode": "embedding" if model.task == "embedding" else "chat",
            })
    return entries


@dataclass(frozen=True)
class DirectRoute:
    """A model on `route: direct`: nginx's upstream for its container and its public names."""

    upstream: str
    host: str
    port: int
    names: tuple[str, ...]


def direct_routes(spec: StackSpec) -> list[DirectRoute]:
    routes = []
    for model in spec.models:
        if model.route != "direct":
            continue
        backend = BACKENDS[model.backend]
        service = names.model_service(model.name)
        routes.append(DirectRoute(
            upstream=DIRECT_UPSTREAM_PREFIX + service.replace("-", "_"),
            host=names.container(spec.project, service), port=backend.port,
            names=tuple(model.public_names)))
    return routes


# The upstream a request goes to, from "$llmstack_key_models|$llmstack_direct|$model":
# $llmstack_direct is the direct upstream of the body's model (empty for a gateway model or
# none). A key limited to some models ($llmstack_key_models, "a,b") goes direct only to a model
# it lists; anything else takes the gateway, which refuses it (403) as for a gateway model.
ROUTE_MAP = [
    (r"^\|(?<llmstack_any>[^|]+)\|", "$llmstack_any"),
    (r"^(?:[^|]*,)?(?<llmstack_listed>[^|,]+)(?:,[^|]*)?\|(?<llmstack_to>[^|]+)\|"
     r"\k<llmstack_listed>$", "$llmstack_to"),
]


def health_checks(spec: StackSpec) -> dict[str, Any]:
    checks = {names.LITELLM: f"http://{names.container(spec.project, names.LITELLM)}:"
                             f"{names.LITELLM_PORT}{names.LITELLM_READY_PATH}"}
    for model in spec.models:
        backend = BACKENDS[model.backend]
        host = names.container(spec.project, names.model_service(model.name))
        base = f"http://{host}:{backend.port}"
        checks[names.model_check(model.name)] = backend.ready_check(model, base) or \
            f"{base}{backend.health_path}"
    return checks


def render(spec: StackSpec, source: str = "stack.yaml") -> Rendered:
    env = _env()
    lst = spec.listeners
    plain = [names.NGINX_PORTS[n] for n in ("local", "lan") if getattr(lst, n).enabled]
    nginx = env.get_template("nginx.conf.j2").render(
        source=source,
        secrets_dir=SECRETS_DIR,
        pid_file=NGINX_PID_FILE,
        worker_shutdown_timeout=WORKER_SHUTDOWN_TIMEOUT,
        max_body_size=spec.max_body_size,
        timeouts=spec.timeouts,
        rate=spec.rate_limit,
        litellm_host=names.container(spec.project, names.LITELLM),
        litellm_port=names.LITELLM_PORT,
        upstream_keepalive=keepalive.EDGE_UPSTREAM_S,
        litellm_keepalive=keepalive.LITELLM_SERVER_S,
        health_host=names.container(spec.project, names.HEALTH),
        health_port=names.HEALTH_PORT,
        listeners=lst,
        listen_plain=plain,
        listen_tls=names.NGINX_PORTS["https"] if lst.https.enabled else None,
        domain=spec.domain,
        edge=capacity.capacity(spec.resources.nginx),
        edge_memory=spec.resources.nginx.memory or "no limit",
        zones=capacity.ZONE_MIB,
        buffers={"body": capacity.BODY_BUFFER, "header": capacity.HEADER_BUFFER,
                 "large_header": "{} {}".format(*capacity.LARGE_HEADER_BUFFERS)},
        body_spool=f"{NGINX_SPOOL_DIR}/{NGINX_SPOOL_BODY}",
        retry_after=RETRY_AFTER_S,
        direct=direct_routes(spec),
        edge_log=EDGE_LOG_SOCKET if spec.edge_counts() else None,
        edge_log_tag=EDGE_LOG_TAG,
        listener_ports=sorted(names.NGINX_PORTS.items(), key=lambda kv: kv[1]),
        body_model_re=BODY_MODEL_RE,
        route_map=ROUTE_MAP,
    )
    litellm = env.get_template("litellm.yaml.j2").render(
        source=source, entries=_litellm_entries(spec), read_timeout=spec.timeouts.read,
        keys_callback=LITELLM_KEYS_MODULE.removesuffix(".py") + ".handler",
        metrics=spec.observability.metrics)
    # JSON has no comments: the generated-file note is a key the health service ignores.
    health = {"_generated": f"by llmstack from {source} -- do not edit: change stack.yaml and "
                            "run `llmstack up`",
              "port": names.HEALTH_PORT, "timeout": 2.0, "checks": health_checks(spec)}
    healthd = resources.files("llmstack").joinpath("healthd.py").read_bytes()
    key_models = resources.files("llmstack").joinpath(LITELLM_KEYS_MODULE).read_bytes()
    services = {
        names.NGINX: {"nginx.conf": nginx.encode()},
        names.LITELLM: {"litellm.yaml": litellm.encode(), LITELLM_KEYS_MODULE: key_models},
        names.HEALTH: {"health.json": (json.dumps(health, indent=2, sort_keys=True) + "\n")
                       .encode(), "healthd.py": healthd},
    }
    if spec.edge_counts():
        program = env.get_template("edge.mtail.j2").render(
            source=source, log_format="llmstack_metrics", tag=EDGE_LOG_TAG,
            requests=EDGE_REQUESTS, seconds=EDGE_SECONDS, buckets=EDGE_BUCKETS)
        services[names.EDGE_METRICS] = {EDGE_PROGRAM: program.encode()}
    return Rendered(services)


def digits_before(limit: int) -> str:
    """A regex matching the decimal integers of len(str(limit)) digits that are < limit.

    nginx has no clock comparison, but $msec is fixed-width for centuries, so "before the
    expiry" is a lexicographic comparison, which a regex can express.
    """
    text = str(limit)
    alternatives = []
    for i, ch in enumerate(text):
        digit = int(ch)
        if digit == 0:
            continue
        rest = len(text) - i - 1
        cls = "0" if digit == 1 else f"[0-{digit - 1}]"
        alternatives.append(text[:i] + cls + (f"[0-9]{{{rest}}}" if rest else ""))
    return "(?:" + "|".join(alternatives) + ")" if alternatives else "(?!)"


# What LiteLLM writes as `created` for every model of /v1/models; nginx's own listing for a key
# limited to some models says the same.
MODELS_CREATED = 1677610602


def team_edge_keys(spec: StackSpec, store: Store, now: float) -> EdgeKeys:
    rate = spec.rate_limit
    listed = [(e["public"], e["mode"]) for e in _litellm_entries(spec)]
    return edge_keys(store, now, rate.requests_per_second, rate.burst, rate.max_concurrent,
                     listed, MODELS_CREATED)


def ip_too_many(spec: StackSpec) -> str:
    """The 429 body of the per-IP limits (requests without a team key)."""
    rate = spec.rate_limit
    return json.dumps({"error": {
        "message": f"Rate limit exceeded: at most {rate.requests_per_second} requests/s (burst "
                   f"{rate.burst}) and {rate.max_concurrent} concurrent requests per client IP. "
                   "Retry later.",
        "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}},
        separators=(",", ":"))


def render_nginx_keys(keys: Keys, now: float, spec: StackSpec, store: Store) -> bytes:
    """The nginx secrets file (http level): the master key (and the previous one during a
    grace window), the internal key, and the team keys (hashes, names, limits, models)."""
    slots = [("current", keys.master)]
    previous_before = ""
    if keys.previous and keys.previous in keys.accepted(now):
        slots.append(("previous", keys.previous))
        # No expiry means the old key stays until `rotate-key --finish`.
        expires = keys.previous_expires if keys.previous_expires is not None else 10**10 - 1
        previous_before = digits_before(expires)
    text = _env().get_template("nginx-keys.conf.j2").render(
        keys=slots, previous_before=previous_before, internal_key=keys.internal,
        team=team_edge_keys(spec, store, now), ip_too_many=ip_too_many(spec))
    return text.encode()


def render_nginx_key_limits(spec: StackSpec, store: Store, now: float) -> bytes:
    """The per-key limit directives, included in each server block of nginx.conf."""
    text = _env().get_template("nginx-key-limits.conf.j2").render(
        team=team_edge_keys(spec, store, now))
    return text.encode()
