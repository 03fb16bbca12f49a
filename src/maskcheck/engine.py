"""The one analysis entry point. The command line and the flake8 plugin are thin adapters around `check_source`."""

from __future__ import annotations

import re
import sys
from typing import List, Optional

from maskcheck.analysis.consumers import CONSUMER_TOKENS
from maskcheck.analysis.module import analyse_module
from maskcheck.analysis.project import module_name_for
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
    check_syntax_and_depth(source)
    if not _may_have_findings(source, path, settings):
        return []

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


def _may_have_findings(source: str, path: str, settings: Settings) -> bool:
    """Return False only when the module provably has no finding, so the expensive parse can be skipped.

    A finding needs a consumer call, either in this module (which then names a consumer or `attn_mask`) or in
    project code it calls, which it must import: by a relative import or by its own top package's name.
    """
    if any(token in source for token in CONSUMER_TOKENS):
        return True
    if not settings.follow_imports:
        return False
    if _RELATIVE_IMPORT.search(source):
        return True
    module_name, _ = module_name_for(path)
    if module_name is None or "." not in module_name:
        # A top-level script can import its sibling modules by any name.
        return _ANY_IMPORT.search(source) is not None
    top_package = module_name.split(".")[0]
    return re.search(rf"^\s*(from|import)\s+{re.escape(top_package)}\b", source, re.MULTILINE) is not None


_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.", re.MULTILINE)
_ANY_IMPORT = re.compile(r"^\s*(from|import)\s+\w", re.MULTILINE)
