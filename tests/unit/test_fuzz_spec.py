"""Property-based fuzzing of stack.yaml: any document gives a valid spec or a clear SpecError;
never a traceback, and never a rendered nginx.conf with directives the template does not have."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import crossplane
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmstack import render, spec
from llmstack.errors import SpecError
from llmstack.initialize import starter

# Bounded for CI; LLMSTACK_FUZZ_EXAMPLES raises it for a longer local run.
EXAMPLES = int(os.environ.get("LLMSTACK_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BASE: dict[str, Any] = yaml.safe_load(starter())

HOSTILE = st.sampled_from([
    "a;b", "x}", "{", "x\nserver { listen 1; }", "evil; include /etc/passwd", "$host",
    "..", "../../etc", "\u202e\u0000", "ünïcödé", "A" * 5000, "", " ", "'", '"', "#",
    "127.0.0.1; return 200", "-1", "1e309", "0x10", "~*", "\\", "\r\n",
])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), HOSTILE,
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


ALL_PATHS = [p for p in _paths(BASE) if p]


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


def _baseline_directives() -> set[str]:
    return _directives(render.render(spec.parse(starter())).files()["nginx.conf"])


def _directives(conf: bytes, tmp: Path | None = None) -> set[str]:
    path = (tmp or Path(os.environ.get("TMPDIR", "/tmp"))) / f"fuzz-nginx-{os.getpid()}.conf"
    path.write_bytes(conf)
    try:
        parsed = crossplane.parse(str(path), single=True, check_ctx=True, check_args=False,
                                  comments=False)
    finally:
        path.unlink()
    assert parsed["status"] == "ok", parsed["errors"]
    found: set[str] = set()

    def walk(block: list[dict[str, Any]]) -> None:
        for d in block:
            found.add(d["directive"])
            walk(d.get("block", []))

    walk(parsed["config"][0]["parsed"])
    return found


BASELINE = _baseline_directives()


def _check(text: str) -> None:
    try:
        parsed = spec.parse(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.problems, "a SpecError must name at least one problem"
        for problem in exc.problems:
            assert problem.path and problem.message
        assert "Traceback" not in exc.message
        return
    conf = render.render(parsed).files()["nginx.conf"]
    assert _directives(conf) <= BASELINE
    assert conf.count(b"server {") <= 2


@FUZZ
@given(path=st.sampled_from(ALL_PATHS), value=VALUES)
def test_any_single_field_mutation(path: tuple[Any, ...], value: Any) -> None:
    _check(yaml.safe_dump(_set(BASE, path, value), allow_unicode=True))


@FUZZ
@given(extra=st.dictionaries(st.text(min_size=1, max_size=12), VALUES, min_size=1, max_size=3))
def test_unknown_keys_anywhere(extra: dict[str, Any]) -> None:
    doc = copy.deepcopy(BASE)
    doc.update(extra)
    _check(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=max(200, EXAMPLES // 3), deadline=None, derandomize=True)
@given(text=st.text(max_size=400))
def test_arbitrary_text(text: str) -> None:
    _check(text)


@pytest.mark.parametrize("text", [
    # billion laughs: refused before it expands
    "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nmodels: *e\n",
    "[" * 5000 + "]" * 5000,
    "!!python/object/apply:os.system ['echo pwned']",
    "models: !!binary aGVsbG8=",
    "\x00\x01",
    "---\n---\n",
    "domain: 'evil.com; include /etc/shadow'\nmodels: []",
], ids=["alias-bomb", "deep-nesting", "python-tag", "binary-tag", "control-chars",
        "two-documents", "injected-domain"])
def test_hostile_documents(text: str) -> None:
    with pytest.raises(SpecError):
        spec.parse(text, "hostile.yaml")


@pytest.mark.parametrize(("field", "value"), [
    ("domain", "example.com;\n    return 200 'pwned'"),
    ("domain", "example.com}"),
    ("project", "demo; rm -rf /"),
    ("max_body_size", "10m; allow all"),
])
def test_injection_into_nginx_is_refused_with_the_field_named(field: str, value: str) -> None:
    with pytest.raises(SpecError) as info:
        spec.parse(yaml.safe_dump(_set(BASE, (field,), value)), "stack.yaml")
    assert any(p.path == field for p in info.value.problems)
