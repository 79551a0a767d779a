"""The no-change `up` fast path (quickup.py): what it records after a converged `up`, and
every reason it falls back to the full path. Pure decisions; the record comes from a real
`deploy.up` on the fake engine."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llmstack import deploy, names, quickup, secrets
from llmstack.project import Loaded
from tests.fake_engine import FakeEngine

ENGINE = quickup.LOCAL_SOCKET


class Quiet:
    def event(self, service: str, state: str, detail: str = "") -> None:
        pass


def converge(loaded: Loaded, engine: FakeEngine, url: str = ENGINE) -> bool:
    result = deploy.up(loaded, engine, Quiet(), local_engine=True, progress=lambda _: None)
    return deploy.remember(loaded, engine, result, url, {"local": "http://127.0.0.1:8080/v1"})


def record_of(loaded: Loaded) -> dict[str, Any]:
    return json.loads((loaded.paths.root / quickup.RECORD_FILE).read_text())


def engine_json(engine: FakeEngine) -> list[dict[str, Any]]:
    """The fake engine's containers as the engine's own list shows them."""
    return [{"Id": c.id, "State": c.status, "Status": "Up 5 minutes", "ImageID": c.image_id,
             "Names": ["/" + c.name]} for c in engine.containers.values()]


def args(loaded: Loaded) -> quickup.Args:
    return quickup.Args(loaded.paths.root, loaded.paths.stack, False)


def local(loaded: Loaded, now: float = 0.0, engine: str | None = ENGINE) -> str:
    record = record_of(loaded)
    return quickup.local_reason(record, args(loaded), engine,
                                quickup.digest(record["inputs"], engine or ""), now or 1e9)


def on_engine(loaded: Loaded, engine: FakeEngine) -> str:
    record = record_of(loaded)
    return quickup.engine_reason(record, engine_json(engine),
                                 engine.image_ids(list(record["images"])))


# --- the record ---------------------------------------------------------------------------


def test_a_converged_up_is_recorded_and_then_answers_fast(loaded: Loaded,
                                                          engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    record = record_of(loaded)
    assert sorted(c["name"] for c in record["containers"].values()) == sorted(
        engine.containers)
    assert [a["service"] for a in record["output"]["actions"]] == [
        names.HEALTH, names.model_service("deepseek-coder"), names.model_service("smollm2-embed"),
        names.LITELLM, names.EDGE_METRICS, names.NGINX]  # the plan's order, as printed
    assert all(a["action"] == "keep" for a in record["output"]["actions"])
    assert record["output"]["notes"][0].startswith("images: ")
    assert local(loaded) == ""
    assert on_engine(loaded, engine) == ""
    # The certificate's end bounds the record even without expiring keys.
    assert record["valid_until"] is not None


def test_every_full_path_up_drops_the_record_first(loaded: Loaded, engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    # Only `remember`, after a successful `up`, writes it again: a failure leaves none.
    deploy.up(loaded, engine, Quiet(), local_engine=True, progress=lambda _: None)
    assert not (loaded.paths.root / quickup.RECORD_FILE).exists()


def test_remote_engines_are_not_recorded(loaded: Loaded, engine: FakeEngine) -> None:
    assert not converge(loaded, engine, "ssh://gpu-1")
    assert not (loaded.paths.root / quickup.RECORD_FILE).exists()


# --- falling back: the folder -------------------------------------------------------------


@pytest.mark.parametrize("change", ["stack", "env", "keys", "cert", "config", "lock",
                                    "mode"])
def test_any_input_change_falls_back(loaded: Loaded, engine: FakeEngine, change: str) -> None:
    assert converge(loaded, engine)
    paths = loaded.paths
    if change == "stack":
        paths.stack.write_text(paths.stack.read_text() + "\n# edited\n")
    elif change == "env":
        paths.env.write_text(paths.env.read_text() + "X=1\n")
    elif change == "keys":
        paths.team_keys.write_text("{}\n")
    elif change == "cert":
        (paths.certs / "tls.crt").write_bytes(b"other")
    elif change == "config":
        next(p for p in paths.config.iterdir() if p.is_file()).unlink()
    elif change == "lock":
        paths.lock.write_text("{}\n")
    else:
        os.chmod(paths.env, 0o644)  # the full path refuses a key file others can read
    assert local(loaded) == "an input changed (stack file, lock, keys, certs, config/ or " \
        "llmstack itself)"


def test_installed_code_is_part_of_the_digest(loaded: Loaded, engine: FakeEngine,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert converge(loaded, engine)
    monkeypatch.setattr(quickup, "code_stamp", lambda: "another version")
    assert local(loaded).startswith("an input changed")


def test_a_passed_expiry_or_grace_falls_back(loaded: Loaded, engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    until = record_of(loaded)["valid_until"]
    assert local(loaded, now=until - 1) == ""
    assert "ended since" in local(loaded, now=until)


def test_grace_of_a_rotated_key_bounds_the_record(loaded: Loaded, engine: FakeEngine) -> None:
    env = loaded.paths.env
    env.write_text(env.read_text() + f"{secrets.PREVIOUS}=sk-{'o' * 40}\n"
                   f"{secrets.PREVIOUS_EXPIRES}=1800000000\n")
    assert converge(loaded, engine)
    assert record_of(loaded)["valid_until"] == 1800000000


def test_other_engines_stack_files_and_formats_fall_back(loaded: Loaded,
                                                         engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    assert local(loaded, engine=None) == "the engine is not the local socket"
    assert local(loaded, engine="tcp://10.0.0.1:2375") == "the engine is not the local socket"
    assert "differs" in local(loaded, engine="unix:///run/user/1000/docker.sock")
    record = record_of(loaded)
    other = quickup.Args(loaded.paths.root, loaded.paths.root / "other.yaml", False)
    assert "another stack file" in quickup.local_reason(record, other, ENGINE,
                                                        record["digest"], 1e9)
    assert "format" in quickup.local_reason({**record, "format": 0}, args(loaded), ENGINE,
                                            record["digest"], 1e9)


# --- falling back: the engine -------------------------------------------------------------


def test_a_container_stopped_by_hand_falls_back(loaded: Loaded, engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    engine.containers[names.NGINX].status = "exited"
    assert on_engine(loaded, engine) == "nginx is exited"


def test_an_unhealthy_container_falls_back(loaded: Loaded, engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    record = record_of(loaded)
    listed = engine_json(engine)
    listed[0]["Status"] = "Up 3 minutes (unhealthy)"
    assert "unhealthy" in quickup.engine_reason(record, listed,
                                                engine.image_ids(list(record["images"])))


def test_recreated_added_or_removed_containers_fall_back(loaded: Loaded,
                                                         engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    record = record_of(loaded)
    ids = engine.image_ids(list(record["images"]))
    listed = engine_json(engine)
    recreated = [dict(listed[0], Id="f" * 64), *listed[1:]]
    extra = [*listed, dict(listed[0], Id="e" * 64)]
    for containers in (recreated, extra, listed[1:]):
        assert quickup.engine_reason(record, containers, ids) == \
            "containers were created, recreated or removed since"


def test_a_rebuilt_image_under_the_same_tag_falls_back(loaded: Loaded,
                                                       engine: FakeEngine) -> None:
    assert converge(loaded, engine)
    record = record_of(loaded)
    ref = next(iter(record["images"]))
    ids = {**engine.image_ids(list(record["images"])), ref: "sha256:rebuilt"}
    assert quickup.engine_reason(record, engine_json(engine), ids) == \
        f"image {ref} was rebuilt, pulled or removed"
    listed = engine_json(engine)
    listed[0]["ImageID"] = "sha256:other"
    assert "runs another image" in quickup.engine_reason(
        record, listed, engine.image_ids(list(record["images"])))


def test_images_auto_watches_the_other_sources_refs(loaded: Loaded, engine: FakeEngine) -> None:
    """`images: auto` chose one source because the other's images were absent (or present):
    the record checks both, so pulling or building the other one falls back."""
    engine.missing_images = {"lmsysorg/absent"}  # nothing missing that the stack uses
    assert converge(loaded, engine)
    refs = record_of(loaded)["images"]
    assert any(r.startswith("llmstack/") for r in refs)
    assert any(not r.startswith("llmstack/") for r in refs)


# --- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("argv,expected", [
    (["up"], ("", "stack.yaml", False)),
    (["up", "--json"], ("", "stack.yaml", True)),
    (["up", "-C", "proj"], ("proj", "proj/stack.yaml", False)),
    (["up", "--dir=proj", "--file", "other.yaml"], ("proj", "other.yaml", False)),
    (["up", "-f", "s.yaml", "--json"], ("", "s.yaml", True)),
])
def test_plain_up_arguments(tmp_path: Path, argv: list[str],
                            expected: tuple[str, str, bool]) -> None:
    got = quickup.parse_args(argv, tmp_path)
    assert got == quickup.Args((tmp_path / expected[0]).resolve(),
                               (tmp_path / expected[1]).resolve(), expected[2])


@pytest.mark.parametrize("argv", [
    ["up", "--host", "ssh://x"], ["up", "-H", "ssh://x"], ["up", "--hosts", "all"],
    ["up", "--take-over"], ["up", "--help"], ["up", "-C"], ["up", "-C", "a", "-C", "b"],
    ["status"], ["up", "--parallel", "2"], ["up", "--dir="],
])
def test_anything_but_a_plain_up_takes_the_full_path(tmp_path: Path, argv: list[str]) -> None:
    assert quickup.parse_args(argv, tmp_path) is None


def test_engine_address_as_the_docker_cli_resolves_it(tmp_path: Path) -> None:
    assert quickup.engine_url({}, tmp_path) == ENGINE
    assert quickup.engine_url({"DOCKER_HOST": "tcp://h:2375"}, tmp_path) == "tcp://h:2375"
    assert quickup.engine_url({"DOCKER_CONTEXT": "remote"}, tmp_path) is None
    assert quickup.engine_url({"DOCKER_CONTEXT": "default"}, tmp_path) == ENGINE
    (tmp_path / ".docker").mkdir()
    (tmp_path / ".docker" / "config.json").write_text('{"currentContext": "gpu"}')
    assert quickup.engine_url({}, tmp_path) is None
    (tmp_path / ".docker" / "config.json").write_text('{"currentContext": "default"}')
    assert quickup.engine_url({}, tmp_path) == ENGINE


def test_no_record_takes_the_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMSTACK_DEBUG", "1")
    assert quickup.try_up(["up"]) is False
    assert "full path (no record of a converged `up`)" in capsys.readouterr().err


def test_the_fast_path_imports_neither_pydantic_nor_docker() -> None:
    import subprocess
    import sys

    code = ("import sys; from llmstack import quickup; from llmstack.engine import local_socket;"
            "bad = [m for m in ('pydantic', 'docker', 'typer', 'jinja2', 'yaml') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
