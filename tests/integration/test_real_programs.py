"""The rendered files are valid for the real programs: nginx's own `nginx -t` (the Debian nginx
in llmstack/nginx, and the host's when there is one) and the pinned LiteLLM proxy loading its
config. Each golden case (tests/golden/) and the starter are checked.

The nginx config names its upstreams by container name and includes the secrets folder, so it
runs where those exist: on a throwaway network with a stand-in container answering to every
upstream name, with the secrets folder filled as `up` fills it. Ports: 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from docker.types import Mount

from llmstack import initialize, names, plan, render, secrets, spec, teamkeys, tls
from llmstack.images import LITELLM, NGINX
from llmstack.spec import StackSpec
from tests.helpers import REPO, upstream_stand_in, wait_for

pytestmark = pytest.mark.integration

GOLDEN = REPO / "tests" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "stack.yaml").is_file())
NGINX_IMAGE = NGINX.tag
LITELLM_IMAGE = LITELLM.tag
OWN_UID, OWN_GID = (int(x) for x in plan.OWN_UID.split(":"))
LABEL = {"llmstack.test": "real-programs"}


def stack_of(case: str) -> StackSpec:
    if case == "starter":
        return spec.parse(initialize.starter())
    return spec.load_file(GOLDEN / case / "stack.yaml")


def give_to_service_user(folder: Path) -> None:
    """Files as `up` ships them: owned by the image's user, keys 0600."""
    for path in [folder, *folder.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, OWN_UID, OWN_GID)
        elif path.is_file():
            path.chmod(0o644)  # not root: the container user can only read world-readable files


def nginx_folder(root: Path, stack: StackSpec, conf: bytes | None = None) -> Path:
    """/etc/llmstack/nginx as `up` fills it: nginx.conf and secrets/ (keys, TLS pair)."""
    folder = root / "nginx"
    (folder / "secrets").mkdir(parents=True)
    (folder / "nginx.conf").write_bytes(conf or render.render(stack).files()["nginx.conf"])
    # A rotation in progress, so the grace-window map is exercised too.
    keys = secrets.Keys(secrets.new_key(), secrets.new_key(), secrets.new_key(),
                        int(time.time()) + 600)
    # Team keys too (limits, models, an expiry), so their maps and zones are exercised.
    _, alice = teamkeys.new_secret()
    _, bob = teamkeys.new_secret()
    store = teamkeys.Store((
        teamkeys.TeamKey("alice", int(time.time()), alice, rate=teamkeys.Rate(2, "s"), burst=1),
        teamkeys.TeamKey("bob", int(time.time()), bob, concurrent=1,
                         models=(stack.models[0].name,), expires=int(time.time()) + 600)))
    (folder / "secrets" / "keys.conf").write_bytes(
        render.render_nginx_keys(keys, time.time(), stack, store))
    (folder / "secrets" / "key-limits.conf").write_bytes(
        render.render_nginx_key_limits(stack, store, time.time()))
    (folder / "secrets" / "key-limits.conf").chmod(0o600)
    tls.generate(root / "certs", stack.domain)
    for name in (tls.CERT, tls.KEY):
        shutil.copy(root / "certs" / name, folder / "secrets" / name)
        (folder / "secrets" / name).chmod(0o600)
    (folder / "secrets" / "keys.conf").chmod(0o600)
    give_to_service_user(folder)
    return folder


def run_once(client: Any, image: str, **kwargs: Any) -> tuple[int, str]:
    """Run a container to completion; its exit code and output."""
    container = client.containers.run(image, detach=True, labels=LABEL, **kwargs)
    try:
        code = container.wait(timeout=120)["StatusCode"]
        return int(code), container.logs().decode(errors="replace")
    finally:
        container.remove(force=True, v=True)  # with its anonymous volumes


# --- nginx -t -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_net(docker_client: Any) -> Iterator[str]:
    """A network where every upstream name of every case resolves (to a sleeping stand-in)."""
    aliases = sorted({names.container(stack_of(c).project, svc) for c in [*CASES, "starter"]
                      for svc in (names.LITELLM, names.HEALTH)}
                     | {r.host for c in CASES for r in render.direct_routes(stack_of(c))})
    with upstream_stand_in(docker_client, "t-nginx", NGINX_IMAGE, aliases, LABEL) as net:
        yield net


def nginx_service(stack: StackSpec) -> plan.ServiceSpec:
    """nginx's container settings as the plan decides them for `up`, in llmstack's nginx image
    (the one here: a stack naming another gets it from its registry)."""
    stack = stack.model_copy(update={"images": stack.images.model_copy(
        update={"nginx": NGINX_IMAGE})})
    wanted = plan.desired(stack, render.render(stack), secrets.new_key())
    return next(svc for svc in wanted if svc.role == names.NGINX)


def nginx_t(client: Any, stack: StackSpec, folder: Path, network: str) -> tuple[int, str]:
    """`nginx -t` of the real image, as `up` runs it: the plan's user, read-only root, /tmp
    tmpfs, capabilities and no-new-privileges for nginx. An anonymous volume stands in for each
    volume of the stack's own (the body spool: a fresh volume takes the image's owner of the
    folder, as up's)."""
    svc = nginx_service(stack)
    own_volumes = [Mount(target=m.target, source=None, type="volume", read_only=m.read_only)
                   for m in svc.mounts if m.managed]
    return run_once(client, svc.image, entrypoint=svc.entrypoint,
                    command=["-t", "-c", f"{svc.config_mount}/nginx.conf"],
                    network=network, user=svc.user, read_only=svc.read_only,
                    tmpfs=dict(svc.tmpfs), cap_drop=list(svc.cap_drop),
                    cap_add=list(svc.cap_add) or None,
                    security_opt=["no-new-privileges=true"] if svc.no_new_privileges else None,
                    volumes={str(folder): {"bind": svc.config_mount, "mode": "ro"}},
                    mounts=own_volumes)


