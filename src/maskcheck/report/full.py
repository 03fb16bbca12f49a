"""`full`: each finding with a source excerpt and carets, the slot-order picture, the verifier's evidence and the fix.

```
block.py:11:16: MSK101 head-major attention mask layout
   |
11 |         mask = mask.repeat(self.num_heads, 1, 1)
   |                ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
   |
   = `mask.repeat(self.num_heads, 1, 1)` lays out the (N*num_heads, L, S) mask head-major, ...
```
"""

from __future__ import annotations

import textwrap
from typing import List, Optional

from maskcheck.report import CONFIRMED, Report, RenderOptions, ReportedFinding
from maskcheck.report.text import fix_label, fix_section, render_statistics

# Width that the message is wrapped to, after the ` = ` margin.
_WRAP = 100
_PICTURE_EXAMPLES = 2
_PICTURE_HEADS = 2


def render(report: Report, options: RenderOptions) -> str:
    if options.statistics:
        return render_statistics(report)
    blocks = [_block(report, reported) for reported in report.findings]
    text = "\n".join(blocks)
    if report.fixed and options.show_fixes:
        text += "\n".join(fix_section(Report(fixed=report.fixed))) + "\n"
    return text


def _block(report: Report, reported: ReportedFinding) -> str:
    from maskcheck.rules import RULES

    finding = reported.finding
    title = getattr(RULES.get(finding.code), "TITLE", "")
    lines = [f"{reported.path}:{finding.line}:{finding.col}: {finding.code} {title}".rstrip()]
    lines.extend(_excerpt(report.sources.get(reported.path), finding))
    lines.extend(_wrapped("= ", reported.message))

    picture = slot_picture(reported)
    if picture:
        lines.append(
            f"   = slot order with N={_PICTURE_EXAMPLES} examples and num_heads={_PICTURE_HEADS} "
            "(e = example, h = head):"
        )
        lines.extend("       " + row for row in picture)

    verdict = reported.verdict
    if verdict is not None:
        lines.extend(_verdict_lines(reported))

    fix = reported.fix
    if fix is not None:
        lines.extend(_wrapped("= ", fix_label(reported)))
        if fix.diff:
            lines.extend("       " + line for line in fix.diff.rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"


def _verdict_lines(reported: ReportedFinding) -> List[str]:
    """Return `= verdict: confirmed (max error 0.864; fix verified)` followed by the reason and the slot map."""
    verdict = reported.verdict
    details = []
    if verdict.max_error is not None:
        details.append(f"max error {verdict.max_error:.3g}")
    if reported.finding.replacement is not None:
        details.append("fix verified" if verdict.fix_verified else "fix not verified")
    head = f"{verdict.status} ({'; '.join(details)})" if details else verdict.status
    lines = _wrapped("= verdict: ", head)
    if verdict.reason:
        lines.extend(_wrapped("  ", verdict.reason))
    if verdict.status == CONFIRMED:
        lines.extend("       " + slot for slot in verdict.slot_map)
    return lines


def _excerpt(lines: Optional[List[str]], finding) -> List[str]:
    """Return the flagged lines with a gutter and carets under the flagged span (first line only if it is long)."""
    if not lines or not 0 < finding.line <= len(lines):
        return []
    last = finding.end_line if finding.end_line >= finding.line else finding.line
    last = min(last, finding.line + 3, len(lines))
    width = len(str(last))
    gutter = " " * width
    out = [f"{gutter} |"]
    for number in range(finding.line, last + 1):
        text = lines[number - 1].rstrip("\n").expandtabs(1)
        out.append(f"{number:>{width}} | {text}")
        start = finding.col - 1 if number == finding.line else len(text) - len(text.lstrip())
        if number == finding.end_line and finding.end_col > 0:
            end = finding.end_col - 1
        else:
            end = len(text)
        out.append(f"{gutter} | {' ' * start}{'^' * max(1, end - start)}")
    out.append(f"{gutter} |")
    return out


def _wrapped(label: str, text: str) -> List[str]:
    wrapped = textwrap.wrap(text, width=_WRAP, break_long_words=False, break_on_hyphens=False) or [""]
    indent = " " * len(label)
    return ["   " + (label if index == 0 else indent) + line for index, line in enumerate(wrapped)]


def slot_picture(reported: ReportedFinding) -> List[str]:
    """Draw which content each slot of a head-major (N*num_heads, L, S) mask holds, and what PyTorch reads there.

    A head-major layout puts slot h*N + b = (example b, head h), while PyTorch reads slot s as example s // H,
    head s % H. The picture is drawn only for findings whose message calls the layout head-major and whose chain
    records the source kind: `e0` for a per-example mask, `h1` for a per-head bias, `e0,h1` for both.
    """
    chain = reported.finding.chain
    if chain is None or "head-major" not in reported.finding.message:
        return []
    kind = chain.source_kind
    if kind not in ("example", "head", "example_head"):
        return []
    examples, heads = _PICTURE_EXAMPLES, _PICTURE_HEADS
    slots = range(examples * heads)
    reads = [f"e{slot // heads},h{slot % heads}" for slot in slots]
    holds = []
    for slot in slots:
        example, head = slot % examples, slot // examples
        holds.append({"example": f"e{example}", "head": f"h{head}", "example_head": f"e{example},h{head}"}[kind])
    wrong = ["" if _matches(kind, read, held) else "<- wrong" for read, held in zip(reads, holds)]
    rows = [
        ("slot", [str(slot) for slot in slots]),
        ("PyTorch reads it as", reads),
        ("this mask holds", holds),
        ("", ["^" if mark else "" for mark in wrong]),
    ]
    label_width = max(len(label) for label, _ in rows)
    cell = max(len(value) for _, values in rows for value in values) + 2
    return [
        (label.ljust(label_width) + "  " + "".join(value.ljust(cell) for value in values)).rstrip()
        for label, values in rows
    ]


def _matches(kind: str, read: str, held: str) -> bool:
    example, head = read.split(",")
    return held == {"example": example, "head": head, "example_head": read}[kind]
