"""`llmstack export k8s`: the manifests hold what `up` would create, validate strictly against
the official Kubernetes schemas, and keep every guarantee of one host.

Cases: the demo (own images, CPU), the GPU starter (vLLM on two GPUs, llama.cpp embeddings)
and tests/golden/k8s/multigpu.stack.yaml (vLLM tensor parallel on 4 GPUs, TGI on 2, an ollama
tag, a RuntimeClass and a GPU product). Golden files: tests/golden/k8s/<case>/ (every file but
secret.yaml, whose keys differ per project); UPDATE_GOLDEN=1 rewrites them.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmstack import images, initialize, kube, names, plan, render, secrets, spec
from llmstack.backends import BACKENDS
from llmstack.errors import SpecError, UserError
from llmstack.teamkeys import Store
from tests.helpers import REPO, cli

GOLDEN = REPO / "tests" / "golden"
K8S_GOLDEN = GOLDEN / "k8s"
STACKS = {"demo": GOLDEN / "demo" / "stack.yaml", "gpu": GOLDEN / "gpu" / "stack.yaml",
          "multigpu": K8S_GOLDEN / "multigpu.stack.yaml"}
CASES = list(STACKS)
MASTER = "sk-master-" + "m" * 40
INTERNAL = "sk-internal-" + "i" * 40
HF_TOKEN_VALUE = "hf_" + "t" * 34
TLS_KEY = (b"-----BEGIN PRIVATE KEY-----\nTLSKEYMATERIAL" + b"k" * 40 +
           b"\n-----END PRIVATE KEY-----\n")
TLS_CERT = b"-----BEGIN CERTIFICATE-----\nCERT\n-----END CERTIFICATE-----\n"
NOW = 1_800_000_000.0
VERSIONS = [kube.OLDEST_K8S, kube.NEWEST_K8S]


def _stack(case: str) -> spec.StackSpec:
    return spec.load_file(STACKS[case])


def _secret_files(keys: secrets.Keys) -> dict[str, tuple[bytes, int]]:
    stack = spec.parse(initialize.starter())
    return {render.KEYS_FILE: (render.render_nginx_keys(keys, NOW, stack, Store()), 0o600),
            render.KEY_LIMITS_FILE: (render.render_nginx_key_limits(stack, Store(), NOW), 0o600),
            render.TLS_CERT_FILE: (TLS_CERT, 0o600), render.TLS_KEY_FILE: (TLS_KEY, 0o600)}


def _export(case: str, keys: secrets.Keys | None = None, **options: Any
            ) -> tuple[spec.StackSpec, list[plan.ServiceSpec], kube.KubeExport]:
    stack = _stack(case)
    keys = keys or secrets.Keys(MASTER, INTERNAL)
    services = plan.desired(stack, render.render(stack), keys.internal)
    opts = kube.Options(**{"namespace": stack.project, **options})
    files = {} if opts.secret_ref else _secret_files(keys)
    return stack, services, kube.manifests(stack, services, files, opts,
                                           hf_token=HF_TOKEN_VALUE)


def _objects(export: kube.KubeExport) -> list[dict[str, Any]]:
    """Every object as read back from the files (what kubectl would read)."""
    out = []
    for name, f in export.files.items():
        if name.endswith(".yaml") and name != kube.KUSTOMIZATION:
            out += [o for o in yaml.safe_load_all(f.data) if o]
    return out


def _by_kind(export: kube.KubeExport, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in _objects(export) if o["kind"] == kind}


def _deployment(export: kube.KubeExport, project: str, service: str) -> dict[str, Any]:
    return _by_kind(export, "Deployment")[names.container(project, service)]


def own_pods(services: list[plan.ServiceSpec]) -> list[plan.ServiceSpec]:
    """The services with a Deployment of their own (edge-metrics runs in the edge's pod:
    test_edge_metrics_runs_beside_nginx_in_its_pod_sharing_only_the_log_socket)."""
    return [s for s in services if s not in kube.sidecars(services)]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The Deployment's own container (the edge's pod also runs edge-metrics beside it)."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers[1:]] in ([], [names.EDGE_METRICS])
    return dict(containers[0])


# --- Validation against the official schemas ---------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_every_object_validates_strictly(case: str, version: str) -> None:
    _, _, export = _export(case)
    objects = _objects(export)
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "Secret", "ConfigMap", "Deployment", "Service",
            "NetworkPolicy"} <= kinds
    for obj in objects:
        assert kubernetes_validate.validate(obj, version, strict=True) == version, obj["kind"]


@pytest.mark.parametrize("case", ["gpu"])
def test_strict_validation_catches_a_wrong_field(case: str) -> None:
    """The check above can fail: an unknown field and a wrong type are both refused."""
    _, _, export = _export(case)
    deployment = next(o for o in _objects(export) if o["kind"] == "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    _container(bad)["resources"]["limit"] = {"memory": "1Gi"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kube.NEWEST_K8S, strict=True)
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kube.OLDEST_K8S, strict=True)


def test_the_supported_versions_are_in_the_validator() -> None:
    have = {kubernetes_validate.utils.major_minor(v)
            for v in kubernetes_validate.utils.all_versions()}
    assert {kube.OLDEST_K8S, kube.NEWEST_K8S} <= have


# --- Golden files -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    _, _, export = _export(case)
    folder = K8S_GOLDEN / case
    files = {n: f for n, f in export.files.items() if n != kube.SECRET_FILE}
    if os.environ.get("UPDATE_GOLDEN"):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, f in files.items():
            (folder / name).write_bytes(f.data)
        warnings.warn(f"golden files rewritten: {folder}", stacklevel=1)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    for name, f in files.items():
        assert (folder / name).read_bytes() == f.data, f"{case}/{name}"


def test_the_export_is_deterministic() -> None:
    assert _export("multigpu")[2].files == _export("multigpu")[2].files


# --- Structure: selectors, ports, references ----------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_selectors_match_pod_labels_and_service_ports_match_container_ports(case: str) -> None:
    _, services, export = _export(case)
    deployments = _by_kind(export, "Deployment")
    # edge-metrics runs in the edge's pod (it reads nginx's lines from a pod-local socket).
    assert len(deployments) == len(services) - len(kube.sidecars(services))
    for d in deployments.values():
        template_labels = d["spec"]["template"]["metadata"]["labels"]
        assert d["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
        assert d["metadata"]["labels"] == template_labels
    for svc_obj in _by_kind(export, "Service").values():
        selected = [d for d in deployments.values() if svc_obj["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(selected) == 1, svc_obj["metadata"]["name"]
        # The Service is named as `up` names the container: the rendered configs' hostnames.
        assert svc_obj["metadata"]["name"] == selected[0]["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in _container(selected[0])["ports"]}
        for port in svc_obj["spec"]["ports"]:
            assert port["targetPort"] in ports, port


@pytest.mark.parametrize("case", CASES)
def test_every_configmap_secret_and_claim_reference_resolves(case: str) -> None:
    stack, _, export = _export(case)
    configmaps = _by_kind(export, "ConfigMap")
    (secret,) = _by_kind(export, "Secret").values()
    claims = _by_kind(export, "PersistentVolumeClaim")
    secret_keys = set(secret["data"])
    for d in _by_kind(export, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        volume_names = {v["name"] for v in pod["volumes"]}
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volume_names
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == secret["metadata"]["name"]
                    assert ref["key"] in secret_keys or ref.get("optional"), ref
        for v in pod["volumes"]:
            sources = v.get("projected", {}).get("sources", [])
            for cm in [v.get("configMap")] + [s.get("configMap") for s in sources]:
                if cm:
                    assert cm["name"] in configmaps
                    for item in cm.get("items", []):
                        assert item["key"] in configmaps[cm["name"]]["data"]
            for s in [s["secret"] for s in sources if "secret" in s]:
                assert s["name"] == secret["metadata"]["name"]
                assert {i["key"] for i in s["items"]} <= secret_keys
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
    kustomization = yaml.safe_load(export.files[kube.KUSTOMIZATION].data)
    assert kustomization["namespace"] == stack.project
    assert sorted(kustomization["resources"]) == sorted(
        n for n in export.files if n.endswith(".yaml") and n != kube.KUSTOMIZATION)
    namespaces = {o["metadata"].get("namespace") for o in _objects(export)
                  if o["kind"] != "Namespace"}
    assert namespaces == {stack.project}


@pytest.mark.parametrize("case", CASES)
def test_configmaps_carry_the_rendered_files_byte_for_byte(case: str) -> None:
    """One renderer: the ConfigMaps hold what `up` writes into the config volumes."""
    stack, _, export = _export(case)
    rendered = render.render(stack)
    configmaps = _by_kind(export, "ConfigMap")
    for service, files in rendered.services.items():
        data = configmaps[names.config_volume(stack.project, service)]["data"]
        assert {k: v.encode() for k, v in data.items()} == files


# --- Secrets ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_no_key_text_outside_the_secret(case: str) -> None:
    _, _, export = _export(case)
    body = b"TLSKEYMATERIAL"
    for name, f in export.files.items():
        found = [s for s in (MASTER.encode(), INTERNAL.encode(), body,
                             HF_TOKEN_VALUE.encode()) if s in f.data]
        if name == kube.SECRET_FILE:
            assert f.mode == 0o600
            continue
        assert found == [], name
    secret = _by_kind(export, "Secret")[f"{_stack(case).project}-secrets"]
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert MASTER.encode() in data["keys.conf"] and INTERNAL.encode() in data["keys.conf"]
    assert data["LITELLM_MASTER_KEY"] == INTERNAL.encode()
    assert data["tls.key"] == TLS_KEY and data[kube.HF_TOKEN] == HF_TOKEN_VALUE.encode()
    assert kube.SECRET_FILE in export.files[".gitignore"].data.decode().split()


def test_nginx_reads_its_secret_files_where_up_ships_them() -> None:
    stack, services, export = _export("demo")
    nginx = next(s for s in services if s.role == names.NGINX)
    pod = _deployment(export, stack.project, names.NGINX)["spec"]["template"]["spec"]
    (config,) = [v for v in pod["volumes"] if v["name"] == "config"]
    paths = {i["path"] for s in config["projected"]["sources"]
             for i in next(iter(s.values()))["items"]}
    assert paths == {"nginx.conf", render.KEYS_FILE, render.KEY_LIMITS_FILE, render.TLS_CERT_FILE,
                     render.TLS_KEY_FILE}
    mount = next(m for m in _container(_deployment(export, stack.project, names.NGINX))[
        "volumeMounts"] if m["name"] == "config")
    assert mount == {"name": "config", "mountPath": nginx.config_mount, "readOnly": True}
    assert config["projected"]["defaultMode"] == 0o440  # group: the pod's fsGroup


def test_a_key_rotation_changes_the_edges_pod_template_only_by_its_checksum() -> None:
    stack, _, before = _export("demo")
    _, _, after = _export("demo", secrets.Keys("sk-rotated-" + "r" * 40, INTERNAL, MASTER,
                                               int(NOW) + 3600))
    old = _deployment(before, stack.project, names.NGINX)
    new = _deployment(after, stack.project, names.NGINX)
    key = kube.SECRET_CHECKSUM_ANNOTATION
    assert old["spec"]["template"]["metadata"]["annotations"][key] != \
        new["spec"]["template"]["metadata"]["annotations"][key]
    del old["spec"]["template"]["metadata"]["annotations"][key]
    del new["spec"]["template"]["metadata"]["annotations"][key]
    assert old == new
    # A service that reads no secret keeps its template: it does not restart.
    assert _deployment(before, stack.project, names.HEALTH) == \
        _deployment(after, stack.project, names.HEALTH)


def test_secret_ref_uses_the_clusters_secret_and_writes_none() -> None:
    _, _, export = _export("gpu", secret_ref="team-llm-keys")
    assert kube.SECRET_FILE not in export.files
    assert "Secret" not in {o["kind"] for o in _objects(export)}
    text = b"".join(f.data for f in export.files.values())
    assert MASTER.encode() not in text and INTERNAL.encode() not in text
    refs = set()
    for d in _by_kind(export, "Deployment").values():
        pod = d["spec"]["template"]["spec"]
        assert kube.SECRET_CHECKSUM_ANNOTATION not in d["spec"]["template"]["metadata"][
            "annotations"]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            refs |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                     if "valueFrom" in e}
        refs |= {s["secret"]["name"] for v in pod["volumes"]
                 for s in v.get("projected", {}).get("sources", []) if "secret" in s}
    assert refs == {"team-llm-keys"}


# --- GPUs, strategy, probes ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_gpu_limits_equal_stack_yaml_and_gpu_models_are_recreated(case: str) -> None:
    stack, _, export = _export(case)
    for model in stack.models:
        d = _deployment(export, stack.project, names.model_service(model.name))
        pod = d["spec"]["template"]["spec"]
        limits = _container(d)["resources"].get("limits", {})
        if model.gpu_ids:
            assert limits[kube.GPU_RESOURCE] == len(model.gpu_ids)
            assert kube.GPU_RESOURCE not in _container(d)["resources"]["requests"]
            assert d["spec"]["strategy"] == {"type": "Recreate"}
            assert pod.get("runtimeClassName") == stack.kubernetes.runtime_class
            if stack.kubernetes.gpu_product:
                assert pod["nodeSelector"] == {kube.GPU_PRODUCT_LABEL:
                                               stack.kubernetes.gpu_product}
        else:
            assert kube.GPU_RESOURCE not in limits
            assert "runtimeClassName" not in pod and "nodeSelector" not in pod
        for init in pod.get("initContainers", []):
            assert kube.GPU_RESOURCE not in init["resources"].get("limits", {})
    total = sum(_container(d)["resources"].get("limits", {}).get(kube.GPU_RESOURCE, 0)
                for d in _by_kind(export, "Deployment").values())
    assert total == sum(len(m.gpu_ids) for m in stack.models)


def test_strategy_recreates_gpu_pods_and_pods_with_a_cache_claim() -> None:
    _, services, _ = _export("gpu")
    by_name = {s.service: s for s in services}
    recreate = {"type": "Recreate"}
    assert kube.strategy(by_name["model-deepseek-coder"], []) == recreate  # GPUs, no claim
    assert kube.strategy(by_name["model-smollm2-embed"], ["llmstack-models"]) == recreate
    rolling = kube.strategy(by_name[names.LITELLM], [])
    assert rolling["type"] == "RollingUpdate" and rolling["rollingUpdate"]["maxUnavailable"] == 0


def test_multi_gpu_vllm_gets_its_shm_and_tensor_parallel_size() -> None:
    stack, _, export = _export("multigpu")
    c = _container(_deployment(export, stack.project, "model-llama-70b"))
    assert c["resources"]["limits"][kube.GPU_RESOURCE] == 4
    assert c["args"][c["args"].index("--tensor-parallel-size") + 1] == "4"
    pod = _deployment(export, stack.project, "model-llama-70b")["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


@pytest.mark.parametrize("case", CASES)
def test_probes_target_each_backends_own_endpoints(case: str) -> None:
    stack, services, export = _export(case)
    for svc in own_pods(services):
        c = _container(_deployment(export, stack.project, svc.service))
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        deadline = (svc.loading.ceiling_s if svc.loading is not None
                    else plan.READY_DEADLINES[svc.role])
        assert (svc.role == "model") == (svc.loading is not None)
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= deadline
        if svc.role == names.NGINX:
            assert ports[c["readinessProbe"]["tcpSocket"]["port"]] in names.NGINX_PORTS.values()
            continue
        ready, live = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"]
        if svc.role == "model":
            model = next(m for m in stack.models if names.model_service(m.name) == svc.service)
            backend = BACKENDS[model.backend]
            assert (ports[ready["port"]], ready["path"]) == (backend.port, backend.health_path)
            assert live == ready
        elif svc.role == names.LITELLM:
            assert (ports[ready["port"]], ready["path"]) == (4000, "/health/readiness")
            assert live["path"] == "/health/liveliness"
        else:
            assert (ports[ready["port"]], ready["path"]) == (names.HEALTH_PORT, "/live")


# --- The container settings of `up` -------------------------------------------------------------

# Every ServiceSpec field is compared below, or listed with why not.
NOT_COMPARED = {
    "service": "names the Deployment, Service and container (compared)",
    "role": "the component label (compared)",
    "config": "the ConfigMap's data (test_configmaps_carry_the_rendered_files_byte_for_byte)",
    "ports": "published host ports: the edge Service's ports (test_the_edge_service)",
    "depends_on": "start order: Kubernetes starts all pods; readiness gates traffic",
    "start_after": "start order of `up`",
    "ready_check": "the check `up` polls (Ollama); the pod is probed on its own port",
    "loading": "how long `up` follows a model's load; the startup probe allows its ceiling",
    "secret_env": "which env values come from the Secret (compared with env)",
    "restart": "a Deployment always restarts its pods",
    "pids_limit": "Kubernetes has no per-pod process limit in the pod spec (the kubelet's "
                  "podPidsLimit is node-wide): docs/KUBERNETES.md",
    "probe": "test_probes_target_each_backends_own_endpoints",
    "mounts": "model volumes as claims, nginx's spool as an emptyDir (compared)",
    "update": "how `up` replaces a changed container; a Deployment's strategy is "
              "kube.strategy (test_strategy...)",
    "reloads_config": "`up` reloads nginx in place when only nginx.conf changed; a cluster "
                      "rolls the Deployment on its config-hash annotation",
    "reload_after": "which recreated services make `up` reload nginx (route: direct); a "
                    "cluster's Services keep their names and addresses",
}
COMPARED = {"image", "command", "entrypoint", "env", "gpus", "shm_size", "tmpfs", "resources",
            "user", "read_only", "cap_drop", "cap_add", "no_new_privileges", "init"}


def test_every_service_spec_field_is_compared_or_said_not_to_be() -> None:
    fields = {f.name for f in dataclasses.fields(plan.ServiceSpec)}
    assert fields == COMPARED | set(NOT_COMPARED)


def _env(container: dict[str, Any], secret: dict[str, bytes]) -> dict[str, str]:
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = e["value"]
        else:
            out[e["name"]] = secret[e["valueFrom"]["secretKeyRef"]["key"]].decode()
    return out


@pytest.mark.parametrize("case", CASES)
def test_each_container_gets_the_settings_up_gives_it(case: str) -> None:
    stack, services, export = _export(case)
    (secret,) = _by_kind(export, "Secret").values()
    secret_data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    for svc in own_pods(services):
        d = _deployment(export, stack.project, svc.service)
        pod = d["spec"]["template"]["spec"]
        c = _container(d)
        assert c["name"] == svc.service and c["image"] == svc.image
        assert d["spec"]["template"]["metadata"]["labels"][kube.L_COMPONENT] == svc.role
        assert c.get("command") == svc.entrypoint and c["args"] == svc.command
        env = _env(c, secret_data)
        assert env == svc.env  # hf: models too: the cache's path and HF_HUB_OFFLINE are in it
        for key in svc.secret_env:
            assert next(e for e in c["env"] if e["name"] == key)["valueFrom"]
        # Hardening: every container of the pod, init containers too.
        for sc in [i["securityContext"] for i in pod.get("initContainers", [])] + \
                [c["securityContext"]]:
            assert sc["allowPrivilegeEscalation"] is (not svc.no_new_privileges) is False
            assert sc["privileged"] is False
            assert sc["readOnlyRootFilesystem"] is svc.read_only
            assert sc["capabilities"]["drop"] == list(svc.cap_drop) == ["ALL"]
            assert sc["capabilities"].get("add", []) == list(svc.cap_add)
            if svc.user:
                uid, gid = svc.owner  # type: ignore[misc]
                assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (uid, gid, True)
            else:
                assert "runAsUser" not in sc and "runAsNonRoot" not in sc
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        if svc.user:
            assert pod["securityContext"]["fsGroup"] == svc.owner[1]  # type: ignore[index]
        assert pod["automountServiceAccountToken"] is False
        assert pod["shareProcessNamespace"] is svc.init is True
        # /tmp and /dev/shm: memory-backed, the sizes of up's tmpfs and shm_size.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        for path, options in svc.tmpfs.items():
            empty = volumes[mounts[path]["name"]]["emptyDir"]
            assert empty == {"medium": "Memory", "sizeLimit": kube.tmpfs_size(options)}
        if svc.shm_size:
            assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["sizeLimit"] == \
                kube.quantity(svc.shm_size)
        for m in svc.mounts:
            mounted = mounts[m.target]
            assert mounted.get("readOnly", False) is m.read_only
            source = volumes[mounted["name"]]
            # The engine host's shared hf: cache is the model's own claim in a cluster.
            claim = f"{stack.project}-{svc.service}-cache" if m.source == names.HF_CACHE_VOLUME \
                else m.source
            assert ("emptyDir" in source) if m.managed else \
                source["persistentVolumeClaim"]["claimName"] == claim
        # Memory and CPUs: stack.yaml's (or the model's estimate), requested as limited.
        res = c["resources"]
        if svc.resources.memory:
            assert res["limits"]["memory"] == res["requests"]["memory"] == \
                kube.quantity(svc.resources.memory)
        if svc.resources.cpus:
            assert res["limits"]["cpu"] == res["requests"]["cpu"] == \
                kube.cpu_quantity(svc.resources.cpus)
        else:
            assert "cpu" not in res.get("limits", {})
        assert res.get("limits", {}).get(kube.GPU_RESOURCE, 0) == len(svc.gpus)


def test_quantities() -> None:
    assert [kube.quantity(s) for s in ("256m", "4g", "512k", "1048576")] == \
        ["256Mi", "4Gi", "512Ki", "1048576"]
    assert kube.cpu_quantity(1.5) == "1500m" and kube.cpu_quantity(8) == "8000m"
    assert kube.tmpfs_size("rw,nosuid,nodev,size=16m") == "16Mi"
    assert kube.tmpfs_size("rw") is None


# --- Edge, network policy, namespace ------------------------------------------------------------


def test_the_edge_stops_gracefully_within_its_grace_period() -> None:
    """A replaced edge pod (key rotation) quits as `up`'s reload does: nginx -s quit, then in-
    flight streams get worker_shutdown_timeout before the kubelet may kill it."""
    stack, services, export = _export("demo")
    nginx = next(s for s in services if s.role == names.NGINX)
    d = _deployment(export, stack.project, names.NGINX)
    hook = _container(d)["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["sh", "-c"]
    assert f"nginx -c {nginx.config_mount}/nginx.conf -s quit" in hook[2]
    assert render.NGINX_PID_FILE in hook[2]
    grace = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > kube.NGINX_STOP_PAUSE + render.WORKER_SHUTDOWN_TIMEOUT
    # Only the edge has a hook.
    for svc in own_pods(services):
        if svc.role != names.NGINX:
            assert "lifecycle" not in _container(_deployment(export, stack.project, svc.service))


@pytest.mark.parametrize("service_type", kube.SERVICE_TYPES)
def test_the_edge_service(service_type: str) -> None:
    stack, _, export = _export("multigpu", service_type=service_type)
    services = _by_kind(export, "Service")
    edge = services.pop(names.container(stack.project, names.NGINX))
    assert edge["spec"]["type"] == service_type
    assert edge["spec"]["externalTrafficPolicy"] == "Local"  # client IPs for per-IP limits
    ports = {(p["port"], p["targetPort"]) for p in edge["spec"]["ports"]}
    # Only listeners bound beyond loopback are published: here https, not local (127.0.0.1).
    assert ports == {(443, "https")} == {(n.port, name) for name, n in stack.listeners
                                         if n.enabled and n.bind != "127.0.0.1"}
    assert {s["spec"]["type"] for s in services.values()} == {"ClusterIP"}
    assert not any(o["kind"] == "Ingress" for o in _objects(export))


def test_loopback_listeners_are_not_published() -> None:
    """The starter binds every listener to 127.0.0.1 (this host only): on a cluster nothing is
    published and the edge's policy opens no port; kubectl port-forward still reaches it."""
    stack, _, export = _export("demo")
    edge = names.container(stack.project, names.NGINX)
    assert edge not in _by_kind(export, "Service")
    assert _by_kind(export, "NetworkPolicy")[f"{stack.project}-edge"]["spec"]["ingress"] == []
    ports = {p["containerPort"] for p in _container(_by_kind(export, "Deployment")[edge])[
        "ports"]}
    assert ports == set(names.NGINX_PORTS.values())


