"""`verify` and `doctor` on the real engine: passing on a live stack, failing with the check
and the reason when a key, the certificate or the rate limit is broken, and doctor's view
of this host (which may have no GPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import requests

from llmstack import names, secrets, tls
from tests.helpers import Stack, cli, make_stack, name_image, wait_for

pytestmark = pytest.mark.integration


def verify(stack_root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = cli("verify", "--json", *args, cwd=stack_root, timeout=300)
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in report["checks"]}


def limit_lifted(stack: Stack) -> None:
    """verify's burst leaves this client limited for ~burst/rate s: wait it out so that
    later tests sharing the stack are not answered 429."""
    health = stack.base_url.replace("/v1", "/health")
    wait_for(lambda: requests.get(health, timeout=5).status_code == 200, timeout=30,
             what="the rate limit to lift")


def copy_project(stack: Stack, dest: Path) -> Path:
    """The files verify reads (stack.yaml, .env, certs/), nothing else: a client's view."""
    dest.mkdir()
    shutil.copy2(stack.root / "stack.yaml", dest / "stack.yaml")
    shutil.copy2(stack.root / ".env", dest / ".env")
    shutil.copytree(stack.root / "certs", dest / "certs")
    return dest


def test_verify_passes_on_the_demo_stack(demo_stack: Stack) -> None:
    code, report = verify(demo_stack.root)
    by = checks(report)
    assert code == 0, report
    assert report["ok"] is True and report["exit_code"] == 0
    assert [c["check"] for c in report["checks"]] == [
        "tls", "health", "models", "chat_stream", "embeddings", "auth", "rate_limit"]
    assert {c["status"] for c in report["checks"]} == {"ok"}
    assert report["endpoint"].startswith(f"https://127.0.0.1:{demo_stack.https_port}")
    assert by["tls"]["data"]["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert {"deepseek-coder", "qwen-coder", "mistral", "smollm2-embed"} <= set(
        by["models"]["data"]["models"])
    stream = by["chat_stream"]["data"]
    assert 0 < stream["ttft_ms"] <= stream["total_ms"] and stream["chunks"] >= 1
    assert by["embeddings"]["data"]["dimension"] == 576  # SmolLM2-135M's hidden size
    assert by["auth"]["data"] == {"wrong key": 401, "no key": 401}
    limited = by["rate_limit"]["data"]
    # The burst (20) passes first, less any slot verify's own requests of the last ~100 ms
    # still hold in nginx's leaky bucket (10 r/s); then 429s.
    assert limited["limited"] >= 1 and limited["passed"] >= 18
    assert report["metrics"]["embeddings.dimension"] == 576
    limit_lifted(demo_stack)


def test_verify_fails_naming_the_key_when_env_has_another_key(demo_stack: Stack,
                                                              tmp_path: Path) -> None:
    client_view = copy_project(demo_stack, tmp_path / "client")
    secrets.write_keys(client_view / ".env", secrets.generate())  # not what the edge accepts
    code, report = verify(client_view)
    by = checks(report)
    assert code == 2 and report["ok"] is False
    assert by["models"]["status"] == "fail"
    assert by["models"]["detail"].startswith("GET /v1/models: LITELLM_MASTER_KEY from .env was "
                                             "refused (401)")
    assert "llmstack up" in by["models"]["fix"]
    assert by["health"]["status"] == "ok" and by["auth"]["status"] == "ok"
    limit_lifted(demo_stack)


def test_verify_fails_on_a_certificate_from_another_ca(demo_stack: Stack,
                                                       tmp_path: Path) -> None:
    client_view = copy_project(demo_stack, tmp_path / "client")
    shutil.rmtree(client_view / "certs")
    tls.generate(client_view / "certs", "localhost")  # a CA the edge's certificate is not from
    code, report = verify(client_view)
    by = checks(report)
    assert code == 2
    assert by["tls"]["status"] == "fail"
    assert "certificate not trusted for localhost" in by["tls"]["detail"]
    limit_lifted(demo_stack)


