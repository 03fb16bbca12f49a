"""Parsing with guards: the stdlib parser checks syntax and nesting before libcst parses the text.

libcst is imported only inside the functions that call it, because importing it takes 0.5-0.8 s (`python -X
importtime`, libcst 1.9, busy 2-core machine) and files that the engine's pre-filter rejects never need it.
"""

from __future__ import annotations

import ast
import gc
import io
import re
import tokenize
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from maskcheck.findings import SourceError

if TYPE_CHECKING:
    import libcst as cst


class LockLike(Protocol):
    """A lock shared by processes, such as `multiprocessing.Lock()`."""

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool: ...

    def release(self) -> None: ...

# Syntax-tree depth past which a file is not analysed. libcst 1.9 takes about a second per statement at this depth
# (a chain of 500 method calls) and crashes the interpreter at about 1,500 nested brackets, which the stdlib
# parser rejects first (it allows 200). The deepest file in fairseq 0.12 is 23 deep.
MAX_NESTING_DEPTH = 1000

TOO_DEEP = (
    f"nests more than {MAX_NESTING_DEPTH} levels deep, which maskcheck does not analyse; "
    "split the expression or exclude the file"
)


def check_syntax_and_depth(source: str) -> Optional[ast.Module]:
    """Raise SourceError for invalid or too deeply nested Python; return the stdlib tree when the stdlib parses it.

    Returns None for a file that only libcst parses (newer grammar than the running Python).
    """
    try:
        tree = _parse_without_collection(source)
    except SyntaxError as error:
        if "too many nested" in str(error.msg):
            raise SourceError(TOO_DEEP) from None
        # The running Python may be older than the file's grammar (PEP 695 generics under 3.11), so libcst has
        # the last word, but only on input shallow enough for it.
        if _bracket_depth(source) > MAX_NESTING_DEPTH // 2:
            raise SourceError(TOO_DEEP) from None
        import libcst as cst

        try:
            _libcst_parse(source)
        except cst.ParserSyntaxError:
            raise SourceError(
                f"syntax error at line {error.lineno}, column {error.offset or 0}: {error.msg}; "
                "maskcheck reads Python 3 only, so fix the syntax or exclude the file"
            ) from None
        return None
    except (RecursionError, MemoryError):
        raise SourceError(TOO_DEEP) from None
    if _ast_depth(tree) > MAX_NESTING_DEPTH:
        raise SourceError(TOO_DEEP)
    return tree


@contextmanager
def collector_paused() -> Iterator[None]:
    """Turn the cyclic garbage collector off inside the block, unless it is off already.

    Parsing creates hundreds of thousands of tracked objects (AST nodes), and each run of the collector examines
    every tracked object that is alive, so parses slowed down as the caches of parsed modules filled. Reference
    counting still frees every object outside a reference cycle, and any cycle is freed by the first collection
    after the block. Measured with CPython 3.11: the pre-filter took half the CPU time on a 50-file transformers
    sample. In one process, the syntax check of the first copy of torch's `torch/` tree took 14.5 s of CPU and
    of the third 18.8 s (cProfile). Paused, 150 `torch/nn` files parsed in 0.11 to 0.12 s whether the process held
    0 or 3 million other objects, against 0.14 to 0.33 s with the collector on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _parse_without_collection(source: str) -> ast.Module:
    with collector_paused():
        return ast.parse(source)


def _stdlib_tree(source: str) -> Optional[ast.Module]:
    """Return the stdlib parser's tree of `source`, or None when it rejects the text (`parse_module_in_parts`)."""
    try:
        return _parse_without_collection(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _ast_depth(tree: ast.AST) -> int:
    """Return the number of levels of the tree (every child node counts, `ctx` included), stopping past the limit.

    Level by level, reading each node type's `_fields` directly: about 4 times as fast as a stack of
    (node, depth) pairs filled by `ast.iter_child_nodes`, with the same result (measured on 300 diffusers files).
    """
    level = [tree]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_NESTING_DEPTH:
            break
        below: List[ast.AST] = []
        for node in level:
            for name in node._fields:
                value = getattr(node, name, None)
                if isinstance(value, ast.AST):
                    below.append(value)
                elif type(value) is list:
                    below.extend(item for item in value if isinstance(item, ast.AST))
        level = below
    return depth


def _bracket_depth(source: str) -> int:
    deepest = depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.OP and token.string in "([{":
                depth += 1
                deepest = max(deepest, depth)
            elif token.type == tokenize.OP and token.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, SyntaxError):
        pass
    return deepest


