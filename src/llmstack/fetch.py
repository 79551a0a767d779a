"""`hf:` sources fetched onto the engine's host before the models start (`up`).

For each hf: source: when stack.lock pins it and the cache volume holds its completion marker,
nothing happens (one stat through the engine, no network). Otherwise a short-lived fetch
container runs `hf_fetch.py` (huggingface_hub) in LiteLLM's image on the engine's host, so the
bytes go from the Hub (or HF_ENDPOINT, a mirror) straight into the cache volume there, never
through this machine; the commit it resolved to and the files' checksums go into stack.lock,
and later `up`s, on any host, fetch exactly that commit.

HF_TOKEN and HF_ENDPOINT come from `.env` (else from llmstack's own environment) and reach the
fetch container's environment only: never a model container, config/, a label or the output.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from . import hfcache, lock, names, secrets
from .backends.base import Mount
from .engine.api import Task
from .errors import FetchError, LlmstackError, SourceAccessError, UserError

if TYPE_CHECKING:
    from .deploy import Reporter
    from .engine.api import Engine
    from .project import Loaded
    from .spec import ModelSpec, StackSpec

TOKEN, ENDPOINT = "HF_TOKEN", "HF_ENDPOINT"
DEFAULT_ENDPOINT = "https://huggingface.co"
ENDPOINT_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?:/[^\s]*)?")
TAIL_LINES = 12


def script(name: str = "hf_fetch.py") -> str:
    """The text of a script that runs in a task container (`python3 -c`)."""
    return resources.files("llmstack").joinpath(name).read_text(encoding="utf-8")


def task_image(spec: StackSpec) -> str:
    """The image of the fetch and pull containers: LiteLLM's, as for the health service (it
    has python3, and huggingface_hub, which its tokenizers package depends on)."""
    return spec.images.for_key("litellm")


def hf_models(spec: StackSpec) -> list[ModelSpec]:
    """The models with an hf: source, one per source (two models may serve the same one)."""
    seen: dict[str, ModelSpec] = {}
    for model in spec.models:
        if model.parsed_source.kind == "hf":
            seen.setdefault(model.source, model)
    return list(seen.values())


def hub_settings(env_file_values: Mapping[str, str], environ: Mapping[str, str]
                 ) -> dict[str, str]:
    """HF_TOKEN and HF_ENDPOINT for the fetch container: `.env` first, then this process's
    environment (where huggingface_hub itself reads them)."""
    out = {name: value for name in (TOKEN, ENDPOINT)
           if (value := env_file_values.get(name) or environ.get(name, ""))}
    endpoint = out.get(ENDPOINT)
    if endpoint is not None:
        if not ENDPOINT_RE.fullmatch(endpoint):
            raise UserError(f"{ENDPOINT} is not an http(s) URL (got {endpoint!r})",
                            f"write e.g. {ENDPOINT}=https://hf-mirror.example.com in .env, "
                            "or remove it to use huggingface.co")
        out[ENDPOINT] = endpoint.rstrip("/")
    return out


def fetch_task(spec: StackSpec, model: ModelSpec, revision: str,
               settings: Mapping[str, str]) -> Task:
    """The fetch container of `model`'s source at `revision` (a branch, tag or commit)."""
    src = model.parsed_source
    request = {"repo": src.location, "file": src.path, "revision": revision,
               "marker": hfcache.marker(src.location, hfcache.COMMIT_PLACEHOLDER, src.path)}
    env = {"HF_HOME": hfcache.MOUNT, "HOME": "/tmp", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONDONTWRITEBYTECODE": "1", **settings}
    return Task(name=f"fetch-{names.model_service(model.name)}", image=task_image(spec),
                entrypoint=["python3"],
                command=["-c", script(), json.dumps(request, sort_keys=True)], env=env,
                mounts=[Mount(hfcache.VOLUME, hfcache.MOUNT, read_only=False)],
                secret_env=(TOKEN,) if TOKEN in settings else ())


# --- what the fetch container says, for a person ---------------------------------------------


def human(size: float) -> str:
    """Bytes as a person reads them (decimal units, as the Hub shows sizes)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def progress_detail(done: int, total: int, rate: float | None) -> str:
    """'45.1 MB / 98.4 MB (46%), 12.3 MB/s, ETA 4s'."""
    text = f"{human(done)} / {human(total)}"
    if total:
        text += f" ({100 * done // total}%)"
    if rate:
        text += f", {human(rate)}/s"
        if total > done:
            text += f", ETA {max(total - done, 0) / rate:.0f}s"
    return text


@dataclass
class _Run:
    """What one fetch container said so far."""

    service: str
    report: Reporter
    plan: dict[str, Any] = field(default_factory=dict)
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    tail: list[str] = field(default_factory=list)
    first: tuple[float, int] | None = None  # (monotonic time, bytes) of the first progress

    def line(self, text: str) -> None:
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            if text.strip():
                self.tail = [*self.tail, text.rstrip()[:300]][-TAIL_LINES:]
            return
        kind = event["event"]
        if kind == "plan":
            self.plan = event
            self.report.event(self.service, "fetching",
                              f"commit {str(event.get('commit'))[:12]}: "
                              f"{human(event.get('total') or 0)} in {event.get('files')} file(s), "
                              f"{human(event.get('need') or 0)} to download, "
                              f"{human(event.get('free') or 0)} free")
        elif kind == "progress":
            now, done = time.monotonic(), int(event.get("bytes") or 0)
            self.first = self.first or (now, done)
            rate = (done - self.first[1]) / (now - self.first[0]) \
                if now > self.first[0] else None
            self.report.event(self.service, "downloading",
                              progress_detail(done, int(event.get("total") or 0), rate))
        elif kind == "verifying":
            self.report.event(self.service, "verifying", "sha256 of every file")
        elif kind == "done":
            self.done = event
        elif kind == "error":
            self.error = event


def explain(model: ModelSpec, error: Mapping[str, Any] | None, code: int, tail: list[str],
            settings: Mapping[str, str]) -> LlmstackError:
    """The error a failed fetch stands for, naming the model, the source and the fix."""
    src = model.parsed_source
    endpoint = settings.get(ENDPOINT, DEFAULT_ENDPOINT)
    where = f"model {model.name!r} (source: {model.source})"
    kind = (error or {}).get("kind", "")
    status = (error or {}).get("status")
    said = (error or {}).get("message") or " | ".join(tail) or "(no output)"
    token_fix = (f"create a read token at {endpoint}/settings/tokens and put {TOKEN}=hf_... "
                 "in .env (mode 0600); it reaches only the fetch container")
    if kind in ("gated", "unauthorized"):
        has = TOKEN in settings
        what = ("the Hub refused the token in HF_TOKEN" if has and kind == "unauthorized" else
                f"{src.location} is gated and the Hub refused "
                + ("HF_TOKEN for it" if has else "access without a token"))
        return SourceAccessError(f"{where}: {what} (HTTP {status})",
                                 f"accept the repository's terms at {endpoint}/{src.location} "
                                 f"with your account, then {token_fix}" if kind == "gated" else
                                 token_fix)
    if kind == "not_found":
        return SourceAccessError(f"{where}: repository {src.location} was not found on "
                                 f"{endpoint} (HTTP {status})",
                                 "check ORG/REPO in stack.yaml; a private repository needs a "
                                 f"token: {token_fix}")
    if kind == "revision":
        return SourceAccessError(f"{where}: {src.location} has no revision "
                                 f"{src.revision or 'main'!r}",
                                 "write an existing branch, tag or commit after @, or drop it")
    if kind == "file":
        return SourceAccessError(f"{where}: {src.location} has no file {src.path!r} at "
                                 f"revision {src.revision or 'main'!r}",
                                 f"check the name in the repository's file list "
                                 f"({endpoint}/{src.location}/tree/main)")
    if kind == "network":
        return FetchError(f"{where}: the engine's host cannot reach {endpoint}: {said}",
                          "check the host's network, DNS and proxy; for a mirror set "
                          f"{ENDPOINT} in .env; then run `llmstack up` again (downloads resume)")
    if kind == "endpoint":
        return FetchError(f"{where}: {endpoint} does not answer as a Hugging Face Hub: {said}",
                          f"check {ENDPOINT} in .env (a mirror must serve the Hub's API)")
    if kind == "disk":
        return FetchError(f"{where}: {said}", "free space on the engine's host (docker image "
                          "prune, old models) and run `llmstack up` again")
    if kind == "checksum":
        return FetchError(f"{where}: {said}", "run `llmstack up` again to download it again; "
                          "if it repeats, the endpoint or a proxy alters the file")
    return FetchError(f"{where}: the fetch failed (exit {code}): {said}",
                      "run `llmstack up` again (downloads resume); if it repeats, report it")


# --- what `plan` shows -------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceState:
    """One hf: source as `plan` reports it: its pin (None before the first fetch) and whether
    the engine's cache has it (None when not looked for: no image to look with)."""

    model: str
    source: str
    commit: str | None = None
    size: int | None = None
    cached: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "commit": self.commit,
                "size": self.size, "cached": self.cached,
                "download": 0 if self.cached else self.size}

    def line(self) -> str:
        if self.commit is None:
            what = "not pinned yet: `up` fetches it (size known then)"
        elif self.cached:
            what = f"pinned at {self.commit[:12]}, {human(self.size or 0)}, in the cache"
        elif self.cached is None:
            what = f"pinned at {self.commit[:12]}, {human(self.size or 0)}"
        else:
            what = f"pinned at {self.commit[:12]}: `up` downloads {human(self.size or 0)}"
        return f"  {self.model:<20} {self.source}: {what}"


