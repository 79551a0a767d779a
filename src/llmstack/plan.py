"""Desired containers from the spec, compared with what runs -> the actions of `up`. Pure."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import gpu, images, keepalive, names, sizing
from .backends import BACKENDS, Mount, Placement
from .loading import Loading
from .render import (
    EDGE_LOG_DIR,
    EDGE_LOG_SOCKET,
    EDGE_LOG_SUBDIR,
    NGINX_SPOOL_BODY,
    NGINX_SPOOL_DIR,
    Rendered,
)
from .spec import ModelSpec, Resources, StackSpec

# Images that run as any uid (llmstack's builds and the upstream images the catalog names for
# nginx, LiteLLM and llama.cpp) run as this uid with a read-only root filesystem.
OWN_UID = f"{images.IMAGE_UID}:{images.IMAGE_UID}"
CONFIG_ROOT = names.CONFIG_ROOT
# Every container's /tmp is a tmpfs: the root filesystem is read-only, and tmpfs pages count
# against the container's memory limit, so each service's size is part of its budget.
TMPFS_OPTIONS = "rw,nosuid,nodev"
DEFAULT_TMPFS = {"/tmp": f"{TMPFS_OPTIONS},size=256m"}
# nginx keeps only its pid and (unused: buffering is off) proxy temp files in /tmp; request
# bodies over its buffer go to this disk-backed volume instead (render.NGINX_SPOOL_DIR).
NGINX_TMPFS = {"/tmp": f"{TMPFS_OPTIONS},size=16m"}
# Every container drops every capability. Root-in-container images (vllm, ollama, tgi) still
# need these few to switch users and own their files; llmstack's own images need none.
ROOT_IMAGE_CAPS = ("CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER")
# Process limit of a container whose resources name none.
DEFAULT_PIDS = 4096
RESTART_POLICY = "unless-stopped"
# How `up` replaces a changed container (ServiceSpec.update, Action.how):
START_FIRST = "start-first"  # the new one starts beside the old, traffic switches when ready
STOP_FIRST = "stop-first"  # the old one stops first (GPUs that cannot hold both)
IN_PLACE = "in-place"  # removed and created again (health; nginx, which owns the host ports)
# How long each kind of service may take to become ready (seconds): `up` waits this long,
# and Kubernetes' startup probe allows as much. A model's follows its load (loading.py,
# ServiceSpec.loading) up to its load_timeout; this figure is for one without.
READY_DEADLINES = {"model": 600.0, names.HEALTH: 60.0, names.LITELLM: 180.0, names.NGINX: 60.0,
                   names.EDGE_METRICS: 60.0, names.PROMETHEUS: 120.0}
DEFAULT_READY_DEADLINE = 120.0


def nginx_spool(project: str) -> Mount:
    return Mount(names.spool_volume(project), NGINX_SPOOL_DIR, read_only=False, managed=True,
                 owned_dir=NGINX_SPOOL_BODY)


def edge_log(project: str) -> Mount:
    """The volume nginx and the edge-metrics service share: mtail's socket, nothing else."""
    return Mount(names.edge_log_volume(project), EDGE_LOG_DIR, read_only=False, managed=True,
                 owned_dir=EDGE_LOG_SUBDIR)


# mtail refuses to start on a socket path a previous run left behind: the entrypoint removes
# it first (and makes its folder: Kubernetes' emptyDir starts empty), then runs mtail with the
# service's command as its arguments.
EDGE_ENTRYPOINT = ["sh", "-c", f"mkdir -p {EDGE_LOG_DIR}/{EDGE_LOG_SUBDIR} && "
                   f'rm -f {EDGE_LOG_SOCKET} && exec mtail "$@"', "mtail"]


