"""Remote engines over SSH for real, and a fleet from one stack.yaml over them.

Real sshd endpoints on 127.0.0.1 with key auth and a pinned host key, the system ssh client,
and `llmstack --host ssh://root@127.0.0.1:PORT` (and DOCKER_HOST) running doctor / up /
status / verify / down from a folder that holds only the project. The engine behind sshd
happens to be this machine's, so the test also proves that nothing reaches the containers
through this machine's file system: no container has a bind mount, the configs in the
containers equal the rendered ones, and the stack keeps working after the local config/
folder is deleted. The ssh client reads its config from a wrapper on PATH (ssh ignores
$HOME), the way a CI runner would read ~/.ssh/config.

The same folder then gets a `hosts:` inventory (issue 22): h1 is the stack just deployed with
--host (same engine, project, ports and key: it joins the fleet with only its own
certificate), h2 and h3 each their own project, ports and domain on the second endpoint.
validate and render per host; `plan --hosts all`; a rolling `up` of h1 and h2; a rolling
`up --hosts all` where h2's model is broken by an override (it is rolled back and keeps
serving, h1 is unchanged and serving, h3 is never touched); `status`, `history` and
`verify --hosts ... --json`, `logs --host-name`; the fleet's key rotated under load with one
grace window and no failed request on any host. Last, a stopped model fails `verify` over
ssh, and `down` leaves no ssh session of this test behind.

The tests run in file order on one module-scoped folder (one stack brought up over ssh
serves both flows: the single-host one and the fleet's first host), which keeps the CI
budget. The text table of `status --hosts` and `rotate-key --hosts --finish` are unit-tested
(tests/unit/test_fleet.py, test_rotate.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmstack import names
from tests.helpers import Stack, cli, free_port, make_stack, wait_for

pytestmark = pytest.mark.integration

SSHD = "/usr/sbin/sshd"


@dataclass
class Remote:
    url: str
    env: dict[str, str]
    log: Path
    ssh: list[str]
    sshd_pid: int = 0

    def sessions(self) -> list[int]:
        """The `docker system dial-stdio` processes (engine sessions over ssh) this endpoint's
        sshd serves: its descendants only, not other tests' ssh sessions on this machine."""
        found = subprocess.run(["pgrep", "-f", "docker system dial-stdio"],
                               capture_output=True, text=True).stdout.split()
        return [int(p) for p in found if self.sshd_pid in _ancestors(int(p))]


def _ancestors(pid: int) -> set[int]:
    """The process, its parent, its parent's parent, ... (from /proc, as far as they run)."""
    seen: set[int] = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the (name) and state
    return seen


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)


@contextlib.contextmanager
def sshd_endpoints(count: int) -> Iterator[list[Remote]]:
    """`count` real sshd endpoints on 127.0.0.1 (one host key, one client key, one ssh
    config on PATH), each reaching this machine's engine: simulated hosts of a fleet."""
    if os.geteuid() != 0:
        pytest.skip("sshd with root login needs root (CI runs as root)")
    if not (Path(SSHD).exists() and shutil.which("ssh") and shutil.which("docker")):
        pytest.fail("needs openssh-server, openssh-client and the docker CLI (for "
                    "`docker system dial-stdio` on the remote side)")
    # A short folder: ssh's ControlPath must fit a unix socket name.
    work = Path(tempfile.mkdtemp(prefix="llmssh"))
    _keygen(work / "host_key")
    _keygen(work / "client_key")
    shutil.copy(work / "client_key.pub", work / "authorized_keys")
    ports = [free_port() for _ in range(count)]
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nHostKey {work}/host_key\n"
        f"AuthorizedKeysFile {work}/authorized_keys\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "LogLevel VERBOSE\n")
    host_key = (work / "host_key.pub").read_text().split()[:2]
    (work / "known_hosts").write_text("".join(f"[127.0.0.1]:{port} {' '.join(host_key)}\n"
                                              for port in ports))
    (work / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {work}/client_key\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {work}/known_hosts\n  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n  LogLevel ERROR\n"
        # One TCP+auth handshake for all the engine calls, as docs/CI.md recommends.
        f"  ControlMaster auto\n  ControlPath {work}/cm-%C\n  ControlPersist 120\n")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {work}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    servers: list[subprocess.Popen[bytes]] = []
    remotes: list[Remote] = []
    try:
        for port in ports:
            log = work / f"sshd-{port}.log"
            with log.open("w") as out:
                servers.append(subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(work / "sshd_config"), "-p", str(port),
                     "-o", f"PidFile={work}/sshd-{port}.pid"],
                    stdout=out, stderr=subprocess.STDOUT))
            ssh = [str(wrapper), "-p", str(port), "root@127.0.0.1"]
            remotes.append(Remote(f"ssh://root@127.0.0.1:{port}", env, log, ssh,
                                  servers[-1].pid))
        for r in remotes:
            wait_for(lambda r=r: subprocess.run(  # type: ignore[misc]
                [*r.ssh, "true"], env={**os.environ, **env}, capture_output=True,
                timeout=20).returncode == 0, timeout=30, what=f"sshd at {r.url}")
        yield remotes
    finally:
        for r in remotes:
            subprocess.run([*r.ssh, "-O", "exit"], env={**os.environ, **env},
                           capture_output=True, timeout=20)
        for server in servers:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    with sshd_endpoints(1) as remotes:
        yield remotes[0]


