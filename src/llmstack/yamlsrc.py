"""Load YAML safely and remember the line of every node, so errors can point at it."""

from __future__ import annotations

from typing import Any

import yaml

from .errors import Problem, SpecError

# Expanded-node budget: a small stack.yaml has a few hundred nodes; a "billion laughs"
# document built from aliases would have billions. Refuse before anything walks it.
MAX_NODES = 20_000

Path = tuple[str | int, ...]


def _walk(node: yaml.Node, path: Path, lines: dict[Path, int], budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooBig
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            lines.setdefault((*path, name), key.start_mark.line + 1)
            _walk(value, (*path, name), lines, budget)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, budget)


class _TooBig(Exception):
    pass


def load(text: str, file: str) -> tuple[Any, dict[Path, int]]:
    """Parse `text`; return the data and a map from field path to 1-based line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError(file, [Problem("(document)", "is nested too deeply",
                                       hint="flatten the document")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(file, [Problem("(document)", f"not valid YAML: {problem}", line=line,
                                       hint="check indentation, colons and quotes")]) from None
    if node is None:
        return None, {}
    lines: dict[Path, int] = {}
    try:
        _walk(node, (), lines, [MAX_NODES])
    except _TooBig:
        raise SpecError(file, [Problem(
            "(document)", f"expands to more than {MAX_NODES} nodes (YAML aliases?)",
            hint="write the stack out plainly; deeply nested anchors are refused")]) from None
    except RecursionError:
        raise SpecError(file, [Problem("(document)", "is nested too deeply",
                                       hint="flatten the document")]) from None
    try:
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise SpecError(file, [Problem("(document)", f"not valid YAML: {exc}")]) from None
    return data, lines
