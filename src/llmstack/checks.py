"""One model for every check: gathered facts -> pure evaluations -> findings -> one exit code.

`doctor` (the host and the project), `up`'s preflight, `verify` (the live stack) and the GPU
budget all report `Finding`s. A finding that fails names who must act (`scope`), and
`exit_code` is the one rule turning findings into the documented exit code (docs/CI.md
section 7): a config-scope failure exits 1, a host- or runtime-scope failure exits 2, and 2
wins. Each finding carries its own fix, so an error made of findings (`raise_failing`) hints
exactly the fixes of what failed.

This module is pure: the facts are read elsewhere (`doctor.gather`, `deploy.gather_preflight`)
and nothing here imports the engine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import names
from .errors import DeployError, ExitCode, UserError

if TYPE_CHECKING:
    from .doctor import Facts
    from .plan import Action, ServiceSpec
    from .spec import ModelSpec, StackSpec

# Statuses: ok | warn | fail | skip (skip: not applicable, e.g. no embedding model to verify).
OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
# Scopes, who acts when a finding fails: stack.yaml, .env or certs/ (config); the engine, its
# host, GPUs, disk or images (host); the running stack seen as a client sees it (runtime).
CONFIG, HOST, RUNTIME = "config", "host", "runtime"
SCOPE_EXIT = {CONFIG: ExitCode.CONFIG, HOST: ExitCode.RUNTIME, RUNTIME: ExitCode.RUNTIME}

GIB = 1024**3
DISK_RESERVE_BYTES = 2 * GIB
ENV_MIN_FREE_DISK = "LLMSTACK_MIN_FREE_DISK_GB"  # tests, and cautious operators


@dataclass(frozen=True)
class Finding:
    """One check's outcome: what was found (detail) and, when it is not ok, how to fix it."""

    check: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""
    scope: str = HOST  # config | host | runtime
    data: dict[str, Any] = field(default_factory=dict)  # measurements, for --json
    seconds: float = 0.0  # how long the check took, where it is timed (verify)

    def to_dict(self) -> dict[str, Any]:
        """The shape of `doctor --json` and `plan --json` findings (docs/CI.md section 8)."""
        return {"check": self.check, "status": self.status, "detail": self.detail,
                "fix": self.fix, "scope": self.scope}


def failing(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.status == FAIL]


def exit_code(findings: Iterable[Finding]) -> ExitCode:
    """0 when nothing fails; else the highest code of the failing findings' scopes."""
    return max((SCOPE_EXIT[f.scope] for f in failing(findings)), default=ExitCode.OK)


def fixes(findings: Iterable[Finding]) -> str:
    """The union of the findings' own fixes, in order, each once."""
    return "; ".join(dict.fromkeys(f.fix for f in findings if f.fix))


def raise_failing(findings: Iterable[Finding], title: str) -> None:
    """Raise the failing findings as ONE error (exit code by `exit_code`); nothing if none."""
    fails = failing(findings)
    if not fails:
        return
    error = DeployError if exit_code(fails) == ExitCode.RUNTIME else UserError
    raise error(f"{title}:\n  - " + "\n  - ".join(f.detail for f in fails), fixes(fails))


def finding_lines(findings: Iterable[Finding]) -> list[str]:
    """Findings as `doctor` and `plan` print them: status, check, detail, then the fix."""
    lines = []
    for f in findings:
        lines.append(f"  {f.status:<5} {f.check:<16} {f.detail}")
        if f.fix and f.status != OK:
            lines.append(f"  {'':<5} {'':<16} fix: {f.fix}")
    return lines


def parse_df(text: str) -> tuple[int, int] | None:
    """(total, available) bytes from `df -Pk` output (the last data line)."""
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    for cells in reversed(lines):
        if len(cells) >= 6 and cells[1].isdigit() and cells[3].isdigit():
            return int(cells[1]) * 1024, int(cells[3]) * 1024
    return None


# --- `up`'s preflight: what can be known before a container starts -------------------------------
#
# `up` has always refused these with exit 1 (docs/CI.md section 7: "preflight refused"), also
# missing images and a full disk, which `doctor` reports as host-scope (exit 2): their scope
# here is "config" to keep each command's documented code. GPU findings keep their own scope
# (no GPU runtime: host, exit 2). Only problems are reported: preflight prints no "ok" lines.

PORT_FIX = "free the port or change listeners in stack.yaml"
MODEL_FIX = ("for the demo model run `llmstack images build` (it fills llmstack-models); "
             "otherwise copy the file into the volume")
DISK_FIX = "free space on the engine's host (docker image prune, old models)"


