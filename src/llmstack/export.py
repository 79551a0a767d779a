"""The stack's desired state as a docker-compose file, for hosts deployed with compose (and
the benchmark's baseline).

`compose()` is pure: the same ServiceSpecs `up` would create -> file contents in memory.
compose cannot fill volumes through the API, so rendered configs are written next to the
compose file and bind-mounted read-only; secrets stay out of the YAML: environment secrets go
to an env_file, nginx's key map and TLS pair to files of mode 0600 owned by nginx's user.
`write()` puts the files on disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import gpu, names, secrets
from .errors import UserError
from .fsutil import write_atomic
from .plan import ServiceSpec
from .spec import url_host

COMPOSE_FILE = "docker-compose.yml"
COMPOSE_VERSION = "3.8"  # docker-compose 1.27+ reads it (and device reservations) as the spec
GITIGNORE = ("# written by llmstack export: secrets stay out of git\n"
             "*.env\n.env\nconfig/*/secrets/\n")


@dataclass(frozen=True)
class ExportFile:
    data: bytes
    mode: int = 0o644
    owner: tuple[int, int] | None = None  # uid:gid a container user needs it owned by


@dataclass(frozen=True)
class ComposeExport:
    project: str
    files: dict[str, ExportFile]  # path relative to the output folder -> file

    @property
    def compose_yaml(self) -> str:
        return self.files[COMPOSE_FILE].data.decode()


def _esc(value: str) -> str:
    """compose interpolates `$VAR` in every string: `$$` keeps a literal dollar sign."""
    return value.replace("$", "$$")


def _port(container_port: str, bind: str, port: int) -> str:
    return f"{url_host(bind)}:{port}:{container_port}"


def _service(spec_project: str, svc: ServiceSpec, env_file: str | None) -> dict[str, Any]:
    """One compose service with every setting `Project.start` gives the container: a
    translation of `svc`, deciding nothing (tests/unit/test_settings_agree.py compares them)."""
    out: dict[str, Any] = {
        "image": svc.image,
        "container_name": names.container(spec_project, svc.service),
    }
    if svc.entrypoint is not None:
        out["entrypoint"] = [_esc(a) for a in svc.entrypoint]
    out["command"] = [_esc(a) for a in svc.command]
    plain_env = {k: _esc(v) for k, v in sorted(svc.env.items()) if k not in svc.secret_env}
    if plain_env:
        out["environment"] = plain_env
    if env_file:
        out["env_file"] = [env_file]
    out["labels"] = {
        names.LABEL_PROJECT: spec_project, names.LABEL_SERVICE: svc.service,
        names.LABEL_ROLE: svc.role, names.LABEL_HASH: svc.config_hash(),
        "llmstack.exported": "compose",
    }
    if svc.ports:
        out["ports"] = [_port(cport, bind, port) for cport, (bind, port) in svc.ports.items()]
    volumes: list[dict[str, Any]] = []
    if svc.config:
        volumes.append({"type": "bind", "source": f"./config/{svc.service}",
                        "target": svc.config_mount, "read_only": True})
    for m in svc.mounts:
        volumes.append({"type": m.kind, "source": m.source, "target": m.target,
                        "read_only": m.read_only})
    if volumes:
        out["volumes"] = volumes
    if svc.user:
        out["user"] = svc.user
    out["read_only"] = svc.read_only
    out["tmpfs"] = [f"{path}:{options}" for path, options in svc.tmpfs.items()]
    out["cap_drop"] = list(svc.cap_drop)
    if svc.cap_add:
        out["cap_add"] = list(svc.cap_add)
    if svc.no_new_privileges:
        out["security_opt"] = ["no-new-privileges:true"]
    out["init"] = svc.init
    out["restart"] = svc.restart
    res = svc.resources
    out["pids_limit"] = svc.pids_limit
    if res.memory:
        out["mem_limit"] = res.memory
    if res.cpus:
        out["cpus"] = res.cpus
    if svc.shm_size:
        out["shm_size"] = svc.shm_size
    if svc.depends_on:
        out["depends_on"] = list(svc.depends_on)
    if svc.gpus:
        # Exactly the listed GPUs (device_ids, never a count), as `up` requests them; compose
        # writes the engine's capability sets ([["gpu"]]) as one flat list.
        request = gpu.device_request(svc.gpus)
        out["deploy"] = {"resources": {"reservations": {"devices": [
            {"driver": request["driver"],
             "capabilities": [c for caps in request["capabilities"] for c in caps],
             "device_ids": request["device_ids"]}]}}}
    return out


def compose(project: str, services: list[ServiceSpec],
            secret_files: dict[str, tuple[bytes, int]], source: str = "stack.yaml"
            ) -> ComposeExport:
    """The compose file and the files it mounts, for `services` (plan.desired's output).

    `secret_files` are nginx's extra config files (key map, TLS pair) as `up` ships them.
    """
    files: dict[str, ExportFile] = {}
    body: dict[str, Any] = {}
    external: dict[str, Any] = {}
    for svc in services:
        env_file = None
        secret_env = {k: v for k, v in sorted(svc.env.items()) if k in svc.secret_env}
        if secret_env:
            env_file = f"{svc.service}.env"
            text = "".join(f"{k}={v}\n" for k, v in secret_env.items())
            files[env_file] = ExportFile(text.encode(), 0o600)  # read by compose, not mounted
        body[svc.service] = _service(project, svc, env_file)
        owner = svc.owner
        for name, data in sorted(svc.config.items()):
            files[f"config/{svc.service}/{name}"] = ExportFile(data, 0o644)
        if svc.role == names.NGINX:
            for name, (data, mode) in sorted(secret_files.items()):
                files[f"config/{svc.service}/{name}"] = ExportFile(data, mode, owner)
        for m in svc.mounts:
            if m.kind == "volume":
                # Model volumes are the user's; the stack's own (nginx's spool) compose makes.
                external[m.source] = {"labels": {names.LABEL_PROJECT: project}} \
                    if m.managed else {"external": True}
    doc: dict[str, Any] = {"version": COMPOSE_VERSION, "services": body,
                           "networks": {"default": {"name": names.network(project)}}}
    if external:
        doc["volumes"] = dict(sorted(external.items()))
    header = (f"# Generated by `llmstack export compose` from {source} -- do not edit: change\n"
              f"# {source} and export again. Run: docker-compose up -d (in this folder).\n"
              "# No secret is in this file: LiteLLM's key is in litellm.env (0600), nginx's keys\n"
              "# and TLS key in config/nginx/secrets/ (0600, owned by nginx's user).\n")
    text = header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=100)
    files[COMPOSE_FILE] = ExportFile(text.encode())
    # compose's own .env names the compose project (no secrets: they are in *.env files).
    files[".env"] = ExportFile(f"COMPOSE_PROJECT_NAME={project}\n".encode())
    files[".gitignore"] = ExportFile(GITIGNORE.encode())
    return ComposeExport(project, dict(sorted(files.items())))


def from_project(loaded: Any) -> ComposeExport:
    """The export of a loaded project folder (reads its .env and certificates)."""
    from . import plan

    services = plan.desired(loaded.spec, loaded.rendered, loaded.keys().internal,
                            loaded.pins())
    return compose(loaded.spec.project, services, loaded.nginx_secret_files(),
                   loaded.paths.stack.name)


# An llmstack project's .env: the API keys that would be lost if compose's .env replaced it.
PROJECT_ENV_RE = re.compile(
    rf"^\s*(?:export\s+)?(?:{secrets.MASTER}|{secrets.INTERNAL})\s*=", re.M)


def check_target(out: Path) -> None:
    """Refuse a folder holding an llmstack project: writing there would replace its .env (and
    with it the API keys) by compose's. A folder an earlier export wrote has neither file, so
    it is re-written in place."""
    hint = ("choose an empty folder or one written by `llmstack export compose` "
            "(e.g. --out compose)")
    if (out / "stack.yaml").exists():
        raise UserError(f"{out} holds a stack.yaml: it is an llmstack project folder, and the "
                        "export would replace its .env", hint)
    env = out / ".env"
    if not env.exists():
        return
    try:
        text = env.read_text(encoding="utf-8", errors="replace")
    except OSError:
        raise UserError(f"{out}/.env cannot be read, so it may hold llmstack's keys: the "
                        "export would replace it", hint) from None
    if PROJECT_ENV_RE.search(text):
        raise UserError(f"{out}/.env holds llmstack API keys (another project's .env): the "
                        "export would replace it", hint)


def write(export: ComposeExport, out: Path) -> list[str]:
    """Write the export under `out`; returns paths whose owner could not be set (non-root)."""
    check_target(out)
    not_owned: list[str] = []
    can_chown = hasattr(os, "geteuid") and os.geteuid() == 0
    for rel, f in export.files.items():
        path = out / rel
        write_atomic(path, f.data, mode=f.mode)
        if f.owner is None:
            continue
        if not can_chown:
            not_owned.append(rel)
            continue
        # The container user reads its secrets; their folder is private to it as well.
        os.chown(path, *f.owner)
        os.chmod(path.parent, 0o700)
        os.chown(path.parent, *f.owner)
    return not_owned
