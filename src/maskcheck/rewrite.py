"""Read a source file for rewriting and write it back the way it was stored: atomically, with its mode, owner,
encoding, byte order mark and newline style."""

from __future__ import annotations

import difflib
import io
import os
import stat
import tempfile
import tokenize
from dataclasses import dataclass
from typing import Sequence

from maskcheck.files import ReadError, decode_source

UTF8_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class StoredSource:
    """A source file's bytes and how to write a new version back: encoding, byte order mark, newline style."""

    path: str
    data: bytes
    encoding: str
    bom: bool
    # The file's text with its own newlines (`\r\n` stays `\r\n`) and without the byte order mark.
    text: str
    newline: str

    @property
    def normalised(self) -> str:
        """The text with newlines translated to `\\n`, as the analysis reads it."""
        return self.text.replace("\r\n", "\n").replace("\r", "\n")

    def encode(self, text: str) -> bytes:
        data = text.encode(self.encoding)
        return UTF8_BOM + data if self.bom else data


def read_stored(path: str) -> StoredSource:
    """Read a file for rewriting. Raises ReadError when it cannot be read or decoded."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ReadError(f"cannot read file: {reason}; check the file") from None
    # decode_source reports a bad coding comment or undecodable bytes with the same message as the analysis.
    decode_source(data)
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    bom = data.startswith(UTF8_BOM)
    if bom:
        encoding = "utf-8"
    text = data[len(UTF8_BOM) :].decode(encoding) if bom else data.decode(encoding)
    return StoredSource(path, data, encoding, bom, text, _newline_style(text))


def _newline_style(text: str) -> str:
    """Return the file's first newline sequence, which inserted lines use; `\\n` for a file without one."""
    for index, char in enumerate(text):
        if char == "\r":
            return "\r\n" if text[index + 1 : index + 2] == "\n" else "\r"
        if char == "\n":
            return "\n"
    return "\n"


class NotWritable(OSError):
    """The file cannot be rewritten by this user: it is read-only, or its folder does not accept the temporary file.

    The message gives the reason and the next step. The file is unchanged.
    """


class InterruptedRewrite(KeyboardInterrupt):
    """An interrupt (Ctrl-C) that arrived after some files were rewritten.

    `rewritten` lists the display paths of the files that were completely rewritten and checked, `unchecked` those
    that were completely rewritten but not analysed again, and `action` is what happened to them ("fixed"). No file
    is ever half-written, because `write_atomically` replaces a file with a single rename.
    """

    def __init__(self, rewritten: Sequence[str], unchecked: Sequence[str] = (), action: str = "fixed") -> None:
        super().__init__()
        self.rewritten = tuple(rewritten)
        self.unchecked = tuple(unchecked)
        self.action = action


def write_atomically(path: str, data: bytes) -> None:
    """Replace the file's content with `data` through a temporary file in the same folder, keeping its mode and owner.

    A symbolic link is resolved first, so the link stays a link and its target gets the new content. The rename
    would replace a read-only file too, so the file's own write permission is checked first.
    Raises NotWritable when this user may not write the file or create a file in its folder, and OSError when the
    write or the rename fails. The original file is then unchanged.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target) or os.curdir
    if not os.access(target, os.W_OK):
        raise NotWritable(
            "the file is read-only; give this user write permission (for example chmod u+w) or edit it by hand"
        )
    original = os.stat(target)
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".maskcheck", dir=folder
        )
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise NotWritable(
            f"the temporary file could not be created in {folder} ({reason}); maskcheck writes the new version "
            "next to the file and renames it over the file, so make the folder writable or edit the file by hand"
        ) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _copy_owner(original, temporary)
        # chmod comes after chown, because chown clears the set-user-ID and set-group-ID bits.
        os.chmod(temporary, stat.S_IMODE(original.st_mode))
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _copy_owner(original: os.stat_result, temporary: str) -> None:
    """Give the temporary file the original's owner and group, as far as this process may set them.

    Only root may give a file to another user, and another user may only set a group they belong to. So when a
    user rewrites a file that belongs to someone else and is writable for them (mode 666, or a shared group), the
    new file belongs to that user. Its content and mode are still kept.
    """
    current = os.stat(temporary)
    if (current.st_uid, current.st_gid) == (original.st_uid, original.st_gid):
        return
    try:
        os.chown(temporary, original.st_uid, original.st_gid)
        return
    except PermissionError:
        pass
    if current.st_gid != original.st_gid:
        try:
            os.chown(temporary, -1, original.st_gid)
        except PermissionError:
            pass


def unified_diff(path: str, old_text: str, new_text: str) -> str:
    """Return a unified diff from `a/path` to `b/path` with newlines shown as `\\n`, or '' when equal."""
    old_lines = normalise_newlines(old_text).splitlines(keepends=True)
    new_lines = normalise_newlines(new_text).splitlines(keepends=True)
    lines = []
    display = path.replace(os.sep, "/")
    for line in difflib.unified_diff(old_lines, new_lines, f"a/{display}", f"b/{display}", n=1):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")
