"""The one analysis entry point. The command line and the flake8 plugin are thin adapters around `check_source`."""

from __future__ import annotations

import ast
import sys
from typing import Callable, List, Optional, Set

# No module imported here imports libcst, which takes 0.5-0.8 s to import (see parsing.py). A run whose files all
# fail the pre-filter or come from the result cache never needs it. `_load_analysis` imports the analysis.
from maskcheck.analysis.consumer_specs import CONSUMER_TOKENS
from maskcheck.analysis.module_paths import module_name_for, package_of, search_roots
from maskcheck.findings import Finding, SourceError
from maskcheck.parsing import TOO_DEEP, check_syntax_and_depth, parse_module
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

    analyse_module = _load_analysis()
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, _RECURSION_LIMIT))
    try:
        try:
            module = parse_module(source)
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

    A finding needs a consumer call: an attention layer, `multi_head_attention_forward` or a call with an
    `attn_mask` argument. Every such call in this module names one of CONSUMER_TOKENS in its text. A consumer call
    in other project code is reached only through `ProjectIndex.find`, and the analysis looks up only dotted names
    that an import of this module starts (the names of other modules come from those modules, which must be found
    first). A lookup `a.b.c` finds a file only when a search root contains `a.py` or a folder `a`, and names under
    `torch.` and `einops.` are never looked up. So when no import of this module, at any nesting level, starts
    with a name that exists in a search root, the analysis reads no other module and the module has no finding.
    """
    if any(token in source for token in CONSUMER_TOKENS):
        return True
    if not settings.follow_imports:
        return False
    module_name, root = module_name_for(path)
    if root is None:
        # Not a file on disk: the analysis follows no import.
        return False
    if tree is None:
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return True
    roots = search_roots(path, root)
    package = package_of(module_name, path)
    for first in _imported_top_names(tree, package):
        if first in _NEVER_FOLLOWED:
            continue
        if any((folder / first).is_dir() or (folder / f"{first}.py").is_file() for folder in roots):
            return True
    return False


# Top-level names whose modules the analysis never reads (see `ModuleInterpreter._project_object`).
_NEVER_FOLLOWED = frozenset({"torch", "einops"})


def _imported_top_names(tree: ast.Module, package: Optional[str]) -> Set[str]:
    """Return the first part of every absolute module name that an import anywhere in the tree names.

    Relative imports are resolved against `package` as `ImportTable` resolves them; one that leaves the package,
    or that appears outside any package, binds no name the analysis resolves.
    """
    names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module:
                    names.add(node.module.split(".")[0])
                continue
            if package is None:
                continue
            parts = package.split(".")
            if node.level - 1 < len(parts):
                names.add(parts[0])
    return names
