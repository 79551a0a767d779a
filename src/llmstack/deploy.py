"""`up`, `plan`, `status`, `down`: the pure core's plan carried out on an engine.

Everything here goes through `engine.api.Engine` (the real one, or the fake in the unit tests);
nginx's secret files and reloads belong to `edge`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from . import checks, edge, fetch, history, loading, names, plan, pull, quickup, tls
from .engine.api import STOPPED_STATES, ContainerInfo, Engine
from .engine.containers import port_free_here
from .errors import DeployError, LlmstackError, OwnershipError
from .project import Loaded, write_config

# How long each kind of service may take to become ready (seconds).
DEADLINES = plan.READY_DEADLINES
POLL_INTERVAL = 0.25  # seconds between two rounds of readiness probes
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
    revision: int | None = None  # recorded by a successful `up` that changed something
    images_line: str = ""  # which image source and why (pull.Choice.line)


def check_owner(project: Engine, take_over: bool = False) -> None:
    """Refuse to touch containers of the project that another stack folder made (their
    names.LABEL_OWNER differs from `project.owner_labels`), unless `take_over`. Containers
    without the label (made before it existed) are adopted."""
    mine = project.owner_labels.get(names.LABEL_OWNER, "")
    foreign = [i for i in project.info()
               if i.labels.get(names.LABEL_OWNER) not in (None, "", mine)]
    if not foreign or take_over:
        return
    other = foreign[0].labels.get(names.LABEL_OWNER_FOLDER) or "an unknown folder"
    here = project.owner_labels.get(names.LABEL_OWNER_FOLDER) or "this folder"
    raise OwnershipError(
        f"project {project.project!r} on this engine belongs to another stack folder: "
        f"{other} made its containers ({', '.join(sorted(i.name for i in foreign))}); "
        f"this stack ({here}) names the same project and would take them over",
        f"set `project:` in stack.yaml to a name no other stack uses; or, if {other} is gone "
        "and this folder replaces it, run the command again with --take-over")


def compute(loaded: Loaded, project: Engine) -> tuple[list[plan.ServiceSpec], list[plan.Action],
                                                     dict[str, tuple[bytes, int]]]:
    """Desired services, the actions to reach them, and nginx's secret files."""
    keys = loaded.keys()
    wanted = plan.desired(loaded.spec, loaded.rendered, keys.internal, loaded.pins())
    secret_files = loaded.nginx_secret_files()
    current = edge.secrets_current(project, secret_files)
    nginx = next(s for s in wanted if s.role == names.NGINX)
    image_ids = project.image_ids([s.image for s in wanted])
    actions = plan.diff(wanted, project.actual(), image_ids, secrets_current=current,
                        owner=project.owner_labels.get(names.LABEL_OWNER, ""),
                        config_current=edge.config_current(project, nginx))
    return wanted, actions, secret_files


def preflight(loaded: Loaded, project: Engine, wanted: list[plan.ServiceSpec],
              actions: list[plan.Action], local_engine: bool) -> None:
    """Everything that can be known before a container starts; all problems at once, as one
    error whose hint is the failing findings' own fixes."""
    facts = gather_preflight(loaded, project, wanted, actions, local_engine)
    checks.raise_failing(checks.evaluate_preflight(loaded.spec, wanted, actions, facts),
                         "preflight failed")