def edge_metrics(spec: StackSpec, rendered: Rendered) -> ServiceSpec:
    """nginx's own counts per listener, status, key and direct-routed model: mtail reading
    the lines nginx sends to its socket, served on the project network only."""
    return ServiceSpec(
        service=names.EDGE_METRICS, role=names.EDGE_METRICS,
        image=spec.images.for_key("mtail"), entrypoint=list(EDGE_ENTRYPOINT),
        command=["--progs", f"{names.config_dir(names.EDGE_METRICS)}/",
                 "--logs", f"unixgram://{EDGE_LOG_SOCKET}",
                 "--port", str(names.EDGE_METRICS_PORT), "--logtostderr",
                 "--emit_prog_label=false", "--vm_logs_runtime_errors=false"],
        config=rendered.services[names.EDGE_METRICS],
        mounts=[edge_log(spec.project)],
        probe=(names.EDGE_METRICS_PORT, "/metrics"),
        tmpfs=dict(NGINX_TMPFS),  # nothing written there: the smallest /tmp
        start_after=(names.HEALTH,),
        **_hardening("mtail", Resources(memory="64m", pids=64)),
    )


# The optional Prometheus: LiteLLM's /metrics wants the internal key, which Prometheus reads
# from a file. The entrypoint writes it from the service's secret environment into the
# memory-backed /tmp (mode 0600), drops the variable, and runs Prometheus.
PROMETHEUS_KEY_ENV = "LLMSTACK_METRICS_KEY"
PROMETHEUS_KEY_FILE = "/tmp/litellm-metrics.key"
PROMETHEUS_DATA = "/prometheus"
PROMETHEUS_ENTRYPOINT = [
    "sh", "-c", f'umask 077 && printf "%s\\n" "${PROMETHEUS_KEY_ENV}" > {PROMETHEUS_KEY_FILE} && '
    f'unset {PROMETHEUS_KEY_ENV} && exec prometheus "$@"', "prometheus"]


def prometheus(spec: StackSpec, internal_key: str) -> ServiceSpec:
    """The stack's own Prometheus (`observability.prometheus`): the scrape config `llmstack
    export prometheus` writes, its UI and API published on 127.0.0.1 only."""
    from .monitoring import PROMETHEUS_FILE, prometheus_config

    config = prometheus_config(spec, "", key_path=PROMETHEUS_KEY_FILE).config
    return ServiceSpec(
        service=names.PROMETHEUS, role=names.PROMETHEUS,
        image=spec.images.for_key("prometheus"), entrypoint=list(PROMETHEUS_ENTRYPOINT),
        command=[f"--config.file={names.config_dir(names.PROMETHEUS)}/{PROMETHEUS_FILE}",
                 f"--storage.tsdb.path={PROMETHEUS_DATA}/data",
                 f"--web.listen-address=0.0.0.0:{names.PROMETHEUS_PORT}"],
        env={PROMETHEUS_KEY_ENV: internal_key}, secret_env=(PROMETHEUS_KEY_ENV,),
        config={PROMETHEUS_FILE: config.encode()},
        ports={f"{names.PROMETHEUS_PORT}/tcp": ("127.0.0.1",
                                                spec.observability.prometheus_port)},
        mounts=[Mount(names.prometheus_volume(spec.project), PROMETHEUS_DATA, read_only=False,
                      managed=True, owned_dir="data")],
        tmpfs={"/tmp": f"{TMPFS_OPTIONS},size=1m"},  # the key file only
        probe=(names.PROMETHEUS_PORT, "/-/ready"),
        start_after=(names.HEALTH,),
        **_hardening("prometheus", Resources(memory="512m", pids=256)),
    )


