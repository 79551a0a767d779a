"""The checks model: facts in, findings out; findings in, one exit code and one error out."""

from __future__ import annotations

from typing import Any

import pytest

from llmstack import checks, images, names, plan, render, secrets
from llmstack.checks import CONFIG, HOST, RUNTIME, Finding, PreflightFacts
from llmstack.doctor import Facts
from llmstack.engine import host
from llmstack.errors import DeployError, ExitCode, UserError
from llmstack.gpu import Gpu
from llmstack.spec import StackSpec

GIB = 1024**3
DF_FREE_1_GIB = ("Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
                 "overlay          104857600  103809024   1048576      99% /\n")
DF_FREE_500_GIB = ("Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
                   "overlay         1055762868 531475668 524288000      50% /\n")


def f(status: str, scope: str = HOST, fix: str = "", check: str = "x", detail: str = "d"
      ) -> Finding:
    return Finding(check, status, detail, fix, scope=scope)


# --- the exit-code rule --------------------------------------------------------------------------


@pytest.mark.parametrize(("findings", "code"), [
    ([], ExitCode.OK),
    ([f("ok"), f("warn"), f("skip")], ExitCode.OK),
    ([f("warn", HOST), f("warn", CONFIG)], ExitCode.OK),  # warnings never block
    ([f("fail", CONFIG)], ExitCode.CONFIG),
    ([f("ok"), f("fail", CONFIG), f("fail", CONFIG)], ExitCode.CONFIG),
    ([f("fail", HOST)], ExitCode.RUNTIME),
    ([f("fail", RUNTIME)], ExitCode.RUNTIME),
    ([f("fail", CONFIG), f("fail", HOST)], ExitCode.RUNTIME),  # 2 wins, in either order
    ([f("fail", HOST), f("fail", CONFIG)], ExitCode.RUNTIME),
])
def test_exit_code_config_fails_exit_1_host_and_runtime_fails_exit_2(
        findings: list[Finding], code: ExitCode) -> None:
    assert checks.exit_code(findings) == code
    assert checks.exit_code(findings) is code


def test_exit_codes_are_the_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]
    assert UserError("m").exit_code == 1 and DeployError("m").exit_code == 2
    assert f"exit {ExitCode.RUNTIME}" == "exit 2"  # as `doctor` prints it


def test_every_scope_has_an_exit_code() -> None:
    assert set(checks.SCOPE_EXIT) == {CONFIG, HOST, RUNTIME}


# --- one error made of the failing findings ------------------------------------------------------


def test_failing_findings_raise_one_error_with_the_union_of_their_own_fixes() -> None:
    found = [f("ok", fix="never shown", detail="fine"),
             f("fail", CONFIG, "fix a", detail="first"),
             f("warn", CONFIG, "fix w", detail="a warning"),
             f("fail", CONFIG, "fix b", detail="second"),
             f("fail", CONFIG, "fix a", detail="third")]
    with pytest.raises(UserError) as info:
        checks.raise_failing(found, "preflight failed")
    assert type(info.value) is UserError
    assert info.value.message == "preflight failed:\n  - first\n  - second\n  - third"
    assert info.value.hint == "fix a; fix b"


def test_a_host_failure_makes_the_error_exit_2() -> None:
    with pytest.raises(DeployError) as info:
        checks.raise_failing([f("fail", CONFIG, "a"), f("fail", HOST, "b")], "preflight failed")
    assert info.value.exit_code == 2 and info.value.hint == "a; b"


def test_nothing_failing_raises_nothing() -> None:
    checks.raise_failing([f("ok"), f("warn"), f("skip")], "preflight failed")


def test_finding_lines_show_the_fix_only_when_not_ok() -> None:
    lines = checks.finding_lines([Finding("disk", "ok", "500 GiB free", "unused"),
                                  Finding("images", "fail", "missing: a", "docker pull a")])
    assert lines == ["  ok    disk             500 GiB free",
                     "  fail  images           missing: a",
                     "                         fix: docker pull a"]