def cached(engine: Engine, image: str, repo: str, pin: lock.Locked) -> bool:
    """Whether the fetch of `pin` completed in the engine's cache volume (its marker)."""
    marker = hfcache.marker(repo, pin.commit, pin.file)
    return engine.stat_source(image, "volume", hfcache.VOLUME, marker).exists


def states(loaded: Loaded, engine: Engine) -> list[SourceState]:
    """Every hf: source of the stack: pinned or not, and in the engine's cache or not."""
    models = hf_models(loaded.spec)
    if not models:
        return []
    pins = lock.read(loaded.paths.lock)
    image = task_image(loaded.spec)
    can_look = engine.image_ids([image]).get(image) is not None
    out = []
    for model in models:
        pin = pins.get(model.source)
        if pin is None:
            out.append(SourceState(model.name, model.source))
            continue
        out.append(SourceState(model.name, model.source, pin.commit, pin.size,
                               cached(engine, image, pin.repo, pin) if can_look else None))
    return out


# --- the step of `up` ----------------------------------------------------------------------------


def run(engine: Engine, task: Task, model: ModelSpec, report: Reporter,
        settings: Mapping[str, str]) -> dict[str, Any]:
    """Run one fetch container; its `done` event, or the error it stands for."""
    state = _Run(names.model_service(model.name), report)
    code = engine.run_task(task, state.line)
    if code == 0 and state.done is not None:
        return state.done
    raise explain(model, state.error, code, state.tail, settings)


