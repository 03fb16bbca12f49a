"""`sarif`: a SARIF 2.1.0 log, the format GitHub code scanning uploads, with each finding's fix in `fixes`.

Columns are counted in Unicode code points, as the analysis counts them, and the run declares this with
`columnKind: unicodeCodePoints`, because SARIF's default is UTF-16 code units. Regions end one column past the last
character, as SARIF's `endColumn` requires. Paths are relative to `%SRCROOT%`, the current directory.
"""

from __future__ import annotations

import json
import os
import pathlib
import urllib.parse
from typing import Any, Dict, List

from maskcheck import __version__
from maskcheck.report import BENIGN, Report, RenderOptions, ReportedFinding, verdict_text
from maskcheck.report.json_format import finding_object

SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SRCROOT = "%SRCROOT%"


def render(report: Report, options: RenderOptions) -> str:
    rules = _rules()
    rule_index = {rule["id"]: index for index, rule in enumerate(rules)}
    run: Dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "maskcheck",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": rules,
            }
        },
        "originalUriBaseIds": {SRCROOT: {"uri": pathlib.Path(os.getcwd()).as_uri().rstrip("/") + "/"}},
        "columnKind": "unicodeCodePoints",
        "results": [_result(reported, rule_index) for reported in report.findings],
        "invocations": [_invocation(report)],
    }
    log = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(log, indent=2, ensure_ascii=False) + "\n"


def _rules() -> List[Dict[str, Any]]:
    from maskcheck.rules import RULES

    rules = []
    for code in sorted(RULES):
        module = RULES[code]
        doc = (module.__doc__ or "").strip()
        summary, _, details = doc.partition("\n")
        summary = summary.strip()
        if summary.startswith(f"{code}:"):
            summary = summary[len(code) + 1 :].strip()
        rules.append(
            {
                "id": code,
                "name": "".join(word.capitalize() for word in getattr(module, "TITLE", code).replace("-", " ").split()),
                "shortDescription": {"text": getattr(module, "TITLE", code)},
                "fullDescription": {"text": summary},
                "help": {"text": " ".join(details.split()) or summary},
                "defaultConfiguration": {"level": "error"},
            }
        )
    return rules


def _result(reported: ReportedFinding, rule_index: Dict[str, int]) -> Dict[str, Any]:
    finding = reported.finding
    suffix = verdict_text(reported)
    message = f"{reported.message} {suffix}" if suffix else reported.message
    result: Dict[str, Any] = {
        "ruleId": finding.code,
        "level": "note" if reported.status == BENIGN else "error",
        "message": {"text": message},
        "locations": [{"physicalLocation": {"artifactLocation": _artifact(reported.path), "region": _region(finding)}}],
    }
    if finding.code in rule_index:
        result["ruleIndex"] = rule_index[finding.code]
    if finding.in_other_file:
        # The mask is built in another module: point there too, where the fix belongs.
        result["relatedLocations"] = [
            {
                "id": 1,
                "message": {"text": "the mask is built here"},
                "physicalLocation": {
                    "artifactLocation": _artifact(finding.expression_path),
                    "region": {"startLine": finding.expression_line, "startColumn": finding.expression_col},
                },
            }
        ]
    if reported.fix is not None and reported.fix.available and finding.replacement is not None:
        result["fixes"] = [
            {
                "description": {"text": f"Replace `{finding.expression}` with `{finding.replacement}`"},
                "artifactChanges": [
                    {
                        "artifactLocation": _artifact(reported.path),
                        "replacements": [
                            {
                                "deletedRegion": _region(finding),
                                "insertedContent": {"text": finding.replacement},
                            }
                        ],
                    }
                ],
            }
        ]
    properties = finding_object(reported)
    result["properties"] = {
        "fixApplicability": properties["fix"]["applicability"] if properties["fix"] else None,
        "fixApplied": bool(properties["fix"] and properties["fix"]["applied"]),
        "verdict": properties["verdict"],
    }
    return result


def _region(finding) -> Dict[str, int]:
    region = {"startLine": finding.line, "startColumn": finding.col}
    if finding.end_line:
        region["endLine"] = finding.end_line
        region["endColumn"] = finding.end_col
    return region


def _artifact(path: str) -> Dict[str, str]:
    if os.path.isabs(path):
        return {"uri": pathlib.Path(path).as_uri()}
    # A file name that is not valid UTF-8 (surrogate escapes) is quoted as its bytes: b"\xff" becomes %FF.
    return {"uri": urllib.parse.quote(path.replace(os.sep, "/"), errors="surrogateescape"), "uriBaseId": SRCROOT}


def _invocation(report: Report) -> Dict[str, Any]:
    notifications = [
        {
            "level": "error",
            "message": {"text": error.message},
            "locations": [{"physicalLocation": {"artifactLocation": _artifact(error.path)}}],
        }
        for error in report.errors
    ]
    invocation: Dict[str, Any] = {"executionSuccessful": not report.errors}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return invocation