def test_finding_dict_is_the_documented_doctor_shape() -> None:
    assert Finding("ports", "fail", "d", "x", scope=CONFIG, data={"n": 1}).to_dict() == {
        "check": "ports", "status": "fail", "detail": "d", "fix": "x", "scope": "config"}


# --- preflight evaluations: facts in, findings out -----------------------------------------------


@pytest.mark.parametrize(("ids", "detail", "fix"), [
    ({"llmstack/nginx:1.22": "sha256:1", "vllm/vllm-openai:v0.11.0": "sha256:2"}, None, None),
    ({"llmstack/nginx:1.22": None, "llmstack/litellm:1.108.7-m1": "sha256:2"},
     "images missing on the engine: llmstack/nginx:1.22",
     "build them with `llmstack images build`, or load a bundle made with "
     "`llmstack images save` (`llmstack images load BUNDLE`)"),
    ({"llmstack/llamacpp:no-such-tag": None},
     "images missing on the engine: llmstack/llamacpp:no-such-tag",
     "`llmstack images build` makes only llmstack/nginx:1.22, llmstack/litellm:1.108.7-m1, "
     "llmstack/mtail:3.0.0-rc50, llmstack/prometheus:2.42, llmstack/llamacpp:forky: name one "
     "of those under `images:` in stack.yaml"),
    ({"registry.invalid/a:1": None, "vllm/vllm-openai:v0.11.0": None},
     "images missing on the engine: registry.invalid/a:1, vllm/vllm-openai:v0.11.0",
     "pull them with `llmstack images pull` (uses `docker login` credentials), or where no "
     "registry answers load a bundle (`llmstack images load BUNDLE`)"),
    ({"llmstack/nginx:1.22": None, "llmstack/x:1": None, "b/c:2": None},
     "images missing on the engine: llmstack/nginx:1.22, llmstack/x:1, b/c:2",
     "build them with `llmstack images build`, or load a bundle made with "
     "`llmstack images save` (`llmstack images load BUNDLE`); `llmstack images build` makes only "
     "llmstack/nginx:1.22, llmstack/litellm:1.108.7-m1, llmstack/mtail:3.0.0-rc50, "
     "llmstack/prometheus:2.42, llmstack/llamacpp:forky: name one of "
     "those under `images:` in stack.yaml; pull them with `llmstack images pull` (uses "
     "`docker login` credentials), or where no "
     "registry answers load a bundle (`llmstack images load BUNDLE`)"),
])
def test_preflight_images(ids: dict[str, str | None], detail: str | None, fix: str | None
                          ) -> None:
    found = checks.preflight_images(ids)
    if detail is None:
        assert found == []
        return
    assert [(x.check, x.status, x.scope, x.detail, x.fix) for x in found] == [
        ("images", "fail", CONFIG, detail, fix)]


def stack(*models: dict[str, Any], **extra: Any) -> StackSpec:
    data: dict[str, Any] = {"project": "demo", "models": list(models) or [
        {"name": "chat", "source": "volume:llmstack-models/m.Q4_1.gguf"}]}
    data.update(extra)
    return StackSpec.model_validate(data)


def test_preflight_models_reports_only_files_looked_for_and_not_found() -> None:
    s = stack({"name": "a", "source": "volume:llmstack-models/a.gguf"},
              {"name": "b", "source": "volume:weights/sub/b.gguf"},
              {"name": "c", "source": "volume:weights/c.gguf"})
    found = checks.preflight_models(s, {"a": True, "b": False})  # c: not looked at
    assert [(x.check, x.status, x.scope, x.detail, x.fix) for x in found] == [
        ("model:b", "fail", CONFIG, "model 'b': sub/b.gguf not found in volume 'weights'",
         checks.MODEL_FIX)]


PUBLISHED = [{"port": 4000, "ip": "0.0.0.0", "container": "grafana", "project": None},
             {"port": 8080, "ip": "127.0.0.1", "container": "demo-nginx", "project": "demo"},
             {"port": 9000, "ip": "10.0.0.5", "container": "other-nginx", "project": "other"}]