@pytest.mark.parametrize("case", CASES)
def test_network_policy_only_the_edge_reaches_litellm_and_only_litellm_the_models(
        case: str) -> None:
    _, _, export = _export(case)
    policies = list(_by_kind(export, "NetworkPolicy").values())
    deployments = _by_kind(export, "Deployment").values()

    def pods(selector: dict[str, str]) -> set[str]:
        return {d["spec"]["template"]["metadata"]["labels"][kube.L_COMPONENT]
                for d in deployments
                if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()}

    deny = [p for p in policies if "ingress" not in p["spec"]]
    assert len(deny) == 1 and pods(deny[0]["spec"]["podSelector"]["matchLabels"]) == \
        {"model", names.LITELLM, names.NGINX, names.HEALTH}
    allowed: dict[str, set[str] | None] = {}
    for p in policies:
        if p is deny[0]:
            continue
        (target,) = pods(p["spec"]["podSelector"]["matchLabels"])
        if not p["spec"]["ingress"]:
            allowed[target] = set()  # nothing published (loopback listeners only)
            continue
        (rule,) = p["spec"]["ingress"]
        allowed[target] = None if "from" not in rule else \
            set().union(*(pods(f["podSelector"]["matchLabels"]) for f in rule["from"]))
        # The allowed ports are the target's container ports (the edge's published ones).
        ports = {pt["containerPort"] for d in deployments
                 if d["spec"]["template"]["metadata"]["labels"][kube.L_COMPONENT] == target
                 for pt in _container(d)["ports"]}
        if target == names.NGINX:
            ports = {names.NGINX_PORTS["https"]}
        assert {pt["port"] for pt in rule["ports"]} == ports
    edge = None if case == "multigpu" else set()  # multigpu publishes https to everyone
    assert allowed == {names.NGINX: edge, names.HEALTH: {names.NGINX},
                       names.LITELLM: {names.NGINX, names.HEALTH},
                       "model": {names.LITELLM, names.HEALTH}}


