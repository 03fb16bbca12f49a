"""`--add-noqa`: add a `# noqa: CODE` comment for every current finding, so a large code base can adopt maskcheck.

A comment goes where flake8 7 reads it for the finding (see maskcheck.noqa): at the end of the last line of the
finding's backslash continuation or multi-line string, which inside brackets is the finding's own line. When that
text already has a `# noqa: CODES` comment, the code is added to its list, because flake8 reads only the first
`# noqa`. Only comments change; every line keeps its newline.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from maskcheck.files import ReadError, SourceFile
from maskcheck.findings import Finding
from maskcheck.noqa import _INLINE_NOQA, filter_suppressed, statement_text_by_line
from maskcheck.report import PathProblem, Report, ReportedFinding
from maskcheck.rewrite import InterruptedRewrite, NotWritable, normalise_newlines, read_stored, write_atomically

_PHYSICAL_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_TRAILING_SEPARATORS = re.compile(r"[,\s]+$")


@dataclass
class NoqaEdit:
    """The new text, the findings it suppresses, and why each other finding could not get a comment."""

    text: str
    added: List[Finding] = field(default_factory=list)
    skipped: Dict[Finding, str] = field(default_factory=dict)


def add_noqa(text: str, findings: Sequence[Finding]) -> NoqaEdit:
    """Return `text` with noqa comments for `findings`. `text` keeps its newlines; findings count lines as Python does."""
    physical = _PHYSICAL_LINE.findall(text)
    normalised = [line.rstrip("\r\n") + "\n" for line in physical]
    groups = statement_text_by_line(normalised)
    comments = _comment_columns(normalised)
    edit = NoqaEdit(text)

    # Codes to add, keyed by the line whose comment gets them.
    wanted: Dict[int, List[Tuple[Finding, str]]] = {}
    for finding in findings:
        if not 0 < finding.line <= len(physical):
            edit.skipped[finding] = "the line is past the end of the file"
            continue
        first, last = _group_bounds(groups, normalised, finding.line)
        group_text = "".join(normalised[first - 1 : last])
        match = _INLINE_NOQA.search(group_text)
        if match is not None:
            line_number, column = _position(normalised, first, match.start())
            comment = comments.get(line_number)
            if comment is None or column < comment:
                edit.skipped[finding] = (
                    "the first `# noqa` of this line is inside a string, so a comment cannot be added"
                )
                continue
            wanted.setdefault(line_number, []).append((finding, column))
        else:
            wanted.setdefault(last, []).append((finding, None))

    for line_number, entries in wanted.items():
        line = physical[line_number - 1]
        body = line.rstrip("\r\n")
        newline = line[len(body) :]
        codes = []
        for finding, _ in entries:
            if finding.code not in codes:
                codes.append(finding.code)
        noqa_column = entries[0][1]
        if noqa_column is not None:
            body = _extend_noqa(body, noqa_column, codes)
        else:
            body = f"{body}  # noqa: {','.join(codes)}"
        physical[line_number - 1] = body + newline
        edit.added.extend(finding for finding, _ in entries)

    edit.text = "".join(physical)
    return edit


def still_reported(text: str, findings: Sequence[Finding]) -> List[Finding]:
    """Return the findings that the noqa comments in `text` do not suppress, read as the analysis reads them."""
    lines = [line.rstrip("\r\n") + "\n" for line in _PHYSICAL_LINE.findall(text)]
    return filter_suppressed(findings, lines)


def _group_bounds(groups: Dict[int, str], lines: List[str], number: int) -> Tuple[int, int]:
    """Return the first and last physical line of the text that flake8 searches for a finding on `number`."""
    text = groups.get(number)
    if text is None:
        return number, number
    first = number
    while first > 1 and groups.get(first - 1) is text:
        first -= 1
    last = number
    while last < len(lines) and groups.get(last + 1) is text:
        last += 1
    return first, last


def _comment_columns(lines: List[str]) -> Dict[int, int]:
    """Map each line number that ends with a comment to the comment's column."""
    columns: Dict[int, int] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO("".join(lines)).readline):
            if token.type == tokenize.COMMENT:
                columns[token.start[0]] = token.start[1]
    except (tokenize.TokenError, SyntaxError):
        pass
    return columns


