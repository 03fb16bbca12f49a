"""Parsing a large module in parts of whole top-level statements gives the tree of one parse of its text."""

import ast
import shutil
import textwrap
from pathlib import Path

import libcst as cst
import pytest
from conftest import BUGGY_BLOCK, BUGGY_COLUMN, BUGGY_LINE, large_filler

from maskcheck import parsing
from maskcheck.engine import check_source
from maskcheck.parsing import parse_module_in_parts

CROSS_MODULE = Path(__file__).resolve().parents[1] / "fixtures" / "cross_module"

SOURCES = {
    "comments between statements": """\
        #!/usr/bin/env python
        # -*- coding: utf-8 -*-
        \"\"\"Docstring.\"\"\"
        import torch  # trailing


        # above f
        def f(x):
            return x
            # indented after the body

        # above the decorator
        @decorator(1)
        @other
        class A(Base):
            y = 1
        # last comment
        """,
    "two-space blocks after a part without one": """\
        import os
        import sys
        def f():
          if os:
            return 1
          return 2
        class B:
          def g(self):
            pass
        """,
    "tab blocks": "import os\n\ndef f():\n\tif os:\n\t\treturn 1\n\treturn 2\n\nx = 3\n",
    "statements sharing a line": "a = 1; b = 2\nc = 3; d = 4\nif a: b = 5\nelse:\n    c = 6\n",
    "no newline at the end": "import os\n\ndef f():\n    return os\n\nx = f()",
    "compound clauses": """\
        try:
            import torch
        except ImportError:
            torch = None
        else:
            pass
        finally:
            done = True
        for i in range(3):
            pass
        else:
            i = 0
        while False:
            pass
        with open("f") as handle:
            pass
        """,
    "match statement": """\
        import sys
        match sys.argv:
            case [_, "x"]:
                mode = 1
            case _:
                mode = 2
        print(mode)
        """,
    "backslash line joins the next statement": "x = 1\n\\\ny = 2\nz = 3\n",
    "mixed indentation between blocks": "def f():\n\treturn 1\n\ndef g():\n    return 2\n",
    "blank lines with spaces and form feeds": "import os\n   \n\x0c\ndef f():\n    pass\n  \n\nx = 1\n",
}


@pytest.fixture
def always_in_parts(monkeypatch):
    """Parse every source in parts, one top-level statement each."""
    monkeypatch.setattr(parsing, "PARSE_IN_PARTS_CHARACTERS", 0)
    monkeypatch.setattr(parsing, "PART_CHARACTERS", 1)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_parts_give_the_tree_of_the_whole_text(name, always_in_parts):
    text = SOURCES[name]
    source = textwrap.dedent(text) if text.startswith(" ") or "\n        " in text else text
    joined = parse_module_in_parts(source, ast.parse(source))
    whole = cst.parse_module(source)
    # libcst itself drops the lone backslash line, so the whole parse's text is the reference.
    assert joined.code == whole.code
    assert joined.deep_equals(whole)


def _part_count(monkeypatch, source):
    calls = []
    real = parsing.parse_module

    def counting(text):
        calls.append(text)
        return real(text)

    monkeypatch.setattr(parsing, "parse_module", counting)
    parse_module_in_parts(source, ast.parse(source))
    return calls


def test_a_large_source_is_parsed_in_parts(monkeypatch, always_in_parts):
    source = textwrap.dedent(SOURCES["comments between statements"])
    calls = _part_count(monkeypatch, source)
    # docstring, import, def, class: one parse each, and no parse of the whole text.
    assert len(calls) == 4
    assert source not in calls
    assert "".join(calls) == source


@pytest.mark.parametrize(
    "name",
    [
        "mixed indentation between blocks",
        "backslash line joins the next statement",
        "blank lines with spaces and form feeds",
    ],
)
def test_parts_that_do_not_join_fall_back_to_one_parse(monkeypatch, always_in_parts, name):
    source = SOURCES[name]
    calls = _part_count(monkeypatch, source)
    assert calls[-1] == source
    assert len(calls) > 1


