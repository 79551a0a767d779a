"""Changes applied by `llmstack up` while clients use the API, on the real engine.

The suite's shared chat-only stack (tests/integration/conftest.py) is changed step by step
(tests run in file order; it may already carry revisions and a rotated key of earlier
modules, so revision numbers are counted from the one it runs when this module starts): a
second folder naming the same project is refused; an alias is added (LiteLLM replaced start-
first); the model's arguments change (model and LiteLLM replaced start-first); a broken
argument is rolled back; `llmstack rollback` returns to the previous revision; nginx.conf
changes reload nginx in place; a stop-first model restarts with JSON errors only (LiteLLM's
503 from its placeholder, or its 500). Each change runs under a steady load of one-token chat
completions and streams from a few closed-loop clients (benchmarks/updates.py) sent to
127.0.0.1 only, and every response is counted.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from benchmarks.updates import UpdateRun, add_alias, break_model, change_args, change_under_load
from llmstack import names
from tests.helpers import Stack, make_stack

pytestmark = pytest.mark.integration

CHAT = names.model_service("deepseek-coder")


@pytest.fixture(scope="module")
def stack(shared_stack: Stack) -> Stack:
    return shared_stack


@pytest.fixture(scope="module")
def first(stack: Stack) -> int:
    """The revision the stack runs when this module starts (its later ones count from it)."""
    return revisions(stack)[-1]["revision"]


def revisions(stack: Stack) -> list[dict[str, Any]]:
    return json.loads(stack.cli("history", "--json", check=True).stdout)["revisions"]


def containers(client: Any, project: str) -> dict[str, tuple[str, str]]:
    """{container name: (id, config hash)} of the project."""
    found = client.containers.list(all=True,
                                   filters={"label": f"{names.LABEL_PROJECT}={project}"})
    return {c.name: (c.id, c.labels.get(names.LABEL_HASH, "")) for c in found}


def explain(run: UpdateRun) -> str:
    failed = [{"kind": o.kind, "status": o.status, "error": o.error, "complete": o.complete,
               "at_s": round(o.sent - run.command_started, 1)} for o in run.failures[:10]]
    return json.dumps({"summary": run.summary(), "failed": failed,
                       "stderr": [line for _, line in run.command_stderr][-40:]}, indent=1)


def chat(stack: Stack, model: str) -> int:
    reply = requests.post(f"{stack.base_url}/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {stack.key}"},
                          json={"model": model, "max_tokens": 1,
                                "messages": [{"role": "user", "content": "hi"}]})
    return reply.status_code


def test_a_second_folder_naming_the_same_project_is_refused(stack: Stack, tmp_path: Path,
                                                            docker_client: Any) -> None:
    other = make_stack(tmp_path / "other", prefix="t-upd2", embed=False)
    data = other.spec()
    data["project"] = stack.project  # the mistake: a copy-pasted project name
    other.write_spec(data)
    before = containers(docker_client, stack.project)
    for command in (["plan"], ["up"], ["down"]):
        proc = other.cli(*command)
        assert proc.returncode == 1, (command, proc.stdout, proc.stderr)
        assert f"project {stack.project!r} on this engine belongs to another stack folder" \
            in proc.stderr
        assert str(stack.root.resolve()) in proc.stderr  # names the folder that owns it
        assert "`project:` in stack.yaml" in proc.stderr and "--take-over" in proc.stderr
    assert containers(docker_client, stack.project) == before
    assert stack.cli("plan", "--json", check=True).returncode == 0  # the owner still may


def test_adding_an_alias_fails_no_request(stack: Stack, first: int, docker_client: Any
                                          ) -> None:
    before = containers(docker_client, stack.project)
    run = change_under_load(stack.root, "alias_added", add_alias)
    print(json.dumps(run.summary()))
    assert run.command_rc == 0, explain(run)
    assert run.failures == [], explain(run)
    summary = run.summary()
    assert summary["requests_sent"] >= 10 and summary["streams_complete"] >= 1, explain(run)
    after = containers(docker_client, stack.project)
    litellm = names.container(stack.project, names.LITELLM)
    model = names.container(stack.project, CHAT)
    assert after[litellm] != before[litellm]  # LiteLLM was replaced ...
    assert after[model] == before[model]  # ... the model was not
    assert sorted(after) == sorted(before)  # no _next / _old container is left
    assert chat(stack, "added-alias") == 200


def test_changing_model_args_fails_no_request_and_streams_finish(stack: Stack,
                                                                 docker_client: Any) -> None:
    before = containers(docker_client, stack.project)
    run = change_under_load(stack.root, "model_args_changed", change_args)
    print(json.dumps(run.summary()))
    assert run.command_rc == 0, explain(run)
    assert run.failures == [], explain(run)
    summary = run.summary()
    assert summary["streams_spanning_switch"] >= 1, explain(run)  # in flight, and finished
    after = containers(docker_client, stack.project)
    model = names.container(stack.project, CHAT)
    assert after[model][1] != before[model][1]  # the model runs its new arguments
    assert sorted(after) == sorted(before)
    assert stack.status()["healthy"] is True


def test_a_broken_model_is_rolled_back_and_keeps_answering(stack: Stack,
                                                            docker_client: Any) -> None:
    before = containers(docker_client, stack.project)
    run = change_under_load(stack.root, "model_broken", break_model)
    print(json.dumps(run.summary()))
    stderr = "\n".join(line for _, line in run.command_stderr)
    assert run.command_rc == 2, explain(run)
    assert f"service {CHAT} failed" in stderr and "last log lines:" in stderr, stderr
    assert "probe: GET /health on port" in stderr
    assert f"rolled back: {CHAT}" in stderr
    assert run.failures == [], explain(run)  # the old model answered all along
    assert containers(docker_client, stack.project) == before  # the very same containers
    assert chat(stack, "deepseek-coder") == 200


def test_rollback_to_the_previous_revision_fails_no_request(stack: Stack, first: int,
                                                           docker_client: Any) -> None:
    history = revisions(stack)
    # the module's start, alias added, arguments changed (the broken change recorded nothing)
    assert [r["revision"] for r in history[-3:]] == [first, first + 1, first + 2]
    before = containers(docker_client, stack.project)
    run = change_under_load(stack.root, "rollback", lambda data: None, command="rollback")
    print(json.dumps(run.summary()))
    assert run.command_rc == 0, explain(run)
    assert run.failures == [], explain(run)
    after = containers(docker_client, stack.project)
    model = names.container(stack.project, CHAT)
    assert after[model][1] != before[model][1]  # back to the arguments of the alias change
    assert f"runs revision {first + 1} again" in run.command_stdout
    history = revisions(stack)
    assert [r["revision"] for r in history[-4:]] == [first, first + 1, first + 2, first + 3]
    assert history[-1]["digest"] == history[-3]["digest"]
    assert stack.status()["healthy"] is True


def working_args(args: list[str]) -> list[str]:
    """`args` without what change_args and break_model added."""
    out = [a for a in args if a != "--no-such-flag"]
    if "--batch-size" in out:
        i = out.index("--batch-size")
        del out[i:i + 2]
    return out


def test_an_nginx_conf_change_reloads_nginx_in_place(stack: Stack, docker_client: Any) -> None:
    before = containers(docker_client, stack.project)
    def edit(data: dict[str, Any]) -> None:
        # Back to the arguments that run (the alias change: the broken flag and the new batch size
        # are gone), so that only nginx.conf changes.
        data["models"][0]["args"] = working_args(data["models"][0]["args"])
        data["rate_limit"]["requests_per_second"] = 900

    run = change_under_load(stack.root, "nginx_conf_changed", edit)
    print(json.dumps(run.summary()))
    assert run.command_rc == 0, explain(run)
    assert run.failures == [], explain(run)
    assert any("nginx.conf changed" in line for _, line in run.command_stderr), explain(run)
    assert containers(docker_client, stack.project) == before  # reloaded, not recreated
    nginx = docker_client.containers.get(names.container(stack.project, names.NGINX))
    conf = nginx.exec_run(["cat", f"{names.config_dir(names.NGINX)}/nginx.conf"]).output
    assert b"rate=900r/s" in conf  # what the running nginx loaded at its reload


def test_a_stop_first_model_restarts_with_json_errors_only(
        stack: Stack, docker_client: Any) -> None:
    data = stack.spec()
    data["models"][0]["args"] = working_args(data["models"][0]["args"])
    data["models"][0]["update"] = "stop-first"
    stack.write_spec(data)
    stack.cli("up", check=True)  # the working arguments again, now stop-first
    answers: list[tuple[float, int, str | None, str]] = []  # (sent, status, Retry-After, code)
    done = threading.Event()

    def watch() -> None:  # one more client that keeps what the load does not: headers, body
        while not done.is_set():
            sent = time.monotonic()
            try:
                reply = requests.post(
                    f"{stack.base_url}/chat/completions", timeout=60,
                    headers={"Authorization": f"Bearer {stack.key}"},
                    json={"model": "deepseek-coder", "max_tokens": 1,
                          "messages": [{"role": "user", "content": "hi"}]})
                code = "" if reply.status_code == 200 else reply.json()["error"]["code"]
                answers.append((sent, reply.status_code, reply.headers.get("Retry-After"), code))
            except (requests.RequestException, ValueError, KeyError) as exc:
                answers.append((sent, 0, None, f"{type(exc).__name__}: {exc}"))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run = change_under_load(stack.root, "stop_first", change_args)
    finally:
        done.set()
        watcher.join(120)
    print(json.dumps(run.summary()), sorted({a[1:] for a in answers}))
    assert run.command_rc == 0, explain(run)
    stopped = run.marker("stopped")  # the placeholder has the name, the old model stops
    assert stopped is not None, explain(run)
    # No connection error reaches a client: every failure is a JSON error. nginx passes
    # LiteLLM's answers through (proxy_intercept_errors off): the placeholder's 503 as
    # LiteLLM's 503, a stopped container as LiteLLM's 500; nginx's own 502/503 only when
    # LiteLLM itself is unreachable, its 503 with Retry-After (docs/UPDATES.md).
    assert all(not o.error for o in run.outcomes), explain(run)
    assert {o.status for o in run.failures} <= {200, 500, 502, 503}, explain(run)  # 200: cut
    assert all(a[1] in (200, 500, 502, 503) and (a[1] == 200) != (a[3] != "")
               for a in answers), answers
    assert all(a[2] == "5" for a in answers if a[3] == "upstream_unavailable"), answers
    assert len(run.failures) <= 30, explain(run)  # the restart window only
    after = [o for o in run.outcomes if o.sent > run.command_returned]
    assert after and all(o.ok for o in after), explain(run)  # the new container answers
    assert stack.status()["healthy"] is True