def parse_module(source: str) -> cst.Module:
    import libcst as cst

    try:
        return _libcst_parse(source)
    except cst.ParserSyntaxError as error:
        # libcst's own message spans several lines with a caret picture; keep the first line.
        first_line = str(error.message).strip().splitlines()[0] if error.message else "invalid syntax"
        raise SourceError(
            f"syntax error at line {error.raw_line}, column {error.raw_column + 1}: {first_line}; "
            "maskcheck reads Python 3 only, so fix the syntax or exclude the file"
        ) from None


def parse_module_in_parts(source: str, tree: Optional[ast.Module] = None) -> "cst.Module":
    """Parse `source` as `parse_module` does; a large source is parsed in parts made of whole top-level statements.

    `tree` is the stdlib parser's tree of `source`; without it, a large source is parsed with the stdlib first.
    libcst's parser allocates 360 to 540 bytes per character while it runs (see TRIM_AFTER_CHARACTERS), so one parse
    of torch 2.13's 1.4 MB common_methods_invocations.py took a process to 738 MB. In parts, the largest part sets
    the peak instead: checking that file, whose largest statement has 660 KB, peaked at 411 MB. That statement is a
    list display, and a long display is parsed in chunks of elements (`DisplayPart`): then the check peaked at
    133 MB. The parts are joined into one Module, which is used only when it prints as `source` exactly, so every
    position stays the same. Otherwise the whole source is parsed. A display part that does not print as its text
    is parsed whole on its own.
    """
    return parse_parts(source, split_into_parts(source, tree))


@dataclass(frozen=True)
class DisplayPart:
    """A part that is one statement whose value is a long list, tuple or set display, parsed in chunks of elements.

    `skeleton` is `text` with each chunk of consecutive elements replaced by `DISPLAY_PLACEHOLDER`, and `chunks` are
    the replaced texts, from the first element's first character to the last element's last.
    """

    text: str
    skeleton: str
    chunks: Tuple[str, ...]


Part = Union[str, DisplayPart]


def split_into_parts(source: str, tree: Optional[ast.Module] = None) -> Optional[List[Part]]:
    """Return the parts that `parse_parts` parses one at a time, or None when `source` is to be parsed whole.

    A caller that keeps `tree` can drop it before `parse_parts`: for a 1.4 MB source it takes about 100 MB.
    """
    if len(source) < PARSE_IN_PARTS_CHARACTERS:
        return None
    if tree is None:
        tree = _stdlib_tree(source)
    if tree is None:
        return None
    lines = LINE.findall(source)
    segments = top_level_segments(tree, len(lines))
    parts: List[Part] = []
    for text, first_line, grouped in _part_groups(lines, segments):
        display = _split_display(text, first_line, grouped) if len(text) >= SPLIT_DISPLAY_CHARACTERS else None
        parts.append(display or text)
    # One plain part is the whole source, which `parse_parts` then parses once.
    if len(parts) > 1 or (parts and isinstance(parts[0], DisplayPart)):
        return parts
    return None


