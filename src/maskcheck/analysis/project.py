"""The modules of the analysed project: dotted names from paths, and on-demand parsing of imported modules.

A call into another module of the project (`from .layers import Block`) is followed by parsing that module when it
is first needed. Parsed modules are kept for the rest of the run, keyed by path and content.
"""

from __future__ import annotations

import hashlib
import io
import tokenize
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import libcst as cst

from maskcheck.analysis.names import ImportTable
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
        package = _package_of(name, path)
        context = cls(module, name, path, ImportTable.from_module(module, package))
        for statement in module.body:
            if isinstance(statement, cst.FunctionDef):
                context.functions[statement.name.value] = statement
            elif isinstance(statement, cst.ClassDef):
                context.classes[statement.name.value] = statement
        return context


def _package_of(name: Optional[str], path: str) -> Optional[str]:
    if name is None:
        return None
    if Path(path).name == "__init__.py":
        return name
    return name.rpartition(".")[0] or None


def module_name_for(path: str) -> Tuple[Optional[str], Optional[Path]]:
    """Return the dotted module name of a file and the folder its top package sits in.

    The name is built from the folders above the file that hold an `__init__.py`; a file outside any package is a
    top-level module of its own folder. Returns (None, None) for a path that is not a file on disk.
    """
    file = Path(path)
    if not file.is_file():
        return None, None
    file = file.resolve()
    parts: List[str] = [] if file.name == "__init__.py" else [file.stem]
    folder = file.parent
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts) or None, folder


# Parsed imported modules kept per run, least recently used dropped first: libcst trees are large, and a run over
# a big tree must keep its memory flat.
MAX_CACHED_MODULES = 128


class ProjectIndex:
    """Finds and parses the project's own modules by dotted name, searching the given root folders.

    One index is shared by every file of a run that has the same roots, so an imported module is parsed once.
    """

    # TODO: two transformers 5.25 modules recurse too deeply only late in a long run over the whole package, not
    # in a fresh process; state shared between files (this index is the main candidate) deepens the analysis.
    _shared: Dict[Tuple[Path, ...], "ProjectIndex"] = {}

    def __init__(self, roots: List[Path]) -> None:
        self.roots = [root.resolve() for root in roots]
        self._by_path: "OrderedDict[Tuple[str, str], Optional[ModuleContext]]" = OrderedDict()

    @classmethod
    def for_file(cls, path: str) -> Tuple[Optional["ProjectIndex"], Optional[str]]:
        name, root = module_name_for(path)
        if root is None:
            return None, None
        roots = [root]
        own_folder = Path(path).resolve().parent
        if own_folder != root:
            roots.append(own_folder)
        key = tuple(roots)
        index = cls._shared.get(key)
        if index is None:
            index = cls._shared[key] = cls(roots)
        return index, name

    def find(self, dotted: str) -> Optional[ModuleContext]:
        """Return the parsed module for a dotted name, or None when it is not part of the project."""
        relative = Path(*dotted.split("."))
        for root in self.roots:
            for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
                if candidate.is_file():
                    return self._load(candidate, dotted)
        return None

    def loaded(self) -> List[ModuleContext]:
        return [context for context in self._by_path.values() if context is not None]

    def _load(self, path: Path, dotted: str) -> Optional[ModuleContext]:
        try:
            data = path.read_bytes()
        except OSError:
            return None
        key = (str(path), hashlib.blake2b(data, digest_size=16).hexdigest())
        if key in self._by_path:
            self._by_path.move_to_end(key)
            return self._by_path[key]
        context = None
        if len(data) <= MAX_IMPORTED_MODULE_BYTES and b"\x00" not in data:
            try:
                text = data.decode(tokenize.detect_encoding(io.BytesIO(data).readline)[0])
                check_syntax_and_depth(text)
                context = ModuleContext.build(parse_module(text), dotted, str(path))
            except (SourceError, SyntaxError, RecursionError, UnicodeDecodeError, LookupError, ValueError):
                # An imported module that cannot be analysed is treated like a library: its calls are not followed.
                context = None
        self._by_path[key] = context
        while len(self._by_path) > MAX_CACHED_MODULES:
            self._by_path.popitem(last=False)
        return context
