"""docs/MODELS.md and docs/VSCODE_SETUP.md say what the code does: every row of the memory
table is llmstack's own estimate (gpu.estimate), the stack.yaml example validates, and every
link between the guides (the API guide's "Next steps" included) leads to a file and heading
that exist."""

from __future__ import annotations

import re

import pytest
import yaml

from llmstack import gpu, initialize, spec
from llmstack.spec import ModelSpec
from tests.helpers import REPO

DOCS = REPO / "docs"
MODELS = (DOCS / "MODELS.md").read_text()
GIB = 1024


def table_rows() -> list[list[str]]:
    lines = MODELS.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| name | backend |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_table_has_rows() -> None:
    assert len(table_rows()) >= 6


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_row_is_the_estimators_answer(row: list[str]) -> None:
    name, backend, source, context, weights, kv, overhead, per_gpu = row
    model = ModelSpec(name=name, backend=backend, source=source, gpus=[0], context=int(context))
    est = gpu.estimate(model)
    assert est.weights_mib is not None and est.kv_mib is not None and est.need_mib is not None
    assert [weights, kv, overhead, per_gpu] == [
        f"{value / GIB:.1f}" for value in (est.weights_mib, est.kv_mib, est.overhead_mib,
                                           est.need_mib)]


def test_the_two_model_example_is_a_valid_stack() -> None:
    block = re.search(r"```yaml\n(models:\n.*?)```", MODELS, re.S)
    assert block
    data = yaml.safe_load(initialize.starter())
    data["models"] = yaml.safe_load(block.group(1))["models"]
    parsed = spec.parse(yaml.safe_dump(data))
    assert [m.name for m in parsed.models] == ["qwen-coder-32b", "qwen-coder-1.5b"]


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", ["API_USAGE.md", "MODELS.md", "VSCODE_SETUP.md"])
def test_links_between_the_guides_resolve(doc: str) -> None:
    text = (DOCS / doc).read_text()
    links = re.findall(r"\]\(([A-Z_]+\.md)(?:#([a-z0-9-]+))?\)", text)
    assert links or doc != "API_USAGE.md"
    for target, anchor in links:
        path = DOCS / target
        assert path.is_file(), f"{doc} links to {target}, which does not exist"
        if anchor:
            headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}
            assert anchor in headings, f"{doc} links to {target}#{anchor}"


def test_the_api_guide_ends_with_the_three_next_steps() -> None:
    tail = (DOCS / "API_USAGE.md").read_text().split("## Next steps", 1)[1]
    assert re.findall(r"\]\(([A-Z_]+\.md)", tail) == ["VSCODE_SETUP.md", "SECURITY.md",
                                                      "MODELS.md"]
