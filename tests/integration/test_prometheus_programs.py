"""What `llmstack export prometheus` and `export grafana` write passes Prometheus' own
checks: `promtool check config` on the scrape config (each golden stack and the starter) and
`promtool check rules` on every dashboard query. promtool comes from Debian's `prometheus`
package (scripts/setup-test-host.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from llmstack import monitoring
from llmstack.spec import load_file
from tests.helpers import REPO, cli

pytestmark = pytest.mark.integration

GOLDEN = REPO / "tests" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "stack.yaml").is_file())


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus (scripts/setup-test-host.sh)"
    return found


@pytest.mark.parametrize("case", CASES)
def test_scrape_config_passes_promtool(case: str, tmp_path: Path) -> None:
    exported = monitoring.prometheus_config(load_file(GOLDEN / case / "stack.yaml"), "k")
    (tmp_path / monitoring.PROMETHEUS_FILE).write_text(exported.config)
    (tmp_path / monitoring.KEY_FILE).write_text(exported.key)
    proc = subprocess.run([promtool(), "check", "config", monitoring.PROMETHEUS_FILE],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_starter_export_passes_promtool(tmp_path: Path) -> None:
    cli("init", str(tmp_path), check=True)
    cli("export", "prometheus", "-o", "prom", cwd=tmp_path, check=True)
    proc = subprocess.run([promtool(), "check", "config", "prom/prometheus.yml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"llmstack:panel{p['id']}_{t['refId'].lower()}",
              "expr": t["expr"].replace("$__rate_interval", "5m")
                               .replace("$project", "demo")}
             for p in monitoring.dashboard()["panels"] for t in p["targets"]]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(
        {"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool(), "check", "rules", "rules.yml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
