"""stack.yaml validation: every rule, its message, its line, and its fix."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llmstack import initialize, spec
from llmstack.errors import Problem, SpecError
from tests.helpers import REPO

STARTER = initialize.starter()


def starter() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(STARTER))


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        spec.parse(text, "stack.yaml")
    return info.value.problems


def problems_after(change: Callable[[dict[str, Any]], None]) -> list[Problem]:
    data = starter()
    change(data)
    return problems_of(yaml.safe_dump(data, sort_keys=False))


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [p.render("stack.yaml") for p in problems]
    return problems[0]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def model(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": "volume:llmstack-models/m.gguf", **extra}


def gpu_model(name: str, gpus: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "vllm", "source": f"hf:org/{name}", "gpus": gpus, **extra}


# --- the shipped stack files ------------------------------------------------------------------


def test_repo_stack_yaml_is_the_starter_and_valid() -> None:
    text = (REPO / "stack.yaml").read_text()
    assert text == STARTER, "stack.yaml drifted from templates/stack.yaml.j2 (run llmstack init)"
    parsed = spec.parse(text)
    names = [n for m in parsed.models for n in m.public_names]
    # The API guide's model names, plus the embedding model.
    assert {"deepseek-coder", "qwen-coder", "mistral"} <= set(names)
    assert any(m.task == "embedding" for m in parsed.models)
    assert parsed.listeners.local.port == 4000 and parsed.listeners.local.bind == "127.0.0.1"
    assert (parsed.rate_limit.requests_per_second, parsed.rate_limit.burst,
            parsed.rate_limit.max_concurrent) == (10, 20, 100)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_starter_profiles_are_valid(profile: str) -> None:
    parsed = spec.parse(initialize.starter("api.example.com", profile))
    assert parsed.domain == "api.example.com"
    if profile == "gpu":
        assert [m.gpu_ids for m in parsed.models if m.backend == "vllm"] == [["0"], ["1"]]


def test_defaults_from_the_issue() -> None:
    parsed = spec.parse("models: [{name: m, source: 'volume:v/m.gguf'}]\n")
    lst = parsed.listeners
    assert (lst.local.port, lst.local.bind) == (4000, "127.0.0.1")
    assert (lst.lan.port, lst.https.port) == (8080, 443)
    assert parsed.version == spec.SCHEMA_VERSION
    assert parsed.models[0].backend == "llamacpp" and parsed.models[0].gpus == "cpu"


# --- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "path", "suggestion"), [
    ("domain: localhost", "domian: localhost", "domian", "domain"),
    ("  requests_per_second: 10", "  request_per_second: 10", "rate_limit.request_per_second",
     "requests_per_second"),
    ("    backend: llamacpp\n    task", "    backnd: llamacpp\n    task", "models[1].backnd",
     "backend"),
    ("  local: {port: 4000,", "  local: {prot: 4000,", "listeners.local.prot", "port"),
    ("images: auto", "images: {sorce: auto}", "images.sorce", "source"),
])
def test_misspelt_key_gets_did_you_mean_and_its_line(old: str, new: str, path: str,
                                                     suggestion: str) -> None:
    assert STARTER.count(old) == 1
    text = STARTER.replace(old, new)
    problem = next(p for p in problems_of(text) if p.path == path)
    assert problem.message == "is not a known key"
    assert problem.hint == f"did you mean {suggestion!r}?"
    assert problem.line == line_of(text, new.strip().split("\n")[0].lstrip("- "))


def test_unknown_key_without_close_match_lists_the_allowed_keys() -> None:
    problem = only(problems_of(STARTER + "frobnicate: 1\n"))
    assert problem.path == "frobnicate"
    assert problem.hint.startswith("allowed keys: version, project, domain")
    assert problem.line == len(STARTER.splitlines()) + 1


# --- wrong types --------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "path", "message", "value"), [
    (lambda d: d["models"][0].update(context="big"), "models[0].context",
     "must be a whole number", "big"),
    (lambda d: d["listeners"]["local"].update(port="x"), "listeners.local.port",
     "must be a whole number", "x"),
    (lambda d: d["listeners"]["local"].update(enabled="maybe"), "listeners.local.enabled",
     "must be true or false", "maybe"),
    (lambda d: d.update(models={"a": 1}), "models", "must be a list", None),
    (lambda d: d.update(rate_limit=5), "rate_limit", "must be a mapping of keys to values", 5),
    (lambda d: d["models"][0].update(gpus="gpu"), "models[0].gpus",
     "must be `cpu` or a list of GPU indices/UUIDs", "gpu"),
    (lambda d: d["listeners"]["local"].update(bind="localhost"), "listeners.local.bind",
     "must be an IP address such as 127.0.0.1, 0.0.0.0 or ::1 (no scope ID)", "localhost"),
    (lambda d: d["models"][0].update(task="embeding"), "models[0].task",
     "must be one of 'chat' or 'embedding'", "embeding"),
])
def test_wrong_type_names_field_value_and_expectation(change: Callable[[dict[str, Any]], None],
                                                     path: str, message: str,
                                                     value: object) -> None:
    problem = only(problems_after(change))
    assert (problem.path, problem.message, problem.value) == (path, message, value)
    assert problem.line is not None


def test_misspelt_enum_value_gets_did_you_mean() -> None:
    problem = only(problems_after(lambda d: d["models"][1].update(task="embeding")))
    assert problem.hint == "did you mean 'embedding'?"
    problem = only(problems_after(lambda d: d["models"][0].update(gpus="cpus")))
    assert problem.hint == "did you mean 'cpu'?"


def test_out_of_range_numbers_say_the_bound() -> None:
    problem = only(problems_after(lambda d: d["listeners"]["local"].update(port=70000)))
    assert problem.path == "listeners.local.port" and "65535" in problem.message
    problem = only(problems_after(lambda d: d["rate_limit"].update(requests_per_second=0)))
    assert problem.path == "rate_limit.requests_per_second" and "1" in problem.message


def test_missing_required_fields_have_a_fix() -> None:
    problem = only(problems_after(lambda d: d.pop("models")))
    assert (problem.path, problem.message) == ("models", "is required")
    assert "models:" in problem.hint
    problem = only(problems_after(lambda d: d["models"][0].pop("source")))
    assert (problem.path, problem.message) == ("models[0].source", "is required")
    assert "volume:" in problem.hint


def test_line_numbers_point_at_the_bad_value() -> None:
    text = STARTER.replace("    context: 2048\n    args: [\"--threads\", \"1\"]",
                           "    context: lots\n    args: [\"--threads\", \"1\"]")
    assert text != STARTER
    problem = only(problems_of(text))
    assert problem.path == "models[1].context"
    assert problem.line == line_of(text, "context: lots")
    rendered = problem.render("stack.yaml")
    assert rendered.startswith(f"stack.yaml:{problem.line}: models[1].context: must be a whole "
                               "number (got 'lots')")


# --- all problems at once -----------------------------------------------------------------------


def test_every_schema_problem_is_reported_at_once_in_line_order() -> None:
    text = (STARTER.replace("domain: localhost", "domian: localhost")
            .replace("  burst: 20", "  burst: many")
            .replace("    context: 2048\n    args: [\"--threads\", \"1\"]",
                     "    context: 2048\n    args: [\"--threads\", \"1\"]\n    colour: red"))
    problems = problems_of(text)
    assert [p.path for p in problems] == ["domian", "rate_limit.burst", "models[1].colour"]
    assert [p.line for p in problems] == sorted(p.line or 0 for p in problems)
    message = SpecError("stack.yaml", problems).message
    assert message.startswith("stack.yaml is invalid (3 problems):")


def test_every_cross_field_problem_is_reported_at_once() -> None:
    def change(d: dict[str, Any]) -> None:
        d["listeners"]["lan"]["port"] = d["listeners"]["local"]["port"]
        d["models"] = [gpu_model("a", [0]), gpu_model("b", [0]), gpu_model("a", [1])]

    problems = problems_after(change)
    paths = sorted(p.path for p in problems)
    assert paths == ["listeners.lan.port", "models[1].gpus", "models[2].name"]


def test_schema_and_cross_field_problems_are_reported_together() -> None:
    def change(d: dict[str, Any]) -> None:
        d["domian"] = d.pop("domain")
        d["rate_limit"]["burst"] = "many"
        d["models"] = [gpu_model("a", [0]), gpu_model("b", [0]), gpu_model("c", [1])]
        d["listeners"]["lan"]["port"] = d["listeners"]["local"]["port"]

    paths = sorted(p.path for p in problems_after(change))
    assert paths == ["domian", "listeners.lan.port", "models[1].gpus", "rate_limit.burst"]


def test_cross_field_rules_skip_a_model_that_has_schema_errors() -> None:
    # models[1]'s backend is not a string: with it the rules would run on a default backend
    # and report things about the wrong server, so nothing more is said about that model.
    def change(d: dict[str, Any]) -> None:
        d["models"] = [gpu_model("a", [0]), gpu_model("b", [0], backend=5)]

    problem = only(problems_after(change))
    assert (problem.path, problem.message) == ("models[1].backend", "must be a string")


# --- cross-field rules --------------------------------------------------------------------------


def test_duplicate_model_name() -> None:
    problem = only(problems_after(lambda d: d["models"][1].update(name="deepseek-coder")))
    assert problem.path == "models[1].name"
    assert problem.message == "duplicate model name (also at models[0].name)"
    assert problem.value == "deepseek-coder"
    assert problem.hint == "give every model and alias a unique name"


def test_model_name_equal_to_another_models_alias() -> None:
    problem = only(problems_after(lambda d: d["models"][1].update(name="mistral")))
    assert problem.path == "models[1].name"
    assert "also at models[0].aliases[1]" in problem.message


def test_alias_equal_to_another_models_name_or_its_own_name() -> None:
    problem = only(problems_after(lambda d: d["models"][1].update(aliases=["deepseek-coder"])))
    assert problem.path == "models[1].aliases[0]"
    assert "also at models[0].name" in problem.message
    problem = only(problems_after(lambda d: d["models"][1].update(aliases=["smollm2-embed"])))
    assert problem.path == "models[1].aliases[0]"


def test_gpu_given_to_two_models() -> None:
    problem = only(problems_after(lambda d: d.update(
        models=[gpu_model("a", [0, 1]), gpu_model("b", [1])])))
    assert problem.path == "models[1].gpus"
    assert problem.message == "GPU 1 is already given to model 'a'"
    assert problem.value == [1]
    assert "gpu_share: true" in problem.hint


def test_gpu_share_on_both_models_allows_sharing() -> None:
    data = starter()
    data["models"] = [gpu_model("a", [0], gpu_share=True), gpu_model("b", [0], gpu_share=True)]
    parsed = spec.parse(yaml.safe_dump(data))
    assert [m.gpu_ids for m in parsed.models] == [["0"], ["0"]]


def test_gpu_share_on_one_model_only_is_not_enough() -> None:
    problem = only(problems_after(lambda d: d.update(
        models=[gpu_model("a", [0], gpu_share=True), gpu_model("b", [0])])))
    assert problem.path == "models[1].gpus"


def test_gpu_uuid_given_twice_and_gpu_listed_twice_in_one_model() -> None:
    uuid = "GPU-5a3c9e1b-0000-4000-8000-123456789abc"
    problem = only(problems_after(lambda d: d.update(
        models=[gpu_model("a", [uuid]), gpu_model("b", [uuid])])))
    assert problem.message == f"GPU {uuid} is already given to model 'a'"
    problem = only(problems_after(lambda d: d.update(models=[gpu_model("a", [2, 2])])))
    assert (problem.path, problem.message) == ("models[0].gpus", "lists a GPU twice")


@pytest.mark.parametrize("gpus", [["gpu0"], [-1], []])
def test_bad_gpu_entries(gpus: list[Any]) -> None:
    problem = only(problems_after(lambda d: d.update(models=[gpu_model("a", gpus)])))
    assert problem.path.startswith("models[0].gpus")


@pytest.mark.parametrize(("local", "lan", "clash"), [
    ({"port": 4000, "bind": "127.0.0.1"}, {"port": 4000, "bind": "127.0.0.1"}, True),
    ({"port": 4000, "bind": "127.0.0.1"}, {"port": 4000, "bind": "0.0.0.0"}, True),
    ({"port": 4000, "bind": "127.0.0.1"}, {"port": 4000, "bind": "127.0.0.2"}, False),
    ({"port": 4000, "bind": "127.0.0.1"}, {"port": 4000, "bind": "0.0.0.0", "enabled": False},
     False),
])
def test_port_clash(local: dict[str, Any], lan: dict[str, Any], clash: bool) -> None:
    data = starter()
    data["listeners"].update(local=local, lan=lan)
    text = yaml.safe_dump(data, sort_keys=False)
    if not clash:
        spec.parse(text)
        return
    problem = only(problems_of(text))
    assert problem.path == "listeners.lan.port"
    assert problem.message == "clashes with listeners.local (127.0.0.1:4000)"
    assert problem.value == 4000
    assert problem.hint == "give each listener its own port"


def test_https_port_clash_and_all_listeners_disabled() -> None:
    problem = only(problems_after(lambda d: d["listeners"]["https"].update(port=4000)))
    assert problem.path == "listeners.https.port"
    problem = only(problems_after(lambda d: [d["listeners"][n].update(enabled=False)
                                              for n in ("local", "lan", "https")]))
    assert (problem.path, problem.message) == ("listeners", "every listener is disabled")


def test_unknown_backend() -> None:
    problem = only(problems_after(lambda d: d["models"][0].update(backend="llamcpp")))
    assert (problem.path, problem.message, problem.value) == (
        "models[0].backend", "is not a known backend", "llamcpp")
    assert problem.hint == "did you mean 'llamacpp'?"
    problem = only(problems_after(lambda d: d["models"][0].update(backend="zzz")))
    assert problem.hint == "use one of: llamacpp, vllm, ollama, tgi"


def test_embedding_model_on_tgi() -> None:
    problem = only(problems_after(lambda d: d.update(
        models=[{"name": "e", "backend": "tgi", "task": "embedding", "source": "hf:org/e",
                 "gpus": [0]}])))
    assert (problem.path, problem.message) == ("models[0].task",
                                               "backend 'tgi' cannot serve embeddings")
    assert problem.hint == "use one of: llamacpp, vllm, ollama"


def test_vllm_without_gpus() -> None:
    problem = only(problems_after(lambda d: d.update(
        models=[{"name": "v", "backend": "vllm", "source": "hf:org/v"}])))
    assert (problem.path, problem.message, problem.value) == (
        "models[0].gpus", "backend 'vllm' needs at least one GPU", "cpu")
    assert "gpus: [0]" in problem.hint


@pytest.mark.parametrize(("source", "message"), [
    ("ftp://example.com/m.gguf", "unknown scheme 'ftp'"),
    ("m.gguf", "has no scheme"),
    ("volume:", "has no scheme"),
    ("host:models/m.gguf", "host: paths must be absolute"),
    ("volume:llmstack-models/../etc/passwd", "contains characters that are not allowed"),
    ("volume:models/m gguf", "contains characters that are not allowed"),
    ("volume:-bad/m.gguf", "volume name must match"),
])
def test_bad_source(source: str, message: str) -> None:
    problem = only(problems_after(lambda d: d["models"][0].update(source=source)))
    assert problem.path == "models[0].source"
    assert message in problem.message
    assert problem.value == source


# host: mounts the directory holding the file (backends.model_mount): never the host itself.
@pytest.mark.parametrize(("source", "reason"), [
    ("host:/var/run/docker.sock", "host:/var/run/docker.sock is a socket"),
    ("host:/run/containerd/containerd.sock", "is a socket"),
    ("host:/srv/models/docker.sock", "is a socket"),
    ("host:/", "would mount the host's root directory /"),
    ("host://", "would mount the host's root directory /"),
    ("host:/model.gguf", "would mount the host's root directory /"),
    ("host:/srv", "would mount the host's root directory /"),
    ("host:/etc/passwd", "would mount /etc into the model container, which exposes the system "
                         "location /etc"),
    ("host://etc//ssl/", "would mount /etc into"),
    ("host:/./proc/1/root/m.gguf", "exposes the system location /proc"),
    ("host:/sys/m", "location /sys"),
    ("host:/dev/nvidia0", "location /dev"),
    ("host:/boot/m.gguf", "location /boot"),
    ("host:/root/models/m.gguf", "location /root"),
    ("host:/run/user/1000/m.gguf", "location /run"),
    ("host:/var/lib/docker/volumes/v/_data/m.gguf", "location /var/lib/docker"),
    ("host:/var/lib/containerd/m.gguf", "location /var/lib/containerd"),
    ("host:/var/lib/m.gguf", "location /var/lib/docker"),  # /var/lib holds it
    ("host:/usr/share/models/m.gguf", "location /usr"),
    ("host:/bin/sh", "location /bin"),
    ("host:/sbin/init", "location /sbin"),
    ("host:/lib/modules/m", "location /lib"),
    ("host:/lib64/m/x.so", "location /lib64"),
    ("host:/srv/m.gguf", "would mount all of /srv"),
    ("host:/data/m.gguf", "would mount all of /data"),
    ("host:/home/u/m.gguf", "would mount all of /home/u"),
])
def test_host_source_that_would_expose_the_host_is_refused(source: str, reason: str) -> None:
    problem = only(problems_after(lambda d: d["models"][0].update(source=source)))
    assert (problem.path, problem.value) == ("models[0].source", source)
    assert reason in problem.message
    assert problem.message.endswith(spec.HOST_SOURCE_FIX)  # the fix comes with the reason


@pytest.mark.parametrize(("source", "path"), [
    ("host:/srv/models/x.gguf", "/srv/models/x.gguf"),
    ("host:/srv//models/x.gguf/", "/srv/models/x.gguf"),
    ("host:/data/llm/Qwen2.5-7B", "/data/llm/Qwen2.5-7B"),
    ("host:/mnt/disk/models/x.gguf", "/mnt/disk/models/x.gguf"),
    ("host:/opt/models/x.gguf", "/opt/models/x.gguf"),
    ("host:/home/u/models/x.gguf", "/home/u/models/x.gguf"),
    ("host:/library/models/x.gguf", "/library/models/x.gguf"),
    ("host:/var/models/x.gguf", "/var/models/x.gguf"),
])
def test_host_source_in_a_model_directory_is_accepted_and_normalised(source: str,
                                                                     path: str) -> None:
    data = starter()
    data["models"][0]["source"] = source
    parsed = spec.parse(yaml.safe_dump(data, sort_keys=False))
    assert parsed.models[0].parsed_source == spec.Source("host", "", path)


@pytest.mark.parametrize("volume", ["llmstack-nginx-config", "llmstack-litellm-config",
                                    "llmstack-health-config", "llmstack-model-chat-config",
                                    "llmstack-nginx-spool"])
def test_volume_source_naming_one_of_the_stacks_own_volumes_is_refused(volume: str) -> None:
    text = STARTER.replace("volume:llmstack-models/", f"volume:{volume}/", 1)
    problem = only(problems_of(text))
    assert (problem.path, problem.value) == ("models[0].source",
                                             f"volume:{volume}/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert problem.message == (f"names {volume}, a volume llmstack creates for a stack's "
                               "configuration, keys or nginx spool, not a model volume")
    assert problem.hint == "keep weights in a volume of their own, e.g. volume:llmstack-models/FILE"
    assert problem.line == line_of(text, f"volume:{volume}/")


def ollama_in_team(source: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.update(project="team", models=[
        {"name": "o", "backend": "ollama", "source": source}])


# Ollama mounts its volume read-write: another project's keys on the same engine are as bad.
@pytest.mark.parametrize("volume", ["team-nginx-config", "team-cache-config", "team-nginx-spool",
                                    "llmstack-nginx-config", "other-stack-litellm-config",
                                    "x-model-chat-config", "llmstack-nginx-spool"])
def test_stack_volumes_of_this_and_other_projects_are_refused(volume: str) -> None:
    problem = only(problems_after(ollama_in_team(f"volume:{volume}")))
    assert f"names {volume}," in problem.message
    assert problem.hint.endswith("volume:team-models/FILE")


@pytest.mark.parametrize("volume", ["team-models", "team-config", "ollama-data", "my-config",
                                    "llmstack-models", "nginx-config", "team-nginx-cfg"])
def test_other_volumes_are_model_volumes(volume: str) -> None:
    data = starter()
    ollama_in_team(f"volume:{volume}")(data)
    assert spec.parse(yaml.safe_dump(data, sort_keys=False)).models[0].source == f"volume:{volume}"


def test_source_kind_the_backend_cannot_load() -> None:
    problem = only(problems_after(lambda d: d["models"][0].update(source="ollama:llama3.1:8b")))
    assert problem.message == "backend 'llamacpp' cannot load a ollama: source"
    assert problem.hint == "use one of: volume:, host:, hf:"


# --- hf: sources: a whole repository (vllm, tgi) or one GGUF file of it (llamacpp) ------------


@pytest.mark.parametrize(("source", "repo", "file", "revision"), [
    ("hf:bartowski/Qwen2.5-Coder-7B-Instruct-GGUF/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf",
     "bartowski/Qwen2.5-Coder-7B-Instruct-GGUF", "Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf", ""),
    ("hf:org/repo/sub/dir/m-Q4_0.gguf@v1.2", "org/repo", "sub/dir/m-Q4_0.gguf", "v1.2"),
    ("hf:deepseek-ai/deepseek-coder-6.7b-instruct", "deepseek-ai/deepseek-coder-6.7b-instruct",
     "", ""),
    ("hf:org/repo@0123456789abcdef0123456789abcdef01234567", "org/repo", "",
     "0123456789abcdef0123456789abcdef01234567"),
    ("hf:org/repo@refs/pr/1", "org/repo", "", "refs/pr/1"),
])
def test_hf_source_grammar(source: str, repo: str, file: str, revision: str) -> None:
    parsed = spec.parse_source(source)
    assert (parsed.kind, parsed.location, parsed.path, parsed.revision) == \
        ("hf", repo, file, revision)
    assert parsed.ref == f"{repo}/{file}".rstrip("/")


@pytest.mark.parametrize(("source", "message"), [
    ("hf:org", "hf: needs ORG/REPO ('org' is not)"),
    ("hf:org/", "hf: needs ORG/REPO ('org/' is not)"),
    ("hf:org//m.gguf", "hf: needs ORG/REPO"),
    ("hf:-org/repo", "'-org' is not a Hugging Face organisation or repository name"),
    ("hf:org/re--po", "'re--po' is not a Hugging Face organisation or repository name"),
    ("hf:org/repo.", "'repo.' is not a Hugging Face organisation or repository name"),
    ("hf:org/repo@", "revision '' after '@' is not a branch, tag or commit"),
    ("hf:org/repo@-x", "revision '-x' after '@' is not a branch, tag or commit"),
    ("hf:org/repo@a@b", "revision 'a@b' after '@' is not a branch, tag or commit"),
    ("hf:org/repo/-m.gguf", "'-m.gguf' is not a file or folder name of a repository"),
])
def test_bad_hf_source_names_the_part_and_the_fix(source: str, message: str) -> None:
    problem = only(problems_after(lambda d: d["models"][0].update(source=source)))
    assert problem.path == "models[0].source"
    assert message in problem.message
    assert problem.value == source


@pytest.mark.parametrize(("backend", "source", "message", "hint"), [
    ("llamacpp", "hf:org/repo-GGUF", "backend 'llamacpp' loads one GGUF file, not a whole "
     "repository", "name the file: hf:org/repo-GGUF/FILE.gguf"),
    ("llamacpp", "hf:org/repo/model.safetensors", "backend 'llamacpp' loads GGUF files only "
     "('model.safetensors' is not one)", "pick a .gguf file of org/repo"),
    ("vllm", "hf:org/repo-7b/m.gguf@v2", "backend 'vllm' loads a whole repository, not one file",
     "drop the file part: hf:org/repo-7b@v2"),
    ("tgi", "hf:org/repo-7b/m.gguf", "backend 'tgi' loads a whole repository, not one file",
     "drop the file part: hf:org/repo-7b"),
    ("ollama", "hf:org/repo", "backend 'ollama' cannot load a hf: source",
     "use one of: ollama:, volume:"),
])
def test_hf_source_form_must_suit_the_backend(backend: str, source: str, message: str,
                                              hint: str) -> None:
    gpus = [0] if backend in ("vllm", "tgi") else "cpu"
    problem = only(problems_after(lambda d: d["models"][0].update(
        backend=backend, source=source, gpus=gpus, task="chat")))
    assert problem.path == "models[0].source"
    assert problem.message == message
    assert hint in problem.hint


@pytest.mark.parametrize(("backend", "source"), [
    ("llamacpp", "hf:bartowski/Qwen2.5-Coder-7B-Instruct-GGUF/"
                 "Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf@main"),
    ("vllm", "hf:deepseek-ai/deepseek-coder-6.7b-instruct"),
    ("tgi", "hf:org/repo@v1"),
])
def test_hf_source_of_the_right_form_is_valid(backend: str, source: str) -> None:
    data = starter()
    data["models"] = [{"name": "m", "backend": backend, "source": source,
                       "gpus": [0] if backend != "llamacpp" else "cpu"}]
    spec.parse(yaml.safe_dump(data), "stack.yaml")


def test_newer_schema_version_is_refused() -> None:
    problem = only(problems_after(lambda d: d.update(version=spec.SCHEMA_VERSION + 1)))
    assert problem.path == "version"
    assert problem.message == f"is newer than this llmstack understands (max {spec.SCHEMA_VERSION})"
    assert "upgrade llmstack" in problem.hint
    problem = only(problems_after(lambda d: d.update(version=0)))
    assert problem.message == "must be 1 or more"


# --- injection: nothing a user writes becomes an nginx directive or a shell word ---------------

INJECTIONS = ["a;b", "a}b", "a{b", "a\nb", "a b", "a$b", "a'b", 'a"b', "a#b", "a\\b"]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injected_domain_is_rejected(bad: str) -> None:
    problem = only(problems_after(lambda d: d.update(domain=f"api.example.com{bad}")))
    assert problem.path == "domain"


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injected_project_is_rejected(bad: str) -> None:
    problem = only(problems_after(lambda d: d.update(project=bad)))
    assert problem.path == "project"
    assert "lowercase letters" in problem.hint


@pytest.mark.parametrize("bad", INJECTIONS)
def test_injected_model_name_and_alias_are_rejected(bad: str) -> None:
    problem = only(problems_after(lambda d: d["models"][0].update(name=bad)))
    assert (problem.path, problem.message) == ("models[0].name",
                                               "contains characters that are not allowed")
    problem = only(problems_after(lambda d: d["models"][0].update(aliases=[bad])))
    assert problem.path == "models[0].aliases[0]"


@pytest.mark.parametrize(("change", "path"), [
    (lambda d: d["models"][0].update(args=["--x\nserver { }"]), "models[0].args[0]"),
    (lambda d: d.update(images={"nginx": "nginx;rm"}), "images.nginx"),
    (lambda d: d["models"][0].update(image="x y"), "models[0].image"),
    (lambda d: d.update(max_body_size="10m; allow all"), "max_body_size"),
    (lambda d: d["models"][0].update(resources={"memory": "1g;"}), "models[0].resources.memory"),
])
def test_other_free_text_fields_reject_directive_characters(
        change: Callable[[dict[str, Any]], None], path: str) -> None:
    assert only(problems_after(change)).path == path


SAFE_DOMAIN = re.compile(r"[a-z0-9._:-]+")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_any_accepted_domain_or_name_is_made_of_safe_characters(value: str) -> None:
    data = starter()
    data["domain"] = value
    try:
        parsed = spec.parse(yaml.safe_dump(data))
    except SpecError:
        pass
    else:
        assert SAFE_DOMAIN.fullmatch(parsed.domain)
    data = starter()
    data["models"][0]["name"] = value
    try:
        parsed = spec.parse(yaml.safe_dump(data))
    except SpecError:
        pass
    else:
        assert re.fullmatch(r"[A-Za-z0-9._:-]+", parsed.models[0].name)


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [path] + [leaf for k, v in data.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(data, list):
        return [path] + [leaf for i, v in enumerate(data) for leaf in _leaves(v, (*path, i))]
    return [path]


LEAVES = [p for p in _leaves(starter()) if p]
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=12),
                 st.lists(st.integers(-1, 3), max_size=3),
                 st.dictionaries(st.sampled_from(["port", "name", "x"]), st.integers(0, 9),
                                 max_size=2))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LEAVES), JUNK), min_size=1, max_size=4))
def test_any_broken_document_gets_problems_never_a_crash(
        edits: list[tuple[tuple[Any, ...], Any]]) -> None:
    data = starter()
    for path, value in edits:
        parent: Any = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        spec.parse(yaml.safe_dump(data, sort_keys=False))
    except SpecError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.message and problem.path


# --- documents that are not a stack -------------------------------------------------------------


def test_empty_document() -> None:
    problem = only(problems_of(""))
    assert problem.message == "is empty" and "llmstack init" in problem.hint


def test_document_that_is_not_a_mapping() -> None:
    problem = only(problems_of("- a\n- b\n"))
    assert problem.message == "must be a mapping of keys to values" and problem.value == "list"


def test_invalid_yaml_names_the_line() -> None:
    text = "version: 1\nmodels:\n  - name: a\n   source: x\n"
    problem = only(problems_of(text))
    assert problem.message.startswith("not valid YAML")
    assert problem.line == 4
    assert problem.hint


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}, "
              f"*a{i-1}, *a{i-1}, *a{i-1}]" for i in range(1, 9)]
    problem = only(problems_of("\n".join(lines) + "\n"))
    assert "nodes" in problem.message


def test_load_file_reports_a_missing_file(tmp_path: Any) -> None:
    with pytest.raises(SpecError) as info:
        spec.load_file(tmp_path / "stack.yaml")
    assert info.value.problems[0].message == "does not exist"
    assert "llmstack init" in info.value.problems[0].hint


def test_spec_error_to_dict_carries_every_problem() -> None:
    with pytest.raises(SpecError) as info:
        spec.parse(STARTER.replace("domain: localhost", "domian: localhost"), "x/stack.yaml")
    data = info.value.to_dict()
    assert data["error"] == "SpecError"
    assert data["problems"] == [{"path": "domian", "line": line_of(STARTER, "domain:"),
                                 "message": "is not a known key", "value": None,
                                 "hint": "did you mean 'domain'?"}]
    assert info.value.exit_code == 1


def test_ipv6_hosts_are_bracketed_wherever_a_url_or_port_names_them() -> None:
    from llmstack import endpoints, export

    assert [spec.url_host(h) for h in ("::1", "127.0.0.1", "api.example.com")] == \
        ["[::1]", "127.0.0.1", "api.example.com"]
    data = yaml.safe_load(initialize.starter())
    data["domain"] = "::1"
    data["listeners"]["local"]["bind"] = "::1"
    endpoints = endpoints.urls(spec.parse(yaml.safe_dump(data)))
    assert endpoints["https"] == "https://[::1]/v1"
    assert endpoints["local"] == "http://[::1]:4000/v1"
    assert export._port("8080/tcp", "::1", 4000) == "[::1]:4000:8080/tcp"
