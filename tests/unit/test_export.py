"""`llmstack export compose`: the compose file holds what `up` would create, and no secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from llmstack import names, plan, render
from llmstack.export import COMPOSE_FILE, compose, write
from llmstack.spec import parse
from tests.helpers import cli

INTERNAL = "sk-internal-" + "i" * 40
MASTER = "sk-master-" + "m" * 40
TLS_KEY = b"-----BEGIN PRIVATE KEY-----\nsecretsecret\n-----END PRIVATE KEY-----\n"

STACK = """
version: 1
project: demo
listeners:
  local: {port: 4000, bind: 127.0.0.1}
  lan: {port: 8080, bind: 127.0.0.1}
  https: {port: 8443, bind: 127.0.0.1}
models:
  - name: chat
    aliases: [mistral]
    backend: llamacpp
    source: volume:llmstack-models/SmolLM2-135M-Instruct.Q4_1.gguf
    gpus: cpu
    context: 2048
    args: ["--threads", "2", "--prio-$HOME"]
    resources: {memory: 1g, cpus: 1.5}
  - name: big
    backend: llamacpp
    source: host:/srv/models/big.gguf
    gpus: [0, 1]
    image: ghcr.io/ggml-org/llama.cpp:server-cuda
"""


def _export():  # type: ignore[no-untyped-def]
    spec = parse(STACK)
    services = plan.desired(spec, render.render(spec), INTERNAL)
    secret_files = {"secrets/keys.conf": (f"map {MASTER} {INTERNAL};\n".encode(), 0o600),
                    "secrets/tls.crt": (b"CERT\n", 0o600), "secrets/tls.key": (TLS_KEY, 0o600)}
    return services, compose(spec.project, services, secret_files)


def _doc() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(_export()[1].compose_yaml)


def test_every_service_of_up_is_in_the_compose_file_with_its_container_name() -> None:
    services, _ = _export()
    doc = _doc()
    assert list(doc["services"]) == [s.service for s in services]
    assert {"health", "litellm", "edge-metrics", "nginx", "model-chat", "model-big"} == \
        set(doc["services"])
    for svc in services:
        out = doc["services"][svc.service]
        assert out["image"] == svc.image
        assert out["container_name"] == names.container("demo", svc.service)
        assert out["restart"] == "unless-stopped"
        assert out["cap_drop"] == ["ALL"] and out["security_opt"] == ["no-new-privileges:true"]
    assert doc["networks"]["default"]["name"] == names.network("demo")
    assert doc["services"]["litellm"]["depends_on"] == ["model-chat", "model-big"]
    assert doc["services"]["nginx"]["depends_on"] == ["litellm", "health", "edge-metrics"]


def test_ports_are_published_on_the_listeners_bind_address_only() -> None:
    nginx = _doc()["services"]["nginx"]
    assert nginx["ports"] == ["127.0.0.1:4000:8080/tcp", "127.0.0.1:8080:8081/tcp",
                              "127.0.0.1:8443:8443/tcp"]
    others = [n for n, s in _doc()["services"].items() if n != "nginx" and "ports" in s]
    assert others == []


def test_labels_carry_the_same_project_service_role_and_config_hash_as_up() -> None:
    services, _ = _export()
    doc = _doc()
    for svc in services:
        labels = doc["services"][svc.service]["labels"]
        assert labels[names.LABEL_PROJECT] == "demo"
        assert labels[names.LABEL_SERVICE] == svc.service
        assert labels[names.LABEL_ROLE] == svc.role
        assert labels[names.LABEL_HASH] == svc.config_hash()


def test_configs_are_bind_mounted_read_only_and_models_keep_their_volume_or_path() -> None:
    services, exported = _export()
    doc = _doc()
    by_name = {s.service: s for s in services}
    for name in ("nginx", "litellm", "health"):
        mounts = doc["services"][name]["volumes"]
        assert {"type": "bind", "source": f"./config/{name}",
                "target": f"/etc/llmstack/{name}", "read_only": True} in mounts
        for file, data in by_name[name].config.items():
            assert exported.files[f"config/{name}/{file}"].data == data
    assert doc["services"]["model-chat"]["volumes"] == [
        {"type": "volume", "source": "llmstack-models", "target": "/models", "read_only": True}]
    assert doc["services"]["model-big"]["volumes"] == [
        {"type": "bind", "source": "/srv/models", "target": "/models", "read_only": True}]
    # Model volumes are the user's (external); nginx's body spool and the edge log socket's
    # volume (nginx and edge-metrics share it) are the stack's own.
    project = doc["networks"]["default"]["name"].removesuffix("-net")
    spool, edge_log = f"{project}-nginx-spool", f"{project}-edge-log"
    own = {"labels": {"llmstack.project": project}}
    assert doc["volumes"] == {"llmstack-models": {"external": True}, spool: own,
                              edge_log: own}
    for name in ("nginx", "edge-metrics"):
        assert {"type": "volume", "source": edge_log, "target": "/run/llmstack-edge",
                "read_only": False} in doc["services"][name]["volumes"]
    assert {"type": "volume", "source": spool, "target": "/var/lib/nginx",
            "read_only": False} in doc["services"]["nginx"]["volumes"]


def test_gpus_are_device_reservations_with_exactly_the_listed_ids() -> None:
    doc = _doc()
    big = doc["services"]["model-big"]
    assert big["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["0", "1"]}]
    assert "deploy" not in doc["services"]["model-chat"]
    chat = doc["services"]["model-chat"]
    assert chat["mem_limit"] == "1g" and chat["cpus"] == 1.5


def test_images_that_run_as_any_uid_run_read_only_as_llmstacks_and_root_images_get_caps(
        ) -> None:
    doc = _doc()
    # llama.cpp runs as any uid: the local build and upstream's CUDA image alike.
    for name in ("model-chat", "model-big", "nginx", "litellm"):
        svc = doc["services"][name]
        assert svc["user"] == plan.OWN_UID and svc["read_only"] is True, name
        assert "cap_add" not in svc, name
    spec = parse(STACK.replace("backend: llamacpp\n    source: host:/srv/models/big.gguf",
                               "backend: vllm\n    source: hf:org/big"))
    services = plan.desired(spec, render.render(spec), INTERNAL)
    vllm = yaml.safe_load(compose(spec.project, services, {}).compose_yaml)["services"]
    big = vllm["model-big"]
    assert "user" not in big and big["read_only"] is False and "CHOWN" in big["cap_add"]


def test_no_secret_value_is_in_the_compose_file() -> None:
    _, exported = _export()
    text = exported.compose_yaml
    assert INTERNAL not in text and MASTER not in text and "secretsecret" not in text
    litellm = yaml.safe_load(text)["services"]["litellm"]
    assert "LITELLM_MASTER_KEY" not in litellm["environment"]
    assert litellm["env_file"] == ["litellm.env"]
    env = exported.files["litellm.env"]
    assert env.data.decode() == f"LITELLM_MASTER_KEY={INTERNAL}\n" and env.mode == 0o600
    keys = exported.files["config/nginx/secrets/keys.conf"]
    assert keys.mode == 0o600 and keys.owner == (10001, 10001)
    assert exported.files["config/nginx/secrets/tls.key"].data == TLS_KEY


def test_dollar_signs_survive_compose_interpolation() -> None:
    command = _doc()["services"]["model-chat"]["command"]
    assert "--prio-$$HOME" in command


def test_export_is_deterministic() -> None:
    assert _export()[1] == _export()[1]


def test_write_puts_secrets_in_private_files(tmp_path: Path) -> None:
    _, exported = _export()
    not_owned = write(exported, tmp_path / "out")
    keys = tmp_path / "out" / "config" / "nginx" / "secrets" / "keys.conf"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out" / "litellm.env").stat().st_mode) == 0o600
    if os.geteuid() == 0:
        assert not_owned == [] and keys.stat().st_uid == 10001
    else:
        assert "config/nginx/secrets/keys.conf" in not_owned
    assert (tmp_path / "out" / ".env").read_text() == "COMPOSE_PROJECT_NAME=demo\n"


def test_cli_export_writes_a_compose_file_and_refuses_the_project_folder(tmp_path: Path
                                                                         ) -> None:
    cli("init", str(tmp_path), check=True)
    proc = cli("export", "compose", "-C", str(tmp_path), check=True)
    compose_file = tmp_path / "compose" / COMPOSE_FILE
    assert str(compose_file) in proc.stdout
    doc = yaml.safe_load(compose_file.read_text())
    assert {"nginx", "litellm", "health"} <= set(doc["services"])
    master = next(line.split("=", 1)[1] for line in (tmp_path / ".env").read_text().splitlines()
                  if line.startswith("LITELLM_MASTER_KEY="))
    assert master not in compose_file.read_text()
    env_before = (tmp_path / ".env").read_bytes()
    refused = cli("export", "compose", "-C", str(tmp_path), "--out", str(tmp_path))
    assert refused.returncode == 1 and "--out" in refused.stderr
    assert (tmp_path / ".env").read_bytes() == env_before


def test_the_optional_prometheus_gets_its_key_from_a_0600_env_file_and_loopback_only() -> None:
    stack = parse(STACK + "observability: {prometheus: true, prometheus_port: 19090}\n")
    services = plan.desired(stack, render.render(stack), INTERNAL)
    exported = compose(stack.project, services, {})
    doc = yaml.safe_load(exported.compose_yaml)
    prom = doc["services"]["prometheus"]
    assert prom["ports"] == ["127.0.0.1:19090:9090/tcp"]
    assert prom["env_file"] == ["prometheus.env"] and "environment" not in prom
    env = exported.files["prometheus.env"]
    assert env.mode == 0o600 and INTERNAL in env.data.decode()
    assert INTERNAL not in exported.compose_yaml
    assert "$$LLMSTACK_METRICS_KEY" in prom["entrypoint"][2]  # compose leaves it to sh
