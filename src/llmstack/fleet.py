"""Commands over the `hosts:` inventory: `--hosts all|NAME,...` on up, plan, status, verify,
doctor, down, history and rotate-key; `--host-name NAME` (one host) on rollback and logs.

Each host is its own project on its own engine (`engine:` of the host, else --host /
DOCKER_HOST / the Docker context), with its own certificate (hosts/NAME/certs/, for its
domain) and config/ (hosts/NAME/config/) in the deploying folder; the client key is the
folder's .env, one for the whole fleet, unless the host says `key: host`.

A command gives one result per host, in the inventory's order; its exit code is the worst of
them (0 < 1 < 2). `plan`, `status`, `verify`, `doctor`, `down` and `history` ask up to
MAX_AT_ONCE hosts at once (each host is independent); `up` rolls, and `rotate-key` moves the
whole fleet one step at a time. `up` rolls: one host (or `parallel` hosts) at a time, each
verified through its edge as a client; it stops once `max_failures` hosts failed, leaving the
hosts it did not reach untouched; a host whose change fails is rolled back (by `up`'s own
safe changes, or to its previous revision when `verify` fails after `up`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import secrets, tls
from .errors import ExitCode, LlmstackError, UserError
from .project import Loaded, load, load_fleet
from .spec import Fleet, HostSpec

Progress = Callable[[str], None]
ALL = "all"
MAX_AT_ONCE = 8  # hosts a read-only fleet command (plan, status, verify, doctor) asks at once


@dataclass
class HostResult:
    """What one command did on one host: `status` ok | failed | skipped (not reached)."""

    host: str
    engine: str
    exit_code: int = 0
    status: str = "ok"
    data: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # the text output for this host

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "engine": self.engine, "status": self.status,
                "exit_code": self.exit_code, "result": self.data}


@dataclass
class FleetResult:
    command: str
    hosts: list[HostResult]
    extra: dict[str, Any] = field(default_factory=dict)  # command-wide findings

    @property
    def exit_code(self) -> int:
        """The worst host's: 2 (engine, host, service) over 1 (configuration) over 0."""
        return max((h.exit_code for h in self.hosts), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "ok": self.exit_code == 0,
                "exit_code": self.exit_code, "hosts": [h.to_dict() for h in self.hosts],
                **self.extra}


def select(fleet: Fleet, hosts: str) -> list[HostSpec]:
    """`all` or `NAME,NAME,...` of the inventory, in the inventory's order."""
    if not fleet.hosts:
        raise UserError("--hosts needs a `hosts:` inventory in stack.yaml, and it has none",
                        "add one (docs/STACK_FILE.md, Hosts), or drop --hosts")
    if hosts.strip() == ALL:
        return list(fleet.hosts.values())
    wanted = [h.strip() for h in hosts.split(",") if h.strip()]
    unknown = [h for h in wanted if h not in fleet.hosts]
    if unknown or not wanted:
        raise UserError(f"--hosts {hosts!r}: {', '.join(unknown) or 'no host'} not in "
                        f"stack.yaml's hosts: ({', '.join(fleet.hosts)})",
                        "write --hosts all or a comma-separated list of those names")
    return [h for h in fleet.hosts.values() if h.name in wanted]


def engine_url(host: HostSpec, default: str | None) -> str | None:
    """The host's engine: its `engine:`, else --host (DOCKER_HOST, context, socket after)."""
    if host.engine is None:
        return default
    if "://" in host.engine:
        return host.engine
    return f"context:{host.engine}"  # a Docker context's name: engine/client.resolve_target


def prepare(loaded: Loaded) -> list[Path]:
    """A host's own secrets in the deploying folder, made when missing: its certificate for
    its domain (hosts/NAME/certs/, key 0600) and, with `key: host`, its .env (0600)."""
    made: list[Path] = []
    paths = loaded.paths
    if paths.host is None:
        return made
    paths.host_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.host_dir, 0o700)
    if not (paths.certs / tls.CERT).exists() or not (paths.certs / tls.KEY).exists():
        tls.generate(paths.certs, loaded.spec.domain)
        made.append(paths.certs / tls.CERT)
    if paths.own_key and not paths.env.exists():
        secrets.write_keys(paths.env, secrets.generate())
        made.append(paths.env)
    return made