def parse_parts(source: str, parts: Optional[List[Part]]) -> "cst.Module":
    """Parse each part of `split_into_parts` and join the trees, or parse `source` whole when `parts` is None."""
    if parts is None:
        return parse_module(source)

    joined = None
    parsed: List["cst.Module"] = []
    try:
        for item in parts:
            if isinstance(item, DisplayPart):
                text = item.text
                part = _parse_display_part(item)
                if part is None or part.code != text:
                    # A display whose chunks do not join as its text is parsed whole, like any other part.
                    part = parse_module(text)
            else:
                text = item
                part = parse_module(text)
            # libcst 1.9 does not print some lines at the end of a module as it read them: a blank line before a
            # form-feed line, the first of two indented comment lines after a statement, a lone backslash line.
            # Each part is checked as soon as it is parsed, so such a file stops at the first part that differs.
            if part.code != text:
                break
            parsed.append(part)
        else:
            joined = _join_parts(parsed)
    except SourceError:
        # A part that is not a statement on its own (a backslash line joins it to the next one). The whole
        # source decides below: it parses, or its own error is the one reported.
        pass
    parsed.clear()

    # Parts that each print as their text join into a tree that prints as the source. Printing the joined tree
    # checks that reasoning, at about a fifth of the cost of a parse.
    if joined is not None and joined.code == source:
        release_freed_memory()
        return joined

    # Nothing of the parts is kept while the whole source is parsed.
    joined = None
    release_freed_memory()
    return parse_module(source)


def _part_texts(lines: List[str], segments: List[Tuple[int, int, List[ast.stmt]]]) -> List[str]:
    """Group the lines of consecutive top-level segments into texts of about PART_CHARACTERS characters each."""
    return [text for text, _, _ in _part_groups(lines, segments)]


Segment = Tuple[int, int, List[ast.stmt]]


def _part_groups(lines: List[str], segments: List[Segment]) -> List[Tuple[str, int, List[Segment]]]:
    """Group the lines of consecutive top-level segments into texts of about PART_CHARACTERS characters each, and
    return each text with the number of its first line and its segments.

    A statement longer than that makes a text of its own. The first text also contains the lines above the first
    statement. Fewer, longer parts cost less to parse than one part per statement, and have fewer ends where
    libcst may print a line differently.
    """
    groups: List[Tuple[str, int, List[Segment]]] = []
    pending: List[str] = []
    pending_segments: List[Segment] = []
    first_line = 1
    size = 0
    for number, segment in enumerate(segments):
        start, end, _ = segment
        text = "".join(lines[(0 if number == 0 else start - 1) : end - 1])
        if pending and size + len(text) > PART_CHARACTERS:
            groups.append(("".join(pending), first_line, pending_segments))
            pending, pending_segments, size = [], [], 0
        if not pending:
            first_line = 1 if number == 0 else start
        pending.append(text)
        pending_segments.append(segment)
        size += len(text)
    if pending:
        groups.append(("".join(pending), first_line, pending_segments))
    return groups


# Sources of at least this many characters are parsed in parts (`parse_module_in_parts`). 84 of the 7,431 files of
# the five benchmark trees are this large.
PARSE_IN_PARTS_CHARACTERS = 128 * 1024

# The size of each part, in characters, except for a statement that is longer. At the 540 bytes per character noted
# at TRIM_AFTER_CHARACTERS, a part this large takes about 35 MB while it is parsed (an estimate).
PART_CHARACTERS = 64 * 1024

# A part of at least this many characters that is one statement whose value is a list, tuple or set display is
# parsed in chunks of elements of about DISPLAY_CHUNK_CHARACTERS each (`DisplayPart`). torch 2.13's
# common_methods_invocations.py contains `op_db`, one list of 566 elements in 660 KB. Parsed alone as one text, that
# statement took a process to 386 MB (maximum RSS). In chunks of one element it took 127 MB, and 0.9 s of CPU
# instead of 1.5 s.
SPLIT_DISPLAY_CHARACTERS = PART_CHARACTERS
DISPLAY_CHUNK_CHARACTERS = 16 * 1024