def ensure(loaded: Loaded, engine: Engine, report: Reporter,
           environ: Mapping[str, str] | None = None) -> dict[str, lock.Locked]:
    """Every hf: source of the stack in the cache volume on the engine's host, at the commit
    stack.lock pins (fetched and pinned when it pins none); the pins, also written to
    stack.lock (entries of sources no longer in stack.yaml are dropped)."""
    spec = loaded.spec
    models = hf_models(spec)
    pins = {s: p for s, p in lock.read(loaded.paths.lock).items()
            if s in {m.source for m in models}}
    if not models:
        lock.write(loaded.paths.lock, pins)
        return pins
    image = task_image(spec)
    if engine.image_ids([image]).get(image) is None:
        raise FetchError(f"image {image} (it runs the model fetch) is missing on the engine",
                         "build it with `llmstack images build`")
    engine.ensure_network()
    settings: dict[str, str] | None = None
    for model in models:
        src = model.parsed_source
        service = names.model_service(model.name)
        pin = pins.get(model.source)
        if pin is not None and cached(engine, image, src.location, pin):
            report.event(service, "cached", f"{src.ref} at {pin.commit[:12]} "
                         f"({human(pin.size)})")
            continue
        if settings is None:
            env_file = loaded.paths.env
            settings = hub_settings(secrets.read_env(env_file) if env_file.exists() else {},
                                    os.environ if environ is None else environ)
        revision = pin.commit if pin else (src.revision or "main")
        done = run(engine, fetch_task(spec, model, revision, settings), model, report, settings)
        files = tuple(lock.LockedFile(str(f["name"]), int(f["size"]), str(f["sha256"]))
                      for f in done.get("files", []))
        pins[model.source] = lock.Locked(src.location, src.path, src.revision or "main",
                                         str(done["commit"]), files)
        report.event(service, "fetched", f"{human(done.get('downloaded') or 0)} in "
                     f"{done.get('seconds')}s, commit {str(done['commit'])[:12]}")
        lock.write(loaded.paths.lock, pins)  # each one at once: an interrupt keeps it
    lock.write(loaded.paths.lock, pins)
    return pins


