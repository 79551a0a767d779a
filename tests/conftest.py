"""Fixtures. Integration tests need a real Docker engine with the llmstack images
(`bash scripts/install.sh`); they fail, not skip, when it is missing, unless
LLMSTACK_SKIP_INTEGRATION=1 is set on purpose."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Stack, make_stack

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LLMSTACK_SKIP_INTEGRATION") != "1":
        return
    skip = pytest.mark.skip(reason="LLMSTACK_SKIP_INTEGRATION=1")
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    from llmstack.engine.client import connect

    return connect()


@pytest.fixture(scope="session")
def demo_stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object
               ) -> Iterator[Stack]:
    """One demo stack (chat + embedding model) shared by read-only API tests."""
    stack = make_stack(tmp_path_factory.mktemp("demo"), prefix="t-demo")
    stack.cli("up", check=True)
    yield stack
    stack.cli("down", "--volumes")


@pytest.fixture
def fresh_stack(tmp_path: Path, docker_client: object) -> Iterator[Stack]:
    """A project folder (init done, not up) torn down after the test."""
    stack = make_stack(tmp_path / "proj", prefix="t", embed=False)
    yield stack
    stack.cli("down", "--volumes")
