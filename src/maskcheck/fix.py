"""Fixes: find each finding's flagged expression with libcst, replace it, and write the file back safely.

A replacement is applied only where the text at the finding's position is exactly the flagged expression, so a
file that changed since the analysis is never rewritten. A finding whose mask is built in another module is not
fixed either: its note names the file and line where the fix belongs. libcst regenerates only the replaced nodes:
comments, formatting and everything else keep their exact text.

`--fix` applies a fix only when the verifier confirmed the finding and verified the replacement in this run, and
every other fix only with `--unsafe-fixes`. After writing, the file is analysed again. If it does not parse, still
has a fixed finding or gained a new one, the original bytes are written back and the run reports an error.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from maskcheck.files import STDIN_PATH, ReadError, SourceFile
from maskcheck.findings import Finding, SourceError, source_lines, text_in_range
from maskcheck.parsing import parse_module_in_parts
from maskcheck.report import CONFIRMED, FixState, PathProblem, Report, ReportedFinding
from maskcheck.rewrite import (
    InterruptedRewrite,
    NotWritable,
    StoredSource,
    normalise_newlines,
    read_stored,
    unified_diff,
    write_atomically,
)

# A carriage return that does not start a `\r\n` line break.
_LONE_CARRIAGE_RETURN = re.compile(r"\r(?!\n)")

# -------------------------------------------------------------------------------------------------------------------
# Replacements


@dataclass
class FixPlan:
    """The outcome of applying a file's replacements in memory: the new text, and why each skipped one was skipped."""

    text: str
    applied: List[Finding]
    skipped: Dict[Finding, str]


def locate(
    stored_text: str, findings: Sequence[Finding]
) -> Tuple[Optional[cst.Module], Dict[Finding, cst.CSTNode], Dict[Finding, str]]:
    """Find the node of each finding's flagged expression in the text.

    Returns the parsed module (None when the text does not parse), the node of each finding that has one, and for
    each other finding the reason it has none.
    """
    # NOTE: the command line calls this in its main process for every file with findings, also when the results came
    # from the cache, for the reports that describe fixes. Storing the located ranges with the results would avoid it.
    reasons: Dict[Finding, str] = {}
    try:
        # Nothing changes the tree, so the wrapper need not copy it. The copy took as long as the parse itself (about
        # 0.9 s each for torch 2.13's 413 KB `_inductor/ir.py`).
        wrapper = MetadataWrapper(parse_module_in_parts(stored_text), unsafe_skip_copy=True)
    except (SourceError, RecursionError):
        return None, {}, {finding: "the file no longer parses" for finding in findings}
    module = wrapper.module
    if module.code != stored_text:
        # libcst 1.9 turns a lone `\r` newline into another style and drops some lines, such as a lone backslash
        # line, so writing its output back would change lines that no fix touches.
        if _LONE_CARRIAGE_RETURN.search(stored_text):
            reason = "libcst cannot keep this file's lone \\r newlines, so it is not rewritten"
        else:
            reason = (
                "libcst does not print this file back unchanged (it drops a lone backslash line, for example), "
                "so it is not rewritten"
            )
        return None, {}, {finding: reason for finding in findings}
    positions = wrapper.resolve(PositionProvider)
    lines = source_lines(stored_text)

    by_range: Dict[Tuple[int, int, int, int], List[cst.CSTNode]] = {}
    wanted = {(f.line, f.col - 1, f.end_line, f.end_col - 1) for f in findings}
    for node, where in positions.items():
        key = (where.start.line, where.start.column, where.end.line, where.end.column)
        if key in wanted and isinstance(node, cst.BaseExpression):
            by_range.setdefault(key, []).append(node)

    nodes: Dict[Finding, cst.CSTNode] = {}
    for finding in findings:
        if finding.replacement is None:
            reasons[finding] = "the rule has no replacement for this expression"
            continue
        if finding.in_other_file:
            reasons[finding] = other_file_note(finding)
            continue
        key = (finding.line, finding.col - 1, finding.end_line, finding.end_col - 1)
        candidates = by_range.get(key, [])
        if not candidates or text_in_range(lines, *key) != finding.expression:
            # NOTE: a mask built in a module that the analysis could not locate also ends here, because such a
            # finding has no `expression_path`. The analysis names that module "another module" in the message.
            reasons[finding] = (
                "the flagged expression is not at this position in this file: the file changed since it was "
                "checked, or the mask is built in another module; run maskcheck again"
            )
            continue
        if _has_comment(candidates[0]):
            reasons[finding] = (
                "the flagged expression contains a comment, which the replacement would drop; "
                f"replace it by hand with `{finding.replacement}`"
            )
            continue
        # The first node visited at this range is the outermost one. Parentheses around it are outside the range,
        # and `apply_located` keeps them.
        nodes[finding] = candidates[0]
    return module, nodes, reasons