def gather_preflight(loaded: Loaded, project: Engine, wanted: list[plan.ServiceSpec],
                     actions: list[plan.Action], local_engine: bool) -> checks.PreflightFacts:
    """Every engine read of preflight, and only those (checks.evaluate_preflight decides)."""
    from .doctor import gather_gpus

    spec = loaded.spec
    facts = checks.PreflightFacts(project.image_ids([s.image for s in wanted]),
                                  reserve_bytes=checks.disk_reserve(os.environ))
    present = [tag for tag, image_id in facts.image_ids.items() if image_id]
    for model, image in checks.models_to_stat(spec, wanted, actions, present):
        src = model.parsed_source
        facts.sources[model.name] = project.stat_source(image, src.kind, src.location,
                                                        src.path).exists
    if names.NGINX in checks.touched(actions):
        facts.published = project.published_ports()
        nginx = next(s for s in wanted if s.service == names.NGINX)
        if local_engine and project.container(names.NGINX) is None:
            facts.busy_here = {(bind, port) for bind, port in nginx.ports.values()
                               if not port_free_here(bind, port)}
    # The engine's data root, read with df in a throwaway container (remote engines alike).
    snapshot = project.host_snapshot(present) if present else None
    facts.df = snapshot.df if snapshot else None
    # GPUs named in stack.yaml against the host's real ones (nvidia-smi via the engine).
    facts.gpu = gather_gpus(project, spec)
    return facts


@dataclass
class _Starting:
    svc: plan.ServiceSpec
    since: float  # monotonic time of its start
    key: str = ""  # its container's key: svc.service, or SERVICE_next when start-first
    watch: loading.Watch | None = None  # a model's load, followed (its deadline moves)

    def __post_init__(self) -> None:
        self.key = self.key or self.svc.service
        if self.svc.loading is not None:
            self.watch = loading.Watch(self.svc.loading, self.since)


@dataclass
class Swaps:
    """What start-first replacements did so far, to finish (drain, stop the old containers)
    or to roll back: the new containers started beside old ones, those promoted (the old one
    renamed SERVICE_old, the new one given the service's name), config files replaced."""

    started: list[str] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)
    stopped_first: list[str] = field(default_factory=list)  # old container already gone
    saved_config: dict[str, tuple[plan.ServiceSpec, dict[str, bytes]]] = field(
        default_factory=dict)


def _start_in_order(project: Engine, wanted: list[plan.ServiceSpec],
                    actions: dict[str, plan.Action], secret_files: edge.SecretFiles,
                    report: Reporter, result: UpResult, swaps: Swaps | None = None) -> None:
    """Create or recreate the services `actions` names, each once the services in its
    `start_after` are ready (those kept as they are count as ready), and wait until every one
    answers its readiness probe. Services whose dependencies are ready start together; one
    loop polls them all from inside the network. A start-first replacement starts beside the
    container it replaces and takes its name once ready (see `Swaps`); a LiteLLM replaced
    start-first waits for the models replaced start-first, so it connects to the new ones."""
    swaps = swaps if swaps is not None else Swaps()
    todo = {s.service: s for s in wanted
            if s.service in actions and actions[s.service].kind in ("create", "recreate")}
    known = {s.service for s in wanted}
    ready = known - set(todo)
    swapped_models = {s.service for s in todo.values() if s.role == "model"
                      and actions[s.service].how == plan.START_FIRST}
    hold_image = next((s.image for s in wanted if s.role == names.HEALTH), "")
    starting: dict[str, _Starting] = {}
    # Waiting for health means waiting for its container, not its readiness, for what does
    # not talk to healthd itself (nginx proxies /health to it: it waits for ready): probes run
    # in its container (one exec), and healthd's own checks (ready_check) answer an error
    # until it listens, which counts as not ready yet.
    running: set[str] = set()
    while todo or starting:
        unblocked = [s for s in todo.values()
                     if all(d in ready or d not in known
                            or (d == names.HEALTH and d in running and d not in s.depends_on)
                            for d in s.start_after)
                     and (s.role != names.LITELLM or swapped_models <= ready)]
        # Health first (the others' probes run in it), then LiteLLM, the slowest to be
        # ready of a CPU stack (seconds of imports), then the rest in the plan's order:
        # each start is a few engine calls, one after another.
        unblocked.sort(key=lambda s: (s.role != names.HEALTH, s.role != names.LITELLM))
        if not unblocked and not starting:
            raise DeployError("cannot order the start of " + ", ".join(todo) + ": their "
                              "start_after form a cycle", "report this as a bug")
        for svc in unblocked:
            del todo[svc.service]
            key = _start(project, svc, actions[svc.service], secret_files, report, swaps,
                         hold_image)
            running.add(svc.service)
            if svc.probe:
                starting[svc.service] = _Starting(svc, time.monotonic(), key)
            else:
                result.ready_seconds[svc.service] = 0.0
                ready.add(svc.service)
        for item in starting.values():  # a crashed container fails with its logs first
            _check_running(project, item)
        # One exec in the health container probes every service still starting.
        answers = project.probes([_probe_url(project.project, i.svc, i.key)
                                  for i in starting.values()]) if starting else {}
        for name, item in list(starting.items()):
            elapsed = _poll(project, item, report,
                            answers.get(_probe_url(project.project, item.svc, item.key), ""))
            if elapsed is not None:
                if item.key != name:
                    _promote(project, name, report, swaps)
                result.ready_seconds[name] = elapsed
                ready.add(name)
                del starting[name]
        if starting:
            time.sleep(POLL_INTERVAL)