@pytest.mark.parametrize(("ports", "busy", "details"), [
    ([("127.0.0.1", 5000)], set(), []),
    # Our own nginx publishing the port is no clash (a recreate frees it first).
    ([("0.0.0.0", 8080)], set(), []),
    ([("127.0.0.1", 4000)], set(), ["port 4000 is already published by container grafana"]),
    # Any address: up has always refused a port number another project publishes.
    ([("127.0.0.1", 9000)], set(), ["port 9000 is already published by container other-nginx"]),
    ([("127.0.0.1", 5000)], {("127.0.0.1", 5000)},
     ["port 127.0.0.1:5000 is already in use on this host"]),
    # A container publishing it is named rather than "in use".
    ([("0.0.0.0", 4000), ("::", 5000)], {("0.0.0.0", 4000), ("::", 5000)},
     ["port 4000 is already published by container grafana",
      "port :::5000 is already in use on this host"]),  # unbracketed IPv6, as before
])
def test_preflight_ports(ports: list[tuple[str, int]], busy: set[tuple[str, int]],
                         details: list[str]) -> None:
    found = checks.preflight_ports("demo", ports, PUBLISHED, busy)
    assert [x.detail for x in found] == details
    assert all((x.check, x.status, x.scope, x.fix) == ("ports", "fail", CONFIG,
                                                        checks.PORT_FIX) for x in found)


@pytest.mark.parametrize(("df", "reserve", "detail"), [
    (None, 2 * GIB, None),  # no image to run df in: not checked
    ("df: cannot read /", 2 * GIB, None),
    (DF_FREE_500_GIB, 2 * GIB, None),
    (DF_FREE_1_GIB, 2 * GIB, "disk nearly full on the engine's host: 1.0 GiB free, 2.0 GiB "
     "needed to start containers safely"),
    (DF_FREE_500_GIB, 1_000_000 * GIB, "disk nearly full on the engine's host: 500.0 GiB "
     "free, 1000000.0 GiB needed to start containers safely"),
])
def test_preflight_disk(df: str | None, reserve: float, detail: str | None) -> None:
    found = checks.preflight_disk(df, reserve)
    assert [(x.check, x.status, x.scope, x.detail, x.fix) for x in found] == (
        [("disk", "fail", CONFIG, detail, checks.DISK_FIX)] if detail else [])


@pytest.mark.parametrize(("env", "reserve"), [({}, 2 * GIB),
                                              ({"LLMSTACK_MIN_FREE_DISK_GB": "1000000"},
                                               1_000_000 * GIB),
                                              ({"LLMSTACK_MIN_FREE_DISK_GB": "0.5"}, GIB / 2)])
def test_disk_reserve_from_the_environment(env: dict[str, str], reserve: float) -> None:
    assert checks.disk_reserve(env) == reserve


# --- the whole preflight --------------------------------------------------------------------------


def services(s: StackSpec) -> list[plan.ServiceSpec]:
    return plan.desired(s, render.render(s), secrets.new_key())


def create_all(wanted: list[plan.ServiceSpec]) -> list[plan.Action]:
    return [plan.Action("create", w.service, "not created yet") for w in wanted]


def present(wanted: list[plan.ServiceSpec]) -> dict[str, str | None]:
    return {w.image: "sha256:" + w.image for w in wanted}


def preflight(s: StackSpec, facts: PreflightFacts,
              actions: list[plan.Action] | None = None) -> list[Finding]:
    wanted = services(s)
    return checks.evaluate_preflight(s, wanted, actions or create_all(wanted), facts)


