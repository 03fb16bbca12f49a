"""Dotted module names from file paths, and the folders that absolute imports are searched in.

This module imports only the stdlib, so the engine's pre-filter and the result cache can use it without importing
libcst. `maskcheck.analysis.project` re-exports these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

# The packages that a folder lies in, outermost first, and the folder the outermost one sits in, by folder.
PackageMemo = Dict[Path, Tuple[Tuple[str, ...], Path]]


def package_of(name: Optional[str], path: str) -> Optional[str]:
    """Return the package that relative imports of a module start from, or None outside a package."""
    if name is None:
        return None
    if Path(path).name == "__init__.py":
        return name
    return name.rpartition(".")[0] or None


def module_name_for(path: str, packages: Optional[PackageMemo] = None) -> Tuple[Optional[str], Optional[Path]]:
    """Return the dotted module name of a file and the folder its top package sits in.

    The name is built from the folders above the file that hold an `__init__.py`. A file outside any package is a
    top-level module of its own folder. Returns (None, None) for a path that is not a file on disk. A caller that
    names many files of one run may pass `packages`, which keeps what each folder's walk found.
    """
    file = Path(path)
    if not file.is_file():
        return None, None
    file = file.resolve()
    names, root = _packages_of(file.parent, packages)
    parts: List[str] = list(names) if file.name == "__init__.py" else [*names, file.stem]
    return ".".join(parts) or None, root


def _packages_of(folder: Path, packages: Optional[PackageMemo]) -> Tuple[Tuple[str, ...], Path]:
    known = packages.get(folder) if packages is not None else None
    if known is not None:
        return known
    if (folder / "__init__.py").is_file() and folder.parent != folder:
        above, root = _packages_of(folder.parent, packages)
        found = (above + (folder.name,), root)
    else:
        found = ((), folder)
    if packages is not None:
        packages[folder] = found
    return found


def search_roots(path: str, root: Path) -> List[Path]:
    """Return the folders absolute imports of a file are searched in: its top package's folder, then its own."""
    roots = [root]
    own_folder = Path(path).resolve().parent
    if own_folder != root:
        roots.append(own_folder)
    return roots
