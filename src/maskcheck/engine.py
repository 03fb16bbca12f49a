"""The one analysis entry point. The command line and the flake8 plugin are thin adapters around `check_source`."""

from __future__ import annotations

import ast
import sys
from typing import List, Optional

import libcst as cst

from maskcheck.analysis.consumers import CONSUMER_TOKENS
from maskcheck.analysis.module import analyse_module
from maskcheck.findings import Finding, SourceError
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

    if not any(token in source for token in CONSUMER_TOKENS):
        # No consumer can be recognised without one of these words, so the module cannot have a finding. The
        # cheaper stdlib parser still checks the syntax, so a broken file is reported either way.
        _check_syntax(source)
        return []

    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, _RECURSION_LIMIT))
    try:
        module = _parse(source)
        findings = analyse_module(module, path, settings)
    except RecursionError:
        raise SourceError("nests too deeply to analyse; split the expression or exclude the file") from None
    finally:
        sys.setrecursionlimit(old_limit)

    return sorted(set(findings), key=Finding.sort_key)


def _check_syntax(source: str) -> None:
    try:
        ast.parse(source)
    except SyntaxError as error:
        # The running Python may be older than the file's grammar (PEP 695 generics under 3.11): libcst decides.
        try:
            cst.parse_module(source)
            return
        except cst.ParserSyntaxError:
            pass
        raise SourceError(
            f"syntax error at line {error.lineno}, column {error.offset or 0}: {error.msg}; "
            "maskcheck reads Python 3 only, so fix the syntax or exclude the file"
        ) from None
    except (RecursionError, MemoryError):
        raise SourceError("nests too deeply to analyse; split the expression or exclude the file") from None


def _parse(source: str) -> cst.Module:
    try:
        return cst.parse_module(source)
    except cst.ParserSyntaxError as error:
        # libcst's own message spans several lines with a caret picture; keep the first line.
        first_line = str(error.message).strip().splitlines()[0] if error.message else "invalid syntax"
        raise SourceError(
            f"syntax error at line {error.raw_line}, column {error.raw_column + 1}: {first_line}; "
            "maskcheck reads Python 3 only, so fix the syntax or exclude the file"
        ) from None