def one_host(root: Path, file: Path | None, name: str, default_engine: str | None
             ) -> tuple[Loaded, str | None]:
    """`--host-name NAME`: one host of the inventory, its resulting stack and its engine URL
    (for the commands whose answer or argument is one host's: rollback, logs)."""
    chosen = select(load_fleet(root, file), name)
    if len(chosen) != 1:
        raise UserError(f"--host-name {name!r} names {len(chosen)} hosts; it takes one",
                        "write one host's name; `--hosts` (where a command has it) takes "
                        "several")
    loaded = load(root, file, chosen[0].name)
    prepare(loaded)
    return loaded, engine_url(chosen[0], default_engine)


HostAction = Callable[[Loaded, str | None, HostResult], None]


def each(root: Path, file: Path | None, hosts: str, default_engine: str | None,
         command: str, action: HostAction) -> FleetResult:
    """`action` on every selected host in turn; an error on one host is that host's result
    (its exit code), and the others still run. A host's certificate (and own .env) is made
    first when missing (`prepare`), so a host not deployed yet reads as such."""
    from .engine.client import describe_target

    fleet = load_fleet(root, file)
    chosen = select(fleet, hosts)
    out = FleetResult(command, [HostResult(h.name, describe_target(
        engine_url(h, default_engine))) for h in chosen])

    def one(index: int) -> None:
        host, result = chosen[index], out.hosts[index]
        try:
            loaded = load(root, file, host.name)
            prepare(loaded)
            action(loaded, engine_url(host, default_engine), result)
        except LlmstackError as exc:
            fail(result, exc)

    # Hosts are independent here (each its own engine and files): waiting on one host's
    # engine need not hold up the next. Results keep the inventory's order.
    with ThreadPoolExecutor(max_workers=min(len(chosen), MAX_AT_ONCE)) as pool:
        list(pool.map(one, range(len(chosen))))
    return out


