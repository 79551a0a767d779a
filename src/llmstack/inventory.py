"""The `hosts:` inventory of stack.yaml: one stack file, many hosts, each a strict override.

The merge rule (docs/STACK_FILE.md, "Hosts"), applied to the stack without `hosts:`:

- `models:` of a host is a mapping from a model's `name` to what differs for it there: a
  mapping of its fields (merged into the model), or `absent` (the model is not on that host).
  A model only that host has goes under `add_models:` (a list of complete models).
- Every other key (`domain`, `listeners`, `rate_limit`, `images`, ...) overrides the stack's:
  mappings merge key by key, recursively; a list or a scalar replaces the stack's value whole.
- `engine:` (ssh://, tcp://, unix:// or a Docker context's name) and `key:` (`fleet`, the
  default: the folder's .env; `host`: the host's own hosts/NAME/.env) belong to the host.

Strict: a host naming a model the stack does not have, a key no stack has, or a field a model
does not have is an error with the line it stands on, as every other error of stack.yaml.
Each host's resulting stack is then validated in full by the same rules as the stack itself
(spec.validate_data); its problems name the line of the host's override when the value came
from there, else the stack's own line, and say which host.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import replace
from typing import Any

import yaml

from .errors import Problem
from .spec import HostSpec, _path_str, validate_data

Loc = tuple[str | int, ...]

MAX_HOSTS = 64
# Host names become folder names (hosts/NAME/ holds its certificate) and appear in messages.
HOST_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# ssh://user@host[:port], tcp://host:port, unix:///path, or a Docker context's name.
ENGINE_RE = re.compile(r"(?:ssh|tcp|unix)://[A-Za-z0-9._~@:/\[\]%-]{1,250}"
                       r"|[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
HOST_OWN = ("engine", "key", "models", "add_models")
OVERRIDABLE = ("project", "domain", "listeners", "rate_limit", "timeouts", "max_body_size",
               "images", "resources", "kubernetes")
ABSENT = "absent"


def _mark(value: Any, src: Loc, dst: Loc, origin: dict[Loc, Loc]) -> None:
    """Record that `value`, now at `dst` in the merged document, came from `src`."""
    origin[dst] = src
    if isinstance(value, dict):
        for key, item in value.items():
            _mark(item, (*src, key), (*dst, key), origin)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _mark(item, (*src, i), (*dst, i), origin)


def merge(base: Any, over: Any, base_loc: Loc, over_loc: Loc, dst: Loc,
          origin: dict[Loc, Loc]) -> Any:
    """`over` merged into `base`: mappings key by key, anything else replaced whole."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        _mark(over, over_loc, dst, origin)
        return over
    origin[dst] = over_loc
    out: dict[Any, Any] = {}
    for key, value in base.items():
        if key in over:
            out[key] = merge(value, over[key], (*base_loc, key), (*over_loc, key), (*dst, key),
                             origin)
        else:
            out[key] = value
            _mark(value, (*base_loc, key), (*dst, key), origin)
    for key, value in over.items():
        if key not in base:
            out[key] = value
            _mark(value, (*over_loc, key), (*dst, key), origin)
    return out


