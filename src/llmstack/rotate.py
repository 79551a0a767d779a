"""`llmstack rotate-key`: a new client key applied live, no container restarted.

Keys are checked at the edge: nginx maps `Authorization` to the accepted keys (a secret file in
its config volume) and hands LiteLLM an internal key that never changes, so a rotation is a new
secrets file plus `nginx -s reload` (new workers take new connections, old workers finish their
requests and streams within `worker_shutdown_timeout`).

Order, and why (a crash or SIGKILL at any point must leave `.env` whole and its key working):

  1. ship a *transitional* key file accepting the old AND the new key, `nginx -t`, reload, wait
     until only new workers accept connections, and check through the stack's own network that
     both keys answer 200;
  2. only then back up `.env` (0600) and replace it atomically (temp file + rename): from here
     clients may use the new key, which nginx already accepts;
  3. ship the *final* key file (old key dropped, or kept until the grace window's end, which
     nginx enforces by itself from its clock), reload, wait for the new workers, check it.

Every state in between accepts whatever key `.env` holds: before step 2 `.env` has the old key
(accepted by the old and the transitional file), after it the new key (accepted by the
transitional and the final file). Writing `.env` first instead would leave a window in which
`.env` names a key nginx refuses, which a kill in that window would make permanent. The price of
this order: a kill between steps 1 and 3 leaves one extra key accepted (the unpublished new key,
or the old key without an end) until the next `rotate-key` or `up`, which re-sync nginx.
A failure in step 1 puts the old key file back (and reloads it when nginx had loaded the
transitional one), so a failed rotation leaves the old key working and `.env` untouched.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import names, plan, secrets
from .edge import KEYS_FILE, Edge
from .engine.api import Engine, is_engine_exception
from .errors import DeployError, EngineError, LlmstackError, UserError
from .fsutil import backup
from .project import Loaded
from .teamkeys import parse_duration

Progress = Callable[[str], None]

MAX_GRACE = 30 * 86400
MAX_AT_ONCE = 8  # stacks of a fleet one rotation step works on at once
SWAP_DEADLINE = 20.0  # seconds for nginx to replace its workers after a reload
VERIFY_DEADLINE = 20.0  # seconds for the keys to answer as expected through nginx


def parse_grace(text: str) -> int:
    """'0', '30s', '10m', '2h', '1d' or plain seconds -> seconds (at most 30 days)."""
    return parse_duration(text, "--grace", MAX_GRACE)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Rotation:
    project: str
    key_file: Path
    backup_file: Path
    rotated_at: float
    grace_seconds: int
    cutover_ms: int  # command start -> new key verified (200 through nginx) and in .env
    duration_ms: int  # command start -> final keys live (old key dropped or on its timer)
    key: str

    @property
    def grace_ends(self) -> float | None:
        return self.rotated_at + self.grace_seconds if self.grace_seconds else None

    def to_dict(self, show: bool = False) -> dict[str, Any]:
        ends = self.grace_ends
        data: dict[str, Any] = {
            "project": self.project, "key_file": str(self.key_file),
            "backup_file": str(self.backup_file), "rotated_at": _iso(self.rotated_at),
            "grace_seconds": self.grace_seconds,
            "grace_ends": _iso(ends) if ends is not None else None,
            "cutover_ms": self.cutover_ms, "duration_ms": self.duration_ms,
        }
        if show:
            data["key"] = self.key
        return data


@dataclass(frozen=True)
class Finish:
    project: str
    key_file: Path
    was_in_progress: bool  # False: no grace window was open, nothing changed
    backup_file: Path | None
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"project": self.project, "key_file": str(self.key_file),
                "finished": self.was_in_progress,
                "backup_file": str(self.backup_file) if self.backup_file else None,
                "duration_ms": self.duration_ms}


# --- the stack, seen from inside its network --------------------------------------------------


def open_edge(loaded: Loaded, project: Engine, keys: secrets.Keys, progress: Progress) -> Edge:
    """The running stack's edge, or a UserError saying how to bring it up."""
    stack = loaded.spec.project
    for service in (names.NGINX, names.HEALTH):
        state, _ = project.state(service)
        if state != "running":
            raise UserError(f"stack {stack!r} is not up: {service} is {state}",
                            "start it with `llmstack up`, then run `llmstack rotate-key` again")
    from .deploy import decide_images

    # The images `up` decided on this engine (`images: auto`), never a pull.
    loaded = decide_images(loaded, project, lambda _: None, fetch=False)[0]
    wanted = {s.service: s for s in plan.desired(loaded.spec, loaded.rendered, keys.internal,
                                                 loaded.pins())}
    nginx = wanted[names.NGINX]
    running = project.container(names.NGINX)
    if running is not None and running.labels.get(names.LABEL_HASH) != nginx.config_hash():
        # No refusal: a leaked key must be rotatable at once. Only the key file is shipped,
        # and `nginx -t` plus the probes below catch a running config that cannot use it.
        progress("note: nginx runs an older configuration than stack.yaml; only the keys "
                 "change now (`llmstack up` applies the rest)")
    return Edge.of(loaded.spec, nginx, project, SWAP_DEADLINE, VERIFY_DEADLINE)