def test_route_direct_lets_the_edge_reach_those_models_and_no_other() -> None:
    stack = spec.load_file(GOLDEN / "direct" / "stack.yaml")
    services = plan.desired(stack, render.render(stack), INTERNAL)
    export = kube.manifests(stack, services, _secret_files(secrets.Keys(MASTER, INTERNAL)),
                            kube.Options(namespace=stack.project))
    deployments = _by_kind(export, "Deployment").values()

    def admitted(source: str) -> set[str]:
        """Names of the model pods some policy opens to pods of component `source`."""
        out: set[str] = set()
        for p in _by_kind(export, "NetworkPolicy").values():
            for rule in p["spec"].get("ingress", []):
                sources = {f["podSelector"]["matchLabels"][kube.L_COMPONENT]
                           for f in rule.get("from", [])}
                if source in sources:
                    selector = p["spec"]["podSelector"]["matchLabels"].items()
                    out |= {d["spec"]["template"]["metadata"]["labels"][kube.L_NAME]
                            for d in deployments
                            if selector <= d["spec"]["template"]["metadata"]["labels"].items()
                            and d["spec"]["template"]["metadata"]["labels"][kube.L_COMPONENT]
                            == "model"}
        return out

    direct = {names.model_service(m.name) for m in stack.models if m.route == "direct"}
    assert direct and len(direct) < len(stack.models)
    assert admitted(names.NGINX) == direct
    assert admitted(names.LITELLM) == {names.model_service(m.name) for m in stack.models}
    for obj in _objects(export):
        kubernetes_validate.validate(obj, kube.NEWEST_K8S, strict=True)