def _start(project: Engine, svc: plan.ServiceSpec, action: plan.Action,
           secret_files: edge.SecretFiles, report: Reporter, swaps: Swaps,
           hold_image: str = "") -> str:
    """Start the service's new container; its key (SERVICE_next when start-first, and for a
    model replaced stop-first, whose 503 placeholder holds its name meanwhile)."""
    start_first = action.kind == "recreate" and action.how == plan.START_FIRST
    if (action.kind == "recreate" and action.how == plan.STOP_FIRST and svc.role == "model"
            and hold_image):
        _stop_first(project, svc, hold_image, report)
        swaps.stopped_first.append(svc.service)
        start_first = True  # the new one starts beside the placeholder
    report.event(svc.service, "starting", action.kind + (f" ({action.how})" if action.how
                                                         else ""))
    if svc.role == names.NGINX:
        edge.ship(project, svc, secret_files)
    elif svc.config:
        if start_first:
            # The old container read its files when it started; keep them for a rollback.
            old = project.read_tree(svc.service, svc.config_mount)
            prefix = svc.config_mount.rsplit("/", 1)[-1] + "/"
            swaps.saved_config[svc.service] = (svc, {n.removeprefix(prefix): d
                                                     for n, d in old.items()})
        project.write_config(svc)
    if not start_first:
        project.start(svc)
        return svc.service
    key = svc.service + names.NEXT
    project.start(svc, key)
    swaps.started.append(svc.service)
    return key


PLACEHOLDER_DEADLINE = 60.0  # seconds for the 503 placeholder to answer


def _stop_first(project: Engine, svc: plan.ServiceSpec, image: str, report: Reporter) -> None:
    """Replace the model's running container by its 503 placeholder (plan.placeholder): the
    placeholder starts beside it, takes its name once it answers, then the old container
    stops (its GPUs are free for the new one). Requests to the model get a JSON 503 (through
    LiteLLM) until the new container takes the name, never a connection error."""
    hold = plan.placeholder(svc, image)
    key = svc.service + names.HOLD
    project.start(hold, key)
    deadline = time.monotonic() + PLACEHOLDER_DEADLINE
    while (answer := project.probe(_probe_url(project.project, hold, key))) != "503":
        if time.monotonic() > deadline or project.state(key)[0] in STOPPED_STATES:
            detail = project.tail_logs(key, 10)
            project.remove(key)
            raise DeployError(f"the 503 placeholder of {svc.service} did not answer within "
                              f"{PLACEHOLDER_DEADLINE:.0f}s (GET / -> {answer}): {detail}",
                              f"the old {svc.service} keeps serving; `llmstack doctor`")
        time.sleep(POLL_INTERVAL)
    project.rename(svc.service, svc.service + names.OLD)
    project.rename(key, svc.service)
    project.remove(svc.service + names.OLD)
    report.event(svc.service, "stopped", "old container stopped first; requests get JSON "
                 "errors (503) until the new one is ready")


