"""What one run found, and the output formats that print it. Each format is one module with a `render` function.

Every format prints the same findings in the same order: sorted by path, line, column, code and message.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from maskcheck.findings import Finding

CONFIRMED = "confirmed"
BENIGN = "benign"
INCONCLUSIVE = "inconclusive"

# --output-format values, in the order the help lists them.
FORMAT_NAMES = ("text", "full", "json", "github", "sarif", "junit")
DEFAULT_FORMAT = "text"
STATISTICS_FORMATS = ("text", "full", "json")


@dataclass
class FixState:
    """What this run knows and did about one finding's fix.

    `available` is True when the rule gave a replacement and the text at the finding's position in this file is the
    flagged expression (a mask built in another module is fixed there, not here). `verified` is True when the
    verifier confirmed the finding and verified the replacement in this run. `diff` is the unified diff of this fix
    alone. `note` says why the fix is not available, or which option applies it.
    """

    available: bool
    verified: bool = False
    applied: bool = False
    diff: str = ""
    note: str = ""

    @property
    def applicability(self) -> str:
        """`safe` when verified in this run, else `unsafe`, the words ruff uses for fixes."""
        return "safe" if self.verified else "unsafe"


@dataclass
class ReportedFinding:
    """A finding as printed: the path shown for its file, its verdict when --verify ran, and its fix."""

    path: str
    finding: Finding
    verdict: Optional[object] = None  # maskcheck.verify.Verdict; typed loosely so that torch stays unimported
    fix: Optional[FixState] = None

    @property
    def code(self) -> str:
        return self.finding.code

    @property
    def message(self) -> str:
        return single_line(self.finding.message)

    @property
    def status(self) -> Optional[str]:
        return getattr(self.verdict, "status", None)

    def sort_key(self) -> Tuple:
        return (self.path, self.finding.line, self.finding.col, self.finding.code, self.finding.message)

    def fails(self, strict: bool) -> bool:
        """Return whether this finding makes the exit status 1: a benign verdict does not, unless `strict`."""
        return strict or self.status != BENIGN


@dataclass(frozen=True)
class PathProblem:
    """A file or folder that could not be checked or fixed, with a one-line message."""

    path: str
    message: str


@dataclass
class Report:
    """Everything the output formats print about one run."""

    findings: List[ReportedFinding] = field(default_factory=list)
    errors: List[PathProblem] = field(default_factory=list)
    files_checked: int = 0
    files_skipped: int = 0
    # The lines of each file with findings, as the analysis read them (newlines translated to `\n`).
    sources: Dict[str, List[str]] = field(default_factory=dict)
    verified: bool = False
    # Findings whose fix this run wrote, in the same order as `findings`.
    fixed: List[ReportedFinding] = field(default_factory=list)


@dataclass(frozen=True)
class RenderOptions:
    """The command-line options that change what an output format prints: --show-fixes and --statistics."""

    show_fixes: bool = False
    statistics: bool = False


def single_line(message: str) -> str:
    """Join a message's lines with single spaces: messages quote the user's code, which may span several lines."""
    return _LINE_BREAK.sub(" ", message.strip())


_LINE_BREAK = re.compile(r"[ \t]*[\r\n]+[ \t]*")


def verdict_text(reported: ReportedFinding) -> str:
    """Format a verdict as the bracketed suffix that follows a finding's message, or '' without a verdict.

    `[confirmed: max error 0.864; slot 1 (example 0, head 1) received example 1's mask; 3 more slots; fix
    verified]`, `[benign: max error 1.19e-07; <why>]`, `[inconclusive: <what could not be replayed>]`.
    """
    verdict = reported.verdict
    if verdict is None:
        return ""
    parts = []
    if verdict.max_error is not None:
        parts.append(f"max error {verdict.max_error:.3g}")
    if verdict.status == CONFIRMED and verdict.slot_map:
        parts.append(verdict.slot_map[0])
        more = len(verdict.slot_map) - 1
        if more:
            parts.append(f"{more} more slot{'s' if more > 1 else ''} with foreign content")
    if verdict.status != CONFIRMED and verdict.reason:
        parts.append(single_line(verdict.reason).rstrip("."))
    if reported.finding.replacement is not None:
        parts.append("fix verified" if verdict.fix_verified else "fix not verified")
    return f"[{verdict.status}: {'; '.join(parts)}]" if parts else f"[{verdict.status}]"


def finding_line(reported: ReportedFinding) -> str:
    """Format `path:line:col: CODE message [verdict]`, the one-line form that the text format prints."""
    finding = reported.finding
    line = f"{reported.path}:{finding.line}:{finding.col}: {finding.code} {reported.message}"
    suffix = verdict_text(reported)
    return f"{line} {suffix}" if suffix else line


def statistics(report: Report) -> List[Dict[str, object]]:
    """Count the findings per code, most frequent first: code, title, count, fixes available and verified."""
    from maskcheck.rules import RULES

    rows: Dict[str, Dict[str, object]] = {}
    for reported in report.findings:
        row = rows.setdefault(
            reported.code,
            {
                "code": reported.code,
                "title": getattr(RULES.get(reported.code), "TITLE", ""),
                "count": 0,
                "fixable": 0,
                "verified_fixes": 0,
            },
        )
        row["count"] += 1
        if reported.fix is not None and reported.fix.available:
            row["fixable"] += 1
            if reported.fix.verified:
                row["verified_fixes"] += 1
    return sorted(rows.values(), key=lambda row: (-row["count"], row["code"]))


def render(format_name: str, report: Report, options: RenderOptions) -> str:
    """Return the report in one output format, ending with a newline unless it is empty.

    Only the chosen format's module is imported: junit needs xml.etree, and the text format needs none of the others.
    Raises KeyError for a name that is not in FORMAT_NAMES.
    """
    module = importlib.import_module(f"maskcheck.report.{_FORMAT_MODULES[format_name]}")
    return module.render(report, options)


# The module of each --output-format value, in this package.
_FORMAT_MODULES = {
    "text": "text",
    "full": "full",
    "json": "json_format",
    "github": "github",
    "sarif": "sarif",
    "junit": "junit",
}
