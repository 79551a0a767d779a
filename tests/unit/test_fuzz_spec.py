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
# What once got through: `ipaddress` takes almost any text after an IPv6 scope ID's `%`.
# Separators nginx, YAML or Python may treat as a line end or blank: U+2028, U+0085, U+00A0...
SEPARATORS = "\n\r\t \u2028\u2029\u0085\u00a0\u3000\x0b\x0c"
NGINX_SYNTAX = ";{}$#'\"\\"
SCOPE_TEXT = st.lists(st.sampled_from([*SEPARATORS, *NGINX_SYNTAX, "a", "set", "1", "_"]),
                      max_size=12).map("".join)
IPV6_SCOPED = st.builds(lambda ip, scope: f"{ip}%{scope}", st.ip_addresses(v=6).map(str),
                        SCOPE_TEXT)
HOSTS = st.one_of(
    IPV6_SCOPED, st.ip_addresses().map(str),
    st.builds(lambda host, sep, tail: f"{host}{sep}{tail}",
              st.sampled_from(["api.example.com", "localhost", "127.0.0.1", "::1"]),
              st.sampled_from(list(SEPARATORS + NGINX_SYNTAX)), SCOPE_TEXT),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), HOSTILE, HOSTS,
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


def _baseline_directives() -> set[tuple[str, ...]]:
    return _directives(render.render(spec.parse(starter())).files()["nginx.conf"])


def _structure(conf: bytes) -> list[tuple[tuple[str, ...], int]]:
    """Every directive as (its chain of enclosing directives + itself, number of args), in
    order: a value that adds, removes, nests or splits a directive changes it."""
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"fuzz-nginx-{os.getpid()}.conf"
    path.write_bytes(conf)
    try:
        parsed = crossplane.parse(str(path), single=True, check_ctx=True, check_args=False,
                                  comments=False)
    finally:
        path.unlink()
    assert parsed["status"] == "ok", parsed["errors"]
    found: list[tuple[tuple[str, ...], int]] = []

    def walk(block: list[dict[str, Any]], chain: tuple[str, ...]) -> None:
        for d in block:
            found.append(((*chain, d["directive"]), len(d["args"])))
            walk(d.get("block", []), (*chain, d["directive"]))

    walk(parsed["config"][0]["parsed"], ())
    return found


def _directives(conf: bytes) -> set[tuple[str, ...]]:
    """The directives with their nesting (http > server > location > if > return ...)."""
    return {chain for chain, _ in _structure(conf)}


BASELINE = _baseline_directives()
CLEAN = render.render(spec.parse(starter())).files()["nginx.conf"]


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


# Every stack.yaml field whose value reaches nginx.conf (listener binds reach the engine's port
# bindings, and are held to the same grammar).
NGINX_FIELDS = [("domain",), ("project",), ("max_body_size",), ("listeners", "local", "bind"),
                ("listeners", "lan", "bind"), ("listeners", "https", "bind"),
                ("rate_limit", "requests_per_second"), ("rate_limit", "burst"),
                ("rate_limit", "max_concurrent"), ("timeouts", "read"), ("timeouts", "send"),
                ("timeouts", "connect"), ("timeouts", "client_body"), ("models", 0, "name")]
INJECTIONS = [
    "::1%x; set $llmstack_key_ok 1; #",  # the review's finding: no key needed on HTTPS
    "fe80::1%eth0", "::1%x", "::1%x _", "::1%x\n}", "::1%{", "::1%$host", "::1%\u2028a;",
    "::1%\u0085b", "::1%'", '::1%"', "127.0.0.1 extra", "api.example.com\n", "localhost;",
    "a\u2028b.com", "example.com\u0085", "exa mple.com", "example.com\u00a0", "\u3000",
    "_", "-a.com", "a-.com", "a..com", "a" * 64 + ".com", "\uff45xample.com", "\u0130.com",
    "10m; allow all", "1 2", "x}",
]


@pytest.mark.parametrize("field", NGINX_FIELDS, ids=lambda f: ".".join(map(str, f)))
def test_hostile_values_never_change_the_shape_of_nginx_conf(field: tuple[Any, ...]) -> None:
    """Each hostile value is refused naming the field, or renders a config with exactly the
    directives, nesting and argument counts of a clean render."""
    for value in INJECTIONS:
        try:
            parsed = spec.parse(yaml.safe_dump(_set(BASE, field, value), allow_unicode=True))
        except SpecError as exc:
            where = ".".join(str(p) for p in field).replace(".0.", "[0].")
            assert any(p.path == where for p in exc.problems), (value, exc.problems)
            continue
        conf = render.render(parsed).files()["nginx.conf"]
        assert _structure(conf) == _structure(CLEAN), (field, value)


@pytest.mark.parametrize("value", ["::1%x; set $llmstack_key_ok 1; #", "fe80::1%eth0"])
def test_scope_ids_are_refused_in_domain_and_binds(value: str) -> None:
    for field in [("domain",), ("listeners", "https", "bind")]:
        with pytest.raises(SpecError) as info:
            spec.parse(yaml.safe_dump(_set(BASE, field, value)))
        assert "scope ID" in info.value.problems[0].message


@FUZZ
@given(path=st.sampled_from([("domain",), ("listeners", "local", "bind"),
                             ("listeners", "https", "bind")]), value=HOSTS)
def test_host_fields_fuzzed_with_scope_ids_and_separators(path: tuple[Any, ...],
                                                          value: str) -> None:
    _check(yaml.safe_dump(_set(BASE, path, value), allow_unicode=True))