def _promote(project: Engine, service: str, report: Reporter, swaps: Swaps) -> None:
    """The ready SERVICE_next takes the service's name (its DNS name on the network) and
    the old container becomes SERVICE_old; both keep running, no connection is touched."""
    project.rename(service, service + names.OLD)
    project.rename(service + names.NEXT, service)
    swaps.promoted.append(service)
    report.event(service, "switched", f"new container serves; old one is {service}"
                 f"{names.OLD} until idle")


def rollback(project: Engine, swaps: Swaps, report: Reporter) -> list[str]:
    """Put back every container a failed `up` replaced start-first, and the config files it
    read: the old containers never stopped, so they serve again at once. The services rolled
    back."""
    done = []
    for service in reversed(swaps.promoted):
        if service in swaps.stopped_first:
            continue  # its old container is gone: the new one, ready, keeps serving
        project.rename(service, service + names.NEXT)
        project.rename(service + names.OLD, service)
        done.append(service)
    for service in swaps.started:
        if service in swaps.promoted and service in swaps.stopped_first:
            continue
        project.remove(service + names.NEXT)
        if service not in done and service not in swaps.stopped_first:
            done.append(service)
    for svc, files in swaps.saved_config.values():
        if files:
            project.write_config(replace(svc, config=files))
    for service in done:
        report.event(service, "rolled back", "the previous container serves again")
    return done


def _finish_swaps(project: Engine, swaps: Swaps, report: Reporter) -> None:
    """After the switch: wait until nginx's old workers finished their requests (those
    hold the old LiteLLM, which holds the old models), then stop the old containers."""
    if not swaps.promoted:
        return
    if names.LITELLM in swaps.promoted and project.container(names.NGINX) is not None:
        report.event(names.NGINX, "draining", "old workers finish in-flight requests")
        edge.wait_drained(project, edge.DRAIN_DEADLINE)
    order = sorted(swaps.promoted, key=lambda s: s != names.LITELLM)  # LiteLLM first
    for service in order:
        report.event(service + names.OLD, "removing", "replaced and idle")
        project.remove(service + names.OLD)


def _check_running(project: Engine, item: _Starting) -> None:
    """DeployError (with the last log lines) when the container stopped."""
    status, exit_code = project.state(item.key)
    if status in STOPPED_STATES:
        # "restarting": it crashed and the restart policy is looping it.
        raise _failure(project, item.svc, f"container {status} (exit code {exit_code})",
                       item.key)


def _poll(project: Engine, item: _Starting, report: Reporter, outcome: str) -> float | None:
    """One readiness check, given the probe's `outcome`: seconds since the start when ready,
    None while waiting; DeployError (with the last log lines) when the deadline passed."""
    svc = item.svc
    now = time.monotonic()
    elapsed = now - item.since
    if outcome == "200":
        report.event(svc.service, "ready", f"{elapsed:.1f}s")
        return elapsed
    detail = f"GET {svc.probe[1]} -> {outcome}"  # type: ignore[index]
    if item.watch is not None:  # a model: waits while it shows progress, up to its ceiling
        watch = item.watch
        seen = project.activity(item.key, watch.cursor) if watch.due(now) else None
        why = watch.observe(now, outcome, seen)
        if why is not None:
            raise _failure(project, svc, f"{why} ({detail})", item.key)
        report.event(svc.service, "waiting", f"{elapsed:.0f}s {detail}; {watch.detail(now)}")
        return None
    if elapsed > DEADLINES.get(svc.role, plan.DEFAULT_READY_DEADLINE):
        raise _failure(project, svc, f"not ready after {elapsed:.0f}s ({detail})", item.key)
    report.event(svc.service, "waiting", f"{elapsed:.0f}s {detail}")
    return None


def _probe_url(project: str, svc: plan.ServiceSpec, key: str = "") -> str:
    """The service's readiness URL as seen from the health container, which runs probes;
    `key` names another container of the service (SERVICE_next)."""
    if svc.ready_check:  # a check the health service runs (Ollama: tag listed, warmed up)
        return (f"http://{names.container(project, names.HEALTH)}:{names.HEALTH_PORT}"
                f"/ready/{svc.ready_check}")
    port, path = svc.probe  # type: ignore[misc]
    host = "127.0.0.1" if svc.role == names.HEALTH else names.container(project,
                                                                         key or svc.service)
    return f"http://{host}:{port}{path}"


