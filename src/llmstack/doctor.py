"""`llmstack doctor`: preflight of the target host and the project, one finding per check.

`gather` reads the facts through the engine (engine/host.py); `evaluate_*` turn facts into
findings (checks.Finding) without I/O, so they are unit-tested from fake engine answers. A
finding that fails names who must act: scope "config" (stack.yaml, .env, certs/: exit 1) or
"host" (the engine, its GPUs, disk or images: exit 2); `checks.exit_code` is the rule (2 wins).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import cudacompat, hfcache, lock, names, tls
from . import gpu as gpumod
from .checks import DISK_RESERVE_BYTES, GIB, Finding, exit_code, parse_df
from .errors import LlmstackError

if TYPE_CHECKING:
    from .engine.api import Engine
    from .engine.host import EngineFacts, GpuProbe, HostSnapshot, SourceStat
    from .lock import Locked
    from .modelarch import Architecture
    from .project import Loaded
    from .spec import ModelSpec, StackSpec

MIN_API = (1, 40)  # device requests (GPUs) need Engine 19.03 / API 1.40
SKEW_WARN_S = 60.0
# Certificates are valid from 5 minutes before they were made (tls.py): a host clock further
# behind than that sees a "not yet valid" certificate.
SKEW_FAIL_S = 300.0
DISK_WARN_BYTES = 10 * GIB
ENV_GPU_IMAGE = "LLMSTACK_GPU_PROBE_IMAGE"


@dataclass
class Facts:
    """What the engine answered; None where a probe could not run."""

    target: str
    engine: EngineFacts | None = None
    engine_error: str = ""
    engine_hint: str = ""
    gpu: GpuProbe | None = None
    snapshot: HostSnapshot | None = None
    published: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, bool] = field(default_factory=dict)
    image_source: str = ""  # pull.Choice.line: which images and why
    sources: dict[str, SourceStat] = field(default_factory=dict)  # by model name
    services: dict[str, str] = field(default_factory=dict)  # this project's {service: state}
    # {model name: its attention shape} from its config.json or GGUF header on the target
    architectures: dict[str, Architecture] = field(default_factory=dict)
    image_env: dict[str, list[str]] = field(default_factory=dict)  # GPU models' images' Env
    toolkit_config: bytes | None = None  # the NVIDIA toolkit's config.toml (rootless engines)
    pins: dict[str, Locked] = field(default_factory=dict)  # stack.lock: {hf: source: pin}


@dataclass
class Report:
    target: str
    findings: list[Finding]
    engine: dict[str, Any] | None = None
    gpus: list[dict[str, Any]] | None = None
    gpu_budget: dict[str, Any] | None = None
    budget_lines: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return int(exit_code(self.findings))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.exit_code == 0, "exit_code": self.exit_code, "target": self.target,
                "engine": self.engine, "gpus": self.gpus, "gpu_budget": self.gpu_budget,
                "findings": [f.to_dict() for f in self.findings]}


# --- Local files (this machine) -----------------------------------------------------------------


def local_findings(root: Path, spec: StackSpec | None, now: dt.datetime | None = None,
                   env: Path | None = None, certs: Path | None = None) -> list[Finding]:
    """.env and key file permissions, the certificate: files on the deploying machine (a
    host of the inventory: its own certificate, and its .env with `key: host`)."""
    from . import secrets

    out: list[Finding] = []
    env = env or root / ".env"
    certs = certs or root / "certs"
    try:
        secrets.load_keys(env)
        out.append(Finding("env", "ok", f"{env}: keys present, mode 0600", scope="config"))
    except LlmstackError as exc:
        out.append(Finding("env", "fail", exc.message, exc.hint, scope="config"))
    out += key_file_findings(certs)
    try:
        cert = tls.inspect(certs, now)
        detail = (f"valid until {cert.not_after:%Y-%m-%d} ({cert.days_left} days), names: "
                  + ", ".join(cert.names))
        if cert.days_left < 0:
            out.append(Finding("certificate", "fail", "expired: " + detail,
                               "llmstack init --force (backs up the old one), then llmstack up",
                               scope="config"))
        elif cert.expiring:
            out.append(Finding("certificate", "warn", "expires soon: " + detail,
                               "llmstack init --force, then llmstack up", scope="config"))
        elif spec is not None and spec.domain not in cert.names:
            out.append(Finding("certificate", "fail", f"does not name domain {spec.domain}: "
                               + detail, "llmstack init --force --domain " + spec.domain,
                               scope="config"))
        else:
            out.append(Finding("certificate", "ok", detail, scope="config"))
    except LlmstackError as exc:
        out.append(Finding("certificate", "fail", exc.message, exc.hint, scope="config"))
    return out


def key_file_findings(certs: Path) -> list[Finding]:
    """Every private key in certs/ must be 0600, like .env (`up` refuses it otherwise)."""
    from . import secrets

    out: list[Finding] = []
    keys = tls.private_files(certs)
    for path in keys:
        try:
            secrets.check_private(path)
        except LlmstackError as exc:
            out.append(Finding("key-file", "fail", exc.message, exc.hint, scope="config"))
    legacy = certs / tls.LEGACY_CA_KEY
    if legacy.exists():
        # Made by an earlier llmstack: a CA key on disk, for a CA without name constraints.
        out.append(Finding("key-file", "warn", f"{legacy}: the local CA's signing key, which "
                           "llmstack no longer keeps; whoever reads it can sign for any name "
                           "a client trusting ca.crt accepts",
                           "llmstack init --force (a new CA limited to the stack's names, its "
                           "key not kept), then give clients the new ca.crt", scope="config"))
    if keys and not out:
        out.append(Finding("key-file", "ok", f"{', '.join(p.name for p in keys)} in {certs}: "
                           "mode 0600", scope="config"))
    return out


# --- Engine facts -> findings (pure) --------------------------------------------------------------


def evaluate_engine(facts: Facts) -> list[Finding]:
    if facts.engine is None:
        return [Finding("engine", "fail", facts.engine_error or "engine not reachable",
                        facts.engine_hint or "start Docker or fix --host / DOCKER_HOST")]
    e = facts.engine
    detail = (f"Docker Engine {e.version} (API {e.api_version}) on {e.operating_system} "
              f"{e.arch}, {e.ncpu} CPUs, {e.mem_bytes / GIB:.1f} GiB memory, data root "
              f"{e.root_dir}")
    out = []
    try:
        api = tuple(int(p) for p in e.api_version.split(".")[:2])
    except ValueError:
        api = (0, 0)
    if api < MIN_API:
        out.append(Finding("engine", "warn", detail + "; too old for GPU device requests",
                           "upgrade to Docker Engine 19.03 or later"))
    else:
        out.append(Finding("engine", "ok", detail))
    if e.skew_s is None:
        out.append(Finding("clock", "warn", "the engine did not report its time",
                           "check `date` on the host"))
    else:
        skew = e.skew_s
        detail = f"engine clock is {abs(skew):.1f}s {'ahead of' if skew >= 0 else 'behind'} " \
                 "this machine"
        fix = "enable NTP on both machines (timedatectl set-ntp true)"
        if abs(skew) >= SKEW_FAIL_S:
            out.append(Finding("clock", "fail", detail + "; certificates made here may be "
                               "'not yet valid' there and logs will not line up", fix))
        elif abs(skew) >= SKEW_WARN_S:
            out.append(Finding("clock", "warn", detail, fix))
        else:
            out.append(Finding("clock", "ok", detail))
    return out


def evaluate_gpus(spec: StackSpec | None, facts: Facts) -> tuple[list[Finding],
                                                                   gpumod.GpuReport | None]:
    probe = facts.gpu
    needed = spec is not None and gpumod.needs_gpus(spec)
    if probe is None:
        return [], None
    bad = "fail" if needed else "warn"
    if spec is None:
        why = "no stack.yaml"
    elif needed:
        why = "stack.yaml gives GPUs to " + ", ".join(m.name for m in spec.models if m.gpu_ids)
    else:
        why = "no model in stack.yaml needs a GPU"
    if probe.status == "no-runtime":
        return [Finding("gpu-runtime", bad, f"no GPU runtime on the engine ({why}): "
                        f"{probe.detail}", "install the NVIDIA driver and the NVIDIA container "
                        "toolkit on the host (nvidia-ctk runtime configure --runtime=docker), "
                        "then restart Docker")], None
    if probe.status == "no-image":
        return [Finding("gpu-runtime", bad, f"GPUs not checked ({why}): {probe.detail}",
                        f"pull a CUDA/glibc image on the host or set {ENV_GPU_IMAGE}")], None
    if probe.status == "error":
        return [Finding("gpu-runtime", bad, f"GPU runtime present but nvidia-smi failed "
                        f"({why}): {probe.detail}", "check the driver on the host: nvidia-smi; "
                        "reboot after a driver update")], None
    gpus = probe.gpus
    out = cudacompat.cuda_findings(facts.image_env, probe.nvidia_smi) if needed else []
    if needed and facts.engine is not None:
        e = facts.engine
        out += cudacompat.host_findings(list(e.security_options), e.cgroup_version,
                                        e.cgroup_driver, facts.toolkit_config)
    out += [Finding("gpu-runtime", "ok" if gpus else bad,
                   f"{len(gpus)} GPU(s) visible to containers (nvidia-smi in {probe.image})",
                   "" if gpus else "check nvidia-smi on the host")]
    if gpus:
        out.append(Finding("gpus", "ok", "; ".join(
            f"{g.index}: {g.name} {g.uuid}, {_gib(g.memory_free_mib)} free of "
            f"{_gib(g.memory_total_mib)}" for g in gpus)))
    if not needed or spec is None:
        return out, None
    sizes = {name: s.size for name, s in facts.sources.items()
             if s.exists and not s.is_dir and s.size}
    running = {m.name for m in spec.models
               if facts.services.get(names.model_service(m.name)) == "running"}
    report = gpumod.check(spec, gpus, sizes, running, facts.architectures)
    out += report.findings
    if not any(f.status != "ok" for f in report.findings):
        out.append(Finding("gpu-memory", "ok", "every GPU model fits: " + "; ".join(
            f"GPU {b.gpu.index} {_gib(b.free_after_mib)} left" for b in report.budgets
            if b.claims), scope="config"))
    return out, report


def _gib(mib: float | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.1f} GiB"


def parse_proc_net(text: str) -> set[tuple[str, int]]:
    """(address, port) of every LISTEN socket in /proc/net/tcp and tcp6 content."""
    out: set[tuple[str, int]] = set()
    for line in text.splitlines():
        cells = line.split()
        if len(cells) < 4 or cells[3] != "0A" or ":" not in cells[1]:
            continue
        addr_hex, port_hex = cells[1].rsplit(":", 1)
        try:
            raw = bytes.fromhex(addr_hex)
            port = int(port_hex, 16)
        except ValueError:
            continue
        # The kernel prints each 32-bit word in host (little-endian) order.
        words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
        if len(words) not in (4, 16):
            continue
        addr = ipaddress.ip_address(words)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        out.add((str(addr), port))
    return out


def _overlaps(a: str, b: str) -> bool:
    wild = ("0.0.0.0", "::")
    return a == b or a in wild or b in wild


def evaluate_ports(spec: StackSpec, facts: Facts) -> list[Finding]:
    out = []
    listening = parse_proc_net(facts.snapshot.net) if facts.snapshot else None
    ours = {p["port"] for p in facts.published if p.get("project") == spec.project}
    for lname, lst in spec.listeners:
        if not lst.enabled:
            continue
        where = f"listeners.{lname} {lst.bind}:{lst.port}"
        fix = f"free port {lst.port} on the host or change listeners.{lname}.port in stack.yaml"
        if lst.port in ours:
            out.append(Finding("ports", "ok", f"{where}: published by this stack's nginx",
                               scope="config"))
            continue
        other = next((p for p in facts.published if p["port"] == lst.port
                      and _overlaps(p.get("ip") or "0.0.0.0", lst.bind)), None)
        if other:
            out.append(Finding("ports", "fail", f"{where}: already published by container "
                               f"{other['container']}", fix, scope="config"))
        elif listening is None:
            out.append(Finding("ports", "warn", f"{where}: not checked (no image to look at "
                               "the host's sockets)", "run `llmstack images build`",
                               scope="config"))
        elif any(port == lst.port and _overlaps(addr, lst.bind) for addr, port in listening):
            out.append(Finding("ports", "fail", f"{where}: a process on the host listens "
                               "there", fix, scope="config"))
        else:
            out.append(Finding("ports", "ok", f"{where}: free", scope="config"))
    return out


def evaluate_disk(spec: StackSpec | None, facts: Facts) -> list[Finding]:
    if facts.snapshot is None:
        return [Finding("disk", "warn", "not checked: no image on the engine to run df in",
                        "run `llmstack images build` (or pull the stack's images)")]
    parsed = parse_df(facts.snapshot.df)
    if parsed is None:
        return [Finding("disk", "warn", "df printed nothing readable: "
                        + " ".join(facts.snapshot.df.split())[:200], "check df on the host")]
    total, free = parsed
    root = facts.engine.root_dir if facts.engine else "the data root"
    downloads = 0.0
    for m in spec.models if spec else []:
        running = facts.services.get(names.model_service(m.name)) == "running"
        pin = facts.pins.get(m.source)
        if pin is not None:  # its real size, unless it is in the cache already
            stat = facts.sources.get(m.name)
            downloads += 0 if stat is not None and stat.exists else pin.size
        elif m.parsed_source.kind in ("hf", "ollama") and not running:
            est = gpumod.estimate(m)
            downloads += (est.weights_mib or 0) * 1024 * 1024
    detail = f"{free / GIB:.1f} GiB free of {total / GIB:.1f} GiB on {root}"
    if downloads:
        detail += f"; model downloads need ~{downloads / GIB:.1f} GiB"
    fix = "free space on the host (docker image prune, old models) or grow the disk"
    if free < downloads + DISK_RESERVE_BYTES:
        return [Finding("disk", "fail", detail, fix)]
    if free < downloads + DISK_WARN_BYTES:
        return [Finding("disk", "warn", detail, fix)]
    return [Finding("disk", "ok", detail)]


def evaluate_images(facts: Facts) -> list[Finding]:
    from .images import missing_fix

    missing = [t for t, ok in facts.images.items() if not ok]
    why = f" ({facts.image_source})" if facts.image_source else ""
    if not missing:
        return [Finding("images", "ok", "present: " + ", ".join(facts.images) + why)]
    return [Finding("images", "fail", "missing on the engine: " + ", ".join(missing) + why,
                    missing_fix(missing))]


def hf_finding(model: ModelSpec, check: str, facts: Facts) -> Finding:
    """An hf: source: pinned or not, in the engine's cache or not, and its download size."""
    from .fetch import human

    pin = facts.pins.get(model.source)
    if pin is None:
        return Finding(check, "ok", f"{model.source}: `up` fetches it into the {hfcache.VOLUME} "
                       "volume on the engine's host and pins it in the lock file (size known "
                       "then; needs network there)", scope="config")
    pinned = f"{model.source}: pinned at commit {pin.commit[:12]}, {human(pin.size)}"
    stat = facts.sources.get(model.name)
    if stat is None:
        return Finding(check, "ok", f"{pinned}; not looked for (no image to look with)",
                       scope="config")
    if stat.exists:
        return Finding(check, "ok", f"{pinned}, in the {hfcache.VOLUME} volume", scope="config")
    return Finding(check, "ok", f"{pinned}, not on this host yet: `up` downloads "
                   f"{human(pin.size)} (needs network there)", scope="config")


