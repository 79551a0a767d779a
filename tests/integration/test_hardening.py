"""Security by default on the real engine: container settings, exposure, secrets, TLS."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import Stack, wait_for

pytestmark = pytest.mark.integration


def _containers(client, stack: Stack) -> dict[str, object]:  # type: ignore[no-untyped-def]
    found = client.containers.list(all=True, filters={"label": f"llmstack.project={stack.project}"})
    return {c.labels["llmstack.service"]: c for c in found}


def test_containers_are_hardened(demo_stack: Stack, docker_client) -> None:  # type: ignore[no-untyped-def]
    containers = _containers(docker_client, demo_stack)
    assert set(containers) >= {"nginx", "litellm", "health", "model-deepseek-coder"}
    for service, c in containers.items():
        host = c.attrs["HostConfig"]  # type: ignore[attr-defined]
        assert host["Privileged"] is False, service
        assert host["CapDrop"] == ["ALL"], service
        assert not host.get("CapAdd"), service  # our images need no capability at all
        assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"]), service
        assert host["ReadonlyRootfs"] is True, service
        assert host["PidsLimit"] and host["PidsLimit"] > 0, service
        assert c.attrs["Config"]["User"] == "10001:10001", service  # type: ignore[attr-defined]
        assert host["RestartPolicy"]["Name"] == "unless-stopped", service
        assert host["Memory"] > 0, service  # every container, models included
        ports = host.get("PortBindings") or {}
        if service == "nginx":
            assert ports and all(b["HostIp"] == "127.0.0.1" for bs in ports.values() for b in bs)
        else:
            assert not ports, f"{service} must be reachable only on the project network"


def test_server_version_is_not_disclosed(demo_stack: Stack) -> None:
    resp = requests.get(demo_stack.base_url.replace("/v1", "/health"), timeout=10)
    assert resp.headers.get("server") == "nginx"  # server_tokens off: no version


def test_tls_is_mozilla_intermediate(demo_stack: Stack) -> None:
    host, port = "localhost", demo_stack.https_port
    for version, ok in [(ssl.TLSVersion.TLSv1_2, True), (ssl.TLSVersion.TLSv1_3, True),
                        (ssl.TLSVersion.TLSv1_1, False)]:
        ctx = ssl.create_default_context(cafile=str(demo_stack.ca))
        if version < ssl.TLSVersion.TLSv1_2:
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = version if version >= ssl.TLSVersion.TLSv1_2 else \
            ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = version
        try:
            import socket
            with socket.create_connection((host, port), timeout=5) as sock, \
                    ctx.wrap_socket(sock, server_hostname=host) as tls:
                negotiated = tls.version()
                cipher = tls.cipher()
            assert ok, f"{version} must be refused"
            if version == ssl.TLSVersion.TLSv1_2:
                assert "GCM" in cipher[0] or "CHACHA20" in cipher[0], cipher
                assert cipher[0].startswith("ECDHE"), cipher
            assert negotiated
        except (ssl.SSLError, ConnectionResetError) as exc:
            assert not ok, f"{version} should work: {exc}"


def test_master_key_never_appears_in_output_logs_or_config(demo_stack: Stack) -> None:
    key = demo_stack.key
    outputs = [demo_stack.cli(*args).stdout + demo_stack.cli(*args).stderr for args in
               (["up"], ["status"], ["status", "--json"], ["plan"], ["render", "--stdout"])]
    requests.get(demo_stack.base_url + "/models", timeout=10,
                 headers={"Authorization": f"Bearer {key}"})
    for service in ("nginx", "litellm", "health", "model-deepseek-coder"):
        outputs.append(demo_stack.cli("logs", service, "--tail", "500").stdout)
    for text in outputs:
        assert key not in text
    for path in (demo_stack.root / "config").iterdir():
        assert key not in path.read_text()


def test_world_readable_env_is_refused_with_the_fix(demo_stack: Stack) -> None:
    env = demo_stack.root / ".env"
    os.chmod(env, 0o644)
    try:
        proc = demo_stack.cli("up")
        assert proc.returncode == 1
        assert "chmod 600" in proc.stderr and str(env) in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        os.chmod(env, 0o600)


def test_corrupt_env_and_missing_certificate_are_clear_errors(tmp_path: Path) -> None:
    from tests.helpers import cli

    cli("init", str(tmp_path), check=True)
    env = tmp_path / ".env"
    original = env.read_text()
    env.write_text(original + "this line is garbage\n")
    proc = cli("validate", cwd=tmp_path)
    assert proc.returncode == 0  # validate reads stack.yaml only
    proc = cli("render", cwd=tmp_path)
    assert proc.returncode == 0
    proc = cli("plan", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert ".env" in proc.stderr and "not a KEY=VALUE line" in proc.stderr
    assert "garbage" not in proc.stderr  # values are never echoed
    env.write_text(original)
    (tmp_path / "certs" / "tls.crt").unlink()
    proc = cli("plan", cwd=tmp_path)
    assert proc.returncode == 1
    assert "tls.crt does not exist" in proc.stderr and "llmstack init" in proc.stderr


def test_interrupted_up_leaves_a_state_the_next_up_repairs(fresh_stack: Stack) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "llmstack", "up"], cwd=fresh_stack.root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "CI": "true"})
    seen = ""
    assert proc.stdout is not None
    for line in proc.stdout:  # interrupt once the models are starting: half-way
        seen += line
        if "model-" in line and "starting" in line:
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, seen + rest
    assert "Traceback" not in rest
    assert "interrupted" in rest
    started = time.monotonic()
    fresh_stack.cli("up", check=True)
    assert time.monotonic() - started < 300
    status = fresh_stack.status()
    assert status["healthy"], status
    wait_for(lambda: requests.get(fresh_stack.base_url.replace("/v1", "/health"),
                                  timeout=5).status_code == 200, timeout=30, what="/health 200")


def test_nearly_full_disk_is_refused_before_any_container_starts(fresh_stack: Stack,
                                                                 docker_client) -> None:  # type: ignore[no-untyped-def]
    # More free space than any disk has: the engine's real df answer must fail the check.
    proc = fresh_stack.cli("up", env={"LLMSTACK_MIN_FREE_DISK_GB": "1000000"})
    assert proc.returncode == 1, proc.stderr
    assert "disk nearly full" in proc.stderr and "GiB free" in proc.stderr
    assert "docker image prune" in proc.stderr
    assert not docker_client.containers.list(
        all=True, filters={"label": f"llmstack.project={fresh_stack.project}"})


def test_missing_model_file_is_reported_before_any_container_starts(fresh_stack: Stack,
                                                                    docker_client) -> None:  # type: ignore[no-untyped-def]
    data = fresh_stack.spec()
    data["models"][0]["source"] = "volume:llmstack-models/no-such-model.gguf"
    fresh_stack.write_spec(data)
    proc = fresh_stack.cli("up")
    assert proc.returncode == 1
    assert "no-such-model.gguf not found in volume 'llmstack-models'" in proc.stderr
    assert not docker_client.containers.list(
        all=True, filters={"label": f"llmstack.project={fresh_stack.project}"})
