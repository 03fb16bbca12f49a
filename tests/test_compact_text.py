"""`compact_text` takes a shortcut for plain names and attribute chains, so it must return what code generation
returns."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest

from maskcheck.analysis.names import compact_text, source_text

REPO_ROOT = Path(__file__).resolve().parents[1]

SPELLINGS = ["a", "a.b.c", "a . b", "(a).b", "(a.b)", "a.\\\n    b", "(a  # note\n .b)", "self.num_heads", "x.y .z"]


def _generated(node: cst.CSTNode) -> str:
    return "".join(source_text(node).split())


@pytest.mark.parametrize("text", SPELLINGS)
def test_compact_text_of_spelling(text):
    node = cst.parse_expression(text)

    assert compact_text(node) == _generated(node)


def test_compact_text_on_fixture_names():
    checked = 0
    for path in sorted((REPO_ROOT / "fixtures").rglob("*.py")):
        try:
            module = cst.parse_module(path.read_text(encoding="utf-8"))
        except cst.ParserSyntaxError:
            continue
        stack = [module]
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if isinstance(node, (cst.Name, cst.Attribute)):
                assert compact_text(node) == _generated(node), f"{path.name}: {_generated(node)}"
                checked += 1

    assert checked > 1000