def plan_fixes(stored: StoredSource, findings: Sequence[Finding]) -> FixPlan:
    """Apply every replacement that can be applied to the file's text, in memory."""
    module, nodes, skipped = locate(stored.text, findings)
    if module is None:
        return FixPlan(stored.text, [], skipped)
    return apply_located(module, nodes, skipped, stored.newline)


def apply_located(
    module: cst.Module, nodes: Dict[Finding, cst.CSTNode], skipped: Dict[Finding, str], newline: str
) -> FixPlan:
    """Replace the located nodes in `module`. Of overlapping expressions the first one in the file is replaced, and
    the others wait for a second run."""
    skipped = dict(skipped)
    replacements: Dict[cst.CSTNode, cst.BaseExpression] = {}
    applied: List[Finding] = []
    chosen_nodes: List[cst.CSTNode] = []
    for finding in sorted(nodes, key=lambda f: (f.line, f.col, -f.end_line, -f.end_col)):
        node = nodes[finding]
        if any(_contains(outer, node) or _contains(node, outer) for outer in chosen_nodes):
            skipped[finding] = "overlaps another fix in this run; run --fix again to apply it"
            continue
        try:
            new_node = cst.parse_expression(finding.replacement.replace("\n", newline))
        except (cst.ParserSyntaxError, RecursionError):
            skipped[finding] = "the replacement is not a valid Python expression; please report it"
            continue
        if node.lpar and not new_node.lpar:
            new_node = new_node.with_changes(lpar=node.lpar, rpar=node.rpar)
        replacements[node] = new_node
        chosen_nodes.append(node)
        applied.append(finding)

    if not replacements:
        return FixPlan(module.code, [], skipped)
    return FixPlan(module.visit(_Replacer(replacements)).code, applied, skipped)


class _Replacer(cst.CSTTransformer):
    def __init__(self, replacements: Dict[cst.CSTNode, cst.BaseExpression]) -> None:
        super().__init__()
        self.replacements = replacements

    def on_leave(self, original_node, updated_node):
        return self.replacements.get(original_node, updated_node)


def _has_comment(node: cst.CSTNode) -> bool:
    stack: List[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Comment):
            return True
        stack.extend(current.children)
    return False


def _contains(node: cst.CSTNode, target: cst.CSTNode) -> bool:
    stack = [node]
    while stack:
        current = stack.pop()
        if current is target:
            return True
        stack.extend(current.children)
    return False


def other_file_note(finding: Finding) -> str:
    """Say where the fix of a mask built in another module belongs, and why maskcheck leaves that file alone."""
    expression = " ".join(finding.expression.split())
    replacement = " ".join((finding.replacement or "").split())
    return (
        f"the mask is built in {finding.expression_path}:{finding.expression_line}:{finding.expression_col}, "
        f"so the fix belongs in that file, which maskcheck does not change for a finding reported here because "
        f"other callers of that code may need its current layout; check them, then replace `{expression}` with "
        f"`{replacement}` there"
    )


# -------------------------------------------------------------------------------------------------------------------
# What each finding's fix is, and applying the fixes of a run


def is_verified(reported: ReportedFinding) -> bool:
    """Return whether the verifier confirmed the finding and verified its replacement in this run."""
    verdict = reported.verdict
    return verdict is not None and verdict.status == CONFIRMED and bool(verdict.fix_verified)


