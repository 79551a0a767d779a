"""Error types with user-facing messages and hints, and the exit codes. Only the CLI exits."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class ExitCode(IntEnum):
    """The documented contract of every command (docs/CI.md section 7)."""

    OK = 0
    CONFIG = 1  # invalid input or configuration: stack.yaml, .env, certs/, options
    RUNTIME = 2  # the engine, the host or a running service
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class LlmstackError(Exception):
    """Base of every error a user can act on. `exit_code` follows the documented contract."""

    exit_code: ExitCode = ExitCode.CONFIG

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


class UserError(LlmstackError):
    """Bad input or a state the user must fix (exit 1)."""


@dataclass(frozen=True)
class Problem:
    """One validation finding: where, what, and how to fix it."""

    path: str
    message: str
    value: object = None
    line: int | None = None
    hint: str = ""

    def render(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        text = f"{where}: {self.path}: {self.message}"
        if self.value is not None:
            text += f" (got {self.value!r})"
        if self.hint:
            text += f"\n    fix: {self.hint}"
        return text


@dataclass
class SpecError(UserError):
    """stack.yaml is invalid; carries every problem found, not only the first."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        count = len(self.problems)
        lines = [f"{self.file} is invalid ({count} problem{'s' if count != 1 else ''}):"]
        lines += ["  " + p.render(self.file).replace("\n", "\n  ") for p in self.problems]
        super().__init__("\n".join(lines), "edit the file and run `llmstack validate` again")

    def to_dict(self) -> dict[str, object]:
        data = super().to_dict()
        data["problems"] = [
            {"path": p.path, "line": p.line, "message": p.message, "value": repr(p.value)
             if p.value is not None else None, "hint": p.hint}
            for p in self.problems
        ]
        return data


class OwnershipError(UserError):
    """The project's containers on the engine belong to another stack folder (exit 1)."""


class SecretsError(UserError):
    """`.env`, keys or certificates are missing, unsafe or corrupt."""


class EngineError(LlmstackError):
    """The Docker engine is unreachable or refused an operation (exit 2)."""

    exit_code = ExitCode.RUNTIME


class DeployError(LlmstackError):
    """A service failed to start or to become ready (exit 2)."""

    exit_code = ExitCode.RUNTIME


# Where no registry answers, the images come from a local build or a bundle.
OFFLINE_HINT = ("no registry here? build the images on the engine (`llmstack images build`), or "
                "bring a bundle: `llmstack images save -o bundle.tar` on a machine that has "
                "them, then `llmstack images load bundle.tar [--host ...]`")


class RegistryError(EngineError):
    """A registry refused or could not serve an image; says which and what to do."""


class RegistryUnreachable(RegistryError):
    """No answer from the registry (no route, no DNS, connection refused, timeout)."""


class RegistryAuthError(RegistryError):
    """The registry wants credentials, or refused the ones `docker login` stored."""


class ImageNotInRegistry(RegistryError):
    """The registry answers but has no such repository, tag or digest."""


class DigestMismatch(RegistryError):
    """The registry serves another digest for the tag than the one pinned: refused."""


class SourceAccessError(UserError):
    """A model source the Hub refuses or does not have: gated, private, misspelt (exit 1)."""


class FetchError(DeployError):
    """Fetching a model's weights failed on the engine's host: network, disk, checksum
    (exit 2)."""