def test_verify_fails_naming_the_rate_limit_when_the_edge_does_not_enforce_it(
        fresh_stack: Stack) -> None:
    data = fresh_stack.spec()
    data["rate_limit"] = {"requests_per_second": 100000, "burst": 100000, "max_concurrent": 100}
    fresh_stack.write_spec(data)
    fresh_stack.cli("up", check=True)
    # The deployed edge lets everything through; stack.yaml promises 10 r/s, burst 20.
    data["rate_limit"] = {"requests_per_second": 10, "burst": 20, "max_concurrent": 100}
    fresh_stack.write_spec(data)
    code, report = verify(fresh_stack.root)
    by = checks(report)
    assert code == 2
    assert [c["check"] for c in report["checks"] if c["status"] == "fail"] == ["rate_limit"]
    assert by["rate_limit"]["detail"].startswith("no 429 after 40 requests")
    assert "10 r/s with burst 20" in by["rate_limit"]["detail"]
    human = fresh_stack.cli("verify")
    assert human.returncode == 2
    assert "verify FAILED: rate_limit" in human.stdout
    assert "fix: the edge does not enforce rate_limit" in human.stdout


def test_doctor_json_on_this_host(demo_stack: Stack) -> None:
    proc = demo_stack.cli("doctor", "--json")
    report = json.loads(proc.stdout)
    assert set(report) == {"ok", "exit_code", "target", "engine", "gpus", "gpu_budget",
                           "findings"}
    assert proc.returncode == report["exit_code"] == 0, report
    found: dict[str, list[dict[str, str]]] = {}
    for f in report["findings"]:
        assert set(f) == {"check", "status", "detail", "fix", "scope"}
        found.setdefault(f["check"], []).append(f)
    assert found["engine"][0]["status"] == "ok"
    assert report["engine"]["version"] and report["engine"]["root_dir"]
    assert abs(report["engine"]["clock_skew_s"]) < 5  # the same machine
    (runtime,) = found["gpu-runtime"]
    assert runtime["status"] in ("ok", "warn")  # no model needs a GPU: never a blocker
    if runtime["status"] == "warn":
        assert "no GPU runtime" in runtime["detail"] and "no model in stack.yaml needs" in \
            runtime["detail"]
        assert runtime["fix"]
    assert found["disk"][0]["status"] in ("ok", "warn")
    assert [f["status"] for f in found["ports"]] == ["ok"] * 3
    assert all("published by this stack's nginx" in f["detail"] for f in found["ports"])
    assert found["model:deepseek-coder"][0]["status"] == "ok"
    assert found["images"][0]["status"] == "ok"


def test_doctor_plan_and_up_refuse_gpus_on_a_host_without_them(tmp_path: Path,
                                                               docker_client: Any) -> None:
    stack = make_stack(tmp_path / "proj", prefix="t-gpu", embed=False)
    data = stack.spec()
    data["models"][0]["gpus"] = [0]
    name_image(data, "llamacpp-cuda", "llmstack/llamacpp:forky")  # present; the GPU is not
    stack.write_spec(data)
    proc = stack.cli("doctor", "--json")
    report = json.loads(proc.stdout)
    runtime = next(f for f in report["findings"] if f["check"] == "gpu-runtime")
    if runtime["status"] == "ok":
        pytest.skip("this host has GPUs; missing GPUs are covered in tests/unit/test_gpu.py")
    assert proc.returncode == 2
    assert runtime["status"] == "fail" and runtime["scope"] == "host"
    assert "stack.yaml gives GPUs to deepseek-coder" in runtime["detail"]
    plan = stack.cli("plan")
    assert plan.returncode == 2
    assert "GPU budget" in plan.stdout and "no GPU runtime" in plan.stdout
    up = stack.cli("up")
    assert up.returncode == 2
    assert "preflight failed" in up.stderr and "no GPU runtime" in up.stderr
    assert docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={stack.project}"}) == []