def describe_fixes(report: Report, texts: Dict[str, str]) -> None:
    """Set `fix` on every finding: whether its replacement applies here, its diff, and which option applies it."""
    by_path: Dict[str, List[ReportedFinding]] = {}
    for reported in report.findings:
        by_path.setdefault(reported.path, []).append(reported)

    for path, group in by_path.items():
        text = texts.get(path)
        findings = [reported.finding for reported in group if reported.finding.replacement is not None]
        module, nodes, reasons = locate(text, findings) if text is not None and findings else (None, {}, {})
        for reported in group:
            finding = reported.finding
            if finding.replacement is None:
                reported.fix = FixState(available=False, note="the rule has no replacement for this expression")
                continue
            node = nodes.get(finding)
            if module is None or node is None:
                reported.fix = FixState(available=False, note=reasons.get(finding, "the file could not be read"))
                continue
            plan = apply_located(module, {finding: node}, {}, "\n")
            verified = is_verified(reported)
            reported.fix = FixState(
                available=bool(plan.applied),
                verified=verified,
                diff=unified_diff(path, text, plan.text) if plan.applied else "",
                note=_how_to_apply(reported, verified, report.verified) if plan.applied else plan.skipped[finding],
            )


def _how_to_apply(reported: ReportedFinding, verified: bool, ran_verifier: bool) -> str:
    if verified:
        return "--fix applies it"
    if not ran_verifier:
        return "--fix applies it once the verifier verifies it (needs torch); --unsafe-fixes applies it unverified"
    status = reported.verdict.status if reported.verdict is not None else "not verified"
    if status == CONFIRMED:
        return "the verifier could not verify the replacement; --unsafe-fixes applies it"
    return f"the verifier found the finding {status}; --unsafe-fixes applies it"


@dataclass
class FixRun:
    """The outcome of `apply_fixes`: the combined diff and, with `--fix`, the fixes it left out with their reasons."""

    diff: str = ""
    not_applied: Tuple[ReportedFinding, ...] = ()


def apply_fixes(
    report: Report,
    sources: Dict[str, SourceFile],
    texts: Dict[str, str],
    reanalyse: Callable[[SourceFile], object],
    unsafe: bool,
    write: bool,
) -> FixRun:
    """Apply the fixes that the run may apply, file by file, and update `report` with what changed.

    With `write` False (`--diff`), nothing is written and the combined diff is returned. With `write` True the
    files are rewritten, `reanalyse(source)` must return the file's new FileOutcome, fixed findings move to
    `report.fixed`, and the file's findings become those of the new analysis. An interrupt while files are written
    is raised again as InterruptedRewrite, which lists the files already rewritten.
    """
    run = FixRun()
    diffs: List[str] = []
    not_applied: List[ReportedFinding] = []
    by_path: Dict[str, List[ReportedFinding]] = {}
    for reported in report.findings:
        by_path.setdefault(reported.path, []).append(reported)

    # The file being written and checked, whose state an interrupt leaves unknown.
    writing: Optional[Tuple[SourceFile, StoredSource]] = None
    try:
        for path in sorted(by_path):
            group = by_path[path]
            wanted = [r for r in group if r.fix is not None and r.fix.available and (r.fix.verified or unsafe)]
            not_applied.extend(r for r in group if r.fix is not None and r.fix.available and r not in wanted)
            # A replacement that cannot be applied here (built in another module, a comment inside, a changed file).
            not_applied.extend(r for r in group if r.fix is not None and not r.fix.available and r.finding.replacement)
            if not wanted:
                continue
            source = sources[path]
            stored, problem = _stored(source, texts[path])
            if stored is None:
                report.errors.append(PathProblem(path, problem))
                continue

            plan = plan_fixes(stored, [reported.finding for reported in wanted])
            for reported in wanted:
                if reported.finding in plan.skipped:
                    reported.fix.note = plan.skipped[reported.finding]
                    not_applied.append(reported)
            if not plan.applied:
                continue
            diffs.append(unified_diff(path, stored.text, plan.text))
            if not write:
                continue

            writing = (source, stored)
            problem = _write_and_check(source, stored, plan, group, reanalyse, report)
            writing = None
            if problem is not None:
                report.errors.append(PathProblem(path, problem))

    except KeyboardInterrupt:
        raise _interrupted(report, writing) from None

    run.diff = "".join(diffs)
    run.not_applied = tuple(not_applied)
    report.findings.sort(key=ReportedFinding.sort_key)
    return run


