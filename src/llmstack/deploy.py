"""`up`, `plan`, `status`, `down`: the pure core's plan carried out on an engine."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import checks, names, plan, tls
from .engine.containers import Project, port_free_here
from .errors import DeployError
from .project import Loaded, write_config

# How long each kind of service may take to become ready (seconds).
DEADLINES = {"model": 600.0, names.HEALTH: 60.0, names.LITELLM: 180.0, names.NGINX: 60.0}
HINTS = {
    "model": "check the model source and server args in stack.yaml; `llmstack logs {svc}`",
    names.LITELLM: "check config/litellm.yaml; `llmstack logs litellm`",
    names.NGINX: "check config/nginx.conf and the certificate in certs/; `llmstack logs nginx`",
    names.HEALTH: "`llmstack logs health`",
}


class Reporter(Protocol):
    def event(self, service: str, state: str, detail: str = "") -> None: ...


@dataclass
class UpResult:
    actions: list[plan.Action]
    ready_seconds: dict[str, float] = field(default_factory=dict)
    changed: bool = False


def compute(loaded: Loaded, project: Project) -> tuple[list[plan.ServiceSpec], list[plan.Action],
                                                      dict[str, tuple[bytes, int]]]:
    """Desired services, the actions to reach them, and nginx's secret files."""
    keys = loaded.keys()
    wanted = plan.desired(loaded.spec, loaded.rendered, keys.internal)
    secret_files = loaded.nginx_secret_files()
    # One archive read of the secrets folder (keys and certificate) instead of one per file.
    live = project.read_tree(names.NGINX, f"{plan.CONFIG_ROOT}/{names.NGINX}/secrets")
    current = all(live.get(n) == data for n, (data, _) in secret_files.items())
    image_ids = project.image_ids([s.image for s in wanted])
    actions = plan.diff(wanted, project.actual(), image_ids, secrets_current=current)
    return wanted, actions, secret_files


def preflight(loaded: Loaded, project: Project, wanted: list[plan.ServiceSpec],
              actions: list[plan.Action], local_engine: bool) -> None:
    """Everything that can be known before a container starts; all problems at once, as one
    error whose hint is the failing findings' own fixes."""
    facts = gather_preflight(loaded, project, wanted, actions, local_engine)
    checks.raise_failing(checks.evaluate_preflight(loaded.spec, wanted, actions, facts),
                         "preflight failed")


def gather_preflight(loaded: Loaded, project: Project, wanted: list[plan.ServiceSpec],
                     actions: list[plan.Action], local_engine: bool) -> checks.PreflightFacts:
    """Every engine read of preflight, and only those (checks.evaluate_preflight decides)."""
    from .doctor import gather_gpus
    from .engine import host

    spec = loaded.spec
    facts = checks.PreflightFacts(project.image_ids([s.image for s in wanted]),
                                  reserve_bytes=checks.disk_reserve(os.environ))
    present = [tag for tag, image_id in facts.image_ids.items() if image_id]
    for model, image in checks.models_to_stat(spec, wanted, actions, present):
        src = model.parsed_source
        facts.sources[model.name] = host.stat_source(project.client, image, src.kind,
                                                     src.location, src.path, spec.project).exists
    if names.NGINX in checks.touched(actions):
        facts.published = host.published_ports(project.client)
        nginx = next(s for s in wanted if s.service == names.NGINX)
        if local_engine and project.container(names.NGINX) is None:
            facts.busy_here = {(bind, port) for bind, port in nginx.ports.values()
                               if not port_free_here(bind, port)}
    # The engine's data root, read with df in a throwaway container (remote engines alike).
    snapshot = host.host_snapshot(project.client, present, spec.project) if present else None
    facts.df = snapshot.df if snapshot else None
    # GPUs named in stack.yaml against the host's real ones (nvidia-smi via the engine).
    facts.gpu = gather_gpus(project.client, spec)
    return facts