def fail(result: HostResult, exc: LlmstackError) -> None:
    result.exit_code = max(result.exit_code, int(exc.exit_code))
    result.status = "failed"
    result.data = {**result.data, **exc.to_dict()}
    result.lines.append(f"error: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))


# --- the commands, one host each ---------------------------------------------------------------


@contextlib.contextmanager
def _open(loaded: Loaded, url: str | None, create: bool = False) -> Iterator[Any]:
    """The host's project on its engine, labelled with this folder's identity; its
    connection (an ssh tunnel for ssh://) closed at the end."""
    from .engine.containers import open_project
    from .project import owner

    project = open_project(url, loaded.spec.project)
    try:
        project.owner_labels = owner(loaded.paths, create).labels()
        yield project
    finally:
        project.close()


def plan_one(take_over: bool) -> HostAction:
    def run(loaded: Loaded, url: str | None, result: HostResult) -> None:
        from .checks import exit_code
        from .deploy import decide_images, plan_only
        from .doctor import gpu_plan

        with _open(loaded, url) as project:
            loaded, choice = decide_images(loaded, project, progress=lambda m: None,
                                           fetch=False)
            actions = plan_only(loaded, project, take_over)
            findings, budget = gpu_plan(project, loaded.spec)
        result.exit_code = exit_code(findings)
        result.status = "ok" if result.exit_code == 0 else "failed"
        result.data = {"project": loaded.spec.project,
                       "actions": [a.to_dict() for a in actions],
                       "images": {"source": choice.source, "reason": choice.reason,
                                  "pull": choice.missing}}
        if findings:
            result.data["gpu"] = {**(budget.to_dict() if budget else {}),
                                  "findings": [f.to_dict() for f in findings]}
        result.lines += [f"{a.kind:<9} {a.service:<28} {a.reason}" for a in actions]
        result.lines += [f"{f.status:<9} {f.check:<28} {f.detail}" for f in findings
                         if f.status != "ok"]
    return run


def _revision(loaded: Loaded, project: Any) -> dict[str, Any] | None:
    from . import history

    revisions = history.load_all(project, loaded.spec.images.for_key("litellm"))
    return revisions[-1].to_dict() if revisions else None


def status_one(loaded: Loaded, url: str | None, result: HostResult) -> None:
    from . import deploy

    with _open(loaded, url) as project:
        report = deploy.status(loaded, project)
        revision = _revision(loaded, project)
    result.data = {**report.to_dict(), "revision": revision, "weights": weights(loaded)}
    if not report.healthy:
        result.exit_code, result.status = ExitCode.RUNTIME, "failed"


def weights(loaded: Loaded) -> dict[str, str]:
    """{model: the weights it serves}: its source, with the commit stack.lock pins an hf:
    source at (the lock file is the folder's, so every host gets the same commit)."""
    pins = loaded.pins()
    out = {}
    for model in loaded.spec.models:
        commit = pins.get(model.source)
        out[model.name] = model.source + (f" (commit {commit})" if commit else "")
    return out


def differing_weights(result: FleetResult) -> dict[str, dict[str, str]]:
    """Models that serve different weights on different hosts: {model: {host: weights}}."""
    seen: dict[str, dict[str, str]] = {}
    for host in result.hosts:
        for model, ref in (host.data.get("weights") or {}).items():
            seen.setdefault(model, {})[host.host] = ref
    return {m: refs for m, refs in seen.items() if len(set(refs.values())) > 1}


def status(root: Path, file: Path | None, hosts: str, default_engine: str | None
           ) -> FleetResult:
    """`status --hosts`: every host's status, and the models whose weights differ."""
    result = each(root, file, hosts, default_engine, "status", status_one)
    result.extra["differing_weights"] = differing_weights(result)
    return result


def status_table(result: FleetResult) -> list[str]:
    """`status --hosts`: one table of every host's services, then the hosts that failed."""
    lines = [f"{'HOST':<16} {'SERVICE':<28} {'STATE':<10} {'HEALTH':<9} REVISION"]
    for host in result.hosts:
        data = host.data
        revision = data.get("revision") or {}
        rev = f"{revision.get('revision')} ({revision.get('digest')})" if revision else "-"
        for s in data.get("services", []):
            health = {True: "healthy", False: "unhealthy", None: "-"}[s.get("healthy")]
            behind = "  (runs its previous revision; `up` applies stack.yaml)" \
                if s.get("in_sync") is False else ""
            lines.append(f"{host.host:<16} {s['service']:<28} {s['state']:<10} {health:<9} "
                         f"{rev}{behind}")
        if "services" not in data:
            lines.append(f"{host.host:<16} {'-':<28} {'error':<10} {'-':<9} -")
            lines += [f"  {line}" for line in host.lines]
    for model, refs in differing_weights(result).items():
        lines.append(f"WARNING: model {model} serves other weights on some hosts: "
                     + "; ".join(f"{host}: {ref}" for host, ref in refs.items()))
    bad = [h.host for h in result.hosts if h.status == "failed"]
    lines.append(f"{len(result.hosts) - len(bad)} of {len(result.hosts)} host(s) healthy"
                 + (f"; not: {', '.join(bad)}" if bad else ""))
    return lines


def history_one(loaded: Loaded, url: str | None, result: HostResult) -> None:
    """The revisions recorded on the host's engine (each host numbers its own)."""
    from . import history

    with _open(loaded, url) as project:
        revisions = history.load_all(project, loaded.spec.images.for_key("litellm"))
    result.data = {"project": loaded.spec.project,
                   "revisions": [r.to_dict() for r in revisions]}
    result.lines += history.table(revisions)


def verify_one(timeout: float) -> HostAction:
    def run(loaded: Loaded, url: str | None, result: HostResult) -> None:
        from . import verify as ver
        from .engine.client import describe_target, engine_address

        checked = ver.run(loaded, engine_address(url), describe_target(url), timeout)
        result.data = checked.to_dict()
        result.exit_code = checked.exit_code
        result.status = "ok" if checked.exit_code == 0 else "failed"
        result.lines += [f"{c.status:<4} {c.check:<12} {c.detail}" for c in checked.checks]
    return run


def doctor_one(gpu_image: str | None) -> HostAction:
    def run(loaded: Loaded, url: str | None, result: HostResult) -> None:
        from . import doctor as doc
        from .checks import finding_lines

        report = doc.run(loaded.paths.root, loaded, None, url, gpu_image)
        result.data = report.to_dict()
        result.exit_code = report.exit_code
        result.status = "ok" if report.exit_code == 0 else "failed"
        result.lines += finding_lines([f for f in report.findings if f.status != "ok"])
    return run


def down_one(volumes: bool, take_over: bool) -> HostAction:
    def run(loaded: Loaded, url: str | None, result: HostResult) -> None:
        from .deploy import check_owner

        with _open(loaded, url) as project:
            check_owner(project, take_over)
            removed = project.down(volumes=volumes)
        result.data = {"project": loaded.spec.project, "removed": removed}
        result.lines.append(f"removed {len(removed)} containers of {loaded.spec.project}")
    return run


# --- rolling up --------------------------------------------------------------------------------


class _Prefixed:
    """A reporter whose service names carry the host's name."""

    def __init__(self, host: str, inner: Any) -> None:
        self.host, self.inner = host, inner

    def event(self, service: str, state: str, detail: str = "") -> None:
        self.inner.event(f"{self.host}/{service}", state, detail)


def up_one(loaded: Loaded, url: str | None, result: HostResult, report: Any,
           progress: Progress, take_over: bool, verify_timeout: float) -> None:
    """`up` then `verify` on one host; a verify failure after a change returns the host to
    its previous revision (when one is recorded)."""
    started = time.monotonic()
    with _open(loaded, url, create=True) as project:
        _up_verify(loaded, url, result, report, progress, take_over, verify_timeout, project,
                   started)


def _up_verify(loaded: Loaded, url: str | None, result: HostResult, report: Any,
               progress: Progress, take_over: bool, verify_timeout: float, project: Any,
               started: float) -> None:
    """up_one's work on the open project."""
    from . import deploy
    from . import verify as ver
    from .engine.client import describe_target, engine_address

    host = loaded.paths.host or ""
    say: Progress = lambda m: progress(f"{host}: {m}")  # noqa: E731
    up = deploy.up(loaded, project, _Prefixed(host, report), local_engine=project.is_local(),
                   progress=say, take_over=take_over)
    result.data = {"project": loaded.spec.project, "changed": up.changed,
                   "revision": up.revision, "actions": [a.to_dict() for a in up.actions],
                   "ready_seconds": up.ready_seconds}
    checked = ver.run(loaded, engine_address(url), describe_target(url), verify_timeout)
    result.data["verify"] = checked.to_dict()
    result.data["seconds"] = round(time.monotonic() - started, 2)
    if checked.exit_code == 0:
        done = [a for a in up.actions if a.kind != "keep"]
        result.lines.append(f"up: {len(done)} changes, revision {up.revision}; verify passed "
                            f"({result.data['seconds']}s)")
        return
    failed = [c.check for c in checked.checks if c.status == "fail"]
    result.exit_code, result.status = ExitCode.RUNTIME, "failed"
    result.lines.append(f"verify FAILED after up: {', '.join(failed)}")
    if up.changed:
        try:
            target, _ = deploy.rollback_to(loaded, project, _Prefixed(host, report), say,
                                              take_over=take_over,
                                              local_engine=project.is_local())
            result.data["rolled_back_to"] = target.number
            result.lines.append(f"rolled back to revision {target.number}")
        except LlmstackError as exc:
            result.lines.append(f"not rolled back: {exc.message}")


def rolling_up(root: Path, file: Path | None, hosts: str, default_engine: str | None,
               report: Any, progress: Progress, parallel: int = 1, max_failures: int = 1,
               take_over: bool = False, verify_timeout: float = 60.0) -> FleetResult:
    """`up` across the fleet, `parallel` hosts at a time; stops starting hosts once
    `max_failures` have failed. Hosts not reached are `skipped` and untouched."""
    from .engine.client import describe_target

    if parallel < 1 or max_failures < 1:
        raise UserError("--parallel and --max-failures must be 1 or more",
                        "e.g. --parallel 1 --max-failures 1 (the default: one host at a time, "
                        "stop at the first failure)")
    fleet = load_fleet(root, file)
    chosen = select(fleet, hosts)
    out = FleetResult("up", [HostResult(h.name, describe_target(engine_url(h, default_engine)),
                                        status="skipped") for h in chosen])
    for r in out.hosts:
        r.lines.append("not reached: untouched")

    def one(index: int) -> None:
        host, result = chosen[index], out.hosts[index]
        result.status, result.lines = "ok", []
        try:
            loaded = load(root, file, host.name)
            prepare(loaded)
            up_one(loaded, engine_url(host, default_engine), result, report, progress,
                   take_over, verify_timeout)
        except LlmstackError as exc:
            fail(result, exc)

    failures = 0
    for start in range(0, len(chosen), parallel):
        batch = list(range(start, min(start + parallel, len(chosen))))
        progress(f"rolling up: {', '.join(chosen[i].name for i in batch)} "
                 f"({batch[-1] + 1}/{len(chosen)})")
        if len(batch) == 1:
            one(batch[0])
        else:
            with ThreadPoolExecutor(max_workers=len(batch)) as pool:
                list(pool.map(one, batch))
        failures += sum(out.hosts[i].status == "failed" for i in batch)
        if failures >= max_failures:
            left = [r.host for r in out.hosts if r.status == "skipped"]
            if left:
                progress(f"stopped after {failures} failed host(s): {', '.join(left)} "
                         "not touched")
            break
    return out


# --- rotate-key across the fleet ---------------------------------------------------------------


def rotate_fleet(root: Path, file: Path | None, hosts: str, default_engine: str | None,
                 grace_seconds: int, progress: Progress, finish: bool = False,
                 show: bool = False) -> FleetResult:
    """One new key for the hosts that share the fleet's .env, in one pass with one grace
    window (rotate.rotate_group); each host with `key: host` rotates its own."""
    from .engine.client import describe_target
    from .engine.containers import open_project

    fleet = load_fleet(root, file)
    chosen = select(fleet, hosts)
    out = FleetResult("rotate-key", [])
    groups: dict[Path, list[tuple[Loaded, Any, HostResult]]] = {}
    for host in chosen:
        url = engine_url(host, default_engine)
        result = HostResult(host.name, describe_target(url))
        out.hosts.append(result)
        try:
            loaded = load(root, file, host.name)
            project = open_project(url, loaded.spec.project)
            groups.setdefault(loaded.paths.env, []).append((loaded, project, result))
        except LlmstackError as exc:
            fail(result, exc)
    try:
        _rotate_groups(out, groups, grace_seconds, progress, finish, show)
    finally:
        for members in groups.values():
            for _, project, _ in members:
                project.close()
    return out


def _rotate_groups(out: FleetResult, groups: dict[Path, list[tuple[Loaded, Any, HostResult]]],
                   grace_seconds: int, progress: Progress, finish: bool, show: bool) -> None:
    from . import rotate

    if any(r.status == "failed" for r in out.hosts):
        for r in out.hosts:
            if r.status != "failed":
                r.status = "skipped"
                r.lines.append("not rotated: another host of the fleet cannot be reached")
        return
    for env, members in groups.items():
        targets = [(m[0], m[1]) for m in members]
        say: Progress = lambda m, e=env: progress(f"{e}: {m}")  # noqa: E731
        try:
            if finish:
                done = rotate.finish_group(targets, say)
                data = done.to_dict()
                line = "grace window ended" if done.was_in_progress else "no grace window open"
            else:
                rotated = rotate.rotate_group(targets, grace_seconds, say)
                data = rotated.to_dict(show=show)
                line = (f"new key in {env}; " + (f"old key accepted until {data['grace_ends']}"
                                                  if grace_seconds else "old key refused"))
        except LlmstackError as exc:
            for m in members:
                fail(m[2], exc)
            continue
        for m in members:
            m[2].data = data
            m[2].lines.append(line)
        if show and "key" in data:
            members[0][2].lines.append(f"new key: {data['key']}")
