"""Run the analyser over every file in fixtures/ and compare its findings with the file's `# expect:` markers.

A marker is a trailing comment `# expect: MSK101` (or `# expect: MSK101, MSK101` for two findings) on the line
where a finding must be reported. Lines without a marker must produce no finding.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from maskcheck.engine import check_source
from maskcheck.findings import Finding, SourceError

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"
FIXTURE_PATHS = sorted(FIXTURES_DIR.rglob("*.py"))

EXPECT_COMMENT = re.compile(r"#\s*expect:\s*(?P<codes>.*)$")
RULE_CODE = re.compile(r"^[A-Z]+[0-9]+$")
BACKTICK_SPAN = re.compile(r"`([^`]+)`")
SUGGESTION_WORD = re.compile(r"\b(use|instead)\b", re.IGNORECASE)
TRUNCATION_MARKS = ("...", "\u2026")


# Rows 1-49 of the truth table measured on PyTorch 2.13 (N=3, H=2, L=4, S=5, a different mask per example) have a
# per-example, per-(example, head) or per-head source. HEAD_MAJOR_ROWS lists the rows that run without an error
# but give the merged batch-by-head axis the wrong order (row 19 also scrambles the rows inside each slot).
TRUTH_TABLE_ROWS = frozenset(range(1, 50))
HEAD_MAJOR_ROWS = frozenset({3, 4, 5, 8, 10, 12, 15, 19, 22, 24, 32, 38, 40, 42, 45, 48})
ROW_LABEL = re.compile(r"Truth table row (\d+)")


def fixture_id(path: Path) -> str:
    return path.relative_to(FIXTURES_DIR).as_posix()


def read_expectations(text: str, name: str) -> Counter:
    """Return the expected (line, code) pairs of a fixture as a multiset.

    Only real comment tokens count, so `# expect:` inside a string is ignored. A malformed marker, a marker on a
    line without code, or a `# noqa` comment fails the test, because each would hide or misplace an expected
    finding.
    """
    expected: Counter = Counter()
    lines = text.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type != tokenize.COMMENT:
            continue
        line_number, column = token.start
        if re.search(r"#\s*noqa\b", token.string, re.IGNORECASE):
            pytest.fail(f"{name}:{line_number}: fixtures must not use `# noqa`, which would hide findings")
        match = EXPECT_COMMENT.search(token.string)
        if match is None:
            continue
        if not lines[line_number - 1][:column].strip():
            pytest.fail(f"{name}:{line_number}: `# expect:` must trail the code line it refers to, not stand alone")
        codes = [code.strip() for code in match.group("codes").split(",")]
        for code in codes:
            if not RULE_CODE.match(code):
                pytest.fail(f"{name}:{line_number}: invalid rule code {code!r} in marker {token.string!r}")
            expected[(line_number, code)] += 1
    return expected


def run_analyser(text: str, name: str) -> List[Finding]:
    try:
        # The real path lets the analyser find sibling modules that a multi-file fixture imports.
        return check_source(text, str(FIXTURES_DIR / name))
    except SourceError as error:
        pytest.fail(f"{name}: the analyser rejected the fixture: {error}")


def describe_mismatch(
    name: str, lines: List[str], missing: Counter, unexpected: Counter, messages: Dict[Tuple[int, str], List[str]]
) -> str:
    report = [f"{name}: {sum(missing.values())} missing, {sum(unexpected.values())} unexpected finding(s)"]
    for (line, code), count in sorted(missing.items()):
        source = lines[line - 1].strip() if line <= len(lines) else "<past end of file>"
        report.append(f"  missing    line {line:>4} {code} x{count}: {source}")
    for (line, code), count in sorted(unexpected.items()):
        for message in messages[(line, code)][:count]:
            report.append(f"  unexpected line {line:>4} {code}: {message}")
    return "\n".join(report)


def test_fixtures_directory_has_files():
    assert FIXTURE_PATHS, f"no fixture files found under {FIXTURES_DIR}; the comparison test would check nothing"


@pytest.mark.parametrize("path", FIXTURE_PATHS, ids=fixture_id)
def test_fixture_is_valid_python(path: Path):
    text = path.read_text(encoding="utf-8")
    compile(text, fixture_id(path), "exec", dont_inherit=True)


@pytest.mark.parametrize("path", FIXTURE_PATHS, ids=fixture_id)
def test_fixture_findings_match_markers(path: Path):
    name = fixture_id(path)
    text = path.read_text(encoding="utf-8")
    expected = read_expectations(text, name)

    findings = run_analyser(text, name)
    actual = Counter((finding.line, finding.code) for finding in findings)
    messages: Dict[Tuple[int, str], List[str]] = {}
    for finding in findings:
        messages.setdefault((finding.line, finding.code), []).append(f"col {finding.col}: {finding.message}")

    missing = expected - actual
    unexpected = actual - expected
    assert not missing and not unexpected, describe_mismatch(name, text.splitlines(), missing, unexpected, messages)


def _normalise(code: str) -> str:
    return "".join(code.split())


def _text_from(lines: List[str], line: int, col: int) -> str:
    """Return the source from a 1-based (line, col) position to the end of the file."""
    rest = [lines[line - 1][col - 1 :]]
    rest.extend(lines[line:])
    return "\n".join(rest)


def _lines_without_comments(text: str) -> List[str]:
    """Return the lines of a file with each comment cut off (comments always run to the end of their line)."""
    lines = text.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            line_number, column = token.start
            lines[line_number - 1] = lines[line_number - 1][:column]
    return lines


def _quotes_flagged_expression(span: str, source_from_finding: str) -> bool:
    """Return whether the span is the code at the finding's position: a whole expression, or a truncated start."""
    quoted = span
    truncated = False
    for mark in TRUNCATION_MARKS:
        if quoted.endswith(mark):
            quoted = quoted[: -len(mark)]
            truncated = True
    if not truncated:
        try:
            ast.parse(quoted.strip(), mode="eval")
        except SyntaxError:
            return False
    quoted = _normalise(quoted)
    return bool(quoted) and _normalise(source_from_finding).startswith(quoted)


