"""Integration fixtures shared across modules.

`shared_stack`: one chat-only stack with a per-IP request rate high enough for load from one
address (tests/helpers.make_unthrottled_stack), brought up once for the modules that used to
bring up one each: test_edge_limits, test_rotate, test_safe_updates and test_team_keys (in
that order, pytest's file order). Each cost a whole `up` (13-45 s on this 2-core machine)
plus its `down`. The modules leave it as the next expects: serving, in sync with stack.yaml,
no key grace window open, the current client key in `.env`; what they change (the key,
stack.yaml's model arguments, an alias, the nginx rate, team keys) the later modules read
from the folder instead of assuming the starter's values.

It is taken down right after the last collected test that uses it (not at the end of the
session), so it does not idle through the rest of the suite; run alone, a module still gets
its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import Stack, make_unthrottled_stack

SHARED = "shared_stack"
_state: dict[str, Any] = {"last": None, "stack": None}


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object
                 ) -> Iterator[Stack]:
    stack = make_unthrottled_stack(tmp_path_factory.mktemp("shared") / "proj",
                                   prefix="t-shared")
    _state["stack"] = stack
    try:
        stack.cli("up", check=True)
        yield stack
    finally:
        _down()


def _down() -> None:
    stack = _state["stack"]
    _state["stack"] = None
    if stack is not None:
        stack.cli("down", "--volumes")


def pytest_collection_finish(session: pytest.Session) -> None:
    users = [i.nodeid for i in session.items if SHARED in getattr(i, "fixturenames", ())]
    _state["last"] = users[-1] if users else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Iterator[None]:
    try:
        return (yield)
    finally:
        if item.nodeid == _state["last"]:
            _down()
