"""`rotate-key` without Docker: durations, output fields, and the order of a rotation.

A fake engine stands in for nginx: it keeps the key file in the config volume and the one the
running workers loaded, and answers key probes by evaluating nginx's two `map`s the way nginx
does. At every engine call (any point where a SIGKILL could land) it checks that the key in
`.env` is accepted by what nginx runs now and by what it would load on a restart.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llmstack import names, plan, rotate, secrets
from llmstack.engine.api import ContainerInfo
from llmstack.errors import DeployError, UserError
from llmstack.initialize import init
from llmstack.project import Loaded, load

MAP_LINE = re.compile(r'^\s*"~(.*)"\s+(\S+);\s*$')


def accepts(keys_conf: bytes, key: str, now: float) -> bool:
    """nginx's verdict for `Authorization: Bearer KEY` at `now` under this key file."""
    maps: list[list[tuple[str, str]]] = []
    for line in keys_conf.decode().splitlines():
        if line.startswith("map "):
            maps.append([])
        match = MAP_LINE.match(line)
        if match and maps:
            maps[-1].append((match.group(1), match.group(2)))
    slot = next((v for rx, v in maps[0] if re.search(rx, f"Bearer {key}")), "")
    msec = f"{now:.3f}"
    return any(re.search(rx, f"{slot}:{msec}") and v == "1" for rx, v in maps[1])


@dataclass
class FakeEngine:
    """Just enough of the engine interface (engine.api.Engine) for a rotation."""

    loaded: Loaded
    volume: bytes  # secrets/keys.conf in nginx's config volume
    running: bytes  # the key file nginx's workers loaded
    fail_at: str = ""  # ship | test | reload | probe: that call fails
    calls: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    generation: int = 1
    project: str = "p"

    def image_ids(self, tags: list[str]) -> dict[str, str | None]:
        # llmstack's local builds are on this pretend engine, upstream images are not.
        return {t: f"sha256:{t}" if t.startswith("llmstack/") else None for t in tags}

    def _check(self, where: str) -> None:
        key = secrets.load_keys(self.loaded.paths.env).master  # .env must always parse
        for name, conf in (("running nginx", self.running), ("nginx after a restart",
                                                             self.volume)):
            if not accepts(conf, key, time.time()):
                self.violations.append(f"{where}: {name} refuses the key in .env")

    def state(self, service: str) -> tuple[str, int | None]:
        return "running", None

    def container(self, service: str) -> ContainerInfo:
        keys = self.loaded.keys()
        wanted = {s.service: s for s in plan.desired(self.loaded.spec, self.loaded.rendered,
                                                     keys.internal)}
        return ContainerInfo(service, f"p-{service}", "0" * 12, wanted[service].image,
                             "running", labels={names.LABEL_HASH: wanted[service].config_hash()})

    def write_config(self, svc: plan.ServiceSpec, extra: dict[str, tuple[bytes, int]]) -> None:
        self._check("before ship")
        self.calls.append("ship")
        assert svc.config == {}, "a rotation must not ship nginx.conf"
        assert set(extra) == {"secrets/keys.conf", "secrets/key-limits.conf", "secrets/tls.crt",
                              "secrets/tls.key"}
        if self.fail_at == "ship":
            raise DeployError("engine refused put_archive")
        self.volume = extra["secrets/keys.conf"][0]
        self._check("after ship")

    def exec(self, service: str, cmd: list[str], environment: dict[str, str] | None = None
             ) -> tuple[int, str]:
        self._check(f"before {cmd[:2]}")
        if service == names.NGINX and cmd[:2] == ["nginx", "-t"]:
            self.calls.append("test")
            return (1, "nginx: [emerg] unexpected end of file") if self.fail_at == "test" \
                else (0, "")
        if service == names.NGINX and cmd[:3] == ["nginx", "-s", "reload"]:
            self.calls.append("reload")
            if self.fail_at == "reload" or \
                    (self.fail_at == "second reload" and self.calls.count("reload") == 2):
                return 1, "nginx: [error] invalid PID number"
            self.running, self.generation = self.volume, self.generation + 1
            self._check("after reload")
            return 0, ""
        if service == names.NGINX and cmd[0] == "sh":
            pid = 100 + self.generation
            return 0, f"1 /sbin/docker-init -- nginx\n{pid} nginx: worker process   \n"
        if service == names.HEALTH and cmd[0] == "python3":
            assert environment, "keys travel in the environment"
            assert not any(k.startswith("sk-") for k in cmd), "never a key in argv"
            self.calls.append("probe")
            if self.fail_at == "probe" and self.calls.count("probe") > 1:  # after preflight
                return 0, json.dumps(["503"] * len(cmd[4:]))
            return 0, json.dumps(["200" if accepts(self.running, environment[n], time.time())
                                  else "401" for n in cmd[4:]])
        raise AssertionError(f"unexpected exec {service} {cmd}")


