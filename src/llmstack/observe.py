"""What `llmstack top` shows: per-model load and GPU use, from each part's own metrics.

Pure: `targets` says which /metrics endpoints to read (on the project network), `reading`
turns what they answered into a `Reading` (cumulative counters at one moment), and `view`
turns two readings into the figures people look at (rates over the interval between them).
The reads themselves go through the engine (`Engine.scrape`, `Engine.query_gpus`), so `top`
works the same against a remote engine. docs/OBSERVABILITY.md names every figure's source.

Where each figure comes from:
- requests, errors, latency, first-token time: LiteLLM's Prometheus callback (the gateway
  sees every request with the model name the client asked for; aliases count for their model),
  plus, for a `route: direct` model, nginx's own counts (the edge-metrics service: nginx sends
  those requests straight to the model, so LiteLLM never sees them).
- nginx's counts per listener, status and key name: the edge-metrics service (mtail).
- in flight, queued, generated tokens, decode speed: the model server's own /metrics
  (`backends.*.metrics`). Ollama has none: those figures are null for it.
- GPUs: nvidia-smi through the engine (as `doctor`), only when a model has GPUs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from . import names
from .backends import BACKENDS
from .render import EDGE_REQUESTS, EDGE_SECONDS

if TYPE_CHECKING:
    from .engine.api import Engine
    from .gpu import Gpu
    from .spec import ModelSpec, StackSpec

# LiteLLM's metric names (litellm/types/integrations/prometheus.py, 1.108.7).
REQUESTS = "litellm_proxy_total_requests_metric_total"  # label requested_model
FAILED = "litellm_proxy_failed_requests_metric_total"  # label requested_model
LATENCY = "litellm_request_total_latency_metric"  # histogram, label model_group
FIRST_TOKEN = "litellm_llm_api_time_to_first_token_metric"  # histogram (streams), model_group
METRICS_PATH = "/metrics"


class MetricsParseError(ValueError):
    """An endpoint answered something that is not the Prometheus text format."""


@dataclass(frozen=True)
class Target:
    """One /metrics endpoint: the gateway (model "") or one model's server."""

    service: str
    url: str
    model: str = ""
    auth: bool = False  # needs the internal key (LiteLLM guards /metrics with it)


def targets(spec: StackSpec) -> list[Target]:
    """The endpoints `top` reads; empty when `observability.metrics` is off."""
    if not spec.observability.metrics:
        return []
    out = [Target(names.LITELLM, f"http://{names.container(spec.project, names.LITELLM)}:"
                  f"{names.LITELLM_PORT}{METRICS_PATH}", auth=True)]
    if spec.edge_counts():
        edge = names.container(spec.project, names.EDGE_METRICS)
        out.append(Target(names.EDGE_METRICS,
                          f"http://{edge}:{names.EDGE_METRICS_PORT}{METRICS_PATH}"))
    for model in spec.models:
        backend = BACKENDS[model.backend]
        if backend.metrics is None:
            continue
        service = names.model_service(model.name)
        out.append(Target(service, f"http://{names.container(spec.project, service)}:"
                          f"{backend.port}{backend.metrics.path}", model=model.name))
    return out


Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    """Prometheus text into {sample name: [(labels, value)]} (prometheus_client's parser)."""
    out: Samples = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    except ValueError as exc:
        raise MetricsParseError(f"not Prometheus text: {exc}") from None
    return out


def _sum(samples: Samples, name: str, label: str = "", values: frozenset[str] = frozenset()
         ) -> float | None:
    rows = samples.get(name)
    if rows is None:
        return None
    return sum(v for labels, v in rows if not label or labels.get(label) in values)


def _buckets(samples: Samples, name: str, values: frozenset[str], label: str = "model_group"
             ) -> dict[float, float]:
    """A histogram's cumulative bucket counts {le: count}, summed over the label sets whose
    `label` is one of `values`."""
    out: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        if labels.get(label) in values:
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket as
    Prometheus' histogram_quantile does; None without observations."""
    if not buckets:
        return None
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le in les:
        count = buckets[le]
        if count >= rank:
            if math.isinf(le):
                return lower  # beyond the largest finite bucket: its bound, as Prometheus
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