def _wait_ready(project: Project, services: list[plan.ServiceSpec], report: Reporter,
                result: UpResult) -> None:
    """Poll each service's readiness probe (from inside the network) until all pass."""
    started = time.monotonic()
    pending = {s.service: s for s in services if s.probe}
    last_detail: dict[str, str] = {}
    for s in services:
        if not s.probe:
            result.ready_seconds[s.service] = 0.0
    while pending:
        for name, svc in list(pending.items()):
            status, exit_code = project.state(name)
            if status in ("exited", "dead", "missing", "restarting"):
                # "restarting": it crashed and the restart policy is looping it.
                raise _failure(project, svc, f"container {status} (exit code {exit_code})")
            path = svc.probe[1]  # type: ignore[index]
            outcome = project.probe(_probe_url(project.project, svc))
            if outcome == "200":
                elapsed = time.monotonic() - started
                result.ready_seconds[name] = elapsed
                report.event(name, "ready", f"{elapsed:.1f}s")
                del pending[name]
                continue
            detail = f"GET {path} -> {outcome}"
            elapsed = time.monotonic() - started
            if elapsed > DEADLINES.get(svc.role, 120.0):
                raise _failure(project, svc, f"not ready after {elapsed:.0f}s ({detail})")
            if last_detail.get(name) != detail:
                last_detail[name] = detail
            report.event(name, "waiting", f"{elapsed:.0f}s {detail}")
        if pending:
            time.sleep(0.25)


def _probe_url(project: str, svc: plan.ServiceSpec) -> str:
    """The service's readiness URL as seen from the health container, which runs probes."""
    port, path = svc.probe  # type: ignore[misc]
    host = "127.0.0.1" if svc.role == names.HEALTH else names.container(project, svc.service)
    return f"http://{host}:{port}{path}"


def _failure(project: Project, svc: plan.ServiceSpec, what: str) -> DeployError:
    logs = project.tail_logs(svc.service, 20)
    probe = f"GET {svc.probe[1]} on port {svc.probe[0]}" if svc.probe else "none"
    message = (f"service {svc.service} failed: {what}\n  probe: {probe}\n  last log lines:\n"
               + "\n".join("    " + line for line in (logs or "(no output)").splitlines()))
    hint = HINTS.get(svc.role, "").format(svc=svc.service) + \
        "; fix it and run `llmstack up` again (it repairs what is broken)"
    return DeployError(message, hint)


def up(loaded: Loaded, project: Project, report: Reporter, local_engine: bool = True) -> UpResult:
    write_config(loaded)
    wanted, actions, secret_files = compute(loaded, project)
    result = UpResult(actions)
    if plan.is_noop(actions):
        return result
    preflight(loaded, project, wanted, actions, local_engine)
    result.changed = True
    for action in actions:
        if action.kind == "remove":
            report.event(action.service, "removing", action.reason)
            project.remove(action.service)
    project.ensure_network()
    kinds = {a.service: a.kind for a in actions}

    def launch(batch: list[plan.ServiceSpec]) -> None:
        todo = [s for s in batch if kinds.get(s.service) in ("create", "recreate")]
        for svc in todo:
            report.event(svc.service, "starting", kinds[svc.service])
            extra = secret_files if svc.role == names.NGINX else None
            if svc.config or extra:
                project.write_config(svc, extra)
            project.start(svc)
        _wait_ready(project, todo, report, result)

    order: list[Callable[[plan.ServiceSpec], bool]] = [
        lambda s: s.role == names.HEALTH,
        # Models load in parallel, and LiteLLM with them: it needs no backend to start, so a
        # cold `up` takes about as long as its slowest service.
        lambda s: s.role in ("model", names.LITELLM),
        lambda s: s.role == names.NGINX,
    ]
    for selector in order:
        launch([s for s in wanted if selector(s)])
    nginx = next(s for s in wanted if s.role == names.NGINX)
    if kinds.get(names.NGINX) == "reload":
        report.event(names.NGINX, "reloading", next(a.reason for a in actions
                                                    if a.service == names.NGINX))
        reload_nginx(project, nginx, secret_files)
    return result


def reload_nginx(project: Project, nginx: plan.ServiceSpec,
                 secret_files: dict[str, tuple[bytes, int]]) -> None:
    """Ship new secret files and reload gracefully: in-flight requests finish on old workers."""
    project.write_config(nginx, secret_files)
    check_nginx_config(project, nginx, "its new configuration",
                       "the running nginx keeps the old one; fix and run `llmstack up`")
    graceful_reload(project, nginx, RELOAD_DEADLINE)


def check_nginx_config(project: Project, nginx: plan.ServiceSpec, what: str, hint: str) -> None:
    """`nginx -t` on the files in the config volume, before any reload loads them."""
    code, out = project.exec(names.NGINX, ["nginx", "-t", "-q", "-c",
                                           f"{nginx.config_mount}/nginx.conf"])
    if code != 0:
        raise DeployError(f"nginx rejected {what}: {out.strip()[:500]}", hint)


