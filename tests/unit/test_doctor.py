"""doctor's findings from fake engine answers: no Docker needed."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import pytest

from llmstack import doctor, images, tls
from llmstack.doctor import Facts, Finding, Report
from llmstack.engine import host
from llmstack.gpu import Gpu
from llmstack.spec import StackSpec

VERSION = {"Version": "24.0.7", "ApiVersion": "1.43", "Os": "linux", "Arch": "amd64",
           "KernelVersion": "6.8.0-45-generic"}
DF = ("Filesystem     1024-blocks      Used Available Capacity Mounted on\n"
      "overlay         1055762868 412345678 589012345      42% /\n")
# /proc/net/tcp and tcp6 of a host: sshd on 0.0.0.0:22, something on 127.0.0.1:8080,
# a web server on [::]:443.
PROC_NET = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
    "inode\n"
    "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 "
    "21034 1 0000000000000000 100 0 0 10 0\n"
    "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 "
    "99120 1 0000000000000000 100 0 0 10 0\n"
    "   2: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 "
    "99121 1 0000000000000000 20 4 30 10 -1\n"
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000     0        0 30211 1 0000000000000000 100 0 0 10 0\n"
)


class FakeClient:
    """The few engine calls host.py makes, answered from canned data."""

    def __init__(self, system_time: str, start_error: str | None = None,
                 smi: str = "") -> None:
        self.system_time = system_time
        self.start_error = start_error
        self.smi = smi
        self.removed: list[str] = []
        self.images = self
        self.containers = self

    def version(self) -> dict[str, str]:
        return VERSION

    def info(self) -> dict[str, Any]:
        return {"SystemTime": self.system_time, "DockerRootDir": "/var/lib/docker",
                "OperatingSystem": "Ubuntu 22.04.4 LTS", "Runtimes": {"runc": {}, "nvidia": {}},
                "DefaultRuntime": "runc", "NCPU": 64, "MemTotal": 540_000_000_000,
                "Name": "gpu-1"}

    def get(self, tag: str) -> object:  # images.get
        return object()

    def create(self, image: str, **kwargs: Any) -> Any:  # containers.create
        client = self

        class Container:
            def start(self) -> None:
                if client.start_error:
                    from docker.errors import APIError
                    raise APIError("500 Server Error", explanation=client.start_error)

            def wait(self, timeout: int) -> dict[str, int]:
                return {"StatusCode": 0}

            def logs(self, **_: Any) -> bytes:
                return client.smi.encode()

            def remove(self, force: bool) -> None:
                client.removed.append(image)

        return Container()


def now_rfc3339(offset_s: float = 0.0) -> str:
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"  # nanoseconds, as Docker writes


def spec(**extra: Any) -> StackSpec:
    data: dict[str, Any] = {"project": "demo", "models": [
        {"name": "chat", "source": "volume:llmstack-models/m.Q4_1.gguf"}]}
    data.update(extra)
    return StackSpec.model_validate(data)


def gpu_spec() -> StackSpec:
    return spec(models=[{"name": "coder", "backend": "vllm",
                         "source": "hf:deepseek-ai/deepseek-coder-6.7b-instruct", "gpus": [0]}])


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def facts_with(**kw: Any) -> Facts:
    engine = host.engine_facts(FakeClient(now_rfc3339()))  # type: ignore[arg-type]
    base: dict[str, Any] = {"target": "ssh://ci@gpu-1", "engine": engine,
                            "gpu": host.GpuProbe("ok", [Gpu(0, "GPU-a", "NVIDIA L40S", 46068, 3)],
                                                 image="vllm/vllm-openai:v0.11.0"),
                            "snapshot": host.HostSnapshot("img", DF, PROC_NET)}
    base.update(kw)
    return Facts(**base)


# --- the engine ----------------------------------------------------------------------------------


def test_engine_facts_and_clock_skew_from_docker_info() -> None:
    engine = host.engine_facts(FakeClient(now_rfc3339(-400)))  # type: ignore[arg-type]
    assert engine.version == "24.0.7" and engine.runtimes == ["nvidia", "runc"]
    assert engine.skew_s is not None and -401 < engine.skew_s < -399
    (clock,) = by_check(doctor.evaluate_engine(facts_with(engine=engine)), "clock")
    assert clock.status == "fail" and "400" in clock.detail and "behind" in clock.detail
    assert "NTP" in clock.fix


@pytest.mark.parametrize(("skew", "status"), [(0.3, "ok"), (-75, "warn"), (90, "warn"),
                                              (301, "fail")])
def test_clock_thresholds(skew: float, status: str) -> None:
    engine = host.engine_facts(FakeClient(now_rfc3339(skew)))  # type: ignore[arg-type]
    (clock,) = by_check(doctor.evaluate_engine(facts_with(engine=engine)), "clock")
    assert clock.status == status


def test_unreachable_engine_is_a_host_blocker_with_its_hint() -> None:
    facts = Facts("ssh://ci@gpu-1", engine_error="cannot reach the Docker engine at ssh://...",
                  engine_hint="start it")
    findings, _ = doctor.evaluate(spec(), facts)
    assert [(f.check, f.status) for f in findings] == [("engine", "fail")]
    assert Report("x", findings).exit_code == 2


def test_engine_time_with_nanoseconds_and_offsets() -> None:
    parsed = host.parse_engine_time("2024-11-25T12:44:01.123456789+01:00")
    assert parsed == dt.datetime(2024, 11, 25, 11, 44, 1, 123456, tzinfo=dt.UTC)
    assert host.parse_engine_time("garbage") is None


# --- GPUs ----------------------------------------------------------------------------------------


def test_no_gpu_runtime_warns_when_nothing_needs_a_gpu_and_fails_when_something_does() -> None:
    fake = FakeClient(now_rfc3339(), start_error='could not select device driver "" with '
                      "capabilities: [[gpu]]")
    probe = host.query_gpus(fake, ["llmstack/nginx:1.22"])  # type: ignore[arg-type]
    assert probe.status == "no-runtime" and fake.removed == ["llmstack/nginx:1.22"]
    cpu_only, _ = doctor.evaluate_gpus(spec(), facts_with(gpu=probe))
    assert [(f.check, f.status) for f in cpu_only] == [("gpu-runtime", "warn")]
    needs, _ = doctor.evaluate_gpus(gpu_spec(), facts_with(gpu=probe))
    assert [(f.check, f.status, f.scope) for f in needs] == [("gpu-runtime", "fail", "host")]
    assert "gives GPUs to coder" in needs[0].detail and "nvidia-ctk" in needs[0].fix


def test_gpus_from_nvidia_smi_through_the_engine() -> None:
    fake = FakeClient(now_rfc3339(), smi="0, GPU-a, NVIDIA L40S, 46068, 3\n"
                      "1, GPU-b, NVIDIA L40S, 46068, 40000\n")
    probe = host.query_gpus(fake, ["vllm/vllm-openai:v0.11.0"])  # type: ignore[arg-type]
    assert [g.uuid for g in probe.gpus] == ["GPU-a", "GPU-b"]
    found, report = doctor.evaluate_gpus(gpu_spec(), facts_with(gpu=probe))
    assert [f.status for f in by_check(found, "gpu-runtime")] == ["ok"]
    assert "1: NVIDIA L40S GPU-b, 5.9 GiB free of 45.0 GiB" in by_check(found, "gpus")[0].detail
    assert report is not None and report.budgets[0].claims[0].model == "coder"
    assert [f.status for f in by_check(found, "gpu-memory")] == ["ok"]


def test_nvidia_smi_failing_inside_the_runtime_is_an_error_finding() -> None:
    fake = FakeClient(now_rfc3339(), smi="Failed to initialize NVML: Driver/library version "
                      "mismatch\n")
    probe = host.query_gpus(fake, ["img"])  # type: ignore[arg-type]
    assert probe.status == "error" and "Driver/library version mismatch" in probe.detail


def test_a_gpu_index_the_host_lacks_blocks_as_config() -> None:
    bad = spec(models=[{"name": "coder", "backend": "vllm", "source": "hf:org/m-7b",
                        "gpus": [0, 3]}])
    found, _ = doctor.evaluate_gpus(bad, facts_with())
    fails = [f for f in found if f.status == "fail"]
    assert [(f.check, f.scope) for f in fails] == [("gpu-assignment", "config")]
    assert Report("x", found).exit_code == 1


# --- disk, ports, images, models -----------------------------------------------------------------


def test_disk_free_on_the_data_root() -> None:
    (disk,) = doctor.evaluate_disk(spec(), facts_with())
    assert disk.status == "ok" and "561.7 GiB free of 1006.9 GiB on /var/lib/docker" in \
        disk.detail
    tiny = DF.replace("589012345", "1500000")
    (low,) = doctor.evaluate_disk(gpu_spec(), facts_with(
        snapshot=host.HostSnapshot("img", tiny, "")))
    assert low.status == "fail" and "model downloads need ~12.5 GiB" in low.detail


def test_proc_net_listening_sockets_v4_and_v6() -> None:
    assert doctor.parse_proc_net(PROC_NET) == {("0.0.0.0", 22), ("127.0.0.1", 8080),
                                               ("::", 443)}


def test_ports_taken_by_host_processes_other_containers_or_ourselves() -> None:
    s = spec(listeners={"local": {"port": 8080, "bind": "127.0.0.1"},
                        "lan": {"port": 9000, "bind": "0.0.0.0"},
                        "https": {"port": 443, "bind": "0.0.0.0"}})
    published = [{"port": 9000, "ip": "0.0.0.0", "container": "grafana", "project": None}]
    found = {f.detail.split(":", 2)[0] + ":" + f.detail.split(":")[1]: f for f in
             doctor.evaluate_ports(s, facts_with(published=published))}
    assert found["listeners.local 127.0.0.1:8080"].status == "fail"
    assert "a process on the host" in found["listeners.local 127.0.0.1:8080"].detail
    assert found["listeners.lan 0.0.0.0:9000"].status == "fail"
    assert "container grafana" in found["listeners.lan 0.0.0.0:9000"].detail
    assert found["listeners.https 0.0.0.0:443"].status == "fail"  # [::]:443 covers it
    ours = [{"port": p, "ip": "0.0.0.0", "container": "demo-nginx", "project": "demo"}
            for p in (8080, 9000, 443)]
    assert {f.status for f in doctor.evaluate_ports(s, facts_with(published=ours))} == {"ok"}


def test_missing_images_say_how_to_get_them() -> None:
    (f,) = doctor.evaluate_images(facts_with(images={"llmstack/nginx:1.22": False,
                                                     "vllm/vllm-openai:v0.11.0": False,
                                                     "llmstack/litellm:1.108.7-m1": True}))
    assert f.status == "fail" and f.scope == "host"
    assert f.fix == images.missing_fix(["llmstack/nginx:1.22", "vllm/vllm-openai:v0.11.0"])
    assert "`llmstack images build`" in f.fix and "`llmstack images pull`" in f.fix


def test_model_files_present_missing_or_downloaded() -> None:
    s = spec(models=[{"name": "a", "source": "volume:llmstack-models/m.Q4_1.gguf"},
                     {"name": "b", "source": "host:/srv/models/x.gguf"},
                     {"name": "c", "backend": "vllm", "source": "hf:org/m-7b", "gpus": [0]}])
    sources = {"a": host.SourceStat(True, 98_000_000), "b": host.SourceStat(False)}
    found = {f.check: f for f in doctor.evaluate_models(s, facts_with(sources=sources))}
    assert found["model:a"].status == "ok" and "93 MiB" in found["model:a"].detail
    assert found["model:b"].status == "fail" and "not found in the host" in \
        found["model:b"].detail
    assert found["model:c"].status == "ok" and "`up` fetches it into the llmstack-hf-cache " \
        "volume on the engine's host" in found["model:c"].detail


def test_pinned_hf_sources_show_their_commit_size_and_whether_this_host_has_them() -> None:
    from llmstack.lock import Locked, LockedFile

    models = [{"name": n, "source": f"hf:org/{n}/{n}-Q4_K_M.gguf"} for n in ("a", "b", "c")]
    s = spec(models=models)
    pins = {m["source"]: Locked(f"org/{m['name']}", f"{m['name']}-Q4_K_M.gguf", "main",
                                "c0ffee" * 6 + "abcd",
                                (LockedFile("x.gguf", 4_683_073_888, "ab" * 32),))
            for m in models}
    sources = {"a": host.SourceStat(True, 1), "b": host.SourceStat(False)}
    facts = facts_with(sources=sources, pins=pins)
    found = {f.check: f.detail for f in doctor.evaluate_models(s, facts)}
    pinned = "pinned at commit c0ffeec0ffee, 4.7 GB"
    assert found["model:a"] == f"hf:org/a/a-Q4_K_M.gguf: {pinned}, in the llmstack-hf-cache volume"
    assert found["model:b"] == f"hf:org/b/b-Q4_K_M.gguf: {pinned}, not on this host yet: `up` " \
        "downloads 4.7 GB (needs network there)"
    assert found["model:c"].endswith("not looked for (no image to look with)")
    # The disk check counts the real size of what is missing: b (and c, not looked for).
    (disk,) = doctor.evaluate_disk(s, facts)
    assert "model downloads need ~8.7 GiB" in disk.detail


# --- local files and the exit code ---------------------------------------------------------------


def test_env_mode_and_certificate_expiry(tmp_path: Path) -> None:
    from llmstack import secrets

    env = tmp_path / ".env"
    secrets.write_keys(env, secrets.generate())
    os.chmod(env, 0o644)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=tls.LEAF_DAYS + 2)
    tls.generate(tmp_path / "certs", "localhost", now=past)
    found = {f.check: f for f in doctor.local_findings(tmp_path, spec())}
    assert found["env"].status == "fail" and "chmod 600" in found["env"].fix
    assert found["certificate"].status == "fail" and found["certificate"].detail.startswith(
        "expired")
    os.chmod(env, 0o600)
    tls.generate(tmp_path / "certs", "localhost")
    found = {f.check: f for f in doctor.local_findings(tmp_path, spec(domain="api.example.com"))}
    assert found["env"].status == "ok"
    assert found["certificate"].status == "fail" and "api.example.com" in found[
        "certificate"].fix


def test_exit_code_host_blockers_win_over_config_blockers() -> None:
    ok = Finding("engine", "ok", "")
    warn = Finding("clock", "warn", "")
    config = Finding("ports", "fail", "", scope="config")
    hostf = Finding("images", "fail", "")
    assert Report("t", [ok, warn]).exit_code == 0
    assert Report("t", [ok, config]).exit_code == 1
    assert Report("t", [config, hostf]).exit_code == 2
    data = Report("t", [ok, config]).to_dict()
    assert data["ok"] is False and data["findings"][1] == {
        "check": "ports", "status": "fail", "detail": "", "fix": "", "scope": "config"}


def test_probe_containers_are_removed_even_when_they_fail_to_start() -> None:
    fake = FakeClient(now_rfc3339(), start_error="unknown or invalid runtime name: nvidia")
    started = time.monotonic()
    probe = host.query_gpus(fake, ["a", "b"])  # type: ignore[arg-type]
    assert probe.status == "no-runtime" and fake.removed == ["a"]
    assert time.monotonic() - started < 5


# --- which engine, and where its published ports are reached ---------------------------------


def test_engine_target_precedence_host_then_docker_host_then_context(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from docker.context import ContextAPI

    from llmstack.engine.client import describe_target, engine_address, resolve_target

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    ContextAPI.create_context("gpu-box", host="ssh://ci@10.20.0.11:2222")
    assert resolve_target(None)[:2] == ("unix:///var/run/docker.sock", "local socket")
    monkeypatch.setenv("DOCKER_CONTEXT", "gpu-box")
    assert resolve_target(None)[:2] == ("ssh://ci@10.20.0.11:2222", "context gpu-box")
    assert engine_address(None) == "10.20.0.11"
    monkeypatch.setenv("DOCKER_HOST", "tcp://192.0.2.7:2376")
    assert describe_target(None) == "tcp://192.0.2.7:2376 (DOCKER_HOST)"
    assert engine_address(None) == "192.0.2.7"
    assert resolve_target("ssh://root@127.0.0.1:2200")[:2] == ("ssh://root@127.0.0.1:2200",
                                                               "--host")
    assert engine_address("unix:///var/run/docker.sock") == "127.0.0.1"
    monkeypatch.delenv("DOCKER_HOST")
    monkeypatch.setenv("DOCKER_CONTEXT", "no-such-context")
    assert "Docker context 'no-such-context' does not exist" in describe_target(None)


def test_verify_reaches_listeners_where_a_client_can() -> None:
    from llmstack.verify import endpoints

    local = spec(listeners={"local": {"port": 4000, "bind": "127.0.0.1"},
                            "lan": {"port": 8080, "bind": "0.0.0.0"},
                            "https": {"port": 8443, "bind": "127.0.0.1"}})
    tls_ep, api, _ = endpoints(local, "127.0.0.1")
    assert tls_ep is not None and api is tls_ep and api.base == "https://127.0.0.1:8443"
    assert api.server_name == "localhost"  # SNI/certificate name: stack.yaml's domain
    # On a remote host a loopback-bound listener is out of reach: fall back to the LAN one.
    tls_ep, api, why = endpoints(local, "10.20.0.11")
    assert tls_ep is None and api is not None and api.base == "http://10.20.0.11:8080"
    assert "listeners.https binds 127.0.0.1" in why
    closed = spec(listeners={"local": {"port": 4000, "bind": "127.0.0.1"},
                             "lan": {"port": 8080, "enabled": False},
                             "https": {"port": 443, "enabled": False}})
    assert endpoints(closed, "gpu-1.example.com")[1] is None


def test_gather_takes_a_pinned_gguf_size_from_the_lock_and_looks_for_it_in_the_cache() -> None:
    from llmstack import hfcache
    from llmstack.lock import Locked, LockedFile
    from tests.fake_engine import FakeEngine

    s = spec(models=[{"name": "a", "source": "hf:org/a/a-Q4_K_M.gguf"},
                     {"name": "b", "backend": "vllm", "source": "hf:org/b-7b", "gpus": [0]}])
    commit = "c0ffee" * 6 + "abcd"
    pins = {"hf:org/a/a-Q4_K_M.gguf": Locked("org/a", "a-Q4_K_M.gguf", "main", commit,
                                             (LockedFile("a-Q4_K_M.gguf", 4_683_073_888,
                                                         "ab" * 32),)),
            "hf:org/b-7b": Locked("org/b-7b", "", "main", commit,
                                  (LockedFile("model.safetensors", 14_000_000_000, "cd" * 32),))}
    engine = FakeEngine(project=s.project, absent={hfcache.marker("org/b-7b", commit)})
    engine.host_snapshot = lambda candidates: host.HostSnapshot("img", DF, PROC_NET)  # type: ignore[method-assign]
    facts = doctor.gather(engine, "local", s, None, pins)
    assert facts.sources["a"] == host.SourceStat(True, 4_683_073_888)
    assert facts.sources["b"] == host.SourceStat(False, None)
