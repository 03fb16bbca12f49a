"""A cache of per-file results, so that a run over unchanged files skips the analysis.

An entry is valid only while all of these are unchanged:

- the file's bytes, its absolute path and the path shown in output;
- its dotted module name and the folder its top package sits in, which decide how its imports resolve;
- every project module that the analysis of the file looked up through `ProjectIndex.find`: the file each dotted
  name resolved to (or that none did) and that file's bytes. Findings can depend on imported modules, because
  calls into them are followed;
- maskcheck's version and the bytes of its own source files, the Python and libcst versions, and the run's
  settings (the caller passes everything that changes a result into `run_fingerprint`).

Entries live in `<project root>/.maskcheck_cache/v<FORMAT_VERSION>/`, one JSON file per checked file and setting
combination, so a changed file, or a new build of maskcheck, overwrites the file's entry instead of adding one. The
pre-filter's module index lives next to them, in `index-v<N>/` (`index_store`). Entries are written to a temporary
file and renamed into place, so a reader never sees half an entry. An entry that cannot be read or parsed is
ignored with an INFO log line (`-v`) and rewritten; it is never an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import stat
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from maskcheck import __version__
from maskcheck.analysis.module_paths import module_name_for

LOG = logging.getLogger("maskcheck.cache")

CACHE_DIR_NAME = ".maskcheck_cache"
# Raise when the entry layout changes, so that old entries are left alone instead of misread.
# Version 2 stores the dependencies grouped by their roots (see `_grouped_by_roots`).
# NOTE: the entry folders of older versions are never deleted. Remove `.maskcheck_cache` to reclaim their space.
FORMAT_VERSION = 2

# Files and folders that mark the top folder of a project; the cache goes there.
PROJECT_MARKERS = ("pyproject.toml", "setup.cfg", "setup.py", ".git", ".hg")

_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file marks a cache folder made by maskcheck. See https://bford.info/cachedir/\n"
)

# Sentinel for a lookup that `ResultCache._resolve` has not made yet. None cannot serve, because it is the result
# of a lookup that found no file.
_NOT_RESOLVED = object()

# (roots the lookup searched, dotted module name, file it resolved to or None, that file's digest or None)
Dependency = Tuple[Tuple[str, ...], str, Optional[str], Optional[str]]


def find_project_root(path: str, marked: Optional[Dict[Path, bool]] = None) -> Path:
    """Return the nearest folder at or above `path` that contains a project marker.

    Without a marker, return the folder that the top package of `path` sits in (the search root of its absolute
    imports, `module_name_for`), or the folder of `path` outside a package. So the files of one package share a
    cache folder: one per folder took the flake8 plugin 5 ms per file to open on a 50-file transformers sample.
    A caller that asks for many paths of one run may pass `marked`, which keeps whether each folder has a marker.
    """
    start = Path(os.path.abspath(path))
    folder = start if start.is_dir() else start.parent
    for candidate in (folder, *folder.parents):
        has_marker = marked.get(candidate) if marked is not None else None
        if has_marker is None:
            has_marker = any((candidate / marker).exists() for marker in PROJECT_MARKERS)
            if marked is not None:
                marked[candidate] = has_marker
        if has_marker:
            return candidate
    while (folder / "__init__.py").is_file() and folder.parent != folder:
        folder = folder.parent
    return folder


def default_cache_dir(paths: Sequence[str]) -> Optional[Path]:
    """Return `.maskcheck_cache` in the project root of the first path that exists, or None.

    A mistyped path (`nosuchdir/x.py`) is reported as missing and must not get a cache folder made for it.
    """
    for path in paths:
        if path != "-" and os.path.exists(path):
            return find_project_root(path) / CACHE_DIR_NAME
    return None


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """Return a digest of maskcheck's version and source files, and of the Python and libcst versions.

    The source files count because an editable install changes behaviour without changing `__version__`.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{__version__}\0{sys.version_info[:2]}\0{installed_libcst_version()}\0".encode())
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        try:
            digest.update(source.read_bytes())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()


