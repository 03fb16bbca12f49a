"""Dotted module names from file paths, and the folders that absolute imports are searched in.

This module imports only the stdlib, so the engine's pre-filter and the result cache can use it without importing
libcst. `maskcheck.analysis.project` re-exports these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple


def package_of(name: Optional[str], path: str) -> Optional[str]:
    """Return the package that relative imports of a module start from, or None outside a package."""
    if name is None:
        return None
    if Path(path).name == "__init__.py":
        return name
    return name.rpartition(".")[0] or None


def module_name_for(path: str) -> Tuple[Optional[str], Optional[Path]]:
    """Return the dotted module name of a file and the folder its top package sits in.

    The name is built from the folders above the file that hold an `__init__.py`. A file outside any package is a
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


def search_roots(path: str, root: Path) -> List[Path]:
    """Return the folders absolute imports of a file are searched in: its top package's folder, then its own."""
    roots = [root]
    own_folder = Path(path).resolve().parent
    if own_folder != root:
        roots.append(own_folder)
    return roots