def test_models_to_stat_are_started_volume_models_with_their_image_present() -> None:
    s = stack({"name": "a", "source": "volume:llmstack-models/a.gguf"},
              {"name": "b", "source": "volume:llmstack-models/b.gguf"},
              {"name": "c", "backend": "vllm", "source": "hf:org/m-7b"},
              {"name": "d", "backend": "vllm", "source": "volume:weights/d"})
    wanted = services(s)
    actions = [plan.Action("keep" if w.service == names.model_service("b") else "create",
                           w.service, "") for w in wanted]
    ids = present(wanted)
    ids[next(w.image for w in wanted if w.service == names.model_service("d"))] = None
    looked = checks.models_to_stat(s, wanted, actions, [t for t, i in ids.items() if i])
    assert [(m.name, image) for m, image in looked] == [("a", "llmstack/llamacpp:forky")]


def test_a_clean_preflight_has_no_findings() -> None:
    s = stack()
    facts = PreflightFacts(present(services(s)), sources={"chat": True}, df=DF_FREE_500_GIB)
    assert preflight(s, facts) == []


@pytest.mark.parametrize("path", ["transport/report.gguf", "disk/m.gguf", "port-disk.gguf"])
def test_a_missing_model_whose_path_says_port_or_disk_gets_only_the_model_fix(path: str
                                                                             ) -> None:
    # Hints used to be attached by substring: any problem containing "port" or "disk" got the
    # port and disk hints. Each finding now carries its own fix.
    s = stack({"name": "report", "source": f"volume:llmstack-models/{path}"})
    facts = PreflightFacts(present(services(s)), sources={"report": False},
                           df=DF_FREE_500_GIB)
    with pytest.raises(UserError) as info:
        checks.raise_failing(preflight(s, facts), "preflight failed")
    assert info.value.message == (f"preflight failed:\n  - model 'report': {path} not found in "
                                  "volume 'llmstack-models'")
    assert info.value.hint == checks.MODEL_FIX
    assert "free the port" not in info.value.hint and "docker image prune" not in \
        info.value.hint


def test_an_image_whose_name_says_port_or_disk_gets_only_the_image_fix() -> None:
    s = stack(images={"llamacpp": "registry.invalid/transport-disk:1"})
    ids = present(services(s)) | {"registry.invalid/transport-disk:1": None}
    facts = PreflightFacts(ids, df=DF_FREE_500_GIB)
    with pytest.raises(UserError) as info:
        checks.raise_failing(preflight(s, facts), "preflight failed")
    assert info.value.hint == images.missing_fix(["registry.invalid/transport-disk:1"])
    assert "port" not in info.value.hint and "disk" not in info.value.hint


def test_every_problem_at_once_in_order_with_each_fix_once() -> None:
    s = stack({"name": "a", "source": "volume:llmstack-models/a.gguf"},
              {"name": "b", "source": "volume:llmstack-models/b.gguf"},
              listeners={"local": {"port": 4000, "bind": "127.0.0.1"},
                         "lan": {"port": 5000, "bind": "0.0.0.0"}})
    ids = present(services(s)) | {"llmstack/nginx:1.22": None}
    facts = PreflightFacts(ids, sources={"a": False, "b": False}, published=PUBLISHED,
                           busy_here={("0.0.0.0", 5000)}, df=DF_FREE_1_GIB)
    found = preflight(s, facts)
    assert [x.check for x in found] == ["images", "model:a", "model:b", "ports", "ports", "disk"]
    with pytest.raises(UserError) as info:
        checks.raise_failing(found, "preflight failed")
    assert info.value.message.splitlines()[1:] == [
        "  - images missing on the engine: llmstack/nginx:1.22",
        "  - model 'a': a.gguf not found in volume 'llmstack-models'",
        "  - model 'b': b.gguf not found in volume 'llmstack-models'",
        "  - port 4000 is already published by container grafana",
        "  - port 0.0.0.0:5000 is already in use on this host",
        "  - disk nearly full on the engine's host: 1.0 GiB free, 2.0 GiB needed to start "
        "containers safely"]
    assert info.value.hint == "; ".join([images.missing_fix(["llmstack/nginx:1.22"]),
                                         checks.MODEL_FIX, checks.PORT_FIX, checks.DISK_FIX])


