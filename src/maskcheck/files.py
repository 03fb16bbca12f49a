"""Find the Python files to check and read them as Python would.

Discovery follows ruff's rule for excludes: a path named on the command line is always checked, and the default
directory rules and `--exclude` globs apply only to what is found inside named directories, unless
`force_exclude` is set. Every skipped path is logged at INFO level on the `maskcheck.files` logger with the reason.
"""

from __future__ import annotations

import errno
import fnmatch
import io
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

LOG = logging.getLogger(__name__)

STDIN_PATH = "-"

# Directory names skipped during discovery, with the reason that `-v` prints.
SKIPPED_DIRECTORY_NAMES = {
    "__pycache__": "bytecode cache",
    "build": "build output",
    "dist": "build output",
    "venv": "virtual environment",
    ".venv": "virtual environment",
}
SKIPPED_DIRECTORY_GLOBS = {"*.egg-info": "packaging metadata"}


@dataclass(frozen=True)
class SourceFile:
    """A file to check: `path` is what to open (`-` for standard input), `display` is what output shows."""

    path: str
    display: str


@dataclass(frozen=True)
class PathError:
    """A named path or a directory that could not be listed, with a one-line reason and next step."""

    display: str
    message: str


@dataclass
class Discovery:
    """The files that `discover` found, the paths it could not read, and the count of excluded .py files."""

    files: List[SourceFile] = field(default_factory=list)
    errors: List[PathError] = field(default_factory=list)
    # .py files that an exclude rule matched; skipped directories and non-Python files are not counted.
    skipped_files: int = 0


class ReadError(Exception):
    """A file that could not be read or decoded. The message is one line: the problem and the next step."""


class FileTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, over the {limit}-byte limit")
        self.size = size
        self.limit = limit


def discover(
    paths: Sequence[str],
    excludes: Sequence[str] = (),
    force_exclude: bool = False,
    stdin_display: str = STDIN_PATH,
) -> Discovery:
    """List the files to check under `paths`, in a stable order, without duplicates.

    Directories are walked in name order for `*.py` files. Symbolic links to directories are not followed, so a
    link cycle cannot loop; symbolic links to files are checked.
    """
    globs = [_normalise_glob(glob) for glob in excludes]
    result = Discovery()
    seen: set = set()

    def add(source: SourceFile) -> None:
        key = source.path if source.path == STDIN_PATH else os.path.abspath(source.path)
        if key not in seen:
            seen.add(key)
            result.files.append(source)

    for raw_path in paths:
        if raw_path == STDIN_PATH:
            add(SourceFile(STDIN_PATH, stdin_display))
            continue

        display = os.path.normpath(raw_path)
        if force_exclude:
            reason = _forced_exclude_reason(display, globs)
            if reason is not None:
                LOG.info("skipped %s: %s", display, reason)
                if not os.path.isdir(raw_path):
                    result.skipped_files += 1
                continue

        try:
            is_directory = stat.S_ISDIR(os.stat(raw_path).st_mode)
        except OSError as error:
            result.errors.append(PathError(display, _describe_os_error(error, "cannot open path")))
            continue

        if is_directory:
            _walk(raw_path, display, globs, result, add)
        else:
            # A file named on the command line is checked whatever its name or extension, as ruff does.
            add(SourceFile(raw_path, display))

    return result


