"""The flake8 plugin's result cache, so that flake8 runs over unchanged files skip the analysis.

The plugin uses the command line's cache folder (`.maskcheck_cache` in the project root, see `maskcheck.cache`)
and its module index, but its entries are named and fingerprinted with `NAMESPACE` as well as its settings. So
neither front end reads or overwrites the other's entries.

An entry is keyed on the text flake8 gave the plugin, not on the file on disk, because editors pass unsaved text on
standard input under the file's name (`--stdin-display-name`). The entry stays valid only while all of these are
unchanged: that text, the file's absolute path and the name flake8 shows, its module name and package root, and
the project modules that the analysis and the pre-filter looked up. maskcheck's code and the plugin's settings
must not change either. Text whose name is `stdin` or `-`, or is not an existing file, is never cached, because it
has no file on disk whose path and package could name and check its entry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from maskcheck.analysis.module_paths import PackageMemo, module_name_for
from maskcheck.cache import (
    CACHE_DIR_NAME,
    FileState,
    ResultCache,
    digest_bytes,
    find_project_root,
    run_fingerprint,
    settings_fingerprint,
)
from maskcheck.settings import Settings

if TYPE_CHECKING:
    from maskcheck.index_store import IndexStore

# Part of every fingerprint, so the plugin's entries never match the command line's.
NAMESPACE = "flake8"

# The names flake8 gives text read from standard input when `--stdin-display-name` is not set ("stdin"), or
# that a caller may pass for it ("-").
STDIN_NAMES = frozenset({"stdin", "-"})

# One finding as the plugin yields it: line (1-based), column (0-based, as flake8 counts) and "CODE message".
PluginFinding = Tuple[int, int, str]


@dataclass(frozen=True)
class PluginResult:
    """The output of `MaskcheckPlugin.run` for one text: its findings, or the SourceError message behind MSK001."""

    findings: Tuple[PluginFinding, ...] = ()
    source_error: Optional[str] = None


def encode_result(result: PluginResult) -> Dict[str, Any]:
    return {
        "findings": [[line, column, text] for line, column, text in result.findings],
        "source_error": result.source_error,
    }


def decode_result(data: Dict[str, Any]) -> PluginResult:
    """Rebuild a stored result. Raises ValueError or TypeError for data that `encode_result` did not write."""
    if set(data) != {"findings", "source_error"}:
        raise ValueError(f"unexpected fields {sorted(data)}")
    source_error = data["source_error"]
    if source_error is not None and type(source_error) is not str:
        raise TypeError("source_error is neither null nor a string")
    findings_data = data["findings"]
    if type(findings_data) is not list:
        raise TypeError("findings is not a list")
    if source_error is not None and findings_data:
        raise ValueError("an entry with a source error has findings")

    findings = []
    for item in findings_data:
        # `type(...) is int` rejects JSON true and false, which `isinstance` would accept as ints.
        if type(item) is not list or len(item) != 3:
            raise TypeError(f"finding {item!r} is not a [line, column, text] list")
        line, column, text = item
        if type(line) is not int or type(column) is not int or type(text) is not str:
            raise TypeError(f"finding {item!r} does not have an integer line and column and a string text")
        # TODO: a message that names a module under a folder whose name is not valid UTF-8 is stored but rejected
        # here, so that file is analysed again on every run.
        if line < 1 or column < 0 or not _FINDING_TEXT.fullmatch(text) or not _printable(text):
            raise ValueError(f"finding {item!r} has an invalid line, column or text")
        findings.append((line, column, text))
    if source_error is not None and ("\n" in source_error or not _printable(source_error)):
        raise ValueError("source_error is not one printable line")
    return PluginResult(tuple(findings), source_error)


# The text of a finding as `MaskcheckPlugin.run` yields it: a code, one space, a one-line message. flake8 splits it
# at the first space and fails on a text without one.
_FINDING_TEXT = re.compile(r"MSK[0-9]{3} [^\n\r]+")


def _printable(text: str) -> bool:
    """Return True when flake8 can write `text` as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text_state(filename: str, source: str, packages: Optional[PackageMemo] = None) -> Optional[FileState]:
    """Return the cache state of `source`, shown by flake8 as `filename`, or None when it must not be cached.

    This is `FileState.read` for text that flake8 has already read. The digest is taken over the text, which
    differs from the file's bytes on disk when an editor passes unsaved text.
    """
    if filename in STDIN_NAMES or not os.path.isfile(filename):
        return None
    # surrogatepass: flake8 may hand over text with lone surrogates, which strict UTF-8 cannot encode.
    digest = digest_bytes(source.encode("utf-8", "surrogatepass"))
    name, root = module_name_for(filename, packages)
    return FileState(
        path=os.path.abspath(filename),
        display=filename,
        digest=digest,
        module_name=name,
        module_root=None if root is None else str(root),
    )


