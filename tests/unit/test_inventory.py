"""The `hosts:` inventory of stack.yaml: the merge rule, its errors with their lines, per-host
validation, and fuzzed overrides (as tests/unit/test_fuzz_spec.py fuzzes the stack itself)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmstack import render, spec
from llmstack.errors import SpecError, UserError
from llmstack.initialize import init, starter
from llmstack.project import load
from tests.unit.test_fuzz_spec import BASELINE, VALUES, _directives

BASE: dict[str, Any] = yaml.safe_load(starter())
MODEL = BASE["models"][0]["name"]  # deepseek-coder, the starter's chat model
NAMES = [m["name"] for m in BASE["models"]]


def fleet_of(hosts: Any) -> str:
    doc = copy.deepcopy(BASE)
    doc["hosts"] = hosts
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        spec.parse_fleet(text, "stack.yaml")
    return [p.render("stack.yaml") for p in info.value.problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# --- the merge rule --------------------------------------------------------------------------


def test_models_match_by_name_maps_merge_lists_replace() -> None:
    fleet = spec.parse_fleet(fleet_of({"gpu-1": {
        "engine": "ssh://ci@gpu-1", "domain": "gpu-1.example.com",
        "listeners": {"https": {"port": 8443}},
        "models": {MODEL: {"context": 8192, "args": ["--threads", "2"],
                           "resources": {"cpus": 2}}},
    }}))
    base, host = fleet.base, fleet.hosts["gpu-1"]
    model = next(m for m in host.spec.models if m.name == MODEL)
    was = next(m for m in base.models if m.name == MODEL)
    assert host.engine == "ssh://ci@gpu-1" and host.key == "fleet"
    assert host.spec.domain == "gpu-1.example.com"
    # maps merge: the https listener keeps its bind, the others stay as they were
    assert host.spec.listeners.https.port == 8443
    assert host.spec.listeners.https.bind == base.listeners.https.bind
    assert host.spec.listeners.local == base.listeners.local
    # the model keeps every field not overridden; a list replaces the stack's whole
    assert (model.context, model.args, model.source) == (8192, ["--threads", "2"], was.source)
    assert model.resources.cpus == 2 and model.resources.memory == was.resources.memory
    assert [m.name for m in host.spec.models] == [m.name for m in base.models]
    assert base.models == spec.parse(starter()).models  # the stack itself is unchanged


def test_a_model_absent_on_a_host_and_one_only_there() -> None:
    extra = {"name": "only-here", "source": "volume:llmstack-models/x.gguf"}
    fleet = spec.parse_fleet(fleet_of({
        "a": {"models": {NAMES[-1]: "absent"}, "add_models": [extra]},
        "b": None,  # a host with nothing different
    }))
    assert [m.name for m in fleet.hosts["a"].spec.models] == [*NAMES[:-1], "only-here"]
    assert [m.name for m in fleet.hosts["b"].spec.models] == NAMES
    assert fleet.hosts["b"].engine is None
    assert "only-here" not in [m.name for m in fleet.base.models]


def test_inventory_order_is_kept_and_each_host_text_is_its_own_valid_stack() -> None:
    fleet = spec.parse_fleet(fleet_of({n: {"project": f"p-{n}"} for n in ("z", "a", "m")}))
    assert list(fleet.hosts) == ["z", "a", "m"]
    for name, host in fleet.hosts.items():
        again = spec.parse(host.text)
        assert again == host.spec and again.project == f"p-{name}"
        assert "hosts" not in yaml.safe_load(host.text)


# --- errors with their lines -----------------------------------------------------------------


def test_an_override_naming_an_unknown_model_is_an_error_with_its_line() -> None:
    text = fleet_of({"gpu-1": {"models": {"deepseek-codr": {"context": 8192}}}})
    found = problems(text)
    assert found == [f"stack.yaml:{line_of(text, 'deepseek-codr')}: hosts.gpu-1.models."
                     "deepseek-codr: names a model the stack does not have (got "
                     "'deepseek-codr')\n    fix: did you mean 'deepseek-coder'?; a model only "
                     "this host serves goes under add_models:, as a complete model"]


def test_an_override_naming_an_unknown_field_is_an_error_with_its_line() -> None:
    text = fleet_of({"gpu-1": {"models": {MODEL: {"contxt": 8192}}}})
    (found,) = problems(text)
    assert found.startswith(f"stack.yaml:{line_of(text, 'contxt')}: hosts.gpu-1.models."
                            f"{MODEL}.contxt: on host gpu-1: is not a known key")
    assert "did you mean 'context'?" in found


def test_an_unknown_host_key_and_a_bad_value_name_their_lines() -> None:
    text = fleet_of({"gpu-1": {"domian": "x.example.com",
                               "listeners": {"https": {"port": 70000}}}})
    found = problems(text)
    assert any(f.startswith(f"stack.yaml:{line_of(text, 'domian')}: hosts.gpu-1.domian: is "
                            "not a key a host can set") and "did you mean 'domain'?" in f
               for f in found), found
    assert any(f.startswith(f"stack.yaml:{line_of(text, '70000')}: hosts.gpu-1.listeners."
                            "https.port: on host gpu-1:") for f in found), found


def test_a_rule_broken_only_by_the_merge_names_the_host() -> None:
    """The override makes a model need a GPU it has not got: the problem is the host's."""
    text = fleet_of({"gpu-1": {"models": {MODEL: {"backend": "vllm",
                                                  "source": "hf:Qwen/Qwen2.5-0.5B-Instruct"}}}})
    found = problems(text)
    assert any("on host gpu-1: backend 'vllm' needs at least one GPU" in f for f in found), found


