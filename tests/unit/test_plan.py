"""The plan: desired containers vs what runs -> create / keep / recreate / remove / reload.

Pure: no engine. `Actual` rows are what the engine would report for each container.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import yaml

from llmstack import images, initialize, names, plan, render, secrets, sizing, spec
from llmstack.plan import Action, Actual, ServiceSpec

INTERNAL = secrets.new_key()
STARTER = yaml.safe_load(initialize.starter())
CHAT, EMBED = names.model_service("deepseek-coder"), names.model_service("smollm2-embed")


def wanted(change: Any = None, internal: str = INTERNAL) -> list[ServiceSpec]:
    data = copy.deepcopy(STARTER)
    if change:
        change(data)
    stack = spec.parse(yaml.safe_dump(data, sort_keys=False))
    return plan.desired(stack, render.render(stack), internal)


def running(services: list[ServiceSpec], **status: str) -> list[Actual]:
    """What the engine reports after a successful `up` of `services`."""
    return [Actual(s.service, f"id-{s.service}", s.config_hash(), image_id(s.image),
                   status.get(s.service, "running")) for s in services]


def image_id(tag: str) -> str:
    return "sha256:" + tag.replace("/", "_")


def ids_for(services: list[ServiceSpec]) -> dict[str, str | None]:
    return {s.image: image_id(s.image) for s in services}


def kinds(actions: list[Action]) -> dict[str, str]:
    return {a.service: a.kind for a in actions}


def reason(actions: list[Action], service: str) -> str:
    return next(a.reason for a in actions if a.service == service)


# --- desired state ------------------------------------------------------------------------------


def test_desired_services_in_dependency_order() -> None:
    services = wanted()
    assert [s.service for s in services] == [names.HEALTH, CHAT, EMBED, names.LITELLM,
                                             names.EDGE_METRICS, names.NGINX]
    litellm = services[3]
    assert set(litellm.depends_on) == {CHAT, EMBED}
    assert services[-1].depends_on == (names.LITELLM, names.HEALTH, names.EDGE_METRICS)


def test_edge_metrics_shares_only_the_log_socket_volume_with_nginx() -> None:
    by_name = {s.service: s for s in wanted()}
    edge, nginx = by_name[names.EDGE_METRICS], by_name[names.NGINX]
    shared = [m for m in edge.mounts if m in nginx.mounts]
    assert [m.source for m in edge.mounts] == [m.source for m in shared] == \
        [names.edge_log_volume(STARTER["project"])]
    assert not edge.ports and edge.user == plan.OWN_UID and edge.read_only
    # The socket nginx logs to is the one mtail reads.
    assert f"unixgram://{render.EDGE_LOG_SOCKET}" in edge.command
    assert render.EDGE_LOG_SOCKET in by_name[names.NGINX].config["nginx.conf"].decode()
    assert edge.image == images.MTAIL.tag
    # Without observability.metrics: no edge-metrics service and no syslog line.
    off = {s.service: s for s in wanted(lambda d: d.update(observability={"metrics": False}))}
    assert names.EDGE_METRICS not in off
    assert b"syslog:" not in off[names.NGINX].config["nginx.conf"]
    assert all(m.source != names.edge_log_volume(STARTER["project"])
               for m in off[names.NGINX].mounts)


def test_only_nginx_publishes_ports_on_the_listener_addresses() -> None:
    by_name = {s.service: s for s in wanted()}
    assert by_name[names.NGINX].ports == {
        f"{names.NGINX_PORTS['local']}/tcp": ("127.0.0.1", 4000),
        f"{names.NGINX_PORTS['lan']}/tcp": ("127.0.0.1", 8080),
        f"{names.NGINX_PORTS['https']}/tcp": ("127.0.0.1", 443),
    }
    assert all(not s.ports for n, s in by_name.items() if n != names.NGINX)


def test_embedding_model_gets_embedding_flags_and_probes() -> None:
    by_name = {s.service: s for s in wanted()}
    assert "--embeddings" in by_name[EMBED].command
    assert "--embeddings" not in by_name[CHAT].command
    assert by_name[CHAT].probe == (8080, "/health")  # llama.cpp images are built for 8080
    assert by_name[names.LITELLM].probe == (names.LITELLM_PORT, "/health/readiness")
    assert by_name[names.NGINX].probe == (names.NGINX_PORTS["local"], "/health")
    mount = by_name[CHAT].mounts[0]
    assert (mount.source, mount.target, mount.read_only) == ("llmstack-models", "/models", True)


def test_master_key_reaches_litellm_only_through_its_environment() -> None:
    services = wanted()
    litellm = next(s for s in services if s.service == names.LITELLM)
    assert litellm.env["LITELLM_MASTER_KEY"] == INTERNAL
    for s in services:
        assert INTERNAL not in s.config_hash()
        for data in s.config.values():
            assert INTERNAL.encode() not in data
        if s.service != names.LITELLM:
            assert INTERNAL not in s.env.values()


def test_config_hash_is_stable() -> None:
    first = [s.config_hash() for s in wanted()]
    assert first == [s.config_hash() for s in wanted()]
    assert len(set(first)) == len(first)


def test_every_service_has_a_memory_limit_models_by_their_estimate() -> None:
    by_name = {s.service: s for s in wanted()}
    assert all(s.resources.memory for s in by_name.values())
    # The demo model (SmolLM2-135M Q4_1): well above llama-server's 150-250 MiB.
    assert by_name[CHAT].resources.memory == "1280m"
    assert by_name[EMBED].resources.memory == sizing.default_memory(
        spec.ModelSpec.model_validate(STARTER["models"][1]))


def test_a_models_own_memory_limit_wins_and_cpus_pids_stay() -> None:
    def set_resources(d: dict[str, Any]) -> None:
        d["models"][0]["resources"] = {"memory": "3g", "cpus": 2}
        d["models"][1]["resources"] = {"pids": 128}

    by_name = {s.service: s for s in wanted(set_resources)}
    chat, embed = by_name[CHAT].resources, by_name[EMBED].resources
    assert (chat.memory, chat.cpus, chat.pids) == ("3g", 2, None)
    assert (embed.memory, embed.pids) == ("1g", 128)
    assert by_name[CHAT].config_hash() != {s.service: s for s in wanted()}[CHAT].config_hash()
    # pids: the model's own, else the default every container gets.
    assert (by_name[CHAT].pids_limit, by_name[EMBED].pids_limit) == (plan.DEFAULT_PIDS, 128)


def test_security_settings_are_decided_by_the_plan_per_image_key() -> None:
    def upstream_and_root(d: dict[str, Any]) -> None:
        # llama.cpp's upstream image runs as any uid, like the local build; vLLM needs root.
        d["images"] = {"source": "registry"}
        d["models"][0].update(backend="vllm", source="hf:org/repo", gpus=[0])

    by_name = {s.service: s for s in wanted(upstream_and_root)}
    own, root = by_name[EMBED], by_name[CHAT]
    assert own.image == images.SERVICE_IMAGES["llamacpp"].registry
    assert (own.user, own.read_only, own.cap_add) == (plan.OWN_UID, True, ())
    assert (root.user, root.read_only, root.cap_add) == (None, False, plan.ROOT_IMAGE_CAPS)
    assert (root.owner, own.owner) == (None, (10001, 10001))
    for key in ("nginx", "litellm"):
        svc = by_name[names.NGINX if key == "nginx" else names.LITELLM]
        assert svc.image == images.SERVICE_IMAGES[key].registry and svc.user == plan.OWN_UID
    for svc in by_name.values():
        assert svc.cap_drop == ("ALL",) and svc.no_new_privileges and svc.init
        assert svc.restart == "unless-stopped"
    assert by_name[names.HEALTH].pids_limit == 64 and by_name[names.NGINX].pids_limit == 256


@pytest.mark.parametrize("change", [{"cap_add": ("NET_RAW",)}, {"no_new_privileges": False},
                                    {"pids_limit": 99}, {"init": False}, {"restart": "no"},
                                    {"cap_drop": ()}])
def test_config_hash_covers_the_security_settings(change: dict[str, Any]) -> None:
    svc = wanted()[0]
    assert replace(svc, **change).config_hash() != svc.config_hash()


def test_changing_one_models_args_changes_only_that_models_hash() -> None:
    before = {s.service: s.config_hash() for s in wanted()}
    after = {s.service: s.config_hash() for s in wanted(
        lambda d: d["models"][0].update(args=["--threads", "1"]))}
    assert {n for n in before if before[n] != after[n]} == {CHAT}


def test_new_internal_key_changes_only_litellms_hash() -> None:
    before = {s.service: s.config_hash() for s in wanted()}
    after = {s.service: s.config_hash() for s in wanted(internal=secrets.new_key())}
    assert {n for n in before if before[n] != after[n]} == {names.LITELLM}


def test_changing_aliases_changes_only_litellms_config() -> None:
    before = {s.service: s.config_hash() for s in wanted()}
    after = {s.service: s.config_hash() for s in wanted(
        lambda d: d["models"][0].update(aliases=["qwen-coder"]))}
    assert {n for n in before if before[n] != after[n]} == {names.LITELLM}


def test_renaming_a_model_replaces_its_container() -> None:
    old = wanted()
    new = wanted(lambda d: d["models"][0].update(name="coder"))
    actions = plan.diff(new, running(old), ids_for(new))
    renamed = names.model_service("coder")
    assert kinds(actions)[renamed] == "create"
    assert Action("remove", CHAT, "no longer in stack.yaml") in actions
    assert kinds(actions)[names.LITELLM] == "recreate"
    assert kinds(actions)[names.HEALTH] == "recreate"  # it probes every model by name


# --- diff ---------------------------------------------------------------------------------------


def test_nothing_running_creates_everything_in_order() -> None:
    services = wanted()
    actions = plan.diff(services, [], ids_for(services))
    assert [(a.kind, a.service) for a in actions] == [("create", s.service) for s in services]
    assert all(a.reason == "not created yet" for a in actions)
    assert not plan.is_noop(actions)


def test_everything_up_to_date_is_a_noop() -> None:
    services = wanted()
    actions = plan.diff(services, running(services), ids_for(services))
    assert set(kinds(actions).values()) == {"keep"}
    assert plan.is_noop(actions)
    assert actions[0].to_dict() == {"action": "keep", "service": names.HEALTH,
                                    "reason": "up to date"}


def test_changed_model_args_replace_that_model_start_first_and_litellm_with_it() -> None:
    old = wanted()
    new = wanted(lambda d: d["models"][0].update(args=["--threads", "1"]))
    actions = plan.diff(new, running(old), ids_for(new))
    assert kinds(actions) == {names.HEALTH: "keep", CHAT: "recreate", EMBED: "keep",
                              names.LITELLM: "recreate", names.EDGE_METRICS: "keep",
                              names.NGINX: "reload"}
    assert reason(actions, CHAT) == "configuration changed"
    # LiteLLM's pooled connections would keep the old model busy: a fresh LiteLLM drops them.
    assert reason(actions, names.LITELLM).startswith(f"drops its connections to replaced {CHAT}")
    hows = {a.service: a.how for a in actions}
    assert hows[CHAT] == hows[names.LITELLM] == plan.START_FIRST
    assert next(a for a in actions if a.service == CHAT).to_dict()["update"] == "start-first"


def test_a_stop_first_model_is_replaced_alone() -> None:
    old = wanted(lambda d: d["models"][0].update(update="stop-first"))
    new = wanted(lambda d: d["models"][0].update(update="stop-first", args=["--threads", "1"]))
    actions = plan.diff(new, running(old), ids_for(new))
    assert kinds(actions) == {names.HEALTH: "keep", CHAT: "recreate", EMBED: "keep",
                              names.LITELLM: "keep", names.EDGE_METRICS: "keep",
                              names.NGINX: "keep"}
    assert next(a for a in actions if a.service == CHAT).how == plan.STOP_FIRST
    assert "errors (503)" in plan.UPDATE_WHY[plan.STOP_FIRST]


@pytest.mark.parametrize(("gpus", "share", "update", "how"), [
    ("cpu", False, None, plan.START_FIRST),
    ([0], False, None, plan.STOP_FIRST),  # its own GPU: two containers cannot both hold it
    ([0], True, None, plan.START_FIRST),  # gpu_share: the new one fits beside the old
    ([0], False, "start-first", plan.START_FIRST),  # the user's word wins
    ("cpu", False, "stop-first", plan.STOP_FIRST),
])
def test_update_strategy_per_model(gpus: object, share: bool, update: str | None,
                                   how: str) -> None:
    def change(d: dict[str, Any]) -> None:
        d["models"][0].update(gpus=gpus, gpu_share=share)
        if gpus != "cpu":
            d["models"][0].update(backend="vllm", source="hf:org/model")
        if update:
            d["models"][0]["update"] = update
        d["models"][1]["gpus"] = "cpu"

    services = {s.service: s for s in wanted(change)}
    assert services[CHAT].update == how
    assert services[names.LITELLM].update == plan.START_FIRST
    assert services[names.NGINX].update == services[names.HEALTH].update == plan.IN_PLACE


def test_rebuilt_image_recreates_its_containers() -> None:
    services = wanted()
    ids = ids_for(services)
    ids["llmstack/llamacpp:forky"] = "sha256:rebuilt"
    actions = plan.diff(services, running(services), ids)
    assert {n for n, k in kinds(actions).items() if k == "recreate"} == {CHAT, EMBED,
                                                                         names.LITELLM}
    assert reason(actions, CHAT) == "image llmstack/llamacpp:forky was rebuilt or updated"


def test_missing_image_is_not_a_reason_to_recreate() -> None:
    services = wanted()
    ids: dict[str, str | None] = dict.fromkeys(ids_for(services))
    assert plan.is_noop(plan.diff(services, running(services), ids))


def test_exited_container_is_recreated() -> None:
    services = wanted()
    actions = plan.diff(services, running(services, **{CHAT: "exited"}), ids_for(services))
    assert kinds(actions)[CHAT] == "recreate"
    assert reason(actions, CHAT) == "container is exited"
    assert next(a for a in actions if a.service == CHAT).how == plan.IN_PLACE
    assert [k for n, k in kinds(actions).items() if n != CHAT] == ["keep"] * 5


def test_orphan_container_is_removed() -> None:
    old = wanted()
    new = wanted(lambda d: d.update(models=d["models"][:1]))
    actions = plan.diff(new, running(old), ids_for(new))
    assert actions[-1] == Action("remove", EMBED, "no longer in stack.yaml")
    assert kinds(actions)[names.LITELLM] == "recreate"  # its model list changed
    assert kinds(actions)[CHAT] == "keep"


def test_recreated_upstream_reloads_nginx() -> None:
    services = wanted()
    actual = running(services)
    actual = [replace(a, config_hash="stale") if a.service == names.LITELLM else a
              for a in actual]
    actions = plan.diff(services, actual, ids_for(services))
    assert kinds(actions)[names.LITELLM] == "recreate"
    assert kinds(actions)[names.NGINX] == "reload"
    assert reason(actions, names.NGINX) == "upstream recreated: litellm"


def test_recreated_model_alone_does_not_touch_nginx() -> None:
    services = wanted()
    actions = plan.diff(services, running(services, **{EMBED: "exited"}), ids_for(services))
    assert kinds(actions)[names.NGINX] == "keep"


def test_changed_secrets_reload_nginx() -> None:
    services = wanted()
    actions = plan.diff(services, running(services), ids_for(services), secrets_current=False)
    assert kinds(actions)[names.NGINX] == "reload"
    assert reason(actions, names.NGINX) == "keys or certificate changed"
    assert [k for n, k in kinds(actions).items() if n != names.NGINX] == ["keep"] * 5
    assert not plan.is_noop(actions)


def test_recreated_nginx_needs_no_reload() -> None:
    services = wanted()
    actual = [a for a in running(services) if a.service != names.NGINX]
    actions = plan.diff(services, actual, ids_for(services), secrets_current=False)
    assert kinds(actions)[names.NGINX] == "create"


def test_changed_listener_port_recreates_nginx_only() -> None:
    old = wanted()
    new = wanted(lambda d: d["listeners"]["local"].update(port=4001))
    actions = plan.diff(new, running(old), ids_for(new))
    assert {n for n, k in kinds(actions).items() if k != "keep"} == {names.NGINX}
    assert kinds(actions)[names.NGINX] == "recreate"


def test_the_optional_prometheus_is_on_loopback_with_the_key_outside_its_config() -> None:
    assert names.PROMETHEUS not in {s.service for s in wanted()}  # off by default
    on = {s.service: s for s in wanted(lambda d: d.update(
        observability={"prometheus": True, "prometheus_port": 19090}))}
    prom = on[names.PROMETHEUS]
    assert prom.ports == {f"{names.PROMETHEUS_PORT}/tcp": ("127.0.0.1", 19090)}
    assert prom.image == images.PROMETHEUS.tag and prom.user == plan.OWN_UID
    config = yaml.safe_load(prom.config["prometheus.yml"])
    # The same scrape config `export prometheus` writes, reading the key from its 0600 file.
    assert {j["job_name"] for j in config["scrape_configs"]} == {
        f"llmstack-{STARTER['project']}-{s}" for s in (
            names.LITELLM, names.EDGE_METRICS, CHAT, EMBED)}
    litellm = next(j for j in config["scrape_configs"] if j["job_name"].endswith("-litellm"))
    assert litellm["authorization"]["credentials_file"] == plan.PROMETHEUS_KEY_FILE
    assert INTERNAL not in prom.config["prometheus.yml"].decode()
    assert prom.env == {plan.PROMETHEUS_KEY_ENV: INTERNAL}
    assert prom.secret_env == (plan.PROMETHEUS_KEY_ENV,)
    assert "umask 077" in prom.entrypoint[2] and f"unset {plan.PROMETHEUS_KEY_ENV}" in \
        prom.entrypoint[2]
    assert [m.source for m in prom.mounts] == [names.prometheus_volume(STARTER["project"])]


def test_prometheus_needs_metrics_and_a_port_of_its_own() -> None:
    with pytest.raises(spec.SpecError) as info:
        wanted(lambda d: d.update(observability={"metrics": False, "prometheus": True}))
    assert "observability.prometheus" in str(info.value)
    with pytest.raises(spec.SpecError) as info:
        wanted(lambda d: d.update(observability={"prometheus": True, "prometheus_port": 4000}))
    assert "observability.prometheus_port" in str(info.value) and "listeners.local" in \
        str(info.value)
