"""Names of the Docker objects of a project: one place, so plan and engine agree."""

from __future__ import annotations

import hashlib
import re

LABEL_PROJECT = "llmstack.project"
LABEL_SERVICE = "llmstack.service"
LABEL_HASH = "llmstack.config-hash"
LABEL_ROLE = "llmstack.role"  # model | litellm | health | nginx | edge-metrics
# The stack folder that made a container: its stable id (.llmstack-id) and, for messages,
# where it is ("host:/path"). Another folder naming the same project is refused.
LABEL_OWNER = "llmstack.owner"
LABEL_OWNER_FOLDER = "llmstack.owner-folder"

LITELLM, HEALTH, NGINX = "litellm", "health", "nginx"
LITELLM_PORT, HEALTH_PORT = 4000, 8090
# nginx's own counts (`observability.metrics`): mtail turns the lines nginx sends it into
# Prometheus metrics on this port (project network only).
EDGE_METRICS, EDGE_METRICS_PORT = "edge-metrics", 3903
# The optional Prometheus of the stack (`observability.prometheus`).
PROMETHEUS, PROMETHEUS_PORT = "prometheus", 9090
# LiteLLM's own probe routes: ready once its router is up; live while the process is.
LITELLM_READY_PATH, LITELLM_LIVE_PATH = "/health/readiness", "/health/liveliness"
# Ports nginx listens on inside its container; stack.yaml's ports are published onto them.
NGINX_PORTS = {"local": 8080, "lan": 8081, "https": 8443}
# Where each service finds its config volume inside its container: CONFIG_ROOT/<service>.
CONFIG_ROOT = "/etc/llmstack"


def model_check(model_name: str) -> str:
    """The health service's name for a model's readiness check (health.json, /ready/<name>)."""
    return f"model:{model_name}"


def model_service(model_name: str) -> str:
    """A DNS- and container-safe service name for a model; a hash keeps lossy slugs unique."""
    slug = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")[:40] or "model"
    if slug != model_name:
        slug += "-" + hashlib.sha256(model_name.encode()).hexdigest()[:6]
    return f"model-{slug}"


def container(project: str, service: str) -> str:
    return f"{project}-{service}"


# A start-first replacement runs as SERVICE_next until it is ready; the container it replaces
# is renamed SERVICE_old until it is idle (for a stop-first one: its 503 placeholder). "_" is
# in no service name (model slugs are [a-z0-9-]), so these never collide with a service.
NEXT, OLD = "_next", "_old"
HOLD = "_hold"  # the 503 placeholder of a model replaced stop-first, before it takes the name


def service_key(project: str, container_name: str, label: str) -> str:
    """The key a container is known by: its name without the project prefix (a service, or
    SERVICE_next / SERVICE_old during an update); the service label for a foreign name."""
    prefix = f"{project}-"
    return container_name[len(prefix):] if container_name.startswith(prefix) else label


def network(project: str) -> str:
    return f"{project}-net"


def config_dir(service: str) -> str:
    """The folder a service's config volume is mounted on in its container."""
    return f"{CONFIG_ROOT}/{service}"


def config_volume(project: str, service: str) -> str:
    return f"{project}-{service}-config"


def history_volume(project: str) -> str:
    """The stack's recorded revisions (llmstack.history)."""
    return f"{project}-history"


SPOOL_SUFFIX = "nginx-spool"


def spool_volume(project: str) -> str:
    """nginx's disk-backed volume for request bodies larger than its buffer."""
    return f"{project}-{SPOOL_SUFFIX}"


EDGE_LOG_SUFFIX = "edge-log"


def edge_log_volume(project: str) -> str:
    """The volume nginx and the edge-metrics service share: mtail's log socket lives there."""
    return f"{project}-{EDGE_LOG_SUFFIX}"


PROMETHEUS_DATA_SUFFIX = "prometheus-data"


def prometheus_volume(project: str) -> str:
    """The optional Prometheus's time-series data (kept by `down`, removed by --volumes)."""
    return f"{project}-{PROMETHEUS_DATA_SUFFIX}"


# The Hugging Face cache on each engine host: `hf:` sources are fetched into it once (a
# short-lived fetch container) and model containers mount it read-only. One per host, shared
# by every project there (the cache is content-addressed); `down --volumes` keeps it.
HF_CACHE_VOLUME = "llmstack-hf-cache"
