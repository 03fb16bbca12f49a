"""The modules of the analysed project: dotted names from paths, and on-demand parsing of imported modules.

A call into another module of the project (`from .layers import Block`) is followed by loading that module when it
is first needed. Its imports come from the stdlib parser; libcst parses its top-level statements when they first
run, and each top-level function or class when it is first looked up. Loaded modules are kept between the files of
one process in a cache bounded by estimated memory, keyed by path, dotted name and content.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import tokenize
import weakref
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union

import libcst as cst
from libcst.metadata import CodePosition, CodeRange, MetadataWrapper, PositionProvider

from maskcheck.analysis.names import ImportTable
from maskcheck.analysis.module_paths import module_name_for, package_of, search_roots
from maskcheck.analysis.source_cache import SizeBoundedCache
from maskcheck.findings import SourceError, source_lines, text_in_range
from maskcheck.parsing import LINE, check_syntax_and_depth, parse_module, parse_module_in_parts, top_level_segments

# Imported modules larger than this are not parsed for cross-module analysis (generated tables, vendored data).
MAX_IMPORTED_MODULE_BYTES = 2 * 1024 * 1024


Definition = Union[cst.FunctionDef, cst.ClassDef]


class UnparsableImport(Exception):
    """libcst rejected a part of an imported module that the stdlib parser had taken, when it was first read."""

    def __init__(self, context: "ModuleContext", error: SourceError) -> None:
        super().__init__(f"{context.path}: {error}")
        self.context = context


class ModuleContext:
    """One parsed module: its tree, imports, and top-level functions and classes by name.

    A context from `build_lazy` parses `module` when it is first read, leaves most top-level functions and classes
    out of it, and parses each of those when it is first looked up in `functions` or `classes`.
    """

    def __init__(
        self, module: Optional[cst.Module], name: Optional[str], path: str, imports: ImportTable, source: Optional[str] = None
    ) -> None:
        self._module = module
        self.name = name
        self.path = path
        self.imports = imports
        self.functions: Mapping[str, cst.FunctionDef] = {}
        self.classes: Mapping[str, cst.ClassDef] = {}
        # The module's own text, where `module` leaves definitions out (`build_lazy`).
        self.source = source
        # The trees of the definitions parsed on demand, each with the number of lines above it in `source`.
        self.parsed_definitions: List[Tuple[int, cst.Module]] = []
        # The tree of all of `source`, parsed only when the lines of a definition or of `module` did not parse.
        self.full_tree: Optional[cst.Module] = None
        # For `build_lazy`: the text `module` is parsed from, and the first line of each of its statement lines.
        self._skeleton: Optional[Tuple[str, List[int]]] = None
        # Of `_skeleton`'s statements, the top-level definitions: their first line, kind and name.
        self._kept_definitions: List[Tuple[int, type, str]] = []
        # The characters of `_skeleton`'s text outside the blank lines of deferred definitions.
        self._skeleton_characters = 0
        # How many characters of source libcst has parsed for this context (`weight`).
        self.parsed_characters = 0

    def weight(self) -> int:
        """Estimate the memory this context takes, in bytes, from how much of it libcst has parsed."""
        return len(self.source or "") * UNPARSED_BYTES_PER_CHARACTER + self.parsed_characters * TREE_BYTES_PER_CHARACTER

    @property
    def module(self) -> cst.Module:
        """The module's tree. From `build_lazy`, the top-level definitions it defers are blank lines in it."""
        if self._module is None:
            self._module = self._parse_skeleton()
        return self._module

    @classmethod
    def build(cls, module: cst.Module, name: Optional[str], path: str) -> "ModuleContext":
        package = package_of(name, path)
        context = cls(module, name, path, ImportTable.from_module(module, package))
        functions: Dict[str, cst.FunctionDef] = {}
        classes: Dict[str, cst.ClassDef] = {}
        for statement in module.body:
            if isinstance(statement, cst.FunctionDef):
                functions[statement.name.value] = statement
            elif isinstance(statement, cst.ClassDef):
                classes[statement.name.value] = statement
        context.functions, context.classes = functions, classes
        return context

    @classmethod
    def build_lazy(cls, text: str, tree: ast.Module, name: Optional[str], path: str) -> "ModuleContext":
        """Build the context of an imported module from the stdlib parser's tree `tree` of `text`.

        The analysis of another module mostly reads an imported module's imports, to follow a name it re-exports,
        and the definitions it looks up by name, usually a few of them. It runs the module's other top-level
        statements only when it calls into the module. So the imports come from `tree`, and nothing is parsed with
        libcst here. `module` is parsed when first read, from the text with every top-level `def` and `class` that
        contains no import replaced by empty lines, which keeps every position. Each of those definitions is
        parsed from its own lines when first looked up.
        """
        lines = LINE.findall(text)
        segments = top_level_segments(tree, len(lines))
        skeleton_lines = list(lines)
        deferred: Dict[int, Tuple[ast.stmt, str]] = {}
        for start, end, statements in segments:
            statement = statements[0]
            if len(statements) != 1 or not isinstance(statement, _DEFINITIONS):
                continue
            if not _stands_alone(lines, start, end, statement):
                continue
            segment = "".join(lines[start - 1 : end - 1])
            if _IMPORT_WORD.search(segment) and any(isinstance(node, _IMPORTS) for node in ast.walk(statement)):
                # Its imports count for the whole module (`ImportTable`), so it is parsed with the module.
                continue
            deferred[start] = (statement, segment)
            skeleton_lines[start - 1 : end - 1] = ["\n"] * (end - start)

        imports = ImportTable.from_ast(tree, lines, package_of(name, path))
        context = cls(None, name, path, imports, source=text)
        context._skeleton = ("".join(skeleton_lines), [start for start, _, _ in segments if start not in deferred])
        context._skeleton_characters = len(text) - sum(len(segment) for _, segment in deferred.values())
        functions = _LazyDefinitions(context, cst.FunctionDef)
        classes = _LazyDefinitions(context, cst.ClassDef)
        for start, _, statements in segments:
            statement = statements[0]
            if not isinstance(statement, _DEFINITIONS):
                continue
            kind = cst.ClassDef if isinstance(statement, ast.ClassDef) else cst.FunctionDef
            target = classes if kind is cst.ClassDef else functions
            if start in deferred:
                target.defer(statement.name, start, deferred[start][1])
            else:
                target.keep(statement.name, start)
                context._kept_definitions.append((start, kind, statement.name))
        context.functions, context.classes = functions, classes
        return context

    def _parse_skeleton(self) -> cst.Module:
        """Parse the text `build_lazy` left, and give the definitions kept in it their nodes."""
        assert self._skeleton is not None and self.source is not None
        text, starts = self._skeleton
        try:
            module: Optional[cst.Module] = parse_module_in_parts(text)
        except SourceError:
            module = None
        self.parsed_characters += self._skeleton_characters
        in_text = self._kept_definitions
        nodes: Dict[int, cst.CSTNode] = {}
        if module is not None and len(module.body) == len(starts):
            nodes = dict(zip(starts, module.body))
        if module is None or not all(_is_definition(nodes.get(start), kind, name) for start, kind, name in in_text):
            # A fallback for a text that `_stands_alone` misjudges: the whole module is parsed, and each kept name
            # gets the last definition of its kind and name, the one a dictionary built from the module contains.
            module = self.whole_tree()
            last = {(type(node), node.name.value): node for node in module.body if isinstance(node, _CST_DEFINITIONS)}
            nodes = {start: last[kind, name] for start, kind, name in in_text if (kind, name) in last}
        for start, kind, name in in_text:
            target = self.classes if kind is cst.ClassDef else self.functions
            if isinstance(target, _LazyDefinitions) and start in nodes:
                target.resolve_kept(name, start, nodes[start])
        self._skeleton = None
        return module

    def whole_tree(self) -> cst.Module:
        """Return the tree of all of `source`, parsed on first need, for a definition or module text that failed."""
        if self.full_tree is None:
            self.full_tree = _parse_imported(self, self.source or "")
            self.parsed_characters += len(self.source or "")
            self.parsed_definitions.append((0, self.full_tree))
        return self.full_tree

    def locate(self, node: cst.CSTNode) -> Optional[Tuple[CodeRange, str]]:
        """Return the range and exact text of a node of this module, or None when the node is not one of its own."""
        trees = [(0, self._module)] if self._module is not None else []
        for offset, tree in [*trees, *self.parsed_definitions]:
            where = MetadataWrapper(tree, unsafe_skip_copy=True).resolve(PositionProvider).get(node)
            if where is None:
                continue
            if offset:
                where = CodeRange(
                    CodePosition(where.start.line + offset, where.start.column),
                    CodePosition(where.end.line + offset, where.end.column),
                )
            lines = source_lines(self.source if self.source is not None else tree.code)
            text = text_in_range(lines, where.start.line, where.start.column, where.end.line, where.end.column)
            return where, text
        return None


