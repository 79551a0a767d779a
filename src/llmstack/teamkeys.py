"""Team keys: one API key per person or tool, each revocable on its own, with its own limits
and models. Pure: the store file, its validation, and what nginx's key files say about it.

Where keys live: `.keys.json` next to `.env` (mode 0600, atomic writes), never in stack.yaml or
config/. It holds no key, only a hash of each: a key is shown once, when it is made. nginx
checks a key without ever holding it either: a team key reads `sk-llmstack-<id>-<secret>`; the
public id selects the key's entry, and nginx's stock `secure_link` module compares the MD5 of
`<id>:<secret>` with the stored hash (base64url) and enforces the expiry, from its own clock.
MD5 is the only digest stock nginx computes; for a 256-bit random secret only preimage
resistance matters, and no preimage attack on MD5 is anywhere near practical (collisions,
MD5's known weakness, do not help an attacker who must find a secret matching a given hash).
So a copy of `.keys.json` or of nginx's secret files lets nobody call the API.

Limits: a team key's requests count against its own budget (rate, burst, concurrent requests;
each defaults to stack.yaml's `rate_limit` value) instead of the per-IP one, so people behind
one NAT no longer share a budget, and a 429 can name the exact limit that refused it (nginx
tells rate from concurrency, never one rate zone from another within one request). The master
key and keyless requests keep the per-IP budget.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import secrets as _secrets
import string
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import SecretsError, UserError
from .fsutil import write_atomic

STORE_FILE = ".keys.json"
STORE_VERSION = 1
PREFIX = "sk-llmstack-"
ID_LEN = 12
ID_ALPHABET = string.ascii_lowercase + string.digits
SECRET_RE = r"[A-Za-z0-9_-]{43}"  # secrets.token_urlsafe(32)
KEY_RE = re.compile(rf"^{PREFIX}([a-z0-9]{{{ID_LEN}}})-({SECRET_RE})\Z")
# Lower case only: nginx matches plain map strings ignoring case, so "Alice" and "alice"
# would be one key there. No quote, space, `;`, `$`, brace or backslash can reach nginx.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
RESERVED_NAMES = frozenset({"master"})  # the access log's name for the master key
DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
RATE_RE = re.compile(r"^\s*(\d+)\s*(?:r?\s*/\s*([sm]))?\s*$")
MAX_KEYS = 500  # each distinct limit is a small nginx zone; far above a team's needs
EXPIRING_SOON_S = 14 * 86400


def parse_duration(text: str, option: str, max_seconds: int) -> int:
    """'0', '30s', '10m', '2h', '90d' or plain seconds -> seconds."""
    match = DURATION_RE.match(text)
    if not match:
        raise UserError(f"{option} {text!r} is not a duration",
                        f"use e.g. {option} 30s, 10m, 2h or 90d")
    seconds = int(match.group(1)) * DURATION_UNITS[match.group(2)]
    if seconds > max_seconds:
        raise UserError(f"{option} {text!r} is longer than {max_seconds // 86400} days",
                        "use a shorter duration")
    return seconds


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"key name {name!r} is not allowed: use 1-64 lower-case letters, "
                        "digits, '.', '_', '@' or '-', starting with a letter or digit",
                        "e.g. `llmstack keys add alice` or `llmstack keys add ci-bot`")
    if name in RESERVED_NAMES:
        raise UserError(f"key name {name!r} is reserved (the access log calls the master key "
                        "so)", "choose another name")
    return name


@dataclass(frozen=True)
class Rate:
    """A request rate as nginx writes it: `count` requests per second or per minute."""

    count: int
    per: str  # "s" | "m"

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = RATE_RE.match(text)
        count = int(match.group(1)) if match else 0
        if not match or not 1 <= count <= 100_000:
            raise UserError(f"--rate {text!r} is not a rate",
                            "use requests per second or minute: e.g. --rate 5/s, --rate 30/m "
                            "(1 to 100000)")
        return cls(count, match.group(2) or "s")

    def __str__(self) -> str:
        return f"{self.count}/{self.per}"

    @property
    def nginx(self) -> str:
        return f"{self.count}r/{self.per}"

    @property
    def slug(self) -> str:
        return f"{self.count}{self.per}"

    @property
    def retry_after(self) -> int:
        """Seconds until the next request fits the rate (at least 1)."""
        return max(1, math.ceil((60 if self.per == "m" else 1) / self.count))

    def text(self) -> str:
        return f"{self.count} requests/{'s' if self.per == 's' else 'min'}"


@dataclass(frozen=True)
class Secret:
    """One accepted secret of a key: its public id and the hash nginx compares."""

    id: str
    hash: str
    expires: int | None = None  # a previous secret's end of grace

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash, "expires": self.expires}


def digest(key_id: str, secret: str) -> str:
    """What nginx's `secure_link_md5 "$id:$secret"` computes, base64url without padding."""
    raw = hashlib.md5(f"{key_id}:{secret}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def new_secret() -> tuple[str, Secret]:
    """A new key and its stored form (the key itself is returned once, never stored)."""
    key_id = "".join(_secrets.choice(ID_ALPHABET) for _ in range(ID_LEN))
    secret = _secrets.token_urlsafe(32)
    return f"{PREFIX}{key_id}-{secret}", Secret(key_id, digest(key_id, secret))


def matches(key: str, stored: Secret) -> bool:
    match = KEY_RE.match(key)
    return bool(match) and match.group(1) == stored.id and _secrets.compare_digest(
        digest(match.group(1), match.group(2)), stored.hash)


@dataclass(frozen=True)
class Limits:
    rate: Rate
    burst: int
    concurrent: int


@dataclass(frozen=True)
class TeamKey:
    name: str
    created: int
    current: Secret
    expires: int | None = None
    rate: Rate | None = None  # None: stack.yaml's rate_limit.requests_per_second
    burst: int | None = None  # None: stack.yaml's rate_limit.burst
    concurrent: int | None = None  # None: stack.yaml's rate_limit.max_concurrent
    models: tuple[str, ...] | None = None  # None: every model
    previous: Secret | None = None  # the secret before `keys rotate`, until its grace ends
    rotated: int | None = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def secrets(self, now: float) -> list[Secret]:
        """Secrets nginx accepts now; each carries the time it stops (key expiry or grace)."""
        if self.expired(now):
            return []
        out = [replace(self.current, expires=self.expires)]
        prev = self.previous
        if prev is not None and (prev.expires is None or now < prev.expires):
            ends = [t for t in (prev.expires, self.expires) if t is not None]
            out.append(replace(prev, expires=min(ends) if ends else None))
        return out

    def limits(self, default_rate: int, default_burst: int, default_concurrent: int) -> Limits:
        return Limits(self.rate or Rate(default_rate, "s"),
                      default_burst if self.burst is None else self.burst,
                      self.concurrent or default_concurrent)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "expires": self.expires,
                "rate": str(self.rate) if self.rate else None, "burst": self.burst,
                "concurrent": self.concurrent,
                "models": list(self.models) if self.models is not None else None,
                "current": self.current.to_dict(),
                "previous": self.previous.to_dict() if self.previous else None,
                "rotated": self.rotated}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeamKey:
        def secret(d: dict[str, Any] | None) -> Secret | None:
            if d is None:
                return None
            if not re.fullmatch(rf"[a-z0-9]{{{ID_LEN}}}", str(d["id"])) or \
                    not re.fullmatch(r"[A-Za-z0-9_-]{22}", str(d["hash"])):
                raise ValueError("a key id or hash is malformed")
            return Secret(str(d["id"]), str(d["hash"]),
                          None if d.get("expires") is None else int(d["expires"]))

        current = secret(data["current"])
        if current is None:
            raise ValueError("a key has no current secret")
        models = data.get("models")
        return cls(
            name=check_name(str(data["name"])), created=int(data["created"]), current=current,
            expires=None if data.get("expires") is None else int(data["expires"]),
            rate=Rate.parse(data["rate"]) if data.get("rate") else None,
            burst=None if data.get("burst") is None else int(data["burst"]),
            concurrent=None if data.get("concurrent") is None else int(data["concurrent"]),
            models=None if models is None else tuple(str(m) for m in models),
            previous=secret(data.get("previous")),
            rotated=None if data.get("rotated") is None else int(data["rotated"]))


