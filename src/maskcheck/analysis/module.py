"""Run every rule over the mask uses of one module and turn the issues into positioned findings."""

from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Tuple

import libcst as cst
from libcst.metadata import CodeRange, MetadataWrapper, PositionProvider

from maskcheck.analysis.consumers import CONFIGURED_CONSUMER, UNKNOWN_CONSUMER
from maskcheck.analysis.interpreter import MaskUse, ModuleInterpreter
from maskcheck.analysis.names import source_text
from maskcheck.analysis.project import ProjectIndex, UnparsableImport
from maskcheck.chain import ChainStep, ReplayChain
from maskcheck.findings import Finding, source_lines, text_in_range
from maskcheck.settings import Settings

LOG = logging.getLogger("maskcheck")


def analyse_module(module: cst.Module, path: str, settings: Settings) -> List[Finding]:
    from maskcheck.rules import RULES, Issue  # the rules import the analysis, so import them late

    project, module_name = ProjectIndex.for_file(path) if settings.follow_imports else (None, None)
    try:
        uses = _run_interpreter(module, path, module_name, project, settings)
    finally:
        if project is not None:
            project.settle()
    issues: List[Issue] = []
    seen = set()
    for use in uses:
        for rule in RULES.values():
            for issue in rule.check(use, settings):
                # One finding per flagged expression, even when it reaches several consumers.
                # A mask built in another module is reported once per call that brings it into this one.
                entry = issue.use.tensor.entry if issue.use is not None else None
                key = (issue.code, id(issue.node), id(entry))
                if key not in seen:
                    seen.add(key)
                    issues.append(issue)
    if not issues:
        return []

    # Positions cost a full pass over the tree, so they are computed only for modules with findings. The wrapper
    # must not copy the tree: the issues point at its nodes.
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    lines = source_lines(module.code)
    findings = []
    for issue in issues:
        where = positions.get(issue.node)
        message = issue.message
        elsewhere: Optional[Tuple[str, CodeRange, str]] = None
        if where is None:
            # The layout was made in another module; report where the value enters this one.
            entry = issue.use.tensor.entry if issue.use is not None else None
            where = positions.get(entry) if entry is not None else None
            if where is None:
                continue
            quoted = " ".join(source_text(entry).split())
            if len(quoted) > 90:
                quoted = quoted[:87] + "..."
            elsewhere = _locate(issue.node, project, path)
            place = f"{elsewhere[0]}:{elsewhere[1].start.line}" if elsewhere is not None else "another module"
            message = f"`{quoted}` returns a mask built in {place}: {message}"
            expression = source_text(issue.node) if elsewhere is None else elsewhere[2]
        else:
            expression = text_in_range(lines, where.start.line, where.start.column, where.end.line, where.end.column)
        findings.append(
            Finding(
                path=path,
                line=where.start.line,
                col=where.start.column + 1,
                code=issue.code,
                message=message,
                end_line=where.end.line,
                end_col=where.end.column + 1,
                expression=expression,
                replacement=issue.replacement,
                expression_path=elsewhere[0] if elsewhere is not None else "",
                expression_line=elsewhere[1].start.line if elsewhere is not None else 0,
                expression_col=elsewhere[1].start.column + 1 if elsewhere is not None else 0,
                chain=_chain(issue, positions),
            )
        )
    return findings


def _run_interpreter(
    module: cst.Module, path: str, module_name: Optional[str], project: Optional[ProjectIndex], settings: Settings
) -> List[MaskUse]:
    while True:
        interpreter = ModuleInterpreter(
            module, path, module_name, project, settings.max_call_depth, settings.extra_consumer_callables
        )
        try:
            return interpreter.run()
        except UnparsableImport as error:
            # Imported modules are parsed with libcst part by part, when the analysis first reads each part. A
            # module with a part that libcst rejects is then treated like a library, as it was when its whole text
            # was parsed on loading, and the analysis starts again without it. Each round drops one module, so the
            # rounds end.
            assert project is not None
            LOG.info("%s: imported module not followed, libcst cannot parse it: %s", path, error)
            project.treat_as_library(error.context)


def _locate(
    node: cst.CSTNode, project: Optional[ProjectIndex], finding_path: str
) -> Optional[Tuple[str, CodeRange, str]]:
    """Find a node in another module of the project: that module's display path, the node's range, and its exact
    source text. None when no loaded module contains the node."""
    for context in project.loaded() if project is not None else ():
        located = context.locate(node)
        if located is not None:
            return _display_path(context.path, finding_path), located[0], located[1]
    return None


def _display_path(path: str, finding_path: str) -> str:
    """Show another module's path in the style of the finding's path: absolute when the user gave an absolute path,
    else relative to the working directory."""
    if os.path.isabs(finding_path):
        return os.path.abspath(path)
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return path if relative.startswith("..") else relative


def _chain(issue, positions: Dict[cst.CSTNode, CodeRange]) -> ReplayChain:
    use: MaskUse = issue.use
    tensor = use.tensor
    steps: List[ChainStep] = []
    flagged = 0
    for index, step in enumerate(tensor.steps):
        where = positions.get(step.node)
        if where is None:
            continue
        steps.append(ChainStep(step.target, source_text(step.node), where.start.line, where.start.column + 1))
        if _contains(step.node, issue.node):
            flagged = len(steps) - 1
    return ReplayChain(
        source_name=tensor.source,
        source_kind=issue.source_kind or "example",
        steps=tuple(steps),
        sizes=dict(issue.sizes),
        # The verifier replays a wrapper, configured or not, as the nn.MultiheadAttention it passes the mask to.
        consumer=UNKNOWN_CONSUMER if use.consumer.kind == CONFIGURED_CONSUMER else use.consumer.kind,
        batch_first=use.consumer.batch_first,
        flagged_step=flagged,
        replacement=issue.replacement,
        argument=use.consumer.argument,
    )


def _contains(node: cst.CSTNode, target: cst.CSTNode) -> bool:
    stack: List[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if current is target:
            return True
        stack.extend(current.children)
    return False
