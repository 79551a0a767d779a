"""Fleet commands without Docker: host selection, the rolling order and where it stops, the
worst exit code, one status table, and the weights check. What a host does on its engine is
`up` + `verify` (tests/integration/test_remote_ssh.py runs them over real ssh endpoints)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from llmstack import fleet
from llmstack.errors import DeployError, UserError
from llmstack.initialize import init
from llmstack.project import Loaded, load_fleet

HOSTS = ("h1", "h2", "h3", "h4")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    init(tmp_path)
    text = (tmp_path / "stack.yaml").read_text() + "hosts:\n" + "".join(
        f"  {n}:\n    engine: ssh://ci@{n}\n    domain: {n}.example.com\n" for n in HOSTS)
    (tmp_path / "stack.yaml").write_text(text)
    return tmp_path


def fake_up(fail: set[str], log: list[str], hold: float = 0.0) -> Any:
    """Stands in for `up` + `verify` on one host: records the order, fails where told."""
    lock = threading.Lock()

    def up_one(loaded: Loaded, url: str | None, result: fleet.HostResult, *_: Any) -> None:
        with lock:
            log.append(f"start {loaded.paths.host} {url}")
        time.sleep(hold)
        with lock:
            log.append(f"end {loaded.paths.host}")
        if loaded.paths.host in fail:
            raise DeployError(f"service model-x failed on {loaded.paths.host}")
        result.data = {"changed": True}
    return up_one


def roll(root: Path, monkeypatch: pytest.MonkeyPatch, fail: set[str], hold: float = 0.0,
         **kwargs: Any) -> tuple[fleet.FleetResult, list[str]]:
    log: list[str] = []
    monkeypatch.setattr(fleet, "up_one", fake_up(fail, log, hold))
    return fleet.rolling_up(root, None, kwargs.pop("hosts", "all"), None, None,
                            lambda m: None, **kwargs), log


def test_rolling_stops_at_the_first_failure_and_leaves_the_rest_untouched(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, log = roll(root, monkeypatch, {"h2"})
    assert log == ["start h1 ssh://ci@h1", "end h1", "start h2 ssh://ci@h2", "end h2"]
    assert [(h.host, h.status, h.exit_code) for h in result.hosts] == [
        ("h1", "ok", 0), ("h2", "failed", 2), ("h3", "skipped", 0), ("h4", "skipped", 0)]
    assert result.exit_code == 2
    doc = result.to_dict()
    assert doc["ok"] is False and doc["hosts"][2]["result"] == {}
    assert "service model-x failed on h2" in doc["hosts"][1]["result"]["message"]
    # every host's own certificate, for its own domain, made before its up (not h3, h4)
    assert (root / "hosts" / "h2" / "certs" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert not (root / "hosts" / "h3").exists()


def test_max_failures_lets_a_large_fleet_go_on(root: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    result, _ = roll(root, monkeypatch, {"h1", "h3"}, max_failures=2)
    assert [h.status for h in result.hosts] == ["failed", "ok", "failed", "skipped"]


def test_parallel_hosts_deploy_together_batch_by_batch(root: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    result, log = roll(root, monkeypatch, set(), hold=0.2, parallel=2)
    assert result.exit_code == 0 and all(h.status == "ok" for h in result.hosts)
    # h1 and h2 overlap; h3 starts only after both ended
    assert set(log[:2]) == {"start h1 ssh://ci@h1", "start h2 ssh://ci@h2"}
    assert log.index("start h3 ssh://ci@h3") > max(log.index("end h1"), log.index("end h2"))


def test_a_host_list_keeps_the_inventory_order(root: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    result, _ = roll(root, monkeypatch, set(), hosts="h3,h1")
    assert [h.host for h in result.hosts] == ["h1", "h3"]


def test_selection_errors_name_the_hosts(root: Path) -> None:
    inventory = load_fleet(root)
    with pytest.raises(UserError) as err:
        fleet.select(inventory, "h1,gpu-9")
    assert "gpu-9" in err.value.message and "h1, h2, h3, h4" in err.value.message
    with pytest.raises(UserError):
        fleet.select(inventory, ",")
    init(root / "plain")
    with pytest.raises(UserError) as err:
        fleet.select(load_fleet(root / "plain"), "all")
    assert "no" in err.value.message and "hosts:" in err.value.message


def test_bad_rolling_options_are_user_errors(root: Path) -> None:
    with pytest.raises(UserError):
        fleet.rolling_up(root, None, "all", None, None, lambda m: None, parallel=0)


def test_each_gives_one_result_per_host_and_the_worst_exit_code(root: Path) -> None:
    def action(loaded: Loaded, url: str | None, result: fleet.HostResult) -> None:
        if loaded.paths.host == "h2":
            raise UserError("bad on h2", "fix it")
        if loaded.paths.host == "h3":
            raise DeployError("engine gone on h3")
        result.data = {"project": loaded.spec.project}

    result = fleet.each(root, None, "all", None, "status", action)
    assert [(h.host, h.exit_code) for h in result.hosts] == [("h1", 0), ("h2", 1), ("h3", 2),
                                                             ("h4", 0)]
    assert result.exit_code == 2
    assert result.hosts[0].engine == "ssh://ci@h1 (--host)"


def test_status_table_is_one_table_and_flags_other_weights() -> None:
    def host(name: str, source: str, in_sync: bool = True) -> fleet.HostResult:
        return fleet.HostResult(name, "e", data={
            "services": [{"service": "nginx", "state": "running", "healthy": True,
                          "in_sync": in_sync}],
            "revision": {"revision": 3, "digest": "abc"}, "weights": {"m": source}})

    result = fleet.FleetResult("status", [host("h1", "hf:o/r (commit 1)"),
                                          host("h2", "hf:o/r (commit 2)", in_sync=False)])
    lines = fleet.status_table(result)
    assert lines[0].split() == ["HOST", "SERVICE", "STATE", "HEALTH", "REVISION"]
    assert lines[1].split()[:6] == ["h1", "nginx", "running", "healthy", "3", "(abc)"]
    assert "runs its previous revision" in lines[2]
    assert any("model m serves other weights" in line and "h2: hf:o/r (commit 2)" in line
               for line in lines)
    assert fleet.differing_weights(result) == {"m": {"h1": "hf:o/r (commit 1)",
                                                     "h2": "hf:o/r (commit 2)"}}


def test_a_context_engine_is_resolved_as_a_docker_context() -> None:
    from llmstack.engine.client import resolve_target
    from llmstack.errors import EngineError

    host = load_fleet_host("gpu-ctx")
    assert fleet.engine_url(host, "ssh://default") == "context:gpu-ctx"
    with pytest.raises(EngineError) as err:
        resolve_target("context:gpu-ctx")
    assert "Docker context 'gpu-ctx' does not exist" in err.value.message


def load_fleet_host(engine: str) -> Any:
    from llmstack import spec
    from llmstack.initialize import starter

    text = starter() + f"hosts:\n  a:\n    engine: {engine}\n  b: {{}}\n"
    hosts = spec.parse_fleet(text).hosts
    assert fleet.engine_url(hosts["b"], "ssh://x") == "ssh://x"  # no engine: --host's
    return hosts["a"]


# --- history --hosts, rollback and logs --host-name (on fake engines, one per host) ---------


def fake_engines(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every engine URL opened gets its own FakeEngine (hosts may share a project name)."""
    from llmstack import deploy
    from llmstack.engine import containers
    from tests.fake_engine import FakeEngine

    engines: dict[str, Any] = {}

    def open_project(host: str | None, project: str) -> FakeEngine:
        return engines.setdefault(str(host), FakeEngine(project=project))

    monkeypatch.setattr(containers, "open_project", open_project)
    monkeypatch.setattr(deploy, "POLL_INTERVAL", 0.0)
    return engines


