# ruff: noqa: E501 -- LITELLM_PAGE keeps the real, long metric lines
"""observe.py: which endpoints `top` reads, how it turns their metrics into per-model figures,
and the GPU part from recorded nvidia-smi output (no GPU here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmstack import gpu, names, observe
from llmstack.engine.host import GpuProbe
from llmstack.plan import desired
from llmstack.render import render
from llmstack.spec import parse
from tests.fake_engine import FakeEngine

STACK = """
project: p
models:
  - name: chat
    aliases: [chat-alias]
    source: volume:m/a.gguf
  - name: big
    backend: vllm
    source: hf:Qwen/Qwen2.5-0.5B-Instruct
    gpus: [0]
  - name: olla
    backend: ollama
    source: ollama:qwen2.5:0.5b
"""

# Trimmed from a real LiteLLM 1.108.7 /metrics page (labels as it writes them): one request
# to `chat`, one to its alias (streamed), one failed request to `big`, and the 401 LiteLLM
# records for an unauthenticated /metrics read (requested_model empty: never a model's).
LITELLM_PAGE = """\
# TYPE litellm_proxy_total_requests_metric_total counter
litellm_proxy_total_requests_metric_total{requested_model="",route="/metrics",status_code="None"} 1.0
litellm_proxy_total_requests_metric_total{requested_model="chat",route="/v1/chat/completions",status_code="200"} 1.0
litellm_proxy_total_requests_metric_total{requested_model="chat-alias",route="/v1/chat/completions",status_code="200"} 1.0
litellm_proxy_total_requests_metric_total{requested_model="big",route="/v1/chat/completions",status_code="500"} 1.0
# TYPE litellm_proxy_failed_requests_metric_total counter
litellm_proxy_failed_requests_metric_total{requested_model="",route="/metrics"} 1.0
litellm_proxy_failed_requests_metric_total{requested_model="big",route="/v1/chat/completions"} 1.0
# TYPE litellm_request_total_latency_metric histogram
litellm_request_total_latency_metric_bucket{le="0.25",model_group="chat"} 0.0
litellm_request_total_latency_metric_bucket{le="0.5",model_group="chat"} 1.0
litellm_request_total_latency_metric_bucket{le="1.0",model_group="chat"} 1.0
litellm_request_total_latency_metric_bucket{le="+Inf",model_group="chat"} 1.0
litellm_request_total_latency_metric_count{model_group="chat"} 1.0
litellm_request_total_latency_metric_sum{model_group="chat"} 0.4
litellm_request_total_latency_metric_bucket{le="0.25",model_group="chat-alias"} 0.0
litellm_request_total_latency_metric_bucket{le="0.5",model_group="chat-alias"} 0.0
litellm_request_total_latency_metric_bucket{le="1.0",model_group="chat-alias"} 1.0
litellm_request_total_latency_metric_bucket{le="+Inf",model_group="chat-alias"} 1.0
litellm_request_total_latency_metric_count{model_group="chat-alias"} 1.0
litellm_request_total_latency_metric_sum{model_group="chat-alias"} 0.7
# TYPE litellm_llm_api_time_to_first_token_metric histogram
litellm_llm_api_time_to_first_token_metric_bucket{le="0.1",model_group="chat-alias"} 0.0
litellm_llm_api_time_to_first_token_metric_bucket{le="0.25",model_group="chat-alias"} 1.0
litellm_llm_api_time_to_first_token_metric_bucket{le="+Inf",model_group="chat-alias"} 1.0
litellm_llm_api_time_to_first_token_metric_count{model_group="chat-alias"} 1.0
litellm_llm_api_time_to_first_token_metric_sum{model_group="chat-alias"} 0.2
"""

# As llama-server --metrics writes it (b11669).
LLAMA_PAGE = """\
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 40
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 0.5
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""

# Recorded `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu
# --format=csv,noheader,nounits` of a two-GPU host.
NVIDIA_SMI_TOP = """\
0, GPU-1c8e0b3a-5d5e-4f0e-9a39-1a2b3c4d5e6f, NVIDIA H100 80GB HBM3, 81559, 72110, 97
1, GPU-2d9f1c4b-6e6f-5a1f-8b4a-2b3c4d5e6f70, NVIDIA H100 80GB HBM3, 81559, 4, 0
"""


@pytest.fixture
def spec() -> Any:
    return parse(STACK)