def evaluate_models(spec: StackSpec, facts: Facts) -> list[Finding]:
    out = []
    for m in spec.models:
        src = m.parsed_source
        check = f"model:{m.name}"
        if src.kind == "hf":
            out.append(hf_finding(m, check, facts))
            continue
        if src.kind == "ollama":
            out.append(Finding(check, "ok", f"{m.source}: downloaded on the host when the "
                               "model starts (needs network there)", scope="config"))
            continue
        stat = facts.sources.get(m.name)
        where = f"volume {src.location!r}" if src.kind == "volume" else "the host"
        if stat is None:
            out.append(Finding(check, "warn", f"{m.source}: not checked (no image to look "
                               "with)", "run `llmstack images build`", scope="config"))
        elif not stat.exists:
            fix = ("run `llmstack images build` (fills llmstack-models with the demo model)"
                   if src.location == "llmstack-models" else
                   f"copy the weights into {where} or fix source: in stack.yaml")
            out.append(Finding(check, "fail", f"{m.source}: {src.path or '(volume)'} not found "
                               f"in {where}", fix, scope="config"))
        else:
            size = f"{stat.size / 1024**2:.0f} MiB" if stat.size and not stat.is_dir else \
                "a folder"
            out.append(Finding(check, "ok", f"{m.source}: present ({size})", scope="config"))
    return out


