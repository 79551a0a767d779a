"""The `llmstack` command: parse, call the library, print. Exit codes: 0 ok, 1 user or
config error, 2 engine or runtime failure. Heavy imports happen inside commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import __version__
from .errors import LlmstackError

EPILOG = """Exit codes: 0 ok; 1 invalid input or configuration (the message names the file,
field and fix); 2 engine or runtime failure (daemon down, a service not ready).

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

DirOpt = Annotated[Path, typer.Option("--dir", "-C", help="Project folder (holds stack.yaml, "
                                      ".env, certs/, config/).", show_default=False)]
FileOpt = Annotated[Path | None, typer.Option("--file", "-f", help="Stack file (default "
                                              "DIR/stack.yaml).", show_default=False)]
HostOpt = Annotated[str | None, typer.Option("--host", "-H", help="Docker engine, e.g. "
                                             "ssh://user@gpu-1 (default: DOCKER_HOST or the "
                                             "local socket).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


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


def _engine(host: str | None, project: str) -> tuple[Any, bool]:
    from .engine.client import connect, is_local
    from .engine.containers import Project

    client = connect(host)
    return Project(client, project), is_local(client)


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
    from .spec import HOSTNAME_RE

    if profile not in ("cpu", "gpu"):
        raise UserError(f"--profile {profile!r} is not known", "use --profile cpu or gpu")
    if not HOSTNAME_RE.fullmatch(domain):
        import ipaddress
        try:
            ipaddress.ip_address(domain)
        except ValueError:
            raise UserError(f"--domain {domain!r} is not a DNS name or IP address",
                            "use e.g. --domain api.example.com") from None
    steps = do_init(_cwd(directory), domain=domain, profile=profile, force=force)
    if json_out:
        from .ui import emit_json
        emit_json({"steps": [s.to_dict() for s in steps]})
        return
    for step in steps:
        typer.echo(f"{step.action:<12} {step.path}" + (f"  ({step.note})" if step.note else ""))
    typer.echo("The API key is LITELLM_MASTER_KEY in .env (not printed). Next: llmstack up")


@app.command()
def validate(directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
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
def render(directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
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
def plan_cmd(directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
             host: HostOpt = None, json_out: JsonOpt = False) -> None:
    """Show what `up` would create, recreate, reload, remove or keep, and why."""
    from .deploy import plan_only

    loaded = _load(directory, file)
    project, _ = _engine(host, loaded.spec.project)
    actions = plan_only(loaded, project)
    if json_out:
        from .ui import emit_json
        emit_json({"actions": [a.to_dict() for a in actions]})
        return
    for a in actions:
        typer.echo(f"{a.kind:<9} {a.service:<28} {a.reason}")


@app.command()
def up(directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
       host: HostOpt = None, json_out: JsonOpt = False) -> None:
    """Render config/, start what is missing or changed, and wait until every service is
    ready. Idempotent: with no change it touches nothing."""
    import time

    from . import deploy, ui

    started = time.monotonic()
    loaded = _load(directory, file)
    project, local = _engine(host, loaded.spec.project)
    result = deploy.up(loaded, project, ui.reporter(json_out), local_engine=local)
    elapsed = time.monotonic() - started
    endpoints = _endpoints(loaded.spec)
    if json_out:
        ui.emit_json({"changed": result.changed, "seconds": round(elapsed, 2),
                      "actions": [a.to_dict() for a in result.actions],
                      "ready_seconds": result.ready_seconds, "endpoints": endpoints,
                      "key_file": str(loaded.paths.env)})
        return
    if not result.changed:
        typer.echo(f"Nothing to do: {len(result.actions)} services up to date "
                   f"({elapsed:.2f}s).")
    else:
        done = [a for a in result.actions if a.kind != "keep"]
        typer.echo(f"Stack {loaded.spec.project} is up ({len(done)} changes, {elapsed:.1f}s).")
    for name, url in endpoints.items():
        typer.echo(f"  {name:<6} {url}")
    typer.echo(f"  key    LITELLM_MASTER_KEY in {loaded.paths.env} (send it as "
               "Authorization: Bearer <key>)")


def _endpoints(spec: Any) -> dict[str, str]:
    out = {}
    lst = spec.listeners
    if lst.local.enabled:
        out["local"] = f"http://{_host(lst.local.bind, 'localhost')}:{lst.local.port}/v1"
    if lst.lan.enabled:
        out["lan"] = f"http://{_host(lst.lan.bind, '<this-host-ip>')}:{lst.lan.port}/v1"
    if lst.https.enabled:
        port = "" if lst.https.port == 443 else f":{lst.https.port}"
        out["https"] = f"https://{spec.domain}{port}/v1"
    return out


def _host(bind: str, wildcard: str) -> str:
    if bind in ("0.0.0.0", "::"):
        return wildcard
    return f"[{bind}]" if ":" in bind else bind


@app.command()
def status(directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
           host: HostOpt = None, json_out: JsonOpt = False) -> None:
    """State, health, ports, image and uptime of every service; certificate and rotation."""
    from . import deploy

    loaded = _load(directory, file)
    project, _ = _engine(host, loaded.spec.project)
    report = deploy.status(loaded, project)
    if json_out:
        from .ui import emit_json
        emit_json(report)
    else:
        typer.echo(f"{'SERVICE':<28} {'STATE':<10} {'HEALTH':<9} {'UPTIME':>8}  PORTS / IMAGE")
        for s in report["services"]:
            health = {True: "healthy", False: "unhealthy", None: "-"}[s["healthy"]]
            uptime = f"{s.get('uptime_s', 0)}s"
            extra = ", ".join(s.get("ports", [])) or s.get("image", "")
            typer.echo(f"{s['service']:<28} {s['state']:<10} {health:<9} {uptime:>8}  {extra}"
                       + (f"  ({s['note']})" if s.get("note") else ""))
        cert = report["certificate"]
        warn = "  WARNING: renew soon (llmstack init --force)" if cert["expiring_soon"] else ""
        typer.echo(f"certificate: valid until {cert['not_after']} ({cert['days_left']} days)"
                   + warn)
        if report["rotation"]:
            typer.echo(f"key rotation in progress: old key accepted until "
                       f"{report['rotation']['old_key_expires'] or 'rotate-key --finish'}")
    if not report["healthy"]:
        raise typer.Exit(2)


@app.command()
def logs(service: Annotated[str, typer.Argument(help="Service: nginx, litellm, health or "
                                                "model-<name> (see `llmstack status`).")],
         directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
         host: HostOpt = None,
         follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
         tail: Annotated[int, typer.Option("--tail", "-n", help="Lines from the end.")] = 100,
         ) -> None:
    """Print a service's logs (stdout and stderr of its container)."""
    from . import names

    loaded = _load(directory, file)
    project, _ = _engine(host, loaded.spec.project)
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
def down(directory: DirOpt = None, file: FileOpt = None,  # type: ignore[assignment]
         host: HostOpt = None,
         volumes: Annotated[bool, typer.Option("--volumes", help="Also remove the project's "
                                               "config volumes.")] = False,
         json_out: JsonOpt = False) -> None:
    """Remove the stack's containers and network. Keeps .env, certs/ and model volumes."""
    loaded = _load(directory, file)
    project, _ = _engine(host, loaded.spec.project)
    removed = project.down(volumes=volumes)
    if json_out:
        from .ui import emit_json
        emit_json({"removed": removed})
        return
    typer.echo(f"Removed {len(removed)} containers" + (" and config volumes" if volumes else "")
               + f" of {loaded.spec.project}; .env, certs/ and models are kept.")


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


def main() -> None:
    """Entry point: the one place that turns errors into messages and exit codes."""
    import click

    json_mode = "--json" in sys.argv
    try:
        app(standalone_mode=False)
    except LlmstackError as exc:
        _fail(exc.message, exc.hint, exc.exit_code, json_mode, exc.to_dict())
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", "run the command again; `llmstack up` converges from any state",
              130, json_mode)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1)
    except KeyboardInterrupt:
        _fail("interrupted", "run the command again; `llmstack up` converges from any state",
              130, json_mode)
    except Exception as exc:  # an engine error not wrapped yet: no traceback for users
        if os.environ.get("LLMSTACK_DEBUG"):
            raise
        _engine_exc = type(exc).__module__.startswith(("docker", "requests", "urllib3"))
        _fail(f"{type(exc).__name__}: {exc}",
              "set LLMSTACK_DEBUG=1 for a traceback and report it" if not _engine_exc else
              "the Docker engine refused the operation; `llmstack doctor` checks the host",
              2, json_mode)


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
