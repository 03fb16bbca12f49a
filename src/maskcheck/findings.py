"""The result types that every front end shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from maskcheck.chain import ReplayChain


@dataclass(frozen=True)
class Finding:
    """One rule violation at one source position.

    `line` is 1-based and `col` is 1-based (as ruff and mypy print them); the flake8 adapter subtracts one from
    `col` because flake8 adds one when it prints.
    """

    path: str
    line: int
    col: int
    code: str
    message: str
    end_line: int = 0
    end_col: int = 0
    # The source text of the flagged expression and the text that replaces it, when the rule has a fix.
    expression: str = ""
    replacement: Optional[str] = None
    # What the runtime verifier needs to replay the construction; None when it cannot be replayed.
    chain: Optional[ReplayChain] = field(default=None, compare=False, repr=False)

    def sort_key(self) -> tuple:
        return (self.path, self.line, self.col, self.code, self.message)


class SourceError(Exception):
    """A file that could not be analysed: unreadable, undecodable, not valid Python, or too deeply nested.

    The message is one line that names the problem and the next step; front ends prefix the path.
    """