def installed_libcst_version() -> str:
    """Return the version of the libcst installation that `import libcst` would load, without importing it.

    A run over cached files would otherwise spend 0.5-0.8 s importing libcst, or about 0.08 s in
    `importlib.metadata.version` (both measured on a busy 2-core machine). So the version is read from the name of
    the `libcst-VERSION.dist-info` folder next to the package. Returns "unknown" when libcst is missing or has no
    such folder, as for a source checkout on `PYTHONPATH`.
    """
    try:
        spec = importlib.util.find_spec("libcst")
    except (ImportError, ValueError):
        return "unknown"
    if spec is None or not spec.submodule_search_locations:
        return "unknown"
    site_folder = os.path.dirname(os.path.abspath(list(spec.submodule_search_locations)[0]))
    try:
        names = os.listdir(site_folder)
    except OSError:
        return "unknown"
    versions = sorted(
        name[len("libcst-") : -len(".dist-info")]
        for name in names
        if name.startswith("libcst-") and name.endswith(".dist-info")
    )
    return ",".join(versions) or "unknown"


def canonical(value: Any) -> Any:
    """Return `value` as JSON-ready data that is equal for equal settings, whatever the hash seed."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__type__": type(value).__qualname__,
            **{field.name: canonical(getattr(value, field.name)) for field in dataclasses.fields(value)},
        }
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(item) for item in value), key=repr)
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, dict):
        return {str(key): canonical(item) for key, item in sorted(value.items(), key=lambda pair: repr(pair[0]))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def settings_fingerprint(*parts: Any) -> str:
    """Return the digest of the cache format and every setting in `parts`; it names the entries."""
    return digest_bytes(json.dumps([FORMAT_VERSION, canonical(list(parts))], sort_keys=True).encode())


def run_fingerprint(*parts: Any) -> str:
    """Return the digest of the cache format, maskcheck's code and every setting in `parts`; entries must match it."""
    return digest_bytes(f"{settings_fingerprint(*parts)}\0{code_fingerprint()}".encode())


def resolve_module(roots: Iterable[str], dotted: str) -> Optional[str]:
    """Return the file that `ProjectIndex.find(dotted)` reads under `roots`, or None when there is none.

    NOTE: this repeats the search order of `ProjectIndex.find` (each root in turn, `name.py` before
    `name/__init__.py`). If that order changes, this function must change with it.
    """
    if not is_module_name(dotted):
        return None
    for root in roots:
        path = module_file_in(root, dotted)
        if path is not None:
            return path
    return None


def is_module_name(dotted: str) -> bool:
    """Return whether `resolve_module` can find anything for `dotted`: it is not empty and has no empty part."""
    return bool(dotted) and all(dotted.split("."))


def module_file_in(root: str, dotted: str) -> Optional[str]:
    """Return `root/a/b/__init__.py` or else `root/a/b.py` for `a.b` when it is a regular file, or None.

    A package comes first, as in Python's import system, when a folder contains both `b/__init__.py` and `b.py`.
    """
    # Plain strings and `os.stat`: a warm run resolves thousands of names, and pathlib was most of its time.
    relative = dotted.replace(".", os.sep)
    for candidate in (f"{root}{os.sep}{relative}{os.sep}__init__.py", f"{root}{os.sep}{relative}.py"):
        try:
            status = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(status.st_mode):
            return candidate
    return None


