"""Every `llmstack ...` command a hint, a message or the docs tell users to run exists.

Mentions are collected from the string literals of src/ (hints, messages, help texts; adjacent
literals joined as Python joins them) and from README.md and docs/*.md, then checked against
the typer app: the command, its subcommand for a group (`images build`), and every option
named (`rotate-key --finish`); arguments and option values are not checked.

A mention counts as a command where it is written as one: in backticks, at the start of an
indented line of a help text, in a shell code block, or after "run", "Next:" or "then".
Elsewhere the words after "llmstack" are prose ("llmstack creates ...") unless the first one
is a command, in which case the rest is checked too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import typer

from llmstack.cli import app
from tests.helpers import REPO

# Commands DESIGN.md plans and the docs may already name; none at present: prefer fixing the
# docs to adding one here.
PLANNED: set[str] = set()

STRONG = re.compile(r"`llmstack (?P<cmd>[^`]*)`"
                    r"|(?:^[ \t]{2,}|\brun:?\s+|\bNext:\s+|\bthen\s+)llmstack (?P<tail>[^\n`]*)",
                    re.M)
WEAK = re.compile(r"(?<![\w/.-])llmstack (?P<tail>[^\n`]*)")
SHELL_LINE = re.compile(r"(?:^\s*(?:\$\s+|-\s+run:\s+)?|[;&|]\s*|\bdo\s+)(?:\S*/)?llmstack\s+"
                        r"(?P<tail>.*)$")
STOP = {"|", "||", "&&", ";", ">", ">>", "2>", "#"}
SHELL_FENCES = {"", "bash", "sh", "shell", "console", "yaml"}


@dataclass(frozen=True)
class Mention:
    where: str
    words: tuple[str, ...]
    strong: bool

    def __str__(self) -> str:
        return f"{self.where}: llmstack {' '.join(self.words)}"


def _words(tail: str) -> tuple[str, ...]:
    out: list[str] = []
    for raw in tail.split():
        if raw in STOP or raw.startswith((">", "#")):
            break
        word = raw.strip("[]").rstrip(".,:;)")
        if word:
            out.append(word)
        if raw.endswith((";", ")", ",", ":")) or (raw.endswith(".") and not raw.endswith("..")):
            break  # the end of a shell command or of the sentence
    return tuple(out)


def _mentions_in_text(where: str, text: str) -> Iterator[Mention]:
    strong_spans: list[tuple[int, int]] = []
    for m in STRONG.finditer(text):
        strong_spans.append(m.span())
        yield Mention(where, _words(m.group("cmd") if m.group("cmd") is not None
                                    else m.group("tail")), True)
    for m in WEAK.finditer(text):
        if not any(a <= m.start() < b for a, b in strong_spans):
            yield Mention(where, _words(m.group("tail")), False)


def _python_strings(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every string literal (adjacent ones joined); an f-string with {} for each field."""
    in_fstring = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                  for v in node.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in node.values]
            yield node.lineno, "".join(str(p) for p in parts)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in in_fstring):
            yield node.lineno, node.value


def _from_markdown(path: Any) -> Iterator[Mention]:
    rel = path.relative_to(REPO)
    fence: str | None = None
    prose: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:].strip() if fence is None else None
            continue
        if fence is None:
            prose.append((number, line))
        elif fence in SHELL_FENCES:
            shell = SHELL_LINE.search(line.split(" # ")[0])
            if shell:
                yield Mention(f"{rel}:{number}", _words(shell.group("tail")), True)
    for number, line in prose:
        yield from _mentions_in_text(f"{rel}:{number}", line)


def mentions() -> list[Mention]:
    found: list[Mention] = []
    for path in sorted((REPO / "src").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for line, text in _python_strings(tree):
            found += _mentions_in_text(f"{path.relative_to(REPO)}:{line}", text)
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        found += _from_markdown(path)
    return found


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option":
            names.update(param.opts, param.secondary_opts)
    return names


CLI = typer.main.get_command(app)


def problem(mention: Mention) -> str | None:
    """Why the mention names no existing command (None when it does or is prose)."""
    words = list(mention.words)
    commands: dict[str, Any] = CLI.commands  # type: ignore[attr-defined]
    if not words or words[0] not in commands:
        if not mention.strong:
            return None
        if words and words[0].startswith("-"):
            return None if words[0] in _options(CLI) else f"no global option {words[0]}"
        if " ".join(words[:2]) in PLANNED or (words and words[0] in PLANNED):
            return None
        return f"no command {words[0] if words else '(none)'!r}"
    command = commands[words.pop(0)]
    name = command.name
    if hasattr(command, "commands") and words and not words[0].startswith("-"):
        sub = words.pop(0)
        if sub not in command.commands:
            return f"{name} has no subcommand {sub!r} (has: {', '.join(command.commands)})"
        command = command.commands[sub]
        name += f" {sub}"
    for word in words:
        option = word.split("=", 1)[0]
        if re.fullmatch(r"--?[A-Za-z][\w-]*", option) and option not in _options(command):
            return f"`llmstack {name}` has no option {option}"
    return None


def test_every_command_named_in_hints_and_docs_exists() -> None:
    found = mentions()
    wrong = [f"{m}: {why}" for m in found if (why := problem(m))]
    assert not wrong, "\n".join(wrong)


def test_the_scan_finds_the_commands_users_are_told_to_run() -> None:
    """The collector really sees hints and docs (a regex gone blind passes the test above)."""
    seen = {" ".join(m.words[:2]) for m in mentions() if m.strong}
    assert {"up", "images build", "rotate-key --finish", "export compose", "init --force",
            "logs nginx", "doctor --json"} <= seen
    where = {m.where.split(":")[0] for m in mentions() if m.strong}
    assert {"README.md", "docs/CI.md", "src/llmstack/cli.py", "src/llmstack/doctor.py"} <= where


@pytest.mark.parametrize(("text", "strong", "why"), [
    ("run `llmstack build` as root", True, "no command 'build'"),
    ("run `llmstack images bild`", True, "images has no subcommand 'bild'"),
    ("then `llmstack rotate-key --finsh`", True, "has no option --finsh"),
    ("Next: llmstack upp", True, "no command 'upp'"),
    ("fix: llmstack up --jsn (see above)", False, "has no option --jsn"),
])
def test_a_wrong_command_is_caught(text: str, strong: bool, why: str) -> None:
    [mention] = [m for m in _mentions_in_text("x", text) if m.words]
    assert mention.strong is strong
    assert why in (problem(mention) or "")


@pytest.mark.parametrize("text", [
    "a volume llmstack creates for models", "by llmstack from stack.yaml",
    "llmstack local CA for {}", "which llmstack no longer keeps",
    "run `llmstack images build --only litellm`", "`llmstack logs nginx -f --tail 50`",
    "`llmstack --version`",
])
def test_prose_and_right_commands_pass(text: str) -> None:
    assert all(problem(m) is None for m in _mentions_in_text("x", text))