def _parse_imported(context: ModuleContext, text: str) -> cst.Module:
    try:
        return parse_module(text)
    except SourceError as error:
        raise UnparsableImport(context, error) from None


def _is_definition(node: Optional[cst.CSTNode], kind: type, name: str) -> bool:
    return isinstance(node, kind) and node.name.value == name  # type: ignore[attr-defined]


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_IMPORTS = (ast.Import, ast.ImportFrom)
_CST_DEFINITIONS = (cst.FunctionDef, cst.ClassDef)
# Every import statement starts its line or follows `;` or `:`, so a definition without a match has no import.
_IMPORT_WORD = re.compile(r"(?:^|[;:\r\n])[ \t\f]*(?:import|from)\b")


def _stands_alone(lines: List[str], start: int, end: int, statement: ast.stmt) -> bool:
    """Return whether a definition's segment holds only the definition, and comments and blank lines after it.

    The stdlib parser gives a decorator's line as the line where its expression starts, which can lie below the
    `@` (`@(` on a line of its own), and a line with only a backslash joins the next statement. In both cases the
    segment does not parse alone, so the definition is parsed with the module.
    """
    first = lines[start - 1].lstrip(" \t\f")
    if not first.startswith(("@", "def", "class", "async")):
        return False
    for line in lines[statement.end_lineno : end - 1]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return False
    return True