def evaluate(spec: StackSpec | None, facts: Facts) -> tuple[list[Finding],
                                                            gpumod.GpuReport | None]:
    findings = evaluate_engine(facts)
    if facts.engine is None:
        return findings, None
    gpu_findings, report = evaluate_gpus(spec, facts)
    findings += gpu_findings
    findings += evaluate_disk(spec, facts)
    if spec is not None:
        findings += evaluate_ports(spec, facts)
        findings += evaluate_images(facts)
        findings += evaluate_models(spec, facts)
    return findings, report


# --- Gathering (I/O through the engine) -------------------------------------------------------


def stack_images(spec: StackSpec) -> list[str]:
    from .pull import stack_refs

    return stack_refs(spec, spec.images.effective_source)


def probe_images(spec: StackSpec | None, gpu_image: str | None = None) -> list[str]:
    """Images to run nvidia-smi in, best first: the one asked for, GPU models' images (CUDA
    images), then any image of the stack (the toolkit mounts nvidia-smi into any glibc image)."""
    from .images import SERVICE_IMAGES

    keys = ("llamacpp-cuda", "llamacpp", "nginx", "litellm")
    out = [i for i in (gpu_image, os.environ.get(ENV_GPU_IMAGE)) if i]
    if spec is not None:
        out += [spec.image_for(m) for m in spec.models if m.gpu_ids]
        out += [spec.images.for_key(key) for key in keys]
    # Then any catalog image, local build or upstream, that may already be on the engine.
    for key in keys:
        entry = SERVICE_IMAGES[key]
        out += [ref for ref in (entry.local, entry.registry) if ref]
    return list(dict.fromkeys(out))


