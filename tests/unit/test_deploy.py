"""`up`, its readiness wait, `status` and `down` on the fake engine (tests/fake_engine.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmstack import cli, deploy, edge, loading, names, plan
from llmstack.backends import BACKENDS
from llmstack.errors import DeployError, EngineError, RegistryUnreachable
from llmstack.initialize import init
from llmstack.project import Loaded, load
from tests.fake_engine import FakeEngine

CHAT = names.model_service("deepseek-coder")
EMBED = names.model_service("smollm2-embed")
ALL = [names.HEALTH, CHAT, EMBED, names.LITELLM, names.EDGE_METRICS, names.NGINX]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def event(self, service: str, state: str, detail: str = "") -> None:
        self.seen.append((service, state, detail))

    def states(self, state: str) -> list[str]:
        return [s for s, st, _ in self.seen if st == state]


def up(loaded: Loaded, engine: FakeEngine, events: Events | None = None) -> deploy.UpResult:
    return deploy.up(loaded, engine, events or Events(), local_engine=False)


def plan_only(loaded: Loaded, engine: FakeEngine, take_over: bool = False) -> list[plan.Action]:
    """`llmstack plan`'s actions: the image source decided for the engine first, as `up`."""
    decided = deploy.decide_images(loaded, engine, lambda _: None, fetch=False)[0]
    return deploy.plan_only(decided, engine, take_over)


def starts(engine: FakeEngine) -> list[str]:
    return [c.split(" ", 1)[1] for c in engine.calls if c.startswith("start ")]


# --- up ----------------------------------------------------------------------------------------


def test_registry_images_without_an_mtail_image_run_no_edge_counts(loaded: Loaded) -> None:
    """`auto` deciding registry on an engine without llmstack's mtail build: no edge-metrics
    service, and the nginx.conf `up` ships sends no lines to it."""
    from llmstack import images, pull

    local_only = set(pull.stack_refs(loaded.spec, "local")) - set(
        pull.stack_refs(loaded.spec, "registry"))
    engine = FakeEngine(project=loaded.spec.project, missing_images=local_only)
    result = up(loaded, engine)
    assert images.MTAIL.tag in local_only and "images: registry" in result.images_line
    assert names.EDGE_METRICS not in {a.service for a in result.actions}
    shipped = engine.volumes[names.config_volume(engine.project, names.NGINX)]["nginx.conf"][0]
    assert b"access.sock" not in shipped and b"llmstack_metrics" not in shipped


def test_first_up_creates_every_service_in_dependency_order(loaded: Loaded,
                                                            engine: FakeEngine) -> None:
    engine.answers = {CHAT: ["503", "503", "200"], EMBED: ["503", "200"]}
    events = Events()
    result = up(loaded, engine, events)
    assert result.changed
    assert {a.service: a.kind for a in result.actions} == dict.fromkeys(ALL, "create")
    # LiteLLM, the slowest of the batch after health, starts first in it.
    assert starts(engine) == [names.HEALTH, names.LITELLM, CHAT, EMBED, names.EDGE_METRICS,
                              names.NGINX]
    assert sorted(result.ready_seconds) == sorted(ALL)
    assert {s: engine.state(s)[0] for s in ALL} == dict.fromkeys(ALL, "running")
    assert engine.network
    order = [(s, st) for s, st, _ in events.seen if st in ("starting", "ready")]
    # health first; LiteLLM starts with the models, not after them; nginx once all are ready.
    assert order[:2] == [(names.HEALTH, "starting"), (names.HEALTH, "ready")]
    assert order.index((names.LITELLM, "starting")) < order.index((CHAT, "ready"))
    assert order.index((names.NGINX, "starting")) > max(
        order.index((s, "ready")) for s in (CHAT, EMBED, names.LITELLM))
    assert ("model-" + "x", "waiting") not in order
    assert any(s == CHAT and st == "waiting" and "GET /health -> 503" in d
               for s, st, d in events.seen)
    # Config volumes hold the rendered files; nginx's also its 0600 secret files.
    nginx_volume = engine.volumes[names.config_volume(engine.project, names.NGINX)]
    assert nginx_volume["nginx.conf"] == (loaded.rendered.services[names.NGINX]["nginx.conf"],
                                          0o644)
    assert {n: m for n, (_, m) in nginx_volume.items() if n.startswith("secrets/")} == {
        "secrets/keys.conf": 0o600, "secrets/key-limits.conf": 0o600,
        "secrets/tls.crt": 0o600, "secrets/tls.key": 0o600}


def test_a_second_up_touches_nothing(loaded: Loaded, engine: FakeEngine) -> None:
    up(loaded, engine)
    calls = list(engine.calls)
    again = up(loaded, engine)
    assert not again.changed
    assert {a.kind for a in again.actions} == {"keep"}
    assert engine.calls == calls