def certificate_files(loaded: Loaded) -> dict[str, tuple[bytes, int]]:
    """nginx's secret files other than the key map (the TLS pair, the team keys' limits),
    shipped along with it."""
    return {k: v for k, v in loaded.nginx_secret_files().items() if k != KEYS_FILE}


def _check_serving(edge: Edge, keys: secrets.Keys) -> None:
    got = edge.statuses([keys.master])[0]
    if got == "401":
        raise UserError("nginx refuses the key in .env (was .env edited by hand or "
                        "restored from a backup?)", "run `llmstack up` to apply .env, then "
                        "rotate")
    if got != "200":
        raise UserError(f"the stack does not serve requests: GET /v1/models with the current "
                        f"key -> {got}", "check `llmstack status`; fix it, then rotate")


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """One key change (rotate-key, keys) at a time per project folder (the lock dies with
    the process)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `llmstack rotate-key` or `llmstack keys` command is "
                            f"running in {root}",
                            "wait for it to finish, then run the command again") from None
        yield
    finally:
        os.close(fd)


# --- the commands -----------------------------------------------------------------------------


def rotate(loaded: Loaded, project: Engine, grace_seconds: int, progress: Progress,
           started: float | None = None) -> Rotation:
    """Replace the client key on the running stack; see the module docstring for the order."""
    return rotate_group([(loaded, project)], grace_seconds, progress, started)


def _one_env(targets: list[tuple[Loaded, Engine]]) -> Path:
    envs = {loaded.paths.env for loaded, _ in targets}
    if len(envs) != 1 or not targets:
        raise UserError("a key rotation covers stacks that share one .env",
                        "rotate hosts with `key: host` one by one")
    return envs.pop()


def rotate_group(targets: list[tuple[Loaded, Engine]], grace_seconds: int,
                 progress: Progress, started: float | None = None) -> Rotation:
    """Replace the client key on every stack of `targets` (hosts of a fleet sharing one
    .env), with one grace window: each step of the module docstring runs on every stack
    before the next step starts, so `.env` changes once, after every stack accepts the new
    key, and every stack accepts whatever key `.env` holds at any moment. A failure in step 1
    on any stack rolls every stack back to the old key file."""
    started = time.monotonic() if started is None else started
    env_path = _one_env(targets)
    loaded0 = targets[0][0]
    with exclusive(loaded0.paths.root):
        old = loaded0.keys()

        def opened(target: tuple[Loaded, Engine]) -> tuple[Loaded, Edge,
                                                            dict[str, tuple[bytes, int]], bytes]:
            loaded, project = target
            edge = open_edge(loaded, project, old, progress)
            _check_serving(edge, old)
            return loaded, edge, certificate_files(loaded), loaded.keys_conf(old)

        edges = _on_each(opened, targets)
        new_master = secrets.new_key()
        # Transitional: the new key is current, the old one accepted with no end (the
        # expiry-less "previous" slot), so whichever of the two `.env` ends up with works.
        both = secrets.Keys(master=new_master, internal=old.internal, previous=old.master)
        labels = {old.master: "old", new_master: "new"}

        def where(loaded: Loaded) -> str:
            return f" on {loaded.paths.host}" if len(targets) > 1 and loaded.paths.host else ""

        reloaded: dict[int, bool] = {}

        def transitional(index: int) -> None:
            loaded, edge, other_files, _ = edges[index]
            progress(f"shipping a key file that accepts the old and the new key{where(loaded)}")
            reloaded[index] = False
            edge.ship(loaded.keys_conf(both), other_files)
            edge.test_config()
            reloaded[index] = True  # from here nginx may run the transitional file
            edge.reload()
            progress(f"nginx reloaded{where(loaded)}: old and new key accepted")
            edge.expect({old.master: "200", new_master: "200"}, labels)
            progress(f"verified through nginx{where(loaded)}: the new key answers 200")

        # Step 1 on every stack at once; any failure puts the old key file back on each
        # stack it reached, and .env stays as it was.
        errors = _on_each_caught(transitional, list(range(len(edges))))
        if errors:
            index, exc = errors[0]
            loaded = edges[index][0]
            note = ""
            for i in sorted(reloaded):
                note = _roll_back(edges[i][1], edges[i][3], edges[i][2], reloaded[i],
                                  progress) or note
            if isinstance(exc, LlmstackError) and _foreign(exc) is None:
                exc.message = f"key rotation failed{where(loaded)}: {exc.message}{note}"
                raise exc
            if isinstance(exc, Exception):  # the engine failed (or a bug): exit 2
                cause = _foreign(exc) or exc
                raise DeployError(f"key rotation failed{where(loaded)}: "
                                  f"{type(cause).__name__}: {cause}{note}",
                                  "`llmstack status`; run the command again") from exc
            raise exc

        backup_file = backup(env_path)
        os.chmod(backup_file, 0o600)
        progress(f"backed up the old .env to {backup_file}")
        rotated_at = time.time()
        final = secrets.Keys(master=new_master, internal=old.internal,
                             previous=old.master if grace_seconds else None,
                             previous_expires=int(rotated_at) + grace_seconds
                             if grace_seconds else None)
        secrets.write_keys(env_path, final)
        cutover_ms = round((time.monotonic() - started) * 1000)
        progress(f"wrote the new key to {env_path}")

        def final_file(index: int) -> None:
            loaded, edge, other_files, _ = edges[index]
            try:
                edge.ship(loaded.keys_conf(final), other_files)
                edge.test_config()
                edge.reload()
                edge.expect({new_master: "200",
                             old.master: "200" if grace_seconds else "401"}, labels)
            except Exception:
                # nginx may still run the transitional file, which accepts the old key with
                # no end. Put that file back in the volume too, so that the volume never
                # claims a state nginx may not run: `up` then sees it differ from .env and
                # re-syncs, and `--finish` always does.
                with contextlib.suppress(Exception):
                    edge.ship(loaded.keys_conf(both), other_files)
                raise

        failed = [f"{where(edges[i][0]).strip() or edges[i][0].spec.project}: "
                  + (exc.message if isinstance(exc, LlmstackError) else
                     f"{type(exc).__name__}: {exc}")
                  for i, exc in _on_each_caught(final_file, list(range(len(edges))))]
        if failed:
            raise DeployError(
                f"the new key is live and in {env_path}, but the old key could not be "
                f"{'put on its timer' if grace_seconds else 'dropped'}: {'; '.join(failed)}",
                "nginx may still accept the old key with no end: run `llmstack rotate-key "
                "--finish` (it re-applies .env's keys to nginx) or `llmstack up`")
        progress("old key refused from now on" if not grace_seconds else
                 f"old key accepted until {_iso(rotated_at + grace_seconds)}, then refused "
                 "by nginx itself")
        project_names = ", ".join(loaded.spec.project for loaded, _ in targets)
        return Rotation(project_names, env_path, backup_file, rotated_at, grace_seconds,
                        cutover_ms, round((time.monotonic() - started) * 1000), new_master)


def _on_each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """`fn` over `items` at once (stacks of a fleet: each its own engine); the first error
    raised, results in order."""
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(max_workers=min(len(items), MAX_AT_ONCE)) as pool:
        return list(pool.map(fn, items))


def _on_each_caught(fn: Callable[[int], None], indices: list[int]
                    ) -> list[tuple[int, BaseException]]:
    """`fn` over `indices` at once; every error, with its index, in order."""
    def caught(index: int) -> tuple[int, BaseException] | None:
        try:
            fn(index)
        except BaseException as exc:  # reported (or raised again) by the caller
            return index, exc
        return None

    return [r for r in _on_each(caught, indices) if r is not None]


def _foreign(exc: BaseException) -> BaseException | None:
    """The engine library's exception behind an EngineError the boundary mapped, if any."""
    cause = exc.__cause__
    return cause if isinstance(exc, EngineError) and cause is not None and \
        is_engine_exception(cause) else None