def test_ports_are_checked_only_when_nginx_starts() -> None:
    s = stack(listeners={"local": {"port": 4000, "bind": "127.0.0.1"}})
    wanted = services(s)
    keep_nginx = [plan.Action("keep" if w.service == names.NGINX else "create", w.service, "")
                  for w in wanted]
    facts = PreflightFacts(present(wanted), published=PUBLISHED, df=DF_FREE_500_GIB)
    assert preflight(s, facts, keep_nginx) == []
    assert [x.check for x in preflight(s, facts)] == ["ports"]


def gpu_facts(probe: host.GpuProbe) -> Facts:
    return Facts(target="", gpu=probe)


def test_no_gpu_runtime_for_a_gpu_model_is_a_host_failure_exit_2() -> None:
    s = stack({"name": "coder", "backend": "vllm", "source": "hf:org/coder-7b", "gpus": [0]})
    facts = PreflightFacts(present(services(s)), df=DF_FREE_500_GIB, gpu=gpu_facts(
        host.GpuProbe("no-runtime", image="img", detail="could not select device driver")))
    found = preflight(s, facts)
    assert [(x.check, x.status, x.scope) for x in found] == [("gpu-runtime", "fail", HOST)]
    with pytest.raises(DeployError) as info:
        checks.raise_failing(found, "preflight failed")
    assert "no GPU runtime" in info.value.message and "nvidia-ctk" in info.value.hint


def test_a_gpu_the_host_lacks_is_a_config_failure_exit_1() -> None:
    s = stack({"name": "coder", "backend": "vllm", "source": "hf:org/coder-7b", "gpus": [3]})
    facts = PreflightFacts(present(services(s)), df=DF_FREE_500_GIB, gpu=gpu_facts(
        host.GpuProbe("ok", [Gpu(0, "GPU-a", "NVIDIA L40S", 46068, 3)], image="img")))
    fails = checks.failing(preflight(s, facts))
    assert [(x.check, x.scope) for x in fails] == [("gpu-assignment", CONFIG)]
    assert checks.exit_code(fails) == ExitCode.CONFIG


# --- verify uses the same finding -----------------------------------------------------------------


def test_verify_checks_are_runtime_findings_and_keep_their_json_shape() -> None:
    from llmstack.verify import Check, Result

    ok = Check("tls", "ok", "TLSv1.3", data={"tls_version": "TLSv1.3"})
    skip = Check("embeddings", "skip", "no embedding model in stack.yaml")
    bad = Check("auth", "fail", "wrong key accepted", "run `llmstack up`", data={"x": 200})
    assert isinstance(bad, Finding) and bad.scope == RUNTIME
    assert Result("t", "e", [ok, skip]).exit_code == 0
    result = Result("t", "e", [ok, skip, bad])
    assert result.exit_code == 2 and not result.ok
    assert result.to_dict()["checks"][2] == {"check": "auth", "status": "fail",
                                             "detail": "wrong key accepted",
                                             "fix": "run `llmstack up`", "seconds": 0.0,
                                             "data": {"x": 200}}
    assert result.to_dict()["exit_code"] == 2 and result.metrics() == {
        "tls.tls_version": "TLSv1.3"}


def test_the_checks_model_never_imports_the_engine() -> None:
    """The evaluations are pure: importing and running them loads neither docker nor
    llmstack.engine (only the gather functions read the engine)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from llmstack import checks, doctor, gpu, verify\n"
            "from llmstack.spec import StackSpec\n"
            "s = StackSpec.model_validate({'project': 'p', 'models': [{'name': 'c', "
            "'backend': 'vllm', 'source': 'hf:o/m-7b', 'gpus': [0]}]})\n"
            "facts = checks.PreflightFacts({'a': None}, gpu=doctor.Facts(target=''))\n"
            "checks.evaluate_preflight(s, [], [], facts)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('docker', 'llmstack.engine'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