@dataclasses.dataclass(frozen=True)
class FileState:
    """What a cache entry is checked against: the file's identity, bytes and place in its package."""

    path: str
    display: str
    digest: str
    module_name: Optional[str]
    module_root: Optional[str]

    @classmethod
    def read(cls, path: str, display: str, max_size: int) -> Optional[Tuple["FileState", bytes]]:
        """Read the file and return its state with its bytes, or None when it is not cacheable.

        A file that cannot be read, or is larger than `max_size`, is not cached: the normal check reports it.
        """
        try:
            with open(path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size > max_size:
                    return None
                data = handle.read(max_size + 1)
        except OSError:
            return None
        if len(data) > max_size:
            return None
        name, root = module_name_for(path)
        state = cls(
            path=os.path.abspath(path),
            display=display,
            digest=digest_bytes(data),
            module_name=name,
            module_root=None if root is None else str(root),
        )
        return state, data


class ResultCache:
    """Entries for one run: one cache folder and one run fingerprint.

    Lookups remember file digests and module resolutions for the rest of the run, because many files import the
    same modules. A run that edits files while it runs may keep a stale entry, as other linters' caches do.
    """

    def __init__(self, directory: Path, fingerprint: str, entry_key: str = "") -> None:
        # `fingerprint` (settings and code) must match an entry; `entry_key` (settings only) names the entry files.
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.entry_key = entry_key
        self._entries = self.directory / f"v{FORMAT_VERSION}"
        self._digests: Dict[str, Optional[str]] = {}
        # `module_file_in` results by root and dotted name, and each root's entry names in lower case (None when
        # the root cannot be listed). Every file's lookups search its own folder as well as the project root, so
        # these are kept per root rather than per tuple of roots.
        self._resolved: Dict[str, Dict[str, Optional[str]]] = {}
        self._listings: Dict[str, Optional[FrozenSet[str]]] = {}
        self._write_failed = False

    # Reading

    def lookup(self, state: FileState) -> Optional[Dict[str, Any]]:
        """Return the stored result (a JSON object) for a file in `state`, or None when there is no valid entry."""
        entry_path = self._entry_path(state)
        try:
            raw = entry_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            # NotADirectoryError: a file where the cache folder or one of its subfolders belongs. Writing fails
            # there too, and `store` reports that once.
            return None
        except OSError as error:
            self.report_unusable(entry_path, f"cannot read it ({error.strerror or type(error).__name__})")
            return None
        try:
            entry = json.loads(raw)
            result, stale = self._check_entry(entry, state)
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as error:
            # Deeply nested JSON arrays make json.loads raise RecursionError.
            self.report_unusable(entry_path, f"invalid content ({type(error).__name__}: {error})")
            return None
        if stale is not None:
            LOG.debug("cache entry for %s is out of date: %s", state.display, stale)
            return None
        return result

    def report_unusable(self, entry_path: Path, reason: str) -> None:
        LOG.info("ignored cache entry %s: %s; the file is checked again and the entry rewritten", entry_path, reason)

    def _check_entry(self, entry: Any, state: FileState) -> Tuple[Any, Optional[str]]:
        """Return (result, None) for a valid entry, or (None, reason) when the entry is out of date.

        Raises ValueError, TypeError, KeyError or IndexError for an entry that is not one this code wrote.
        """
        if not isinstance(entry, dict):
            raise TypeError("not a JSON object")
        if entry["format"] != FORMAT_VERSION:
            raise ValueError(f"entry format {entry['format']!r}, expected {FORMAT_VERSION}")
        if entry["path"] != state.path or entry["display"] != state.display:
            raise ValueError("it belongs to another file")
        if entry["run"] != self.fingerprint:
            return None, "maskcheck, Python or libcst changed since it was written"
        if entry["digest"] != state.digest:
            return None, "the file changed"
        if entry["module"] != [state.module_name, state.module_root]:
            return None, "its package layout changed"
        stale = self._stale_dependency(entry["dependencies"])
        if stale is not None:
            return None, stale
        result = entry["result"]
        if not isinstance(result, dict):
            raise TypeError("the stored result is not a JSON object")
        return result, None

    def _stale_dependency(self, groups: Any) -> Optional[str]:
        """Return why one of an entry's recorded lookups gives another file or content now, or None when none does.

        `groups` is the entry's `dependencies` as `store` writes them. Raises TypeError or ValueError for data
        that this code did not write. An entry of a large project records hundreds of lookups (about 300 per file
        of a 50-file transformers sample), so a warm run there spends much of its time in this loop.
        """
        for group in groups:
            roots, lookups = group
            if not isinstance(roots, list) or not all(isinstance(root, str) for root in roots):
                raise TypeError("invalid dependency roots")
            if not isinstance(lookups, list):
                raise TypeError("invalid dependency lookups")
            for lookup in lookups:
                dotted, path, digest = lookup
                current = self._resolve(roots, str(dotted))
                if current != path:
                    return f"module {dotted} now resolves to {current or 'nothing'}"
                if current is not None and self.file_digest(current) != digest:
                    return f"imported module {current} changed"
        return None

    def _resolve(self, roots: Sequence[str], dotted: str) -> Optional[str]:
        """Return what `resolve_module(roots, dotted)` returns, from the results and folder listings of this run."""
        for root in roots:
            known = self._resolved.get(root)
            if known is None:
                known = self._resolved[root] = {}
            path = known.get(dotted, _NOT_RESOLVED)
            if path is _NOT_RESOLVED:
                path = known[dotted] = self._find_in(root, dotted)
            if path is not None:
                return path
        return None

    def _find_in(self, root: str, dotted: str) -> Optional[str]:
        """Return `module_file_in(root, dotted)`, without any `os.stat` when the listing of `root` rules it out.

        A warm run on a large project checks thousands of recorded lookups, most of them for libraries that are
        not in the file's own folder. One listing per folder rules those out without two `os.stat` calls each.
        The listing decides only for a first name part that is an ASCII identifier, compared in lower case, so
        that a case-insensitive file system (macOS, Windows) cannot find a file that the listing does not show.
        Any other name is left to `os.stat`.
        """
        first = dotted.partition(".")[0]
        if first.isascii() and first.isidentifier():
            names = self._listing(root)
            if names is not None:
                first = first.lower()
                if first not in names and f"{first}.py" not in names:
                    return None
        if not is_module_name(dotted):
            return None
        return module_file_in(root, dotted)

    def _listing(self, root: str) -> Optional[FrozenSet[str]]:
        if root not in self._listings:
            try:
                self._listings[root] = frozenset(name.lower() for name in os.listdir(root))
            except (OSError, ValueError):
                self._listings[root] = None
        return self._listings[root]

    def file_digest(self, path: str) -> Optional[str]:
        if path not in self._digests:
            try:
                with open(path, "rb") as handle:
                    self._digests[path] = digest_bytes(handle.read())
            except OSError:
                self._digests[path] = None
        return self._digests[path]

    # Writing

    def dependencies(self, lookups: Iterable[Tuple[Tuple[str, ...], str]]) -> List[Dependency]:
        """Turn the `(roots, dotted name)` lookups an analysis made into dependencies with file digests."""
        result = []
        for roots, dotted in sorted(set(lookups)):
            path = resolve_module(roots, dotted)
            digest = None
            if path is not None:
                try:
                    digest = digest_bytes(Path(path).read_bytes())
                except OSError:
                    digest = None
            result.append((roots, dotted, path, digest))
        return result

    def store(self, state: FileState, dependencies: Sequence[Dependency], result: Dict[str, Any]) -> None:
        """Write an entry atomically. A failure is logged once at INFO level and turns further writes off."""
        if self._write_failed:
            return
        entry = {
            "format": FORMAT_VERSION,
            "run": self.fingerprint,
            "path": state.path,
            "display": state.display,
            "digest": state.digest,
            "module": [state.module_name, state.module_root],
            "dependencies": _grouped_by_roots(dependencies),
            "result": result,
        }
        entry_path = self._entry_path(state)
        try:
            self._prepare_directory(entry_path.parent)
            _write_atomically(entry_path, json.dumps(entry, separators=(",", ":")).encode())
        except OSError as error:
            self._write_failed = True
            LOG.info(
                "cannot write the cache in %s (%s); this run's results are not cached, use --no-cache to skip it",
                self.directory,
                error.strerror or type(error).__name__,
            )

    def _entry_path(self, state: FileState) -> Path:
        # A file name that is not valid UTF-8 reaches Python with surrogate escapes, which encode back to its bytes.
        name = digest_bytes(f"{self.entry_key}\0{state.path}\0{state.display}".encode("utf-8", "surrogateescape"))
        return self._entries / name[:2] / f"{name[2:]}.json"

    def _prepare_directory(self, folder: Path) -> None:
        prepare_cache_folder(self.directory, folder)


def _grouped_by_roots(dependencies: Sequence[Dependency]) -> List[List[Any]]:
    """Return the dependencies as `[roots, [[dotted, path, digest], ...]]` groups, one for each tuple of roots.

    A file's lookups all search the same one or two folders: its top package's folder and its own. Writing the
    roots once per group instead of once per lookup halved the entries of a 50-file transformers sample (du -sh,
    3.2 MB to 1.7 MB), and smaller entries are faster to read.
    """
    groups: Dict[Tuple[str, ...], List[List[Any]]] = {}
    for roots, dotted, path, digest in dependencies:
        groups.setdefault(tuple(roots), []).append([dotted, path, digest])
    return [[list(roots), lookups] for roots, lookups in groups.items()]


def prepare_cache_folder(directory: Path, folder: Path) -> None:
    """Create `folder` inside the cache folder `directory`, and mark `directory` when this creates it.

    Raises OSError when a folder cannot be created or a marker file cannot be written.
    """
    if folder.is_dir():
        return
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        # Like ruff's cache: ignored by git without touching the project's .gitignore, and tagged for backups.
        _write_atomically(directory / ".gitignore", b"# Made by maskcheck.\n*\n")
        _write_atomically(directory / "CACHEDIR.TAG", _CACHEDIR_TAG.encode())
    folder.mkdir(parents=True, exist_ok=True)


def _write_atomically(path: Path, data: bytes) -> None:
    # Imported here: tempfile imports random and shutil, which a run that writes no entry does not need.
    import tempfile

    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