def _failure(project: Engine, svc: plan.ServiceSpec, what: str, key: str = "") -> DeployError:
    logs = project.tail_logs(key or svc.service, 20)
    probe = f"GET {svc.probe[1]} on port {svc.probe[0]}" if svc.probe else "none"
    message = (f"service {svc.service} failed: {what}\n  probe: {probe}\n  last log lines:\n"
               + "\n".join("    " + line for line in (logs or "(no output)").splitlines()))
    hint = HINTS.get(svc.role, "").format(svc=svc.service) + \
        "; fix it and run `llmstack up` again (it repairs what is broken)"
    return DeployError(message, hint)


def _quiet(_: str) -> None:
    pass


def decide_images(loaded: Loaded, project: Engine, progress: pull.Progress,
                  fetch: bool = True) -> tuple[Loaded, pull.Choice]:
    """The stack with its image source decided for this engine (`images: auto`), one line
    saying which and why, and (with `fetch`) the missing upstream images pulled."""
    choice = pull.choose(loaded.spec, project)
    progress(choice.line)
    if fetch:
        pull.ensure(choice, project, progress)
    return loaded.with_spec(choice.spec), choice


def up(loaded: Loaded, project: Engine, report: Reporter, local_engine: bool = True,
       progress: pull.Progress = print, take_over: bool = False) -> UpResult:
    # Whatever happens next, the no-change fast path waits for the next converged `up`.
    quickup.forget(loaded.paths.root)
    check_owner(project, take_over)
    # Before anything starts: the image source decided and missing images pulled, hf:
    # sources downloaded; a failure here leaves every running container as it was.
    loaded, choice = decide_images(loaded, project, progress)
    write_config(loaded)
    fetch.ensure(loaded, project, report)  # hf: sources onto the engine's host, pinned
    wanted, actions, secret_files = compute(loaded, project)
    result = UpResult(actions, images_line=choice.line)
    if plan.is_noop(actions):
        fetch.pull_ollama(loaded.spec, project, report)  # ollama: tags, pulled when missing
        return result
    preflight(loaded, project, wanted, actions, local_engine)
    result.changed = True
    for action in actions:
        if action.kind == "remove":
            report.event(action.service, "removing", action.reason)
            project.remove(action.service)
    project.ensure_network()
    by_service = {a.service: a for a in actions}
    swaps = Swaps()
    nginx = next(s for s in wanted if s.role == names.NGINX)
    try:
        _start_in_order(project, wanted, by_service, secret_files, report, result, swaps)
        if by_service[names.NGINX].kind == "reload":
            report.event(names.NGINX, "reloading", by_service[names.NGINX].reason)
            edge.reload_nginx(project, nginx, secret_files)
    except LlmstackError as exc:
        if not (swaps.started or swaps.promoted or swaps.stopped_first):
            raise
        back = rollback(project, swaps, report)
        if names.LITELLM in swaps.promoted and project.container(names.NGINX) is not None:
            with contextlib.suppress(LlmstackError):  # back to the old LiteLLM's address
                edge.graceful_reload(project, nginx, edge.RELOAD_DEADLINE)
        held = [s for s in swaps.stopped_first if s not in swaps.promoted]
        raise DeployError(
            exc.message + ("\n  rolled back: " + ", ".join(back) + " run their previous "
                           "containers, which kept serving" if back else "")
            + ("\n  stopped first (update: stop-first): " + ", ".join(held) + " answer 503 "
               "(JSON errors) until `llmstack up` succeeds; `llmstack rollback` starts "
               "the previous revision" if held else ""), exc.hint) from exc
    _finish_swaps(project, swaps, report)
    fetch.pull_ollama(loaded.spec, project, report)  # ollama: tags, pulled when missing
    result.revision = history.record(project, loaded.spec.images.for_key("litellm"),
                                     loaded.stack_text(), wanted).number
    return result


