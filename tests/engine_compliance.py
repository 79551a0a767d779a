"""Cases every `llmstack.engine.api.Engine` must pass: the real one (tests/integration/
test_engine_compliance.py, on Docker) and the fake one (tests/unit/
test_engine_compliance_fake.py), so the unit tests on the fake say something about Docker.

Each case takes a fresh engine for an empty project. Services run a tiny image already built
for the stack (LiteLLM's has python3): a sleeper, or a web server for the health service
(probes run in the health container).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from llmstack import names
from llmstack.engine.api import Activity, ContainerInfo, Engine, Task
from llmstack.errors import EngineError
from llmstack.plan import CONFIG_ROOT, Actual, ServiceSpec

IMAGE = "llmstack/litellm:1.108.7-m1"
SLEEP = "import time; print('hello', flush=True); time.sleep(600)"


def service(name: str, config: dict[str, bytes] | None = None,
            command: list[str] | None = None, image: str = IMAGE) -> ServiceSpec:
    return ServiceSpec(service=name, role="test", image=image, entrypoint=["python3"],
                       command=command or ["-c", SLEEP], config=config or {})


def health() -> ServiceSpec:
    return service(names.HEALTH, command=["-m", "http.server", str(names.HEALTH_PORT)])


def up(engine: Engine, *services: ServiceSpec) -> None:
    engine.ensure_network()
    for svc in services:
        if svc.config:
            engine.write_config(svc)
        engine.start(svc)


def eventually(check: Callable[[], object], timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


# --- the cases ---------------------------------------------------------------------------------


def case_start_state_labels_remove(engine: Engine) -> None:
    svc = service("svc-a")
    up(engine, svc)
    assert engine.state("svc-a")[0] == "running"
    info = engine.container("svc-a")
    assert isinstance(info, ContainerInfo)
    assert info.service == "svc-a" and info.name == names.container(engine.project, "svc-a")
    assert info.image == IMAGE and info.status == "running" and info.ports == ()
    assert info.labels[names.LABEL_PROJECT] == engine.project
    assert info.labels[names.LABEL_SERVICE] == "svc-a"
    assert info.labels[names.LABEL_HASH] == svc.config_hash()
    assert [i.service for i in engine.info()] == ["svc-a"]
    (actual,) = engine.actual()
    assert isinstance(actual, Actual)
    assert (actual.service, actual.config_hash, actual.status) == \
        ("svc-a", svc.config_hash(), "running")
    assert actual.image_id == engine.image_ids([IMAGE])[IMAGE]
    engine.remove("svc-a")
    assert engine.container("svc-a") is None
    assert engine.state("svc-a") == ("missing", None)
    engine.remove("svc-a")  # removing what is not there is no error


def case_start_replaces_the_old_container(engine: Engine) -> None:
    up(engine, service("svc-a"))
    first = engine.container("svc-a")
    engine.start(service("svc-a", command=["-c", SLEEP + " # v2"]))
    second = engine.container("svc-a")
    assert first is not None and second is not None and first.id != second.id
    assert first.labels[names.LABEL_HASH] != second.labels[names.LABEL_HASH]
    assert len(engine.info()) == 1


def case_down_removes_everything(engine: Engine) -> None:
    up(engine, service("svc-a"), service("svc-b", config={"a.conf": b"A"}))
    removed = engine.down(volumes=True)
    assert sorted(removed) == sorted(names.container(engine.project, s) for s in ("svc-a",
                                                                                 "svc-b"))
    assert engine.info() == [] and engine.actual() == []
    assert engine.down() == []


def case_config_round_trip(engine: Engine) -> None:
    svc = service("svc-a", config={"a.conf": b"A\n"})
    engine.ensure_network()
    engine.write_config(svc, {"secrets/k.conf": (b"K1", 0o600)})
    engine.start(svc)
    mount = f"{CONFIG_ROOT}/svc-a"
    assert engine.read_tree("svc-a", f"{mount}/a.conf") == {"a.conf": b"A\n"}
    assert engine.read_tree("svc-a", f"{mount}/secrets") == {"secrets/k.conf": b"K1"}
    # Shipping new files while it runs (as a key rotation does) is seen at once.
    engine.write_config(svc, {"secrets/k.conf": (b"K2", 0o600)})
    assert engine.read_tree("svc-a", f"{mount}/secrets") == {"secrets/k.conf": b"K2"}
    assert engine.read_tree("svc-a", f"{mount}/none") == {}
    assert engine.read_tree("nope", f"{mount}/a.conf") == {}


def case_exec_exit_codes_output_and_environment(engine: Engine) -> None:
    up(engine, service("svc-a"))
    assert engine.exec("svc-a", ["python3", "-c", "import sys; print('out'); sys.exit(3)"]) \
        == (3, "out\n")
    assert engine.exec("svc-a", ["python3", "-c", "import os; print(os.environ['K'])"],
                       environment={"K": "v"}) == (0, "v\n")


def case_run_task_streams_its_lines_returns_its_exit_code_and_leaves_nothing(
        engine: Engine) -> None:
    engine.ensure_network()
    lines: list[str] = []
    task = Task(name="task-a", image=IMAGE, entrypoint=["python3"], env={"K": "v"},
                command=["-c", "import os, sys; print('one'); print(os.environ['K']); "
                         "sys.exit(3)"])
    assert engine.run_task(task, lines.append) == 3
    assert lines == ["one", "v"]
    assert engine.container("task-a") is None
    assert engine.run_task(replace(task, command=["-c", "pass"]), lines.append) == 0


def case_missing_things_raise_engine_error(engine: Engine) -> None:
    engine.ensure_network()
    with pytest.raises(EngineError):
        engine.exec("nope", ["true"])
    with pytest.raises(EngineError):
        list(engine.logs("nope"))
    with pytest.raises(EngineError):
        engine.start(service("svc-x", image="llmstack/no-such-image:0"))
    assert engine.tail_logs("nope") == ""
    assert engine.image_ids([IMAGE, "llmstack/no-such-image:0"]) == {
        IMAGE: engine.image_ids([IMAGE])[IMAGE], "llmstack/no-such-image:0": None}
    assert engine.image_ids([IMAGE])[IMAGE]


def case_probe_from_inside_the_network(engine: Engine) -> None:
    with pytest.raises(EngineError):  # probes run in the health container
        engine.probe(f"http://{names.container(engine.project, 'svc-a')}:8000/")
    up(engine, health(), service("svc-a"))
    url = f"http://127.0.0.1:{names.HEALTH_PORT}/"
    assert eventually(lambda: engine.probe(url) == "200")
    missing = engine.probe(f"http://{names.container(engine.project, 'nope')}:8000/")
    assert missing.startswith("ERR ")


def case_scrape_from_inside_the_network(engine: Engine) -> None:
    served = f"http://{names.container(engine.project, names.HEALTH)}:{names.HEALTH_PORT}/"
    with pytest.raises(EngineError):  # scrapes run in the health container
        engine.scrape([served])
    up(engine, health())
    missing = f"http://{names.container(engine.project, 'nope')}:8000/metrics"
    answers = eventually(lambda: (a := engine.scrape([served, missing], {served: "k"}))
                         [served][0] is not None and a)
    assert isinstance(answers, dict)
    assert isinstance(answers[served][0], int)
    assert answers[missing][0] is None and answers[missing][1]  # the error, as text
    assert engine.scrape([]) == {}


def case_logs_of_a_service(engine: Engine) -> None:
    up(engine, service("svc-a"))
    assert eventually(lambda: engine.tail_logs("svc-a"))
    (chunk,) = list(engine.logs("svc-a", tail=5))
    assert isinstance(chunk, bytes) and chunk


TICKS = ("import time\nfor i in range(300):\n    print('tick', i, flush=True)\n"
         "    time.sleep(0.1)\ntime.sleep(600)")


def case_activity_reads_each_line_once(engine: Engine) -> None:
    assert engine.activity("svc-a") == Activity("", "")  # no container
    up(engine, service("svc-a", command=["-c", TICKS]))
    first = eventually(lambda: engine.activity("svc-a").output)
    assert first
    reads = [engine.activity("svc-a")]  # from the start again: what `first` had, and more
    assert reads[0].output.startswith(str(first).splitlines()[0])
    assert reads[0].cursor and reads[0].memory_bytes > 0
    for _ in range(3):
        time.sleep(0.3)
        reads.append(engine.activity("svc-a", reads[-1].cursor))
    lines = [line for r in reads for line in r.output.splitlines()]
    assert lines == list(dict.fromkeys(lines)), "a line was read twice"
    ticks = [int(line.split()[1]) for line in lines if line.startswith("tick")]
    assert ticks == sorted(ticks)


def case_host_facts_through_the_engine(engine: Engine) -> None:
    up(engine, service("svc-a"))
    assert engine.running_services() == {"svc-a": "running"}
    assert engine.present_images([IMAGE, "llmstack/no-such-image:0"]) == {
        IMAGE: True, "llmstack/no-such-image:0": False}
    assert engine.engine_facts().version
    assert all({"port", "ip", "container", "project"} <= set(p)
               for p in engine.published_ports())
    assert isinstance(engine.is_local(), bool)


def case_start_beside_then_rename(engine: Engine) -> None:
    """A start-first replacement: the new container runs under another key beside the old
    one, then the two swap names; labels stay the service's, keys follow the names."""
    up(engine, health(), service("svc-a"))
    new = service("svc-a", command=["-m", "http.server", "8000"])
    engine.start(new, "svc-a" + names.NEXT)
    assert {i.service for i in engine.info()} == {names.HEALTH, "svc-a", "svc-a_next"}
    nxt = engine.container("svc-a_next")
    assert nxt is not None and nxt.name == names.container(engine.project, "svc-a_next")
    assert nxt.labels[names.LABEL_SERVICE] == "svc-a"
    assert nxt.labels[names.LABEL_HASH] == new.config_hash()
    engine.rename("svc-a", "svc-a" + names.OLD)
    engine.rename("svc-a" + names.NEXT, "svc-a")
    assert sorted(a.service for a in engine.actual()) == sorted([names.HEALTH, "svc-a",
                                                                 "svc-a_old"])
    moved = engine.container("svc-a")
    assert moved is not None and moved.id == nxt.id and moved.status == "running"
    # Its DNS name on the project network is the service's now.
    url = f"http://{names.container(engine.project, 'svc-a')}:8000/"
    assert eventually(lambda: engine.probe(url) == "200")
    engine.remove("svc-a" + names.OLD)
    assert engine.state("svc-a_old") == ("missing", None)
    with pytest.raises(EngineError):
        engine.rename("svc-a_old", "svc-b")