def _unknown(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"


def host_document(name: str, entry: dict[str, Any], body: dict[str, Any],
                  lines: dict[Loc, int]) -> tuple[dict[str, Any] | None, dict[Loc, Loc],
                                                  list[Problem]]:
    """The host's resulting stack document, where each of its values came from, and the
    problems of the override's own shape (unknown keys, models, fields)."""
    here: Loc = ("hosts", name)
    problems: list[Problem] = []

    def add(loc: Loc, message: str, value: object = None, hint: str = "") -> None:
        problems.append(Problem(_path_str(loc), message, value,
                                lines.get(loc) or lines.get(here), hint))

    origin: dict[Loc, Loc] = {}
    merged: dict[str, Any] = {}
    for key in entry:
        if key not in HOST_OWN + OVERRIDABLE:
            add((*here, key), "is not a key a host can set", None,
                _unknown(str(key), list(HOST_OWN + OVERRIDABLE)))
    for key, value in body.items():
        if key == "models":
            continue
        if key in entry and key in OVERRIDABLE:
            merged[key] = merge(value, entry[key], (key,), (*here, key), (key,), origin)
        else:
            merged[key] = value
            _mark(value, (key,), (key,), origin)
    for key in OVERRIDABLE:
        if key in entry and key not in body:
            merged[key] = entry[key]
            _mark(entry[key], (*here, key), (key,), origin)

    base_models = body.get("models")
    overrides = entry.get("models") or {}
    extra = entry.get("add_models") or []
    if not isinstance(overrides, dict):
        add((*here, "models"), "must be a mapping of model names to their overrides",
            None, "e.g. models: {qwen-coder: {gpus: [0, 1]}, mistral: absent}")
        overrides = {}
    if not isinstance(extra, list):
        add((*here, "add_models"), "must be a list of models (as under `models:`)")
        extra = []
    if not isinstance(base_models, list):
        return None, origin, problems  # the stack's own error says it
    known = [m.get("name") for m in base_models if isinstance(m, dict)]
    for model, change in overrides.items():
        loc = (*here, "models", model)
        if model not in known:
            add(loc, "names a model the stack does not have", model,
                (_unknown(str(model), [str(k) for k in known]) + "; a model only this host "
                 "serves goes under add_models:, as a complete model"))
        elif change != ABSENT and not isinstance(change, dict):
            add(loc, "must be `absent` or a mapping of the fields that differ on this host",
                change if not isinstance(change, list) else None,
                "e.g. {gpus: [0], context: 8192}, or absent")
        elif isinstance(change, dict) and "name" in change and change["name"] != model:
            add((*loc, "name"), "cannot rename a model on one host", change["name"],
                "drop `name:` here; add the model under add_models: and mark this one absent")
    models: list[Any] = []
    for i, model in enumerate(base_models):
        name_of = model.get("name") if isinstance(model, dict) else None
        change = overrides.get(name_of) if isinstance(name_of, str) else None
        dst: Loc = ("models", len(models))
        if change == ABSENT:
            continue
        if isinstance(change, dict):
            models.append(merge(model, change, ("models", i), (*here, "models", name_of), dst,
                                origin))
        else:
            models.append(model)
            _mark(model, ("models", i), dst, origin)
    for j, model in enumerate(extra):
        _mark(model, (*here, "add_models", j), ("models", len(models)), origin)
        models.append(model)
    origin[("models",)] = (*here, "models") if "models" in entry else ("models",)
    merged["models"] = models
    return merged, origin, problems


def _translate(problem: Problem, host: str, paths: dict[str, Loc], lines: dict[Loc, int]
               ) -> Problem:
    """A problem of the host's merged stack, moved to where its value stands in the file."""
    path, rest = problem.path, ""
    while path and path not in paths:
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            path = ""
            break
        path, rest = path[:cut], path[cut:] + rest
    if not path:
        return replace(problem, message=f"on host {host}: {problem.message}")
    src = paths[path]
    new_path = _path_str(src) + rest
    return replace(problem, path=new_path, line=lines.get(src) or problem.line,
                   message=f"on host {host}: {problem.message}")


def resolve(raw: Any, body: dict[str, Any], lines: dict[Loc, int], base_ok: bool
            ) -> tuple[dict[str, HostSpec], list[Problem]]:
    """Every host's resulting stack (when the stack itself is valid), and every problem."""
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        return {}, [Problem("hosts", "must be a mapping of host names to their settings",
                            None, lines.get(("hosts",)),
                            "e.g. hosts: {gpu-1: {engine: ssh://ci@gpu-1}}")]
    problems: list[Problem] = []
    if len(raw) > MAX_HOSTS:
        problems.append(Problem("hosts", f"lists {len(raw)} hosts; at most {MAX_HOSTS}", None,
                                lines.get(("hosts",)), "split the fleet over several files"))
    hosts: dict[str, HostSpec] = {}
    where: dict[tuple[str, str], str] = {}
    for name, entry in raw.items():
        loc: Loc = ("hosts", name)
        line = lines.get(loc)
        if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
            problems.append(Problem(_path_str(loc), "is not a valid host name", name, line,
                                    "use 1-63 lowercase letters, digits and '-', starting and "
                                    "ending with a letter or digit, e.g. gpu-1"))
            continue
        entry = {} if entry is None else entry
        if not isinstance(entry, dict):
            problems.append(Problem(_path_str(loc), "must be a mapping of the host's settings",
                                    None, line, "e.g. gpu-1: {engine: ssh://ci@gpu-1}"))
            continue
        engine = entry.get("engine")
        if engine is not None and (not isinstance(engine, str) or
                                   not ENGINE_RE.fullmatch(engine)):
            problems.append(Problem(_path_str((*loc, "engine")), "is not a Docker engine",
                                    engine, lines.get((*loc, "engine")) or line,
                                    "write ssh://USER@HOST[:PORT], tcp://HOST:PORT, "
                                    "unix:///PATH or a Docker context's name"))
        key = entry.get("key", "fleet")
        if key not in ("fleet", "host"):
            problems.append(Problem(_path_str((*loc, "key")), "must be one of 'fleet', 'host'",
                                    key, lines.get((*loc, "key")) or line,
                                    "fleet: the folder's .env (one key for every host); host: "
                                    f"hosts/{name}/.env"))
        doc, origin, shape = host_document(name, entry, body, lines)
        problems += shape
        if doc is None or not base_ok:
            continue
        merged_lines = {dst: lines[src] for dst, src in origin.items() if src in lines}
        spec, found = validate_data(doc, merged_lines)
        paths = {_path_str(dst): src for dst, src in origin.items()}
        problems += [_translate(p, name, paths, lines) for p in found]
        if spec is None or not isinstance(engine, str | None) or key not in ("fleet", "host"):
            continue
        if engine is not None:
            other = where.setdefault((engine, spec.project), name)
            if other != name:
                problems.append(Problem(_path_str((*loc, "engine")),
                                        f"deploys project {spec.project!r} to the same engine "
                                        f"as host {other}", engine,
                                        lines.get((*loc, "engine")) or line,
                                        "give one of them its own `project:`"))
                continue
        text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        hosts[name] = HostSpec(name, engine, key, spec, text)
    return hosts, problems


def host_spec(hosts: dict[str, HostSpec], name: str) -> HostSpec:
    """The host called `name`, or a UserError naming the hosts there are."""
    from .errors import UserError

    if name in hosts:
        return hosts[name]
    if not hosts:
        raise UserError(f"host {name!r}: stack.yaml has no `hosts:` inventory",
                        "add a hosts: section (docs/STACK_FILE.md, Hosts)")
    raise UserError(f"host {name!r} is not in stack.yaml's hosts: ({', '.join(hosts)})",
                    _unknown(name, list(hosts)))

