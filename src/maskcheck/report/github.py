"""`github`: GitHub Actions workflow commands, which show each finding as an annotation on the pull request.

`::error title=maskcheck (MSK101),file=block.py,line=11,col=16,endLine=11,endColumn=50::block.py:11:16: MSK101 ...`

A finding that the verifier found benign is a `warning`; every other finding is an `error`. Files that could not
be checked are `error` annotations without a line.
"""

from __future__ import annotations

from maskcheck.report import BENIGN, Report, RenderOptions, finding_line


def render(report: Report, options: RenderOptions) -> str:
    lines = []
    for reported in report.findings:
        finding = reported.finding
        level = "warning" if reported.status == BENIGN else "error"
        properties = [
            ("title", f"maskcheck ({finding.code})"),
            ("file", reported.path),
            ("line", str(finding.line)),
            ("col", str(finding.col)),
        ]
        if finding.end_line:
            properties.append(("endLine", str(finding.end_line)))
            properties.append(("endColumn", str(finding.end_col)))
        lines.append(_command(level, properties, finding_line(reported)))
    for error in report.errors:
        lines.append(_command("error", [("title", "maskcheck"), ("file", error.path)], f"{error.path}: {error.message}"))
    return "".join(line + "\n" for line in lines)


def _command(level: str, properties, message: str) -> str:
    joined = ",".join(f"{name}={_escape_property(value)}" for name, value in properties)
    return f"::{level} {joined}::{_escape_data(message)}"


def _escape_data(text: str) -> str:
    # The escapes that the GitHub Actions runner decodes in a workflow command's message.
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