def gather(engine: Engine, target: str, spec: StackSpec | None, gpu_image: str | None = None,
           pins: dict[str, Locked] | None = None) -> Facts:
    from .engine.host import SourceStat as Stat
    from .pull import choose

    facts = Facts(target=target, pins=dict(pins or {}))
    facts.engine = engine.engine_facts()
    if spec is not None:
        # The images `up` would use here (`images: auto` decided; the registry is only asked
        # when neither the upstream nor the local images are all present).
        choice = choose(spec, engine)
        spec, facts.image_source = choice.spec, choice.line
    facts.gpu = engine.query_gpus(probe_images(spec, gpu_image))
    if spec is not None and gpumod.needs_gpus(spec):
        gather_gpu_host(engine, spec, facts)
    # Any image present can run df and cat; the stack's own are the likely ones.
    helpers = list(dict.fromkeys([*(stack_images(spec) if spec else []), *probe_images(spec)]))
    facts.snapshot = engine.host_snapshot(helpers)
    facts.published = engine.published_ports()
    if spec is None:
        return facts
    facts.images = engine.present_images(stack_images(spec))
    facts.services = engine.running_services()
    helper = facts.snapshot.image if facts.snapshot else None
    for m in spec.models:
        src = m.parsed_source
        if src.kind in ("volume", "host") and helper:
            facts.sources[m.name] = engine.stat_source(helper, src.kind, src.location, src.path)
            arch = read_architecture(engine, helper, m, facts.sources[m.name]) \
                if m.gpu_ids else None
            if arch is not None:
                facts.architectures[m.name] = arch
        pin = facts.pins.get(m.source)
        if pin is not None and helper:  # the fetch's completion marker in the cache volume
            seen = engine.stat_source(helper, "volume", hfcache.VOLUME,
                                      hfcache.marker(pin.repo, pin.commit, pin.file))
            # The weights' size is the lock's (the GPU estimate reads a single file's size).
            facts.sources[m.name] = Stat(seen.exists, pin.size if pin.file else None)
    return facts


