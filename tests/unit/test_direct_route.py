"""`route: direct` in the pure core: spec, rendered nginx.conf, plan, backends, key maps.

What nginx does with these files (the body's model, the upstream it picks, the answers) is
checked against the real nginx in tests/integration/test_direct_route.py.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

import pytest
import yaml

from llmstack import initialize, names, plan, render, secrets, spec
from llmstack.backends import vllm
from llmstack.errors import SpecError
from llmstack.teamkeys import Store, TeamKey, new_secret
from tests.unit.test_plan import ids_for, kinds, running

STARTER = yaml.safe_load(initialize.starter())
CHAT, EMBED = names.model_service("deepseek-coder"), names.model_service("smollm2-embed")
INTERNAL = secrets.new_key()


def stack(change: Any = None) -> spec.StackSpec:
    data = copy.deepcopy(STARTER)
    if change:
        change(data)
    return spec.parse(yaml.safe_dump(data, sort_keys=False))


def direct(*which: int) -> Any:
    def change(data: dict[str, Any]) -> None:
        for i in which:
            data["models"][i]["route"] = "direct"
    return change


def nginx_conf(s: spec.StackSpec) -> str:
    return render.render(s).files()["nginx.conf"].decode()


def test_route_defaults_to_gateway_and_a_gateway_stack_renders_as_before() -> None:
    s = stack()
    assert {m.route for m in s.models} == {"gateway"}
    conf = nginx_conf(s)
    assert "proxy_pass http://litellm;" in conf
    assert "mirror" not in conf and "$request_body" not in conf and "route=" not in conf
    assert render.direct_routes(s) == []


def test_direct_models_get_an_upstream_and_every_public_name_case_sensitively() -> None:
    s = stack(direct(0, 1))
    conf = nginx_conf(s)
    routes = {r.names[0]: r for r in render.direct_routes(s)}
    chat = routes["deepseek-coder"]
    assert chat.names == ("deepseek-coder", "qwen-coder", "mistral")
    assert chat.host == names.container(s.project, CHAT) and chat.port == 8080
    assert f"upstream {chat.upstream} {{\n        server {chat.host}:8080 max_fails=0;" in conf
    for name in chat.names:
        regex = "^" + render.pcre_literal(name) + "$"
        assert f"{render.nginx_double_quoted('~' + regex)} {chat.upstream};" in conf
    assert f'"~^smollm2\\\\-embed$" {routes["smollm2-embed"].upstream};' in conf
    # The body is read before proxy_pass picks the upstream; only LiteLLM gets the internal key.
    assert "mirror_request_body on;" in conf and "proxy_pass http://$llmstack_route;" in conf
    assert "proxy_set_header Authorization $llmstack_route_auth;" in conf
    assert "route=$llmstack_route" in conf
    # An alias's answer names the alias, as the gateway's does.
    assert (f'"{chat.upstream}|qwen-coder" \'"model":"deepseek-coder"\';') in conf
    assert not any(f"|{n}\" '\"model\"" in conf for n in ("deepseek-coder", "smollm2-embed"))


def test_no_keepalive_pool_towards_a_direct_model() -> None:
    """llama.cpp closes connections after streamed answers: a pooled one raced (502)."""
    conf = nginx_conf(stack(direct(0)))
    [route] = render.direct_routes(stack(direct(0)))
    upstream = conf[conf.index(f"upstream {route.upstream} {{"):]
    upstream = upstream[:upstream.index("}")]
    assert "keepalive" not in upstream


def test_ollama_cannot_be_routed_direct() -> None:
    def change(data: dict[str, Any]) -> None:
        data["models"] = [{"name": "llama", "backend": "ollama", "source": "ollama:llama3.2",
                           "route": "direct"}]
    with pytest.raises(SpecError) as err:
        stack(change)
    [problem] = [p for p in err.value.problems if p.path == "models[0].route"]
    assert "only to its own model tag" in problem.message
    assert problem.hint.startswith("use route: gateway, or one of: llamacpp")


def test_route_is_checked_as_a_choice() -> None:
    with pytest.raises(SpecError) as err:
        stack(lambda d: d["models"][0].update(route="fast"))
    assert [p.path for p in err.value.problems] == ["models[0].route"]


def test_vllm_serves_every_public_name_on_the_direct_route_only() -> None:
    def model(route: str) -> spec.ModelSpec:
        return spec.ModelSpec(name="coder", aliases=["gpt-4o"], backend="vllm",
                              source="hf:org/coder", gpus=[0], route=route)  # type: ignore[arg-type]

    def served(route: str) -> list[str]:
        cmd = vllm.BACKEND.launch(model(route)).command
        start = cmd.index("--served-model-name") + 1
        return cmd[start:cmd.index("--host")]
    assert served("gateway") == ["coder"]
    assert served("direct") == ["coder", "gpt-4o"]


def wanted(s: spec.StackSpec) -> list[plan.ServiceSpec]:
    return plan.desired(s, render.render(s), INTERNAL)


def test_switching_a_route_reloads_nginx_and_recreates_nothing() -> None:
    before = wanted(stack())
    after = wanted(stack(direct(0)))
    actions = plan.diff(after, running(before), ids_for(after), config_current=False)
    assert kinds(actions)[names.NGINX] == "reload"
    assert {k for k, v in kinds(actions).items() if v != "keep"} == {names.NGINX}


def test_a_recreated_direct_model_reloads_nginx_a_gateway_one_does_not() -> None:
    services = wanted(stack(direct(0)))
    exited = plan.diff(services, running(services, **{CHAT: "exited"}), ids_for(services))
    assert kinds(exited)[names.NGINX] == "reload"
    assert f"upstream recreated: {CHAT}" in next(a.reason for a in exited
                                                   if a.service == names.NGINX)
    other = plan.diff(services, running(services, **{EMBED: "exited"}), ids_for(services))
    assert kinds(other)[names.NGINX] == "keep"
    nginx = next(s for s in services if s.service == names.NGINX)
    assert replace(nginx, reload_after=()).config_hash() == nginx.config_hash()


def test_a_key_whose_models_are_all_gone_allows_none_on_either_route() -> None:
    s = stack()
    _, secret = new_secret()
    store = Store((TeamKey("ci", int(time.time()), secret, models=("removed-model",)),))
    keys = render.render_nginx_keys(secrets.Keys(secrets.new_key(), secrets.new_key()),
                                    time.time(), s, store).decode()
    # "-" names no model: LiteLLM's check and the direct route's map refuse every model,
    # where an empty value would send no header at all (= any model).
    assert '"ci" "-";' in keys