def remember(loaded: Loaded, project: Engine, result: UpResult, engine: str,
             endpoints: dict[str, str]) -> bool:
    """After a successful `up` (plain: one stack, no inventory host): write what the next
    no-change `up` checks to answer fast (quickup.py), when the stack is converged on the local
    engine; False (and no record) otherwise. Never fails the `up` it follows."""
    try:
        return _remember(loaded, project, result, engine, endpoints)
    except (LlmstackError, OSError, ValueError):
        return False


def _remember(loaded: Loaded, project: Engine, result: UpResult, engine: str,
              endpoints: dict[str, str]) -> bool:
    spec, paths = loaded.spec, loaded.paths
    if (not engine.startswith("unix://") or loaded.host is not None or fetch.hf_models(spec)
            or fetch.ollama_models(spec)):
        return False
    services = [a.service for a in result.actions if a.kind != "remove"]
    actual = project.actual()
    if (sorted(a.service for a in actual) != sorted(services)
            or any(a.status != "running" for a in actual)):
        return False
    source = spec.images.source
    refs = (pull.stack_refs(spec, "registry") + pull.stack_refs(spec, "local")
            if source == "auto" else pull.stack_refs(spec, source))
    now = time.time()
    keys, store = loaded.keys(), loaded.team_keys()
    ends = [keys.previous_expires, tls.inspect(paths.certs).not_after.timestamp()]
    for key in store.keys:
        ends += [key.expires, key.previous.expires if key.previous else None]
    future = [float(t) for t in ends if t is not None and t > now]
    inputs = [str(p) for p in (paths.stack, paths.lock, paths.env, paths.team_keys,
                               paths.stack_id, paths.certs, paths.config)]
    quickup.write(paths.root, {
        "format": quickup.FORMAT, "stack": str(paths.stack), "engine": engine,
        "project": project.project, "inputs": inputs,
        "digest": quickup.digest(inputs, engine),
        "valid_until": min(future) if future else None,
        "containers": {a.container_id: {"name": a.service, "image_id": a.image_id}
                       for a in actual},
        "images": project.image_ids(list(dict.fromkeys(refs))),
        "output": {"notes": [result.images_line] if result.images_line else [],
                   "actions": [plan.Action("keep", s, "up to date").to_dict()
                               for s in services],
                   "endpoints": list(endpoints.items()),  # in order (the record is sorted)
                   "key_file": str(paths.env)}})
    return True


def rollback_to(loaded: Loaded, project: Engine, report: Reporter,
                progress: pull.Progress = print, revision: int | None = None,
                take_over: bool = False, local_engine: bool = True
                ) -> tuple[history.Revision, UpResult]:
    """Return the running stack to a recorded revision (default: the one before the latest)
    with `up`'s rules; the folder's files (.env, certs/, the lock file's pins) stay those of
    `loaded`, and stack.yaml is not edited."""
    from .render import render
    from .spec import parse

    check_owner(project, take_over)
    target = history.pick(history.load_all(project, loaded.spec.images.for_key("litellm")),
                          revision)
    name = loaded.paths.stack.name
    old_spec = parse(target.stack_yaml, f"revision {target.number} of {name}")
    old = replace(loaded, spec=old_spec, rendered=render(old_spec, name),
                  host_text=target.stack_yaml)
    return target, up(old, project, report, local_engine, progress, take_over)


def plan_only(loaded: Loaded, project: Engine, take_over: bool = False) -> list[plan.Action]:
    check_owner(project, take_over)
    return compute(loaded, project)[1]


