"""The edge's workers and connections, sized to nginx's memory limit (pure)."""

from __future__ import annotations

import re

import pytest
import yaml

from llmstack import capacity, initialize, render, spec
from llmstack.errors import SpecError
from llmstack.spec import Resources, size_bytes


@pytest.mark.parametrize(("res", "workers", "connections"), [
    (Resources(memory="256m"), 2, 1088),  # the default: (256 - 36 - 16) MiB / 96 KiB / 2
    (Resources(memory="1g"), 2, 4096),  # capped: more memory than 4,096 slots a worker need
    (Resources(memory="512m", cpus=4), 4, 1184),
    (Resources(memory="256m", cpus=0.5), 1, 2261),
    (Resources(memory="256m", cpus=64), 8, 208),  # too small: validation refuses it
    (Resources(), 2, 4096),  # no memory limit
])
def test_capacity(res: Resources, workers: int, connections: int) -> None:
    assert capacity.capacity(res) == capacity.EdgeCapacity(workers, connections)


@pytest.mark.parametrize("res", [Resources(memory="256m"), Resources(memory="2g", cpus=8),
                                 Resources(memory="100m")])
def test_the_worst_case_of_every_slot_fits_the_limit(res: Resources) -> None:
    edge = capacity.capacity(res)
    worst = capacity.fixed_bytes(edge.workers) + \
        edge.workers * edge.connections * capacity.CONNECTION_KIB * 1024
    assert res.memory is not None and worst <= size_bytes(res.memory)


def test_the_minimum_memory_gives_every_worker_its_minimum() -> None:
    res = Resources(memory="1m", cpus=3)
    least = capacity.min_memory(res)
    enough = Resources(memory=f"{-(-least // 1024**2)}m", cpus=3)
    assert capacity.capacity(enough).connections >= capacity.MIN_CONNECTIONS
    short = Resources(memory=f"{least // 1024**2 - 1}m", cpus=3)
    assert capacity.capacity(short).connections < capacity.MIN_CONNECTIONS


def test_too_little_memory_for_nginx_is_refused_naming_field_and_minimum() -> None:
    data = yaml.safe_load(initialize.starter())
    data["resources"] = {"nginx": {"memory": "64m"}}
    with pytest.raises(SpecError) as info:
        spec.parse(yaml.safe_dump(data))
    problem = next(p for p in info.value.problems if p.path == "resources.nginx.memory")
    assert problem.value == "64m" and "256 connections" in problem.message
    assert re.search(r"at least \d+m", problem.hint)


def test_nginx_conf_carries_the_sized_workers_and_buffers() -> None:
    data = yaml.safe_load(initialize.starter())
    data["resources"] = {"nginx": {"memory": "512m", "cpus": 4}}
    conf = render.render(spec.parse(yaml.safe_dump(data))).files()["nginx.conf"].decode()
    assert "worker_processes 4;" in conf and "worker_connections 1184;" in conf
    assert "large_client_header_buffers 4 8k;" in conf
    assert "client_body_buffer_size 16k;" in conf
    assert "worker_processes auto" not in conf