@dataclass(frozen=True)
class ModelReading:
    """One model's cumulative figures at one moment (None: not reported)."""

    name: str
    backend: str
    state: str  # up | down | starting | no container
    requests: float | None = None
    errors: float | None = None
    latency: dict[float, float] = field(default_factory=dict)
    first_token: dict[float, float] = field(default_factory=dict)
    running: float | None = None
    waiting: float | None = None
    generated_tokens: float | None = None
    generating_seconds: float | None = None
    detail: str = ""  # why the server's metrics are missing


# nginx's counts: {(listener, status, key): requests}, summed over the model label.
EdgeCounts = dict[tuple[str, str, str], float]


@dataclass(frozen=True)
class Reading:
    at: float  # monotonic seconds
    models: list[ModelReading]
    gpus: list[Gpu] | None = None  # None: not asked (no GPU model) or not readable
    gpu_detail: str = ""
    gateway: str = "up"  # up | down | no metrics (observability.metrics off)
    edge: str = "up"  # nginx's counts (edge-metrics): up | down | no metrics
    edge_counts: EdgeCounts = field(default_factory=dict)


def edge_counts(samples: Samples) -> EdgeCounts:
    out: EdgeCounts = {}
    for labels, value in samples.get(EDGE_REQUESTS, []):
        key = (labels.get("listener", ""), labels.get("status", ""), labels.get("key", ""))
        out[key] = out.get(key, 0.0) + value
    return out


def reading(spec: StackSpec, at: float, answers: dict[str, tuple[int | None, str]],
            states: dict[str, str], gpus: list[Gpu] | None = None, gpu_detail: str = ""
            ) -> Reading:
    """What the endpoints of `targets(spec)` answered (`answers`, by URL) and each service's
    container state (`states`, by service: running, exited, ...) as one Reading."""
    by_service = {t.service: t for t in targets(spec)}

    def own(service: str) -> tuple[Samples | None, str]:
        target = by_service.get(service)
        if target is None:
            return None, "no metrics"
        status, body = answers.get(target.url, (None, ""))
        return (parse(body), "up") if status == 200 else (None, "down")

    gateway, gateway_state = own(names.LITELLM)
    edge, edge_state = own(names.EDGE_METRICS)
    models = [_model_reading(spec, m, gateway or {}, edge, by_service, answers, states)
              for m in spec.models]
    return Reading(at, models, gpus, gpu_detail, gateway_state, edge_state,
                   edge_counts(edge) if edge is not None else {})


def _edge_model(edge: Samples, model: str) -> tuple[float, float]:
    """(requests, errors) nginx sent straight to `model` (`route: direct`); an error is an
    answer of status 400 or more, as LiteLLM counts a failed request."""
    requests = errors = 0.0
    for labels, value in edge.get(EDGE_REQUESTS, []):
        if labels.get("model") == model:
            requests += value
            if int(labels.get("status") or 0) >= 400:
                errors += value
    return requests, errors


def _model_reading(spec: StackSpec, model: ModelSpec, gateway: Samples, edge: Samples | None,
                   by_service: dict[str, Target], answers: dict[str, tuple[int | None, str]],
                   states: dict[str, str]) -> ModelReading:
    service = names.model_service(model.name)
    public = frozenset(model.public_names)
    state = states.get(service, "no container")
    figures: dict[str, Any] = {}
    detail = ""
    if gateway:
        figures.update(
            requests=_sum(gateway, REQUESTS, "requested_model", public) or 0.0,
            errors=_sum(gateway, FAILED, "requested_model", public) or 0.0,
            latency=_buckets(gateway, LATENCY, public),
            first_token=_buckets(gateway, FIRST_TOKEN, public))
    if model.route == "direct":
        # Its chat/completion/embedding requests never reach LiteLLM: nginx counts them (a
        # key limited to other models still goes through the gateway, counted above).
        if edge is None or not gateway:
            figures.update(requests=None, errors=None, latency={})
        else:
            requests, errors = _edge_model(edge, model.name)
            figures.update(requests=figures["requests"] + requests,
                           errors=figures["errors"] + errors,
                           latency=_buckets(edge, EDGE_SECONDS, frozenset({model.name}),
                                            "model"))
    names_ = BACKENDS[model.backend].metrics
    target = by_service.get(service)
    if state == "running":
        state = "up"
        if target is not None and names_ is not None:
            status, body = answers.get(target.url, (None, "not read"))
            if status == 200:
                own = parse(body)
                figures.update(
                    running=_sum(own, names_.running), waiting=_sum(own, names_.waiting),
                    generated_tokens=_sum(own, names_.generated_tokens),
                    generating_seconds=(_sum(own, names_.generating_seconds)
                                        if names_.generating_seconds else None))
            elif status is None:
                state, detail = "down", body
            else:  # llama.cpp answers 503 while it loads the model
                state, detail = ("starting" if status == 503 else "up"), f"/metrics: {status}"
    elif state != "no container":
        state = "down"
    return ModelReading(model.name, model.backend, state, detail=detail, **figures)