def graceful_reload(project: Project, nginx: plan.ServiceSpec, deadline_s: float) -> None:
    """`nginx -s reload`, then wait until every worker taking new connections is new.

    The reload only signals the master. Until new workers run, old ones accept connections
    with the old keys and upstream addresses (a recreated LiteLLM has a new IP: 504s).
    """
    before = serving_workers(project)
    code, out = project.exec(names.NGINX, ["nginx", "-s", "reload", "-c",
                                           f"{nginx.config_mount}/nginx.conf"])
    if code != 0:
        raise DeployError(f"nginx reload failed: {out.strip()[:500]}", "`llmstack logs nginx`")
    if not before:
        return  # no shell in a custom nginx image: cannot watch the workers
    deadline = time.monotonic() + deadline_s
    while True:
        serving = serving_workers(project)
        if serving and not serving & before:
            return
        if time.monotonic() > deadline:
            raise DeployError(
                f"nginx did not switch to its new configuration within {deadline_s:.0f}s:"
                "\n" + project.tail_logs(names.NGINX, 10),
                "the old configuration keeps serving; `llmstack logs nginx`, then "
                "`llmstack up` again")
        time.sleep(0.05)


RELOAD_DEADLINE = 30.0
WORKER_TITLE = "nginx: worker process"  # old workers become "... is shutting down"
# Lists nginx's processes as "PID TITLE" lines (the image has sh but no ps).
WORKERS_SCRIPT = ('for p in /proc/[0-9]*; do printf "%s " "${p#/proc/}"; '
                  'tr "\\0" " " < "$p/cmdline" 2>/dev/null; echo; done')


def serving_workers(project: Project) -> set[str]:
    """PIDs of the nginx workers that accept new connections (an old worker drops its
    listening sockets when it takes the "shutting down" title); empty without a shell."""
    code, out = project.exec(names.NGINX, ["sh", "-c", WORKERS_SCRIPT])
    if code != 0:
        return set()
    pids = set()
    for line in out.splitlines():
        pid, _, title = line.partition(" ")
        if title.strip() == WORKER_TITLE:
            pids.add(pid)
    return pids


def plan_only(loaded: Loaded, project: Project) -> list[plan.Action]:
    return compute(loaded, project)[1]


def status(loaded: Loaded, project: Project) -> dict[str, Any]:
    """Per service: state, readiness, ports, image, uptime; plus certificate and rotation."""
    wanted = {s.service: s for s in plan.desired(loaded.spec, loaded.rendered,
                                                 loaded.keys().internal)}
    info = {i.service: i for i in project.info()}
    now = dt.datetime.now(dt.UTC)
    health_up = info.get(names.HEALTH) is not None and info[names.HEALTH].status == "running"
    services = []
    for name in list(wanted) + [n for n in info if n not in wanted]:
        svc, have = wanted.get(name), info.get(name)
        entry: dict[str, Any] = {"service": name, "state": have.status if have else "missing"}
        if have:
            entry["image"] = have.image
            entry["container"] = have.name
            entry["restarts"] = have.restart_count
            try:
                started = dt.datetime.fromisoformat(have.started_at.replace("Z", "+00:00"))
                entry["uptime_s"] = int((now - started).total_seconds()) \
                    if have.status == "running" else 0
            except ValueError:
                entry["uptime_s"] = 0
            entry["ports"] = sorted(f"{b['HostIp']}:{b['HostPort']}->{p}"
                                    for p, bs in have.ports.items() for b in (bs or []))
            entry["in_sync"] = bool(svc) and have.labels.get(names.LABEL_HASH) == \
                svc.config_hash()  # type: ignore[union-attr]
        healthy: bool | None = None
        if svc and svc.probe and have and have.status == "running" and health_up:
            healthy = project.probe(_probe_url(loaded.spec.project, svc)) == "200"
        entry["healthy"] = healthy
        if not svc:
            entry["note"] = "not in stack.yaml; `llmstack up` removes it"
        services.append(entry)
    cert = tls.inspect(loaded.paths.certs)
    keys = loaded.keys()
    rotation = None
    if keys.previous and keys.previous in keys.accepted(time.time()):
        rotation = {"in_progress": True, "old_key_expires": None if keys.previous_expires
                    is None else dt.datetime.fromtimestamp(keys.previous_expires, dt.UTC)
                    .isoformat()}
    return {
        "project": loaded.spec.project,
        "services": services,
        "healthy": all(s.get("healthy") for s in services if s["service"] in wanted),
        "certificate": {"not_after": cert.not_after.isoformat(), "days_left": cert.days_left,
                        "expiring_soon": cert.expiring, "names": cert.names},
        "rotation": rotation,
    }
