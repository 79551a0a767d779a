"""Revisions of a stack, kept on the engine: every `up` that changed something records the
stack.yaml it applied and a digest of the containers it made, in the project's history
volume, so `llmstack history` and `llmstack rollback` work from any deploying machine.

A revision holds no secret in plain text: stack.yaml has none (keys live in `.env`), and
the containers' config hashes cover secrets only as digests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass

import yaml

from . import names
from .engine.api import Engine
from .errors import UserError
from .plan import ServiceSpec

FOLDER = "revisions"


@dataclass(frozen=True)
class Revision:
    number: int
    created: str  # ISO 8601, UTC
    digest: str  # of every service's config hash: equal digests run the same containers
    services: dict[str, str]  # service -> config hash
    stack_yaml: str  # the file `up` applied, as it was

    def models(self) -> list[str]:
        try:
            data = yaml.safe_load(self.stack_yaml) or {}
            return [str(m.get("name")) for m in data.get("models") or []]
        except yaml.YAMLError:
            return []

    def to_dict(self) -> dict[str, object]:
        return {"revision": self.number, "created": self.created, "digest": self.digest,
                "models": self.models()}


def digest(wanted: list[ServiceSpec]) -> tuple[str, dict[str, str]]:
    services = {s.service: s.config_hash() for s in wanted}
    blob = json.dumps(services, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16], services


def load_all(engine: Engine, image: str) -> list[Revision]:
    """The recorded revisions, oldest first."""
    files = engine.read_volume(names.history_volume(engine.project), image)
    revisions = []
    for name, data in files.items():
        if name.startswith(FOLDER + "/") and name.endswith(".json"):
            try:
                revisions.append(Revision(**json.loads(data)))
            except (ValueError, TypeError):
                continue  # a file this version cannot read: not a revision of its own
    return sorted(revisions, key=lambda r: r.number)


def table(revisions: list[Revision]) -> list[str]:
    """`llmstack history`'s text: one line per revision, the latest marked."""
    if not revisions:
        return ["No revision recorded yet: each `llmstack up` that changes the stack "
                "records one."]
    lines = [f"{'REVISION':<9} {'CREATED':<26} {'DIGEST':<17} MODELS"]
    for r in revisions:
        mark = "  (latest)" if r is revisions[-1] else ""
        lines.append(f"{r.number:<9} {r.created:<26} {r.digest:<17} {', '.join(r.models())}"
                     + mark)
    return lines


def record(engine: Engine, image: str, stack_yaml: str, wanted: list[ServiceSpec]
           ) -> Revision:
    """Record what `up` just applied as a new revision (none when it equals the latest)."""
    known = load_all(engine, image)
    code, services = digest(wanted)
    if known and known[-1].digest == code and known[-1].stack_yaml == stack_yaml:
        return known[-1]
    revision = Revision(number=(known[-1].number + 1) if known else 1,
                        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                        digest=code, services=services, stack_yaml=stack_yaml)
    body = json.dumps(asdict(revision), indent=1, sort_keys=True).encode()
    engine.write_volume(names.history_volume(engine.project),
                        {f"{FOLDER}/{revision.number:06d}.json": body}, image)
    return revision


def pick(revisions: list[Revision], number: int | None) -> Revision:
    """Revision `number`, or the one before the latest when None."""
    if number is None:
        if len(revisions) < 2:
            raise UserError("no earlier revision to roll back to (" +
                            (f"only revision {revisions[0].number} is recorded"
                             if revisions else "none is recorded") + ")",
                            "`llmstack history` lists them; each `up` that changes the "
                            "stack records one")
        return revisions[-2]
    for revision in revisions:
        if revision.number == number:
            return revision
    raise UserError(f"revision {number} is not recorded",
                    "`llmstack history` lists the revisions kept on the engine")