def test_parts_group_statements_up_to_size(monkeypatch):
    monkeypatch.setattr(parsing, "PART_CHARACTERS", 40)
    source = "# header\nimport os\nx = 1\n\ny = 2\nTABLE = [\n    1, 2, 3, 4, 5, 6, 7, 8, 9, 10,\n]\nz = 3\n"
    lines = parsing.LINE.findall(source)

    texts = parsing._part_texts(lines, parsing.top_level_segments(ast.parse(source), len(lines)))

    assert texts == [
        "# header\nimport os\nx = 1\n\ny = 2\n",
        "TABLE = [\n    1, 2, 3, 4, 5, 6, 7, 8, 9, 10,\n]\n",
        "z = 3\n",
    ]


def test_part_that_prints_differently_stops_the_parts(monkeypatch, always_in_parts):
    # libcst drops the first of the two blank lines before the form feed, at the end of the second part.
    source = "a = 1\nb = 2\n\n\x0c\nc = 3\nd = 4\n"
    calls = _part_count(monkeypatch, source)
    assert calls == ["a = 1\n", "b = 2\n\n\x0c\n", source]


def test_a_small_source_is_parsed_whole(monkeypatch):
    source = "import os\nx = 1\n"
    calls = _part_count(monkeypatch, source)
    assert calls == [source]


def test_large_module_findings_keep_positions(monkeypatch):
    fillers = large_filler(900)
    source = fillers + "\n\n" + BUGGY_BLOCK + fillers
    assert len(source) >= parsing.PARSE_IN_PARTS_CHARACTERS
    calls = _part_count(monkeypatch, source)
    assert len(calls) > 1
    assert source not in calls
    monkeypatch.undo()

    in_parts = check_source(source, "big.py")
    monkeypatch.setattr(parsing, "PARSE_IN_PARTS_CHARACTERS", len(source) + 1)
    whole = check_source(source, "big.py")

    expected_line = source[: source.index(BUGGY_BLOCK)].count("\n") + BUGGY_LINE
    positions = [(finding.line, finding.col, finding.code) for finding in in_parts]
    assert positions == [(expected_line, BUGGY_COLUMN, "MSK101")]
    assert in_parts == whole


def test_large_imported_module_parsed_in_parts(tmp_path, monkeypatch):
    package = tmp_path / "padding_helpers"
    shutil.copytree(CROSS_MODULE / "padding_helpers", package)
    monkeypatch.chdir(tmp_path)
    # Top-level statements after the helpers, so that the text left after its functions is large.
    row = "TABLE_{0} = [{0}, {0} + 1, {0} + 2, 'padding entry of the table']\n"
    table = "".join(row.format(index) for index in range(3000))
    masking = package / "masking.py"
    masking.write_text(masking.read_text() + "\n" + table)
    assert len(table) >= parsing.PARSE_IN_PARTS_CHARACTERS
    parsed = []
    real_parse = cst.parse_module
    monkeypatch.setattr(cst, "parse_module", lambda text, *rest: parsed.append(len(text)) or real_parse(text, *rest))

    (finding,) = check_source((package / "decoder.py").read_text(), "padding_helpers/decoder.py")

    assert finding.expression_path == "padding_helpers/masking.py"
    assert (finding.expression_line, finding.expression_col) == (23, 12)
    assert parsed
    assert max(parsed) < parsing.PARSE_IN_PARTS_CHARACTERS


# -------------------------------------------------------------------------------------------------------------------
# Long list, tuple and set displays, parsed in chunks of elements

DISPLAYS = {
    "list with comments and a trailing comma": (
        "# header\nTABLE = [\n    # first\n    info('a', dtypes=(1, 2)),  # after a\n\n    info('b'),\n"
        "    # between\n    info(\n        'c',  # inside\n    ),\n]\nafter = 1\n"
    ),
    "starred elements": "OPS = [*first_ops, make(1), *second_ops, make(2)]\n",
    "redundant parentheses around elements": "ROWS = [a, b, (c), d, ((e)), f]\n",
    "multi-line elements without their own brackets": "X = [\n    a +\n    b,\n    'x'\n    'y',\n    c,\n]\n",
    "nested displays": "GRID = [[1, 2], [3, [4, 5]], {6, 7}, (8,), {'k': [9]}]\n",
    "set": "NAMES = {\n    'abs',\n    'add',  # binary\n    'mul',\n}\n",
    "parenthesized tuple": "PAIRS = (\n    (1, 2),\n    (3, 4),\n    (5, 6)\n)\n",
    "annotated assignment": "op_db: list[OpInfo] = [OpInfo('a'), OpInfo('b'), OpInfo('c')]\n",
    "expression statement": "[setup(1), setup(2), setup(3)]\n",
    "non-ASCII text before elements": "NOMS = ['école', 'été', \"naïve\", 'ü' * 3]\n",
    "CRLF line breaks": "TABLE = [\r\n    one(),\r\n    two(),  # c\r\n    three(),\r\n]\r\n",
    "comment after the last element": "T = [\n    a,\n    b  # last\n]\n",
    "lambda and conditional elements": "F = [lambda x: x, y if z else w, (yield_ := 3), not q]\n",
    "CRLF inside a string of the first chunk": 'x = [\n    """a\r\nb""",\n    c,\n    d,\n]\n',
    "statement after the display on its last line": "before = 0\nx = [\n    a,\n    b]; y = 1\n",
}


