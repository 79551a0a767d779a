"""The engine compliance cases (tests/engine_compliance.py) on the fake engine."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from llmstack.engine.api import Engine
from tests.engine_compliance import CASES
from tests.fake_engine import FakeEngine


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("case_"))
def test_fake_engine_complies(case: Callable[[Engine], None]) -> None:
    # The fake's world: the stack's images, none called no-such-image.
    engine = FakeEngine(project="t-comp", missing_images={"llmstack/no-such-image:0"})
    assert isinstance(engine, Engine)
    case(engine)
