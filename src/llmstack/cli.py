"""The `llmstack` command: parse, call the library, print. Exit codes: 0 ok, 1 user or
config error, 2 engine or runtime failure. Heavy imports happen inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .errors import ExitCode, LlmstackError

if TYPE_CHECKING:
    from .engine.containers import Project

EPILOG = """Exit codes: 0 ok; 1 invalid input or configuration (the message names the file,
field and fix); 2 engine or runtime failure (daemon down, a service not ready).

\b
Examples:
  llmstack init --domain api.example.com   # stack.yaml, .env (0600), certs/
  llmstack validate                        # check stack.yaml, all problems at once
  llmstack up                              # build config/, start and wait for every service
  llmstack status --json                   # per-service state and health for CI
"""

app = typer.Typer(add_completion=False, no_args_is_help=True, epilog=EPILOG,
                  help="Turn stack.yaml into a running, secured, OpenAI-compatible LLM API.",
                  rich_markup_mode=None, pretty_exceptions_enable=False)
images_app = typer.Typer(help="Get the stack's images: pull them from registries, build them "
                         "here, or carry them to air-gapped hosts in a bundle.",
                         no_args_is_help=True)
app.add_typer(images_app, name="images")
export_app = typer.Typer(help="Export the stack for other deployment tools.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")
keys_app = typer.Typer(help="Team keys: one API key per person or tool, each with its own "
                       "limits and models, revocable on its own, live (no restart).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")

DirOpt = Annotated[Path | None, typer.Option("--dir", "-C", help="Project folder (holds "
                                             "stack.yaml, .env, certs/, config/).",
                                             show_default=False)]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Stack file (default "
                                              "DIR/stack.yaml).", show_default=False)]
HostOpt = Annotated[str | None, typer.Option("--host", "-H", help="Docker engine, e.g. "
                                             "ssh://user@gpu-1 (default: DOCKER_HOST, then "
                                             "the Docker context, then the local socket).",
                                             show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
HostsOpt = Annotated[str | None, typer.Option(
    "--hosts", help="Run on hosts of stack.yaml's `hosts:` inventory: all, or NAME,NAME "
    "(each on its own engine; one result per host; exit code: the worst).",
    show_default=False)]
HostNameOpt = Annotated[str | None, typer.Option(
    "--host-name", help="One host of stack.yaml's `hosts:` inventory: its project on its "
    "engine.", show_default=False)]
TakeOverOpt = Annotated[bool, typer.Option(
    "--take-over", help="Act on the project's containers even when another stack folder made "
    "them (that folder is gone and this one replaces it); `up` recreates them as this "
    "folder's.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmstack {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """llmstack: one stack.yaml to a self-hosted OpenAI-compatible API."""


def _cwd(directory: Path | None) -> Path:
    return (directory or Path.cwd()).resolve()


def _load(directory: Path | None, file: Path | None) -> Any:
    from .project import load

    root = _cwd(directory)
    return load(root, file.resolve() if file else None)


def _resolved(file: Path | None) -> Path | None:
    return file.resolve() if file else None


def _engine(host: str | None, project: str) -> Project:
    """The project on the engine (implements `engine.api.Engine`)."""
    from .engine.containers import open_project

    return open_project(host, project)


def _owned_engine(host: str | None, loaded: Any, create: bool) -> Project:
    """The project on the engine, labelling what it starts with this folder's identity
    (`create`: write the folder's id when it has none yet)."""
    from .project import owner

    project = _engine(host, loaded.spec.project)
    project.owner_labels = owner(loaded.paths, create).labels()
    return project


def _one_host(directory: Path | None, file: Path | None, host_name: str | None,
              host: str | None) -> tuple[Any, str | None]:
    """The stack and engine a one-host command acts on: the folder's stack on --host, or
    with --host-name the inventory host's resulting stack on its own engine."""
    if host_name is None:
        return _load(directory, file), host
    from . import fleet
    return fleet.one_host(_cwd(directory), _resolved(file), host_name, host)


def _fleet_done(result: Any, json_out: bool) -> None:
    """Print a fleet command's result (one document, or a block per host) and exit with the
    worst host's code."""
    if json_out:
        from .ui import emit_json
        emit_json(result.to_dict())
    else:
        for host in result.hosts:
            typer.echo(f"== {host.host} ({host.engine}): {host.status}")
            for line in host.lines:
                typer.echo(f"  {line}")
        bad = [h.host for h in result.hosts if h.status == "failed"]
        typer.echo(f"{result.command}: {len(result.hosts) - len(bad)} of {len(result.hosts)} "
                   "host(s) ok" + (f"; failed: {', '.join(bad)}" if bad else ""))
    raise typer.Exit(result.exit_code)


@app.command()
def init(
    directory: Annotated[Path | None, typer.Argument(help="Folder to initialise (default: .)",
                                                     show_default=False)] = None,
    domain: Annotated[str, typer.Option(help="Name for the HTTPS certificate.")] = "localhost",
    profile: Annotated[str, typer.Option(help="Starter stack: cpu (tiny real model) or gpu "
                                         "(vLLM).")] = "cpu",
    force: Annotated[bool, typer.Option("--force", help="Regenerate .env and certificates "
                                        "after backing the old ones up.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a starter stack.yaml, a .env (0600) with a new key, and a TLS certificate."""
    from .errors import UserError
    from .initialize import init as do_init
    from .spec import host_name

    if profile not in ("cpu", "gpu"):
        raise UserError(f"--profile {profile!r} is not known", "use --profile cpu or gpu")
    try:
        domain = host_name(domain)
    except ValueError as exc:
        raise UserError(f"--domain {domain!r} {exc}", "use e.g. --domain api.example.com"
                        ) from None
    steps = do_init(_cwd(directory), domain=domain, profile=profile, force=force)
    if json_out:
        from .ui import emit_json
        emit_json({"steps": [s.to_dict() for s in steps]})
        return
    for step in steps:
        typer.echo(f"{step.action:<12} {step.path}" + (f"  ({step.note})" if step.note else ""))
    typer.echo("The API key is LITELLM_MASTER_KEY in .env (not printed). Next: llmstack up")


@app.command()
def validate(directory: DirOpt = None, file: FileOpt = None,
             json_out: JsonOpt = False) -> None:
    """Check stack.yaml; report every problem with its line, value and fix."""
    from .project import load_fleet

    loaded = _load(directory, file)
    hosts = load_fleet(_cwd(directory), _resolved(file)).hosts
    if json_out:
        from .ui import emit_json
        emit_json({"valid": True, "project": loaded.spec.project,
                   "models": [m.name for m in loaded.spec.models],
                   "hosts": {h.name: {"engine": h.engine, "project": h.spec.project,
                                      "domain": h.spec.domain,
                                      "models": [m.name for m in h.spec.models]}
                             for h in hosts.values()}})
        return
    names = ", ".join(n for m in loaded.spec.models for n in m.public_names)
    typer.echo(f"{file or loaded.paths.stack}: valid (models: {names})")
    for h in hosts.values():
        typer.echo(f"  host {h.name}: valid (engine {h.engine or 'default'}, project "
                   f"{h.spec.project}, domain {h.spec.domain}, models: "
                   f"{', '.join(m.name for m in h.spec.models)})")


@app.command()
def render(directory: DirOpt = None, file: FileOpt = None,
           stdout: Annotated[bool, typer.Option("--stdout", help="Print instead of writing "
                                                "config/.")] = False,
           host_name: Annotated[str | None, typer.Option(
               "--host-name", help="A host of the `hosts:` inventory: its resulting stack "
               "(printed with --stdout) and its config (hosts/NAME/config/).",
               show_default=False)] = None) -> None:
    """Render config/ (nginx.conf, litellm.yaml, health.json) from stack.yaml."""
    from .project import load, write_config

    loaded = _load(directory, file) if host_name is None else \
        load(_cwd(directory), _resolved(file), host_name)
    if stdout:
        if loaded.host_text is not None:
            typer.echo(f"==> stack.yaml (host {host_name}) <==\n{loaded.host_text}")
        for name, data in loaded.rendered.files().items():
            typer.echo(f"==> config/{name} <==\n{data.decode()}")
        return
    written = write_config(loaded)
    for name in loaded.rendered.files():
        path = loaded.paths.config / name
        typer.echo(f"{'wrote' if path in written else 'unchanged':<10} {path}")


@app.command("plan")
def plan_cmd(directory: DirOpt = None, file: FileOpt = None,
             host: HostOpt = None, json_out: JsonOpt = False,
             take_over: TakeOverOpt = False, hosts: HostsOpt = None) -> None:
    """Show what `up` would create, recreate, reload, remove or keep, and why."""
    if hosts:
        from . import fleet
        _fleet_done(fleet.each(_cwd(directory), _resolved(file), hosts, host, "plan",
                               fleet.plan_one(take_over)), json_out)
    from . import fetch
    from .checks import exit_code, failing, finding_lines
    from .deploy import decide_images, plan_only
    from .doctor import gpu_plan
    from .gpu import budget_lines

    loaded = _load(directory, file)
    project = _owned_engine(host, loaded, create=False)
    loaded, choice = decide_images(loaded, project, progress=lambda m: None, fetch=False)
    actions = plan_only(loaded, project, take_over)
    sources = fetch.states(loaded, project)  # hf: sources: pinned? in the engine's cache?
    # Models with GPUs: the host's real GPUs (nvidia-smi via the engine) and a budget per GPU.
    gpu_findings, budget = gpu_plan(project, loaded.spec)
    fails = failing(gpu_findings)
    code = exit_code(gpu_findings)
    if json_out:
        from .ui import emit_json
        out: dict[str, Any] = {"actions": [a.to_dict() for a in actions],
                               "images": {"source": choice.source, "reason": choice.reason,
                                          "pull": choice.missing}}
        if sources:
            out["sources"] = [src.to_dict() for src in sources]
        if gpu_findings:
            out["gpu"] = {**(budget.to_dict() if budget else {}),
                          "findings": [f.to_dict() for f in gpu_findings]}
        emit_json(out)
        raise typer.Exit(code)
    from .plan import UPDATE_WHY

    typer.echo(choice.line)
    for ref in choice.missing:
        typer.echo(f"{'pull' if choice.source == 'registry' else 'missing':<9} {ref}")
    for a in actions:
        typer.echo(f"{a.kind:<9} {a.service:<28} {a.reason}")
        if a.how:
            typer.echo(f"{'':<9} {'':<28} {UPDATE_WHY[a.how]}")
    if sources:
        typer.echo(f"\nModel downloads (hf: sources, into {fetch.hfcache.VOLUME} on the engine's "
                   "host; pinned in the lock file):")
        for src in sources:
            typer.echo(src.line())
    if gpu_findings:
        typer.echo("\nGPU budget (nvidia-smi on the engine's host; estimates: llmstack/gpu.py):")
        for line in (budget_lines(budget) if budget else []) + finding_lines(gpu_findings):
            typer.echo(line)
    if fails:
        typer.echo(f"error: {len(fails)} GPU problem(s) above; `up` would refuse this stack",
                   err=True)
    raise typer.Exit(code)


@app.command()
def up(directory: DirOpt = None, file: FileOpt = None,
       host: HostOpt = None, json_out: JsonOpt = False,
       take_over: TakeOverOpt = False, hosts: HostsOpt = None,
       parallel: Annotated[int, typer.Option(
           "--parallel", help="With --hosts: how many hosts deploy at once.")] = 1,
       max_failures: Annotated[int, typer.Option(
           "--max-failures", help="With --hosts: stop starting hosts once this many "
           "failed.")] = 1) -> None:
    """Render config/, start what is missing or changed, and wait until every service is
    ready. Idempotent: with no change it touches nothing (answered from .llmstack-up.json
    when the last `up` converged: docs/UPDATES.md). With --hosts: rolling, one host at
    a time (--parallel N), each verified; stops at the first failed host (--max-failures K);
    hosts not reached are untouched, a failed one rolled back."""
    import time

    from . import deploy, ui

    if hosts:
        from . import fleet
        _fleet_done(fleet.rolling_up(_cwd(directory), _resolved(file), hosts, host,
                                     ui.reporter(json_out), lambda m: typer.echo(m, err=True),
                                     parallel, max_failures, take_over), json_out)
    from . import quickup
    from .endpoints import urls
    from .engine.client import resolve_target

    started = time.monotonic()
    loaded = _load(directory, file)
    project = _owned_engine(host, loaded, create=True)
    result = deploy.up(loaded, project, ui.reporter(json_out), local_engine=project.is_local(),
                       progress=lambda m: typer.echo(m, err=True), take_over=take_over)
    endpoints = urls(loaded.spec)
    deploy.remember(loaded, project, result, resolve_target(host)[0], endpoints)
    elapsed = time.monotonic() - started
    key_file = str(loaded.paths.env)
    if json_out:
        ui.emit_json(quickup.up_document(result.changed, elapsed, result.revision,
                                         [a.to_dict() for a in result.actions],
                                         result.ready_seconds, endpoints, key_file, False))
        return
    if not result.changed:
        lines = quickup.noop_lines(len(result.actions), elapsed, endpoints, key_file)
    else:
        done = [a for a in result.actions if a.kind != "keep"]
        lines = [f"Stack {loaded.spec.project} is up ({len(done)} changes, {elapsed:.1f}s; "
                 f"revision {result.revision}).", *quickup.endpoint_lines(endpoints, key_file)]
    for line in lines:
        typer.echo(line)


@app.command()
def history(directory: DirOpt = None, file: FileOpt = None,
            host: HostOpt = None, json_out: JsonOpt = False, hosts: HostsOpt = None) -> None:
    """The revisions `up` recorded on the engine (newest last): number, time, digest of the
    containers, models. `llmstack rollback [REVISION]` returns the stack to one. With
    --hosts: each host's own revisions."""
    from . import history as hist

    if hosts:
        from . import fleet
        _fleet_done(fleet.each(_cwd(directory), _resolved(file), hosts, host, "history",
                               fleet.history_one), json_out)
    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)
    revisions = hist.load_all(project, loaded.spec.images.for_key("litellm"))
    if json_out:
        from .ui import emit_json
        emit_json({"revisions": [r.to_dict() for r in revisions]})
        return
    for line in hist.table(revisions):
        typer.echo(line)


@app.command()
def rollback(
    revision: Annotated[int | None, typer.Argument(help="Revision to return to (default: the "
                                                   "one before the latest; see `llmstack "
                                                   "history`).", show_default=False)] = None,
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    json_out: JsonOpt = False, take_over: TakeOverOpt = False, host_name: HostNameOpt = None,
) -> None:
    """Return the running stack to a recorded revision, with `up`'s rules (start-first
    changes, no failed request; a change that fails is rolled back). stack.yaml is not
    edited: the next `llmstack up` applies it again. With --host-name: that host of the
    inventory, to one of its own revisions (`llmstack history --hosts NAME`)."""
    import time

    from . import deploy, ui

    started = time.monotonic()
    loaded, host = _one_host(directory, file, host_name, host)
    project = _owned_engine(host, loaded, create=True)
    target, result = deploy.rollback_to(loaded, project, ui.reporter(json_out),
                                        progress=lambda m: typer.echo(m, err=True),
                                        revision=revision, take_over=take_over,
                                        local_engine=project.is_local())
    elapsed = time.monotonic() - started
    if json_out:
        ui.emit_json({"rolled_back_to": target.number, "revision": result.revision,
                      "changed": result.changed, "seconds": round(elapsed, 2),
                      "actions": [a.to_dict() for a in result.actions]})
        return
    done = [a for a in result.actions if a.kind != "keep"]
    typer.echo(f"Stack {loaded.spec.project} runs revision {target.number} again ({len(done)} "
               f"changes, {elapsed:.1f}s" + (f"; recorded as revision {result.revision}"
                                             if result.changed else "") + ").")
    typer.echo("stack.yaml is unchanged: the next `llmstack up` applies it again.")


@app.command()
def status(directory: DirOpt = None, file: FileOpt = None,
           host: HostOpt = None, json_out: JsonOpt = False, hosts: HostsOpt = None) -> None:
    """State, health, ports, image and uptime of every service; certificate and rotation;
    the number of team keys and those expiring within 14 days. With --hosts: one table of
    every host's services (host, service, state, health, revision)."""
    from . import deploy

    if hosts:
        from . import fleet
        result = fleet.status(_cwd(directory), _resolved(file), hosts, host)
        if not json_out:
            for line in fleet.status_table(result):
                typer.echo(line)
            raise typer.Exit(result.exit_code)
        _fleet_done(result, json_out)
    from .keyops import summary

    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)
    report = deploy.status(loaded, project)
    team = summary(loaded)
    if json_out:
        from .ui import emit_json
        emit_json({**report.to_dict(), "team_keys": team})
    else:
        typer.echo(f"{'SERVICE':<28} {'STATE':<10} {'HEALTH':<9} {'UPTIME':>8}  PORTS / IMAGE")
        for s in report.services:
            health = {True: "healthy", False: "unhealthy", None: "-"}[s.healthy]
            uptime = f"{s.uptime_s or 0}s"
            extra = ", ".join(s.ports) or s.image or ""
            typer.echo(f"{s.service:<28} {s.state:<10} {health:<9} {uptime:>8}  {extra}"
                       + (f"  ({s.note})" if s.note else ""))
        cert = report.certificate
        warn = "  WARNING: renew soon (llmstack init --force)" if cert.expiring_soon else ""
        typer.echo(f"certificate: valid until {cert.not_after} ({cert.days_left} days)" + warn)
        if report.rotation:
            typer.echo(f"key rotation in progress: old key accepted until "
                       f"{report.rotation.old_key_expires or 'rotate-key --finish'}")
        if team["count"]:
            soon = ", ".join(f"{k['name']} ({k['expires']})" for k in team["expiring_soon"])
            typer.echo(f"team keys: {team['count']}" + (f"; expiring within 14 days: {soon}"
                                                         if soon else "")
                       + (f"; expired: {', '.join(team['expired'])}" if team["expired"]
                          else "") + " (`llmstack keys list`)")
    if not report.healthy:
        raise typer.Exit(ExitCode.RUNTIME)


@app.command()
def top(directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
        json_out: JsonOpt = False,
        once: Annotated[bool, typer.Option("--once", help="Print one view and exit (two "
                                           "readings --interval apart, for the rates).")] = False,
        interval: Annotated[float, typer.Option(help="Seconds between readings.", min=0.2,
                                                max=3600)] = 2.0,
        ) -> None:
    """Live per-model load, like `docker stats`: requests (total and per second), in flight,
    queued, p50/p95 latency, first-token time, generated tokens per second, errors; and per
    GPU its utilisation and memory; nginx's own counts per listener, status and key. Reads
    each part's own metrics from inside the project network through the engine (works with
    --host ssh://...). Ctrl-C ends it. With --once: exit 2 when a model is not up."""
    import time

    from . import observe, pull

    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)
    key = loaded.keys().internal
    if not loaded.spec.observability.metrics and not json_out:
        typer.echo("observability.metrics is off in stack.yaml: only states and GPUs are "
                   "shown (turn it on and run `llmstack up`)", err=True)
    spec = pull.choose(loaded.spec, project).spec  # as `up` decided it: edge counts or not
    previous = observe.read(spec, project, key)
    if once:
        time.sleep(interval)
    while True:
        if not once:
            time.sleep(interval)
        current = observe.read(spec, project, key)
        data = observe.view(current, previous)
        if json_out:
            from .ui import emit_json
            emit_json(data)
        else:
            if not once:
                typer.echo("\x1b[H\x1b[2J", nl=False)  # clear the screen, like docker stats
            typer.echo(observe.table(data))
        if once:
            if not observe.healthy(data):
                raise typer.Exit(ExitCode.RUNTIME)  # a model down, starting or missing
            return
        previous = current


@app.command()
def logs(service: Annotated[str, typer.Argument(help="Service: nginx, litellm, health or "
                                                "model-<name> (see `llmstack status`).")],
         directory: DirOpt = None, file: FileOpt = None,
         host: HostOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
         tail: Annotated[int, typer.Option("--tail", "-n", help="Lines from the end.")] = 100,
         host_name: HostNameOpt = None,
         ) -> None:
    """Print a service's logs (stdout and stderr of its container). With --host-name: the
    service of that inventory host."""
    from . import names

    loaded, host = _one_host(directory, file, host_name, host)
    project = _engine(host, loaded.spec.project)
    if service not in (names.NGINX, names.LITELLM, names.HEALTH) and \
            not service.startswith("model-"):
        service = names.model_service(service)  # accept a model's public name too
    try:
        for chunk in project.logs(service, tail=tail, follow=follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
    except KeyboardInterrupt:
        pass


@app.command()
def down(directory: DirOpt = None, file: FileOpt = None,
         host: HostOpt = None,
         volumes: Annotated[bool, typer.Option("--volumes", help="Also remove the project's "
                                               "config volumes.")] = False,
         json_out: JsonOpt = False, take_over: TakeOverOpt = False,
         hosts: HostsOpt = None) -> None:
    """Remove the stack's containers and network. Keeps .env, certs/ and model volumes."""
    from .deploy import check_owner

    if hosts:
        from . import fleet
        _fleet_done(fleet.each(_cwd(directory), _resolved(file), hosts, host, "down",
                               fleet.down_one(volumes, take_over)), json_out)

    loaded = _load(directory, file)
    project = _owned_engine(host, loaded, create=False)
    check_owner(project, take_over)
    removed = project.down(volumes=volumes)
    if json_out:
        from .ui import emit_json
        emit_json({"removed": removed})
        return
    typer.echo(f"Removed {len(removed)} containers" + (" and config volumes" if volumes else "")
               + f" of {loaded.spec.project}; .env, certs/ and models are kept.")


@app.command()
def doctor(directory: DirOpt = None, file: FileOpt = None,
           host: HostOpt = None, json_out: JsonOpt = False,
           gpu_image: Annotated[str | None, typer.Option(
               "--gpu-image", help="Image to run nvidia-smi in (default: the stack's GPU "
               "images, then any of its images; env LLMSTACK_GPU_PROBE_IMAGE).",
               show_default=False)] = None, hosts: HostsOpt = None) -> None:
    """Preflight of the target host and the project: engine and version, clock skew, GPU
    runtime, GPUs, free memory and the per-GPU budget, disk on the engine's data root, ports,
    images, model files, .env mode, certificate. Each finding: ok/warn/fail with a fix.
    Exit 0 when nothing blocks; 1 when stack.yaml/.env/certs must change; 2 when the
    engine or host must (2 wins). Works without stack.yaml (host checks only)."""
    from . import doctor as doc
    from .checks import finding_lines

    if hosts:
        from . import fleet
        _fleet_done(fleet.each(_cwd(directory), _resolved(file), hosts, host, "doctor",
                               fleet.doctor_one(gpu_image)), json_out)
    root = _cwd(directory)
    loaded, error = None, None
    if (file or root / "stack.yaml").exists():
        try:
            loaded = _load(directory, file)
        except LlmstackError as exc:
            error = exc
    report = doc.run(root, loaded, error, host, gpu_image)
    if json_out:
        from .ui import emit_json
        emit_json(report.to_dict())
        raise typer.Exit(report.exit_code)
    typer.echo(f"engine: {report.target}")
    for line in finding_lines(report.findings):
        typer.echo(line)
    if report.budget_lines:
        typer.echo("GPU budget:")
        for line in report.budget_lines:
            typer.echo("  " + line)
    fails = sum(f.status == "fail" for f in report.findings)
    warns = sum(f.status == "warn" for f in report.findings)
    typer.echo(f"{fails} blocker(s), {warns} warning(s): exit {report.exit_code}")
    raise typer.Exit(report.exit_code)


@app.command()
def verify(directory: DirOpt = None, file: FileOpt = None,
           host: HostOpt = None, json_out: JsonOpt = False,
           address: Annotated[str | None, typer.Option(
               "--address", help="Host name or IP to reach the stack at (default: the "
               "engine's host: 127.0.0.1 for a local engine, HOST of ssh://user@HOST).",
               show_default=False)] = None,
           timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 60.0,
           hosts: HostsOpt = None) -> None:
    """End-to-end check of the live stack through its real edge, as a client: TLS against
    certs/ca.crt, GET /health, /v1/models lists the stack's models, a streaming chat (time to
    first token), embeddings (dimension), a wrong key refused with 401, the rate limit
    answering 429. It connects to the engine's host (127.0.0.1 for a local engine, HOST of
    ssh://user@HOST) unless --address says otherwise. Exit 0 only when every check passes,
    2 otherwise."""
    from . import verify as ver
    from .engine.client import describe_target, engine_address

    if hosts:
        from . import fleet
        _fleet_done(fleet.each(_cwd(directory), _resolved(file), hosts, host, "verify",
                               fleet.verify_one(timeout)), json_out)
    loaded = _load(directory, file)
    target = address or engine_address(host)
    result = ver.run(loaded, target, describe_target(host), timeout)
    if json_out:
        from .ui import emit_json
        emit_json(result.to_dict())
        raise typer.Exit(result.exit_code)
    typer.echo(f"verify {loaded.spec.project} at {result.endpoint or target}")
    for c in result.checks:
        typer.echo(f"  {c.status:<4} {c.check:<12} {c.detail}")
        if c.status == "fail" and c.fix:
            typer.echo(f"  {'':<4} {'':<12} fix: {c.fix}")
    failed = [c.check for c in result.checks if c.status == "fail"]
    typer.echo("verify passed" if not failed else f"verify FAILED: {', '.join(failed)}")
    raise typer.Exit(result.exit_code)


@app.command("rotate-key")
def rotate_key(
    directory: DirOpt = None, file: FileOpt = None,
    host: HostOpt = None,
    grace: Annotated[str, typer.Option(help="How long the old key keeps working: 0 (default: "
                                       "refused as soon as the command returns, for a leaked "
                                       "key), or e.g. 30s, 10m, 2h, 1d. The window closes by "
                                       "itself; no command needs to run at its end.")] = "0",
    finish_: Annotated[bool, typer.Option("--finish", help="End the current grace window "
                                          "now: the old key is refused.")] = False,
    show: Annotated[bool, typer.Option("--show", help="Also print the new key.")] = False,
    json_out: JsonOpt = False, hosts: HostsOpt = None,
) -> None:
    """New client key (LITELLM_MASTER_KEY in .env) on the running stack, without restarting
    anything: nginx reloads gracefully, in-flight requests and streams finish. The old .env is
    backed up (0600). A failed rotation leaves the old key working and .env unchanged."""
    import time

    from . import rotate

    started = time.monotonic()
    seconds = rotate.parse_grace(grace)

    def progress(message: str) -> None:
        typer.echo(f"rotate-key: {message}", err=True)

    if hosts:  # one new key for the hosts sharing the fleet's .env, one grace window
        from . import fleet
        _fleet_done(fleet.rotate_fleet(_cwd(directory), _resolved(file), hosts, host, seconds,
                                       progress, finish_, show), json_out)
    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)

    if finish_:
        done = rotate.finish(loaded, project, progress, started)
        if json_out:
            from .ui import emit_json
            emit_json(done.to_dict())
        elif done.was_in_progress:
            typer.echo(f"Grace window ended: only LITELLM_MASTER_KEY in {done.key_file} works.")
        else:
            typer.echo("No grace window was open: nothing to finish.")
        return
    result = rotate.rotate(loaded, project, seconds, progress, started)
    if json_out:
        from .ui import emit_json
        emit_json(result.to_dict(show=show))
        return
    data = result.to_dict()
    typer.echo(f"New key: LITELLM_MASTER_KEY in {result.key_file} (old .env backed up to "
               f"{result.backup_file}); live after {result.cutover_ms} ms.")
    if show:
        typer.echo(result.key)
    typer.echo(f"Old key: accepted until {data['grace_ends']} (end it early: llmstack rotate-key"
               " --finish)." if result.grace_seconds else "Old key: refused from now on.")


def _keys_progress(message: str) -> None:
    typer.echo(f"keys: {message}", err=True)


def _engine_or_none(host: str | None, project: str) -> Project | None:
    """The engine for live key changes; None (store only) when it cannot be reached."""
    from .errors import EngineError

    try:
        return _engine(host, project)
    except EngineError as exc:
        _keys_progress(f"engine unreachable ({exc.message}): only the key store changes")
        return None


def _show_issued(issued: Any, json_out: bool, what: str) -> None:
    if json_out:
        from .ui import emit_json
        emit_json(issued.to_dict())
        return
    where = "live on the running stack" if issued.live else \
        "stored; `llmstack up` applies it"
    typer.echo(f"{what} {issued.name!r} ({where}); it is shown this once:", err=True)
    if issued.out:
        typer.echo(f"key written to {issued.out} (mode 0600)", err=True)
    else:
        typer.echo(issued.key)
    if issued.grace_ends:
        from .keyops import iso
        typer.echo(f"the old key works until {iso(issued.grace_ends)}", err=True)


OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Write the key to this new "
                                             "file (mode 0600) instead of printing it.",
                                             show_default=False)]


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="Who or what holds the key: 1-64 lower-case "
                                        "letters, digits, '.', '_', '@', '-'.")],
    rate: Annotated[str | None, typer.Option(help="Requests per second or minute, e.g. 5/s "
                                             "or 30/m (default: rate_limit.requests_per_second"
                                             " of stack.yaml).", show_default=False)] = None,
    burst: Annotated[int | None, typer.Option(help="Requests beyond the rate accepted at "
                                              "once (default: rate_limit.burst).",
                                              show_default=False)] = None,
    concurrent: Annotated[int | None, typer.Option(help="Requests at once (default: "
                                                   "rate_limit.max_concurrent).",
                                                   show_default=False)] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated models (or aliases) the "
                                               "key may use (default: all).",
                                               show_default=False)] = None,
    expires: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d or 12h (default: "
                                                "none).", show_default=False)] = None,
    out: OutOpt = None,
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A new key for NAME, live at once on every listener (no restart). The key is shown
    once; `.keys.json` (0600, next to .env) keeps only its hash."""
    from . import keyops

    loaded = _load(directory, file)
    project = _engine_or_none(host, loaded.spec.project)
    issued = keyops.add(loaded, project, name, rate=rate, burst=burst, concurrent=concurrent,
                        models=models.split(",") if models is not None else None,
                        expires=expires, out=out, progress=_keys_progress)
    _show_issued(issued, json_out, "new key")


@keys_app.command("list")
def keys_list(directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
              json_out: JsonOpt = False) -> None:
    """Team keys: name, created, expires, last used (nginx's access log), limits, models.
    Never the keys themselves."""
    from . import keyops

    loaded = _load(directory, file)
    project = _engine_or_none(host, loaded.spec.project)
    rows = keyops.listing(loaded, keyops.last_used(project, _keys_progress))
    if json_out:
        from .ui import emit_json
        emit_json({"keys": rows, "store": str(loaded.paths.team_keys)})
        return
    if not rows:
        typer.echo("No team keys. Add one: llmstack keys add NAME")
        return
    typer.echo(f"{'NAME':<20} {'CREATED':<25} {'EXPIRES':<25} {'LAST USED':<25} "
               f"{'RATE':>8} {'BURST':>5} {'CONC':>5}  MODELS")
    for r in rows:
        expires = (r["expires"] or "never") + (" (EXPIRED)" if r["expired"] else
                                               " (soon)" if r["expiring_soon"] else "")
        typer.echo(f"{r['name']:<20} {r['created']:<25} {expires:<25} "
                   f"{r['last_used'] or '-':<25} {r['rate']:>8} {r['burst']:>5} "
                   f"{r['concurrent']:>5}  {','.join(r['models']) if r['models'] else 'all'}")


@keys_app.command("revoke")
def keys_revoke(
    name: Annotated[str, typer.Argument(help="The key to refuse from now on.")],
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Refuse NAME's key on every listener at once (no restart; requests already in flight
    finish). Other keys are not affected."""
    import time

    from . import keyops

    started = time.monotonic()
    loaded = _load(directory, file)
    project = _engine_or_none(host, loaded.spec.project)
    done = keyops.revoke(loaded, project, name, _keys_progress, started)
    if json_out:
        from .ui import emit_json
        emit_json(done.to_dict())
        return
    typer.echo(f"Revoked {name!r}" + (f": refused on every listener ({done.duration_ms} ms)."
                                      if done.live else "; `llmstack up` applies it."))


@keys_app.command("rotate")
def keys_rotate(
    name: Annotated[str, typer.Argument(help="The key to replace.")],
    grace: Annotated[str, typer.Option(help="How long the old key keeps working: 0 (default: "
                                       "refused at once), or e.g. 30s, 10m, 1h, 1d. The window "
                                       "closes by itself.")] = "0",
    out: OutOpt = None,
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A new secret for NAME (same name, limits and models), live with no restart; the old
    one works until the grace window ends. The new key is shown once."""
    from . import keyops

    loaded = _load(directory, file)
    project = _engine_or_none(host, loaded.spec.project)
    issued = keyops.rotate_key(loaded, project, name, grace, out, _keys_progress)
    _show_issued(issued, json_out, "new key for")

@app.command()
def connect(
    client: Annotated[str, typer.Argument(help="continue, cline, aider, llm, openai or curl.",
                                          show_default=False)],
    directory: DirOpt = None, file: FileOpt = None,
    listener: Annotated[str | None, typer.Option(
        "--listener", help="local, lan or https (default: local, else https, else lan).",
        show_default=False)] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="Host name or IP clients reach this host by (default: the "
        "listener's bind address; the domain for https).", show_default=False)] = None,
    ca_path: Annotated[str | None, typer.Option(
        "--ca-path", help="With --listener https: where a copy of certs/ca.crt lies on the "
        "machine the client runs on (default: this project's certs/ca.crt).",
        show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Chat model (chat, edit, apply roles; default: the first chat "
        "model of stack.yaml).", show_default=False)] = None,
    autocomplete_model: Annotated[str | None, typer.Option(
        "--autocomplete-model", help="Continue's tab-completion model (default: --model).",
        show_default=False)] = None,
    key_name: Annotated[str | None, typer.Option(
        "--key-name", help="Which key the client sends (default: master, "
        "LITELLM_MASTER_KEY in .env).", show_default=False)] = None,
    show_key: Annotated[bool, typer.Option("--show-key", help="Print the key itself "
                                           "(otherwise a placeholder or a command reading "
                                           ".env).")] = False,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write the configuration to this file, with the key (mode 0600 "
        "when it holds one); an existing different file is backed up first.",
        show_default=False)] = None,
) -> None:
    """A ready configuration for an editor assistant or client: Continue (config.yaml with
    chat, edit, apply and autocomplete roles), Cline, aider, llm, the OpenAI SDKs'
    environment, curl. With --listener https the client trusts certs/ca.crt its own way.
    The key is never printed unless --show-key; --out files get it (mode 0600). Notes on
    where to put it go to stderr."""
    from . import connect as conn

    loaded = _load(directory, file)
    where = conn.target(loaded, listener, address, ca_path)
    key = conn.client_key(loaded, key_name)
    result = conn.render(client, loaded.spec, where, key, show_key or out is not None,
                         model, autocomplete_model)
    for note in result.notes if out is None else result.notes[1:]:
        typer.echo(f"# {note}", err=True)
    if out is None:
        typer.echo(result.text, nl=False)
        return
    from .fsutil import backup, write_atomic

    target = out.expanduser()
    saved = None
    if target.exists() and target.read_bytes() != result.text.encode():
        saved = backup(target)
    write_atomic(target, result.text, mode=0o600 if result.holds_key else 0o644)
    typer.echo(f"wrote {target}" + (" (mode 0600: it holds the key)" if result.holds_key
                                    else "") + (f"; the old file is in {saved}" if saved else ""))


@images_app.command("build")
def images_build(
    host: HostOpt = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Build only these "
                                                    "images (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if present.")] = False,
    no_model: Annotated[bool, typer.Option("--no-model", help="Skip the demo model "
                                           "volume.")] = False,
) -> None:
    """Build nginx, LiteLLM, llama.cpp, mtail (nginx's counts) and Prometheus images offline
    (debootstrap + docker build) and put the demo SmolLM2 model into the llmstack-models
    volume."""
    from .engine.client import connect
    from .engine.images import build_images, ensure_demo_model

    client = connect(host, timeout=1800)
    built = build_images(client, only=only, force=force,
                         progress=lambda m: typer.echo(m, err=True))
    if not no_model:
        ensure_demo_model(client, progress=lambda m: typer.echo(m, err=True))
    typer.echo("built: " + (", ".join(built) if built else "nothing (all images present)"))


def _stack_or_default(directory: Path | None, file: Path | None) -> Any:
    """The stack.yaml of the folder, or the starter stack when there is none."""
    from . import initialize, spec

    root = _cwd(directory)
    if file or (root / "stack.yaml").exists():
        return _load(directory, file).spec
    return spec.parse(initialize.starter())


@images_app.command("pull")
def images_pull(
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="Skip the demo model "
                                           "volume.")] = False,
) -> None:
    """Pull the upstream images of the stack (the starter stack outside a project folder)
    through the engine, each by its pinned digest, refusing a tag whose registry digest
    differs; `docker login` credentials are used. Then the demo model volume."""
    from . import pull
    from .engine.client import connect
    from .engine.images import ensure_demo_model

    stack = _stack_or_default(directory, file).with_image_source("registry")
    project = _engine(host, stack.project)
    refs = pull.stack_refs(stack, "registry")
    missing = [ref for ref, image_id in project.image_ids(refs).items() if image_id is None]
    choice = pull.Choice("registry", "llmstack images pull", stack, missing)
    pulled = pull.ensure(choice, project, lambda m: typer.echo(m, err=True))
    if not no_model and any(m.source.startswith("volume:llmstack-models/")
                            for m in stack.models):
        ensure_demo_model(connect(host), progress=lambda m: typer.echo(m, err=True),
                          image=stack.images.ref("llamacpp", "registry"))
    typer.echo("pulled: " + (", ".join(pulled) if pulled else "nothing (all present)"))


@images_app.command("save")
def images_save(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle file to write.")],
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="Leave the demo model "
                                           "out.")] = False,
) -> None:
    """Write a bundle for an air-gapped host: the stack's images as this engine has them
    (built or pulled: `images: auto` decided here) and the demo model, with checksums."""
    from . import pull
    from .engine.bundle import save
    from .engine.client import connect

    stack = _stack_or_default(directory, file)
    choice = pull.choose(stack, _engine(host, stack.project))
    typer.echo(choice.line, err=True)
    refs = pull.stack_refs(choice.spec, choice.source)
    manifest = save(connect(host, timeout=1800), refs, out, with_model=not no_model,
                    progress=lambda m: typer.echo(m, err=True))
    size = out.stat().st_size / 1e6
    typer.echo(f"wrote {out} ({size:.0f} MB): {len(manifest['images'])} image(s)"
               + (", the demo model" if manifest.get("model_wheel") else ""))


@images_app.command("load")
def images_load(
    bundle: Annotated[Path, typer.Argument(help="A file made by `llmstack images save`.")],
    host: HostOpt = None,
) -> None:
    """Check a bundle's checksums, then load its images and demo model onto the engine
    (`--host ssh://user@gpu-1` for a remote one): no registry needed."""
    from .engine.bundle import load
    from .engine.client import connect

    loaded = load(connect(host, timeout=1800), bundle, progress=lambda m: typer.echo(m, err=True))
    typer.echo("loaded: " + ", ".join(loaded))


@export_app.command("compose")
def export_compose(
    directory: DirOpt = None, file: FileOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default "
                                             "DIR/compose).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write docker-compose.yml (+ the config files it mounts) equivalent to `llmstack up`.
    Secrets go to litellm.env and config/nginx/secrets/ (0600), never into the YAML."""
    from .errors import UserError
    from .export import COMPOSE_FILE, from_project, write
    from .plan import OWN_UID

    loaded = _load(directory, file)
    target = (out or loaded.paths.root / "compose").resolve()
    if target == loaded.paths.root.resolve():
        raise UserError("--out must not be the project folder (compose's .env would replace "
                        "llmstack's .env)", "use e.g. --out compose")
    exported = from_project(loaded)
    not_owned = write(exported, target)
    if json_out:
        from .ui import emit_json
        emit_json({"compose_file": str(target / COMPOSE_FILE), "files": sorted(exported.files),
                   "not_owned": not_owned})
        return
    typer.echo(f"wrote {target / COMPOSE_FILE} and {len(exported.files) - 1} files it uses")
    if not_owned:
        typer.echo("warning: not root, so nginx's secret files could not be given to its "
                   f"user; run: sudo chown -R {OWN_UID} {target}/config/nginx/secrets",
                   err=True)
    typer.echo(f"Run it: cd {target} && docker-compose up -d")


@export_app.command("prometheus")
def export_prometheus(
    directory: DirOpt = None, file: FileOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default "
                                             "DIR/prometheus).", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write prometheus.yml scraping every metrics endpoint of the stack (LiteLLM and each
    model server, labelled with project, service, model and backend) for your own
    Prometheus, and litellm-metrics.key (0600) with the key LiteLLM wants for /metrics.
    The endpoints answer on the project's Docker network only: attach your Prometheus to it."""
    from .fsutil import write_atomic
    from .monitoring import KEY_FILE, PROMETHEUS_FILE, prometheus_config

    loaded = _load(directory, file)
    target = (out or loaded.paths.root / "prometheus").resolve()
    exported = prometheus_config(loaded.spec, loaded.keys().internal)
    target.mkdir(parents=True, exist_ok=True)
    (target / PROMETHEUS_FILE).write_text(exported.config, encoding="utf-8")
    write_atomic(target / KEY_FILE, exported.key, mode=0o600)
    if json_out:
        from .ui import emit_json
        emit_json({"config": str(target / PROMETHEUS_FILE), "key_file": str(target / KEY_FILE),
                   "network": exported.network})
        return
    typer.echo(f"wrote {target / PROMETHEUS_FILE} and {target / KEY_FILE} (0600)")
    typer.echo(f"Scrape from the stack's network: docker network connect {exported.network} "
               "YOUR-PROMETHEUS (docs/OBSERVABILITY.md)")


@export_app.command("grafana")
def export_grafana(
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write.")] = Path(
        "grafana-dashboard.json"),
) -> None:
    """Write the Grafana dashboard (per-model requests, errors, latency p50/p95, first-token
    time, in flight and queued, tokens per second, targets up, GPUs) for a Prometheus that
    scrapes the config `llmstack export prometheus` writes. Import it in Grafana."""
    import json

    from .monitoring import dashboard

    out.write_text(json.dumps(dashboard(), indent=2) + "\n", encoding="utf-8")
    typer.echo(f"wrote {out}: import it in Grafana (Dashboards > New > Import), pick your "
               "Prometheus data source")


@export_app.command("k8s")
def export_k8s(
    directory: DirOpt = None, file: FileOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default "
                                             "DIR/k8s).", show_default=False)] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Namespace of every "
                                                  "object (default: the project name).",
                                                  show_default=False)] = None,
    storage_class: Annotated[str | None, typer.Option(
        "--storage-class", help="StorageClass of the model caches (default: the cluster's "
        "default class).", show_default=False)] = None,
    service_type: Annotated[str, typer.Option(
        "--service-type", help="How clients reach the edge: LoadBalancer or NodePort.")
    ] = "LoadBalancer",
    secret_ref: Annotated[str | None, typer.Option(
        "--secret-ref", help="Use this Secret of the cluster instead of writing secret.yaml "
        "(keys: see docs/KUBERNETES.md).", show_default=False)] = None,
    cache_size: Annotated[str, typer.Option(
        "--cache-size", help="Size of each model cache volume the export creates.")] = "100Gi",
    json_out: JsonOpt = False,
) -> None:
    """Write Kubernetes manifests and a kustomization.yaml equivalent to `llmstack up`
    (apply with kubectl apply --server-side -k OUT). Secrets go to secret.yaml (0600) only."""
    from .errors import UserError
    from .kube import KUSTOMIZATION, SECRET_FILE, Options, from_project, write

    loaded = _load(directory, file)
    target = (out or loaded.paths.root / "k8s").resolve()
    if target == loaded.paths.root.resolve():
        raise UserError("--out must not be the project folder", "use e.g. -o k8s")
    options = Options(namespace=namespace or loaded.spec.project, storage_class=storage_class,
                      service_type=service_type, secret_ref=secret_ref, cache_size=cache_size)
    exported = from_project(loaded, options)
    removed = write(exported, target)
    if json_out:
        from .ui import emit_json
        emit_json({"kustomization": str(target / KUSTOMIZATION), "files": sorted(exported.files),
                   "removed": removed, "namespace": options.namespace,
                   "published_ports": exported.published})
        return
    typer.echo(f"wrote {target / KUSTOMIZATION} and {len(exported.files) - 1} files it uses")
    for name in removed:
        typer.echo(f"removed {name} (no longer in {loaded.paths.stack.name})")
    if not exported.published:
        typer.echo("note: every listener binds a loopback address, so the edge is not "
                   "published; reach it with kubectl port-forward, or set a listener's bind "
                   "to 0.0.0.0 in stack.yaml to publish it", err=True)
    if SECRET_FILE in exported.files:
        typer.echo(f"{SECRET_FILE} holds the API keys and the TLS key (0600, git-ignored)")
    typer.echo(f"Apply it: kubectl apply --server-side -k {target}")