@dataclass(frozen=True)
class ServiceSpec:
    """Everything needed to create one container, decided here once: `Project.start` (Docker)
    and `export.compose` only translate these fields. Secrets appear only in `env` values;
    the config hash covers their digests, never prints them."""

    service: str
    role: str
    image: str
    command: list[str]
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    ports: dict[str, tuple[str, int]] = field(default_factory=dict)
    config: dict[str, bytes] = field(default_factory=dict)  # files for its config volume
    gpus: list[str] = field(default_factory=list)
    shm_size: str | None = None
    tmpfs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TMPFS))
    resources: Resources = field(default_factory=Resources)
    user: str | None = None  # "uid:gid"; None runs the image's own user
    read_only: bool = False
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()
    no_new_privileges: bool = True
    pids_limit: int = DEFAULT_PIDS  # resources.pids, or DEFAULT_PIDS when it names none
    init: bool = True  # a tiny init as PID 1 reaps zombies and forwards signals
    restart: str = RESTART_POLICY
    probe: tuple[int, str] | None = None  # (port, path) answered 200 when ready
    # A check of the health service (render.health_checks) that `up` polls as
    # /ready/<check> instead of `probe`, for a server one GET cannot tell ready (Ollama).
    ready_check: str | None = None
    depends_on: tuple[str, ...] = ()
    secret_env: tuple[str, ...] = ()
    # Services that must be ready before `up` starts this one. Start order only, so not part
    # of the config hash; `depends_on` says what a service uses at run time (compose, reloads).
    start_after: tuple[str, ...] = ()
    # How `up` replaces it when it changes (START_FIRST, STOP_FIRST, IN_PLACE); not hashed.
    update: str = IN_PLACE
    # How `up` waits for a model to load (progress-following deadline, loading.py); None:
    # READY_DEADLINES by role. Not hashed: waiting longer changes nothing in the container.
    loading: Loading | None = None
    # Its config files are applied by a reload (nginx): they are compared with the live ones
    # in its config volume instead of being part of the hash, so a change reloads in place.
    reloads_config: bool = False
    # Besides `depends_on`: services whose address it resolves at load (nginx's direct-route
    # upstreams), so recreating one of them reloads it. Not hashed: a route change is a reload.
    reload_after: tuple[str, ...] = ()

    @property
    def config_mount(self) -> str:
        return names.config_dir(self.service)

    @property
    def owner(self) -> tuple[int, int] | None:
        """`user` as numbers (uid, gid), or None for the image's own user (root)."""
        return parse_user(self.user)

    def config_hash(self) -> str:
        """Stable digest of every setting; secret values enter only as their own digests."""
        data = asdict(self)
        # How `up` orders, waits and switches, not the container itself.
        for how in ("start_after", "ready_check", "update", "reloads_config", "loading",
                    "reload_after"):
            del data[how]
        data["env"] = {k: (_digest(v.encode()) if k in self.secret_env else v)
                       for k, v in sorted(self.env.items())}
        data["config"] = {k: _digest(v) for k, v in sorted(self.config.items())}
        if self.reloads_config:
            data["config"] = sorted(self.config)  # the names only: contents reload
        data["resources"] = self.resources.model_dump()
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return _digest(blob)[:16]


def parse_user(user: str | None) -> tuple[int, int] | None:
    """A container user "uid[:gid]" as (uid, gid); None for none (the image's own user)."""
    if not user:
        return None
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hardening(key: str, resources: Resources) -> dict[str, Any]:
    """The security settings of the image of `images:` key `key`: an image that runs as any
    uid (images.ServiceImage.any_uid: local builds and upstream alike) runs as OWN_UID on a
    read-only root with no capability; the others as their root user with ROOT_IMAGE_CAPS."""
    any_uid = images.SERVICE_IMAGES[key].any_uid
    return {"user": OWN_UID if any_uid else None, "read_only": any_uid,
            "cap_add": () if any_uid else ROOT_IMAGE_CAPS,
            "resources": resources, "pids_limit": resources.pids or DEFAULT_PIDS}