def case_volume_round_trip(engine: Engine) -> None:
    volume = f"{engine.project}-history"
    assert engine.read_volume(volume, IMAGE) == {}
    engine.write_volume(volume, {"r/1.json": b"{}", "r/2.json": b"[]"}, IMAGE)
    engine.write_volume(volume, {"r/2.json": b"[1]"}, IMAGE)
    assert engine.read_volume(volume, IMAGE) == {"r/1.json": b"{}", "r/2.json": b"[1]"}
    engine.down(volumes=True)
    assert engine.read_volume(volume, IMAGE) == {}


def case_a_registry_that_does_not_answer(engine: Engine) -> None:
    """Nothing listens on 127.0.0.1:1: asking and pulling both say so, as llmstack's own
    error naming the registry (never a Docker SDK exception)."""
    from llmstack.errors import RegistryUnreachable

    ref = "127.0.0.1:1/llmstack-test/none:1"
    with pytest.raises(RegistryUnreachable, match="did not answer"):
        engine.registry_digest(ref)
    with pytest.raises(RegistryUnreachable):
        engine.pull(ref, lambda _: None)


CASES = [case_a_registry_that_does_not_answer, case_start_beside_then_rename,
         case_volume_round_trip, case_start_state_labels_remove,
         case_start_replaces_the_old_container,
         case_host_facts_through_the_engine, case_down_removes_everything, case_config_round_trip,
         case_exec_exit_codes_output_and_environment, case_missing_things_raise_engine_error,
         case_probe_from_inside_the_network, case_scrape_from_inside_the_network,
         case_logs_of_a_service, case_activity_reads_each_line_once,
         case_run_task_streams_its_lines_returns_its_exit_code_and_leaves_nothing]