class PluginCaches:
    """The result caches of one flake8 process, one per cache folder, each made on first use.

    flake8 runs the plugin in each worker process of `--jobs`, and each process makes its own caches. Entries are
    written atomically, so processes that check the same file at once leave one whole entry.
    """

    def __init__(self, settings: Settings, disable_noqa: bool, directory: Optional[str] = None) -> None:
        # `directory` overrides `.maskcheck_cache` in each file's project root.
        self.settings = settings
        self.disable_noqa = disable_noqa
        self.directory = None if directory is None else Path(os.path.abspath(directory))
        # Computed on first use: `run_fingerprint` reads every maskcheck source file.
        self._fingerprints: Optional[Tuple[str, str]] = None
        self._folder_directories: Dict[str, Path] = {}
        # What the folders of this run hold, for the project root and module name of each file.
        self._marked: Dict[Path, bool] = {}
        self._packages: PackageMemo = {}
        self._caches: Dict[Path, "_FolderCache"] = {}

    def check(self, filename: str, source: str, analyse: Callable[[], PluginResult]) -> PluginResult:
        """Return the result for `source`, from its entry when one is valid, else from `analyse()`, and store it.

        Exceptions from `analyse` other than the SourceError it turns into a result propagate, and nothing is
        stored for them.
        """
        state = text_state(filename, source, self._packages)
        if state is None:
            return analyse()
        return self._cache_for(state.path).check(state, analyse)

    def _cache_for(self, path: str) -> "_FolderCache":
        directory = self.directory
        if directory is None:
            # Files of one folder share a project root, so the search for its markers runs once per folder.
            folder = os.path.dirname(path)
            if folder not in self._folder_directories:
                self._folder_directories[folder] = find_project_root(path, self._marked) / CACHE_DIR_NAME
            directory = self._folder_directories[folder]
        if directory not in self._caches:
            if self._fingerprints is None:
                self._fingerprints = (
                    run_fingerprint(NAMESPACE, self.settings, self.disable_noqa),
                    settings_fingerprint(NAMESPACE, self.settings, self.disable_noqa),
                )
            fingerprint, entry_key = self._fingerprints
            self._caches[directory] = _FolderCache(directory, fingerprint, entry_key)
        return self._caches[directory]


class _FolderCache:
    """The plugin's entries and the module index in one cache folder.

    The module index, and the runner's recording of lookups, are imported only when a file has no valid entry: a
    flake8 run over unchanged files never needs them, and importing them took 14 ms (`python -X importtime`).
    """

    def __init__(self, directory: Path, fingerprint: str, entry_key: str) -> None:
        self.directory = directory
        self.results = ResultCache(directory, fingerprint, entry_key)
        self._index_store: Optional["IndexStore"] = None

    @property
    def index_store(self) -> "IndexStore":
        if self._index_store is None:
            from maskcheck.index_store import IndexStore

            self._index_store = IndexStore(self.directory)
        return self._index_store

    def check(self, state: FileState, analyse: Callable[[], PluginResult]) -> PluginResult:
        stored = self.results.lookup(state)
        if stored is not None:
            try:
                return decode_result(stored)
            except (ValueError, TypeError) as error:
                # NOTE: `_entry_path` is private to ResultCache, but the command line's runner reads it too.
                self.results.report_unusable(self.results._entry_path(state), f"invalid result ({error})")

        # The same recording as the command line's runner: every project module that the pre-filter and the
        # analysis look up becomes a dependency, so a change to one of them invalidates the entry.
        from maskcheck.runner import _index_store_in_use, _recorded_lookups

        with _recorded_lookups(True) as lookups, _index_store_in_use(self.index_store):
            result = analyse()
        # NOTE: an imported module edited while this file is analysed is stored with its new digest next to a
        # result from its old text, as in the command line's cache. The next edit of either file repairs it.
        self.results.store(state, self.results.dependencies(lookups), encode_result(result))
        return result