@dataclass
class PreflightFacts:
    """What the engine answered before `up` starts anything (deploy.gather_preflight)."""

    image_ids: dict[str, str | None]  # every wanted image: its id, None when missing
    sources: dict[str, bool] = field(default_factory=dict)  # model name: its file was found
    # Running containers' published ports: {port, ip, container, project} (host.published_ports)
    published: list[dict[str, Any]] = field(default_factory=list)
    busy_here: set[tuple[str, int]] = field(default_factory=set)  # (bind, port) taken here
    df: str | None = None  # `df -Pk /` on the engine's host; None when it could not run
    reserve_bytes: float = DISK_RESERVE_BYTES
    gpu: Facts | None = None  # doctor's GPU facts, when a model has GPUs


def touched(actions: Iterable[Action]) -> set[str]:
    """Services `up` is about to create or recreate."""
    return {a.service for a in actions if a.kind in ("create", "recreate")}


def models_to_stat(spec: StackSpec, wanted: list[ServiceSpec], actions: list[Action],
                   present: Iterable[str]) -> list[tuple[ModelSpec, str]]:
    """(model, image to look with) for each volume source of a model service `up` starts
    whose image is there (a missing image is reported once, as an image)."""
    images = {s.service: s.image for s in wanted}
    starting, have = touched(actions), set(present)
    out = []
    for model in spec.models:
        service = names.model_service(model.name)
        if service in starting and model.parsed_source.kind == "volume" and \
                images[service] in have:
            out.append((model, images[service]))
    return out


def disk_reserve(environ: Mapping[str, str]) -> float:
    """Free bytes `up` needs on the engine's data root (LLMSTACK_MIN_FREE_DISK_GB overrides)."""
    override = environ.get(ENV_MIN_FREE_DISK)
    return float(override) * GIB if override else DISK_RESERVE_BYTES


def preflight_images(image_ids: Mapping[str, str | None]) -> list[Finding]:
    from .images import missing_fix

    missing = [tag for tag, image_id in image_ids.items() if image_id is None]
    if not missing:
        return []
    return [Finding("images", FAIL, "images missing on the engine: " + ", ".join(missing),
                    missing_fix(missing), scope=CONFIG)]


def preflight_models(spec: StackSpec, sources: Mapping[str, bool]) -> list[Finding]:
    """Model files looked for (`sources`) and not found in their volume."""
    out = []
    for model in spec.models:
        src = model.parsed_source
        if sources.get(model.name, True):
            continue
        out.append(Finding(f"model:{model.name}", FAIL, f"model {model.name!r}: "
                           f"{src.path or '(volume)'} not found in volume {src.location!r}",
                           MODEL_FIX, scope=CONFIG))
    return out


def preflight_ports(project: str, ports: Iterable[tuple[str, int]],
                    published: list[dict[str, Any]], busy_here: set[tuple[str, int]]
                    ) -> list[Finding]:
    """nginx's (bind, port)s against other projects' published ports (any address, as `up`
    always did) and, for a local engine, sockets this machine cannot bind."""
    others = [p for p in published if p.get("project") != project]
    out = []
    for bind, port in ports:
        owner = next((p["container"] for p in others if p["port"] == port), None)
        if owner:
            out.append(Finding("ports", FAIL, f"port {port} is already published by container "
                               f"{owner}", PORT_FIX, scope=CONFIG))
        elif (bind, port) in busy_here:
            out.append(Finding("ports", FAIL, f"port {bind}:{port} is already in use on this "
                               "host", PORT_FIX, scope=CONFIG))
    return out


def preflight_disk(df: str | None, reserve_bytes: float) -> list[Finding]:
    parsed = parse_df(df) if df else None
    if parsed is None or parsed[1] >= reserve_bytes:
        return []
    return [Finding("disk", FAIL, f"disk nearly full on the engine's host: "
                    f"{parsed[1] / GIB:.1f} GiB free, {reserve_bytes / GIB:.1f} GiB needed to "
                    "start containers safely", DISK_FIX, scope=CONFIG)]


def evaluate_preflight(spec: StackSpec, wanted: list[ServiceSpec], actions: list[Action],
                       facts: PreflightFacts) -> list[Finding]:
    """Every preflight finding, in the order `up` reports them: images, model files, ports,
    disk, then the GPUs (doctor's GPU evaluation)."""
    from .doctor import evaluate_gpus

    found = preflight_images(facts.image_ids) + preflight_models(spec, facts.sources)
    if names.NGINX in touched(actions):
        nginx = next(s for s in wanted if s.service == names.NGINX)
        found += preflight_ports(spec.project, nginx.ports.values(), facts.published,
                                 facts.busy_here)
    found += preflight_disk(facts.df, facts.reserve_bytes)
    if facts.gpu is not None:
        found += evaluate_gpus(spec, facts.gpu)[0]
    return found