@pytest.mark.parametrize("case", [*CASES, "starter"])
def test_rendered_nginx_conf_passes_nginx_t_in_the_nginx_image(
        docker_client: Any, upstream_net: str, tmp_path: Path, case: str) -> None:
    stack = stack_of(case)
    code, output = nginx_t(docker_client, stack, nginx_folder(tmp_path, stack), upstream_net)
    assert code == 0, output
    assert "syntax is ok" in output and "test is successful" in output


def test_nginx_t_harness_catches_a_bad_config(docker_client: Any, upstream_net: str,
                                              tmp_path: Path) -> None:
    """The check above can fail: a bad directive and an unknown upstream are both reported."""
    stack = stack_of("starter")
    conf = render.render(stack).files()["nginx.conf"].replace(
        b"proxy_buffering off;", b"proxy_buffering sometimes;")
    code, output = nginx_t(docker_client, stack, nginx_folder(tmp_path / "a", stack, conf),
                           upstream_net)
    assert code != 0 and "proxy_buffering" in output
    conf = render.render(stack).files()["nginx.conf"].replace(
        b"server llmstack-litellm:", b"server nowhere-litellm:")
    code, output = nginx_t(docker_client, stack, nginx_folder(tmp_path / "b", stack, conf),
                           upstream_net)
    assert code != 0 and "host not found" in output


HOST_NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                       else None)


@pytest.mark.skipif(HOST_NGINX is None, reason="no nginx binary on this host")
@pytest.mark.parametrize("case", [*CASES, "starter"])
def test_rendered_nginx_conf_passes_the_host_nginx_t(tmp_path: Path, case: str) -> None:
    """The same files under Debian's host nginx, paths and upstream names moved to this
    machine in a temp copy (the only edits)."""
    stack = stack_of(case)
    folder = nginx_folder(tmp_path, stack)
    conf = (folder / "nginx.conf").read_text()
    conf = conf.replace(" /tmp/", f" {tmp_path}/tmp/")  # pid and temp paths
    conf = conf.replace(render.NGINX_CONF_DIR, str(folder))
    for svc in (names.LITELLM, names.HEALTH):
        conf = conf.replace(f"server {names.container(stack.project, svc)}:", "server 127.0.0.1:")
    for route in render.direct_routes(stack):
        conf = conf.replace(f"server {route.host}:", "server 127.0.0.1:")
    (tmp_path / "tmp").mkdir()
    (folder / "host.conf").write_text(conf)
    proc = subprocess.run([str(HOST_NGINX), "-t", "-e", "stderr", "-p", str(folder), "-c",
                           str(folder / "host.conf")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr


# --- LiteLLM loads litellm.yaml -----------------------------------------------------------------


@pytest.mark.parametrize("case", ["demo", "custom"])
def test_litellm_loads_the_rendered_config(docker_client: Any, tmp_path: Path, case: str) -> None:
    stack = stack_of(case)
    rendered = render.render(stack)
    key = secrets.new_key()
    litellm = next(s for s in plan.desired(stack, rendered, key) if s.service == names.LITELLM)
    folder = tmp_path / "litellm"
    folder.mkdir()
    for name, data in litellm.config.items():  # litellm.yaml and the team-keys callback
        (folder / name).write_bytes(data)
    give_to_service_user(folder)
    # As `up` starts it (command, environment, user, read-only root), but published on a
    # random loopback port so this test can call it.
    container = docker_client.containers.run(
        LITELLM_IMAGE, command=litellm.command, environment=litellm.env, labels=LABEL,
        user=litellm.user, read_only=litellm.read_only, tmpfs={"/tmp": "rw,size=256m"},
        volumes={str(folder): {"bind": litellm.config_mount, "mode": "ro"}},
        ports={f"{names.LITELLM_PORT}/tcp": ("127.0.0.1", None)}, detach=True)
    try:
        def port() -> int | None:
            container.reload()
            if container.status == "exited":
                raise AssertionError("LiteLLM exited:\n" + container.logs().decode())
            bindings = container.attrs["NetworkSettings"]["Ports"].get(
                f"{names.LITELLM_PORT}/tcp")
            return int(bindings[0]["HostPort"]) if bindings else None

        base = f"http://127.0.0.1:{wait_for(port, 30, what='published port')}"

        def alive() -> bool:
            port()  # fails fast with the log if LiteLLM died on the config
            try:
                return requests.get(f"{base}/health/liveliness", timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # still starting (slow host)
                return False

        wait_for(alive, 180, interval=0.5, what="LiteLLM /health/liveliness")
        models = requests.get(f"{base}/v1/models", timeout=60,
                              headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200, models.text
        listed = [m["id"] for m in models.json()["data"]]
        assert sorted(listed) == sorted(n for m in stack.models for n in m.public_names)
        # The key came from the environment: without it the proxy refuses.
        assert requests.get(f"{base}/v1/models", timeout=60).status_code == 401
    except (AssertionError, requests.RequestException) as exc:
        tail = container.logs(tail=30).decode(errors="replace")
        raise AssertionError(f"{exc}\nLiteLLM log tail:\n{tail}") from exc
    finally:
        container.remove(force=True)
