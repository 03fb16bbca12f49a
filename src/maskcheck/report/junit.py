"""`junit`: JUnit XML, which CI systems show as test results. Each file with findings is a test suite, each finding a
failed test case named after its code and position. A run without findings has one passing test case, and a file
that could not be checked is a test case with an `error`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from itertools import groupby

from maskcheck.report import Report, RenderOptions, finding_line, verdict_text


def render(report: Report, options: RenderOptions) -> str:
    root = ElementTree.Element("testsuites", name="maskcheck")
    total = failures = errors = 0

    for path, group in groupby(report.findings, key=lambda reported: reported.path):
        group = list(group)
        suite = ElementTree.SubElement(
            root, "testsuite", name=path, tests=str(len(group)), failures=str(len(group)), errors="0"
        )
        for reported in group:
            finding = reported.finding
            case = ElementTree.SubElement(
                suite,
                "testcase",
                name=f"{finding.code} at {finding.line}:{finding.col}",
                classname=path,
                file=path,
                line=str(finding.line),
            )
            verdict = verdict_text(reported)
            if verdict:
                properties = ElementTree.SubElement(case, "properties")
                ElementTree.SubElement(properties, "property", name="verdict", value=verdict)
            failure = ElementTree.SubElement(case, "failure", message=reported.message, type=finding.code)
            failure.text = finding_line(reported)
        total += len(group)
        failures += len(group)

    if report.errors:
        suite = ElementTree.SubElement(
            root, "testsuite", name="files", tests=str(len(report.errors)), failures="0", errors=str(len(report.errors))
        )
        for problem in report.errors:
            case = ElementTree.SubElement(suite, "testcase", name="check file", classname=problem.path, file=problem.path)
            error = ElementTree.SubElement(case, "error", message=problem.message)
            error.text = f"{problem.path}: {problem.message}"
        total += len(report.errors)
        errors += len(report.errors)

    if total == 0:
        suite = ElementTree.SubElement(root, "testsuite", name="maskcheck", tests="1", failures="0", errors="0")
        ElementTree.SubElement(suite, "testcase", name="no findings", classname="maskcheck")
        total = 1

    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    ElementTree.indent(root)
    body = ElementTree.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