def test_host_shapes_are_checked() -> None:
    for hosts, message in [
        (["gpu-1"], "hosts: must be a mapping of host names"),
        ({"GPU_1": {}}, "hosts.GPU_1: is not a valid host name"),
        ({"gpu-1": "ssh://x"}, "hosts.gpu-1: must be a mapping of the host's settings"),
        ({"gpu-1": {"engine": "ssh://x; rm -rf /"}}, "hosts.gpu-1.engine: is not a Docker "
         "engine"),
        ({"gpu-1": {"key": "mine"}}, "hosts.gpu-1.key: must be one of 'fleet', 'host'"),
        ({"gpu-1": {"models": {MODEL: "gone"}}}, f"hosts.gpu-1.models.{MODEL}: must be "
         "`absent` or a mapping"),
        ({"gpu-1": {"models": {MODEL: {"name": "other"}}}}, "cannot rename a model"),
        ({"gpu-1": {"models": {n: "absent" for n in NAMES}}}, "on host gpu-1: "),
        ({"gpu-1": {"add_models": [{"name": MODEL, "source": "volume:v/f.gguf"}]}},
         "hosts.gpu-1.add_models[0].name: on host gpu-1: duplicate model name"),
        ({"a": {"engine": "ssh://ci@gpu"}, "b": {"engine": "ssh://ci@gpu"}},
         "hosts.b.engine: deploys project 'llmstack' to the same engine as host a"),
    ]:
        found = problems(fleet_of(hosts))
        assert any(message in f for f in found), (hosts, found)


def test_every_problem_of_every_host_at_once() -> None:
    text = fleet_of({"a": {"models": {"nope": {}}}, "b": {"rate_limit": {"burst": -1}}})
    found = problems(text)
    assert len(found) == 2 and "hosts.a.models.nope" in found[0] and \
        "hosts.b.rate_limit.burst" in found[1]


def test_a_misspelt_hosts_key_gets_did_you_mean() -> None:
    doc = copy.deepcopy(BASE)
    doc["host"] = {"gpu-1": {}}
    (found,) = problems(yaml.safe_dump(doc))
    assert "did you mean 'hosts'?" in found


# --- per-host folders --------------------------------------------------------------------------


def test_a_host_loads_with_its_own_certs_and_config_and_the_fleet_key(tmp_path: Path) -> None:
    init(tmp_path)
    text = (tmp_path / "stack.yaml").read_text()
    (tmp_path / "stack.yaml").write_text(
        text + "hosts:\n  gpu-1:\n    domain: gpu-1.example.com\n  gpu-2:\n    key: host\n")
    one, two = load(tmp_path, host="gpu-1"), load(tmp_path, host="gpu-2")
    assert one.paths.env == tmp_path / ".env"  # one client key for the fleet
    assert two.paths.env == tmp_path / "hosts" / "gpu-2" / ".env"
    assert one.paths.certs == tmp_path / "hosts" / "gpu-1" / "certs"
    assert one.paths.config == tmp_path / "hosts" / "gpu-1" / "config"
    assert one.paths.team_keys == tmp_path / ".keys.json"
    assert one.spec.domain == "gpu-1.example.com" and one.host == "gpu-1"
    assert yaml.safe_load(one.stack_text())["domain"] == "gpu-1.example.com"
    with pytest.raises(UserError) as err:
        load(tmp_path, host="gpu-3")
    assert "gpu-1, gpu-2" in err.value.message


# --- fuzzing -----------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("LLMSTACK_FUZZ_EXAMPLES", "1500")) // 3
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MODEL_FIELDS = [*spec.ModelSpec.model_fields, "contxt", "gpu", ""]
TOP = ["engine", "key", "project", "domain", "listeners", "rate_limit", "timeouts",
       "max_body_size", "images", "resources", "kubernetes", "version", "hosts", "modles"]


def _check(text: str) -> None:
    """A fleet document is valid for every host, or a SpecError naming each problem; every
    host's nginx.conf has only directives a clean render has."""
    try:
        fleet = spec.parse_fleet(text, "fuzz.yaml")
    except SpecError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.path and problem.message
        return
    for host in fleet.hosts.values():
        conf = render.render(host.spec).files()["nginx.conf"]
        assert _directives(conf) <= BASELINE
        assert spec.parse(host.text) == host.spec


@FUZZ
@given(name=st.sampled_from([*NAMES, "nope"]), field=st.sampled_from(MODEL_FIELDS),
       value=VALUES)
def test_fuzzed_model_overrides(name: str, field: str, value: Any) -> None:
    _check(fleet_of({"gpu-1": {"models": {name: {field: value}}}}))


@FUZZ
@given(key=st.sampled_from(TOP), value=VALUES)
def test_fuzzed_host_keys(key: str, value: Any) -> None:
    _check(fleet_of({"gpu-1": {key: value}}))


@FUZZ
@given(hosts=VALUES)
def test_fuzzed_inventories(hosts: Any) -> None:
    _check(fleet_of(hosts))