# The name that replaces a chunk of elements in a display's skeleton.
DISPLAY_PLACEHOLDER = "__maskcheck_display_chunk__"

# Comments, which may appear between the elements of a display.
_COMMENT = re.compile(r"#[^\r\n]*")

# A line break as libcst 1.9 finds a module's first one (`libcst._parser.detect_config.NEWLINE_RE`).
_LINE_BREAK = re.compile(r"\r\n?|\n")

# Physical lines with their line breaks: `\n`, `\r\n` and `\r`, the ones that Python counts.
LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def top_level_segments(tree: ast.Module, line_count: int) -> List[Tuple[int, int, List[ast.stmt]]]:
    """Split a module into the lines of its top-level statements: (first line, line after the last, statements).

    A definition's lines start at its first decorator. Statements that start on one line (`a = 1; b = 2`) share a
    segment, as they share a statement line in libcst. The lines between two statements go with the first one.
    """
    segments: List[Tuple[int, int, List[ast.stmt]]] = []
    for statement in tree.body:
        decorators = getattr(statement, "decorator_list", None)
        start = decorators[0].lineno if decorators else statement.lineno
        if segments and segments[-1][0] == start:
            segments[-1][2].append(statement)
        else:
            segments.append((start, 0, [statement]))
    bounds = [start for start, _, _ in segments[1:]] + [line_count + 1]
    return [(start, end, statements) for (start, _, statements), end in zip(segments, bounds)]


def _split_display(text: str, first_line: int, segments: List[Segment]) -> Optional[DisplayPart]:
    """Return `text` as a DisplayPart when it is one statement whose value is a bracketed list, tuple or set display
    with elements that can be cut apart, else None.

    A chunk starts and ends at an element whose neighbours are separated from it by a comma, whitespace and comments
    only, so that `[` + chunk + `]` parses into the same elements as the display. An element in redundant
    parentheses (`[(a), b]`) is never the first or last of a chunk, because the stdlib parser's position of `a`
    does not include them.
    """
    if len(segments) != 1 or len(segments[0][2]) != 1:
        return None
    statement = segments[0][2][0]
    display = getattr(statement, "value", None)
    if not isinstance(statement, (ast.Assign, ast.AnnAssign, ast.Expr)):
        return None
    if not isinstance(display, (ast.List, ast.Tuple, ast.Set)) or len(display.elts) < 2:
        return None

    lines = LINE.findall(text)
    if display.end_lineno >= first_line + len(lines):
        # Another statement starts on the display's last line (`x = [\n a]; y = 1`), so the part ends before the
        # display does. Such a part does not parse on its own anyway.
        return None
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def offset(line_number: int, byte_column: int) -> int:
        # The stdlib parser counts columns in UTF-8 bytes.
        line = lines[line_number - first_line]
        return starts[line_number - first_line] + len(line.encode("utf-8")[:byte_column].decode("utf-8", "replace"))

    opening = offset(display.lineno, display.col_offset)
    closing = offset(display.end_lineno, display.end_col_offset) - 1
    if text[opening] not in "[({" or text[closing] not in "])}":
        return None
    spans = [(offset(e.lineno, e.col_offset), offset(e.end_lineno, e.end_col_offset)) for e in display.elts]

    def separated(between: str, allowed: Tuple[str, ...]) -> bool:
        return "".join(_COMMENT.sub("", between).split()) in allowed

    # Cuts may go after element `i` when what follows it up to the next element is a comma.
    cuttable = [separated(text[spans[i][1] : spans[i + 1][0]], (",",)) for i in range(len(spans) - 1)]
    if not separated(text[opening + 1 : spans[0][0]], ("",)) or not separated(
        text[spans[-1][1] : closing], ("", ",")
    ):
        return None

    chunk_bounds: List[Tuple[int, int]] = []
    chunk_start = spans[0][0]
    for index, (_, end) in enumerate(spans):
        last = index == len(spans) - 1
        if last or (cuttable[index] and end - chunk_start >= DISPLAY_CHUNK_CHARACTERS):
            chunk_bounds.append((chunk_start, end))
            if not last:
                chunk_start = spans[index + 1][0]
    if len(chunk_bounds) < 2:
        return None

    pieces: List[str] = []
    previous = 0
    for start, end in chunk_bounds:
        pieces.append(text[previous:start])
        pieces.append(DISPLAY_PLACEHOLDER)
        previous = end
    pieces.append(text[previous:])
    return DisplayPart(text, "".join(pieces), tuple(text[start:end] for start, end in chunk_bounds))


