"""`llmstack keys` (add, list, revoke, rotate): team keys applied live at the edge, no restart.

The store (`.keys.json`, see `teamkeys`) is the truth; nginx's key files are rendered from it
and the master keys in `.env`, shipped, checked with `nginx -t` and loaded by a graceful reload
(new workers take every new connection on every listener; old ones finish what they serve and
take no new request). With the stack down, only the store changes and `up` applies it.

Order, and why:
- add: nginx first (it accepts the new key), probe the new key through nginx, then the store,
  then the key is shown. A crash in between leaves nginx accepting a key nobody has seen,
  until the next `up` or keys command re-renders it away.
- revoke: the store first, then nginx. A revoked key must never come back: a failure after the
  store is written says so, and `up` (or the command again) finishes the job.
- rotate: nginx accepts the old and the new secret (no end), the new one is probed, the store
  gets the new secret (and the old one until the grace window ends), nginx is re-rendered
  from it. Every state in between accepts the secret the store names.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import names, rotate, teamkeys
from .edge import Edge
from .engine.api import Engine
from .errors import DeployError, LlmstackError, UserError
from .fsutil import write_atomic
from .project import Loaded
from .render import KEY_LIMITS_FILE, KEYS_FILE
from .teamkeys import Rate, Store, TeamKey

Progress = Callable[[str], None]
MAX_EXPIRY = 5 * 365 * 86400
MAX_GRACE = 30 * 86400
LOG_TAIL = 20_000  # nginx access-log lines read for "last used"
LOG_LINE_RE = re.compile(r"\[(?P<time>[^\]]+)\] .* key=(?P<key>\S+)\s*$")


def iso(ts: float | None) -> str | None:
    return None if ts is None else \
        dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Issued:
    """A key just made (`add`) or replaced (`rotate`): shown once."""

    name: str
    key: str
    key_file: Path
    live: bool  # applied to the running stack (False: the stack is down; `up` applies it)
    grace_ends: int | None = None
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "store": str(self.key_file),
                                "live": self.live, "grace_ends": iso(self.grace_ends)}
        if self.out:
            data["out"] = str(self.out)
        else:
            data["key"] = self.key
        return data


def _live_edge(loaded: Loaded, project: Engine | None, progress: Progress) -> Edge | None:
    """The running stack's edge, or None when the stack is not up (the store alone changes)."""
    if project is None:
        return None
    for service in (names.NGINX, names.HEALTH):
        if project.state(service)[0] != "running":
            progress(f"the stack is not up ({service} is not running): only the key store "
                     "changes; `llmstack up` applies it")
            return None
    return rotate.open_edge(loaded, project, loaded.keys(), progress)


@dataclass(frozen=True)
class KeyFiles:
    """nginx's key files for one store, rendered before anything is shipped."""

    master: str
    keys_conf: bytes
    other: dict[str, tuple[bytes, int]]  # the team keys' limits, the TLS pair


def _render(loaded: Loaded, store: Store) -> KeyFiles:
    keys = loaded.keys()
    files = loaded.key_files(keys, store=store)
    return KeyFiles(keys.master, files[KEYS_FILE][0],
                    {**rotate.certificate_files(loaded), KEY_LIMITS_FILE: files[KEY_LIMITS_FILE]})


def _push(edge: Edge, files: KeyFiles, expect: dict[str, str], labels: dict[str, str],
          progress: Progress) -> None:
    """Ship the key files, `nginx -t` and reload (one exec), then probe `expect` and the
    master key through nginx."""
    edge.ship(files.keys_conf, files.other)
    edge.swap()
    progress("nginx reloaded")
    edge.expect({files.master: "200", **expect}, {files.master: "master", **labels})


def _apply(edge: Edge, loaded: Loaded, store: Store, expect: dict[str, str],
           labels: dict[str, str], progress: Progress) -> None:
    _push(edge, _render(loaded, store), expect, labels, progress)


def _restore(edge: Edge, loaded: Loaded, store: Store, progress: Progress) -> str:
    """Put nginx back on `store` after a failure; a note for the error message."""
    progress("failed; putting the previous key files back")
    try:
        keys = loaded.keys()
        files = loaded.key_files(keys, store=store)
        edge.ship(files[KEYS_FILE][0], {**rotate.certificate_files(loaded),
                                        KEY_LIMITS_FILE: files[KEY_LIMITS_FILE]})
        edge.swap()
    except Exception as again:  # report both; the first error is the one raised
        text = again.message if isinstance(again, LlmstackError) else str(again)
        return f" (putting the previous key files back failed too: {text}; " \
               "`llmstack up` re-syncs nginx with the key store)"
    return " (nginx is back on the key store; nothing changed)"