def _walk(root: str, root_display: str, globs: Sequence[str], result: Discovery, add) -> None:
    # Depth-first in name order, each directory entered where its name sorts. An explicit stack of listings keeps
    # deep trees clear of the recursion limit.
    stack: List[Iterator[Tuple[os.DirEntry, str]]] = []
    listing = _list_directory(root, "", root_display, result)
    if listing is not None:
        stack.append(listing)

    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        entry, relative = item
        display = _join_display(root_display, relative)
        glob = _matching_glob(entry.name, relative, display, globs)

        if _is_directory(entry):
            if entry.is_symlink():
                LOG.info("skipped %s: symbolic link to a directory, not followed", display)
                continue
            reason = _skipped_directory_reason(entry.name, entry.path)
            if reason is None and glob is not None:
                reason = f"excluded by --exclude {glob!r}"
            if reason is not None:
                LOG.info("skipped %s: %s", display, reason)
                continue
            listing = _list_directory(entry.path, relative, display, result)
            if listing is not None:
                stack.append(listing)
            continue

        if not entry.name.endswith(".py"):
            LOG.info("skipped %s: not a .py file", display)
            continue
        if glob is not None:
            LOG.info("skipped %s: excluded by --exclude %r", display, glob)
            result.skipped_files += 1
            continue
        if not _is_file(entry):
            LOG.info("skipped %s: %s", display, _describe_non_file(entry))
            continue
        add(SourceFile(entry.path, display))


def _list_directory(
    path: str, relative: str, display: str, result: Discovery
) -> Optional[Iterator[Tuple[os.DirEntry, str]]]:
    """Return the directory's entries in name order with their paths below the root, or None after an error."""
    try:
        with os.scandir(path) as iterator:
            entries = sorted(iterator, key=lambda entry: entry.name)
    except OSError as error:
        result.errors.append(PathError(display, _describe_os_error(error, "cannot list directory")))
        return None
    return iter([(entry, f"{relative}/{entry.name}" if relative else entry.name) for entry in entries])


def _is_directory(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _describe_non_file(entry: os.DirEntry) -> str:
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "broken symbolic link"
    return "not a regular file"


def _skipped_directory_reason(name: str, path: str) -> Optional[str]:
    """Return why a directory found during the walk is skipped by default, or None to walk it."""
    if name in SKIPPED_DIRECTORY_NAMES:
        return SKIPPED_DIRECTORY_NAMES[name]
    for pattern, reason in SKIPPED_DIRECTORY_GLOBS.items():
        if fnmatch.fnmatchcase(name, pattern):
            return reason
    if name.startswith("."):
        return "hidden directory"
    if os.path.isfile(os.path.join(path, "pyvenv.cfg")):
        return "virtual environment (contains pyvenv.cfg)"
    return None


def _forced_exclude_reason(display: str, globs: Sequence[str]) -> Optional[str]:
    """Return why `--force-exclude` skips a named path, or None to check it.

    The walk's directory rules apply to the directories on the path below the current directory, and the globs to
    each part of the path and to the whole path.
    """
    relative = _relative_to_cwd(display)
    parts = [] if relative is None else relative.split(os.sep)
    for index, part in enumerate(parts[:-1]):
        reason = _skipped_directory_reason(part, os.path.join(*parts[: index + 1]))
        if reason is not None:
            return f"inside {os.path.join(*parts[: index + 1])} ({reason}) and --force-exclude is set"

    names = parts or [os.path.basename(display)]
    for index, name in enumerate(names):
        glob = _matching_glob(name, "/".join(names[: index + 1]), display, globs)
        if glob is not None:
            return f"excluded by --exclude {glob!r} and --force-exclude is set"
    return None


def _normalise_glob(glob: str) -> str:
    glob = glob.replace(os.sep, "/").rstrip("/")
    while glob.startswith("./"):
        glob = glob[2:]
    return glob


def _matching_glob(name: str, relative: str, display: str, globs: Sequence[str]) -> Optional[str]:
    """Return the first glob that matches the entry's name, its path below the named root, or its shown path."""
    if not globs:
        return None
    candidates = {name, relative, display.replace(os.sep, "/")}
    # Globs from a configuration file are made absolute, because they are relative to the file's folder.
    candidates.add(os.path.abspath(display).replace(os.sep, "/"))
    cwd_relative = _relative_to_cwd(display)
    if cwd_relative is not None:
        candidates.add(cwd_relative.replace(os.sep, "/"))
    for glob in globs:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, glob):
                return glob
    return None