def desired(spec: StackSpec, rendered: Rendered, internal_key: str,
            pins: Mapping[str, str] | None = None) -> list[ServiceSpec]:
    """The containers of the stack in start order: health, models, litellm, edge-metrics
    (with `observability.metrics`), nginx, prometheus (with `observability.prometheus`). `pins`
    maps an hf: source to the commit it was fetched at (stack.lock, `fetch.pins`)."""
    health_image = spec.images.for_key("litellm")  # any image with python3; LiteLLM's is here
    services = [ServiceSpec(
        service=names.HEALTH, role=names.HEALTH, image=health_image,
        entrypoint=["python3"],
        command=[f"{names.config_dir(names.HEALTH)}/healthd.py",
                 f"{names.config_dir(names.HEALTH)}/health.json"],
        config=rendered.services[names.HEALTH],
        **_hardening("litellm", Resources(memory="128m", pids=64)),
        probe=(names.HEALTH_PORT, "/live"),
    )]
    # Start order: health first (readiness probes run in its container: `up` starts what
    # waits for health once its container runs); the models and LiteLLM together (LiteLLM
    # needs no backend to start, so a cold `up` takes about as long as its slowest service),
    # except that models sharing a GPU start one at a time (gpu.start_after); nginx last,
    # once everything behind it answers.
    after_health = (names.HEALTH,)
    gpu_waits = gpu.start_after(spec.models)
    model_services = []
    for index, model in enumerate(spec.models):
        backend = BACKENDS[model.backend]
        image = spec.image_for(model)
        launch = backend.launch(model, Placement(
            image=image, memory_fraction=gpu.memory_fraction(spec.models, model),
            metrics=spec.observability.metrics),
            pin=(pins or {}).get(model.source, ""))
        service = names.model_service(model.name)
        model_services.append(service)
        services.append(ServiceSpec(
            service=service, role="model", image=image, command=launch.command,
            env=dict(launch.env), mounts=launch.mounts, gpus=model.gpu_ids,
            # Every container has a memory limit: a model's defaults to its estimated needs.
            shm_size=launch.shm_size, probe=(backend.port, backend.health_path),
            ready_check=(names.model_check(model.name)
                         if backend.ready_check(model, "") is not None else None),
            start_after=after_health + tuple(names.model_service(m)
                                             for m in gpu_waits.get(model.name, [])),
            update=model_update(model),
            loading=Loading(float(model.load_timeout), f"models[{index}].load_timeout",
                            backend.load_phases),
            **_hardening(spec.image_key(model), sizing.model_resources(model)),
        ))
    litellm_env = {"LITELLM_MASTER_KEY": internal_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                   "HOME": "/tmp", "LITELLM_LOG": "ERROR",
                   # Its client side gives up on idle backend connections first (keepalive.py).
                   "AIOHTTP_KEEPALIVE_TIMEOUT": str(keepalive.litellm_client_s(
                       BACKENDS[m.backend].idle_keepalive_s for m in spec.models))}
    services.append(ServiceSpec(
        service=names.LITELLM, role=names.LITELLM, image=spec.images.for_key("litellm"),
        # The entrypoint is named: upstream's image starts a wrapper script instead.
        entrypoint=["litellm"],
        command=["--config", f"{names.config_dir(names.LITELLM)}/litellm.yaml", "--host", "0.0.0.0",
                 "--port", str(names.LITELLM_PORT), "--num_workers", "1",
                 "--keepalive_timeout", str(keepalive.LITELLM_SERVER_S)],
        env=litellm_env, secret_env=("LITELLM_MASTER_KEY",),
        config=rendered.services[names.LITELLM],
        probe=(names.LITELLM_PORT, names.LITELLM_READY_PATH),
        depends_on=tuple(model_services), start_after=after_health, update=START_FIRST,
        **_hardening("litellm", spec.resources.litellm),
    ))
    edge = [edge_metrics(spec, rendered)] if spec.edge_counts() else []
    services += edge
    ports = {f"{names.NGINX_PORTS[n]}/tcp": (lst.bind, lst.port)
             for n, lst in spec.listeners if lst.enabled}
    # Probe nginx on a plain listener inside the network; TLS-only stacks fall back to none.
    plain = [n for n in ("local", "lan") if getattr(spec.listeners, n).enabled]
    nginx_probe = (names.NGINX_PORTS[plain[0]], "/health") if plain else None
    services.append(ServiceSpec(
        service=names.NGINX, role=names.NGINX, image=spec.images.for_key("nginx"),
        # `-e stderr`: the log before the config is read goes to stderr, not to a compiled-in
        # path that images lay out differently (and a read-only root cannot create).
        entrypoint=["nginx"],
        command=["-e", "stderr", "-c", f"{names.config_dir(names.NGINX)}/nginx.conf", "-g",
                 "daemon off;"],
        ports=ports, config=rendered.services[names.NGINX], probe=nginx_probe,
        mounts=[nginx_spool(spec.project), *(m for e in edge for m in e.mounts)],
        tmpfs=dict(NGINX_TMPFS), reloads_config=True,
        # edge-metrics: compose starts it first, so the shared volume takes its image's
        # ownership; recreating it reloads nginx (harmless: the socket reconnects anyway).
        depends_on=(names.LITELLM, names.HEALTH, *(e.service for e in edge)),
        start_after=(names.HEALTH, *model_services, names.LITELLM, *(e.service for e in edge)),
        reload_after=tuple(names.model_service(m.name) for m in spec.models
                           if m.route == "direct"),
        **_hardening("nginx", spec.resources.nginx),
    ))
    if spec.observability.prometheus:
        services.append(prometheus(spec, internal_key))
    return services