class _LazyDefinitions(Mapping[str, Definition]):
    """Top-level functions or classes of one module by name, each parsed when first read.

    A definition deferred by `build_lazy` is parsed from its own lines. One kept in the module's text gets its node
    when the module is parsed. The last definition of a name in the module wins, as in a plain dictionary.
    """

    def __init__(self, context: ModuleContext, kind: type) -> None:
        # A strong reference would make a cycle with `context.functions` and `context.classes`, so a context dropped
        # from `_PARSED` would keep its trees until a full garbage collection (33 contexts with 1.0 million parsed
        # characters after the 19 transformers 5.25 files that pass the pre-filter, checked in one process).
        # NOTE: a lookup after the context is freed raises ReferenceError, although `in` and `len` still work. The
        # analysis reads these mappings only through a live context (`ModuleContext.functions`, `_DefinitionRef`).
        self._context: ModuleContext = weakref.proxy(context)
        self._kind = kind
        self._nodes: Dict[str, Definition] = {}
        # Definitions not parsed yet: their first line, and their text, or None for one kept in the module's text.
        self._deferred: Dict[str, Tuple[int, Optional[str]]] = {}

    def add(self, name: str, node: Definition) -> None:
        self._deferred.pop(name, None)
        self._nodes[name] = node

    def defer(self, name: str, start: int, segment: str) -> None:
        self._nodes.pop(name, None)
        self._deferred[name] = (start, segment)

    def keep(self, name: str, start: int) -> None:
        self._nodes.pop(name, None)
        self._deferred[name] = (start, None)

    def resolve_kept(self, name: str, start: int, node: Definition) -> None:
        """Give a kept definition its node, unless a later definition of the name replaced it."""
        if self._deferred.get(name) == (start, None):
            self.add(name, node)

    def __getitem__(self, name: str) -> Definition:
        node = self._nodes.get(name)
        if node is not None:
            return node
        start, segment = self._deferred[name]
        if segment is None:
            # Parsing the module gives the definitions kept in its text their nodes.
            _ = self._context.module
            return self._nodes[name]
        node = self._parse(name, start, segment)
        del self._deferred[name]
        self._nodes[name] = node
        return node

    def _parse(self, name: str, start: int, segment: str) -> Definition:
        try:
            tree: Optional[cst.Module] = parse_module(segment)
        except SourceError:
            tree = None
        self._context.parsed_characters += len(segment)
        node = tree.body[0] if tree is not None and len(tree.body) == 1 else None
        if tree is not None and isinstance(node, self._kind) and node.name.value == name:
            self._context.parsed_definitions.append((start - 1, tree))
            return node
        # A fallback like the one in `build_lazy`: the whole module is parsed once more, and its definition is used.
        full = self._context.whole_tree()
        found = [statement for statement in full.body if isinstance(statement, self._kind)]
        return [statement for statement in found if statement.name.value == name][-1]

    def __contains__(self, name: object) -> bool:
        return name in self._nodes or name in self._deferred

    def __iter__(self) -> Iterator[str]:
        yield from self._nodes
        yield from self._deferred

    def __len__(self) -> int:
        return len(self._nodes) + len(self._deferred)


# Estimated memory of the imported modules kept between files, least recently used dropped first, shared by the
# worker processes (`source_cache.share_between`); `ModuleContext.weight` makes the estimate.
MAX_CACHED_MEMORY_BYTES = 100 * 1024 * 1024