def _apply_or_restore(edge: Edge, loaded: Loaded, store: Store, previous: Store,
                      expect: dict[str, str], labels: dict[str, str], progress: Progress,
                      what: str) -> None:
    """Put nginx on `store`; on any failure (an interrupt too) back on `previous`, then
    raise what failed, saying whether the way back worked."""
    try:
        _apply(edge, loaded, store, expect, labels, progress)
    except BaseException as exc:
        note = _restore(edge, loaded, previous, progress)
        if isinstance(exc, Exception):
            raise _fail(exc, note, what) from exc
        raise


def _fail(exc: BaseException, note: str, what: str) -> LlmstackError:
    text = exc.message if isinstance(exc, LlmstackError) else f"{type(exc).__name__}: {exc}"
    err = DeployError(f"{what} failed: {text}{note}",
                      exc.hint if isinstance(exc, LlmstackError) and exc.hint else
                      "`llmstack status`; `llmstack logs nginx`")
    return err


def _check_out(path: Path | None) -> None:
    if path is not None and path.exists():
        raise UserError(f"--out {path} exists", "name a new file; the old one may hold a key")


def write_key_file(path: Path, key: str) -> None:
    """--out: the key alone in a new 0600 file (an existing file is never replaced)."""
    _check_out(path)
    write_atomic(path, key + "\n", mode=0o600)


def add(loaded: Loaded, project: Engine | None, name: str, *, rate: str | None = None,
        burst: int | None = None, concurrent: int | None = None,
        models: Iterable[str] | None = None, expires: str | None = None,
        out: Path | None = None, progress: Progress) -> Issued:
    teamkeys.check_name(name)
    limits = _limits(rate, burst, concurrent)
    known = [n for m in loaded.spec.models for n in m.public_names]
    allowed = teamkeys.check_models(models, known) if models is not None else None
    now = teamkeys.now_s()
    ends = now + teamkeys.parse_duration(expires, "--expires", MAX_EXPIRY) if expires else None
    _check_out(out)
    with rotate.exclusive(loaded.paths.root):
        store = loaded.team_keys()
        if store.has(name):
            raise UserError(f"a key named {name!r} exists",
                            f"`llmstack keys rotate {name}` gives it a new secret; "
                            f"`llmstack keys revoke {name}` removes it")
        if len(store.keys) >= teamkeys.MAX_KEYS:
            raise UserError(f"{len(store.keys)} keys exist, the most llmstack manages",
                            "revoke keys nobody uses (`llmstack keys list`)")
        key, secret = teamkeys.new_secret()
        entry = TeamKey(name=name, created=now, current=secret, expires=ends, models=allowed,
                        **limits)
        new = store.with_key(entry)
        edge = _live_edge(loaded, project, progress)
        if edge is not None:
            progress(f"shipping nginx's key files with {name!r}")
            _apply_or_restore(edge, loaded, new, store, {key: "200"}, {key: name}, progress,
                              f"adding key {name!r}")
            progress(f"verified through nginx: {name!r} answers 200")
        if out is not None:
            write_key_file(out, key)
        teamkeys.save(loaded.paths.team_keys, new)
        return Issued(name, key, loaded.paths.team_keys, edge is not None, out=out)


def _limits(rate: str | None, burst: int | None, concurrent: int | None) -> dict[str, Any]:
    if burst is not None and not 0 <= burst <= 100_000:
        raise UserError(f"--burst {burst} is out of range", "use 0 to 100000")
    if concurrent is not None and not 1 <= concurrent <= 100_000:
        raise UserError(f"--concurrent {concurrent} is out of range", "use 1 to 100000")
    return {"rate": Rate.parse(rate) if rate is not None else None, "burst": burst,
            "concurrent": concurrent}


@dataclass(frozen=True)
class Revoked:
    name: str
    key_file: Path
    live: bool
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "store": str(self.key_file), "live": self.live,
                "duration_ms": self.duration_ms}


def revoke(loaded: Loaded, project: Engine | None, name: str, progress: Progress,
           started: float | None = None) -> Revoked:
    started = time.monotonic() if started is None else started
    with rotate.exclusive(loaded.paths.root):
        store = loaded.team_keys()
        new = store.without(name)
        # Everything that reads or renders comes first, so that between the store write and
        # nginx refusing the key there is only the shipping and one exec.
        edge = _live_edge(loaded, project, progress)
        files = _render(loaded, new) if edge is not None else None
        teamkeys.save(loaded.paths.team_keys, new)  # first: a revoked key never comes back
        progress(f"removed {name!r} from {loaded.paths.team_keys}")
        if edge is not None and files is not None:
            try:
                _push(edge, files, {}, {}, progress)
            except Exception as exc:
                text = exc.message if isinstance(exc, LlmstackError) else \
                    f"{type(exc).__name__}: {exc}"
                raise DeployError(
                    f"{name!r} is revoked in {loaded.paths.team_keys}, but nginx may still "
                    f"accept it: {text}",
                    "run `llmstack up` (it re-applies the key store to nginx)") from exc
            progress(f"nginx refuses {name!r} from now on")
        return Revoked(name, loaded.paths.team_keys, edge is not None,
                       round((time.monotonic() - started) * 1000))


