"""`# noqa` comments, applied the way flake8 7 applies them.

The rules, as flake8 7.5 implements them:

- A finding is suppressed when the text of its line contains `# noqa` (one space, any letter case). That text
  runs from one NEWLINE or NL token to the next, so it joins the lines of a backslash continuation and the lines
  that one multi-line string spans. Inside brackets every line break is an NL token, so there a comment counts
  only on the finding's own line.
- Only the first `# noqa` in that text is read. Bare, it suppresses every code. With `:` and at most one
  whitespace character, then codes (letters followed by digits, separated by commas or whitespace), it suppresses
  each code that equals or starts with a listed one. The comparison is case-sensitive, so `# noqa: msk101` keeps an
  MSK101 finding.
- A `:` followed by anything that is not a code, such as `# noqa:MSK` or `# noqa:  MSK101`, leaves a bare `# noqa`.
- A physical line that starts, after whitespace, with `# flake8: noqa` or `# flake8=noqa` exempts the whole file.
- A physical line that starts, after whitespace, with `# maskcheck: skip-file` skips the whole file in both front
  ends. flake8 does not read it, so it hides only maskcheck's codes.
- The text is searched as it is, so `# noqa` inside a string literal also counts.
"""

from __future__ import annotations

import re
import tokenize
from typing import Dict, Iterable, List, Optional, Sequence

from maskcheck.findings import Finding

_INLINE_NOQA = re.compile(
    r"""
    \#[ ]noqa
    (?:
        :\s?
        (?P<codes>(?:[A-Z]+[0-9]+[,\s]*)+)
    )?
    """,
    re.IGNORECASE | re.VERBOSE,
)

_FILE_NOQA = re.compile(r"\s*\#[ ]flake8[:=]\s*noqa", re.IGNORECASE)

_CODE_SEPARATOR = re.compile(r"[,\s]")

_SKIP_FILE = re.compile(r"\s*\#\s*maskcheck:\s*skip-file\s*(?:\#|$)", re.IGNORECASE)


def file_is_exempt(lines: Iterable[str]) -> bool:
    """Return whether a `# flake8: noqa` line exempts the whole file."""
    return any(_FILE_NOQA.match(line) for line in lines)


def file_is_skipped(lines: Iterable[str]) -> bool:
    """Return whether a `# maskcheck: skip-file` line skips the whole file."""
    return any(_SKIP_FILE.match(line) for line in lines)


def statement_text_by_line(lines: Sequence[str]) -> Dict[int, str]:
    """Map each 1-based line number to the text that flake8 searches for `# noqa` when a finding is on that line.

    The text is every physical line from one NEWLINE or NL token to the next, as in flake8. Returns an empty mapping when the lines cannot be
    tokenized; callers then search the physical line alone.
    """
    position = 0

    def readline() -> str:
        nonlocal position
        if position >= len(lines):
            return ""
        position += 1
        return lines[position - 1]

    mapping: Dict[int, str] = {}
    first: Optional[int] = None
    last = 0
    try:
        for token in tokenize.generate_tokens(readline):
            if token.type in (tokenize.ENDMARKER, tokenize.DEDENT):
                continue
            first = token.start[0] if first is None else min(first, token.start[0])
            last = max(last, token.end[0])
            if token.type in (tokenize.NL, tokenize.NEWLINE):
                text = "".join(lines[first - 1 : last])
                for number in range(first, last + 1):
                    mapping[number] = text
                first = None
                last = 0
    except (tokenize.TokenError, SyntaxError):
        return {}
    return mapping


def codes_suppressed_by(text: str) -> Optional[List[str]]:
    """Return None when `text` has no `# noqa`, [] for a bare `# noqa`, else the code prefixes it lists."""
    match = _INLINE_NOQA.search(text)
    if match is None:
        return None
    codes = match.group("codes")
    if codes is None:
        return []
    return [code for code in _CODE_SEPARATOR.split(codes) if code]


def is_suppressed(code: str, text: str) -> bool:
    codes = codes_suppressed_by(text)
    if codes is None:
        return False
    if not codes:
        return True
    return code.startswith(tuple(codes))


def filter_suppressed(findings: Iterable[Finding], lines: Sequence[str]) -> List[Finding]:
    """Drop the findings that a `# noqa` comment suppresses, reading the lines flake8 would read for each."""
    findings = list(findings)
    if not findings:
        return findings

    by_line = statement_text_by_line(lines)
    unsuppressed = []
    for finding in findings:
        text = by_line.get(finding.line)
        if text is None:
            text = lines[finding.line - 1] if 0 < finding.line <= len(lines) else ""
        if not is_suppressed(finding.code, text):
            unsuppressed.append(finding)
    return unsuppressed