def _position(lines: List[str], first: int, offset: int) -> Tuple[int, int]:
    """Convert an offset into the joined lines from `first` on to a line number and column."""
    number = first
    while offset >= len(lines[number - 1]):
        offset -= len(lines[number - 1])
        number += 1
    return number, offset


def _extend_noqa(body: str, column: int, codes: List[str]) -> str:
    """Add codes to the `# noqa: CODES` comment that starts at `column`."""
    match = _INLINE_NOQA.match(body, column)
    if match is None or match.group("codes") is None:
        # A bare `# noqa` suppresses every code, so the findings were never current; nothing to add.
        return body
    listed = match.group("codes")
    end = match.start("codes") + len(_TRAILING_SEPARATORS.sub("", listed))
    present = set(re.split(r"[,\s]+", listed.strip()))
    new = [code for code in codes if code not in present]
    if not new:
        return body
    return body[:end] + "," + ",".join(new) + body[end:]



def add_noqa_comments(report: Report, sources: Dict[str, SourceFile], texts: Dict[str, str]) -> List[ReportedFinding]:
    """Add the comments for every finding in `report` to its file; return the findings that got one.

    A file is written only when the new text still parses and suppresses each of its added findings. Problems go to
    `report.errors`. An interrupt is raised again as InterruptedRewrite, which lists the files already written.
    """
    by_path: Dict[str, List[ReportedFinding]] = {}
    for reported in report.findings:
        by_path.setdefault(reported.path, []).append(reported)

    added: List[ReportedFinding] = []
    try:
        for path in sorted(by_path):
            added.extend(_add_to_file(path, by_path[path], sources[path], texts[path], report))
    except KeyboardInterrupt:
        # A file is replaced by one rename, so each file is either written completely or unchanged.
        written = sorted({reported.path for reported in added})
        raise InterruptedRewrite(written, (), "noqa comments added") from None
    return added


def _add_to_file(
    path: str, group: List[ReportedFinding], source: SourceFile, analysed_text: str, report: Report
) -> List[ReportedFinding]:
    """Add the comments for `group` to one file; return the findings that got one."""
    try:
        stored = read_stored(source.path)
    except ReadError as error:
        report.errors.append(PathProblem(path, f"no noqa comments added: {error}"))
        return []
    if stored.normalised != analysed_text:
        report.errors.append(
            PathProblem(path, "no noqa comments added: the file changed while maskcheck ran; run maskcheck again")
        )
        return []

    edit = add_noqa(stored.text, [reported.finding for reported in group])
    for finding, reason in edit.skipped.items():
        report.errors.append(PathProblem(path, f"no noqa comment added at {finding.line}:{finding.col}: {reason}"))
    if not edit.added:
        return []
    problem = _problem_after_edit(edit)
    if problem is not None:
        report.errors.append(PathProblem(path, f"no noqa comments added: {problem}; please report it"))
        return []
    try:
        write_atomically(source.path, stored.encode(edit.text))
    except NotWritable as error:
        report.errors.append(PathProblem(path, f"no noqa comments added: {error}"))
        return []
    except (OSError, UnicodeEncodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        report.errors.append(PathProblem(path, f"no noqa comments added: cannot write the file: {reason}"))
        return []
    return [reported for reported in group if reported.finding in edit.added]


def _problem_after_edit(edit: NoqaEdit) -> Optional[str]:
    try:
        ast.parse(normalise_newlines(edit.text))
    except SyntaxError as error:
        return f"the comments would make line {error.lineno} invalid"
    if still_reported(edit.text, edit.added):
        return "the comments would not suppress every finding"
    return None
