"""The result types that every front end shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Sequence

if TYPE_CHECKING:
    # Only an annotation here: a run whose cached results have no replay chain never imports `maskcheck.chain`.
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
    # The flagged expression's exact source text, from `line`:`col` to `end_line`:`end_col` (newlines as `\n`;
    # parentheses around the expression are outside that range and not included), and the text that replaces it
    # when the rule has a fix.
    expression: str = ""
    replacement: Optional[str] = None
    # A mask built in another module is reported where the value enters this one, at `line`:`col`. Then
    # `expression` is the text in that other module, and these fields give that module's path (relative to the
    # working directory when it is below it) and the expression's 1-based position. They are empty and 0 when the
    # expression is in `path` itself.
    expression_path: str = ""
    expression_line: int = 0
    expression_col: int = 0
    # What the runtime verifier needs to replay the construction; None when it cannot be replayed.
    chain: Optional[ReplayChain] = field(default=None, compare=False, repr=False)

    def sort_key(self) -> tuple:
        return (self.path, self.line, self.col, self.code, self.message)

    @property
    def in_other_file(self) -> bool:
        """Whether the flagged expression, and so its fix, is in another file than `path`."""
        return bool(self.expression_path)


def source_lines(text: str) -> List[str]:
    r"""Split source text at `\n`, `\r\n` and `\r`, the line breaks that Python and libcst count, and no others."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def text_in_range(lines: Sequence[str], line: int, column: int, end_line: int, end_column: int) -> str:
    r"""Return the exact text from `line`:`column` to `end_line`:`end_column` of `lines`, with newlines as `\n`.

    `lines` comes from `source_lines`. Lines are 1-based and columns 0-based, as libcst's PositionProvider gives
    them, and the end column is exclusive.
    """
    if line == end_line:
        return lines[line - 1][column:end_column]
    middle = lines[line : end_line - 1]
    return "\n".join([lines[line - 1][column:], *middle, lines[end_line - 1][:end_column]])


class SourceError(Exception):
    """A file that could not be analysed: unreadable, undecodable, not valid Python, or too deeply nested.

    The message is one line that names the problem and the next step; front ends prefix the path.
    """
