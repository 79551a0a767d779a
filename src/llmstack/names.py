"""Names of the Docker objects of a project: one place, so plan and engine agree."""

from __future__ import annotations

import hashlib
import re

LABEL_PROJECT = "llmstack.project"
LABEL_SERVICE = "llmstack.service"
LABEL_HASH = "llmstack.config-hash"
LABEL_ROLE = "llmstack.role"  # model | litellm | health | nginx

LITELLM, HEALTH, NGINX = "litellm", "health", "nginx"
LITELLM_PORT, HEALTH_PORT = 4000, 8090
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


def network(project: str) -> str:
    return f"{project}-net"


def config_dir(service: str) -> str:
    """The folder a service's config volume is mounted on in its container."""
    return f"{CONFIG_ROOT}/{service}"


def config_volume(project: str, service: str) -> str:
    return f"{project}-{service}-config"


SPOOL_SUFFIX = "nginx-spool"


def spool_volume(project: str) -> str:
    """nginx's disk-backed volume for request bodies larger than its buffer."""
    return f"{project}-{SPOOL_SUFFIX}"


# The Hugging Face cache on each engine host: `hf:` sources are fetched into it once (a
# short-lived fetch container) and model containers mount it read-only. One per host, shared
# by every project there (the cache is content-addressed); `down --volumes` keeps it.
HF_CACHE_VOLUME = "llmstack-hf-cache"
