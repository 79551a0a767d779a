"""`llmstack export prometheus` and `export grafana`: what they contain (promtool's own
checks are in tests/integration/test_prometheus_programs.py)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from llmstack import monitoring, names, observe, render
from llmstack.backends import BACKENDS
from llmstack.spec import parse
from tests.helpers import cli

STACK = """
project: shop
models:
  - name: chat
    source: volume:m/a.gguf
  - name: big
    backend: vllm
    source: hf:Qwen/Qwen2.5-0.5B-Instruct
    gpus: [0]
  - name: olla
    backend: ollama
    source: ollama:qwen2.5:0.5b
"""


def test_scrape_config_names_the_endpoints_top_reads() -> None:
    spec = parse(STACK)
    exported = monitoring.prometheus_config(spec, "internal-secret")
    config = yaml.safe_load(exported.config)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == {"llmstack-shop-litellm", "llmstack-shop-edge-metrics",
                         "llmstack-shop-model-chat", "llmstack-shop-model-big"}  # no Ollama
    assert jobs["llmstack-shop-edge-metrics"]["static_configs"] == [
        {"targets": [f"shop-edge-metrics:{names.EDGE_METRICS_PORT}"],
         "labels": {"project": "shop", "service": "edge-metrics"}}]
    assert "authorization" not in jobs["llmstack-shop-edge-metrics"]
    gateway = jobs["llmstack-shop-litellm"]
    assert gateway["static_configs"] == [{"targets": ["shop-litellm:4000"],
                                          "labels": {"project": "shop", "service": "litellm"}}]
    assert gateway["authorization"] == {"type": "Bearer",
                                        "credentials_file": monitoring.KEY_FILE}
    assert jobs["llmstack-shop-model-big"]["static_configs"][0] == {
        "targets": ["shop-model-big:8000"],
        "labels": {"project": "shop", "service": "model-big", "model": "big",
                   "backend": "vllm"}}
    assert "authorization" not in jobs["llmstack-shop-model-chat"]
    assert "internal-secret" not in exported.config  # the key goes to its own file only
    assert exported.key == "internal-secret\n" and exported.network == "shop-net"
    urls = {t.url for t in observe.targets(spec)}
    assert urls == {f"http://{j['static_configs'][0]['targets'][0]}{j['metrics_path']}"
                    for j in jobs.values()}


def test_export_prometheus_writes_the_key_0600(tmp_path: Path) -> None:
    cli("init", str(tmp_path), check=True)
    proc = cli("export", "prometheus", "--json", cwd=tmp_path, check=True)
    out = json.loads(proc.stdout)
    key = Path(out["key_file"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    internal = next(line.split("=", 1)[1] for line in (tmp_path / ".env").read_text()
                    .splitlines() if line.startswith("LLMSTACK_INTERNAL_KEY="))
    assert key.read_text().strip() == internal
    assert internal not in Path(out["config"]).read_text()


def known_metrics() -> set[str]:
    names = {observe.REQUESTS, observe.FAILED, f"{observe.LATENCY}_bucket",
             f"{observe.FIRST_TOKEN}_bucket", "up", "DCGM_FI_DEV_GPU_UTIL",
             "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", render.EDGE_REQUESTS,
             f"{render.EDGE_SECONDS}_bucket"}
    for backend in BACKENDS.values():
        if backend.metrics:
            names |= {backend.metrics.running, backend.metrics.waiting,
                      backend.metrics.generated_tokens}
    return names


def panels() -> list[dict[str, Any]]:
    return list(monitoring.dashboard()["panels"])


def test_dashboard_has_the_schema_fields_grafana_reads() -> None:
    dash = monitoring.dashboard()
    assert isinstance(dash["title"], str) and dash["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"])  # Grafana's uid limit: 40
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels():
        assert panel["type"] in {"timeseries", "stat"} and panel["title"]
        pos = panel["gridPos"]
        assert all(isinstance(pos[k], int) for k in ("h", "w", "x", "y"))
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24  # Grafana's grid is 24 wide
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"] == panel["datasource"]


def test_dashboard_reads_only_metrics_the_stack_serves() -> None:
    """Every metric name in a query is one llmstack knows a part serves (observe.py, the
    backends' MetricNames), or Prometheus' own `up`, or dcgm-exporter's GPU figures."""
    known = known_metrics()
    for panel in panels():
        for target in panel["targets"]:
            expr = re.sub(r"\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"", " ", target["expr"])
            words = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
            words -= {"sum", "by", "rate", "histogram_quantile", "le", "model", "model_group",
                      "requested_model", "listener", "status", "key"}
            alternatives = {n for m in re.findall(r'__name__=~"([^"]+)"', target["expr"])
                            for n in m.split("|")}
            assert words | alternatives <= known, (panel["title"], words - known)
    # top's figures all have a panel.
    titles = " ".join(p["title"].lower() for p in panels())
    for figure in ("requests", "errors", "p50", "p95", "first token", "queued",
                   "tokens per second", "gpu", "listener", "key name", "refusals"):
        assert figure in titles


def test_export_grafana_writes_the_dashboard(tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    cli("export", "grafana", "-o", str(out), check=True)
    assert json.loads(out.read_text()) == monitoring.dashboard()
