"""Imports, canonical names of torch objects, and the source text of expressions."""

from __future__ import annotations

import ast
import io
import tokenize
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

import libcst as cst

# torch re-exports its layers from several modules; map every public spelling to one canonical name.
_CANONICAL_PREFIXES = {
    "torch.nn.modules.activation.": "torch.nn.",
    "torch.nn.modules.transformer.": "torch.nn.",
    "torch.nn.modules.container.": "torch.nn.",
    "torch.nn.parameter.": "torch.nn.",
    "torch.nn.modules.": "torch.nn.",
}

_EMPTY_MODULE = cst.Module(body=[])


def canonical(name: str) -> str:
    """Return the canonical dotted name, e.g. `torch.nn.modules.activation.MultiheadAttention` ->
    `torch.nn.MultiheadAttention`."""
    for prefix, replacement in _CANONICAL_PREFIXES.items():
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


def source_text(node: cst.CSTNode) -> str:
    """Return the exact source text of a node (comments and line breaks inside it included)."""
    return _EMPTY_MODULE.code_for_node(node)


def code_without_comments(node: cst.CSTNode) -> str:
    """Return the node's source on one line and without comments.

    Tokens that the source separates by whitespace get one space between them, except just inside brackets, so
    `f(  # note` and `  a)` on two lines become `f(a)`.
    """
    text = source_text(node)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return " ".join(text.split())
    pieces = []
    previous: Optional[tokenize.TokenInfo] = None
    for token in tokens:
        if token.type in _LAYOUT_TOKENS:
            continue
        if previous is not None and token.start != previous.end:
            if previous.string not in _OPENING_BRACKETS and token.string not in _CLOSING_BRACKETS:
                pieces.append(" ")
        pieces.append(token.string)
        previous = token
    return "".join(pieces)


_LAYOUT_TOKENS = frozenset(
    {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
)
_OPENING_BRACKETS = frozenset({"(", "[", "{"})
_CLOSING_BRACKETS = frozenset({")", "]", "}"})


def last_name(text: str) -> Optional[str]:
    """Return the last name of a plain name or attribute chain (`num_heads` for `self.cfg.num_heads`), and None
    for any other expression text, such as `bsz*self.num_heads` or `cfg["num_heads"]`."""
    parts = text.split(".")
    if all(part.isidentifier() for part in parts):
        return parts[-1]
    return None


def product_terms(text: str) -> Tuple[str, ...]:
    """Return the compact texts of the factors an expression text multiplies, parenthesised products included
    (`("bsz", "self.num_heads")` for `bsz * self.num_heads`), or the text alone when it is not a product."""
    try:
        expression = cst.parse_expression(text)
    except cst.ParserSyntaxError:
        return (text,)
    terms = []
    stack = [expression]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.BinaryOperation) and isinstance(current.operator, cst.Multiply):
            stack.append(current.right)
            stack.append(current.left)
        else:
            terms.append(dotted_name(current) or compact_text(current))
    return tuple(terms)


def compact_text(node: cst.CSTNode) -> str:
    """Return the node's text with all whitespace removed, for comparing expressions (`self.num_heads`)."""
    # Most called expressions are names and attribute chains without brackets or spacing. Generating their code
    # took a tenth of the analysis time on a transformers 5.25 model file (cProfile, modeling_afmoe.py).
    plain = _plain_dotted_name(node)
    if plain is not None:
        return plain
    return "".join(source_text(node).split())


def _plain_dotted_name(node: cst.CSTNode) -> Optional[str]:
    """Return `a.b.c` for a Name or Attribute chain whose source text is exactly that, else None."""
    if isinstance(node, cst.Name):
        return None if node.lpar or node.rpar else node.value
    if isinstance(node, cst.Attribute):
        if node.lpar or node.rpar or node.attr.lpar or node.attr.rpar:
            return None
        dot = node.dot
        if not isinstance(dot, cst.Dot) or not _is_empty_space(dot.whitespace_before):
            return None
        if not _is_empty_space(dot.whitespace_after):
            return None
        base = _plain_dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def _is_empty_space(whitespace: cst.BaseParenthesizableWhitespace) -> bool:
    return isinstance(whitespace, cst.SimpleWhitespace) and whitespace.value == ""


