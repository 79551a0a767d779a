"""The master key's home, `.env` (mode 0600): generation, parsing, atomic updates, rotation."""

from __future__ import annotations

import re
import secrets as _secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import SecretsError
from .fsutil import write_atomic

MASTER = "LITELLM_MASTER_KEY"  # what clients send (the API guide's name for it)
INTERNAL = "LLMSTACK_INTERNAL_KEY"  # nginx -> LiteLLM only; clients never see it
PREVIOUS = "LLMSTACK_PREVIOUS_KEY"  # the old master key during a rotation's grace window
PREVIOUS_EXPIRES = "LLMSTACK_PREVIOUS_KEY_EXPIRES"  # unix seconds when the old key stops
KEY_RE = re.compile(r"^sk-[A-Za-z0-9_-]{32,200}$")
LINE_RE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")

HEADER = (
    "# llmstack secrets: keep private (mode 0600), never commit.\n"
    "# LITELLM_MASTER_KEY is the API key clients send as `Authorization: Bearer <key>`.\n"
    "# Rotate it with `llmstack rotate-key`; edit by hand only if you know why.\n"
)


def new_key() -> str:
    """256 random bits in the `sk-` form OpenAI clients accept."""
    return "sk-" + _secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Keys:
    master: str
    internal: str
    previous: str | None = None
    previous_expires: int | None = None

    def accepted(self, now: float) -> list[str]:
        """Keys a client may use at `now`: the master key, and the old one during a grace."""
        keys = [self.master]
        if self.previous and (self.previous_expires is None or now < self.previous_expires):
            keys.append(self.previous)
        return keys


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def read_env(path: Path) -> dict[str, str]:
    """Parse a dotenv file; a line that is neither KEY=VALUE nor a comment is an error."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = LINE_RE.match(line)
        if not match:
            raise SecretsError(f"{path}:{number}: not a KEY=VALUE line",
                               f"fix or remove line {number} (values are not shown here)")
        values[match.group(1)] = _unquote(match.group(2))
    return values


def check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretsError(f"{path} is readable by other users (mode {mode:04o})",
                           f"run: chmod 600 {path}")


def load_keys(path: Path) -> Keys:
    if not path.exists():
        raise SecretsError(f"{path} does not exist", "run `llmstack init` to create it")
    check_private(path)
    values = read_env(path)
    for name in (MASTER, INTERNAL):
        value = values.get(name)
        if not value:
            raise SecretsError(f"{path}: {name} is missing",
                               "run `llmstack init --force` to regenerate secrets "
                               "(the old files are backed up)")
        if not KEY_RE.match(value):
            raise SecretsError(f"{path}: {name} is not a valid key (expected sk- and 32+ "
                               "letters, digits, '-' or '_')",
                               "restore it from a backup or run `llmstack rotate-key`")
    previous = values.get(PREVIOUS) or None
    expires_raw = values.get(PREVIOUS_EXPIRES) or None
    if previous and not KEY_RE.match(previous):
        raise SecretsError(f"{path}: {PREVIOUS} is not a valid key",
                           "remove it, or run `llmstack rotate-key --finish`")
    try:
        expires = int(expires_raw) if expires_raw else None
    except ValueError:
        raise SecretsError(f"{path}: {PREVIOUS_EXPIRES} is not a unix time",
                           "remove it, or run `llmstack rotate-key --finish`") from None
    return Keys(values[MASTER], values[INTERNAL], previous, expires)


def render_env(keys: Keys, extra: dict[str, str] | None = None) -> str:
    lines = [HEADER, f"{MASTER}={keys.master}", f"{INTERNAL}={keys.internal}"]
    if keys.previous:
        lines.append(f"{PREVIOUS}={keys.previous}")
        if keys.previous_expires is not None:
            lines.append(f"{PREVIOUS_EXPIRES}={keys.previous_expires}")
    for name, value in (extra or {}).items():
        if name not in (MASTER, INTERNAL, PREVIOUS, PREVIOUS_EXPIRES):
            lines.append(f"{name}={value}")
    return "\n".join(lines) + "\n"


def write_keys(path: Path, keys: Keys) -> None:
    """Rewrite `.env` atomically (mode 0600), keeping any other variables the user added."""
    extra = read_env(path) if path.exists() else {}
    write_atomic(path, render_env(keys, extra), mode=0o600)


def generate() -> Keys:
    return Keys(master=new_key(), internal=new_key())