# --- ollama: sources, pulled through Ollama's API once its container runs ------------------------


def ollama_models(spec: StackSpec) -> list[ModelSpec]:
    return [m for m in spec.models if m.parsed_source.kind == "ollama"]


def ollama_url(project: str, model: ModelSpec) -> str:
    """The model's Ollama server as seen from the project's network."""
    from .backends import BACKENDS

    service = names.model_service(model.name)
    return f"http://{names.container(project, service)}:{BACKENDS[model.backend].port}"


def pull_task(spec: StackSpec, model: ModelSpec) -> Task:
    """A container on the project's network running `ollama_pull.py` against the model's
    Ollama (the pull itself is Ollama's: it downloads into its own volume)."""
    return Task(name=f"pull-{names.model_service(model.name)}", image=task_image(spec),
                entrypoint=["python3"],
                command=["-c", script("ollama_pull.py"), ollama_url(spec.project, model),
                         model.parsed_source.path],
                env={"HOME": "/tmp", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"})


def explain_pull(model: ModelSpec, error: Mapping[str, Any] | None, code: int,
                 tail: list[str]) -> LlmstackError:
    tag = model.parsed_source.path
    where = f"model {model.name!r} (source: {model.source})"
    said = (error or {}).get("message") or " | ".join(tail) or "(no output)"
    kind = (error or {}).get("kind", "")
    if kind == "not_found":
        return SourceAccessError(f"{where}: Ollama's registry has no model {tag!r}: {said}",
                                 "check the name and tag at https://ollama.com/library and "
                                 "write ollama:NAME:TAG")
    if kind == "network":
        return FetchError(f"{where}: Ollama could not download {tag!r}: {said}",
                          "check the engine host's network, DNS and proxy (Ollama pulls from "
                          "its registry); then run `llmstack up` again")
    return FetchError(f"{where}: pulling {tag!r} failed (exit {code}): {said}",
                      f"`llmstack logs {names.model_service(model.name)}`; then run "
                      "`llmstack up` again")


def pull_ollama(spec: StackSpec, engine: Engine, report: Reporter) -> None:
    """Every ollama: tag of the stack in its running Ollama (pulled when missing)."""
    for model in ollama_models(spec):
        service = names.model_service(model.name)
        state = _Run(service, report)
        code = engine.run_task(pull_task(spec, model), state.line)
        if code != 0 or state.done is None:
            raise explain_pull(model, state.error, code, state.tail)
        if state.done.get("pulled"):
            report.event(service, "pulled", f"{model.parsed_source.path}: "
                         f"{human(state.done.get('downloaded') or 0)} in "
                         f"{state.done.get('seconds')}s")
        else:
            report.event(service, "present", model.parsed_source.path)