def test_pod_security_level_is_the_strictest_the_images_allow() -> None:
    for case, level in (("demo", "restricted"), ("gpu", "baseline")):
        ns = next(o for o in _objects(_export(case)[2]) if o["kind"] == "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == level


@pytest.mark.parametrize("case", CASES)
def test_recommended_labels(case: str) -> None:
    stack, _, export = _export(case)
    for obj in _objects(export):
        lab = obj["metadata"]["labels"]
        assert lab[kube.L_MANAGED_BY] == "llmstack" and lab[kube.L_PART_OF] == "llmstack"
        if obj["kind"] != "Namespace":
            assert lab[kube.L_INSTANCE] == stack.project


# --- Model weights ------------------------------------------------------------------------------


def test_hf_models_fill_a_cache_claim_in_an_init_container_and_serve_it_offline() -> None:
    stack, _, export = _export("gpu", storage_class="fast-ssd", cache_size="300Gi")
    d = _deployment(export, stack.project, "model-deepseek-coder")
    pod = d["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["name"] == "fetch-model" and init["image"] == _container(d)["image"]
    assert "deepseek-ai/deepseek-coder-6.7b-instruct" in init["command"]
    token = next(e for e in init["env"] if e["name"] == kube.HF_TOKEN)
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    claim = _by_kind(export, "PersistentVolumeClaim")[cache["persistentVolumeClaim"]["claimName"]]
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert claim["spec"]["resources"]["requests"]["storage"] == "300Gi"
    served = next(m for m in _container(d)["volumeMounts"] if m["name"] == "model-cache")
    assert served["readOnly"] is True
    assert next(m for m in init["volumeMounts"] if m["name"] == "model-cache").get(
        "readOnly") is not True
    env = {e["name"]: e.get("value") for e in _container(d)["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == served["mountPath"] + "/hub"
    # The init container fetches the revision the server's path names, into that path.
    model_path = _container(d)["args"][1]
    assert model_path == "/hf/hub/models--deepseek-ai--deepseek-coder-6.7b-instruct/snapshots/main"
    assert init["command"][-4:] == ["deepseek-ai/deepseek-coder-6.7b-instruct", "", "main",
                                    model_path]
    assert kube.HF_TOKEN not in env  # the token reaches the fetch only


def test_volume_sources_are_claims_of_that_name_checked_before_the_server_starts() -> None:
    stack, _, export = _export("demo")
    claims = _by_kind(export, "PersistentVolumeClaim")
    assert list(claims) == ["llmstack-models"]  # both models share the demo volume
    d = _deployment(export, stack.project, "model-deepseek-coder")
    (init,) = d["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "check-model"
    assert "/models/SmolLM2-135M-Instruct.Q4_1.gguf" in init["command"]
    assert d["spec"]["strategy"]["type"] == "Recreate"  # a ReadWriteOnce claim


def test_ollama_tags_are_pulled_by_an_init_container() -> None:
    stack, _, export = _export("multigpu")
    pod = _deployment(export, stack.project, "model-nomic-embed")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["name"] == "pull-model" and init["command"][-1] == "nomic-embed-text"
    assert "ollama pull" in init["command"][2]


def test_a_host_source_is_refused_with_the_field_and_the_fix() -> None:
    stack = spec.load_file(GOLDEN / "custom" / "stack.yaml")
    services = plan.desired(stack, render.render(stack), INTERNAL)
    with pytest.raises(SpecError) as err:
        kube.manifests(stack, services, {}, kube.Options("custom-1", secret_ref="s"))
    assert "models[0].source" in err.value.message and "volume:NAME/FILE" in err.value.message


def test_a_name_too_long_for_a_kubernetes_service_is_refused() -> None:
    text = STACKS["demo"].read_text().replace("project: llmstack", "project: " + "p" * 30)
    text = text.replace("name: smollm2-embed", "name: " + "e" * 40)
    stack = spec.parse(text)
    services = plan.desired(stack, render.render(stack), INTERNAL)
    with pytest.raises(SpecError) as err:
        kube.manifests(stack, services, {}, kube.Options("x", secret_ref="s"))
    assert "models[1].name" in err.value.message


@pytest.mark.parametrize("options, word", [
    ({"service_type": "ClusterIP"}, "--service-type"), ({"namespace": "Bad_NS"}, "--namespace"),
    ({"storage_class": "A B"}, "--storage-class"), ({"cache_size": "100GB"}, "--cache-size"),
    ({"secret_ref": "-x"}, "--secret-ref")])
def test_bad_options_are_refused_naming_the_flag(options: dict[str, str], word: str) -> None:
    with pytest.raises(UserError, match=word):
        _export("demo", **options)


# --- The command --------------------------------------------------------------------------------


def test_export_k8s_command_writes_the_folder(tmp_path: Path) -> None:
    assert cli("init", str(tmp_path / "p")).returncode == 0
    project = tmp_path / "p"
    with (project / ".env").open("a") as env:
        env.write(f"HF_TOKEN={HF_TOKEN_VALUE}\n")
    proc = cli("export", "k8s", "-C", str(project), "--namespace", "llm", "--json")
    assert proc.returncode == 0, proc.stderr
    out = project / "k8s"
    assert (out / kube.KUSTOMIZATION).is_file()
    assert stat.S_IMODE((out / kube.SECRET_FILE).stat().st_mode) == 0o600
    key = secrets.load_keys(project / ".env").master
    for path in out.iterdir():
        if path.name != kube.SECRET_FILE:
            assert key not in path.read_text() and HF_TOKEN_VALUE not in path.read_text()
    (secret,) = yaml.safe_load_all((out / kube.SECRET_FILE).read_text())
    assert base64.b64decode(secret["data"][kube.HF_TOKEN]).decode() == HF_TOKEN_VALUE
    assert key.encode() in base64.b64decode(secret["data"]["keys.conf"])
    docs = [o for p in out.glob("*.yaml") if p.name != kube.KUSTOMIZATION
            for o in yaml.safe_load_all(p.read_text())]
    assert {o["metadata"].get("namespace", "llm") for o in docs} == {"llm"}
    # A file of an earlier export that stack.yaml no longer needs is removed; others stay.
    (out / "model-gone.yaml").write_text(kube.GENERATED + " from stack.yaml\n")
    (out / "mine.yaml").write_text("kind: ConfigMap\n")
    proc = cli("export", "k8s", "-C", str(project), "-o", str(out))
    assert proc.returncode == 0 and "removed model-gone.yaml" in proc.stdout
    assert (out / "mine.yaml").exists()
    refused = cli("export", "k8s", "-C", str(project), "-o", str(project))
    assert refused.returncode == 1 and "project folder" in refused.stderr


@pytest.mark.parametrize(("source", "sidecar"), [("auto", False), ("local", True)])
def test_the_export_runs_nginxs_counts_only_with_an_image_the_nodes_can_have(
        tmp_path: Path, source: str, sidecar: bool) -> None:
    """`images: auto` exports the upstream images (nodes pull from registries), and no
    registry has an mtail image: no sidecar, and nginx.conf sends no lines to it."""
    project = tmp_path / "p"
    assert cli("init", str(project)).returncode == 0
    data = yaml.safe_load((project / "stack.yaml").read_text())
    data["images"] = source
    (project / "stack.yaml").write_text(yaml.safe_dump(data))
    out = tmp_path / "k8s"
    proc = cli("export", "k8s", "-C", str(project), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    docs = [o for o in yaml.safe_load_all((out / "nginx.yaml").read_text()) if o]
    (edge,) = [o for o in docs if o["kind"] == "Deployment"]
    containers = {c["name"] for c in edge["spec"]["template"]["spec"]["containers"]}
    assert containers == ({names.NGINX, names.EDGE_METRICS} if sidecar else {names.NGINX})
    (config,) = [o for o in docs if o["kind"] == "ConfigMap"]
    assert ("llmstack_metrics" in config["data"]["nginx.conf"]) is sidecar
    assert (out / "edge-metrics.yaml").exists() is sidecar


def test_edge_metrics_runs_beside_nginx_in_its_pod_sharing_only_the_log_socket() -> None:
    _, services, export = _export("demo")
    (edge,) = [d for d in _by_kind(export, "Deployment").values()
               if d["metadata"]["labels"][kube.L_COMPONENT] == names.NGINX]
    pod = edge["spec"]["template"]["spec"]
    nginx, side = pod["containers"]
    assert side["name"] == names.EDGE_METRICS and side["image"] == images.MTAIL.tag
    socket_volume = {m["name"] for m in side["volumeMounts"]} & \
        {m["name"] for m in nginx["volumeMounts"]}
    assert socket_volume == {"edge-log"}
    assert {"name": "edge-log", "emptyDir": {}} in pod["volumes"]
    assert len({v["name"] for v in pod["volumes"]}) == len(pod["volumes"])
    assert side["securityContext"]["readOnlyRootFilesystem"] is True
    # Not published: no Service for it, and its ConfigMap is its only object.
    assert all(s["metadata"]["name"] != f"{edge['metadata']['name'].rsplit('-', 1)[0]}"
               f"-{names.EDGE_METRICS}" for s in _by_kind(export, "Service").values())
    assert [o["kind"] for o in export.objects[f"{names.EDGE_METRICS}.yaml"]] == ["ConfigMap"]
    # A changed mtail program rolls the edge pod.
    hashes = edge["spec"]["template"]["metadata"]["annotations"][kube.CONFIG_HASH_ANNOTATION]
    by = {s.service: s for s in services}
    assert hashes == f"{by[names.NGINX].config_hash()}-{by[names.EDGE_METRICS].config_hash()}"


def test_the_stacks_own_prometheus_stays_out_of_a_cluster() -> None:
    stack = _stack("demo")
    on = spec.StackSpec.model_validate({**stack.model_dump(by_alias=True, exclude_none=True),
                                        "observability": {"prometheus": True}})
    services = plan.desired(on, render.render(on), INTERNAL)
    assert names.PROMETHEUS in {s.service for s in services}
    export = kube.manifests(on, services, _secret_files(secrets.Keys(MASTER, INTERNAL)),
                            kube.Options(namespace=on.project))
    assert f"{names.PROMETHEUS}.yaml" not in export.files
    assert not any(names.PROMETHEUS in o["metadata"]["name"] for o in _objects(export))
