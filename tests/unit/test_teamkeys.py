"""Team keys, the pure parts: names, rates, durations, hashes as nginx's secure_link checks
them, expiry and grace, the store file, and what nginx's key files say (parsed with
crossplane); `keys` commands on a stack that is down (the store alone changes)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import crossplane
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmstack import keyops, render, secrets, spec, teamkeys
from llmstack.errors import SecretsError, UserError
from llmstack.initialize import init, starter
from llmstack.project import Loaded, load
from llmstack.teamkeys import Rate, Secret, Store, TeamKey
from tests.fake_engine import FakeEngine

STACK = spec.parse(starter())
NOW = 1_800_000_000
MODELS = [("deepseek-coder", "chat"), ("qwen-coder", "chat"), ("mistral", "chat"),
          ("smollm2-embed", "embedding")]


def secret_of(plain: str) -> str:
    match = teamkeys.KEY_RE.match(plain)
    assert match
    return match.group(2)


def key(name: str, **kw: Any) -> tuple[str, TeamKey]:
    plain, secret = teamkeys.new_secret()
    return plain, TeamKey(name=name, created=NOW, current=secret, **kw)


# --- inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "ci-bot", "a", "bob.smith@example.com", "x_1"])
def test_names_of_the_safe_alphabet_are_accepted(name: str) -> None:
    assert teamkeys.check_name(name) == name


@pytest.mark.parametrize("name", ["", "Alice", "-x", "a b", 'a"b', "a;b", "a$b", "a{b",
                                  "a\nb", "x" * 65, "master", "ünï", "a'b", "a\\b"])
def test_names_that_could_reach_nginx_as_syntax_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="key name"):
        teamkeys.check_name(name)


@pytest.mark.parametrize(("text", "rate", "retry"), [
    ("5/s", Rate(5, "s"), 1), ("5", Rate(5, "s"), 1), ("5r/s", Rate(5, "s"), 1),
    ("30/m", Rate(30, "m"), 2), ("1/m", Rate(1, "m"), 60), (" 2 / s ", Rate(2, "s"), 1)])
def test_rates(text: str, rate: Rate, retry: int) -> None:
    assert Rate.parse(text) == rate
    assert rate.retry_after == retry
    assert rate.nginx == f"{rate.count}r/{rate.per}"


@pytest.mark.parametrize("text", ["0", "0/s", "1.5/s", "5/h", "x", "", "100001/s", "-1"])
def test_bad_rates_name_the_option(text: str) -> None:
    with pytest.raises(UserError, match="--rate"):
        Rate.parse(text)


def test_durations() -> None:
    assert teamkeys.parse_duration("90d", "--expires", 10**9) == 90 * 86400
    assert teamkeys.parse_duration("45", "--expires", 10**9) == 45
    with pytest.raises(UserError, match="--expires '1y' is not a duration"):
        teamkeys.parse_duration("1y", "--expires", 10**9)
    with pytest.raises(UserError, match="longer than 1 days"):
        teamkeys.parse_duration("2d", "--grace", 86400)


# --- hashes -------------------------------------------------------------------------------------


def test_a_key_is_stored_only_as_the_hash_nginx_compares() -> None:
    plain, secret = teamkeys.new_secret()
    match = teamkeys.KEY_RE.match(plain)
    assert match and match.group(1) == secret.id
    # nginx: secure_link_md5 "$id:$secret" -> MD5, compared with the base64url value.
    expected = base64.urlsafe_b64encode(
        hashlib.md5(f"{secret.id}:{match.group(2)}".encode()).digest()).rstrip(b"=").decode()
    assert secret.hash == expected and len(secret.hash) == 22
    assert match.group(2) not in json.dumps(secret.to_dict())
    assert teamkeys.matches(plain, secret)
    assert not teamkeys.matches(plain[:-1] + ("A" if plain[-1] != "A" else "B"), secret)
    assert not teamkeys.matches(teamkeys.new_secret()[0], secret)


def test_two_keys_never_share_an_id_or_a_secret() -> None:
    made = [teamkeys.new_secret() for _ in range(200)]
    assert len({s.id for _, s in made}) == 200 and len({k for k, _ in made}) == 200


# --- expiry and grace ---------------------------------------------------------------------------


def test_accepted_secrets_follow_expiry_and_grace() -> None:
    _, k = key("a", expires=NOW + 100)
    assert [s.expires for s in k.secrets(NOW)] == [NOW + 100]
    assert k.secrets(NOW + 100) == [] and k.expired(NOW + 100)
    prev = Secret("p" * 12, "h" * 22, expires=NOW + 50)
    rotated = TeamKey("a", NOW, k.current, expires=NOW + 30, previous=prev)
    # The previous secret ends with its grace window or the key, whichever is first.
    assert [s.expires for s in rotated.secrets(NOW)] == [NOW + 30, NOW + 30]
    long = TeamKey("a", NOW, k.current, previous=prev)
    assert [s.id for s in long.secrets(NOW + 49)] == [k.current.id, prev.id]
    assert [s.id for s in long.secrets(NOW + 50)] == [k.current.id]


# --- the store ----------------------------------------------------------------------------------


def test_store_round_trip_is_private_and_holds_no_key(tmp_path: Path) -> None:
    plain, k = key("alice", rate=Rate(3, "s"), burst=2, concurrent=1, models=("mistral",),
                   expires=NOW + 10)
    path = tmp_path / teamkeys.STORE_FILE
    teamkeys.save(path, Store().with_key(k))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert plain not in path.read_text() and secret_of(plain) not in path.read_text()
    assert teamkeys.load(path) == Store((k,))
    assert teamkeys.load(tmp_path / "absent") == Store()


def test_store_problems_are_named(tmp_path: Path) -> None:
    path = tmp_path / teamkeys.STORE_FILE
    path.write_text('{"version": 1, "keys": [{"name": "A B"}]}')
    path.chmod(0o600)
    with pytest.raises(SecretsError, match="not a valid key store"):
        teamkeys.load(path)
    path.chmod(0o644)
    with pytest.raises(SecretsError, match="readable by other users"):
        teamkeys.load(path)
    _, k = key("a")
    path.write_text(json.dumps({"version": 1, "keys": [k.to_dict(), k.to_dict()]}))
    path.chmod(0o600)
    with pytest.raises(SecretsError, match="appears twice"):
        teamkeys.load(path)


# --- nginx's key files --------------------------------------------------------------------------


def parsed(text: str, name: str) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
    try:
        out = crossplane.parse(f.name, single=True, check_ctx=False, check_args=False,
                               comments=False)
    finally:
        os.unlink(f.name)
    assert out["status"] == "ok", (name, out["errors"])
    return out["config"][0]["parsed"]


def maps(block: list[dict[str, Any]]) -> dict[str, list[list[str]]]:
    return {d["args"][1]: [[e["directive"], *e["args"]] for e in d["block"]]
            for d in block if d["directive"] == "map"}


def files_for(store: Store, now: float = NOW) -> tuple[str, str]:
    keys = secrets.generate()
    return (render.render_nginx_keys(keys, now, STACK, store).decode(),
            render.render_nginx_key_limits(STACK, store, now).decode())


def test_key_files_carry_hashes_names_limits_and_models_never_keys() -> None:
    alice_key, alice = key("alice", rate=Rate(2, "s"), burst=1)
    bob_key, bob = key("bob", concurrent=1, models=("mistral",), expires=NOW + 60)
    carol_key, carol = key("carol", rate=Rate(2, "s"), burst=1)
    conf, limits = files_for(Store((alice, bob, carol)))
    for plain in (alice_key, bob_key, carol_key):
        assert secret_of(plain) not in conf + limits
    m = maps(parsed(conf, "keys.conf"))
    assert [alice.current.id, alice.current.hash] in m["$llmstack_team_hash"]
    assert [bob.current.id, f"{bob.current.hash},{NOW + 60}"] in m["$llmstack_team_hash"]
    assert [f"1:{alice.current.id}", "alice"] in m["$llmstack_key_name"]
    # Keys with the same limits share one zone; the rest use stack.yaml's rate_limit.
    assert m["$llmstack_kr_2s_1"] == [["default", ""], ["alice", "alice"], ["carol", "carol"]]
    assert m["$llmstack_kr_10s_20"] == [["default", ""], ["bob", "bob"]]
    assert m["$llmstack_kc_1"] == [["default", ""], ["bob", "bob"]]
    assert m["$llmstack_kc_100"] == [["default", ""], ["alice", "alice"], ["carol", "carol"]]
    assert [d["args"] for d in parsed(limits, "key-limits.conf")] == [
        ["zone=llmstack_kr_10s_20", "burst=20", "nodelay"],
        ["zone=llmstack_kr_2s_1", "burst=1", "nodelay"],
        ["llmstack_kc_1", "1"], ["llmstack_kc_100", "100"]]
    # 429 bodies: JSON naming the key and the limit; rate vs concurrency by limit_conn_status.
    too_many = dict((a[0], a[1]) for a in m["$llmstack_too_many"])
    rate_body = json.loads(too_many[":alice"])["error"]
    assert rate_body["code"] == "key_rate_limit_exceeded" and "'alice'" in rate_body["message"]
    assert "2 requests/s (burst 1)" in rate_body["message"]
    conc = json.loads(too_many["REJECTED:bob"])["error"]
    assert conc["code"] == "key_concurrency_limit_exceeded" and "1 request at" in conc["message"]
    assert json.loads(too_many["default"])["error"]["code"] == "rate_limit_exceeded"
    # Models: bob's header, his own /v1/models, /v1/models/OTHER refused.
    assert ["bob", "mistral"] in m["$llmstack_key_models"]
    listing = dict((a[0], a[1]) for a in m["$llmstack_models_list"])
    assert [d["id"] for d in json.loads(listing["GET /v1/models|bob"])["data"]] == ["mistral"]
    rules = m["$llmstack_model_denied"][1:]
    assert [r[0] for r in rules if len(r) == 2 and r[1] == ""] == \
        ["~^bob\\|/v1/models/(?:mistral)$"]

    def verdict(subject: str) -> str:
        for rule in rules:
            if re.search(rule[0][1:], subject):
                return rule[1]
        return ""
    assert verdict("bob|/v1/models/mistral") == ""
    assert "'bob' may not use" in verdict("bob|/v1/models/deepseek-coder")
    assert verdict("alice|/v1/models/deepseek-coder") == ""


def test_expired_keys_never_reach_nginx() -> None:
    _, gone = key("gone", expires=NOW - 1)
    conf, limits = files_for(Store((gone,)))
    assert gone.current.id not in conf and "gone" not in conf + limits


def test_no_team_keys_renders_valid_empty_maps() -> None:
    conf, limits = files_for(Store())
    m = maps(parsed(conf, "keys.conf"))
    assert m["$llmstack_team_hash"] == [["default", ""]]
    assert parsed(limits, "key-limits.conf") == []


@settings(max_examples=300, deadline=None, derandomize=True)
@given(name=st.text(min_size=1, max_size=70))
def test_fuzzed_names_are_refused_or_harmless(name: str) -> None:
    """Nothing a name contains may reach nginx's files as syntax: a name is refused, or the
    files parse to the same directives as with a plain name."""
    try:
        teamkeys.check_name(name)
    except UserError:
        return
    _, k = key(name, rate=Rate(1, "s"), models=("mistral",))
    _, plain = key("plain", rate=Rate(1, "s"), models=("mistral",))
    shape = [(d["directive"], len(d["args"]), len(d.get("block", [])))
             for d in parsed(files_for(Store((k,)))[0], name)]
    assert shape == [(d["directive"], len(d["args"]), len(d.get("block", [])))
                     for d in parsed(files_for(Store((plain,)))[0], "plain")]


# --- keys commands with the stack down ----------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Loaded:
    init(tmp_path)
    return load(tmp_path)


def test_commands_on_a_stack_that_is_down_change_the_store_alone(project: Loaded) -> None:
    engine = FakeEngine(project=project.spec.project)  # nothing runs
    said: list[str] = []
    out = project.paths.root / "alice.key"
    issued = keyops.add(project, engine, "alice", rate="5/s", models=["mistral"],
                        expires="30d", out=out, progress=said.append)
    assert not issued.live and "not up" in said[0]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    plain = out.read_text().strip()
    assert "key" not in issued.to_dict() and issued.to_dict()["out"] == str(out)
    stored = project.team_keys().get("alice")
    assert teamkeys.matches(plain, stored.current) and stored.models == ("mistral",)
    assert stored.rate == Rate(5, "s") and stored.expires is not None
    with pytest.raises(UserError, match="exists"):
        keyops.add(project, engine, "alice", progress=said.append)
    with pytest.raises(UserError, match=r"--out .* exists"):
        keyops.add(project, engine, "bob", out=out, progress=said.append)
    with pytest.raises(UserError, match=r"not a model of stack\.yaml"):
        keyops.add(project, engine, "bob", models=["gpt-4"], progress=said.append)
    rotated = keyops.rotate_key(project, engine, "alice", "1h", None, said.append)
    after = project.team_keys().get("alice")
    assert teamkeys.matches(rotated.key, after.current)
    assert after.previous is not None and after.previous.id == stored.current.id
    assert rotated.grace_ends == after.previous.expires
    assert [r["name"] for r in keyops.listing(project, None)] == ["alice"]
    row = keyops.listing(project, None)[0]
    assert row["rate"] == "5/s" and row["defaults"] == ["burst", "concurrent"]
    assert plain not in json.dumps(row) and rotated.key not in json.dumps(row)
    keyops.revoke(project, engine, "alice", said.append)
    assert project.team_keys() == Store()
    with pytest.raises(UserError, match="no key named 'alice'"):
        keyops.revoke(project, engine, "alice", said.append)


def test_up_ships_the_team_keys(project: Loaded) -> None:
    _, k = key("alice")
    teamkeys.save(project.paths.team_keys, Store((k,)))
    files = load(project.paths.root).nginx_secret_files()
    assert k.current.hash.encode() in files[render.KEYS_FILE][0]
    assert b"limit_req zone=llmstack_kr_10s_20" in files[render.KEY_LIMITS_FILE][0]


def test_status_counts_keys_and_names_those_expiring_within_14_days(project: Loaded) -> None:
    now = teamkeys.now_s()
    _, soon = key("soon", expires=now + 3 * 86400)
    _, later = key("later", expires=now + 30 * 86400)
    _, gone = key("gone", expires=now - 1)
    teamkeys.save(project.paths.team_keys, Store((gone, later, soon)))
    got = keyops.summary(project)
    assert got["count"] == 3 and got["expired"] == ["gone"]
    assert [k["name"] for k in got["expiring_soon"]] == ["soon"]