def deploy_host(root: Path, host: str, engines: dict[str, Any]) -> None:
    from llmstack import deploy
    from llmstack.engine import containers
    from llmstack.project import load

    loaded = load(root, None, host)
    fleet.prepare(loaded)
    engine = containers.open_project(f"ssh://ci@{host}", loaded.spec.project)
    deploy.up(loaded, engine, _Silent(), local_engine=False, progress=lambda m: None)


class _Silent:
    def event(self, service: str, state: str, detail: str = "") -> None:
        pass


def invoke(root: Path, *args: str) -> Any:
    from typer.testing import CliRunner

    from llmstack.cli import app

    return CliRunner().invoke(app, [*args, "-C", str(root)])


def test_history_per_host_then_rollback_and_logs_of_one_host(
        root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from llmstack import names

    engines = fake_engines(monkeypatch)
    for host in ("h1", "h2"):
        deploy_host(root, host, engines)
    # h2 alone gets new model arguments: its second revision; h1 keeps one.
    text = (root / "stack.yaml").read_text().replace(
        "    domain: h2.example.com\n", "    domain: h2.example.com\n    models:\n"
        "      deepseek-coder: {args: [--threads, '2']}\n")
    (root / "stack.yaml").write_text(text)
    deploy_host(root, "h2", engines)

    shown = invoke(root, "history", "--hosts", "h1,h2,h3", "--json")
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["command"] == "history"
    assert [(h["host"], [r["revision"] for r in h["result"]["revisions"]])
            for h in doc["hosts"]] == [("h1", [1]), ("h2", [1, 2]), ("h3", [])]
    table = invoke(root, "history", "--hosts", "all")
    assert table.exit_code == 0, table.output
    assert "== h2 (ssh://ci@h2 (--host)): ok" in table.stdout
    assert table.stdout.count("(latest)") == 2 and "No revision recorded yet" in table.stdout

    h1_calls = list(engines["ssh://ci@h1"].calls)
    chat = names.model_service("deepseek-coder")
    hash_v2 = engines["ssh://ci@h2"].containers[chat].labels[names.LABEL_HASH]
    back = invoke(root, "rollback", "--host-name", "h2", "--json")
    assert back.exit_code == 0, back.output
    out = json.loads(back.stdout)
    assert out["rolled_back_to"] == 1 and out["revision"] == 3
    assert engines["ssh://ci@h2"].containers[chat].labels[names.LABEL_HASH] != hash_v2
    assert engines["ssh://ci@h1"].calls == h1_calls  # another host: untouched
    assert "--threads" in (root / "stack.yaml").read_text()  # stack.yaml is not edited
    revisions = json.loads(invoke(root, "history", "--hosts", "h2", "--json").stdout)
    assert [r["revision"] for r in revisions["hosts"][0]["result"]["revisions"]] == [1, 2, 3]

    engines["ssh://ci@h1"].containers[names.NGINX].log[:] = ["h1 edge line"]
    engines["ssh://ci@h2"].containers[names.NGINX].log[:] = ["h2 edge line"]
    logs = invoke(root, "logs", "nginx", "--host-name", "h2")
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == "h2 edge line\n"

    from llmstack import cli

    for args, says in ((("logs", "nginx", "--host-name", "h1,h2"), "it takes one"),
                       (("rollback", "--host-name", "gpu-9"), "gpu-9 not in")):
        monkeypatch.setattr("sys.argv", ["llmstack", *args, "-C", str(root)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 1
        assert says in capsys.readouterr().err
