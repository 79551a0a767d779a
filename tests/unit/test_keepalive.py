"""Idle keep-alive ordering on every hop (a client side gives up before its server) and the
edge passing LiteLLM's errors through, read from what `render` and `plan` produce."""

from __future__ import annotations

import re

import pytest

from llmstack import keepalive, names, plan, render, secrets, spec
from llmstack.backends import BACKENDS
from tests.helpers import REPO
from tests.unit.test_render import block

GOLDEN = REPO / "tests" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "stack.yaml").is_file())


def built(case: str) -> tuple[spec.StackSpec, str, plan.ServiceSpec]:
    stack = spec.parse((GOLDEN / case / "stack.yaml").read_text())
    rendered = render.render(stack)
    services = {s.service: s for s in plan.desired(stack, rendered, secrets.new_key())}
    return stack, rendered.files()["nginx.conf"].decode(), services[names.LITELLM]


def flag(command: list[str], name: str) -> int:
    return int(command[command.index(name) + 1])


@pytest.mark.parametrize("case", CASES)
def test_nginx_drops_idle_connections_to_litellm_before_litellm_does(case: str) -> None:
    _, conf, litellm = built(case)
    upstream = block(conf, "upstream litellm")
    nginx_idle = int(re.search(r"keepalive_timeout (\d+)s;", upstream).group(1))  # type: ignore[union-attr]
    litellm_idle = flag(litellm.command, "--keepalive_timeout")
    assert nginx_idle < litellm_idle, (nginx_idle, litellm_idle)
    assert litellm_idle - nginx_idle >= 5  # a margin, not a tie


@pytest.mark.parametrize("case", CASES)
def test_litellm_drops_idle_backend_connections_before_every_backend_does(case: str) -> None:
    stack, _, litellm = built(case)
    client_idle = int(litellm.env["AIOHTTP_KEEPALIVE_TIMEOUT"])
    for model in stack.models:
        server_idle = BACKENDS[model.backend].idle_keepalive_s
        if server_idle is not None:
            assert client_idle < server_idle, (model.name, client_idle, server_idle)
    assert client_idle >= 1


def test_the_shortest_server_decides_and_servers_that_never_close_change_nothing() -> None:
    assert keepalive.litellm_client_s([5, None, 30]) == 2
    assert keepalive.litellm_client_s([None, None]) == keepalive.LITELLM_CLIENT_DEFAULT_S
    assert keepalive.litellm_client_s([]) == keepalive.LITELLM_CLIENT_DEFAULT_S
    assert keepalive.litellm_client_s([1]) == 1
    assert keepalive.litellm_client_s([60]) == 30


def test_every_backend_states_its_servers_idle_keepalive() -> None:
    for backend in BACKENDS.values():
        value = backend.idle_keepalive_s
        assert value is None or (isinstance(value, int) and value > 0), backend.name


@pytest.mark.parametrize("case", CASES)
def test_the_api_route_passes_litellms_errors_through(case: str) -> None:
    """LiteLLM's 400/401/404/429/500 reach the client as LiteLLM wrote them: nginx's error
    pages are only for answers nginx makes itself (limits, its key check, LiteLLM down)."""
    _, conf, _ = built(case)
    api = block(conf, "location ~ ^/v1/(?:models")
    assert "proxy_intercept_errors off;" in api
    assert "proxy_intercept_errors on" not in conf
    # The per-IP message belongs to nginx's own limiters, which answer 429 themselves.
    assert "limit_req_status 429;" in conf and "limit_conn_status 429;" in conf