def _parse_display_part(part: DisplayPart) -> Optional["cst.Module"]:
    """Parse a DisplayPart: its skeleton, then each chunk as a list display whose elements replace a placeholder.

    Returns None when the skeleton has no display of exactly the placeholders. The caller compares the result's
    code with the part's text.
    """
    import libcst as cst

    # libcst takes the default line break from the first one in the text it parses, and stores the others only when
    # they differ. A chunk or the skeleton alone could start with another one than the part (a `\r\n` inside a
    # string), and libcst 1.9 ignores `PartialParserConfig.default_newline`. So each chunk is parsed after the part's
    # first line break, which goes to the chunk's own `[`, and a skeleton that finds another one is not used.
    first_break = _LINE_BREAK.search(part.text)
    line_break = first_break.group(0) if first_break else "\n"
    try:
        skeleton = parse_module(part.skeleton)
    except SourceError:
        # The skeleton of a tuple without brackets (`x = (a) if b else c, d`) may not parse. Then only this part is
        # parsed whole, not the whole file.
        return None
    if skeleton.default_newline != line_break:
        return None
    chunks = part.chunks

    class _Replace(cst.CSTTransformer):
        done = False

        def leave_List(self, original: "cst.List", updated: "cst.List") -> "cst.BaseExpression":
            return self._fill(updated)

        def leave_Tuple(self, original: "cst.Tuple", updated: "cst.Tuple") -> "cst.BaseExpression":
            return self._fill(updated)

        def leave_Set(self, original: "cst.Set", updated: "cst.Set") -> "cst.BaseExpression":
            return self._fill(updated)

        def _fill(self, display):
            elements = display.elements
            if self.done or len(elements) != len(chunks):
                return display
            if not all(
                isinstance(element, cst.Element)
                and isinstance(element.value, cst.Name)
                and element.value.value == DISPLAY_PLACEHOLDER
                and not element.value.lpar
                for element in elements
            ):
                return display
            self.done = True
            filled: List["cst.BaseElement"] = []
            for placeholder, chunk in zip(elements, chunks):
                parsed = cst.parse_expression("[" + line_break + chunk + "]")
                if not isinstance(parsed, cst.List) or not parsed.elements:
                    raise ValueError("a chunk is not a list of elements")
                chunk_elements = list(parsed.elements)
                # The comma after the chunk belongs to the skeleton.
                chunk_elements[-1] = chunk_elements[-1].with_changes(comma=placeholder.comma)
                filled.extend(chunk_elements)
            return display.with_changes(elements=filled)

    replace = _Replace()
    try:
        module = skeleton.visit(replace)
    except (cst.ParserSyntaxError, ValueError):
        return None
    return module if replace.done else None