def _roll_back(edge: Edge, old_conf: bytes, other_files: dict[str, tuple[bytes, int]],
               reloaded: bool, progress: Progress) -> str:
    """Put the old key file back (reload it too if nginx may run the transitional one);
    return a note for the error message."""
    progress("rotation failed; putting the old key file back")
    try:
        edge.ship(old_conf, other_files)
        if reloaded:
            edge.test_config()
            edge.reload()
    except Exception as again:  # report both; the first error is the one to raise
        foreign = _foreign(again)
        text = str(foreign) if foreign else again.message if isinstance(again, LlmstackError) \
            else str(again)
        return f" (putting the old key file back failed too: {text}; the old key still " \
               "works: .env is unchanged and nginx accepts it; `llmstack up` re-syncs nginx)"
    return " (rolled back: .env is unchanged and the old key works)"


def finish(loaded: Loaded, project: Engine, progress: Progress,
           started: float | None = None) -> Finish:
    """End a grace window now, and in any case make nginx accept exactly `.env`'s key."""
    return finish_group([(loaded, project)], progress, started)


def finish_group(targets: list[tuple[Loaded, Engine]], progress: Progress,
                 started: float | None = None) -> Finish:
    """End a grace window now on every stack of `targets` (sharing one .env), and in any
    case make nginx accept exactly `.env`'s key.

    The key file is shipped and reloaded even with no window open: after a rotation that
    failed at its last step, nginx may run a transitional file that accepts the old (perhaps
    leaked) key with no end, which `.env` no longer names. Then `.env` forgets the previous key.
    """
    started = time.monotonic() if started is None else started
    env_path = _one_env(targets)
    loaded0 = targets[0][0]
    with exclusive(loaded0.paths.root):
        keys = loaded0.keys()
        in_progress = bool(keys.previous) and keys.previous in keys.accepted(time.time())
        final = replace(keys, previous=None, previous_expires=None)
        edges = []
        for loaded, project in targets:
            edge = open_edge(loaded, project, keys, progress)
            _check_serving(edge, keys)
            edges.append((loaded, edge))
        # nginx first: if this fails or is killed, `.env` still says a window is open, which
        # is true, and its master key works either way.
        for loaded, edge in edges:
            progress("shipping a key file with .env's key alone")
            edge.ship(loaded.keys_conf(final), certificate_files(loaded))
            edge.test_config()
            edge.reload()
            wanted, labels = {keys.master: "200"}, {keys.master: "current"}
            if keys.previous:
                wanted[keys.previous], labels[keys.previous] = "401", "previous"
            edge.expect(wanted, labels)
        project_names = ", ".join(loaded.spec.project for loaded, _ in targets)
        if not keys.previous:
            progress("no rotation in progress; nginx re-applied .env's key (any other refused)")
            return Finish(project_names, env_path, False, None,
                          round((time.monotonic() - started) * 1000))
        progress("nginx reloaded: the previous key is refused")
        backup_file = backup(env_path)
        os.chmod(backup_file, 0o600)
        secrets.write_keys(env_path, final)
        progress(f"removed the previous key from {env_path}")
        return Finish(project_names, env_path, in_progress, backup_file,
                      round((time.monotonic() - started) * 1000))
