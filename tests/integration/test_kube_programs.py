"""The files inside `llmstack export k8s`'s ConfigMaps and Secret are valid for the real
programs, laid out as the pods see them: nginx's projected folder (nginx.conf from the
ConfigMap, secrets/ from the Secret) passes `nginx -t` in llmstack's nginx image, and LiteLLM
loads litellm.yaml with its key from the Secret and answers /v1/models with it.

No Kubernetes runs here: the files are read back from the exported YAML (as the kubelet would
project them) and run on the Docker engine, with the container settings of the Deployment.
Ports: 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from llmstack import kube, names, plan, render, secrets, spec, tls
from llmstack.images import LITELLM, NGINX
from llmstack.spec import StackSpec
from llmstack.teamkeys import Store
from tests.helpers import REPO, upstream_stand_in, wait_for
from tests.integration.test_real_programs import nginx_t

pytestmark = pytest.mark.integration

STACKS = {"demo": REPO / "tests" / "golden" / "demo" / "stack.yaml",
          "gpu": REPO / "tests" / "golden" / "gpu" / "stack.yaml",
          "multigpu": REPO / "tests" / "golden" / "k8s" / "multigpu.stack.yaml"}
NGINX_IMAGE = NGINX.tag
LITELLM_IMAGE = LITELLM.tag
LABEL = {"llmstack.test": "kube-programs"}


def _export(case: str, root: Path) -> tuple[StackSpec, secrets.Keys, dict[str, list[Any]]]:
    """The export of `case` with fresh keys and a real certificate: file -> its objects."""
    stack = spec.load_file(STACKS[case])
    keys = secrets.Keys(secrets.new_key(), secrets.new_key(), secrets.new_key(),
                        int(time.time()) + 600)
    tls.generate(root / "certs", stack.domain)
    files = {render.KEYS_FILE: (render.render_nginx_keys(keys, time.time(), stack, Store()), 0o600),
             render.KEY_LIMITS_FILE: (render.render_nginx_key_limits(stack, Store(), time.time()),
                                      0o600),
             render.TLS_CERT_FILE: ((root / "certs" / tls.CERT).read_bytes(), 0o600),
             render.TLS_KEY_FILE: ((root / "certs" / tls.KEY).read_bytes(), 0o600)}
    services = plan.desired(stack, render.render(stack), keys.internal)
    export = kube.manifests(stack, services, files, kube.Options(stack.project))
    docs = {name: [o for o in yaml.safe_load_all(f.data) if o]
            for name, f in export.files.items() if name.endswith(".yaml")}
    return stack, keys, docs


def _find(docs: dict[str, list[Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for objs in docs.values() for o in objs
                if o["kind"] == kind and o["metadata"]["name"] == name)


def _project(docs: dict[str, list[Any]], volume: dict[str, Any], folder: Path,
             owner: tuple[int, int] | None) -> None:
    """Write a configMap/projected volume's files as the kubelet does (mode, fsGroup)."""
    sources = volume.get("projected", {}).get("sources") or [{"configMap": volume["configMap"]}]
    mode = (volume.get("projected") or volume["configMap"]).get("defaultMode", 0o644)
    for source in sources:
        kind, ref = next(iter(source.items()))
        obj = _find(docs, "ConfigMap" if kind == "configMap" else "Secret", ref["name"])
        data = obj["data"]
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            value = data[item["key"]]
            content = base64.b64decode(value) if kind == "secret" else value.encode()
            path = folder / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    for path in [folder, *folder.rglob("*")]:
        if os.geteuid() == 0 and owner:
            os.chown(path, 0, owner[1])  # the kubelet: root-owned, the pod's fsGroup
        if path.is_file():
            path.chmod(mode if os.geteuid() == 0 else 0o644)


@pytest.fixture(scope="module")
def kube_net(docker_client: Any) -> Iterator[str]:
    """A network where every upstream name of the cases resolves (to a sleeping stand-in):
    on the cluster these are the Services' names."""
    aliases = sorted({names.container(spec.load_file(p).project, svc)
                      for p in STACKS.values() for svc in (names.LITELLM, names.HEALTH)})
    with upstream_stand_in(docker_client, "t-kube", NGINX_IMAGE, aliases, LABEL) as net:
        yield net


@pytest.mark.parametrize("case", list(STACKS))
def test_exported_nginx_folder_passes_nginx_t(docker_client: Any, kube_net: str,
                                              tmp_path: Path, case: str) -> None:
    stack, _, docs = _export(case, tmp_path)
    deployment = _find(docs, "Deployment", names.container(stack.project, names.NGINX))
    pod = deployment["spec"]["template"]["spec"]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    folder = tmp_path / "nginx"
    group = pod["securityContext"].get("fsGroup")
    _project(docs, config, folder, (0, group) if group is not None else None)
    assert (folder / "nginx.conf").read_bytes() == render.render(stack).files()["nginx.conf"]
    assert (folder / render.KEYS_FILE).is_file() and (folder / render.TLS_KEY_FILE).is_file()
    code, output = nginx_t(docker_client, stack, folder, kube_net)
    assert code == 0, output
    assert "test is successful" in output