def test_targets_are_container_names_on_the_project_network(spec: Any) -> None:
    found = {t.service: t for t in observe.targets(spec)}
    assert found[names.LITELLM].url == "http://p-litellm:4000/metrics"
    assert found[names.LITELLM].auth  # LiteLLM guards /metrics with the internal key
    assert found["model-chat"].url == "http://p-model-chat:8080/metrics"
    assert not found["model-chat"].auth
    assert found["model-big"].url == "http://p-model-big:8000/metrics"
    assert "model-olla" not in found  # Ollama serves no metrics


def test_metrics_off_turns_every_part_off(spec: Any) -> None:
    off = parse(STACK + "observability: {metrics: false}\n")
    assert observe.targets(off) == []
    on_cmd = {s.service: s.command for s in desired(spec, render(spec), "k")}
    off_cmd = {s.service: s.command for s in desired(off, render(off), "k")}
    assert "--metrics" in on_cmd["model-chat"] and "--metrics" not in off_cmd["model-chat"]
    assert '"prometheus"' in render(spec).services[names.LITELLM]["litellm.yaml"].decode()
    assert "prometheus" not in render(off).services[names.LITELLM]["litellm.yaml"].decode()


def test_the_edge_routes_no_metrics(spec: Any) -> None:
    conf = render(spec).services[names.NGINX]["nginx.conf"].decode()
    assert "/metrics" not in conf  # only the API contract's routes reach LiteLLM


@pytest.mark.parametrize(("q", "buckets", "expected"), [
    (0.5, {0.5: 1.0, 1.0: 1.0, float("inf"): 1.0}, 0.25),
    (0.5, {0.1: 0.0, 0.2: 4.0, float("inf"): 4.0}, 0.15),
    (0.95, {0.1: 0.0, 0.2: 4.0, float("inf"): 4.0}, 0.195),
    (0.99, {1.0: 1.0, float("inf"): 2.0}, 1.0),  # in +Inf: the largest finite bound
    (0.5, {1.0: 0.0, float("inf"): 0.0}, None),
    (0.5, {}, None),
])
def test_quantile_as_prometheus_histogram_quantile(q: float, buckets: dict[float, float],
                                                   expected: float | None) -> None:
    got = observe.quantile(q, buckets)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_parse_refuses_what_is_not_prometheus_text() -> None:
    with pytest.raises(observe.MetricsParseError):
        observe.parse("<html>\n<body>nope</body>")


def engine_with_stack(spec: Any) -> FakeEngine:
    engine = FakeEngine(project="p")
    engine.ensure_network()
    for svc in desired(spec, render(spec), "k"):
        engine.start(svc)
    engine.pages = {"litellm/metrics": LITELLM_PAGE, "model-chat/metrics": LLAMA_PAGE}
    return engine


def test_a_reading_through_the_engine(spec: Any) -> None:
    engine = engine_with_stack(spec)
    engine.gpus = GpuProbe("ok", gpu.parse_nvidia_smi(NVIDIA_SMI_TOP), image="x")
    data = observe.view(observe.read(spec, engine, "internal-key"))
    # The internal key travels only for LiteLLM's endpoint.
    assert engine.scrape_auth == [{"http://p-litellm:4000/metrics": "internal-key"}]
    rows = {m["model"]: m for m in data["models"]}
    chat = rows["chat"]
    assert chat["state"] == "up"
    assert chat["requests"] == 2  # its own name and its alias; never the /metrics 401
    assert chat["errors"] == 0
    assert chat["in_flight"] == 2 and chat["queued"] == 1
    assert chat["generated_tokens"] == 40 and chat["decode_tokens_per_s"] == 80.0
    assert chat["latency_p50_s"] == 0.5 and chat["latency_over"] == "since start"
    assert chat["first_token_p50_s"] == pytest.approx(0.175)
    big = rows["big"]
    assert big["requests"] == 1 and big["errors"] == 1
    assert big["in_flight"] is None  # its page was not served (404): no figures, still up
    assert rows["olla"]["in_flight"] is None and rows["olla"]["requests"] == 0
    assert data["gpus"] == [
        {"index": 0, "uuid": "GPU-1c8e0b3a-5d5e-4f0e-9a39-1a2b3c4d5e6f",
         "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559,
         "memory_used_mib": 72110, "memory_free_mib": 9449, "utilization_pct": 97},
        {"index": 1, "uuid": "GPU-2d9f1c4b-6e6f-5a1f-8b4a-2b3c4d5e6f70",
         "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 4,
         "memory_free_mib": 81555, "utilization_pct": 0}]
    json.dumps(data)  # --json can print it
    text = observe.table(data)
    assert "NVIDIA H100 80GB HBM3" in text and "97%" in text