@pytest.fixture(scope="module")
def endpoints() -> Iterator[list[Remote]]:
    """Two endpoints: the first for the single-host flow and the fleet's h1 (the same
    stack), the second for h2 and h3 (each its own project)."""
    with sshd_endpoints(2) as remotes:
        yield remotes


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, endpoints: list[Remote],
            docker_client: Any) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("ssh") / "only-the-project", prefix="t-ssh",
                       embed=False)
    yield stack
    # Whatever happened: the fleet's hosts over ssh (the endpoints outlive this fixture),
    # the folder's stack through the local socket, then anything left of either by label.
    if "hosts" in stack.spec():
        cli("down", "--hosts", "all", "--volumes", cwd=stack.root, env=endpoints[0].env,
            timeout=600)
    stack.cli("down", "--volumes")
    for c in docker_client.containers.list(
            all=True, filters={"label": names.LABEL_PROJECT}):
        if c.labels[names.LABEL_PROJECT].startswith(stack.project):
            c.remove(force=True)


def run(stack: Stack, remote: Remote, *args: str, host: bool = True,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*args, "--host", remote.url] if host else list(args)
    return cli(*argv, cwd=stack.root, env={**remote.env, **(extra_env or {})}, timeout=600)


def json_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def test_the_session_count_sees_this_endpoints_sessions_only(endpoints: list[Remote]) -> None:
    """The "no ssh session left behind" check below counts the engine sessions under this
    test's sshd, not every ssh session on the machine (other tests may hold theirs)."""
    first, second = endpoints
    env = {**os.environ, **first.env}
    session = subprocess.Popen([*first.ssh, "docker", "system", "dial-stdio"], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        seen = wait_for(first.sessions, timeout=30, what="the dial-stdio session under sshd")
        assert len(seen) == 1 and second.sessions() == []
    finally:
        assert session.stdin is not None
        session.stdin.close()
        session.wait(timeout=30)
    wait_for(lambda: first.sessions() == [], timeout=30, what="the session to end")


def test_up_status_verify_over_ssh(endpoints: list[Remote], project: Stack,
                                   docker_client: Any) -> None:
    remote = endpoints[0]
    doctor = run(project, remote, "doctor", "--json")
    report = json_of(doctor)
    assert doctor.returncode == 0, report
    assert report["target"] == f"{remote.url} (--host)"
    assert "Accepted publickey for root" in remote.log.read_text()

    started = time.monotonic()
    up = run(project, remote, "up", "--json")
    assert up.returncode == 0, up.stderr
    assert json_of(up)["changed"] is True
    up_seconds = time.monotonic() - started

    containers = docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={project.project}"})
    assert {c.labels[names.LABEL_SERVICE] for c in containers} == {
        names.HEALTH, names.model_service("deepseek-coder"), names.LITELLM, names.EDGE_METRICS,
        names.NGINX}
    for c in containers:
        kinds = {m["Type"] for m in c.attrs["Mounts"]}
        assert kinds <= {"volume"}, f"{c.name} mounts {c.attrs['Mounts']}"
    nginx = next(c for c in containers if c.labels[names.LABEL_SERVICE] == names.NGINX)
    shipped = _read(nginx, f"/etc/llmstack/{names.NGINX}/nginx.conf")
    assert shipped == (project.root / "config" / "nginx.conf").read_bytes()

    shutil.rmtree(project.root / "config")  # nothing below may need it
    assert {".env", "certs", "stack.yaml"} <= {p.name for p in project.root.iterdir()}

    # DOCKER_HOST works like --host.
    status = run(project, remote, "status", "--json", host=False,
                 extra_env={"DOCKER_HOST": remote.url})
    assert status.returncode == 0, status.stderr
    assert all(s["healthy"] for s in json_of(status)["services"])

    again = run(project, remote, "up", "--json")
    assert again.returncode == 0, again.stderr
    assert json_of(again)["changed"] is False, json_of(again)["actions"]

    verify = run(project, remote, "verify", "--json")
    result = json_of(verify)
    assert verify.returncode == 0, result
    assert result["endpoint"].startswith(f"https://127.0.0.1:{project.https_port}")
    assert {c["check"]: c["status"] for c in result["checks"]} == {
        "tls": "ok", "health": "ok", "models": "ok", "chat_stream": "ok",
        "embeddings": "skip", "auth": "ok", "rate_limit": "ok"}
    print(f"up over ssh took {up_seconds:.1f}s")


# --- the fleet ---------------------------------------------------------------------------------

HOSTS = ("h1", "h2", "h3")


def _failures(doc: dict[str, Any]) -> str:
    """What failed on each host, for an assertion message."""
    return json.dumps([(h["host"], h["status"], h["result"].get("message"),
                        [c for c in h["result"].get("verify", {}).get("checks", [])
                         if c["status"] == "fail"]) for h in doc["hosts"]])


def _by_host(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {h["host"]: h for h in doc["hosts"]}


class Fleet:
    """The project folder with a `hosts:` inventory: h1 is the folder's own stack on the
    first endpoint (no override but its engine), h2 and h3 their own projects, ports and
    domains on the second."""

    def __init__(self, stack: Stack, remotes: list[Remote]) -> None:
        self.stack, self.env = stack, remotes[0].env
        self.projects = {"h1": stack.project,
                         **{h: f"{stack.project}-{h}" for h in HOSTS[1:]}}
        self.ports = {"h1": (stack.local_port, stack.lan_port, stack.https_port),
                      **{h: (free_port(), free_port(), free_port()) for h in HOSTS[1:]}}
        data = stack.spec()
        data["hosts"] = {"h1": {"engine": remotes[0].url}, **{
            h: {"engine": remotes[1].url, "project": self.projects[h],
                "domain": f"{h}.fleet.test",
                "listeners": {"local": {"port": self.ports[h][0]},
                              "lan": {"port": self.ports[h][1]},
                              "https": {"port": self.ports[h][2]}}}
            for h in HOSTS[1:]}}
        self.data = data
        stack.write_spec(data)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = cli(*args, cwd=self.stack.root, env=self.env, timeout=600)
        print(f"llmstack {' '.join(args)}: exit {proc.returncode}, "
              f"{time.monotonic() - started:.1f}s")
        return proc

    def key(self) -> str:
        return self.stack.key

    def models_status(self, host: str, key: str) -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports[host][0]}/v1/models",
                                     headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def test_fleet_rolling_up_status_verify_rotate(endpoints: list[Remote], project: Stack,
                                               docker_client: Any) -> None:
    fleet = Fleet(project, endpoints)
    started = time.monotonic()
    # validate checks every host's resulting stack; render shows one.
    valid = json_of(fleet.run("validate", "--json"))
    assert {h: v["project"] for h, v in valid["hosts"].items()} == fleet.projects
    shown = fleet.run("render", "--host-name", "h2", "--stdout")
    assert shown.returncode == 0, shown.stderr
    assert f"project: {fleet.projects['h2']}" in shown.stdout
    assert "domain: h2.fleet.test" in shown.stdout

    plan = fleet.run("plan", "--hosts", "all", "--json")
    doc = json_of(plan)
    assert plan.returncode == 0, doc
    for h in HOSTS:
        assert _by_host(doc)[h]["result"]["project"] == fleet.projects[h]
    for h in ("h2", "h3"):
        assert {a["action"] for a in _by_host(doc)[h]["result"]["actions"]} == {"create"}
    # h1 runs already (deployed with --host above): only its own certificate is new.
    h1_actions = {a["service"]: a["action"] for a in _by_host(doc)["h1"]["result"]["actions"]}
    assert "create" not in h1_actions.values() and h1_actions[names.NGINX] != "keep", h1_actions
    assert {s for s, a in h1_actions.items() if a != "keep"} == {names.NGINX}, h1_actions
    # Each host's own certificate for its own domain, private key 0600, in the folder.
    for h in HOSTS:
        key = fleet.stack.root / "hosts" / h / "certs" / "tls.key"
        assert key.stat().st_mode & 0o777 == 0o600

    up = fleet.run("up", "--hosts", "h1,h2", "--parallel", "2", "--json")
    doc = json_of(up)
    assert up.returncode == 0, _failures(doc)
    for h in ("h1", "h2"):
        result = _by_host(doc)[h]
        assert result["status"] == "ok" and result["result"]["changed"] is True
        assert result["result"]["verify"]["ok"] is True

    # The second host's model is broken by an override: it fails, is rolled back and keeps
    # serving; the first is unchanged and serving; the third is never reached.
    fleet.data["hosts"]["h2"]["models"] = {"deepseek-coder": {"args": ["--no-such-flag"]}}
    fleet.stack.write_spec(fleet.data)
    rolling = fleet.run("up", "--hosts", "all", "--json")
    doc = json_of(rolling)
    assert rolling.returncode == 2, doc
    hosts = _by_host(doc)
    assert hosts["h1"]["status"] == "ok" and hosts["h1"]["result"]["changed"] is False
    assert hosts["h2"]["status"] == "failed" and hosts["h2"]["exit_code"] == 2
    assert "rolled back" in hosts["h2"]["result"]["message"]
    assert hosts["h3"]["status"] == "skipped" and hosts["h3"]["result"] == {}
    assert docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={fleet.projects['h3']}"}) == []
    assert fleet.models_status("h1", fleet.key()) == 200
    assert fleet.models_status("h2", fleet.key()) == 200

    status = fleet.run("status", "--hosts", "all", "--json")
    doc = json_of(status)
    assert status.returncode == 2  # h3 has nothing running: the worst host decides
    hosts = _by_host(doc)
    assert hosts["h1"]["result"]["healthy"] is True and hosts["h2"]["result"]["healthy"]
    assert hosts["h3"]["status"] == "failed"
    assert {s["state"] for s in hosts["h3"]["result"]["services"]} == {"missing"}
    assert hosts["h1"]["result"]["revision"]["revision"] == 2  # --host's up, then the fleet's
    assert doc["differing_weights"] == {}
    # Each host's own revisions; the broken change recorded none on h2.
    history = json_of(fleet.run("history", "--hosts", "h1,h2", "--json"))
    assert [[r["revision"] for r in h["result"]["revisions"]] for h in history["hosts"]] == [
        [1, 2], [1]]
    logs = fleet.run("logs", "nginx", "--host-name", "h2", "--tail", "50")
    assert logs.returncode == 0 and "GET /v1/models" in logs.stdout, logs.stderr
    none = fleet.run("logs", "nginx", "--host-name", "h3")  # never deployed: no container
    assert none.returncode == 2 and "no container for service 'nginx'" in none.stderr
    # One new key for the fleet, one grace window, under load on both hosts: every response
    # counted, none failed. Clients read the key from .env before each request, at about 5
    # requests a second per host: under the rate limit (10 r/s). Before `verify --hosts`
    # below, whose rate-limit probe fills each host's bucket: the last probe (the rolling
    # up's verify on h1) lies a `status` and a `history` back.
    old_key = fleet.key()
    for h in ("h1", "h2"):
        wait_for(lambda h=h: fleet.models_status(h, old_key) == 200, timeout=30,
                 what=f"{h} to serve after the rolling up's rate-limit probe")
    counts: dict[str, Counter[int]] = {h: Counter() for h in ("h1", "h2")}
    stop = threading.Event()

    def load(host: str) -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            counts[host][fleet.models_status(host, fleet.key())] += 1
            time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(h,)) for h in counts]
    for t in threads:
        t.start()
    try:
        rotated = fleet.run("rotate-key", "--hosts", "h1,h2", "--grace", "60s", "--json")
        time.sleep(1.0)  # requests with the new key after the rotation, too
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    doc = json_of(rotated)
    assert rotated.returncode == 0, doc
    ends = {h["result"]["grace_ends"] for h in doc["hosts"]}
    assert len(ends) == 1 and None not in ends  # one window for the fleet
    new_key = fleet.key()
    assert new_key != old_key
    for h, counted in counts.items():
        assert set(counted) == {200}, f"{h}: {counted}"
        assert sum(counted.values()) >= 10, counted
    for h in ("h1", "h2"):
        assert fleet.models_status(h, new_key) == 200
        assert fleet.models_status(h, old_key) == 200  # within the grace window
    verify = fleet.run("verify", "--hosts", "h1,h2", "--json")
    doc = json_of(verify)
    assert verify.returncode == 0, _failures(doc)
    for h in ("h1", "h2"):
        checks = {c["check"]: c["status"] for c in _by_host(doc)[h]["result"]["checks"]}
        assert checks["tls"] == "ok" and checks["chat_stream"] == "ok", checks

    down = fleet.run("down", "--hosts", "h2,h3", "--volumes", "--json")
    assert down.returncode == 0, down.stdout + down.stderr
    # h2: health, model, litellm, edge-metrics, nginx; h3 was never brought up.
    assert [len(h["result"]["removed"]) for h in json_of(down)["hosts"]] == [5, 0]
    print(f"fleet flow took {time.monotonic() - started:.1f}s; load: "
          + ", ".join(f"{h} {sum(c.values())} requests" for h, c in counts.items()))


