"""A project folder: stack.yaml, .env, certs/, config/ and their paths and loading."""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from . import lock, names, render, secrets, spec, teamkeys, tls
from .fsutil import write_atomic
from .render import Rendered
from .spec import StackSpec

HOSTS_DIR = "hosts"  # hosts/NAME/: a host's certs/, config/ (and .env with `key: host`)


@dataclass(frozen=True)
class Paths:
    root: Path
    stack_file: Path | None = None  # `--file`; None: stack.yaml in root
    host: str | None = None  # a host of the `hosts:` inventory: its own certs/ and config/
    own_key: bool = False  # the host's `key: host`: its .env in hosts/NAME/

    @property
    def host_dir(self) -> Path:
        """Where this host's own files lie (the folder itself without a host)."""
        return self.root / HOSTS_DIR / self.host if self.host else self.root

    @property
    def stack(self) -> Path:
        return self.stack_file or self.root / "stack.yaml"

    @property
    def env(self) -> Path:
        """The client key: the folder's (one for the whole fleet) unless the host has its own."""
        return (self.host_dir if self.own_key else self.root) / ".env"

    @property
    def lock(self) -> Path:
        """The lock file next to the stack file (stack.yaml -> stack.lock): the commits its hf:
        sources were fetched at (lock.py)."""
        return self.stack.with_suffix(".lock")

    @property
    def team_keys(self) -> Path:
        """The team keys' store (hashes, limits, models; mode 0600), next to `.env`."""
        return self.root / teamkeys.STORE_FILE

    @property
    def certs(self) -> Path:
        """The TLS certificate: each host has its own, for its own domain."""
        return self.host_dir / "certs"

    @property
    def config(self) -> Path:
        return self.host_dir / "config"

    @property
    def stack_id(self) -> Path:
        """The folder's stable identity (written by the first `up`), see `Owner`."""
        return self.root / ID_FILE


# A random id, written once per stack folder: containers carry it (names.LABEL_OWNER), so a
# second folder whose stack.yaml names the same `project` is told apart from this one.
ID_FILE = ".llmstack-id"


@dataclass(frozen=True)
class Owner:
    """The stack folder deploying: its id ("" before its first `up`) and where it is."""

    id: str
    folder: str  # "host:/absolute/path", for messages

    def labels(self) -> dict[str, str]:
        """Labels on every container this folder starts; none without an id."""
        if not self.id:
            return {}
        return {names.LABEL_OWNER: self.id, names.LABEL_OWNER_FOLDER: self.folder}


def owner(paths: Paths, create: bool) -> Owner:
    """This folder's identity; `create` writes a new id when it has none (`up` does, `plan`
    and `down` only read)."""
    folder = f"{socket.gethostname()}:{paths.root.resolve()}"
    if paths.stack_id.exists():
        return Owner(paths.stack_id.read_text(encoding="utf-8").strip(), folder)
    if not create:
        return Owner("", folder)
    stack_id = uuid.uuid4().hex
    write_atomic(paths.stack_id, stack_id + "\n", mode=0o644)
    return Owner(stack_id, folder)


@dataclass(frozen=True)
class Loaded:
    paths: Paths
    spec: StackSpec
    rendered: Rendered
    stack_file: Path | None = None  # the file loaded, when not paths.stack (`--file`)
    host_text: str | None = None  # a host's resulting stack (inventory.py), as stack.yaml

    @property
    def host(self) -> str | None:
        return self.paths.host

    def with_spec(self, decided: StackSpec) -> Loaded:
        """This project with its stack decided for an engine (`images: auto`), rendered again:
        the image source decides whether nginx's own counts run (StackSpec.edge_counts)."""
        return replace(self, spec=decided, rendered=render.render(decided, self.paths.stack.name))

    def stack_text(self) -> str:
        """The stack file as loaded from disk, or the host's resulting stack (history records
        it, so `rollback` on that host returns to exactly that)."""
        if self.host_text is not None:
            return self.host_text
        return (self.stack_file or self.paths.stack).read_text(encoding="utf-8")

    def keys(self) -> secrets.Keys:
        return secrets.load_keys(self.paths.env)

    def pins(self) -> dict[str, str]:
        """{hf: source: the commit stack.lock pins it at}: what `plan.desired` needs."""
        return lock.commits(lock.read(self.paths.lock))

    def team_keys(self) -> teamkeys.Store:
        return teamkeys.load(self.paths.team_keys)

    def keys_conf(self, keys: secrets.Keys, now: float | None = None,
                  store: teamkeys.Store | None = None) -> bytes:
        """nginx's key map for these master keys and the team keys (the store's, by default)."""
        return render.render_nginx_keys(keys, now or time.time(), self.spec,
                                        self.team_keys() if store is None else store)

    def key_files(self, keys: secrets.Keys, now: float | None = None,
                  store: teamkeys.Store | None = None) -> dict[str, tuple[bytes, int]]:
        """nginx's key files (mode 0600): the key map and the team keys' limits."""
        now = now or time.time()
        store = self.team_keys() if store is None else store
        return {
            render.KEYS_FILE: (self.keys_conf(keys, now, store), 0o600),
            render.KEY_LIMITS_FILE: (render.render_nginx_key_limits(self.spec, store, now),
                                     0o600),
        }

    def nginx_secret_files(self, now: float | None = None) -> dict[str, tuple[bytes, int]]:
        """Files for nginx's secrets/ folder (mode 0600): key maps and the TLS pair."""
        keys = self.keys()
        tls.inspect(self.paths.certs)  # clear error when missing or corrupt
        certs = self.paths.certs
        for key_file in tls.private_files(certs):  # as for .env: a key others can read is refused
            secrets.check_private(key_file)
        return {
            **self.key_files(keys, now),
            render.TLS_CERT_FILE: ((certs / tls.CERT).read_bytes(), 0o600),
            render.TLS_KEY_FILE: ((certs / tls.KEY).read_bytes(), 0o600),
        }


def load(root: Path, stack_file: Path | None = None, host: str | None = None) -> Loaded:
    """The stack of the folder, or (`host`) that host's resulting stack with its own paths."""
    paths = Paths(root, stack_file)
    path = paths.stack
    if host is None:
        stack = spec.load_file(path)
        return Loaded(paths, stack, render.render(stack, path.name), path)
    from .inventory import host_spec

    one = host_spec(spec.load_fleet(path).hosts, host)
    paths = Paths(root, stack_file, host, own_key=one.key == "host")
    return Loaded(paths, one.spec, render.render(one.spec, path.name), path, one.text)


def load_fleet(root: Path, stack_file: Path | None = None) -> spec.Fleet:
    return spec.load_fleet(Paths(root, stack_file).stack)


def write_config(loaded: Loaded) -> list[Path]:
    """Write config/ for users to read and diff; only files whose bytes changed are touched."""
    written = []
    for name, data in loaded.rendered.files().items():
        target = loaded.paths.config / name
        if target.exists() and target.read_bytes() == data:
            continue
        write_atomic(target, data, mode=0o644)
        written.append(target)
    return written
