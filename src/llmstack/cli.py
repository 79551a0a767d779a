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
images_app = typer.Typer(help="Build the images the default stack needs (no registry needed).",
                         no_args_is_help=True)
app.add_typer(images_app, name="images")
export_app = typer.Typer(help="Export the stack for other deployment tools.",
                         no_args_is_help=True)
app.add_typer(export_app, name="export")

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
    loaded = _load(directory, file)
    if json_out:
        from .ui import emit_json
        emit_json({"valid": True, "project": loaded.spec.project,
                   "models": [m.name for m in loaded.spec.models]})
        return
    names = ", ".join(n for m in loaded.spec.models for n in m.public_names)
    typer.echo(f"{file or loaded.paths.stack}: valid (models: {names})")


@app.command()
def render(directory: DirOpt = None, file: FileOpt = None,
           stdout: Annotated[bool, typer.Option("--stdout", help="Print instead of writing "
                                                "config/.")] = False) -> None:
    """Render config/ (nginx.conf, litellm.yaml, health.json) from stack.yaml."""
    from .project import write_config

    loaded = _load(directory, file)
    if stdout:
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
             take_over: TakeOverOpt = False) -> None:
    """Show what `up` would create, recreate, reload, remove or keep, and why."""
    from .checks import exit_code, failing, finding_lines
    from .deploy import plan_only
    from .doctor import gpu_plan
    from .gpu import budget_lines

    loaded = _load(directory, file)
    project = _owned_engine(host, loaded, create=False)
    actions = plan_only(loaded, project, take_over)
    # Models with GPUs: the host's real GPUs (nvidia-smi via the engine) and a budget per GPU.
    gpu_findings, budget = gpu_plan(project, loaded.spec)
    fails = failing(gpu_findings)
    code = exit_code(gpu_findings)
    if json_out:
        from .ui import emit_json
        out: dict[str, Any] = {"actions": [a.to_dict() for a in actions]}
        if gpu_findings:
            out["gpu"] = {**(budget.to_dict() if budget else {}),
                          "findings": [f.to_dict() for f in gpu_findings]}
        emit_json(out)
        raise typer.Exit(code)
    from .plan import UPDATE_WHY

    for a in actions:
        typer.echo(f"{a.kind:<9} {a.service:<28} {a.reason}")
        if a.how:
            typer.echo(f"{'':<9} {'':<28} {UPDATE_WHY[a.how]}")
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
       take_over: TakeOverOpt = False) -> None:
    """Render config/, start what is missing or changed, and wait until every service is
    ready. Idempotent: with no change it touches nothing."""
    import time

    from . import deploy, ui

    started = time.monotonic()
    loaded = _load(directory, file)
    project = _owned_engine(host, loaded, create=True)
    result = deploy.up(loaded, project, ui.reporter(json_out), local_engine=project.is_local(),
                       take_over=take_over)
    elapsed = time.monotonic() - started
    endpoints = _endpoints(loaded.spec)
    if json_out:
        ui.emit_json({"changed": result.changed, "seconds": round(elapsed, 2),
                      "revision": result.revision,
                      "actions": [a.to_dict() for a in result.actions],
                      "ready_seconds": result.ready_seconds, "endpoints": endpoints,
                      "key_file": str(loaded.paths.env)})
        return
    if not result.changed:
        typer.echo(f"Nothing to do: {len(result.actions)} services up to date "
                   f"({elapsed:.2f}s).")
    else:
        done = [a for a in result.actions if a.kind != "keep"]
        typer.echo(f"Stack {loaded.spec.project} is up ({len(done)} changes, {elapsed:.1f}s; "
                   f"revision {result.revision}).")
    for name, url in endpoints.items():
        typer.echo(f"  {name:<6} {url}")
    typer.echo(f"  key    LITELLM_MASTER_KEY in {loaded.paths.env} (send it as "
               "Authorization: Bearer <key>)")


@app.command()
def history(directory: DirOpt = None, file: FileOpt = None,
            host: HostOpt = None, json_out: JsonOpt = False) -> None:
    """The revisions `up` recorded on the engine (newest last): number, time, digest of the
    containers, models. `llmstack rollback [REVISION]` returns the stack to one."""
    from . import history as hist

    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)
    revisions = hist.load_all(project, loaded.spec.images.litellm)
    if json_out:
        from .ui import emit_json
        emit_json({"revisions": [r.to_dict() for r in revisions]})
        return
    if not revisions:
        typer.echo("No revision recorded yet: each `llmstack up` that changes the stack "
                   "records one.")
        return
    typer.echo(f"{'REVISION':<9} {'CREATED':<26} {'DIGEST':<17} MODELS")
    for r in revisions:
        mark = "  (latest)" if r is revisions[-1] else ""
        typer.echo(f"{r.number:<9} {r.created:<26} {r.digest:<17} {', '.join(r.models())}"
                   + mark)