def _interrupted(report: Report, writing: Optional[Tuple[SourceFile, StoredSource]]) -> InterruptedRewrite:
    """List the files that the fixes of this run rewrote before the interrupt."""
    fixed = sorted({reported.path for reported in report.fixed})
    unchecked: List[str] = []
    if writing is not None:
        source, stored = writing
        try:
            with open(source.path, "rb") as handle:
                changed = handle.read() != stored.data
        except OSError:
            changed = True
        if changed and source.display not in fixed:
            unchecked.append(source.display)
    return InterruptedRewrite(fixed, unchecked, "fixed")


def _stored(source: SourceFile, analysed_text: str) -> Tuple[Optional[StoredSource], str]:
    if source.path == STDIN_PATH:
        return StoredSource(source.path, analysed_text.encode("utf-8"), "utf-8", False, analysed_text, "\n"), ""
    try:
        stored = read_stored(source.path)
    except ReadError as error:
        return None, f"not fixed: {error}"
    if stored.normalised != analysed_text:
        return None, "not fixed: the file changed while maskcheck ran; run maskcheck again"
    return stored, ""


def _write_and_check(
    source: SourceFile,
    stored: StoredSource,
    plan: "FixPlan",
    group: List[ReportedFinding],
    reanalyse: Callable[[SourceFile], object],
    report: Report,
) -> Optional[str]:
    """Write the fixed text, analyse the file again, and restore the original when the result is wrong.

    Returns None on success, else the error message for the file.
    """
    try:
        write_atomically(source.path, stored.encode(plan.text))
    except NotWritable as error:
        return f"not fixed: {error}"
    except (OSError, UnicodeEncodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return f"not fixed: cannot write the file: {reason}; check its permissions"

    outcome = reanalyse(source)
    problem = _problem_after_fix(outcome, [r.finding for r in group], plan.applied)
    if problem is not None:
        try:
            write_atomically(source.path, stored.data)
        except OSError as error:
            return (
                f"the fix {problem}, and restoring the original failed ({error.strerror or error}); "
                "restore the file from version control"
            )
        return f"fix rolled back, the file is unchanged: the fix {problem}; please report it"

    applied = set(plan.applied)
    old_by_key: Dict[Tuple[str, str], List[ReportedFinding]] = {}
    for reported in group:
        report.findings.remove(reported)
        if reported.finding in applied:
            reported.fix.applied = True
            report.fixed.append(reported)
        else:
            old_by_key.setdefault(_key(reported.finding), []).append(reported)
    for finding in outcome.findings:
        earlier = old_by_key.get(_key(finding))
        previous = earlier.pop(0) if earlier else None
        report.findings.append(
            ReportedFinding(
                source.display,
                finding,
                verdict=previous.verdict if previous is not None else None,
                fix=previous.fix if previous is not None else None,
            )
        )
    report.sources[source.display] = normalise_newlines(plan.text).splitlines(keepends=True)
    return None


def _key(finding: Finding) -> Tuple[str, str]:
    return finding.code, "".join(finding.expression.split())


def _problem_after_fix(outcome, before: Sequence[Finding], applied: Sequence[Finding]) -> Optional[str]:
    """Describe what is wrong with the file after the fix (as `the fix ...`), or return None when it is right."""
    if outcome.error is not None:
        return f"left a file that cannot be analysed ({outcome.error})"
    if outcome.skipped:
        return None
    applied_set = set(applied)
    expected = Counter(_key(finding) for finding in before if finding not in applied_set)
    after = Counter(_key(finding) for finding in outcome.findings)
    extra = after - expected
    if not extra:
        return None
    replaced = {"".join((finding.replacement or "").split()) for finding in applied}
    code, expression = next(iter(extra))
    if expression in replaced:
        return f"did not remove the {code} finding: the analysis still reports the replaced expression"
    return f"introduced a new {code} finding"
