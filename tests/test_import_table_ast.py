"""The import table built from the stdlib parser's tree matches the one built from libcst's, name for name."""

from __future__ import annotations

import ast
from pathlib import Path

import libcst as cst
import pytest

from maskcheck.analysis import names
from maskcheck.analysis.names import ImportTable
from maskcheck.parsing import LINE as _LINE

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SOURCE = Path(__file__).resolve().parent.parent / "src" / "maskcheck"

# Each module imports one name, `m`, from several places: the table keeps the import its walk meets last, so
# these pin the walk's order through every kind of block.
ORDERS = {
    "if_else": "if c:\n    import a as m\nelse:\n    import b as m\n",
    "if_inline_else_block": "if c: import a as m\nelse:\n    import b as m\n",
    "if_block_else_inline": "if c:\n    import a as m\nelse: import b as m\n",
    "elif_chain": "if c:\n    import a as m\nelif d:\n    import b as m\nelif e: import e as m\nelse:\n    import f as m\n",
    "else_if_nested": "if c:\n    import a as m\nelse:\n    if d: import b as m\n    else:\n        import f as m\n",
    "try_every_part": (
        "try:\n    import a as m\nexcept ImportError:\n    import b as m\nelse:\n    import c as m\n"
        "finally:\n    import d as m\n"
    ),
    "try_inline_handler": "try:\n    import a as m\nexcept ImportError: import b as m\n",
    "for_else": "for x in y:\n    import a as m\nelse:\n    import b as m\n",
    "while_inline": "while x: import a as m\nimport b as m\n",
    "with_and_def": "with x:\n    import a as m\ndef f():\n    import b as m\nclass C:\n    import c as m\n",
    "match": "match x:\n    case 1:\n        import a as m\n    case 2: import b as m\n",
    "semicolons": "import a as m; import b as m\nif c: import d as m; import e as m\n",
    "backslash_suite": "if c: \\\n    import a as m\nelse:\n    import b as m\n",
    "comment_ends_in_backslash": "if c:  # see C:\\build\\\n    import a as m\nelse: import b as m\n",
    "comment_line_ends_in_backslash": "try:\n    # C:\\temp\\\n    import a as m\nexcept E: import b as m\n",
    "class_comment_backslash": "class A:  # \\\n    import a as m\n    if y: import b as m\n",
    "comment_backslash_cr": "if c:  # see C:\\build\\\r    import a as m\relse: import b as m\r",
    "non_ascii_prefix": "if 'é': import a as m\nelse:\n    import b as m\n",
    "relative_and_star": "from . import m\nfrom .. import n as m2\nfrom .pkg.mod import *\nfrom ...far import m3\n",
    "dotted": "import a.b.c\nimport d.e as m\nfrom f.g import h as m4, i\n",
}


def _tables(text: str, package: str = "pkg.sub"):
    lines = _LINE.findall(text)
    return (
        ImportTable.from_module(cst.parse_module(text), package)._aliases,
        ImportTable.from_ast(ast.parse(text), lines, package)._aliases,
    )


def _walk_orders(text: str):
    """The imported names of each import statement, in the order each walk yields the statements."""
    from_libcst = [
        ("*",) if isinstance(node.names, cst.ImportStar) else tuple(names.dotted_name(a.name) for a in node.names)
        for node in names._walk_imports(cst.parse_module(text))
    ]
    from_stdlib = [
        tuple(alias.name for alias in node.names)
        for node in names._walk_ast_imports(ast.parse(text), _LINE.findall(text))
    ]
    return from_libcst, from_stdlib


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_from_ast_matches_from_module(name):
    from_libcst, from_stdlib = _tables(ORDERS[name])
    assert from_stdlib == from_libcst
    assert from_stdlib


@pytest.mark.parametrize("name", sorted(ORDERS))
def test_ast_walk_meets_imports_in_libcst_order(name):
    from_libcst, from_stdlib = _walk_orders(ORDERS[name])
    assert from_stdlib == from_libcst
    assert len(from_stdlib) == ORDERS[name].count("import ")


def test_from_ast_keeps_the_last_import_met():
    # libcst's walk takes an `if` block's `else` part before its body; an inline body comes first of all.
    assert _tables(ORDERS["if_else"])[1]["m"] == "a"
    assert _tables(ORDERS["if_inline_else_block"])[1]["m"] == "b"


@pytest.mark.parametrize("package", [None, "pkg", "pkg.sub"])
def test_from_ast_resolves_relative_imports_like_from_module(package):
    text = ORDERS["relative_and_star"]
    from_libcst, from_stdlib = _tables(text, package)
    assert from_stdlib == from_libcst


def test_from_ast_on_own_code_and_fixtures():
    checked = 0
    for path in sorted([*FIXTURES.rglob("*.py"), *SOURCE.rglob("*.py")]):
        text = path.read_text(encoding="utf-8")
        from_libcst, from_stdlib = _tables(text)
        assert from_stdlib == from_libcst, path
        assert _walk_orders(text)[1] == _walk_orders(text)[0], path
        checked += bool(from_libcst)
    assert checked > 100