# While a model is replaced stop-first, this answers for it under its name: every request
# gets 503 with a JSON error (through LiteLLM), never a connection error. Stdlib only;
# one connection per request, so LiteLLM keeps none of its connections once it is gone.
PLACEHOLDER_SCRIPT = (
    "import sys\n"
    "from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer\n"
    "BODY = (b'{\"error\":{\"message\":\"This model is restarting; retry shortly.\",'\n"
    "        b'\"type\":\"service_unavailable\",\"param\":null,'\n"
    "        b'\"code\":\"model_restarting\"}}\\n')\n"
    "class Restarting(BaseHTTPRequestHandler):\n"
    "    def answer(self):\n"
    "        length = int(self.headers.get('Content-Length') or 0)\n"
    "        if length:\n"
    "            self.rfile.read(length)\n"
    "        self.send_response(503)\n"
    "        self.send_header('Content-Type', 'application/json')\n"
    "        self.send_header('Content-Length', str(len(BODY)))\n"
    "        self.send_header('Connection', 'close')\n"
    "        self.end_headers()\n"
    "        self.wfile.write(BODY)\n"
    "    do_GET = do_POST = answer\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "ThreadingHTTPServer(('0.0.0.0', int(sys.argv[1])), Restarting).serve_forever()\n"
)
PLACEHOLDER = "placeholder"  # its role


def placeholder(svc: ServiceSpec, image: str) -> ServiceSpec:
    """The container that answers 503 for model `svc` while it restarts stop-first: on the
    model's port, in `image` (any with python3: the health service's)."""
    port = svc.probe[0] if svc.probe else 8000
    return ServiceSpec(service=svc.service, role=PLACEHOLDER, image=image,
                       entrypoint=["python3", "-c", PLACEHOLDER_SCRIPT], command=[str(port)],
                       probe=(port, "/"),
                       # `image` is the health service's: the `litellm` images key's.
                       **_hardening("litellm", Resources(memory="64m", pids=32)))


def model_update(model: ModelSpec) -> str:
    """How a changed model is replaced: its `update`, else start-first, except for a model
    with GPUs of its own (no gpu_share): a second container would not get them."""
    if model.update:
        return model.update
    return STOP_FIRST if model.gpu_ids and not model.gpu_share else START_FIRST


UPDATE_WHY = {
    START_FIRST: "start-first: the new container starts beside the old one; traffic moves "
                 "when it is ready, the old one stops once idle",
    STOP_FIRST: "stop-first: the old container stops first; its requests get JSON "
                "errors (503) until the new one is ready",
    IN_PLACE: "in place",
}