def test_a_changed_service_is_recreated_and_nginx_reloaded(loaded: Loaded,
                                                           engine: FakeEngine) -> None:
    up(loaded, engine)
    engine.containers[names.LITELLM].labels[names.LABEL_HASH] = "0" * 16  # an older config
    engine.calls.clear()
    result = up(loaded, engine)
    kinds = {a.service: a.kind for a in result.actions}
    assert kinds == {names.HEALTH: "keep", CHAT: "keep", EMBED: "keep",
                     names.LITELLM: "recreate", names.EDGE_METRICS: "keep",
                     names.NGINX: "reload"}
    # Start-first: the new LiteLLM runs beside the old one and takes its name when ready.
    assert starts(engine) == [names.LITELLM + names.NEXT]
    old, new = names.LITELLM + names.OLD, names.LITELLM + names.NEXT
    # nginx resolves its upstream at load: shipped, tested, reloaded (not restarted); the
    # old LiteLLM stops once nginx's old workers are gone.
    assert engine.calls[-6:] == [f"rename {names.LITELLM} {old}",
                                 f"rename {new} {names.LITELLM}", "write_config nginx",
                                 "nginx -t", "nginx reload", f"remove {old}"]
    assert list(result.ready_seconds) == [names.LITELLM]
    assert sorted(engine.containers) == sorted(ALL)


def test_new_keys_reach_nginx_by_a_reload(loaded: Loaded, engine: FakeEngine) -> None:
    up(loaded, engine)
    volume = engine.volumes[names.config_volume(engine.project, names.NGINX)]
    volume[edge.KEYS_FILE] = (b"# an older key file\n", 0o600)
    engine.calls.clear()
    result = up(loaded, engine)
    assert [(a.kind, a.reason) for a in result.actions if a.service == names.NGINX] == [
        ("reload", "keys or certificate changed")]
    assert engine.calls == ["write_config nginx", "nginx -t", "nginx reload"]
    assert volume[edge.KEYS_FILE] == loaded.nginx_secret_files()[edge.KEYS_FILE]


def test_nginx_refusing_its_new_config_keeps_the_old_one(loaded: Loaded,
                                                         engine: FakeEngine) -> None:
    up(loaded, engine)
    engine.volumes[names.config_volume(engine.project, names.NGINX)][edge.KEYS_FILE] = \
        (b"old", 0o600)
    engine.nginx_test = (1, "nginx: [emerg] unexpected end of file")
    with pytest.raises(DeployError) as err:
        up(loaded, engine)
    assert "nginx rejected its new configuration: nginx: [emerg]" in err.value.message
    assert "nginx reload" not in engine.calls
    # The files nginx runs are put back, so the next `up` still sees the change to make.
    assert engine.volumes[names.config_volume(engine.project, names.NGINX)][edge.KEYS_FILE] \
        == (b"old", 0o600)
    assert {a.service: a.kind for a in plan_only(loaded, engine)}[names.NGINX] \
        == "reload"


def test_an_nginx_conf_change_reloads_nginx_in_place(loaded: Loaded,
                                                     engine: FakeEngine) -> None:
    up(loaded, engine)
    nginx_id = engine.containers[names.NGINX].id
    changed = _edit(loaded, lambda d: d["rate_limit"].update(requests_per_second=50))
    engine.calls.clear()
    result = up(changed, engine)
    assert {a.service: (a.kind, a.reason) for a in result.actions}[names.NGINX] == \
        ("reload", "nginx.conf changed")
    assert engine.calls == ["write_config nginx", "nginx -t", "nginx reload"]
    assert engine.containers[names.NGINX].id == nginx_id  # no new container, no port gap
    volume = engine.volumes[names.config_volume(engine.project, names.NGINX)]
    assert volume["nginx.conf"][0] == changed.rendered.services[names.NGINX]["nginx.conf"]
    assert plan.is_noop(plan_only(changed, engine))
    report = {s.service: s for s in deploy.status(changed, engine).services}
    assert report[names.NGINX].in_sync is True
    # A change of nginx's container itself (its published port) still recreates it.
    moved = _edit(changed, lambda d: d["listeners"]["local"].update(port=4100))
    assert {a.service: a.kind for a in plan_only(moved, engine)}[names.NGINX] \
        == "recreate"


def test_a_removed_service_is_removed_first(loaded: Loaded, engine: FakeEngine) -> None:
    up(loaded, engine)
    engine.containers["model-old"] = engine.containers[CHAT].__class__(
        service="model-old", name=f"{engine.project}-model-old", id="f" * 64, image="x",
        image_id="x", labels={})
    engine.calls.clear()
    events = Events()
    result = up(loaded, engine, events)
    assert ("remove", "model-old") in {(a.kind, a.service) for a in result.actions}
    assert engine.calls == ["remove model-old"]
    assert events.states("removing") == ["model-old"]