def test_a_stopped_model_fails_verify_and_down_leaves_no_session(
        endpoints: list[Remote], project: Stack, docker_client: Any) -> None:
    """A broken stack: the model server of the folder's stack (the fleet's h1) stops; status
    and verify over ssh fail and say where (through the inventory: h1 serves its own
    certificate now); `down --host` removes it and leaves no ssh session behind."""
    remote = endpoints[0]
    containers = docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={project.project}"})
    model = next(c for c in containers
                 if c.labels[names.LABEL_SERVICE] == names.model_service("deepseek-coder"))
    model.stop(timeout=5)
    fleet_run = lambda *args: cli(*args, cwd=project.root, env=remote.env,  # noqa: E731
                                  timeout=600)
    wait_for(lambda: fleet_run("status", "--hosts", "h1", "--json").returncode == 2,
             timeout=60, what="status to see the stopped model")
    broken = fleet_run("verify", "--hosts", "h1", "--json")
    assert broken.returncode == 2, broken.stderr
    checks = {c["check"]: c for c in json_of(broken)["hosts"][0]["result"]["checks"]}
    assert {k for k, c in checks.items() if c["status"] == "fail"} == {"health", "chat_stream"}
    assert "model:deepseek-coder" in checks["health"]["detail"], checks["health"]

    down = run(project, remote, "down", "--json")
    assert down.returncode == 0, down.stderr
    assert len(json_of(down)["removed"]) == 5  # health, model, litellm, edge-metrics, nginx
    assert docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={project.project}"}) == []
    assert remote.sessions() == [], "ssh sessions left behind"


def _read(container: Any, path: str) -> bytes:
    import io
    import tarfile

    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        return handle.read() if handle else b""
