"""Imported modules are parsed without their top-level definitions, which are parsed when first looked up."""

from __future__ import annotations

import ast
from pathlib import Path

import libcst as cst
import pytest

from maskcheck import parsing
from maskcheck.analysis import project
from maskcheck.analysis.project import ModuleContext
from maskcheck.engine import check_source
from maskcheck.settings import Settings

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


def _count_parses(monkeypatch, module_text: bool = False) -> list:
    """Record the texts parsed through the project index, and with `module_text` those of a module's own text."""
    parsed: list = []
    original = project.parse_module

    def counting(text: str) -> cst.Module:
        parsed.append(text)
        return original(text)

    monkeypatch.setattr(project, "parse_module", counting)
    if module_text:
        # A module's own text goes through `parse_module_in_parts`, which calls the parsing module's name. So does
        # the engine's parse of the checked file.
        monkeypatch.setattr(parsing, "parse_module", counting)
    return parsed


def test_build_lazy_parses_nothing_until_read(monkeypatch):
    parsed = _count_parses(monkeypatch, module_text=True)
    context = _lazy(MODULE)
    assert parsed == []
    assert context.imports.resolve(cst.Name("LayerBlock")) == "pkg.layers.Block"
    assert sorted(context.functions) == ["first", "with_import"]
    assert parsed == []
    # `with_import` contains an import, so it stays in the module's text: reading it parses the module once.
    assert context.functions["with_import"].name.value == "with_import"
    assert len(parsed) == 1
    assert context.module.body[4] is context.functions["with_import"]
    assert len(parsed) == 1


@pytest.mark.parametrize("in_module_text_last", [False, True])
def test_build_lazy_last_definition_wins(in_module_text_last):
    in_module_text = "def twice(mask):\n    import torch\n    return 'kept'\n"
    deferred = "def twice(mask):\n    return 'deferred'\n"
    text = deferred + "\n\n" + in_module_text if in_module_text_last else in_module_text + "\n\n" + deferred
    lazy, full = _lazy(text), _full(text)
    assert _code(lazy.functions["twice"]) == _code(full.functions["twice"])
    assert ("kept" in _code(lazy.functions["twice"])) is in_module_text_last


def test_build_lazy_unparsable_module_text(monkeypatch):
    context = _lazy(MODULE)
    text, starts = context._skeleton
    # As if `_stands_alone` had misjudged a definition: the text left for the module no longer parses.
    context._skeleton = (text.replace("HEADS = 8", "HEADS = (", 1), starts)
    assert context.functions["with_import"].name.value == "with_import"
    assert context.module is context.full_tree
    assert context.module.code == MODULE
    assert context.locate(context.functions["with_import"].name)[1] == "with_import"
    assert isinstance(context.classes["Attention"], cst.ClassDef)


CALLER = """import torch.nn as nn
from .helpers import Helper, expand


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2)
        self.kinds = (Helper, expand)

    def forward(self, x, mask):
        return self.attn(x, x, x, attn_mask=MASK_EXPRESSION)[0]
"""

HELPERS = """import torch


class Helper:
    def __init__(self, value):
        self.value = value


def expand(mask, heads):
    return mask.repeat(heads, 1, 1)
"""


@pytest.mark.parametrize(
    ("mask_expression", "parses_helpers"), [("mask.repeat(2, 1, 1)", False), ("expand(mask, 2)", True)]
)
def test_named_import_is_parsed_only_when_called(tmp_path, monkeypatch, mask_expression, parses_helpers):
    package = tmp_path / "lazyref"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text(HELPERS)
    caller = package / "blocks.py"
    caller.write_text(CALLER.replace("MASK_EXPRESSION", mask_expression))
    parsed = _count_parses(monkeypatch)
    findings = check_source(caller.read_text(), str(caller), Settings())
    # The caller's own tree comes from the engine; a parse through the project index is one of `helpers.py`.
    # Naming `Helper` and `expand` parses nothing; calling `expand` parses it.
    assert bool(parsed) is parses_helpers
    assert [finding.code for finding in findings] == ["MSK101"]


# The stdlib parser takes a line with only a backslash before an indented statement; libcst 1.9 does not.
REJECTED_BY_LIBCST = """import sys

if sys.platform:
    \\
    FLAG = True


def expand(mask, heads):
    return mask.repeat(heads, 1, 1)
"""


def test_import_that_libcst_rejects_is_treated_as_library(tmp_path):
    package = tmp_path / "rejected"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text(REJECTED_BY_LIBCST)
    caller = package / "blocks.py"
    caller.write_text(CALLER.replace("MASK_EXPRESSION", "expand(mask, 2)"))
    ast.parse(REJECTED_BY_LIBCST)
    with pytest.raises(cst.ParserSyntaxError):
        cst.parse_module(REJECTED_BY_LIBCST)

    # Not an error of blocks.py: `expand` is not followed, as for a module that fails to load.
    assert check_source(caller.read_text(), str(caller), Settings()) == []
    index = project.ProjectIndex([tmp_path])
    assert index.find("rejected.helpers") is None


def test_dropped_context_freed_without_gc():
    # The definition mappings refer back to their context weakly, so a context that the cache drops is freed at
    # once, with the trees that only it references, instead of waiting for a full garbage collection.
    import gc
    import weakref

    context = _lazy(MODULE)
    assert context.functions["with_import"] is not None and context.classes["Attention"] is not None
    assert context.parsed_definitions
    dropped = weakref.ref(context)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del context
        assert dropped() is None
    finally:
        if enabled:
            gc.enable()