def main() -> None:
    """Entry point: the one place that turns errors into messages and exit codes."""
    json_mode = "--json" in sys.argv
    if sys.argv[1:2] == ["up"]:
        from .quickup import try_up

        if try_up(sys.argv[1:]):  # nothing changed: answered without loading the stack
            return
    try:
        code = app(standalone_mode=False)
        # Without standalone mode click returns a raised typer.Exit(code) instead of exiting;
        # typer turns Ctrl-C into 130 the same way.
        if code == ExitCode.INTERRUPTED:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except LlmstackError as exc:
        if os.environ.get("LLMSTACK_DEBUG") and exc.__cause__ is not None:
            raise  # the engine library's own error and traceback, for a bug report
        _fail(exc.message, exc.hint, exc.exit_code, json_mode, exc.to_dict())
    # typer vendors its own click: catch typer's classes, not the `click` package's.
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("interrupted", "run the command again; `llmstack up` converges from any state",
              ExitCode.INTERRUPTED, json_mode)
    except typer.TyperException as exc:  # usage errors: bad option, unknown command
        show = getattr(exc, "show", None)
        if show:
            show()
        else:
            typer.echo(f"error: {exc.format_message()}", err=True)
        # Plain `llmstack` shows the help; anything else is a user error (exit 1).
        sys.exit(ExitCode.OK if type(exc).__name__ == "NoArgsIsHelpError" else ExitCode.CONFIG)
    except KeyboardInterrupt:
        _fail("interrupted", "run the command again; `llmstack up` converges from any state",
              ExitCode.INTERRUPTED, json_mode)
    except Exception as exc:  # a bug (engine errors arrive as EngineError): no traceback
        if os.environ.get("LLMSTACK_DEBUG"):
            raise
        _fail(f"{type(exc).__name__}: {exc}",
              "set LLMSTACK_DEBUG=1 for a traceback and report it", ExitCode.RUNTIME, json_mode)


def _fail(message: str, hint: str, code: int, json_mode: bool,
          data: dict[str, Any] | None = None) -> None:
    if json_mode:
        from .ui import emit_json
        emit_json(data or {"error": "Error", "message": message, "hint": hint})
    else:
        typer.echo(f"error: {message}", err=True)
        if hint:
            typer.echo(f"hint: {hint}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