@pytest.fixture
def project_dir(tmp_path: Path) -> Loaded:
    init(tmp_path)
    return load(tmp_path)


def engine_for(loaded: Loaded, **kwargs: Any) -> FakeEngine:
    conf = loaded.nginx_secret_files()["secrets/keys.conf"][0]
    return FakeEngine(loaded, conf, conf, **kwargs)


def quiet(_: str) -> None:
    pass


# --- durations and output -------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0), ("30", 30), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400),
    (" 5s ", 5),
])
def test_grace_durations(text: str, seconds: int) -> None:
    assert rotate.parse_grace(text) == seconds


@pytest.mark.parametrize("text", ["", "-5s", "10 minutes", "1.5m", "5w", "31d", "m"])
def test_bad_grace_is_a_user_error_with_a_fix(text: str) -> None:
    with pytest.raises(UserError) as err:
        rotate.parse_grace(text)
    assert "--grace" in err.value.message
    assert err.value.hint


def test_json_fields_are_stable_and_the_key_only_shown_on_request(tmp_path: Path) -> None:
    result = rotate.Rotation("p", tmp_path / ".env", tmp_path / ".env.bak-1", 1_800_000_000.0,
                             600, 640, 1100, "sk-" + "a" * 43)
    data = result.to_dict()
    assert set(data) == {"project", "key_file", "backup_file", "rotated_at", "grace_seconds",
                         "grace_ends", "cutover_ms", "duration_ms"}
    assert data["rotated_at"] == "2027-01-15T08:00:00+00:00"
    assert data["grace_ends"] == "2027-01-15T08:10:00+00:00"
    assert "sk-" not in json.dumps(data)
    assert result.to_dict(show=True)["key"] == "sk-" + "a" * 43
    no_grace = rotate.Rotation("p", tmp_path, tmp_path, 1_800_000_000.0, 0, 1, 2, "k")
    assert no_grace.to_dict()["grace_ends"] is None


# --- order and rollback ---------------------------------------------------------------------


def test_rotation_order_keeps_the_env_key_accepted_at_every_step(project_dir: Loaded) -> None:
    old = project_dir.keys()
    engine = engine_for(project_dir)
    result = rotate.rotate(project_dir, engine, 0, quiet)  # type: ignore[arg-type]
    new = secrets.load_keys(project_dir.paths.env)
    assert engine.violations == []
    assert new.master == result.key != old.master
    assert new.internal == old.internal  # LiteLLM's key never changes: no restart
    assert new.previous is None
    now = time.time()
    assert accepts(engine.running, new.master, now)
    assert not accepts(engine.running, old.master, now)
    assert engine.volume == engine.running  # a restart of nginx loads the same keys
    # Transitional file first, .env in the middle, final file last.
    assert engine.calls == ["probe", "ship", "test", "reload", "probe",
                            "ship", "test", "reload", "probe"]
    backup = result.backup_file
    assert secrets.load_keys(backup).master == old.master
    assert backup.stat().st_mode & 0o777 == 0o600