FIXTURES_WITH_MARKERS = [
    path for path in FIXTURE_PATHS if "# expect:" in path.read_text(encoding="utf-8")
]


@pytest.mark.parametrize("path", FIXTURES_WITH_MARKERS, ids=fixture_id)
def test_finding_messages_quote_code_and_fix(path: Path):
    """Each message quotes the flagged expression and gives replacement code.

    The quote is a backtick span that parses as a Python expression and whose text (whitespace ignored) is what
    the file contains at the finding's line and column. A quote cut short with a trailing "..." only has to match
    the start. The suggestion is the word "use" or "instead"
    and a second backtick span that differs from the quote.
    """
    name = fixture_id(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    # Quotes leave comments out, so a multi-line expression with a marker inside is compared without it.
    code_lines = _lines_without_comments(text)
    findings = run_analyser(text, name)
    assert findings, f"{name}: the file has `# expect:` markers but the analyser reported nothing to check"

    for finding in findings:
        where = f"{name}:{finding.line}:{finding.col} {finding.code}"
        spans = BACKTICK_SPAN.findall(finding.message)
        source_from_finding = _text_from(code_lines, finding.line, finding.col)
        quotes = [span for span in spans if _quotes_flagged_expression(span, source_from_finding)]
        assert quotes, (
            f"{where}: the message quotes no code found at the finding's position.\n"
            f"  message: {finding.message}\n  source:  {lines[finding.line - 1].strip()}"
        )
        assert SUGGESTION_WORD.search(finding.message), f"{where}: no 'use' or 'instead' in: {finding.message}"
        suggestions = [span for span in spans if span not in quotes]
        assert suggestions, f"{where}: no replacement code in backticks besides the quote in: {finding.message}"


def test_truth_table_rows_all_present_and_marked():
    """Each row 1-49 is a class in fixtures/truth_table, with a marker exactly when the row is head-major."""
    marked_by_row: Dict[int, List[bool]] = {}
    for path in sorted((FIXTURES_DIR / "truth_table").glob("*.py")):
        name = fixture_id(path)
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        marker_lines = {line for line, _ in read_expectations(text, name)}
        for node in ast.parse(text).body:
            if not isinstance(node, ast.ClassDef):
                continue
            class_text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            marked = any(node.lineno <= line <= node.end_lineno for line in marker_lines)
            for row in ROW_LABEL.findall(class_text):
                marked_by_row.setdefault(int(row), []).append(marked)

    assert set(marked_by_row) == TRUTH_TABLE_ROWS, (
        f"truth-table rows without a fixture: {sorted(TRUTH_TABLE_ROWS - set(marked_by_row))}; "
        f"unknown rows: {sorted(set(marked_by_row) - TRUTH_TABLE_ROWS)}"
    )
    wrongly_marked = sorted(row for row, marks in marked_by_row.items() if any(marks) != (row in HEAD_MAJOR_ROWS))
    assert not wrongly_marked, f"rows whose `# expect:` marker disagrees with the measured verdict: {wrongly_marked}"
    partly_marked = sorted(row for row, marks in marked_by_row.items() if len(set(marks)) > 1)
    assert not partly_marked, f"rows with several cases of which only some are marked: {partly_marked}"
