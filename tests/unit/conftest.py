"""Fixtures shared by the deploy and fast-path tests: a fresh `llmstack init` project and a
fake engine for it (polls without waiting)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmstack import deploy
from llmstack.initialize import init
from llmstack.project import Loaded, load
from tests.fake_engine import FakeEngine


@pytest.fixture
def loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Loaded:
    init(tmp_path)
    monkeypatch.setattr(deploy, "POLL_INTERVAL", 0.0)
    return load(tmp_path)


@pytest.fixture
def engine(loaded: Loaded) -> FakeEngine:
    return FakeEngine(project=loaded.spec.project)
