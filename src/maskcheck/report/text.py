"""`text`, the default format: one line per finding, `path:line:col: CODE message [verdict]`."""

from __future__ import annotations

from typing import List

from maskcheck.report import Report, RenderOptions, ReportedFinding, finding_line, statistics


def render(report: Report, options: RenderOptions) -> str:
    if options.statistics:
        return render_statistics(report)
    lines = [finding_line(reported) for reported in report.findings]
    if options.show_fixes:
        lines.extend(fix_section(report))
    return "".join(line + "\n" for line in lines)


def render_statistics(report: Report) -> str:
    """Print one row per code: count, code, title, and how many findings have a fix (and a verified one)."""
    rows = statistics(report)
    if not rows:
        return ""
    width = max(len(str(row["count"])) for row in rows)
    lines = []
    for row in rows:
        fixes = f"{row['fixable']} fixable"
        if report.verified:
            fixes += f", {row['verified_fixes']} verified"
        lines.append(f"{row['count']:>{width}}  {row['code']}  {row['title']} ({fixes})")
    return "".join(line + "\n" for line in lines)


def fix_section(report: Report) -> List[str]:
    """List the fixes applied in this run, then each remaining finding's fix with its diff and how to apply it."""
    lines: List[str] = []
    if report.fixed:
        lines.append("")
        lines.append(f"Fixed {len(report.fixed)} finding{'s' if len(report.fixed) != 1 else ''}:")
        for reported in report.fixed:
            lines.append(f"{_position(reported)}: {reported.code} {fix_label(reported)}")
            lines.extend(_diff_lines(reported))
    available = [reported for reported in report.findings if reported.fix is not None]
    if available:
        lines.append("")
        lines.append("Fixes:")
        for reported in available:
            lines.append(f"{_position(reported)}: {reported.code} {fix_label(reported)}")
            lines.extend(_diff_lines(reported))
    return lines


def fix_label(reported: ReportedFinding) -> str:
    """Describe a fix's state in a few words, e.g. `fix verified; --fix applies it`."""
    fix = reported.fix
    if fix is None:
        return "no fix"
    if fix.applied:
        return "fix applied (verified)" if fix.verified else "fix applied (unsafe: not verified)"
    if not fix.available:
        return f"no fix here: {fix.note}" if fix.note else "no fix here"
    state = "fix verified" if fix.verified else "fix not verified"
    return f"{state}; {fix.note}" if fix.note else state


def _position(reported: ReportedFinding) -> str:
    return f"{reported.path}:{reported.finding.line}:{reported.finding.col}"


def _diff_lines(reported: ReportedFinding) -> List[str]:
    if reported.fix is None or not reported.fix.diff:
        return []
    return ["    " + line for line in reported.fix.diff.rstrip("\n").split("\n")]