# Bytes of memory per character of parsed source: a libcst tree takes about 25 (tracemalloc: 25 on a 44 KB
# transformers 5.25 model file, 23 on 12 diffusers 0.42 model files, 24 on 60 diffusers 0.42 modules parsed in
# parts). NOTE: modules with long string tables take less per character.
TREE_BYTES_PER_CHARACTER = 25
# Bytes per character of a module that `build_lazy` has not parsed with libcst: its text and the parts it keeps
# (tracemalloc on 60 diffusers 0.42 modules: 1.6 besides the text, which takes 1 for ASCII).
UNPARSED_BYTES_PER_CHARACTER = 3


# Imported modules shared by every file that one process checks. Reusing a context changes only how long a lookup
# takes, never what it returns. The key contains the content digest and the dotted name the module is built with.
# The analysis never changes a ModuleContext, except that the first read of `module` or of a deferred definition
# parses it (`build_lazy`). A context's weight grows as its parts are parsed, so each file's index weighs its
# contexts again when the file's analysis ends (`ProjectIndex.settle`).
_PARSED = SizeBoundedCache(MAX_CACHED_MEMORY_BYTES)


class ProjectIndex:
    """Finds and parses the project's own modules by dotted name, searching the given root folders.

    Each analysed file gets its own index. The index returns the same ModuleContext for a dotted name every time
    it is asked during that file's analysis, so the analysis of one file never gets a module parsed twice, and
    its result does not depend on which files the process checked before. Parsed trees are reused between files
    through a process-wide cache keyed by content (`_PARSED`).
    """

    def __init__(self, roots: List[Path]) -> None:
        self.roots = [root.resolve() for root in roots]
        # Every lookup of this file's analysis, by dotted name; the contexts stay alive until the file is done.
        self._found: Dict[str, Optional[ModuleContext]] = {}
        # The cache key of every context in `_found`.
        self._keys: List[Tuple[Tuple[str, str, str], ModuleContext]] = []

    @classmethod
    def for_file(cls, path: str) -> Tuple[Optional["ProjectIndex"], Optional[str]]:
        """Return a new index for analysing one file, and the file's dotted module name."""
        name, root = module_name_for(path)
        if root is None:
            return None, None
        return cls(search_roots(path, root)), name

    def find(self, dotted: str) -> Optional[ModuleContext]:
        """Return the parsed module for a dotted name, or None when it is not part of the project."""
        if dotted in self._found:
            return self._found[dotted]
        context = None
        relative = Path(*dotted.split("."))
        for root in self.roots:
            # A package comes before a module of the same name, as in Python's import system.
            for candidate in (root / relative / "__init__.py", root / relative.with_suffix(".py")):
                if candidate.is_file():
                    context = self._load(candidate, dotted)
                    break
            else:
                continue
            break
        self._found[dotted] = context
        return context

    def treat_as_library(self, context: ModuleContext) -> None:
        """Look up a module whose text libcst rejected as not part of the project, like one that fails to load."""
        for dotted, found in list(self._found.items()):
            if found is context:
                self._found[dotted] = None
        for key, found in list(self._keys):
            if found is context:
                self._keys.remove((key, found))
                _PARSED.put(key, None, len(context.source or ""))

    def settle(self) -> None:
        """Weigh the contexts this index used again in the cache, whose parts the analysis may have parsed."""
        for key, context in self._keys:
            _PARSED.resize(key, context.weight())

    def loaded(self) -> List[ModuleContext]:
        return [context for context in self._found.values() if context is not None]

    def _load(self, path: Path, dotted: str) -> Optional[ModuleContext]:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        key = (str(path), dotted, hashlib.blake2b(data, digest_size=16).hexdigest())
        cached, context = _PARSED.get(key)
        if cached:
            if context is not None:
                self._keys.append((key, context))
            return context
        if len(data) <= MAX_IMPORTED_MODULE_BYTES and b"\x00" not in data:
            try:
                text = data.decode(tokenize.detect_encoding(io.BytesIO(data).readline)[0])
                tree = check_syntax_and_depth(text)
                if tree is None:
                    context = ModuleContext.build(parse_module(text), dotted, str(path))
                    context.parsed_characters = len(text)
                else:
                    context = ModuleContext.build_lazy(text, tree, dotted, str(path))
            except (SourceError, SyntaxError, RecursionError, UnicodeDecodeError, LookupError, ValueError):
                # An imported module that cannot be analysed is treated like a library: its calls are not followed.
                context = None
        if context is not None:
            self._keys.append((key, context))
        _PARSED.put(key, context, context.weight() if context is not None else len(data))
        return context
