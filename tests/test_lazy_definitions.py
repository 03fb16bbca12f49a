"""Imported modules are parsed without their top-level definitions, which are parsed when first looked up."""

from __future__ import annotations

import ast
from pathlib import Path

import libcst as cst
import pytest

from maskcheck.analysis.project import ModuleContext

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

MODULE = '''"""A module."""
import torch.nn as nn
from .layers import Block as LayerBlock

HEADS = 8; WIDTH = 64


# A comment above the function.
def first(x):
    return x.repeat(HEADS, 1, 1)


@decorator
@other.decorator(1)
class Attention(nn.Module):
    def forward(self, x):
        return self.attn(x, x, x)


def with_import(mask):
    from .masks import expand
    return expand(mask)


if WIDTH > 32:
    LIMIT = 1


def first(x):
    return x


class first:
    pass
'''


def _lazy(text: str) -> ModuleContext:
    return ModuleContext.build_lazy(text, ast.parse(text), "pkg.module", "pkg/module.py")


def _full(text: str) -> ModuleContext:
    return ModuleContext.build(cst.parse_module(text), "pkg.module", "pkg/module.py")


def _code(node: cst.CSTNode) -> str:
    """Return a definition's code without the blank and comment lines above it, which the module keeps."""
    return cst.Module(body=[]).code_for_node(node.with_changes(leading_lines=()))


def test_build_lazy_keeps_statements_without_definitions():
    context = _lazy(MODULE)
    statement_types = [type(statement).__name__ for statement in context.module.body]
    # The docstring, two imports, `HEADS = 8; WIDTH = 64`, the function with an import, and the `if`.
    assert statement_types == ["SimpleStatementLine"] * 4 + ["FunctionDef", "If"]
    assert context.module.code.count("\n") == MODULE.count("\n")


def test_build_lazy_names_every_definition():
    lazy, full = _lazy(MODULE), _full(MODULE)
    assert sorted(lazy.functions) == sorted(full.functions) == ["first", "with_import"]
    assert sorted(lazy.classes) == sorted(full.classes) == ["Attention", "first"]
    assert "missing" not in lazy.functions
    assert lazy.functions.get("missing") is None


def test_build_lazy_parses_later_definition_of_a_name():
    context = _lazy(MODULE)
    function = context.functions["first"]
    assert isinstance(function, cst.FunctionDef)
    assert _code(function).strip().endswith("return x")
    assert isinstance(context.classes["first"], cst.ClassDef)


def test_build_lazy_returns_one_node_per_name():
    context = _lazy(MODULE)
    assert context.classes["Attention"] is context.classes["Attention"]
    assert len(context.parsed_definitions) == 1


def test_build_lazy_reads_imports_inside_functions():
    lazy, full = _lazy(MODULE), _full(MODULE)
    assert lazy.imports.names_imported() == full.imports.names_imported()
    assert "pkg.masks.expand" in lazy.imports.names_imported()


def test_locate_finds_node_in_deferred_class():
    context = _lazy(MODULE)
    attention = context.classes["Attention"]
    call = attention.body.body[0].body.body[0].body[0].value
    where, text = context.locate(call)
    assert text == "self.attn(x, x, x)"
    assert where.start.line == MODULE.splitlines().index("        return self.attn(x, x, x)") + 1
    assert where.start.column == 15


def test_locate_finds_node_kept_in_module():
    context = _lazy(MODULE)
    condition = context.module.body[-1].test
    where, text = context.locate(condition)
    assert text == "WIDTH > 32"
    assert where.start.line == MODULE.splitlines().index("if WIDTH > 32:") + 1


def test_locate_ignores_foreign_node():
    assert _lazy(MODULE).locate(cst.parse_expression("x")) is None


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_build_lazy_finds_imports_across_line_breaks(newline):
    text = MODULE.replace("\n", newline)
    lazy, full = _lazy(text), _full(text)
    assert lazy.imports.names_imported() == full.imports.names_imported()
    assert [type(statement).__name__ for statement in lazy.module.body][-2:] == ["FunctionDef", "If"]
    assert _code(lazy.functions["first"]) == _code(full.functions["first"]).replace(newline, "\n")


def test_build_lazy_matches_full_build_on_fixtures():
    checked = 0
    for path in sorted(FIXTURES.rglob("*.py")):
        text = path.read_text()
        lazy, full = _lazy(text), _full(text)
        assert lazy.imports.names_imported() == full.imports.names_imported(), path
        for mine, theirs in ((lazy.functions, full.functions), (lazy.classes, full.classes)):
            assert sorted(mine) == sorted(theirs), path
            for name in theirs:
                assert _code(mine[name]) == _code(theirs[name]), (path, name)
                checked += 1
    assert checked > 200


def test_lazy_definitions_fall_back_to_full_parse():
    context = _lazy(MODULE)
    # A deferred text that does not hold the named definition makes the lookup parse the whole module.
    context.classes.defer("Attention", 1, "value = 1\n")
    attention = context.classes["Attention"]
    assert isinstance(attention, cst.ClassDef)
    assert attention.name.value == "Attention"
    assert context.parsed_definitions[0][0] == 0
    assert context.locate(attention.body.body[0].name)[1] == "forward"
    context.functions.defer("with_import", 1, "value = 1\n")
    assert context.functions["with_import"].name.value == "with_import"
    assert len(context.parsed_definitions) == 1


AWKWARD_MODULES = {
    # The stdlib parser puts this decorator on the line of `staticmethod`, below the `@`.
    "decorator_below_at": "def per_head(mask, heads):\n    return mask.repeat(heads, 1, 1)\n@(\n    staticmethod\n)\n"
    "def third(x):\n    return x\n",
    "decorator_below_at_first": "@(\n    staticmethod\n)\ndef third(x):\n    return x\n\n\n"
    "def per_head(mask, heads):\n    return mask.repeat(heads, 1, 1)\n",
    # A line with only a backslash joins the statement below it.
    "backslash_line": "def per_head(mask, heads):\n    return mask.repeat(heads, 1, 1)\n\\\nX = 1\n",
}


@pytest.mark.parametrize("name", sorted(AWKWARD_MODULES))
def test_build_lazy_matches_full_build_on_awkward_lines(name):
    text = AWKWARD_MODULES[name]
    lazy, full = _lazy(text), _full(text)
    for mine, theirs in ((lazy.functions, full.functions), (lazy.classes, full.classes)):
        assert sorted(mine) == sorted(theirs)
        for definition in theirs:
            assert _code(mine[definition]) == _code(theirs[definition])
    statement = lazy.functions["per_head"].body.body[0]
    expected_line = text.splitlines().index("    return mask.repeat(heads, 1, 1)") + 1
    assert lazy.locate(statement)[0].start.line == expected_line
