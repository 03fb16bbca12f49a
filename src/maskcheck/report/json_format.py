"""`json`: one JSON document per run, in the schema that docs/integration.md documents (`schema_version` 1).

Keys are only ever added within a schema version. A change that removes or retypes a key raises the version.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, Optional

from maskcheck import __version__
from maskcheck.report import Report, RenderOptions, ReportedFinding, statistics

SCHEMA_VERSION = 1


def render(report: Report, options: RenderOptions) -> str:
    document: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "maskcheck", "version": __version__},
        "findings": [finding_object(reported) for reported in report.findings],
        "fixed": [finding_object(reported) for reported in report.fixed],
        "errors": [{"path": error.path, "message": error.message} for error in report.errors],
        "summary": {
            "files_checked": report.files_checked,
            "files_skipped": report.files_skipped,
            "findings": len(report.findings),
            "fixed": len(report.fixed),
            "errors": len(report.errors),
            "verified": report.verified,
        },
    }
    if options.statistics:
        document["statistics"] = statistics(report)
    # NOTE: a file name that is not valid UTF-8 stays as surrogate escapes, written out as its bytes, so such a
    # report is not valid UTF-8.
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def finding_object(reported: ReportedFinding) -> Dict[str, Any]:
    finding = reported.finding
    return {
        "path": reported.path,
        "code": finding.code,
        "message": reported.message,
        "location": {"line": finding.line, "column": finding.col},
        "end_location": {"line": finding.end_line, "column": finding.end_col},
        "expression": finding.expression,
        "expression_location": _expression_location(finding),
        "replacement": finding.replacement,
        "fix": _fix_object(reported),
        "verdict": _verdict_object(reported),
    }


def _expression_location(finding) -> Optional[Dict[str, Any]]:
    """Return where the flagged expression is when it is in another file (a mask built in another module), else
    None."""
    if not finding.in_other_file:
        return None
    return {"path": finding.expression_path, "line": finding.expression_line, "column": finding.expression_col}


def _fix_object(reported: ReportedFinding) -> Optional[Dict[str, Any]]:
    fix = reported.fix
    if fix is None:
        return None
    return {
        "available": fix.available,
        "applicability": fix.applicability,
        "applied": fix.applied,
        "diff": fix.diff,
        "note": fix.note,
    }


def _verdict_object(reported: ReportedFinding) -> Optional[Dict[str, Any]]:
    verdict = reported.verdict
    if verdict is None:
        return None
    return {
        "status": verdict.status,
        "max_error": _finite_or_none(verdict.max_error),
        "slot_map": list(verdict.slot_map),
        "reason": verdict.reason,
        "fix_verified": bool(verdict.fix_verified),
    }


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    # JSON has no NaN or infinity. The verifier reports an output with NaN, or of another shape, as infinitely
    # wrong, and such an error is written as null.
    if value is None or not math.isfinite(value):
        return None
    return value