def _join_parts(parts: Sequence["cst.Module"]) -> Optional["cst.Module"]:
    """Join the modules of consecutive parts of one source into one module that prints as their texts joined.

    The comments and blank lines at the end of a part (its footer) go before the next part's first statement.
    Every part with an indented block must have detected the same default indentation as the others, and every
    part the same line break, because blocks without their own indentation print with the module's default.
    Returns None when they differ, as in a module whose first blocks use tabs and later ones spaces.
    """
    first = parts[0]
    indents = {part.default_indent for part in parts if any(_has_indented_block(node) for node in part.body)}
    newlines = {part.default_newline for part in parts}
    if len(indents) > 1 or len(newlines) > 1 or not all(part.has_trailing_newline for part in parts[:-1]):
        return None
    body = list(first.body)
    carried = list(first.footer)
    for part in parts[1:]:
        if not part.body:
            return None
        statements = list(part.body)
        leading = [*carried, *part.header]
        if leading:
            statements[0] = statements[0].with_changes(leading_lines=[*leading, *statements[0].leading_lines])
        body.extend(statements)
        carried = list(part.footer)
    return first.with_changes(
        body=body,
        footer=carried,
        default_indent=indents.pop() if indents else first.default_indent,
        has_trailing_newline=parts[-1].has_trailing_newline,
    )


def _has_indented_block(statement: "cst.CSTNode") -> bool:
    """Return whether a top-level statement contains an indented block.

    Such a block may print with the module's default indentation. Blocks occur only in the clauses of compound
    statements.
    """
    import libcst as cst

    stack = [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, (cst.IndentedBlock, cst.Match)):
            return True
        for name in ("body", "orelse", "finalbody"):
            child = getattr(node, name, None)
            if isinstance(child, cst.CSTNode):
                stack.append(child)
        stack.extend(getattr(node, "handlers", ()))
    return False


# libcst 1.9's parser, written in Rust, allocates about 360 bytes of memory per source byte while it parses, and 540
# on torch 2.13's 1.4 MB common_methods_invocations.py. It frees nearly all of it when it returns: the tree of that
# file takes about 40 MB (tracemalloc). glibc keeps the freed memory in the process, so a worker that once parsed a
# large file stayed that large for the rest of the run. On this project's 2-core Linux machine a process measured
# 737 MB after that parse, and 71 MB after `malloc_trim(0)` with the tree still alive. A trim costs 0.1 to 3 ms, so
# it runs only after sources of at least this many characters, whose parse may have allocated 45 MB or more.
TRIM_AFTER_CHARACTERS = 128 * 1024

# Sources of at least this many characters are parsed by one worker process at a time, because each such parse
# may allocate 90 MB or more. Then a run's peak contains one large parse, not one per worker. The analysis after
# the parse is not serialized. 17 of the 7,431 files of the five benchmark trees are this large.
SERIAL_PARSE_CHARACTERS = 256 * 1024

# How long a worker waits for its turn before it parses anyway. A worker that dies while parsing never releases the
# lock, and then the pool is replaced (`runner._check_in_pool`), so the wait only has to end.
SERIAL_PARSE_WAIT_SECONDS = 120.0

# glibc's `malloc_trim`, looked up on first need; None where the C library has none (macOS, musl, Windows).
_malloc_trim: Optional[Callable[[int], int]] = None
_looked_up = False

# The lock that the worker processes of one pool share for large parses; None outside a pool.
_large_parse_lock: Optional[LockLike] = None


def share_large_parse_lock(lock: Optional[LockLike]) -> None:
    """Set the lock that makes this process parse large sources only while no other worker of its pool does."""
    global _large_parse_lock
    _large_parse_lock = lock


def _libcst_parse(source: str) -> cst.Module:
    import libcst as cst

    lock = _large_parse_lock if len(source) >= SERIAL_PARSE_CHARACTERS else None
    locked = lock.acquire(timeout=SERIAL_PARSE_WAIT_SECONDS) if lock is not None else False
    try:
        return cst.parse_module(source)
    finally:
        if len(source) >= TRIM_AFTER_CHARACTERS:
            release_freed_memory()
        if locked:
            lock.release()


def release_freed_memory() -> bool:
    """Return the C library's freed memory to the operating system, and return False where that is not possible."""
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        try:
            import ctypes

            _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        except (ImportError, OSError, TypeError):
            # TypeError: Windows' ctypes cannot load the running process by a None name.
            _malloc_trim = None
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True