# --- Comparing with what runs -----------------------------------------------------------------


@dataclass(frozen=True)
class Actual:
    """One existing container of the project, as the engine reports it."""

    service: str
    container_id: str
    config_hash: str
    image_id: str
    status: str  # running | exited | created | restarting | paused | dead
    owner: str = ""  # the id of the stack folder that made it ("" before ownership labels)


@dataclass(frozen=True)
class Action:
    kind: str  # create | recreate | remove | keep | reload
    service: str
    reason: str
    how: str = ""  # for recreate: START_FIRST | STOP_FIRST | IN_PLACE

    def to_dict(self) -> dict[str, str]:
        data = {"action": self.kind, "service": self.service, "reason": self.reason}
        if self.how:
            data["update"] = self.how
        return data


def diff(wanted: list[ServiceSpec], actual: list[Actual], image_ids: dict[str, str | None],
         secrets_current: bool = True, owner: str = "", config_current: bool = True
         ) -> list[Action]:
    """What `up` must do so that what runs equals what is wanted.

    `image_ids` maps each wanted image tag to its id on the engine (None when missing);
    `secrets_current` says whether nginx's secret files match the desired ones, and
    `config_current` whether its config files (nginx.conf) do; `owner` is
    the deploying folder's id: a container another folder made is recreated (only reached
    with --take-over, see deploy.check_owner).
    """
    by_service = {a.service: a for a in actual}
    actions: list[Action] = []
    changed: set[str] = set()
    swapped: list[str] = []  # models replaced start-first
    for svc in wanted:
        have = by_service.get(svc.service)
        if have is None:
            actions.append(Action("create", svc.service, "not created yet"))
            changed.add(svc.service)
            continue
        reason = ""
        if owner and have.owner and have.owner != owner:
            reason = "made by another stack folder (--take-over)"
        elif have.config_hash != svc.config_hash():
            reason = "configuration changed"
        elif image_ids.get(svc.image) and have.image_id != image_ids[svc.image]:
            reason = f"image {svc.image} was rebuilt or updated"
        elif have.status != "running":
            reason = f"container is {have.status}"
        if not reason and svc.role == names.LITELLM and set(swapped) & set(svc.depends_on):
            # LiteLLM keeps pooled connections to the old model container: a fresh LiteLLM
            # lets the old model go idle, and nginx moves to it by a graceful reload.
            reason = "drops its connections to replaced " + ", ".join(swapped)
        if reason:
            # A container that is not running serves nothing: nothing to start beside.
            how = svc.update if have.status == "running" else IN_PLACE
            actions.append(Action("recreate", svc.service, reason, how))
            changed.add(svc.service)
            if svc.role == "model" and how == START_FIRST:
                swapped.append(svc.service)
        elif svc.role == names.NGINX and (changed & {*svc.depends_on, *svc.reload_after}):
            # nginx resolves upstream names at load: a recreated upstream needs a reload.
            actions.append(Action("reload", svc.service, "upstream recreated: " + ", ".join(
                sorted(changed & {*svc.depends_on, *svc.reload_after}))))
        elif svc.role == names.NGINX and not config_current:
            actions.append(Action("reload", svc.service, "nginx.conf changed"))
        elif svc.role == names.NGINX and not secrets_current:
            actions.append(Action("reload", svc.service, "keys or certificate changed"))
        else:
            actions.append(Action("keep", svc.service, "up to date"))
    wanted_names = {s.service for s in wanted}
    for have in actual:
        if have.service not in wanted_names:
            leftover = have.service.endswith((names.NEXT, names.OLD, names.HOLD))
            actions.append(Action("remove", have.service, "left over from an interrupted "
                                  "update" if leftover else "no longer in stack.yaml"))
    return actions


def is_noop(actions: list[Action]) -> bool:
    return all(a.kind == "keep" for a in actions)
