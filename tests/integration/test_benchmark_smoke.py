"""`benchmarks/run.py --quick` still runs end to end and reports every figure with its
baseline (a tiny budget: this checks the benchmark works, not how fast anything is)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmstack import names
from llmstack.engine.containers import Project
from tests.helpers import REPO, unique_project

pytestmark = pytest.mark.integration

VARIANTS = ("direct", "litellm", "nginx_http", "nginx_tls", "direct_twin", "route_direct_http",
            "route_direct_tls")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_benchmark_reports_every_figure_next_to_its_baseline(
        tmp_path: Path, docker_client: Any) -> None:
    project = unique_project("t-bench")
    out = tmp_path / "results"
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(out),
             "--project", project], capture_output=True, text=True, timeout=300,
            stdin=subprocess.DEVNULL, env={**os.environ, "CI": "true"})
        left = docker_client.containers.list(
            all=True, filters={"label": f"{names.LABEL_PROJECT}={project}"})
    finally:
        for name in (project, f"{project}-c"):  # a run killed by the timeout cannot clean up
            Project(docker_client, name).down(volumes=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert left == [], "the benchmark left its containers running"

    [result_json] = out.glob("*.json")
    data = json.loads(result_json.read_text())
    assert data["meta"]["mode"] == "quick" and data["meta"]["project"] == project

    help_start = data["help_start"]
    assert _number(help_start["median_ms"]) and _number(help_start["baseline_python_ms"])

    cold = data["up_cold"]
    assert cold["wall_s"] > cold["slowest_ready_s"] > 0 and _number(cold["ratio"])
    assert cold["slowest_service"] in cold["ready_seconds"]

    noop = data["up_noop"]
    assert "error" not in noop, noop.get("error")
    assert noop["llmstack_s"] > 0 and noop["compose_s"] > 0 and _number(noop["ratio"])

    lim = data["rate_limiter"]
    assert lim["accepted"] + lim["rejected_429"] == lim["sent"]
    assert 0 < lim["accepted"] < lim["sent"], "the burst must be partly refused with 429"
    assert _number(lim["theoretical"])

    for conc in ("c1", "c8"):
        for variant in VARIANTS:
            stats = data["gateway_latency"][conc][variant]
            assert stats["n"] >= 1 and stats["failed"] == 0, (conc, variant, stats)
            assert all(_number(stats[p]) for p in ("p50", "p95", "p99", "p50_x_direct"))
            assert stats["completion_tokens"] > 0
    for variant in VARIANTS:
        ttft = data["streaming_ttft"][variant]
        assert ttft["failed"] == 0 and _number(ttft["p50"]) and ttft["p50"] > 0

    memory = data["memory_mib"]
    for phase in ("idle", "under_load_peak"):
        assert {names.NGINX, names.LITELLM, names.HEALTH} <= set(memory[phase])
        assert all(v > 0 for v in memory[phase].values())

    assert isinstance(data["rotate_key"].get("available"), bool)

    targets = [t for section in data.values() if isinstance(section, dict)
               for t in ([section["target"]] if "target" in section else [])
               + section.get("targets", [])]
    assert len(targets) >= 10
    for t in targets:
        assert _number(t["value"]) and isinstance(t["met"], bool) and t["baseline"], t

    md = result_json.with_suffix(".md").read_text()
    png = result_json.with_suffix(".png")
    assert png.stat().st_size > 1000 and f"]({png.name})" in md
    assert "## Targets" in md and "docker-compose" in md