@dataclass(frozen=True)
class Store:
    keys: tuple[TeamKey, ...] = ()

    def get(self, name: str) -> TeamKey:
        for key in self.keys:
            if key.name == name:
                return key
        known = ", ".join(k.name for k in self.keys) or "none yet"
        raise UserError(f"no key named {name!r} (keys: {known})", "see `llmstack keys list`")

    def has(self, name: str) -> bool:
        return any(k.name == name for k in self.keys)

    def with_key(self, key: TeamKey) -> Store:
        others = tuple(k for k in self.keys if k.name != key.name)
        return Store(tuple(sorted((*others, key), key=lambda k: k.name)))

    def without(self, name: str) -> Store:
        self.get(name)
        return Store(tuple(k for k in self.keys if k.name != name))

    def to_json(self) -> str:
        return json.dumps({"version": STORE_VERSION, "keys": [k.to_dict() for k in self.keys]},
                          indent=2, sort_keys=True) + "\n"


def load(path: Path) -> Store:
    """The store at `path`; an absent file is an empty store (no team keys yet)."""
    from .secrets import check_private

    if not path.exists():
        return Store()
    check_private(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != STORE_VERSION:
            raise ValueError(f"version {data.get('version')!r} is not {STORE_VERSION}")
        keys = tuple(TeamKey.from_dict(k) for k in data["keys"])
    except (ValueError, KeyError, TypeError, AttributeError, UserError) as exc:
        text = exc.message if isinstance(exc, UserError) else str(exc)
        raise SecretsError(f"{path} is not a valid key store: {text}",
                           f"restore it from a backup ({path.name}.bak-*) or remove it (every "
                           "team key is then refused)") from None
    if len({k.name for k in keys}) != len(keys):
        raise SecretsError(f"{path}: a key name appears twice", "remove one of them")
    return Store(tuple(sorted(keys, key=lambda k: k.name)))


def save(path: Path, store: Store) -> None:
    write_atomic(path, store.to_json(), mode=0o600)


# --- what nginx's key files say ---------------------------------------------------------------


def _pcre(text: str) -> str:
    """`text` as a literal inside an nginx regex (names and model names: [A-Za-z0-9._:@-])."""
    return re.sub(r"([.\\^$|?*+()\[\]{}])", r"\\\1", text)


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def _error(message: str, kind: str, code: str) -> str:
    return _json({"error": {"message": message, "type": kind, "param": None, "code": code}})


@dataclass(frozen=True)
class Zone:
    """One nginx limit zone shared by every key with the same limit."""

    name: str
    rate: str  # "" for a concurrency zone
    keys: tuple[str, ...]
    burst: int = 0
    concurrent: int = 0


@dataclass(frozen=True)
class EdgeKeys:
    """Everything the nginx templates need about team keys (names are NAME_RE-safe)."""

    entries: list[tuple[str, str, str]]  # (id, "hash[,expires]", name)
    rate_zones: list[Zone]
    conn_zones: list[Zone]
    too_many: list[tuple[str, str]]  # ("REJECTED:name" | ":name", 429 JSON)
    retry_after: list[tuple[str, int]]  # (name, seconds)
    models_header: list[tuple[str, str]]  # (name, "a,b")
    models_list: list[tuple[str, str]]  # (name, /v1/models JSON)
    model_allowed: list[tuple[str, str]]  # (regex over "name|$uri", "")
    model_denied: list[tuple[str, str]]  # (regex over "name|$uri", 403 JSON)
    names: list[str] = field(default_factory=list)


def edge_keys(store: Store, now: float, default_rate: int, default_burst: int,
              default_concurrent: int, models: list[tuple[str, str]],
              models_created: int = 0) -> EdgeKeys:
    """The team keys as nginx must see them at `now`.

    `models` lists the stack's public model names (names and aliases, each its own entry, as
    LiteLLM lists them) with their mode (chat, embedding). A key limited to some models may
    use exactly the names it lists.
    """
    entries: list[tuple[str, str, str]] = []
    rate_groups: dict[tuple[Rate, int], list[str]] = {}
    conn_groups: dict[int, list[str]] = {}
    too_many: list[tuple[str, str]] = []
    retry_after: list[tuple[str, int]] = []
    header: list[tuple[str, str]] = []
    listing: list[tuple[str, str]] = []
    allowed: list[tuple[str, str]] = []
    denied: list[tuple[str, str]] = []
    live = []
    for key in store.keys:
        accepted = key.secrets(now)
        if not accepted:
            continue  # expired: nginx never hears of it
        live.append(key.name)
        for secret in accepted:
            value = secret.hash + (f",{secret.expires}" if secret.expires is not None else "")
            entries.append((secret.id, value, key.name))
        lim = key.limits(default_rate, default_burst, default_concurrent)
        rate_groups.setdefault((lim.rate, lim.burst), []).append(key.name)
        conn_groups.setdefault(lim.concurrent, []).append(key.name)
        who = f"API key '{key.name}'"
        too_many.append((f":{key.name}", _error(
            f"Rate limit of {who} exceeded: at most {lim.rate.text()} (burst {lim.burst}). "
            f"Retry after {lim.rate.retry_after}s.", "rate_limit_error",
            "key_rate_limit_exceeded")))
        too_many.append((f"REJECTED:{key.name}", _error(
            f"Concurrency limit of {who} exceeded: at most {lim.concurrent} "
            f"request{'s' if lim.concurrent != 1 else ''} at once. "
            "Retry when one has finished.", "rate_limit_error",
            "key_concurrency_limit_exceeded")))
        retry_after.append((key.name, lim.rate.retry_after))
        if key.models is None:
            continue
        names = [n for n, _ in models if n in key.models]
        # "-" (no model name) when none of its models is left: an empty header would be
        # no header, which LiteLLM's check and the direct route read as "any model".
        header.append((key.name, ",".join(names) or "-"))
        listing.append((key.name, _json({"data": [
            {"id": n, "object": "model", "created": models_created, "owned_by": "openai",
             "mode": mode} for n, mode in models if n in key.models], "object": "list"})))
        prefix = rf"^{_pcre(key.name)}\|/v1/models/"
        if names:
            allowed.append((prefix + "(?:" + "|".join(_pcre(n) for n in names) + r")$", ""))
        may = ", ".join(names) or "no model"
        denied.append((prefix, _error(
            f"{who} may not use this model; it may use: {may}.", "permission_error",
            "model_not_allowed")))
    rate_zones = [Zone(f"llmstack_kr_{rate.slug}_{burst}", rate.nginx, tuple(keys), burst=burst)
                  for (rate, burst), keys in sorted(rate_groups.items(),
                                                    key=lambda g: (g[0][0].slug, g[0][1]))]
    conn_zones = [Zone(f"llmstack_kc_{n}", "", tuple(keys), concurrent=n)
                  for n, keys in sorted(conn_groups.items())]
    return EdgeKeys(entries, rate_zones, conn_zones, too_many, retry_after, header, listing,
                    allowed, denied, names=live)


def check_models(wanted: Iterable[str], known: list[str]) -> tuple[str, ...]:
    """--models a,b: each must be a public name (name or alias) of stack.yaml's models."""
    out = tuple(dict.fromkeys(m.strip() for m in wanted if m.strip()))
    unknown = [m for m in out if m not in known]
    if unknown or not out:
        raise UserError(f"--models: {', '.join(unknown) or 'empty'}: not a model of stack.yaml",
                        f"use names from: {', '.join(known)}")
    return out


def now_s() -> int:
    return int(time.time())