def _relative_to_cwd(path: str) -> Optional[str]:
    """Return `path` relative to the current directory, or None when it lies outside it."""
    try:
        relative = os.path.relpath(os.path.abspath(path))
    except ValueError:
        # Windows: the path is on another drive.
        return None
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        return None
    return relative


def _join_display(root_display: str, relative: str) -> str:
    if not relative:
        return root_display
    if root_display == ".":
        return relative.replace("/", os.sep)
    return os.path.join(root_display, relative.replace("/", os.sep))


def _describe_os_error(error: OSError, action: str) -> str:
    if error.errno == errno.ENOENT:
        return "no such file or directory; check the path"
    if error.errno in (errno.EACCES, errno.EPERM):
        return f"{action}: permission denied; fix its permissions or leave it out"
    reason = error.strerror or type(error).__name__
    return f"{action}: {reason}; check the path"


def read_source(source: SourceFile, max_size: int, stdin: Optional[BinaryIO] = None) -> str:
    """Read and decode one file as Python reads source: PEP 263 coding comment, UTF-8 BOM, universal newlines.

    Raises FileTooLarge past `max_size` bytes and ReadError when the file cannot be opened, read or decoded.
    """
    if source.path == STDIN_PATH:
        data = _read_limited(stdin, max_size)
    else:
        data = _read_file(source.path, max_size)
    return decode_source(data)


def _read_file(path: str, max_size: int) -> bytes:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            # Opening a FIFO or a device would block or never end.
            raise ReadError("not a regular file (a pipe, socket or device); name a .py file instead")
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_size:
                raise FileTooLarge(size, max_size)
            return _read_limited(handle, max_size)
    except FileNotFoundError:
        raise ReadError("file not found (it may have been removed after maskcheck listed it); check the path") from None
    except IsADirectoryError:
        raise ReadError("is a directory, not a file; name the directory to check the .py files in it") from None
    except PermissionError:
        raise ReadError("cannot read file: permission denied; fix its permissions or leave it out") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ReadError(f"cannot read file: {reason}; check the file") from None


def _read_limited(handle: Optional[BinaryIO], max_size: int) -> bytes:
    # Reads one byte past the limit, so a pipe, or a file that grows after fstat, is rejected without reading it all.
    if handle is None:
        raise ReadError("standard input is closed; pipe the source into maskcheck or name the file instead")
    # Read in chunks, so a huge limit (meant as "no limit") does not allocate a buffer of that size up front.
    chunks = []
    total = 0
    while True:
        chunk = handle.read(min(_CHUNK_SIZE, max_size + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > max_size:
            raise FileTooLarge(total, max_size)
    return b"".join(chunks)


_CHUNK_SIZE = 1 << 20


def decode_source(data: bytes) -> str:
    """Decode source bytes the way the Python interpreter does, and translate newlines to `\\n` as flake8 does."""
    import tokenize  # Imported here: a run whose cached results have no findings decodes nothing.

    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as error:
        if not str(error.msg).startswith("invalid or missing encoding declaration"):
            raise ReadError(
                f"cannot decode: invalid coding comment ({error.msg}); fix the PEP 263 coding comment "
                "on line 1 or 2, or remove it and save the file as UTF-8"
            ) from None
        # Line 1 or 2 is not UTF-8 and no coding comment names another encoding: decoding as UTF-8 below
        # fails and names the byte and the line.
        encoding = "utf-8"

    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start : error.start + 1].hex()
        raise ReadError(
            f"cannot decode byte 0x{byte} on line {line} as {encoding}; save the file as {encoding} "
            "or declare its real encoding in a PEP 263 coding comment"
        ) from None

    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def split_lines(text: str) -> List[str]:
    """Split after each `\\n` only, as `readlines()` does; `str.splitlines` also splits on form feeds and others."""
    return io.StringIO(text, newline="\n").readlines()