def label_text(node: cst.BaseExpression) -> str:
    """Return a short label for a value's source without generating its code: `a.b` for names and attributes,
    `f(...)` for calls of a named function, `a[...]` for subscripts. Generating code for every large expression
    was the most expensive step of the analysis."""
    name = dotted_name(node)
    if name is not None:
        return name
    if isinstance(node, cst.Call):
        return f"{label_text(node.func)}(...)"
    if isinstance(node, cst.Subscript):
        return f"{label_text(node.value)}[...]"
    if isinstance(node, cst.Attribute):
        return f"{label_text(node.value)}.{node.attr.value}"
    return f"<{type(node).__name__}>"


def dotted_name(node: cst.BaseExpression) -> Optional[str]:
    """Return `a.b.c` for a Name or an Attribute chain of Names, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


class ImportTable:
    """Maps local names to the canonical dotted names they were imported as."""

    def __init__(self, package: Optional[str] = None) -> None:
        self._aliases: Dict[str, str] = {}
        # The package a relative import starts from (`pkg.sub` for `pkg/sub/mod.py`); None outside a package.
        self._package = package

    @classmethod
    def from_module(cls, module: cst.Module, package: Optional[str] = None) -> "ImportTable":
        table = cls(package)
        table._collect(module)
        return table

    @classmethod
    def from_ast(cls, tree: ast.Module, lines: Sequence[str], package: Optional[str] = None) -> "ImportTable":
        """Build the table from the stdlib parser's tree of a module, with the same result as `from_module`.

        `lines` are the module's physical lines. The imports are taken in the order `_walk_imports` gives
        libcst's, which decides the target of a name imported more than once.
        """
        table = cls(package)
        for node in _walk_ast_imports(tree, lines):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    table._bind_import(alias.name, alias.asname)
            elif all(alias.name != "*" for alias in node.names):
                table._bind_import_from(node.module, node.level, [(alias.name, alias.asname) for alias in node.names])
        return table

    def _collect(self, module: cst.Module) -> None:
        # Imports inside functions and `if TYPE_CHECKING:` blocks count too: names rarely collide in model code.
        for node in _walk_imports(module):
            if isinstance(node, cst.Import):
                self._add_import(node)
            else:
                self._add_import_from(node)

    def _add_import(self, node: cst.Import) -> None:
        for alias in node.names:
            full = dotted_name(alias.name)
            if full is not None:
                self._bind_import(full, _alias_name(alias))

    def _add_import_from(self, node: cst.ImportFrom) -> None:
        if isinstance(node.names, cst.ImportStar):
            return
        module_name = dotted_name(node.module) if node.module is not None else None
        names = [(dotted_name(alias.name), _alias_name(alias)) for alias in node.names]
        self._bind_import_from(module_name, len(node.relative), [(name, local) for name, local in names if name])

    def _bind_import(self, full: str, local: Optional[str]) -> None:
        if local is not None:
            self._aliases[local] = full
        else:
            # `import torch.nn` binds `torch`; attribute access then spells the rest out.
            first = full.split(".")[0]
            self._aliases[first] = first

    def _bind_import_from(self, module_name: Optional[str], dots: int, names: List[Tuple[str, Optional[str]]]) -> None:
        """Bind each `(name, local name or None)` imported from `module_name`, `dots` levels up for a relative import."""
        if dots:
            base = self._relative_base(dots)
            if base is None:
                return
            module_name = f"{base}.{module_name}" if module_name else base
        if module_name is None:
            return
        for imported, local in names:
            self._aliases[local or imported] = f"{module_name}.{imported}"

    def _relative_base(self, dots: int) -> Optional[str]:
        if self._package is None:
            return None
        parts = self._package.split(".")
        if dots - 1 >= len(parts):
            return None
        return ".".join(parts[: len(parts) - (dots - 1)])

    def resolve(self, node: cst.BaseExpression) -> Optional[str]:
        """Return the canonical name a Name or Attribute chain refers to through the imports, or None."""
        text = dotted_name(node)
        if text is None:
            return None
        head, _, rest = text.partition(".")
        target = self._aliases.get(head)
        if target is None:
            return None
        return canonical(f"{target}.{rest}" if rest else target)

    def names_imported(self) -> FrozenSet[str]:
        return frozenset(self._aliases.values())


def _alias_name(alias: cst.ImportAlias) -> Optional[str]:
    """Return the local name of `... as name`, or None without one."""
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        return alias.asname.name.value
    return None


def _walk_imports(module: cst.Module) -> Iterable[cst.CSTNode]:
    """Yield every import statement, descending only through statement bodies (not expressions)."""
    stack: list = list(reversed(module.body))
    while stack:
        node = stack.pop()
        if isinstance(node, cst.SimpleStatementLine):
            for small in node.body:
                if isinstance(small, (cst.Import, cst.ImportFrom)):
                    yield small
            continue
        for suite in _suites_of(node):
            if isinstance(suite, cst.IndentedBlock):
                stack.extend(reversed(suite.body))
            elif isinstance(suite, cst.SimpleStatementSuite):
                for small in suite.body:
                    if isinstance(small, (cst.Import, cst.ImportFrom)):
                        yield small


def _suites_of(node: cst.CSTNode) -> Iterable[cst.BaseSuite]:
    body = getattr(node, "body", None)
    if isinstance(body, cst.BaseSuite):
        yield body
    for name in ("orelse", "finalbody"):
        part = getattr(node, name, None)
        while part is not None:
            if isinstance(getattr(part, "body", None), cst.BaseSuite):
                yield part.body
            # An `elif` chain nests If nodes in orelse.
            part = getattr(part, "orelse", None) if isinstance(part, cst.If) else None
    for handler in getattr(node, "handlers", ()) or ():
        yield handler.body
    for case in getattr(node, "cases", ()) or ():
        yield case.body


_AstImport = Union[ast.Import, ast.ImportFrom]


def _walk_ast_imports(tree: ast.Module, lines: Sequence[str]) -> Iterable[_AstImport]:
    """Yield the import statements of a stdlib tree in the order `_walk_imports` yields them from libcst's tree.

    That walk keeps a stack of statements: an indented block's statements are pushed, but the imports of a suite
    on its header's line (`if x: import y`) are yielded at once.
    """
    comments = _CommentLines(lines)
    stack: List[ast.stmt] = list(reversed(tree.body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        for suite in _ast_suites_of(node):
            if _on_header_line(suite[0], lines, comments):
                yield from (small for small in suite if isinstance(small, (ast.Import, ast.ImportFrom)))
            else:
                stack.extend(reversed(suite))


def _ast_suites_of(node: ast.stmt) -> Iterable[List[ast.stmt]]:
    """Yield the statement lists of a compound statement, in the order `_suites_of` gives libcst's suites.

    libcst's `elif` parts are suites of the first `if`; here each is a nested `if` in `orelse`. The order of the
    imports comes out the same: the nested `if` is pushed last, so it is taken next.
    """
    for part in ("body", "orelse", "finalbody"):
        statements = getattr(node, part, None)
        if isinstance(statements, list) and statements:
            yield statements
    for handler in getattr(node, "handlers", ()) or ():
        yield handler.body
    for case in getattr(node, "cases", ()) or ():
        yield case.body


def _line_prefix(node: ast.stmt, lines: Sequence[str]) -> str:
    line = lines[node.lineno - 1] if 0 < node.lineno <= len(lines) else ""
    # The stdlib parser counts columns in UTF-8 bytes.
    return line.encode("utf-8")[: node.col_offset].decode("utf-8", "replace")


def _on_header_line(first: ast.stmt, lines: Sequence[str], comments: "_CommentLines") -> bool:
    """Return whether a suite's first statement follows its header's colon on the same logical line."""
    if _line_prefix(first, lines).strip(" \t\f"):
        return True
    # The header's line may go on to this one after a backslash, unless the backslash ends a comment.
    previous = lines[first.lineno - 2].rstrip("\r\n") if first.lineno >= 2 else ""
    return previous.endswith("\\") and not comments.has_comment(first.lineno - 1)


class _CommentLines:
    """The numbers of a module's lines that hold a comment, found by the tokenizer on first need (rarely needed)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self._lines = lines
        self._numbers: Optional[FrozenSet[int]] = None

    def has_comment(self, number: int) -> bool:
        if self._numbers is None:
            numbers = set()
            # One line per physical line, each ending in `\n`: the tokenizer does not take a lone `\r` as a break.
            unified = iter([line.rstrip("\r\n") + "\n" for line in self._lines])
            try:
                for token in tokenize.generate_tokens(lambda: next(unified, "")):
                    if token.type == tokenize.COMMENT:
                        numbers.add(token.start[0])
            except (tokenize.TokenError, SyntaxError):
                pass
            self._numbers = frozenset(numbers)
        return number in self._numbers
