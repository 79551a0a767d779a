"""`llmstack rotate-key` on a real stack: under load, with and without a grace window, killed
mid-way, failing, and refused when the stack is not up."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from benchmarks.rotate_key import Run, rotate_under_load
from llmstack import names, plan, secrets
from llmstack.engine.containers import Project
from llmstack.project import load
from tests.helpers import Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    """The suite's shared chat-only stack (tests/integration/conftest.py); its per-IP limit
    is raised so that the load measures the rotation, not the limiter. Every test here reads
    the key from .env and ends with no grace window open."""
    return shared_stack


def status_with(stack: Stack, key: str) -> int:
    resp = requests.get(f"{stack.base_url}/models", headers={"Authorization": f"Bearer {key}"},
                        timeout=30)
    return resp.status_code


def backups(stack: Stack) -> set[Path]:
    return set(stack.root.glob(".env.bak-*"))


def explain(run: Run) -> str:
    failed = [dataclasses.asdict(o) for o in run.failures[:10]]
    return json.dumps({"summary": run.summary(), "failed": failed,
                       "stderr": [line for _, line in run.command_stderr]}, indent=1)


# --- under load -----------------------------------------------------------------------------


@pytest.mark.parametrize(("grace", "switch"), [("0", "env"), ("30s", "return")])
def test_rotation_under_load_fails_no_request_and_streams_finish(stack: Stack, grace: str,
                                                                 switch: str) -> None:
    """16 r/s for 15 s with two long streams in flight; rotate in the middle. Clients take
    the new key as soon as .env has it (no grace) or when the command returns (grace)."""
    run = rotate_under_load(stack.root, seconds=15, rate=16, grace=grace, switch=switch)
    summary = run.summary()
    assert run.command_rc == 0, explain(run)
    assert run.failures == [], explain(run)
    assert summary["requests_sent"] >= 0.9 * 16 * 15
    assert summary["with_old_key"] > 20 and summary["with_new_key"] > 20, summary
    assert run.new_key != run.old_key and stack.key == run.new_key
    assert run.cutover_ms is not None
    # The streams started with the old key before the command, were still streaming when
    # nginx had reloaded (their old worker kept serving them), and ended complete.
    reloaded = run.marker("nginx reloaded")
    assert reloaded is not None, explain(run)
    assert len(run.streams) == 2
    assert all(s.ok and s.chunks >= run.stream_tokens - 1 for s in run.streams), explain(run)
    assert any(s.sent < run.command_started and s.done > reloaded for s in run.streams), \
        explain(run)
    if grace == "0":
        assert run.old_key_after_return == 401
    else:
        assert run.old_key_after_return == 200
        stack.cli("rotate-key", "--finish", check=True)
        assert status_with(stack, run.old_key) == 401


# --- grace windows --------------------------------------------------------------------------


def test_grace_window_closes_by_itself(stack: Stack) -> None:
    old = stack.key
    proc = stack.cli("rotate-key", "--grace", "5s", "--json", check=True)
    out = json.loads(proc.stdout)
    new = stack.key
    assert new != old and "sk-" not in proc.stdout + proc.stderr  # not shown unless --show
    assert out["grace_seconds"] == 5 and out["key_file"] == str(stack.root / ".env")
    assert status_with(stack, old) == 200 and status_with(stack, new) == 200
    rotation = stack.status()["rotation"]
    assert rotation["in_progress"] and rotation["old_key_expires"] == out["grace_ends"]
    ends = dt.datetime.fromisoformat(out["grace_ends"]).timestamp()
    assert secrets.load_keys(stack.root / ".env").previous_expires == int(ends)
    wait_for(lambda: status_with(stack, old) == 401, timeout=15, interval=0.2,
             what="the old key to be refused after the grace window")
    refused_at = time.time()
    assert refused_at > ends - 0.5, "the old key stopped working before its window ended"
    assert status_with(stack, new) == 200
    assert stack.status()["rotation"] is None


def test_finish_ends_the_grace_window_early(stack: Stack) -> None:
    old = stack.key
    stack.cli("rotate-key", "--grace", "10m", check=True)
    new = stack.key
    assert status_with(stack, old) == 200
    proc = stack.cli("rotate-key", "--finish", "--json", check=True)
    assert json.loads(proc.stdout)["finished"] is True
    assert status_with(stack, old) == 401 and status_with(stack, new) == 200
    assert secrets.load_keys(stack.root / ".env").previous is None
    assert stack.status()["rotation"] is None


def test_show_prints_the_new_key(stack: Stack) -> None:
    proc = stack.cli("rotate-key", "--show", check=True)
    assert stack.key in proc.stdout.split()
    assert status_with(stack, stack.key) == 200


# --- failures -------------------------------------------------------------------------------

MARKERS = ["shipping a key file", "nginx reloaded", "verified through nginx", "backed up",
           "wrote the new key"]


@pytest.mark.parametrize("marker", MARKERS)
def test_killed_rotation_leaves_a_whole_env_whose_key_works(stack: Stack, marker: str) -> None:
    """SIGKILL right after each progress line: .env holds the old or the new key, whole,
    and the stack accepts it; the next rotation works from there."""
    old = stack.key
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "llmstack", "rotate-key"], cwd=stack.root,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, seen
    keys = secrets.load_keys(stack.root / ".env")  # parses: whole, mode 0600
    if MARKERS.index(marker) < MARKERS.index("wrote the new key"):
        assert keys.master == old
    else:
        assert keys.master != old
    assert status_with(stack, keys.master) == 200
    stack.cli("rotate-key", check=True)
    assert status_with(stack, stack.key) == 200
    assert status_with(stack, keys.master) == 401


def test_failed_rotation_changes_nothing(stack: Stack, docker_client: object) -> None:
    """nginx refuses its configuration (a broken nginx.conf in its config volume): the
    rotation fails with exit 2, .env is untouched and the old key keeps working."""
    loaded = load(stack.root)
    project = Project(docker_client, stack.project)  # type: ignore[arg-type]
    nginx = next(s for s in plan.desired(loaded.spec, loaded.rendered, loaded.keys().internal)
                 if s.service == names.NGINX)
    env_before = (stack.root / ".env").read_bytes()
    backups_before = backups(stack)
    old = stack.key
    project.write_config(dataclasses.replace(nginx, config={"nginx.conf": b"events {"}))
    try:
        proc = stack.cli("rotate-key")
    finally:
        project.write_config(nginx)
    assert proc.returncode == 2, proc.stderr
    assert "nginx rejected" in proc.stderr and "rolled back" in proc.stderr
    assert (stack.root / ".env").read_bytes() == env_before
    assert backups(stack) == backups_before
    assert status_with(stack, old) == 200
    # The key file in nginx's volume is the old one again: `up` has nothing to re-sync.
    actions = json.loads(stack.cli("plan", "--json", check=True).stdout)["actions"]
    assert {a["action"] for a in actions} == {"keep"}, actions


def test_failed_emergency_rotation_is_mended_by_finish(
        stack: Stack, docker_client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--grace 0` whose final reload fails (patched in, on the real nginx): the leaked key
    still works until the command the error names, `rotate-key --finish`, which ends it."""
    from llmstack import rotate
    from llmstack.edge import Edge
    from llmstack.errors import DeployError

    leaked = stack.key
    real_reload = Edge.reload
    calls: list[int] = []

    def reload_failing_the_second(edge: Edge) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise DeployError("nginx reload failed: injected", "")
        real_reload(edge)

    monkeypatch.setattr(Edge, "reload", reload_failing_the_second)
    project = Project(docker_client, stack.project)  # type: ignore[arg-type]
    with pytest.raises(DeployError) as err:
        rotate.rotate(load(stack.root), project, 0, lambda _: None)
    monkeypatch.undo()
    new = secrets.load_keys(stack.root / ".env").master
    assert status_with(stack, leaked) == 200  # the hole: the transitional file still runs
    assert "rotate-key --finish" in err.value.hint
    actions = json.loads(stack.cli("plan", "--json", check=True).stdout)["actions"]
    assert {"action": "reload", "service": "nginx"}.items() <= next(
        a for a in actions if a["service"] == "nginx").items(), actions  # `up` would mend it
    stack.cli("rotate-key", "--finish", check=True)
    assert status_with(stack, leaked) == 401
    assert status_with(stack, new) == 200
    actions = json.loads(stack.cli("plan", "--json", check=True).stdout)["actions"]
    assert {a["action"] for a in actions} == {"keep"}, actions


def test_refuses_when_the_stack_is_not_up(fresh_stack: Stack) -> None:
    env_before = (fresh_stack.root / ".env").read_bytes()
    proc = fresh_stack.cli("rotate-key")
    assert proc.returncode == 1
    assert "is not up" in proc.stderr and "llmstack up" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = fresh_stack.cli("rotate-key", "--json")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["error"] == "UserError" and "llmstack up" in error["hint"]
    assert (fresh_stack.root / ".env").read_bytes() == env_before
    assert backups(fresh_stack) == set()