def run(root: Path, loaded: Loaded | None, spec_error: LlmstackError | None,
        host_arg: str | None, gpu_image: str | None = None) -> Report:
    """Every check; never raises for a problem it can report as a finding."""
    from .engine.client import describe_target
    from .engine.containers import open_project

    spec = loaded.spec if loaded else None
    findings: list[Finding] = []
    if spec_error is not None:
        findings.append(Finding("stack", "fail", spec_error.message, spec_error.hint,
                                scope="config"))
    elif spec is None:
        findings.append(Finding("stack", "warn", f"no stack.yaml in {root}: checked the host "
                                "only", "llmstack init", scope="config"))
    else:
        findings.append(Finding("stack", "ok", f"{loaded.paths.stack if loaded else ''}: "
                                f"valid, project {spec.project}, {len(spec.models)} models",
                                scope="config"))
    if spec is not None:
        findings += local_findings(root, spec, env=loaded.paths.env if loaded else None,
                                   certs=loaded.paths.certs if loaded else None)
    pins: dict[str, Locked] = {}
    if loaded is not None:
        try:
            pins = lock.read(loaded.paths.lock)
        except LlmstackError as exc:
            findings.append(Finding("lock", "fail", exc.message, exc.hint, scope="config"))
    target = describe_target(host_arg)
    try:
        engine = open_project(host_arg, spec.project if spec else "llmstack")
    except LlmstackError as exc:
        facts = Facts(target=target, engine_error=exc.message, engine_hint=exc.hint)
        findings += evaluate(spec, facts)[0]
        return Report(target, findings)
    try:
        facts = gather(engine, target, spec, gpu_image, pins)
    finally:
        engine.close()
    engine_findings, report = evaluate(spec, facts)
    findings += engine_findings
    gpus = [g.to_dict() for g in facts.gpu.gpus] if facts.gpu else None
    return Report(target, findings, engine=facts.engine.to_dict() if facts.engine else None,
                  gpus=gpus, gpu_budget=report.to_dict() if report else None,
                  budget_lines=gpumod.budget_lines(report) if report else [])