def test_exported_litellm_config_and_key_load_in_litellm(docker_client: Any,
                                                         tmp_path: Path) -> None:
    stack, keys, docs = _export("demo", tmp_path)
    deployment = _find(docs, "Deployment", names.container(stack.project, names.LITELLM))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    folder = tmp_path / "litellm"
    _project(docs, config, folder, (0, pod["securityContext"]["fsGroup"]))
    secret = _find(docs, "Secret", f"{stack.project}-secrets")
    env = {}
    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode() if ref \
            else e["value"]
    assert env["LITELLM_MASTER_KEY"] == keys.internal
    sc = container["securityContext"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    running = docker_client.containers.run(
        container["image"], command=container["args"], environment=env, labels=LABEL,
        user=f"{sc['runAsUser']}:{sc['runAsGroup']}", group_add=[str(
            pod["securityContext"]["fsGroup"])], read_only=sc["readOnlyRootFilesystem"],
        tmpfs={"/tmp": "rw,size=256m"}, cap_drop=sc["capabilities"]["drop"],
        security_opt=["no-new-privileges=true"],
        volumes={str(folder): {"bind": mount["mountPath"], "mode": "ro"}},
        ports={f"{names.LITELLM_PORT}/tcp": ("127.0.0.1", None)}, detach=True)
    try:
        def port() -> int | None:
            running.reload()
            if running.status == "exited":
                raise AssertionError("LiteLLM exited:\n" + running.logs().decode())
            bindings = running.attrs["NetworkSettings"]["Ports"].get(f"{names.LITELLM_PORT}/tcp")
            return int(bindings[0]["HostPort"]) if bindings else None

        base = f"http://127.0.0.1:{wait_for(port, 30, what='published port')}"
        live = next(p for p in (container["livenessProbe"], container["readinessProbe"]))

        def alive() -> bool:
            port()
            try:
                return requests.get(base + live["httpGet"]["path"], timeout=2).status_code == 200
            except (requests.ConnectionError, requests.Timeout):  # still starting (slow host)
                return False

        wait_for(alive, 180, interval=0.5, what="LiteLLM liveness path")
        ready = requests.get(base + container["readinessProbe"]["httpGet"]["path"], timeout=10)
        assert ready.status_code == 200, ready.text
        models = requests.get(f"{base}/v1/models", timeout=60,
                              headers={"Authorization": f"Bearer {keys.internal}"})
        assert models.status_code == 200, models.text
        listed = sorted(m["id"] for m in models.json()["data"])
        assert listed == sorted(n for m in stack.models for n in m.public_names)
        assert requests.get(f"{base}/v1/models", timeout=60).status_code == 401
    except (AssertionError, requests.RequestException) as exc:
        tail = running.logs(tail=30).decode(errors="replace")
        raise AssertionError(f"{exc}\nLiteLLM log tail:\n{tail}") from exc
    finally:
        running.remove(force=True)


def test_edge_pre_stop_hook_stops_nginx_gracefully(docker_client: Any, kube_net: str,
                                                   tmp_path: Path) -> None:
    """The edge pod's preStop command, run in nginx as the Deployment runs it: nginx quits by
    itself (`nginx -s quit`: exit 0, no signal from the engine) within the pod's grace period,
    and the hook returns only once it has (so the kubelet's SIGTERM never cuts it short)."""
    stack, _, docs = _export("demo", tmp_path)
    pod = _find(docs, "Deployment", names.container(stack.project, names.NGINX))["spec"][
        "template"]["spec"]
    # nginx's own container (edge-metrics runs beside it in the pod with metrics on).
    (container,) = [c for c in pod["containers"] if c["name"] == names.NGINX]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    folder = tmp_path / "nginx"
    _project(docs, config, folder, (0, pod["securityContext"]["fsGroup"]))
    sc = container["securityContext"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    running = docker_client.containers.run(
        container["image"], entrypoint=container["command"], command=container["args"],
        labels=LABEL, network=kube_net, user=f"{sc['runAsUser']}:{sc['runAsGroup']}",
        group_add=[str(pod["securityContext"]["fsGroup"])],
        read_only=sc["readOnlyRootFilesystem"], cap_drop=sc["capabilities"]["drop"],
        security_opt=["no-new-privileges=true"],
        tmpfs={mounts["tmpfs-0"]: "rw,size=16m", mounts["spool"]: "rw,size=16m,uid=10001"},
        volumes={str(folder): {"bind": mounts["config"], "mode": "ro"}}, detach=True)
    try:
        def started() -> bool:
            running.reload()
            assert running.status != "exited", running.logs().decode()
            return running.exec_run(["sh", "-c", f"test -e {render.NGINX_PID_FILE}"],
                                    user=f"{sc['runAsUser']}").exit_code == 0

        wait_for(started, 60, what="nginx started")
        hook = container["lifecycle"]["preStop"]["exec"]["command"]
        begun = time.monotonic()
        result = running.exec_run(hook, user=f"{sc['runAsUser']}")
        took = time.monotonic() - begun
        assert kube.NGINX_STOP_PAUSE <= took < pod["terminationGracePeriodSeconds"]
        assert running.wait(timeout=30)["StatusCode"] == 0
        running.reload()
        assert running.status == "exited" and not running.attrs["State"]["OOMKilled"]
        # The exec ended with the container (its process went with nginx) or returned 0.
        print("hook exit", result.exit_code, "took", time.monotonic() - begun)
        assert result.exit_code in (0, None, 137), result.output
    finally:
        running.remove(force=True)