@app.command()
def rollback(
    revision: Annotated[int | None, typer.Argument(help="Revision to return to (default: the "
                                                   "one before the latest; see `llmstack "
                                                   "history`).", show_default=False)] = None,
    directory: DirOpt = None, file: FileOpt = None, host: HostOpt = None,
    json_out: JsonOpt = False, take_over: TakeOverOpt = False,
) -> None:
    """Return the running stack to a recorded revision, with `up`'s rules (start-first
    changes, no failed request; a change that fails is rolled back). stack.yaml is not
    edited: the next `llmstack up` applies it again."""
    import tempfile
    import time

    from . import deploy, ui
    from . import history as hist
    from .project import load

    started = time.monotonic()
    loaded = _load(directory, file)
    project = _owned_engine(host, loaded, create=True)
    deploy.check_owner(project, take_over)
    target = hist.pick(hist.load_all(project, loaded.spec.images.litellm), revision)
    with tempfile.TemporaryDirectory(prefix="llmstack-rollback-") as tmp:
        # Named stack.yaml, so the rendered files are byte for byte those of that revision.
        path = Path(tmp) / "stack.yaml"
        path.write_text(target.stack_yaml, encoding="utf-8")
        old = load(loaded.paths.root, path)
        result = deploy.up(old, project, ui.reporter(json_out), local_engine=project.is_local(),
                           take_over=take_over)
    elapsed = time.monotonic() - started
    if json_out:
        ui.emit_json({"rolled_back_to": target.number, "revision": result.revision,
                      "changed": result.changed, "seconds": round(elapsed, 2),
                      "actions": [a.to_dict() for a in result.actions]})
        return
    done = [a for a in result.actions if a.kind != "keep"]
    typer.echo(f"Stack {old.spec.project} runs revision {target.number} again ({len(done)} "
               f"changes, {elapsed:.1f}s" + (f"; recorded as revision {result.revision}"
                                             if result.changed else "") + ").")
    typer.echo("stack.yaml is unchanged: the next `llmstack up` applies it again.")


def _endpoints(spec: Any) -> dict[str, str]:
    from .spec import url_host

    out = {}
    lst = spec.listeners
    if lst.local.enabled:
        out["local"] = f"http://{_host(lst.local.bind, 'localhost')}:{lst.local.port}/v1"
    if lst.lan.enabled:
        out["lan"] = f"http://{_host(lst.lan.bind, '<this-host-ip>')}:{lst.lan.port}/v1"
    if lst.https.enabled:
        port = "" if lst.https.port == 443 else f":{lst.https.port}"
        out["https"] = f"https://{url_host(spec.domain)}{port}/v1"
    return out


def _host(bind: str, wildcard: str) -> str:
    from .spec import url_host

    if bind in ("0.0.0.0", "::"):
        return wildcard
    return url_host(bind)


@app.command()
def status(directory: DirOpt = None, file: FileOpt = None,
           host: HostOpt = None, json_out: JsonOpt = False) -> None:
    """State, health, ports, image and uptime of every service; certificate and rotation."""
    from . import deploy

    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)
    report = deploy.status(loaded, project)
    if json_out:
        from .ui import emit_json
        emit_json(report.to_dict())
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
    if not report.healthy:
        raise typer.Exit(ExitCode.RUNTIME)


@app.command()
def logs(service: Annotated[str, typer.Argument(help="Service: nginx, litellm, health or "
                                                "model-<name> (see `llmstack status`).")],
         directory: DirOpt = None, file: FileOpt = None,
         host: HostOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
         tail: Annotated[int, typer.Option("--tail", "-n", help="Lines from the end.")] = 100,
         ) -> None:
    """Print a service's logs (stdout and stderr of its container)."""
    from . import names

    loaded = _load(directory, file)
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
         json_out: JsonOpt = False, take_over: TakeOverOpt = False) -> None:
    """Remove the stack's containers and network. Keeps .env, certs/ and model volumes."""
    from .deploy import check_owner

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
               show_default=False)] = None) -> None:
    """Preflight of the target host and the project: engine and version, clock skew, GPU
    runtime, GPUs, free memory and the per-GPU budget, disk on the engine's data root, ports,
    images, model files, .env mode, certificate. Each finding: ok/warn/fail with a fix.
    Exit 0 when nothing blocks; 1 when stack.yaml/.env/certs must change; 2 when the
    engine or host must (2 wins). Works without stack.yaml (host checks only)."""
    from . import doctor as doc
    from .checks import finding_lines

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
           ) -> None:
    """End-to-end check of the live stack through its real edge, as a client: TLS against
    certs/ca.crt, GET /health, /v1/models lists the stack's models, a streaming chat (time to
    first token), embeddings (dimension), a wrong key refused with 401, the rate limit
    answering 429. It connects to the engine's host (127.0.0.1 for a local engine, HOST of
    ssh://user@HOST) unless --address says otherwise. Exit 0 only when every check passes,
    2 otherwise."""
    from . import verify as ver
    from .engine.client import describe_target, engine_address

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
    json_out: JsonOpt = False,
) -> None:
    """New client key (LITELLM_MASTER_KEY in .env) on the running stack, without restarting
    anything: nginx reloads gracefully, in-flight requests and streams finish. The old .env is
    backed up (0600). A failed rotation leaves the old key working and .env unchanged."""
    import time

    from . import rotate

    started = time.monotonic()
    seconds = rotate.parse_grace(grace)
    loaded = _load(directory, file)
    project = _engine(host, loaded.spec.project)

    def progress(message: str) -> None:
        typer.echo(f"rotate-key: {message}", err=True)

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


@images_app.command("build")
def images_build(
    host: HostOpt = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="Build only these "
                                                    "images (repeatable).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if present.")] = False,
    no_model: Annotated[bool, typer.Option("--no-model", help="Skip the demo model "
                                           "volume.")] = False,
) -> None:
    """Build nginx, LiteLLM and llama.cpp images offline (debootstrap + docker build) and
    put the demo SmolLM2 model into the llmstack-models volume."""
    from .engine.client import connect
    from .engine.images import build_images, ensure_demo_model

    client = connect(host, timeout=1800)
    built = build_images(client, only=only, force=force,
                         progress=lambda m: typer.echo(m, err=True))
    if not no_model:
        ensure_demo_model(client, progress=lambda m: typer.echo(m, err=True))
    typer.echo("built: " + (", ".join(built) if built else "nothing (all images present)"))


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


def main() -> None:
    """Entry point: the one place that turns errors into messages and exit codes."""
    json_mode = "--json" in sys.argv
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
