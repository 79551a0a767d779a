"""stack.lock: the commit each `hf:` source was fetched at and its files' checksums.

Written by `up` next to stack.yaml, meant to be committed: every later `up`, on any host, fetches
and serves exactly that commit (a branch that moves on the Hub changes nothing) until the entry
is removed. JSON, sorted, one entry per source as written in stack.yaml.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .fsutil import write_atomic

LOCK_VERSION = 1
NOTE = ("Written by `llmstack up`: the commit each hf: source was fetched at. Commit this file; "
        "remove an entry to fetch its source's current revision again.")


@dataclass(frozen=True)
class LockedFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Locked:
    """One source's pin: the repository, file ("" for all), the revision asked for and the
    commit it resolved to, with every file fetched."""

    repo: str
    file: str
    revision: str
    commit: str
    files: tuple[LockedFile, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def _fix(path: Path) -> str:
    return f"restore {path.name} from version control, or delete it to fetch the sources again"


def read(path: Path) -> dict[str, Locked]:
    """The pins of `path` ({} when there is no lock file); UserError when it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} cannot be read: {exc}", _fix(path)) from None
    try:
        if data.get("version") != LOCK_VERSION:
            raise ValueError(f"version {data.get('version')!r} (this llmstack writes "
                             f"{LOCK_VERSION})")
        return {source: Locked(e["repo"], e["file"], e["revision"], e["commit"],
                               tuple(LockedFile(f["name"], int(f["size"]), f["sha256"])
                                     for f in e["files"]))
                for source, e in data["sources"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is not a stack.lock llmstack understands: {exc}",
                        _fix(path)) from None


def render(pins: dict[str, Locked]) -> str:
    data: dict[str, Any] = {"version": LOCK_VERSION, "note": NOTE,
                            "sources": {s: asdict(p) for s, p in sorted(pins.items())}}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write(path: Path, pins: dict[str, Locked]) -> bool:
    """Write the lock when its content changes (no file for no pins); whether it did."""
    text = render(pins)
    old = path.read_text(encoding="utf-8") if path.exists() else None
    if text == old or (not pins and old is None):
        return False
    write_atomic(path, text, mode=0o644)
    return True


def commits(pins: dict[str, Locked]) -> dict[str, str]:
    """{source: commit}, what the plan needs (`plan.desired`'s pins)."""
    return {source: p.commit for source, p in pins.items()}
