"""The engine compliance cases (tests/engine_compliance.py) on the real Docker engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmstack.engine.api import Engine
from llmstack.engine.containers import Project
from tests.engine_compliance import CASES
from tests.helpers import unique_project

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(docker_client: Any) -> Iterator[Project]:
    project = Project(docker_client, unique_project("t-comp"))
    yield project
    project.down(volumes=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_docker_engine_complies(case: Callable[[Engine], None], engine: Project) -> None:
    assert isinstance(engine, Engine)
    case(engine)
