"""The stack's base URLs, one per enabled listener: what `up` prints and `connect` writes."""

from __future__ import annotations

from .spec import StackSpec, url_host

LISTENERS = ("local", "lan", "https")
WILDCARDS = ("0.0.0.0", "::")
# What `up` prints for a listener bound to every address, where no single host name is right.
WILDCARD_HOST = {"local": "localhost", "lan": "<this-host-ip>", "https": ""}


def url(spec: StackSpec, listener: str, address: str | None = None) -> str:
    """The base URL (ending in /v1) of one listener. `address` replaces the host: the name or
    IP clients reach this host by. Without it: the bind address, the domain for https, and
    for a wildcard bind the placeholder `up` prints."""
    lst = getattr(spec.listeners, listener)
    if listener == "https":
        port = "" if lst.port == 443 else f":{lst.port}"
        return f"https://{url_host(address or spec.domain)}{port}/v1"
    host = address or (WILDCARD_HOST[listener] if lst.bind in WILDCARDS else lst.bind)
    return f"http://{url_host(host)}:{lst.port}/v1"


def urls(spec: StackSpec) -> dict[str, str]:
    """The base URL of every enabled listener, in the order local, lan, https."""
    return {name: url(spec, name) for name in LISTENERS
            if getattr(spec.listeners, name).enabled}