def _delta(new: float | None, old: float | None) -> float | None:
    if new is None or old is None:
        return None
    return max(new - old, 0.0)  # a restarted server starts its counters again


def _bucket_delta(new: dict[float, float], old: dict[float, float]) -> dict[float, float]:
    return {le: max(c - old.get(le, 0.0), 0.0) for le, c in new.items()}


def _rate(delta: float | None, seconds: float) -> float | None:
    return None if delta is None or seconds <= 0 else delta / seconds


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def model_view(new: ModelReading, old: ModelReading | None, seconds: float) -> dict[str, Any]:
    """One model's figures: totals since its servers started, rates over `seconds` (the
    interval since `old`), latency quantiles over the interval when it saw requests and
    since start otherwise (`latency_over` says which)."""
    window = _bucket_delta(new.latency, old.latency) if old else {}
    window_ft = _bucket_delta(new.first_token, old.first_token) if old else {}
    in_window = bool(window) and max(window.values()) > 0
    latency = window if in_window else new.latency
    first = window_ft if window_ft and max(window_ft.values()) > 0 else new.first_token
    requests = new.requests
    d_requests = _delta(requests, old.requests) if old else None
    d_errors = _delta(new.errors, old.errors) if old else None
    d_tokens = _delta(new.generated_tokens, old.generated_tokens) if old else None
    decode = None
    if new.generated_tokens and new.generating_seconds:
        decode = new.generated_tokens / new.generating_seconds
    return {
        "model": new.name, "backend": new.backend, "state": new.state,
        "requests": None if requests is None else int(requests),
        "requests_per_s": _round(_rate(d_requests, seconds)),
        "in_flight": None if new.running is None else int(new.running),
        "queued": None if new.waiting is None else int(new.waiting),
        "errors": None if new.errors is None else int(new.errors),
        "errors_per_s": _round(_rate(d_errors, seconds)),
        "latency_p50_s": _round(quantile(0.5, latency)),
        "latency_p95_s": _round(quantile(0.95, latency)),
        "latency_over": "interval" if in_window else "since start",
        "first_token_p50_s": _round(quantile(0.5, first)),
        "generated_tokens": None if new.generated_tokens is None
        else int(new.generated_tokens),
        "tokens_per_s": _round(_rate(d_tokens, seconds), 1),
        "decode_tokens_per_s": _round(decode, 1),
        "detail": new.detail,
    }


def edge_view(new: Reading, old: Reading | None, seconds: float) -> list[dict[str, Any]]:
    """nginx's counts per listener, status and key: totals since it started, rate over the
    interval; sorted by listener, status, key."""
    rows = []
    for (listener, status, key), count in sorted(new.edge_counts.items()):
        before = old.edge_counts.get((listener, status, key), 0.0) if old else None
        rows.append({"listener": listener, "status": int(status) if status.isdigit() else status,
                     "key": key, "requests": int(count),
                     "requests_per_s": _round(_rate(_delta(count, before), seconds))})
    return rows


def view(new: Reading, old: Reading | None = None) -> dict[str, Any]:
    """`top --json`: every model's figures, nginx's counts and every GPU's use (rates need
    `old`)."""
    seconds = new.at - old.at if old else 0.0
    before = {m.name: m for m in old.models} if old else {}
    return {
        "interval_s": round(seconds, 2),
        "gateway": new.gateway,
        "edge": new.edge,
        "models": [model_view(m, before.get(m.name), seconds) for m in new.models],
        "edge_requests": edge_view(new, old, seconds),
        "gpus": None if new.gpus is None else [g.to_dict() for g in new.gpus],
        "gpu_detail": new.gpu_detail,
    }