def test_rates_over_the_interval_between_two_readings(spec: Any) -> None:
    engine = engine_with_stack(spec)
    clock = iter([10.0, 12.0])
    old = observe.read(spec, engine, "k", clock=lambda: next(clock))
    engine.pages["litellm/metrics"] = LITELLM_PAGE.replace(
        'requested_model="chat",route="/v1/chat/completions",status_code="200"} 1.0',
        'requested_model="chat",route="/v1/chat/completions",status_code="200"} 5.0').replace(
        'le="0.25",model_group="chat"} 0.0', 'le="0.25",model_group="chat"} 4.0').replace(
        'le="0.5",model_group="chat"} 1.0', 'le="0.5",model_group="chat"} 5.0').replace(
        'le="1.0",model_group="chat"} 1.0', 'le="1.0",model_group="chat"} 5.0').replace(
        'le="+Inf",model_group="chat"} 1.0', 'le="+Inf",model_group="chat"} 5.0')
    engine.pages["model-chat/metrics"] = LLAMA_PAGE.replace(
        "tokens_predicted_total 40", "tokens_predicted_total 100")
    chat = observe.model_view(*(
        next(m for m in r.models if m.name == "chat")
        for r in (observe.read(spec, engine, "k", clock=lambda: next(clock)), old)), 2.0)
    assert chat["requests"] == 6 and chat["requests_per_s"] == 2.0
    assert chat["tokens_per_s"] == 30.0
    # The four new requests all took under 0.25 s: the interval's quantiles say so.
    assert chat["latency_over"] == "interval"
    assert chat["latency_p50_s"] == pytest.approx(0.125)


def test_a_stopped_model_is_down_and_a_missing_one_has_no_container(spec: Any) -> None:
    engine = engine_with_stack(spec)
    engine.containers["model-chat"].status = "exited"
    del engine.containers["model-big"]
    rows = {m["model"]: m for m in observe.view(observe.read(spec, engine, "k"))["models"]}
    assert rows["chat"]["state"] == "down"
    assert rows["big"]["state"] == "no container"
    assert rows["olla"]["state"] == "up"


def test_the_gateway_down_leaves_model_figures(spec: Any) -> None:
    engine = engine_with_stack(spec)
    engine.containers[names.LITELLM].status = "exited"
    data = observe.view(observe.read(spec, engine, "k"))
    assert data["gateway"] == "down"
    chat = next(m for m in data["models"] if m["model"] == "chat")
    assert chat["requests"] is None and chat["in_flight"] == 2


def test_gpu_errors_are_reported_not_raised(spec: Any) -> None:
    engine = engine_with_stack(spec)
    data = observe.view(observe.read(spec, engine, "k"))
    assert data["gpus"] is None and data["gpu_detail"].startswith("no-runtime")
    assert "GPUs: no-runtime" in observe.table(data)


def test_nvidia_smi_top_query_parses_utilization() -> None:
    gpus = gpu.parse_nvidia_smi("0, GPU-x, T4, 15360, [N/A], [N/A]\n")
    assert gpus[0].utilization_pct is None and gpus[0].memory_used_mib is None
    assert gpu.NVIDIA_SMI_TOP_QUERY[0].endswith(",utilization.gpu")


# A real mtail 3.0.0~rc50 /metrics page (edge.mtail as rendered; Go runtime lines left out),
# after nginx sent it: 3 gateway requests, a 401 (no valid key), a LAN request, three requests
# straight to the `route: direct` model "fast" (one 502) and a 429 on HTTPS.
EDGE_PAGE = (Path(__file__).parent / "data_edge_metrics.txt").read_text()

DIRECT_STACK = """
project: p
models:
  - name: chat
    aliases: [chat-alias]
    source: volume:m/a.gguf
  - name: fast
    source: volume:m/a.gguf
    route: direct
"""


def test_edge_metrics_is_a_target_and_needs_no_key(spec: Any) -> None:
    found = {t.service: t for t in observe.targets(spec)}
    edge = found[names.EDGE_METRICS]
    assert edge.url == f"http://p-edge-metrics:{names.EDGE_METRICS_PORT}/metrics"
    assert not edge.auth