class Clock:
    """deploy's time, pretend: each poll's sleep moves it on by a second."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(deploy, "time", fake)
    return fake


def test_a_silent_model_fails_after_ten_minutes_without_progress_with_its_last_log_lines(
        loaded: Loaded, engine: FakeEngine, clock: Clock) -> None:
    engine.answers = {CHAT: ["503"]}
    started = clock.now
    with pytest.raises(DeployError) as err:
        up(loaded, engine)
    message = err.value.message
    waited = clock.now - started
    assert loading.STALL_S < waited < loading.STALL_S + 2 * loading.SAMPLE_S
    assert message.startswith(f"service {CHAT} failed: no sign of progress for 60")
    assert "last phase: starting" in message and "(GET /health -> 503)" in message
    assert "probe: GET /health on port 8080" in message
    assert f"last log lines:\n    {CHAT} starting" in message
    assert f"`llmstack logs {CHAT}`" in err.value.hint and "llmstack up" in err.value.hint
    assert err.value.exit_code == 2
    assert names.NGINX not in starts(engine)


def _loads_slowly(engine: FakeEngine, service: str, lines: list[str]) -> None:
    """The model writes one more log line each time `up` looks (then nothing): a long,
    visible load."""
    real = engine.activity

    def activity(key: str, cursor: str = "") -> Any:
        if key == service and lines:
            engine.containers[key].log.append(lines.pop(0))
        return real(key, cursor)
    engine.activity = activity  # type: ignore[method-assign]


def test_a_model_loading_past_the_old_600_s_deadline_waits_while_it_shows_progress(
        loaded: Loaded, engine: FakeEngine, clock: Clock) -> None:
    lines = ["llama_model_loader: loaded meta data with 27 key-value pairs",
             *[f"load_tensors: layer {i} assigned to device CPU" for i in range(400)]]
    _loads_slowly(engine, CHAT, lines)
    started = clock.now
    # 503 while loading; ready after about 40 minutes, within its 3600 s load_timeout.
    engine.answers = {CHAT: ["503"] * 2400 + ["200"]}
    events = Events()
    result = up(loaded, engine, events)
    assert clock.now - started > 2000
    assert result.ready_seconds[CHAT] > 2000
    waiting = [d for s, st, d in events.seen if s == CHAT and st == "waiting"]
    assert any(d.endswith("; loading tensors") for d in waiting)
    assert engine.state(names.NGINX)[0] == "running"


def test_a_model_that_keeps_loading_fails_at_its_load_timeout(
        loaded: Loaded, engine: FakeEngine, clock: Clock) -> None:
    slow = _edit(loaded, lambda d: d["models"][0].update(load_timeout=120))
    _loads_slowly(engine, CHAT, [f"load_tensors: layer {i}" for i in range(1000)])
    engine.answers = {CHAT: ["503"]}
    started = clock.now
    with pytest.raises(DeployError) as err:
        up(slow, engine)
    assert 120 < clock.now - started < 130
    assert (f"service {CHAT} failed: not ready after 12" in err.value.message
            and "the ceiling models[0].load_timeout sets (120s; last phase: loading tensors)"
            in err.value.message)


def test_disk_reads_and_memory_growth_count_as_progress(
        loaded: Loaded, engine: FakeEngine, clock: Clock) -> None:
    """A loader that logs nothing (mmap of a big GGUF) but reads the disk, then fills memory."""
    real = engine.activity

    def activity(key: str, cursor: str = "") -> Any:
        if key == CHAT:
            c = engine.containers[key]
            if clock.now < 2500:
                c.read_bytes += 64 << 20
            elif clock.now < 4000:
                c.memory_bytes += 64 << 20
        return real(key, cursor)
    engine.activity = activity  # type: ignore[method-assign]
    engine.answers = {CHAT: ["503"] * 3300 + ["200"]}
    result = up(loaded, engine)
    assert result.ready_seconds[CHAT] > 3000


def test_a_crashed_container_fails_fast(loaded: Loaded, engine: FakeEngine) -> None:
    engine.crash = {EMBED}
    engine.answers = {CHAT: ["503"]}  # would wait 600 s: the crash must not wait for it
    with pytest.raises(DeployError) as err:
        up(loaded, engine)
    assert f"service {EMBED} failed: container exited (exit code 1)" in err.value.message
    assert "fatal: cannot load model" in err.value.message
    assert names.NGINX not in starts(engine)


def test_missing_images_are_refused_before_anything_starts(loaded: Loaded,
                                                           engine: FakeEngine) -> None:
    local, upstream = (loaded.spec.images.ref("nginx", s) for s in ("local", "registry"))
    engine.missing_images = {local, upstream}
    engine.registry_error = RegistryUnreachable("registry docker.io did not answer")
    with pytest.raises(Exception) as err:
        up(loaded, engine)
    assert "images missing on the engine: " + local in str(err.value)
    assert "llmstack images build" in err.value.hint  # type: ignore[attr-defined]
    assert engine.calls == [f"registry {upstream}"]  # asked once, nothing started


def test_what_waits_for_health_starts_once_its_container_runs(loaded: Loaded,
                                                              engine: FakeEngine) -> None:
    """Probes run in the health container: the models and LiteLLM need it running, not
    ready (healthd's own checks answer errors until it listens: not ready yet)."""
    engine.answers = {names.HEALTH: ["503", "503", "503", "200"]}
    events = Events()
    up(loaded, engine, events)
    order = [(s, st) for s, st, _ in events.seen if st in ("starting", "ready")]
    assert order.index((CHAT, "starting")) < order.index((names.HEALTH, "ready"))
    assert order.index((names.LITELLM, "starting")) < order.index((names.HEALTH, "ready"))
    assert order.index((names.NGINX, "starting")) > order.index((names.HEALTH, "ready"))


def test_start_order_follows_start_after_not_roles() -> None:
    """A service waits only for what its start_after names (a cycle is reported)."""
    a = plan.ServiceSpec("a", "x", "img", [], probe=None)
    b = plan.ServiceSpec("b", "x", "img", [], probe=None, start_after=("c",))
    c = plan.ServiceSpec("c", "x", "img", [], probe=None, start_after=("a", "gone"))
    engine = FakeEngine(network=True)
    result = deploy.UpResult([])
    deploy._start_in_order(engine, [b, c, a], {n: plan.Action("create", n, "") for n in "abc"},
                           {}, Events(), result)
    assert starts(engine) == ["a", "c", "b"]
    assert result.ready_seconds == {"a": 0.0, "b": 0.0, "c": 0.0}
    loop = [plan.ServiceSpec("d", "x", "img", [], start_after=("e",)),
            plan.ServiceSpec("e", "x", "img", [], start_after=("d",))]
    with pytest.raises(DeployError, match="cycle"):
        deploy._start_in_order(engine, loop, {n: plan.Action("create", n, "") for n in "de"},
                               {}, Events(), deploy.UpResult([]))


def test_desired_start_order_health_then_models_with_litellm_then_nginx(
        loaded: Loaded) -> None:
    wanted = {s.service: s for s in plan.desired(loaded.spec, loaded.rendered, "k")}
    assert wanted[names.HEALTH].start_after == ()
    assert wanted[CHAT].start_after == wanted[EMBED].start_after == (names.HEALTH,)
    assert wanted[names.LITELLM].start_after == (names.HEALTH,)
    assert wanted[names.EDGE_METRICS].start_after == (names.HEALTH,)
    assert set(wanted[names.NGINX].start_after) == {names.HEALTH, CHAT, EMBED, names.LITELLM,
                                                    names.EDGE_METRICS}
    # Start order is not a container setting: it does not change the config hash.
    from dataclasses import replace
    svc = wanted[CHAT]
    assert replace(svc, start_after=()).config_hash() == svc.config_hash()


# --- status and down ---------------------------------------------------------------------------


def test_status_reports_states_health_ports_and_stray_containers(loaded: Loaded,
                                                                 engine: FakeEngine) -> None:
    up(loaded, engine)
    report = deploy.status(loaded, engine)
    assert report.healthy
    data = report.to_dict()
    assert set(data) == {"project", "services", "healthy", "certificate", "rotation"}
    assert [s["service"] for s in data["services"]] == ALL
    nginx = data["services"][-1]
    assert set(nginx) == {"service", "state", "healthy", "image", "container", "restarts",
                          "uptime_s", "ports", "in_sync"}
    assert nginx["ports"] == ["127.0.0.1:4000->8080/tcp", "127.0.0.1:443->8443/tcp",
                              "127.0.0.1:8080->8081/tcp"]
    assert nginx["in_sync"] and nginx["healthy"] is True and nginx["state"] == "running"
    assert set(data["certificate"]) == {"not_after", "days_left", "expiring_soon", "names"}
    assert data["rotation"] is None
    json.dumps(data)

    engine.answers = {names.LITELLM: ["503"]}
    engine.remove(EMBED)
    engine.containers[CHAT].labels[names.LABEL_HASH] = "old"
    engine.containers["model-old"] = engine.containers[CHAT].__class__(
        service="model-old", name="p-model-old", id="e" * 64, image="x", image_id="x",
        labels={}, status="exited")
    report = deploy.status(loaded, engine)
    by = {s.service: s for s in report.services}
    assert not report.healthy
    assert by[names.LITELLM].healthy is False
    assert by[EMBED].to_dict() == {"service": EMBED, "state": "missing", "healthy": None}
    assert by[CHAT].in_sync is False
    assert by["model-old"].note == "not in stack.yaml; `llmstack up` removes it"
    assert by["model-old"].healthy is None and by["model-old"].uptime_s == 0


def test_status_and_up_probe_every_service_in_one_exec_a_round(loaded: Loaded,
                                                                engine: FakeEngine) -> None:
    """One exec in the health container per readiness round (a Python start each on the
    real engine), not one per service."""
    engine.answers = {CHAT: ["503", "200"], EMBED: ["503", "503", "200"]}
    up(loaded, engine)
    # health alone; the models and LiteLLM together (3 rounds: EMBED answers last); nginx.
    assert engine.probe_rounds == 5
    engine.probe_rounds = 0
    report = deploy.status(loaded, engine)
    assert report.healthy and engine.probe_rounds == 1


def test_status_without_health_probes_nothing(loaded: Loaded, engine: FakeEngine) -> None:
    up(loaded, engine)
    engine.containers[names.HEALTH].status = "exited"
    report = deploy.status(loaded, engine)
    assert {s.service: s.healthy for s in report.services} == dict.fromkeys(ALL, None)
    assert not report.healthy


def test_down_removes_containers_and_network(loaded: Loaded, engine: FakeEngine) -> None:
    up(loaded, engine)
    removed = engine.down(volumes=True)
    assert sorted(removed) == sorted(names.container(engine.project, s) for s in ALL)
    assert engine.info() == [] and not engine.network and engine.volumes == {}


# --- the CLI on the fake -----------------------------------------------------------------------


def test_status_and_up_commands_on_the_fake(loaded: Loaded, engine: FakeEngine,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "_engine", lambda host, project: engine)
    runner = CliRunner()
    root = str(loaded.paths.root)
    out = runner.invoke(cli.app, ["up", "-C", root])
    assert out.exit_code == 0, out.output
    assert "Stack llmstack is up (6 changes" in out.output
    out = runner.invoke(cli.app, ["up", "-C", root, "--json"])
    assert json.loads(out.stdout)["changed"] is False
    out = runner.invoke(cli.app, ["status", "-C", root])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].split() == ["SERVICE", "STATE", "HEALTH", "UPTIME", "PORTS", "/", "IMAGE"]
    assert lines[-2].startswith("nginx") and "127.0.0.1:4000->8080/tcp" in lines[-2]
    assert lines[-1].startswith("certificate: valid until")
    engine.remove(names.LITELLM)
    out = runner.invoke(cli.app, ["status", "-C", root, "--json"])
    assert out.exit_code == 2
    data = json.loads(out.stdout)
    assert {"service": names.LITELLM, "state": "missing", "healthy": None} in data["services"]
    out = runner.invoke(cli.app, ["down", "-C", root, "--json"])
    assert len(json.loads(out.stdout)["removed"]) == len(ALL) - 1  # LiteLLM was gone


