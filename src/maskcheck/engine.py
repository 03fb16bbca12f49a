"""The one analysis entry point. The command line and the flake8 plugin are thin adapters around `check_source`."""

from __future__ import annotations

import ast
import sys
from typing import Callable, List, Optional

# No module imported here imports libcst, which takes 0.5-0.8 s to import (see parsing.py). A run whose files all
# fail the pre-filter or come from the result cache never needs it. `_load_analysis` imports the analysis.
from maskcheck.findings import Finding, SourceError
from maskcheck.parsing import TOO_DEEP, check_syntax_and_depth, parse_parts, release_freed_memory, split_into_parts
from maskcheck.settings import Settings

# libcst's parser and our recursive walks need deep stacks for long call chains and nested brackets. Past this,
# a file is reported as too deeply nested instead of crashing the run.
_RECURSION_LIMIT = 20_000


def check_source(source: str, path: str = "<stdin>", settings: Optional[Settings] = None) -> List[Finding]:
    """Analyse one module's text and return its findings sorted by line and column.

    Raises SourceError when the text is not valid Python 3 or nests too deeply to analyse.
    """
    settings = settings or Settings()
    if "\x00" in source:
        raise SourceError("contains a NUL byte, so it is not a Python source file; exclude it or fix the file")

    # The stdlib parser goes first: it is several times faster than libcst, it reports syntax errors for files
    # the analysis skips, and it measures nesting, which libcst cannot survive past about 1,500 levels.
    tree = check_syntax_and_depth(source)
    if not _may_have_findings(source, path, settings, tree):
        return []

    # The stdlib tree is not kept while libcst parses: for a 1.4 MB file it takes about 100 MB. Without a tree (a
    # grammar newer than the stdlib parser's), the file is parsed whole.
    texts = split_into_parts(source, tree) if tree is not None else None
    del tree
    analyse_module = _load_analysis()
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, _RECURSION_LIMIT))
    try:
        try:
            module = parse_parts(source, texts)
            del texts
        except RecursionError:
            raise SourceError(TOO_DEEP) from None
        try:
            findings = analyse_module(module, path, settings)
        except RecursionError:
            # The file passed the depth check, so this is the analysis itself going too deep.
            raise SourceError(
                "the analysis went too deep while following calls in this file; exclude the file or lower the "
                "call depth, and please report it"
            ) from None
    finally:
        sys.setrecursionlimit(old_limit)
        # The analysis frees most of what it allocated: the module's tree and the interpreter's values. glibc
        # keeps freed memory in the process, and a worker between files then adds it to the run's peak (about
        # 15 MB on a diffusers sample, docs/benchmarks.md).
        module = None
        release_freed_memory()

    return sorted(set(findings), key=Finding.sort_key)


# Whether `_load_analysis` has run in this process, and the callbacks that wait for it.
_analysis_loaded = False
_on_analysis_load: List[Callable[[], None]] = []


def call_when_analysis_loads(callback: Callable[[], None]) -> None:
    """Call `callback` when `check_source` first imports the libcst-based analysis, or now if it already has.

    The runner uses this to wrap `ProjectIndex.find` for the result cache without importing libcst in a run that
    analyses nothing. Every analysis goes through `check_source`, so the callback runs before the first one.
    """
    if _analysis_loaded:
        callback()
    else:
        _on_analysis_load.append(callback)


def _load_analysis():
    """Import the analysis, which imports libcst, and return `analyse_module`."""
    global _analysis_loaded
    from maskcheck.analysis.module import analyse_module

    if not _analysis_loaded:
        _analysis_loaded = True
        while _on_analysis_load:
            _on_analysis_load.pop(0)()
    return analyse_module


def _may_have_findings(source: str, path: str, settings: Settings, tree: Optional[ast.Module] = None) -> bool:
    """Return False only when the module provably has no finding, so the expensive parse can be skipped.

    `maskcheck.reach` decides with the stdlib parser: it follows the definitions that the module's code can reach
    through its imports and base classes, as the analysis follows them, and looks for a consumer or an
    `attn_mask` argument in any of them. Its module docstring gives the argument step by step.
    """
    from maskcheck import reach

    if tree is None:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            # Only libcst may parse this (a newer grammar than the running Python), so let the analysis decide.
            return True
    try:
        return reach.may_have_findings(tree, path, settings.follow_imports, source)
    except RecursionError:
        # Not expected, because every walk in reach.py is iterative; a failed check must not skip the module.
        return True