def test_a_direct_model_is_counted_from_nginx_and_nginx_counts_its_own_answers() -> None:
    direct = parse(DIRECT_STACK)
    engine = engine_with_stack(direct)
    engine.pages["edge-metrics/metrics"] = EDGE_PAGE
    engine.pages["model-fast/metrics"] = LLAMA_PAGE
    data = observe.view(observe.read(direct, engine, "k"))
    rows = {m["model"]: m for m in data["models"]}
    # LiteLLM never sees "fast": its requests are nginx's lines labelled with it.
    assert rows["fast"]["requests"] == 3 and rows["fast"]["errors"] == 1  # the 502
    assert rows["fast"]["latency_p50_s"] == pytest.approx(0.375)  # 0.01, 0.4, 1.5 s
    assert rows["chat"]["requests"] == 2  # LiteLLM's page, as before: no double count
    assert data["edge"] == "up"
    edge = {(e["listener"], e["status"], e["key"]): e["requests"]
            for e in data["edge_requests"]}
    assert edge == {("local", 401, "-"): 1, ("lan", 200, "master"): 1,
                    ("local", 200, "master"): 4, ("local", 502, "master"): 1,
                    ("https", 429, "team-a"): 1, ("local", 200, "team-a"): 1}
    text = observe.table(data)
    assert "edge (nginx) metrics: up" in text
    assert any(line.split() == ["https", "429", "team-a", "1", "-"]
               for line in text.splitlines())


def test_without_nginx_counts_a_direct_model_has_no_request_figures() -> None:
    direct = parse(DIRECT_STACK)
    engine = engine_with_stack(direct)  # no edge-metrics page: 404
    data = observe.view(observe.read(direct, engine, "k"))
    rows = {m["model"]: m for m in data["models"]}
    assert data["edge"] == "down" and data["edge_requests"] == []
    assert rows["fast"]["requests"] is None and rows["fast"]["errors"] is None
    assert rows["chat"]["requests"] == 2  # the gateway's model keeps its figures


def test_edge_rates_over_the_interval() -> None:
    direct = parse(DIRECT_STACK)
    engine = engine_with_stack(direct)
    engine.pages["edge-metrics/metrics"] = EDGE_PAGE
    clock = iter([10.0, 12.0])
    old = observe.read(direct, engine, "k", clock=lambda: next(clock))
    engine.pages["edge-metrics/metrics"] = EDGE_PAGE.replace(
        'listener="local",model="",status="401"} 1', 'listener="local",model="",status="401"} 5')
    new = observe.read(direct, engine, "k", clock=lambda: next(clock))
    rows = {(e["listener"], e["status"]): e for e in observe.view(new, old)["edge_requests"]}
    assert rows[("local", 401)]["requests"] == 5 and rows[("local", 401)]["requests_per_s"] == 2.0
    assert rows[("lan", 200)]["requests_per_s"] == 0.0


def test_top_is_healthy_only_when_every_model_is_up(spec: Any) -> None:
    engine = engine_with_stack(spec)
    assert observe.healthy(observe.view(observe.read(spec, engine, "k")))
    engine.containers["model-chat"].status = "exited"
    assert not observe.healthy(observe.view(observe.read(spec, engine, "k")))


def test_metrics_off_has_no_edge_metrics_service_nor_target() -> None:
    off = parse(STACK + "observability: {metrics: false}\n")
    assert names.EDGE_METRICS not in {s.service for s in desired(off, render(off), "k")}
    assert names.EDGE_METRICS not in render(off).services


@pytest.mark.parametrize("images", ["registry", "auto"])
def test_registry_images_run_without_edge_counts_unless_an_mtail_image_is_named(
        images: str) -> None:
    """No upstream mtail image is recorded: a stack pulling its images from a registry must
    not need one of llmstack's own builds (first contact on a registry-only host)."""
    from llmstack import pull

    stack = parse(STACK + f"images: {images}\n").with_image_source("registry")
    assert not stack.edge_counts()
    assert names.EDGE_METRICS not in {s.service for s in desired(stack, render(stack), "k")}
    assert names.EDGE_METRICS not in render(stack).services
    assert b"llmstack_metrics" not in render(stack).services[names.NGINX]["nginx.conf"]
    assert not any("mtail" in ref for ref in pull.stack_refs(stack, "registry"))
    assert names.EDGE_METRICS not in {t.service for t in observe.targets(stack)}
    # The local builds (auto deciding local, or images: local) include it.
    assert any("mtail" in ref for ref in pull.stack_refs(stack, "local"))
    assert parse(STACK + f"images: {images}\n").with_image_source("local").edge_counts()
    named = parse(STACK + "images: {source: registry, mtail: registry.example.com/mtail:3}\n")
    assert named.edge_counts()
    assert "registry.example.com/mtail:3" in pull.stack_refs(named, "registry")
    assert names.EDGE_METRICS in {s.service for s in desired(named, render(named), "k")}