def test_engine_errors_exit_2_with_the_engine_hint(loaded: Loaded, engine: FakeEngine,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def broken(*args: object, **kwargs: object) -> list[str]:
        raise EngineError("APIError: 500 Server Error", "the Docker engine refused the "
                          "operation; `llmstack doctor` checks the host")

    monkeypatch.setattr(cli, "_engine", lambda host, project: engine)
    monkeypatch.setattr(engine, "down", broken)
    monkeypatch.setattr("sys.argv", ["llmstack", "down", "-C", str(loaded.paths.root)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "error: APIError: 500 Server Error" in err and "llmstack doctor" in err


# --- the edge ----------------------------------------------------------------------------------


class StuckNginx(FakeEngine):
    """nginx whose workers never change (or, with shell=False, an image without sh)."""

    shell: bool = True

    def exec(self, service: str, cmd: list[str], environment: dict[str, str] | None = None
             ) -> tuple[int, str]:
        if cmd[:2] == ["sh", "-c"]:
            return (0, "101 nginx: worker process\n") if self.shell else (127, "no sh")
        return super().exec(service, cmd, environment)


def test_graceful_reload_waits_for_new_workers_then_gives_up(loaded: Loaded) -> None:
    engine = StuckNginx(project=loaded.spec.project)
    up(loaded, engine)
    nginx = next(s for s in plan.desired(loaded.spec, loaded.rendered, "k")
                 if s.service == names.NGINX)
    with pytest.raises(DeployError, match="did not switch to its new configuration"):
        edge.graceful_reload(engine, nginx, 0.01)
    engine.shell = False  # nothing to watch: the reload signal is all there is
    edge.graceful_reload(engine, nginx, 0.01)
    assert edge.serving_workers(engine) == set()
    engine.nginx_test = (0, "")
    fake = FakeEngine(project=loaded.spec.project)
    up(loaded, fake)
    assert edge.serving_workers(fake) == {str(100 + fake.generation)}
    edge.graceful_reload(fake, nginx, 1.0)
    assert edge.serving_workers(fake) == {str(100 + fake.generation)}


def test_a_failed_reload_is_a_deploy_error(loaded: Loaded) -> None:
    class Refusing(FakeEngine):
        def exec(self, service: str, cmd: list[str], environment: dict[str, str] | None = None
                 ) -> tuple[int, str]:
            if cmd[:3] == ["nginx", "-s", "reload"]:
                return 1, "nginx: [error] invalid PID number"
            return super().exec(service, cmd, environment)

    engine = Refusing(project=loaded.spec.project)
    up(loaded, engine)
    nginx = next(s for s in plan.desired(loaded.spec, loaded.rendered, "k")
                 if s.service == names.NGINX)
    with pytest.raises(DeployError, match="nginx reload failed: nginx: \\[error\\] invalid"):
        edge.reload_nginx(engine, nginx, loaded.nginx_secret_files())


# --- ownership: one project name, one stack folder ---------------------------------------------


def _folder(tmp_path: Path, name: str) -> Loaded:
    init(tmp_path / name)
    return load(tmp_path / name)


def test_a_second_folder_with_the_same_project_is_refused(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from llmstack.errors import OwnershipError
    from llmstack.project import owner

    monkeypatch.setattr(deploy, "POLL_INTERVAL", 0.0)
    first, second = _folder(tmp_path, "a"), _folder(tmp_path, "b")
    assert first.spec.project == second.spec.project
    engine = FakeEngine(project=first.spec.project)
    engine.owner_labels = owner(first.paths, create=True).labels()
    up(first, engine)
    ids = {c.service: c.id for c in engine.containers.values()}
    assert all(c.labels[names.LABEL_OWNER] == engine.owner_labels[names.LABEL_OWNER]
               for c in engine.containers.values())
    # The first folder itself keeps working on its containers.
    assert plan.is_noop(plan_only(first, engine))

    # The second folder has no id yet (plan writes none): its plan, up and down refuse.
    engine.owner_labels = owner(second.paths, create=False).labels()
    assert engine.owner_labels == {}
    with pytest.raises(OwnershipError) as refused:
        plan_only(second, engine)
    message = refused.value.message
    assert f"project {first.spec.project!r}" in message and str(first.paths.root) in message
    assert "another stack folder" in message
    assert "`project:` in stack.yaml" in refused.value.hint
    assert "--take-over" in refused.value.hint
    engine.owner_labels = owner(second.paths, create=True).labels()
    with pytest.raises(OwnershipError):
        up(second, engine)
    assert {c.service: c.id for c in engine.containers.values()} == ids  # nothing touched

    # --take-over: every container is recreated as the second folder's.
    actions = plan_only(second, engine, take_over=True)
    assert {a.kind for a in actions} == {"recreate"}
    assert all("another stack folder" in a.reason for a in actions)
    deploy.up(second, engine, Events(), local_engine=False, take_over=True)
    assert all(c.labels[names.LABEL_OWNER] == engine.owner_labels[names.LABEL_OWNER]
               for c in engine.containers.values())
    assert plan.is_noop(plan_only(second, engine))


def test_containers_made_before_owner_labels_are_adopted(loaded: Loaded,
                                                         engine: FakeEngine) -> None:
    from llmstack.project import owner

    up(loaded, engine)  # no owner labels: as llmstack made containers before them
    engine.owner_labels = owner(loaded.paths, create=True).labels()
    assert loaded.paths.stack_id.exists()
    assert plan.is_noop(plan_only(loaded, engine))
    assert owner(loaded.paths, create=True).id == engine.owner_labels[names.LABEL_OWNER]


def test_the_cli_refuses_a_takeover_with_exit_1(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "POLL_INTERVAL", 0.0)
    first, second = _folder(tmp_path, "a"), _folder(tmp_path, "b")
    from llmstack.project import owner

    engine = FakeEngine(project=first.spec.project)
    engine.owner_labels = owner(first.paths, create=True).labels()
    up(first, engine)
    monkeypatch.setattr(cli, "_engine", lambda host, project: engine)
    runner = CliRunner()
    for command in (["plan"], ["up"], ["down"]):
        monkeypatch.setattr("sys.argv", ["llmstack", *command, "-C", str(second.paths.root),
                                         "--json"])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 1, command
    assert len(engine.containers) == len(ALL)
    out = runner.invoke(cli.app, ["down", "-C", str(second.paths.root), "--take-over"])
    assert out.exit_code == 0, out.output
    assert engine.containers == {}


# --- updates: start-first, rollback, stop-first ------------------------------------------------


def _edit(loaded: Loaded, change: object) -> Loaded:
    import yaml

    data = yaml.safe_load(loaded.paths.stack.read_text())
    change(data)  # type: ignore[operator]
    loaded.paths.stack.write_text(yaml.safe_dump(data, sort_keys=False))
    return load(loaded.paths.root)


def test_a_model_change_starts_the_new_container_beside_the_old_one(loaded: Loaded,
                                                                    engine: FakeEngine) -> None:
    up(loaded, engine)
    old_ids = {k: c.id for k, c in engine.containers.items()}
    changed = _edit(loaded, lambda d: d["models"][0].update(args=["--threads", "2"]))
    engine.calls.clear()
    engine.answers = {CHAT + names.NEXT: ["503", "200"]}
    events = Events()
    up(changed, engine, events)
    nxt, old = CHAT + names.NEXT, CHAT + names.OLD
    lnext, lold = names.LITELLM + names.NEXT, names.LITELLM + names.OLD
    assert engine.calls == [
        f"start {nxt}",  # beside the old model, which keeps serving
        f"rename {CHAT} {old}", f"rename {nxt} {CHAT}",  # once ready: the name moves
        "write_config litellm", f"start {lnext}",  # a fresh LiteLLM: fresh connections
        f"rename {names.LITELLM} {lold}", f"rename {lnext} {names.LITELLM}",
        "write_config nginx", "nginx -t", "nginx reload",  # nginx moves to it gracefully
        f"remove {lold}", f"remove {old}",  # the old ones stop once idle, LiteLLM first
    ]
    assert sorted(engine.containers) == sorted(ALL)
    assert engine.containers[CHAT].id != old_ids[CHAT]
    assert engine.containers[EMBED].id == old_ids[EMBED]
    assert ("nginx", "draining", "old workers finish in-flight requests") in events.seen
    assert plan.is_noop(plan_only(changed, engine))


def test_a_model_that_never_gets_ready_is_rolled_back(loaded: Loaded, engine: FakeEngine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    up(loaded, engine)
    before = {k: (c.id, c.labels[names.LABEL_HASH]) for k, c in engine.containers.items()}
    broken = _edit(loaded, lambda d: d["models"][0].update(args=["--no-such-flag"]))
    engine.crash = {CHAT}  # the new container exits at once, as llama.cpp does on a bad flag
    events = Events()
    with pytest.raises(DeployError) as failed:
        up(broken, engine, events)
    message = failed.value.message
    assert f"service {CHAT} failed: container exited (exit code 1)" in message
    assert f"probe: GET /health on port {BACKENDS['llamacpp'].port}" in message
    assert "fatal: cannot load model" in message  # the new container's last log lines
    assert f"rolled back: {CHAT} run their previous containers" in message
    # Every old container still runs, untouched; no new one is left behind.
    assert {k: (c.id, c.labels[names.LABEL_HASH]) for k, c in engine.containers.items()} \
        == before
    assert engine.state(CHAT) == ("running", None)
    assert (CHAT, "rolled back", "the previous container serves again") in events.seen
    report = {s.service: s for s in deploy.status(broken, engine).services}
    assert report[CHAT].in_sync is False and report[CHAT].healthy is True
    assert "runs its previous revision" in (report[CHAT].note or "")


def test_a_litellm_failing_after_the_models_switched_rolls_everything_back(
        loaded: Loaded, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    up(loaded, engine)
    before = {k: c.id for k, c in engine.containers.items()}
    old_config = dict(engine.volumes[names.config_volume(engine.project, names.LITELLM)])
    changed = _edit(loaded, lambda d: d["models"][0].update(
        args=["--threads", "2"], aliases=["qwen-coder", "mistral", "new-alias"]))
    engine.crash = {names.LITELLM}
    with pytest.raises(DeployError, match="rolled back"):
        up(changed, engine)
    assert {k: c.id for k, c in engine.containers.items()} == before
    # LiteLLM's config volume holds the files the old LiteLLM read again.
    assert engine.volumes[names.config_volume(engine.project, names.LITELLM)] == old_config


def test_a_stop_first_model_is_stopped_then_started(loaded: Loaded, engine: FakeEngine) -> None:
    first = _edit(loaded, lambda d: d["models"][0].update(update="stop-first"))
    up(first, engine)
    changed = _edit(first, lambda d: d["models"][0].update(args=["--threads", "2"]))
    engine.calls.clear()
    result = up(changed, engine)
    assert {a.service: a.how for a in result.actions if a.kind == "recreate"} == {
        CHAT: plan.STOP_FIRST}
    hold, nxt, old = CHAT + names.HOLD, CHAT + names.NEXT, CHAT + names.OLD
    assert engine.calls == [
        f"start {hold}",  # the 503 placeholder, beside the old model
        f"rename {CHAT} {old}", f"rename {hold} {CHAT}", f"remove {old}",  # old one stopped
        f"start {nxt}",  # the new model: the GPUs it needs are free now
        f"rename {CHAT} {old}", f"rename {nxt} {CHAT}",  # ready: it takes the name
        f"remove {old}",  # the placeholder goes; LiteLLM and nginx are kept
    ]
    assert sorted(engine.containers) == sorted(ALL)
    assert engine.containers[CHAT].labels[names.LABEL_ROLE] == "model"


def test_a_stop_first_model_that_fails_leaves_its_503_placeholder(loaded: Loaded,
                                                                  engine: FakeEngine) -> None:
    first = _edit(loaded, lambda d: d["models"][0].update(update="stop-first"))
    up(first, engine)
    broken = _edit(first, lambda d: d["models"][0].update(args=["--no-such-flag"]))
    engine.crash = {CHAT}
    with pytest.raises(DeployError) as failed:
        up(broken, engine)
    assert f"stopped first (update: stop-first): {CHAT} answer 503" in failed.value.message
    assert "`llmstack rollback`" in failed.value.message
    assert engine.containers[CHAT].labels[names.LABEL_ROLE] == "placeholder"
    assert sorted(engine.containers) == sorted(ALL)
    url = f"http://{names.container(engine.project, CHAT)}:8000/v1/chat/completions"
    assert engine.probe(url) == "503"
    # The next `up` of a good stack.yaml replaces the placeholder by the model again.
    engine.crash = set()
    up(first, engine)
    assert engine.containers[CHAT].labels[names.LABEL_ROLE] == "model"


def test_leftovers_of_an_interrupted_update_are_removed(loaded: Loaded,
                                                        engine: FakeEngine) -> None:
    up(loaded, engine)
    svc = next(s for s in plan.desired(loaded.spec, loaded.rendered, loaded.keys().internal)
               if s.service == CHAT)
    engine.start(svc, CHAT + names.NEXT)  # as if `up` was killed mid-update
    actions = {a.service: a for a in plan_only(loaded, engine)}
    assert actions[CHAT + names.NEXT].kind == "remove"
    assert actions[CHAT + names.NEXT].reason == "left over from an interrupted update"
    up(loaded, engine)
    assert sorted(engine.containers) == sorted(ALL)


# --- history and rollback ----------------------------------------------------------------------


def test_each_changing_up_records_a_revision_and_rollback_returns_to_one(
        loaded: Loaded, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from llmstack import history

    assert up(loaded, engine).revision == 1
    assert up(loaded, engine).revision is None  # nothing changed: nothing recorded
    changed = _edit(loaded, lambda d: d["models"][0].update(args=["--threads", "2"]))
    assert up(changed, engine).revision == 2
    revisions = history.load_all(engine, loaded.spec.images.for_key("litellm"))
    assert [r.number for r in revisions] == [1, 2]
    assert "--threads" in revisions[1].stack_yaml and revisions[0].digest != revisions[1].digest
    # No secret in a revision: neither key appears in the recorded files.
    keys = loaded.keys()
    for data in engine.read_volume(names.history_volume(engine.project), "img").values():
        assert keys.master.encode() not in data and keys.internal.encode() not in data
    hash_v2 = engine.containers[CHAT].labels[names.LABEL_HASH]

    monkeypatch.setattr(cli, "_engine", lambda host, project: engine)
    root = str(loaded.paths.root)
    monkeypatch.setattr("sys.argv", ["llmstack", "rollback", "-C", root, "--json"])
    capsys.readouterr()  # the earlier `up`s' image lines
    cli.main()  # returns: exit 0
    out = json.loads(capsys.readouterr().out)
    assert out["rolled_back_to"] == 1 and out["revision"] == 3
    assert {a["service"]: a.get("update") for a in out["actions"]
            if a["action"] == "recreate"} == {CHAT: "start-first",
                                              names.LITELLM: "start-first"}
    assert engine.containers[CHAT].labels[names.LABEL_HASH] == revisions[0].services[CHAT]
    assert engine.containers[CHAT].labels[names.LABEL_HASH] != hash_v2
    assert "--threads\n" in loaded.paths.stack.read_text().replace("- ", "")  # file kept
    monkeypatch.setattr("sys.argv", ["llmstack", "history", "-C", root, "--json"])
    cli.main()
    assert [r["revision"] for r in json.loads(capsys.readouterr().out)["revisions"]] == [1, 2, 3]
    monkeypatch.setattr("sys.argv", ["llmstack", "rollback", "7", "-C", root])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 1
    assert "revision 7 is not recorded" in capsys.readouterr().err


def test_rollback_without_an_earlier_revision_is_refused(loaded: Loaded) -> None:
    from llmstack import history
    from llmstack.errors import UserError

    with pytest.raises(UserError, match="no earlier revision"):
        history.pick([], None)