def rotate_key(loaded: Loaded, project: Engine | None, name: str, grace: str,
               out: Path | None, progress: Progress) -> Issued:
    seconds = teamkeys.parse_duration(grace, "--grace", MAX_GRACE)
    _check_out(out)
    with rotate.exclusive(loaded.paths.root):
        store = loaded.team_keys()
        old = store.get(name)
        key, secret = teamkeys.new_secret()
        # Transitional: the new secret is current, the old one accepted with no end.
        both = store.with_key(replace(old, current=secret,
                                      previous=replace(old.current, expires=None)))
        edge = _live_edge(loaded, project, progress)
        if edge is not None:
            progress(f"shipping nginx's key files accepting the old and the new {name!r}")
            _apply_or_restore(edge, loaded, both, store, {key: "200"}, {key: f"new {name}"},
                              progress, f"rotating key {name!r}")
            progress(f"verified through nginx: the new {name!r} answers 200")
        now = teamkeys.now_s()
        ends = now + seconds if seconds else None
        final = store.with_key(replace(
            old, current=secret, rotated=now,
            previous=replace(old.current, expires=ends) if ends else None))
        if out is not None:
            write_key_file(out, key)
        teamkeys.save(loaded.paths.team_keys, final)
        progress(f"wrote the new {name!r} to {loaded.paths.team_keys}")
        if edge is not None:
            try:
                _apply(edge, loaded, final, {key: "200"}, {key: f"new {name}"}, progress)
            except Exception as exc:
                text = exc.message if isinstance(exc, LlmstackError) else \
                    f"{type(exc).__name__}: {exc}"
                raise DeployError(
                    f"the new {name!r} is live and stored, but nginx may still accept the old "
                    f"one with no end: {text}", "run `llmstack up` (it re-applies the key "
                    "store to nginx)") from exc
            progress(f"old {name!r} " + (f"accepted until {iso(ends)}, then refused by nginx "
                                         "itself" if ends else "refused from now on"))
        return Issued(name, key, loaded.paths.team_keys, edge is not None, grace_ends=ends,
                      out=out)


# --- list -------------------------------------------------------------------------------------


def last_used(project: Engine | None, progress: Progress) -> dict[str, str] | None:
    """Each key name's latest request in nginx's access log (its last LOG_TAIL lines), or
    None when the log cannot be read (the stack is down, the engine unreachable)."""
    if project is None:
        return None
    try:
        if project.state(names.NGINX)[0] != "running":
            return None
        text = b"".join(project.logs(names.NGINX, tail=LOG_TAIL)).decode(errors="replace")
    except LlmstackError as exc:
        progress(f"cannot read nginx's log for last use: {exc.message}")
        return None
    seen: dict[str, str] = {}
    for line in text.splitlines():
        match = LOG_LINE_RE.search(line)
        if match:
            seen[match.group("key")] = match.group("time")
    return seen


def listing(loaded: Loaded, used: dict[str, str] | None) -> list[dict[str, Any]]:
    """Every key with its dates, limits and models; never a key or a hash."""
    rate = loaded.spec.rate_limit
    now = time.time()
    out = []
    for key in loaded.team_keys().keys:
        lim = key.limits(rate.requests_per_second, rate.burst, rate.max_concurrent)
        prev = key.previous if key.previous and (key.previous.expires is None or
                                                 now < key.previous.expires) else None
        out.append({
            "name": key.name, "id": key.current.id, "created": iso(key.created),
            "expires": iso(key.expires), "expired": key.expired(now),
            "expiring_soon": key.expires is not None and not key.expired(now)
            and key.expires - now < teamkeys.EXPIRING_SOON_S,
            "last_used": None if used is None else used.get(key.name),
            "rate": str(lim.rate), "burst": lim.burst, "concurrent": lim.concurrent,
            "defaults": [n for n, v in (("rate", key.rate), ("burst", key.burst),
                                        ("concurrent", key.concurrent)) if v is None],
            "models": list(key.models) if key.models is not None else None,
            "rotated": iso(key.rotated),
            "previous_accepted_until": iso(prev.expires) if prev and prev.expires else
            ("rotate again or revoke" if prev else None),
        })
    return out


def summary(loaded: Loaded) -> dict[str, Any]:
    """For `status`: how many keys, and which expire within 14 days."""
    with contextlib.suppress(LlmstackError):
        rows = listing(loaded, None)
        return {"count": len(rows),
                "expiring_soon": [{"name": r["name"], "expires": r["expires"]} for r in rows
                                  if r["expiring_soon"]],
                "expired": [r["name"] for r in rows if r["expired"]]}
    return {"count": None, "expiring_soon": [], "expired": []}