def healthy(data: dict[str, Any]) -> bool:
    """Whether every model is up (`top` exits 2 otherwise, as `status` does)."""
    return all(m["state"] == "up" for m in data["models"])


def _cell(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def table(data: dict[str, Any]) -> str:
    """The terminal view of `view(...)`: one line per model, then one per GPU."""
    head = (f"{'MODEL':<20} {'STATE':<9} {'REQ':>6} {'REQ/S':>6} {'RUN':>4} {'QUEUE':>5} "
            f"{'ERR':>4} {'P50':>7} {'P95':>7} {'TTFT':>7} {'TOK/S':>7} {'DECODE':>7}")
    lines = [f"gateway metrics: {data['gateway']}   interval {data['interval_s']}s", head]
    for m in data["models"]:
        lines.append(
            f"{m['model'][:20]:<20} {m['state'][:9]:<9} {_cell(m['requests']):>6} "
            f"{_cell(m['requests_per_s'], '{:.1f}'):>6} {_cell(m['in_flight']):>4} "
            f"{_cell(m['queued']):>5} {_cell(m['errors']):>4} "
            f"{_cell(m['latency_p50_s'], '{:.3f}s'):>7} "
            f"{_cell(m['latency_p95_s'], '{:.3f}s'):>7} "
            f"{_cell(m['first_token_p50_s'], '{:.3f}s'):>7} "
            f"{_cell(m['tokens_per_s'], '{:.1f}'):>7} "
            f"{_cell(m['decode_tokens_per_s'], '{:.1f}'):>7}")
    if data["edge_requests"]:
        lines.append(f"\nedge (nginx) metrics: {data['edge']}")
        lines.append(f"{'LISTENER':<9} {'STATUS':>6} {'KEY':<20} {'REQ':>6} {'REQ/S':>6}")
        for e in data["edge_requests"]:
            lines.append(f"{e['listener'][:9]:<9} {e['status']:>6} {e['key'][:20]:<20} "
                         f"{e['requests']:>6} {_cell(e['requests_per_s'], '{:.1f}'):>6}")
    elif data["edge"] != "no metrics":
        lines.append(f"edge (nginx) metrics: {data['edge']}")
    if data["gpus"]:
        lines.append(f"\n{'GPU':<4} {'NAME':<28} {'UTIL':>5} {'MEMORY USED / TOTAL':>22}")
        for g in data["gpus"]:
            lines.append(f"{g['index']:<4} {g['name'][:28]:<28} "
                         f"{_cell(g['utilization_pct'], '{}%'):>5} "
                         f"{_cell(g['memory_used_mib'], '{} MiB'):>10} / "
                         f"{_cell(g['memory_total_mib'], '{} MiB')}")
    elif data["gpu_detail"]:
        lines.append(f"GPUs: {data['gpu_detail']}")
    return "\n".join(lines)


def read(spec: StackSpec, engine: Engine, internal_key: str,
         clock: Callable[[], float] = time.monotonic) -> Reading:
    """One Reading of the live stack, through the engine only (no host port): the metrics
    endpoints in one exec in the health container, the containers' states, and the GPUs
    (nvidia-smi in a short-lived container, as `doctor`) when a model has GPUs."""
    from .doctor import probe_images

    states = {c.service: c.status for c in engine.info()}
    found = targets(spec)
    answers: dict[str, tuple[int | None, str]] = {}
    if found and states.get(names.HEALTH) == "running":
        answers = engine.scrape([t.url for t in found],
                                {t.url: internal_key for t in found if t.auth})
    gpus: list[Gpu] | None = None
    detail = ""
    if any(m.gpu_ids for m in spec.models):
        probe = engine.query_gpus(probe_images(spec), utilization=True)
        gpus = probe.gpus if probe.status == "ok" else None
        detail = "" if probe.status == "ok" else f"{probe.status}: {probe.detail}"
    return reading(spec, clock(), answers, states, gpus, detail)