# --- status ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """One service of `status`: its container (None when missing) and readiness. Fields from
    the container (image, container, restarts, uptime_s, ports, in_sync) are None without
    one and then absent from to_dict()."""

    service: str
    state: str
    healthy: bool | None  # None: not probed (no probe, not running, or health down)
    image: str | None = None
    container: str | None = None
    restarts: int | None = None
    uptime_s: int | None = None
    ports: tuple[str, ...] = ()
    in_sync: bool | None = None
    note: str | None = None  # set for a container stack.yaml no longer names

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"service": self.service, "state": self.state}
        if self.container is not None:
            data.update(image=self.image, container=self.container, restarts=self.restarts,
                        uptime_s=self.uptime_s, ports=list(self.ports), in_sync=self.in_sync)
        data["healthy"] = self.healthy
        if self.note:
            data["note"] = self.note
        return data


@dataclass(frozen=True)
class CertificateStatus:
    not_after: str
    days_left: int
    expiring_soon: bool
    names: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"not_after": self.not_after, "days_left": self.days_left,
                "expiring_soon": self.expiring_soon, "names": list(self.names)}


@dataclass(frozen=True)
class RotationStatus:
    old_key_expires: str | None  # None: accepted until `rotate-key --finish`

    def to_dict(self) -> dict[str, Any]:
        return {"in_progress": True, "old_key_expires": self.old_key_expires}


@dataclass(frozen=True)
class StackStatus:
    """`llmstack status`; to_dict() is the `--json` shape documented in docs/CI.md."""

    project: str
    services: list[ServiceStatus]
    healthy: bool  # every service of stack.yaml answers its probe
    certificate: CertificateStatus
    rotation: RotationStatus | None

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "services": [s.to_dict() for s in self.services],
                "healthy": self.healthy, "certificate": self.certificate.to_dict(),
                "rotation": self.rotation.to_dict() if self.rotation else None}


def _uptime(have: ContainerInfo, now: dt.datetime) -> int:
    try:
        started = dt.datetime.fromisoformat(have.started_at.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int((now - started).total_seconds()) if have.status == "running" else 0


def status(loaded: Loaded, project: Engine) -> StackStatus:
    """Per service: state, readiness, ports, image, uptime; plus certificate and rotation."""
    loaded = decide_images(loaded, project, _quiet, fetch=False)[0]
    wanted = {s.service: s for s in plan.desired(loaded.spec, loaded.rendered,
                                                 loaded.keys().internal, loaded.pins())}
    info = {i.service: i for i in project.info()}
    now = dt.datetime.now(dt.UTC)
    health_up = info.get(names.HEALTH) is not None and info[names.HEALTH].status == "running"
    probed = {name: _probe_url(loaded.spec.project, svc) for name, svc in wanted.items()
              if svc.probe and name in info and info[name].status == "running" and health_up}
    answers = project.probes(list(probed.values())) if probed else {}  # one exec for all
    services = []
    for name in list(wanted) + [n for n in info if n not in wanted]:
        svc, have = wanted.get(name), info.get(name)
        healthy = answers.get(probed[name]) == "200" if name in probed else None
        note = None if svc else "not in stack.yaml; `llmstack up` removes it"
        if have is None:
            services.append(ServiceStatus(name, "missing", healthy, note=note))
            continue
        in_sync = svc is not None and have.labels.get(names.LABEL_HASH) == svc.config_hash()
        if svc is not None and not in_sync:
            note = ("runs its previous revision: stack.yaml changed since, or the last `up` "
                    "of this change failed and was rolled back; `llmstack up` applies it")
        services.append(ServiceStatus(
            name, have.status, healthy, image=have.image, container=have.name,
            restarts=have.restart_count, uptime_s=_uptime(have, now), ports=have.ports,
            in_sync=in_sync, note=note))
    cert = tls.inspect(loaded.paths.certs)
    keys = loaded.keys()
    rotation = None
    if keys.previous and keys.previous in keys.accepted(time.time()):
        rotation = RotationStatus(None if keys.previous_expires is None else
                                  dt.datetime.fromtimestamp(keys.previous_expires, dt.UTC)
                                  .isoformat())
    return StackStatus(
        project=loaded.spec.project, services=services,
        healthy=all(s.healthy for s in services if s.service in wanted),
        certificate=CertificateStatus(cert.not_after.isoformat(), cert.days_left, cert.expiring,
                                      cert.names),
        rotation=rotation)