def test_grace_window_keeps_the_old_key_until_its_end(project_dir: Loaded) -> None:
    old = project_dir.keys()
    engine = engine_for(project_dir)
    result = rotate.rotate(project_dir, engine, 600, quiet)  # type: ignore[arg-type]
    keys = secrets.load_keys(project_dir.paths.env)
    assert engine.violations == []
    assert keys.previous == old.master
    assert keys.previous_expires == int(result.rotated_at) + 600
    assert accepts(engine.running, old.master, time.time())
    assert not accepts(engine.running, old.master, result.rotated_at + 601)
    assert accepts(engine.running, keys.master, result.rotated_at + 10**6)


@pytest.mark.parametrize("step", ["ship", "test", "reload", "probe"])
def test_a_failed_rotation_leaves_env_and_the_old_key_working(
        project_dir: Loaded, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env_before = project_dir.paths.env.read_bytes()
    old = project_dir.keys()
    engine = engine_for(project_dir, fail_at=step)
    monkeypatch.setattr(rotate, "VERIFY_DEADLINE", 0.5)  # the fake never gets better
    with pytest.raises(DeployError) as err:
        rotate.rotate(project_dir, engine, 0, quiet)  # type: ignore[arg-type]
    assert "key rotation failed" in err.value.message
    assert ".env is unchanged" in err.value.message
    assert project_dir.paths.env.read_bytes() == env_before
    assert not list(project_dir.paths.root.glob(".env.bak-*"))
    assert engine.violations == []
    now = time.time()
    assert accepts(engine.running, old.master, now)
    assert accepts(engine.volume, old.master, now)


def test_finish_drops_the_previous_key_then_forgets_it(project_dir: Loaded) -> None:
    engine = engine_for(project_dir)
    first = rotate.rotate(project_dir, engine, 600, quiet)  # type: ignore[arg-type]
    old = secrets.load_keys(first.backup_file).master
    done = rotate.finish(project_dir, engine, quiet)  # type: ignore[arg-type]
    keys = secrets.load_keys(project_dir.paths.env)
    assert done.was_in_progress
    assert keys.master == first.key and keys.previous is None
    assert not accepts(engine.running, old, time.time())
    assert engine.violations == []
    again = rotate.finish(project_dir, engine, quiet)  # type: ignore[arg-type]
    assert not again.was_in_progress and again.backup_file is None


def test_a_failed_final_reload_is_mended_by_the_command_its_hint_names(
        project_dir: Loaded) -> None:
    """An emergency rotation (--grace 0) whose last reload fails: nginx still runs the
    transitional file, accepting the leaked key with no end. The hint's command must end
    that, and `up` must see the key file as out of date."""
    old = project_dir.keys()
    engine = engine_for(project_dir, fail_at="second reload")
    with pytest.raises(DeployError) as err:
        rotate.rotate(project_dir, engine, 0, quiet)  # type: ignore[arg-type]
    new = secrets.load_keys(project_dir.paths.env)
    assert new.previous is None and new.master != old.master
    assert accepts(engine.running, old.master, time.time())  # the hole this must close
    assert "rotate-key --finish" in err.value.hint
    # The volume holds what nginx may run, not what .env says: `up` sees a difference.
    rendered = project_dir.nginx_secret_files()["secrets/keys.conf"][0]
    assert engine.volume != rendered and accepts(engine.volume, old.master, time.time())

    engine.fail_at = ""
    done = rotate.finish(project_dir, engine, quiet)  # type: ignore[arg-type]
    now = time.time()
    assert not accepts(engine.running, old.master, now)
    assert accepts(engine.running, new.master, now)
    assert engine.volume == engine.running
    assert not done.was_in_progress
    assert engine.violations == []


def test_an_engine_failure_reads_as_before_the_boundary(project_dir: Loaded) -> None:
    """A docker error mapped to EngineError keeps the message and hint a rotation gave it
    when docker's exception reached rotate itself."""
    from docker.errors import APIError

    from llmstack.engine.api import map_exceptions

    class Broken(FakeEngine):
        def write_config(self, svc: plan.ServiceSpec,
                         extra: dict[str, tuple[bytes, int]]) -> None:
            with map_exceptions():
                raise APIError("500 Server Error: no space left on device")

    engine = Broken(project_dir, *[project_dir.nginx_secret_files()["secrets/keys.conf"][0]] * 2)
    with pytest.raises(DeployError) as err:
        rotate.rotate(project_dir, engine, 0, quiet)  # type: ignore[arg-type]
    assert err.value.message.startswith(
        "key rotation failed: APIError: 500 Server Error: no space left on device (putting "
        "the old key file back failed too: 500 Server Error: no space left on device;")
    assert err.value.hint == "`llmstack status`; run the command again"


# --- a fleet: hosts sharing one .env -----------------------------------------------------------


def _fleet(tmp_path: Path, names_: tuple[str, ...] = ("h1", "h2")) -> list[Loaded]:
    from llmstack.fleet import prepare

    init(tmp_path)
    text = (tmp_path / "stack.yaml").read_text() + "hosts:\n" + "".join(
        f"  {n}:\n    domain: {n}.example.com\n" for n in names_)
    (tmp_path / "stack.yaml").write_text(text)
    hosts = [load(tmp_path, host=n) for n in names_]
    for loaded in hosts:
        prepare(loaded)  # each host's own certificate
    return hosts


def test_a_fleet_rotates_with_one_env_write_and_one_grace_window(tmp_path: Path) -> None:
    hosts = _fleet(tmp_path)
    old = hosts[0].keys()
    engines = [engine_for(h) for h in hosts]
    result = rotate.rotate_group(list(zip(hosts, engines, strict=True)), 600,  # type: ignore[arg-type]
                                 quiet)
    keys = secrets.load_keys(tmp_path / ".env")
    assert len(list(tmp_path.glob(".env.bak-*"))) == 1
    assert keys.master == result.key and keys.previous == old.master
    for engine in engines:
        # .env's key accepted at every step on every host (the fake checks at each call)
        assert engine.violations == []
        assert engine.calls == ["probe", "ship", "test", "reload", "probe",
                                "ship", "test", "reload", "probe"]
        assert accepts(engine.running, keys.master, time.time())
        assert accepts(engine.running, old.master, time.time())
        assert not accepts(engine.running, old.master, result.rotated_at + 601)


def test_a_fleet_rotation_failing_on_the_second_host_rolls_back_both(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = _fleet(tmp_path)
    env_before = (tmp_path / ".env").read_bytes()
    old = hosts[0].keys()
    engines = [engine_for(hosts[0]), engine_for(hosts[1], fail_at="probe")]
    monkeypatch.setattr(rotate, "VERIFY_DEADLINE", 0.5)
    with pytest.raises(DeployError) as err:
        rotate.rotate_group(list(zip(hosts, engines, strict=True)), 0, quiet)  # type: ignore[arg-type]
    assert "key rotation failed on h2" in err.value.message
    assert (tmp_path / ".env").read_bytes() == env_before
    for engine in engines:
        assert engine.violations == []
        assert accepts(engine.running, old.master, time.time())
        assert accepts(engine.volume, old.master, time.time())
    assert engines[0].calls.count("reload") == 2  # transitional, then the old file again


def test_a_fleet_finish_ends_the_window_on_every_host(tmp_path: Path) -> None:
    hosts = _fleet(tmp_path)
    engines = [engine_for(h) for h in hosts]
    targets = list(zip(hosts, engines, strict=True))
    first = rotate.rotate_group(targets, 600, quiet)  # type: ignore[arg-type]
    old = secrets.load_keys(first.backup_file).master
    done = rotate.finish_group(targets, quiet)  # type: ignore[arg-type]
    assert done.was_in_progress
    assert secrets.load_keys(tmp_path / ".env").previous is None
    for engine in engines:
        assert not accepts(engine.running, old, time.time())
        assert accepts(engine.running, first.key, time.time())
        assert engine.violations == []
