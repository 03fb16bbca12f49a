"""Read a source file for rewriting and write it back the way it was stored: atomically, with its mode, encoding,
byte order mark and newline style."""

from __future__ import annotations

import difflib
import io
import os
import stat
import tempfile
import tokenize
from dataclasses import dataclass

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


def write_atomically(path: str, data: bytes) -> None:
    """Replace the file's content with `data` through a temporary file in the same folder, keeping its mode.

    A symbolic link is resolved first, so the link stays a link and its target gets the new content. Raises
    OSError when the folder is not writable or the rename fails; the original file is then unchanged.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target) or os.curdir
    mode = stat.S_IMODE(os.stat(target).st_mode)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".maskcheck", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


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
