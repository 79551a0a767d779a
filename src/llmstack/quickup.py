"""The no-change `up` fast path: when nothing can have changed, answer without the full path.

After an `up` that left the stack converged on the local engine, `deploy.remember` writes
RECORD_FILE in the stack folder: a digest of every input (stack file, stack.lock, .env,
.keys.json, .llmstack-id, certs/, config/, the installed llmstack's files, the engine
address), the first moment something time-based changes what `up` renders (a key's expiry or
grace end, the certificate's end), the id, image id and state of every container it left,
the id each image reference of the stack resolves to, and the output to replay.

The next `up` (plain: only --dir, --file, --json) takes the fast path when all of these hold:
the digest matches, that moment has not come, the engine is the local unix socket (no --host,
no other context), the project's containers are exactly the recorded ones (same ids: none
recreated, added or removed by hand), each running, not unhealthy, on its recorded image, and
every image reference still resolves to its recorded id (a rebuilt or re-pulled tag, or
`images: auto` that would now choose another source, falls back). Then it prints what the
full path would have printed; anything else, and any error, takes the full path. Stacks with
hf: or ollama: sources always take the full path (it checks their files on the engine).

This module imports only the standard library (and names.py): it runs before the CLI loads
pydantic or the Docker SDK. The decisions (`local_reason`, `engine_reason`) are pure.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from . import __version__, names

RECORD_FILE = ".llmstack-up.json"
FORMAT = 1
LOCAL_SOCKET = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Args:
    """A plain `llmstack up`: where its stack is and whether it prints JSON."""

    root: Path
    stack: Path
    json: bool


def parse_args(argv: list[str], cwd: Path) -> Args | None:
    """`up` with only --dir/-C, --file/-f and --json (as the CLI resolves them); None for
    anything else (--host, --hosts, --take-over, --help, ...): those take the full path."""
    if not argv or argv[0] != "up":
        return None
    values: dict[str, str] = {}
    json_out = False
    rest, i = argv[1:], 0
    while i < len(rest):
        arg = rest[i]
        if arg == "--json":
            json_out, i = True, i + 1
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        key = {"--dir": "dir", "-C": "dir", "--file": "file", "-f": "file"}.get(name)
        if key is None or key in values:
            return None
        if not eq:
            if i + 1 >= len(rest) or rest[i + 1].startswith("-"):
                return None
            value, i = rest[i + 1], i + 2
        else:
            i += 1
        if not value:
            return None
        values[key] = value
    root = (cwd / values["dir"]).resolve() if "dir" in values else cwd.resolve()
    stack = (cwd / values["file"]).resolve() if "file" in values else root / "stack.yaml"
    return Args(root, stack, json_out)


def engine_url(environ: dict[str, str] | os._Environ[str], home: Path) -> str | None:
    """The engine a plain `up` talks to, as engine.client.resolve_target finds it (DOCKER_HOST,
    then the Docker context, then the local socket); None when a context other than the
    default is in use (its address is not read here)."""
    if environ.get("DOCKER_HOST"):
        return environ["DOCKER_HOST"]
    context = environ.get("DOCKER_CONTEXT")
    if not context:
        config = Path(environ.get("DOCKER_CONFIG") or home / ".docker") / "config.json"
        try:
            context = json.loads(config.read_text(encoding="utf-8")).get("currentContext")
        except FileNotFoundError:
            context = None
        except (OSError, ValueError, AttributeError):
            return None
    if context and context != "default":
        return None
    return LOCAL_SOCKET


def code_stamp() -> str:
    """The installed llmstack (its files' names, sizes and times) and Python: a new version or
    an edited template changes it."""
    top = Path(__file__).resolve().parent
    entries = [__version__, sys.version, sys.executable]
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            st = os.stat(os.path.join(folder, name))
            entries.append(f"{os.path.join(folder, name)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()


def _add_file(h: Any, path: Path) -> None:
    st = path.stat()
    h.update(f"{path}\0{st.st_mode:o}\0{st.st_size}\0".encode())
    h.update(path.read_bytes())


def digest(inputs: list[str], engine: str) -> str:
    """One digest of the input files and folders (names, modes, bytes; missing ones count),
    the engine address and `code_stamp`."""
    h = hashlib.sha256(f"{FORMAT}\0{engine}\0{code_stamp()}\0".encode())
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            h.update(f"dir {path}\0".encode())
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    _add_file(h, Path(folder) / name)
        elif path.is_file():
            _add_file(h, path)
        else:
            h.update(f"missing {path}\0".encode())
    return h.hexdigest()


# --- the decisions (pure) --------------------------------------------------------------------


def local_reason(record: dict[str, Any], args: Args, engine: str | None, now_digest: str,
                 now: float) -> str:
    """Why the record cannot answer this `up` from the folder alone ("" when it can)."""
    if record.get("format") != FORMAT:
        return "no record of a converged `up` in this format"
    if record.get("stack") != str(args.stack):
        return "the last converged `up` used another stack file"
    if engine is None or not engine.startswith("unix://"):
        return "the engine is not the local socket"
    if engine != record.get("engine"):
        return "the engine differs from the last converged `up`'s"
    until = record.get("valid_until")
    if until is not None and now >= float(until):
        return "a key's expiry or grace, or the certificate, ended since"
    if now_digest != record.get("digest"):
        return "an input changed (stack file, lock, keys, certs, config/ or llmstack itself)"
    return ""


def engine_reason(record: dict[str, Any], containers: list[dict[str, Any]],
                  image_ids: dict[str, str | None]) -> str:
    """Why the engine's state differs from the recorded converged one ("" when it does not):
    `containers` is the engine's container list of the project, `image_ids` what each
    recorded image reference resolves to now."""
    want: dict[str, dict[str, str]] = record["containers"]
    have = {str(c.get("Id")): c for c in containers}
    if set(have) != set(want):
        return "containers were created, recreated or removed since"
    for cid, expected in want.items():
        c = have[cid]
        name = expected.get("name", cid[:12])
        if c.get("State") != "running":
            return f"{name} is {c.get('State')}"
        if "(unhealthy)" in str(c.get("Status", "")):
            return f"{name} is unhealthy"
        if c.get("ImageID") != expected.get("image_id"):
            return f"{name} runs another image"
    for ref, image_id in record["images"].items():
        if image_ids.get(ref) != image_id:
            return f"image {ref} was rebuilt, pulled or removed"
    return ""


# --- output, shared with the full path -------------------------------------------------------


def up_document(changed: bool, seconds: float, revision: int | None,
                actions: list[dict[str, Any]], ready_seconds: dict[str, float],
                endpoints: dict[str, str], key_file: str, fast: bool) -> dict[str, Any]:
    """`up --json` (docs/CI.md)."""
    return {"changed": changed, "seconds": round(seconds, 2), "revision": revision,
            "actions": actions, "ready_seconds": ready_seconds, "endpoints": endpoints,
            "key_file": key_file, "fast": fast}


def endpoint_lines(endpoints: dict[str, str], key_file: str) -> list[str]:
    lines = [f"  {name:<6} {url}" for name, url in endpoints.items()]
    lines.append(f"  key    LITELLM_MASTER_KEY in {key_file} (send it as "
                 "Authorization: Bearer <key>)")
    return lines


def noop_lines(services: int, seconds: float, endpoints: dict[str, str],
               key_file: str) -> list[str]:
    return [f"Nothing to do: {services} services up to date ({seconds:.2f}s).",
            *endpoint_lines(endpoints, key_file)]


# --- the fast path ----------------------------------------------------------------------------


def record_path(root: Path) -> Path:
    return root / RECORD_FILE


def forget(root: Path) -> None:
    """Drop the record (every full-path `up` does first: only success writes it again)."""
    record_path(root).unlink(missing_ok=True)


def write(root: Path, record: dict[str, Any]) -> None:
    target = record_path(root)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def try_up(argv: list[str], stdout: TextIO | None = None, stderr: TextIO | None = None
           ) -> bool:
    """Answer a plain `up` from the record when nothing changed; False: take the full path
    (with LLMSTACK_DEBUG set, the reason goes to stderr)."""
    started = time.monotonic()
    out, err = stdout or sys.stdout, stderr or sys.stderr
    reason = ""
    try:
        reason, record, args = _check(argv)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason:
        if os.environ.get("LLMSTACK_DEBUG") and reason != "-":
            err.write(f"up: full path ({reason})\n")
        return False
    output = record["output"]
    endpoints = {str(name): str(url) for name, url in output["endpoints"]}
    seconds = time.monotonic() - started
    for note in output["notes"]:
        err.write(note + "\n")
    if args.json:
        out.write(json.dumps(up_document(False, seconds, None, output["actions"], {},
                                         endpoints, output["key_file"], True),
                             indent=2, sort_keys=True) + "\n")
    else:
        out.write("\n".join(noop_lines(len(output["actions"]), seconds, endpoints,
                                       output["key_file"])) + "\n")
    out.flush()
    return True


def _check(argv: list[str]) -> tuple[str, Any, Any]:
    args = parse_args(argv, Path.cwd())
    if args is None:
        return "-", None, None
    path = record_path(args.root)
    if not path.is_file():
        return "no record of a converged `up`", None, None
    record = json.loads(path.read_text(encoding="utf-8"))
    engine = engine_url(os.environ, Path.home())
    reason = local_reason(record, args, engine,
                          digest(record.get("inputs") or [], engine or ""), time.time())
    if reason:
        return reason, None, None
    from .engine.local_socket import LocalSocket

    sock = LocalSocket(str(engine)[len("unix://"):])
    try:
        containers = sock.containers(f"{names.LABEL_PROJECT}={record['project']}")
        image_ids = {ref: sock.image_id(ref) for ref in record["images"]}
    finally:
        sock.close()
    return engine_reason(record, containers, image_ids), record, args