def gpu_plan(engine: Engine, spec: StackSpec, gpu_image: str | None = None
             ) -> tuple[list[Finding], gpumod.GpuReport | None]:
    """The GPU part of doctor for `plan`: the host's GPUs against stack.yaml (only when a
    model has GPUs; ([], None) otherwise)."""
    facts = gather_gpus(engine, spec, gpu_image)
    return evaluate_gpus(spec, facts) if facts else ([], None)


def gather_gpus(engine: Engine, spec: StackSpec, gpu_image: str | None = None
                ) -> Facts | None:
    """The facts `evaluate_gpus` needs, for `plan` and `up`; None when no model has GPUs."""
    if not gpumod.needs_gpus(spec):
        return None
    facts = Facts(target="")
    facts.gpu = engine.query_gpus(probe_images(spec, gpu_image))
    facts.engine = engine.engine_facts()
    gather_gpu_host(engine, spec, facts)
    facts.services = engine.running_services()
    present = engine.present_images(stack_images(spec))
    helper = next((t for t, ok in present.items() if ok), None)
    for m in spec.models:
        src = m.parsed_source
        if m.gpu_ids and src.kind in ("volume", "host") and helper:
            facts.sources[m.name] = engine.stat_source(helper, src.kind, src.location, src.path)
            arch = read_architecture(engine, helper, m, facts.sources[m.name])
            if arch is not None:
                facts.architectures[m.name] = arch
    return facts


def gather_gpu_host(engine: Engine, spec: StackSpec, facts: Facts) -> None:
    """The GPU models' images' Env (their NVIDIA_REQUIRE_CUDA) and, on a rootless engine,
    the NVIDIA toolkit's config.toml (read in a present image with /etc/... mounted)."""
    facts.image_env = engine.image_env([spec.image_for(m) for m in spec.models if m.gpu_ids])
    facts.engine = facts.engine or engine.engine_facts()
    if any("name=rootless" in o for o in facts.engine.security_options):
        helper = next(iter(facts.image_env), None) or (facts.gpu.image if facts.gpu else None)
        if helper:
            facts.toolkit_config = engine.read_source(helper, "host", "",
                                                      cudacompat.TOOLKIT_CONFIG, 65536)


def read_architecture(engine: Engine, helper: str, model: ModelSpec, stat: SourceStat
                      ) -> Architecture | None:
    """The model's attention shape from its config.json (a directory source) or its GGUF
    header (a .gguf file), read on the target; None when neither can be read."""
    from .modelarch import GGUF_HEAD_BYTES, ArchitectureError, from_config, from_gguf

    src = model.parsed_source
    if not stat.exists:
        return None
    if stat.is_dir:
        path, limit, parse = f"{src.path.rstrip('/')}/config.json", 1024 * 1024, from_config
    elif src.path.lower().endswith(".gguf"):
        path, limit, parse = src.path, GGUF_HEAD_BYTES, from_gguf
    else:
        return None
    data = engine.read_source(helper, src.kind, src.location, path, limit)
    try:
        return parse(data) if data else None
    except (ArchitectureError, ValueError):
        return None
