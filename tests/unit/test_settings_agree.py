"""`up` and `export compose` give every container the same settings, field by field.

Both only translate the plan's ServiceSpec: `Project.start` into docker's `containers.create`
arguments (recorded by a stand-in client), `export.compose` into a compose service. Each side
is normalised into one shape here and compared per service, for the golden stacks (demo: own
images; gpu: vLLM root images with GPUs; custom: upstream nginx and ollama, an IPv6 listener).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml

from llmstack import export, names, plan, render, spec
from tests.helpers import REPO
from tests.unit.recording_engine import started

INTERNAL = "sk-internal-" + "i" * 40
CASES = ["demo", "gpu", "custom"]

# Every ServiceSpec field is a container setting compared below, or listed here with why not.
NOT_CONTAINER_SETTINGS = {
    "service": "names the container (compared as its name)",
    "role": "a label (compared with the labels)",
    "config": "file contents: a volume for `up`, files next to the compose file",
    "probe": "polled by `up`'s readiness wait, not a container setting",
    "ready_check": "the health service's check `up` polls instead of probe (Ollama)",
    "loading": "how long `up` follows a model's load (a deadline, not a container setting)",
    "depends_on": "start order: `up` orders, compose gets depends_on",
    "start_after": "start order of `up` (not hashed); compose orders by depends_on",
    "update": "how `up` replaces the container (not hashed); compose recreates in place",
    "reloads_config": "nginx: config contents reload (not hashed); compose mounts the files",
    "reload_after": "which recreated services make `up` reload nginx (not hashed); compose "
                    "starts nginx after LiteLLM, which starts after every model",
    "secret_env": "which env values are secret (compared: env_file vs environment)",
    "resources": "memory and cpus (compared), pids via pids_limit",
}
COMPARED = {"image", "command", "entrypoint", "env", "mounts", "ports", "gpus", "shm_size",
            "tmpfs", "user", "read_only", "cap_drop", "cap_add", "no_new_privileges",
            "pids_limit", "init", "restart"}


def _services(case: str) -> tuple[spec.StackSpec, list[plan.ServiceSpec]]:
    stack = spec.load_file(REPO / "tests" / "golden" / case / "stack.yaml")
    return stack, plan.desired(stack, render.render(stack), INTERNAL)


def _security(options: list[str]) -> set[tuple[str, str]]:
    """`no-new-privileges=true` (engine API) and `no-new-privileges:true` (compose) alike."""
    out = set()
    for option in options:
        key, _, value = option.replace(":", "=", 1).partition("=")
        out.add((key, value or "true"))
    return out


def _from_engine(project: str, svc: plan.ServiceSpec, kw: dict[str, Any]) -> dict[str, Any]:
    devices = kw.get("device_requests") or []
    mounts = set()
    for m in kw["mounts"]:
        kind = "config" if m["Target"] == svc.config_mount else m["Type"]
        source = "config" if kind == "config" else m["Source"]
        mounts.add((source, m["Target"], kind, bool(m["ReadOnly"])))
    return {
        "image": kw["image"], "name": kw["name"], "command": kw["command"],
        "entrypoint": kw.get("entrypoint"), "env": kw["environment"],
        "labels": kw["labels"], "network": kw["network"],
        "user": kw.get("user"), "read_only": kw["read_only"], "tmpfs": kw["tmpfs"],
        "cap_drop": sorted(kw["cap_drop"]), "cap_add": sorted(kw.get("cap_add") or []),
        "security_opt": _security(kw.get("security_opt") or []),
        "pids": kw["pids_limit"], "mem_limit": kw.get("mem_limit"),
        "cpus": kw["nano_cpus"] / 1e9 if kw.get("nano_cpus") else None,
        "shm_size": kw.get("shm_size"),
        "ports": {(bind, port, cport) for cport, (bind, port) in kw["ports"].items()},
        "mounts": mounts,
        "gpus": [(d["DeviceIDs"], d["Capabilities"], d["Count"] or None) for d in devices],
        "init": kw["init"], "restart": kw["restart_policy"]["Name"],
    }


def _unesc(value: str) -> str:
    return value.replace("$$", "$")


def _port(text: str) -> tuple[str, int, str]:
    host, port, cport = text.rsplit(":", 2)
    return host.strip("[]"), int(port), cport


def _from_compose(project: str, svc: plan.ServiceSpec, out: dict[str, Any],
                  files: dict[str, export.ExportFile]) -> dict[str, Any]:
    env = {k: _unesc(v) for k, v in (out.get("environment") or {}).items()}
    for env_file in out.get("env_file") or []:
        for line in files[env_file].data.decode().splitlines():
            key, _, value = line.partition("=")
            env[key] = value
    labels = {k: v for k, v in out["labels"].items() if k != "llmstack.exported"}
    mounts = set()
    for v in out.get("volumes") or []:
        kind = "config" if v["target"] == svc.config_mount else v["type"]
        source = "config" if kind == "config" else v["source"]
        mounts.add((source, v["target"], kind, bool(v["read_only"])))
    devices = (out.get("deploy") or {}).get("resources", {}).get("reservations", {}).get(
        "devices", [])
    return {
        "image": out["image"], "name": out["container_name"],
        "command": [_unesc(a) for a in out["command"]],
        "entrypoint": [_unesc(a) for a in out["entrypoint"]] if "entrypoint" in out else None,
        "env": env, "labels": labels, "network": names.network(project),
        "user": out.get("user"), "read_only": out["read_only"],
        "tmpfs": dict(t.split(":", 1) for t in out["tmpfs"]),
        "cap_drop": sorted(out["cap_drop"]), "cap_add": sorted(out.get("cap_add") or []),
        "security_opt": _security(out.get("security_opt") or []),
        "pids": out["pids_limit"], "mem_limit": out.get("mem_limit"), "cpus": out.get("cpus"),
        "shm_size": out.get("shm_size"),
        "ports": {_port(p) for p in out.get("ports") or []},
        "mounts": mounts,
        "gpus": [(d["device_ids"], [d["capabilities"]], d.get("count")) for d in devices],
        "init": out["init"], "restart": out["restart"],
    }


def test_every_service_spec_field_is_compared_or_said_not_to_be_a_setting() -> None:
    fields = {f.name for f in dataclasses.fields(plan.ServiceSpec)}
    assert fields == COMPARED | set(NOT_CONTAINER_SETTINGS)


@pytest.mark.parametrize("case", CASES)
def test_up_and_compose_give_each_container_the_same_settings(case: str) -> None:
    stack, services = _services(case)
    engine = started(stack.project, services)
    exported = export.compose(stack.project, services, {})
    doc = yaml.safe_load(exported.compose_yaml)
    assert list(engine) == list(doc["services"]) == [s.service for s in services]
    for svc in services:
        ours = _from_engine(stack.project, svc, engine[svc.service])
        theirs = _from_compose(stack.project, svc, doc["services"][svc.service], exported.files)
        for key in ours:
            assert ours[key] == theirs[key], f"{case}/{svc.service}: {key}"
        depends_on = doc["services"][svc.service].get("depends_on", [])
        assert depends_on == list(svc.depends_on), f"{case}/{svc.service}: depends_on"


@pytest.mark.parametrize("case", CASES)
def test_both_translate_the_plans_decisions(case: str) -> None:
    """The settings come from the ServiceSpec: what both agree on is what the plan decided."""
    stack, services = _services(case)
    engine = started(stack.project, services)
    for svc in services:
        ours = _from_engine(stack.project, svc, engine[svc.service])
        assert ours["user"] == svc.user and ours["read_only"] == svc.read_only
        assert ours["cap_drop"] == sorted(svc.cap_drop) == ["ALL"]
        assert ours["cap_add"] == sorted(svc.cap_add)
        assert ours["security_opt"] == {("no-new-privileges", "true")}
        assert ours["pids"] == svc.pids_limit == (svc.resources.pids or plan.DEFAULT_PIDS)
        assert ours["tmpfs"] == svc.tmpfs and ours["init"] is svc.init is True
        assert ours["restart"] == svc.restart == "unless-stopped"
        assert [g[0] for g in ours["gpus"]] == ([svc.gpus] if svc.gpus else [])
        # Images that need root inside (vLLM, Ollama, TGI) get its few capabilities; every
        # other image, built here or upstream, runs as llmstack's uid on a read-only root.
        root = any(name in svc.image for name in ("vllm", "ollama", "text-generation"))
        assert (svc.user, svc.read_only) == ((None, False) if root else (plan.OWN_UID, True))
        assert svc.cap_add == (plan.ROOT_IMAGE_CAPS if root else ())


def test_the_comparison_sees_a_difference() -> None:
    """The normalisation is not so loose that a changed setting goes unseen."""
    stack, services = _services("gpu")
    nginx = next(s for s in services if s.role == names.NGINX)
    engine = started(stack.project, [nginx])[nginx.service]
    for change in ({"pids_limit": 8}, {"cap_add": ("NET_ADMIN",)}, {"read_only": False},
                   {"no_new_privileges": False}, {"tmpfs": {"/tmp": "rw"}}, {"init": False},
                   {"restart": "no"}, {"user": "1:1"}):
        other = dataclasses.replace(nginx, **change)
        exported = export.compose(stack.project, [other], {})
        out = yaml.safe_load(exported.compose_yaml)["services"][nginx.service]
        assert _from_engine(stack.project, nginx, engine) != _from_compose(
            stack.project, other, out, exported.files), change
