"""`llmstack init`: a starter stack.yaml, `.env` with generated keys, a TLS certificate.

Never overwrites a secret silently: existing files are kept (and reported), and `--force`
backs them up before writing new ones. stack.yaml is the user's file and is never replaced.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from . import secrets, tls
from .fsutil import backup, write_atomic
from .project import Paths
from .quickup import RECORD_FILE
from .resources import data_dir

GITIGNORE = "# written by llmstack init: secrets and generated files stay out of git\n" \
            ".env\n.env.bak-*\n.keys.json\n.keys.json.bak-*\ncerts/\nconfig/\n" \
            f"{RECORD_FILE}\n"


@dataclass(frozen=True)
class Step:
    path: str
    action: str  # created | kept | regenerated
    note: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "action": self.action, "note": self.note}


def starter(domain: str = "localhost", profile: str = "cpu", project: str = "llmstack") -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    return env.get_template("stack.yaml.j2").render(domain=domain, profile=profile,
                                                    project=project)


def _backup_cert_file(path: Path) -> Path:
    """Back up a certificate or key; a key's copy is 0600 even if the key had drifted wider."""
    if path.suffix != ".key":
        return backup(path)
    # backup() copies the mode, so the copy is born private; a key we do not own (chmod
    # refused) has its copy, which is ours, narrowed right after.
    with contextlib.suppress(PermissionError):
        os.chmod(path, 0o600)
    saved = backup(path)
    os.chmod(saved, 0o600)
    return saved


def init(root: Path, domain: str = "localhost", profile: str = "cpu",
         force: bool = False) -> list[Step]:
    from .spec import parse

    paths = Paths(root)
    root.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    if paths.stack.exists():
        steps.append(Step(str(paths.stack), "kept", "your file; never overwritten"))
    else:
        text = starter(domain, profile)
        parse(text, str(paths.stack))  # the starter must always be valid for this domain
        write_atomic(paths.stack, text, mode=0o644)
        steps.append(Step(str(paths.stack), "created"))

    if paths.env.exists() and not force:
        secrets.load_keys(paths.env)  # a corrupt or world-readable .env is reported now
        steps.append(Step(str(paths.env), "kept", "existing keys kept; --force regenerates"))
    else:
        note = ""
        if paths.env.exists():
            note = f"old file backed up to {backup(paths.env)}"
        secrets.write_keys(paths.env, secrets.generate())
        steps.append(Step(str(paths.env), "regenerated" if note else "created", note))

    cert = paths.certs / tls.CERT
    if cert.exists() and (paths.certs / tls.KEY).exists() and not force:
        steps.append(Step(str(cert), "kept", "existing certificate kept; --force regenerates"))
    else:
        saved = [str(_backup_cert_file(p)) for p in sorted(paths.certs.glob("*"))
                 if p.is_file() and p.suffix in (".crt", ".key")] if paths.certs.exists() else []
        tls.generate(paths.certs, domain)
        # The old CA's key (written by earlier versions) signs for nothing in use any more.
        (paths.certs / tls.LEGACY_CA_KEY).unlink(missing_ok=True)
        steps.append(Step(str(cert), "regenerated" if saved else "created",
                          f"old files backed up: {', '.join(saved)}" if saved else
                          "SANs: " + ", ".join(dict.fromkeys([domain, "localhost",
                                                              "127.0.0.1", "::1"]))))
    ignore = root / ".gitignore"
    if not ignore.exists():
        write_atomic(ignore, GITIGNORE)
    return steps