@pytest.fixture
def displays_in_chunks(monkeypatch, always_in_parts):
    """Parse every source in parts, and every display statement one element per chunk."""
    monkeypatch.setattr(parsing, "SPLIT_DISPLAY_CHARACTERS", 0)
    monkeypatch.setattr(parsing, "DISPLAY_CHUNK_CHARACTERS", 1)


# Displays whose statement is not cut into chunks, but whose file must still parse as one parse does.
_NOT_CHUNKED = {"statement after the display on its last line"}


@pytest.mark.parametrize("name", sorted(DISPLAYS))
def test_display_chunks_equal_one_parse(name, displays_in_chunks, monkeypatch):
    source = DISPLAYS[name]
    if name == "CRLF inside a string of the first chunk":
        # Chunks of two elements, so that the first chunk contains the string with its `\r\n`.
        monkeypatch.setattr(parsing, "DISPLAY_CHUNK_CHARACTERS", 11)

    parts = parsing.split_into_parts(source, ast.parse(source))
    joined = parsing.parse_parts(source, parts)

    assert any(isinstance(part, parsing.DisplayPart) for part in parts) != (name in _NOT_CHUNKED)
    assert joined.code == source
    assert joined.deep_equals(cst.parse_module(source))


def test_display_never_parsed_whole(monkeypatch, displays_in_chunks):
    source = DISPLAYS["list with comments and a trailing comma"]
    calls = _part_count(monkeypatch, source)

    statement = source[source.index("TABLE") : source.index("after")]
    assert statement not in calls
    assert any(parsing.DISPLAY_PLACEHOLDER in call for call in calls)


def test_redundant_parentheses_never_end_a_chunk(displays_in_chunks):
    source = DISPLAYS["redundant parentheses around elements"]

    (part,) = parsing.split_into_parts(source, ast.parse(source))

    # The stdlib parser's positions of `c` and `e` leave out their parentheses, so no chunk starts or ends there.
    assert part.chunks == ("a", "b, (c), d, ((e)), f")


def test_parenthesized_first_element_parsed_whole(displays_in_chunks):
    source = "ROWS = [(a), b, c]\n"

    parts = parsing.split_into_parts(source, ast.parse(source))

    assert parts is None or not any(isinstance(part, parsing.DisplayPart) for part in parts)
    assert parsing.parse_parts(source, parts).deep_equals(cst.parse_module(source))


def test_display_chunks_grouped_up_to_size(monkeypatch, displays_in_chunks):
    monkeypatch.setattr(parsing, "DISPLAY_CHUNK_CHARACTERS", 20)
    source = "ROWS = [\n" + "".join(f"    row({number}),\n" for number in range(10)) + "]\n"

    (part,) = parsing.split_into_parts(source, ast.parse(source))

    assert 1 < len(part.chunks) < 10
    assert all(len(chunk) >= 20 for chunk in part.chunks[:-1])
    assert parsing.parse_parts(source, [part]).code == source


def test_failed_display_parsed_whole(monkeypatch, displays_in_chunks):
    source = DISPLAYS["set"]
    monkeypatch.setattr(parsing, "_parse_display_part", lambda part: None)
    calls = _part_count(monkeypatch, source)

    assert calls == [source]


def test_failed_skeleton_parses_its_part(monkeypatch, displays_in_chunks):
    """A tuple without brackets whose skeleton does not parse: that part is parsed whole, not the whole file."""
    source = "z = 0\nx = (a) if b else c, d, e, (f)\n"
    calls = _part_count(monkeypatch, source)

    assert source not in calls
    assert "x = (a) if b else c, d, e, (f)\n" in calls
    assert parse_module_in_parts(source, ast.parse(source)).deep_equals(cst.parse_module(source))
