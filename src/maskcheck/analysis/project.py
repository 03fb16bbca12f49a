"""The modules of the analysed project: dotted names from paths, and on-demand parsing of imported modules.

A call into another module of the project (`from .layers import Block`) is followed by parsing that module when it
is first needed. Parsed modules are kept between the files of one process in a cache bounded by source size,
keyed by path, dotted name and content.
"""

from __future__ import annotations

import hashlib
import io
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import libcst as cst

from maskcheck.analysis.names import ImportTable
from maskcheck.analysis.module_paths import module_name_for, package_of, search_roots
from maskcheck.analysis.source_cache import SourceSizeCache
from maskcheck.findings import SourceError
from maskcheck.parsing import check_syntax_and_depth, parse_module

# Imported modules larger than this are not parsed for cross-module analysis (generated tables, vendored data).
MAX_IMPORTED_MODULE_BYTES = 2 * 1024 * 1024


@dataclass
class ModuleContext:
    """One parsed module: its tree, imports, and top-level functions and classes by name."""

    module: cst.Module
    name: Optional[str]
    path: str
    imports: ImportTable
    functions: Dict[str, cst.FunctionDef] = field(default_factory=dict)
    classes: Dict[str, cst.ClassDef] = field(default_factory=dict)

    @classmethod
    def build(cls, module: cst.Module, name: Optional[str], path: str) -> "ModuleContext":
        package = package_of(name, path)
        context = cls(module, name, path, ImportTable.from_module(module, package))
        for statement in module.body:
            if isinstance(statement, cst.FunctionDef):
                context.functions[statement.name.value] = statement
            elif isinstance(statement, cst.ClassDef):
                context.classes[statement.name.value] = statement
        return context


# Source bytes of parsed imported modules kept between files, least recently used dropped first, shared by the
# worker processes (`source_cache.share_between`). A libcst tree takes about 25 bytes of memory per source byte
# (tracemalloc: 25 on a 44 KB transformers 5.25 model file, 23 on 12 diffusers 0.42 model files), so this keeps
# about 100 MB of trees in all. NOTE: modules with long string tables take less per byte.
MAX_CACHED_SOURCE_BYTES = 4 * 1024 * 1024


# Parsed imported modules shared by every file that one process checks. Reusing a tree changes only how long a
# lookup takes, never what it returns: the key contains the content digest and the dotted name the module is built
# with, and the analysis never changes a ModuleContext.
_PARSED = SourceSizeCache(MAX_CACHED_SOURCE_BYTES)


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
            for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
                if candidate.is_file():
                    context = self._load(candidate, dotted)
                    break
            else:
                continue
            break
        self._found[dotted] = context
        return context

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
            return context
        if len(data) <= MAX_IMPORTED_MODULE_BYTES and b"\x00" not in data:
            try:
                text = data.decode(tokenize.detect_encoding(io.BytesIO(data).readline)[0])
                check_syntax_and_depth(text)
                context = ModuleContext.build(parse_module(text), dotted, str(path))
            except (SourceError, SyntaxError, RecursionError, UnicodeDecodeError, LookupError, ValueError):
                # An imported module that cannot be analysed is treated like a library: its calls are not followed.
                context = None
        _PARSED.put(key, context, len(data))
        return context
