"""A fleet from one stack.yaml: three hosts of a `hosts:` inventory, each a real sshd endpoint
on 127.0.0.1 reaching this machine's engine (the setup of test_remote_ssh), each its own
project with its own ports and its own certificate.

One flow, to keep the CI budget: validate and render per host; `plan --hosts all`; a rolling
`up` of two hosts; a rolling `up --hosts all` where the second host's model is broken by an
override (it is rolled back and keeps serving, the first keeps serving, the third is never
touched); `status` and `verify --hosts ... --json`; the fleet's key rotated under load with
one grace window and no failed request on any host; `down --hosts all`. The text table of
`status --hosts` and `rotate-key --hosts --finish` are unit-tested (tests/unit/test_fleet.py,
test_rotate.py): each costs ~25 s over three ssh endpoints here.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmstack import names
from tests.helpers import Stack, cli, free_port, make_stack, wait_for
from tests.integration.test_remote_ssh import Remote, sshd_endpoints

pytestmark = pytest.mark.integration

HOSTS = ("h1", "h2", "h3")


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def _failures(doc: dict[str, Any]) -> str:
    """What failed on each host, for an assertion message."""
    return json.dumps([(h["host"], h["status"], h["result"].get("message"),
                        [c for c in h["result"].get("verify", {}).get("checks", [])
                         if c["status"] == "fail"]) for h in doc["hosts"]])


def _by_host(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in doc["hosts"]}


class Fleet:
    def __init__(self, stack: Stack, remotes: list[Remote]) -> None:
        self.stack, self.env = stack, remotes[0].env
        self.projects = {h: f"{stack.project}-{h}" for h in HOSTS}
        self.ports = {h: (free_port(), free_port(), free_port()) for h in HOSTS}
        data = stack.spec()
        data["hosts"] = {
            h: {"engine": r.url, "project": self.projects[h], "domain": f"{h}.fleet.test",
                "listeners": {"local": {"port": self.ports[h][0]},
                              "lan": {"port": self.ports[h][1]},
                              "https": {"port": self.ports[h][2]}}}
            for h, r in zip(HOSTS, remotes, strict=True)}
        self.data = data
        stack.write_spec(data)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = cli(*args, cwd=self.stack.root, env=self.env, timeout=600)
        print(f"llmstack {' '.join(args)}: exit {proc.returncode}, "
              f"{time.monotonic() - started:.1f}s")
        return proc

    def key(self) -> str:
        return self.stack.key

    def models_status(self, host: str, key: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[host][0]}/v1/models",
                                     headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


@pytest.fixture
def fleet(tmp_path: Path, docker_client: Any) -> Iterator[Fleet]:
    with sshd_endpoints(len(HOSTS)) as remotes:
        stack = make_stack(tmp_path / "fleet", prefix="t-fleet", embed=False)
        one = Fleet(stack, remotes)
        try:
            yield one
        finally:
            down = one.run("down", "--hosts", "all", "--volumes", "--json")
            for project in one.projects.values():  # whatever `down` could not reach
                for c in docker_client.containers.list(
                        all=True, filters={"label": f"{names.LABEL_PROJECT}={project}"}):
                    c.remove(force=True)
            assert down.returncode == 0, down.stdout + down.stderr


def test_fleet_rolling_up_status_verify_rotate(fleet: Fleet, docker_client: Any) -> None:
    started = time.monotonic()
    # validate checks every host's resulting stack; render shows one.
    valid = _json(fleet.run("validate", "--json"))
    assert {h: v["project"] for h, v in valid["hosts"].items()} == fleet.projects
    shown = fleet.run("render", "--host-name", "h2", "--stdout")
    assert shown.returncode == 0, shown.stderr
    assert f"project: {fleet.projects['h2']}" in shown.stdout
    assert "domain: h2.fleet.test" in shown.stdout

    plan = fleet.run("plan", "--hosts", "all", "--json")
    doc = _json(plan)
    assert plan.returncode == 0, doc
    for h in HOSTS:
        result = _by_host(doc)[h]["result"]
        assert result["project"] == fleet.projects[h]
        assert {a["action"] for a in result["actions"]} == {"create"}
    # Each host's own certificate for its own domain, private key 0600, in the folder.
    for h in HOSTS:
        key = fleet.stack.root / "hosts" / h / "certs" / "tls.key"
        assert key.stat().st_mode & 0o777 == 0o600

    up = fleet.run("up", "--hosts", "h1,h2", "--parallel", "2", "--json")
    doc = _json(up)
    assert up.returncode == 0, _failures(doc)
    for h in ("h1", "h2"):
        result = _by_host(doc)[h]
        assert result["status"] == "ok" and result["result"]["changed"] is True
        assert result["result"]["verify"]["ok"] is True

    # The second host's model is broken by an override: it fails, is rolled back and keeps
    # serving; the first is unchanged and serving; the third is never reached.
    fleet.data["hosts"]["h2"]["models"] = {"deepseek-coder": {"args": ["--no-such-flag"]}}
    fleet.stack.write_spec(fleet.data)
    rolling = fleet.run("up", "--hosts", "all", "--json")
    doc = _json(rolling)
    assert rolling.returncode == 2, doc
    hosts = _by_host(doc)
    assert hosts["h1"]["status"] == "ok" and hosts["h1"]["result"]["changed"] is False
    assert hosts["h2"]["status"] == "failed" and hosts["h2"]["exit_code"] == 2
    assert "rolled back" in hosts["h2"]["result"]["message"]
    assert hosts["h3"]["status"] == "skipped" and hosts["h3"]["result"] == {}
    assert docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={fleet.projects['h3']}"}) == []
    assert fleet.models_status("h1", fleet.key()) == 200
    assert fleet.models_status("h2", fleet.key()) == 200

    status = fleet.run("status", "--hosts", "all", "--json")
    doc = _json(status)
    assert status.returncode == 2  # h3 has nothing running: the worst host decides
    hosts = _by_host(doc)
    assert hosts["h1"]["result"]["healthy"] is True and hosts["h2"]["result"]["healthy"]
    assert hosts["h3"]["status"] == "failed"
    assert {s["state"] for s in hosts["h3"]["result"]["services"]} == {"missing"}
    assert hosts["h1"]["result"]["revision"]["revision"] == 1
    assert doc["differing_weights"] == {}
    verify = fleet.run("verify", "--hosts", "h1,h2", "--json")
    doc = _json(verify)
    assert verify.returncode == 0, _failures(doc)
    for h in ("h1", "h2"):
        checks = {c["check"]: c["status"] for c in _by_host(doc)[h]["result"]["checks"]}
        assert checks["tls"] == "ok" and checks["chat_stream"] == "ok", checks

    # One new key for the fleet, one grace window, under load on both hosts: every response
    # counted, none failed. Clients read the key from .env before each request, at about 5
    # requests a second per host: under the rate limit (10 r/s), once verify's rate-limit
    # probe has drained.
    old_key = fleet.key()
    for h in ("h1", "h2"):
        wait_for(lambda h=h: fleet.models_status(h, old_key) == 200, timeout=30,
                 what=f"{h} to serve after verify's rate-limit probe")
    counts: dict[str, Counter[int]] = {h: Counter() for h in ("h1", "h2")}
    stop = threading.Event()

    def load(host: str) -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            counts[host][fleet.models_status(host, fleet.key())] += 1
            time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(h,)) for h in counts]
    for t in threads:
        t.start()
    try:
        rotated = fleet.run("rotate-key", "--hosts", "h1,h2", "--grace", "60s", "--json")
        time.sleep(1.0)  # requests with the new key after the rotation, too
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    doc = _json(rotated)
    assert rotated.returncode == 0, doc
    ends = {h["result"]["grace_ends"] for h in doc["hosts"]}
    assert len(ends) == 1 and None not in ends  # one window for the fleet
    new_key = fleet.key()
    assert new_key != old_key
    for h, counted in counts.items():
        assert set(counted) == {200}, f"{h}: {counted}"
        assert sum(counted.values()) >= 10, counted
    for h in ("h1", "h2"):
        assert fleet.models_status(h, new_key) == 200
        assert fleet.models_status(h, old_key) == 200  # within the grace window
    print(f"fleet flow took {time.monotonic() - started:.1f}s; load: "
          + ", ".join(f"{h} {sum(c.values())} requests" for h, c in counts.items()))

