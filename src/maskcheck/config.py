"""Read `[tool.maskcheck]` from a pyproject.toml, or the top level of a file given with `--config`, and check it.

Every value is checked before any file is analysed. A problem raises ConfigError with one line that names the
file, the key, the value and what is accepted, and the command line exits with status 2.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

# The TOML parser is imported by `_read_toml`, so that a run that finds no pyproject.toml does not import it.
# difflib and json only format error messages, so the functions that build those messages import them.

PYPROJECT = "pyproject.toml"
TABLE = "tool.maskcheck"

# Each key with the type it takes, as the error message names it.
KEYS: Dict[str, str] = {
    "select": "a list of rule codes or prefixes, such as [\"MSK\"] or [\"MSK101\"]",
    "ignore": "a list of rule codes or prefixes, such as [\"MSK101\"]",
    "exclude": "a list of glob patterns, such as [\"generated/*\", \"*_pb2.py\"]",
    "extend-exclude": "a list of glob patterns, such as [\"legacy/*\"]",
    "per-file-ignores": "a table of glob patterns to lists of codes, such as {\"tests/*\" = [\"MSK101\"]}",
    "head-count-names": "a list of Python identifiers, such as [\"n_attn\", \"groups\"]",
    "consumer-callables": "a list of dotted names of callables, such as [\"mylib.attention.fused_attention\"]",
    "max-file-size": "a positive whole number of bytes, such as 2097152",
    "max-call-depth": "a whole number of calls, 0 or more, such as 6",
}


class ConfigError(Exception):
    """An invalid configuration file or value. The message is one line: where, what, and what is accepted."""


@dataclass(frozen=True)
class FileConfig:
    """The settings one configuration file sets. None means the file does not set the key.

    `path` is the file that was read (None when there is none). Globs in `exclude`, `extend-exclude` and
    `per-file-ignores` are relative to `base`, the folder that contains the file.
    """

    path: Optional[str] = None
    base: str = "."
    select: Optional[Tuple[str, ...]] = None
    ignore: Optional[Tuple[str, ...]] = None
    exclude: Optional[Tuple[str, ...]] = None
    extend_exclude: Tuple[str, ...] = ()
    per_file_ignores: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    head_count_names: Optional[FrozenSet[str]] = None
    consumer_callables: Optional[FrozenSet[str]] = None
    max_file_size: Optional[int] = None
    max_call_depth: Optional[int] = None
    values: Mapping[str, Any] = field(default_factory=dict, compare=False)


def find_pyproject(first_path: str) -> Optional[str]:
    """Return the nearest pyproject.toml with a `[tool.maskcheck]` table at or above `first_path`, or None.

    As in ruff, a pyproject.toml without the table is passed over, so a project can keep its maskcheck settings in
    the pyproject.toml of a parent folder. A file that cannot be read or parsed on the way raises ConfigError.
    """
    start = os.path.abspath(first_path if first_path != "-" else os.curdir)
    folder = start if os.path.isdir(start) else os.path.dirname(start)
    while True:
        candidate = os.path.join(folder, PYPROJECT)
        if os.path.isfile(candidate):
            tool = _read_toml(shown_path(candidate)).get("tool")
            if isinstance(tool, dict) and tool.get("maskcheck") is not None:
                return candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def shown_path(path: str) -> str:
    """Return `path` relative to the current directory when it lies inside it, for messages."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # Windows: another drive
        return path
    return path if relative.startswith(os.pardir) else relative


def load_config(path: str, known_codes: Iterable[str]) -> FileConfig:
    """Read and check the maskcheck settings of one file.

    The settings are the `[tool.maskcheck]` table when the file has one. Any other TOML file gives its top-level
    keys, so a dedicated `maskcheck.toml` needs no table header.
    """
    document = _read_toml(path)
    tool = document.get("tool")
    table = tool.get("maskcheck") if isinstance(tool, dict) else None
    if table is None:
        if os.path.basename(path) == PYPROJECT:
            raise ConfigError(f"{path}: has no [{TABLE}] table; add one or name another file with --config")
        table = document
        where = "top level"
    else:
        where = f"[{TABLE}]"
    if not isinstance(table, dict):
        raise ConfigError(
            f"{path}: [{TABLE}] must be a table, got {_show(table)}; write its settings under a [{TABLE}] header"
        )
    return _check_table(path, where, table, tuple(known_codes))


def _read_toml(path: str) -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.9 and 3.10 have no tomllib; pyproject.toml installs tomli there.
        import tomli as tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found; check the path given to --config") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"{path}: cannot read configuration file: {reason}; check the file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}; fix the file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: the file is not UTF-8; save it as UTF-8") from None


def _check_table(path: str, where: str, table: Dict[str, Any], known_codes: Tuple[str, ...]) -> FileConfig:
    for key in table:
        if key not in KEYS:
            import difflib

            close = difflib.get_close_matches(key.replace("_", "-"), KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{path}: unknown key {key!r} in {where} (value {_show(table[key])}){hint}; "
                f"accepted keys: {', '.join(sorted(KEYS))}"
            )

    checker = _Checker(path, where, known_codes)
    per_file = table.get("per-file-ignores")
    return FileConfig(
        path=path,
        base=os.path.dirname(os.path.abspath(path)),
        select=checker.codes("select", table.get("select")),
        ignore=checker.codes("ignore", table.get("ignore")),
        exclude=checker.globs("exclude", table.get("exclude")),
        extend_exclude=checker.globs("extend-exclude", table.get("extend-exclude")) or (),
        per_file_ignores=checker.per_file_ignores(per_file) if per_file is not None else (),
        head_count_names=checker.names("head-count-names", table.get("head-count-names"), dotted=False),
        consumer_callables=checker.names("consumer-callables", table.get("consumer-callables"), dotted=True),
        max_file_size=checker.size("max-file-size", table.get("max-file-size")),
        max_call_depth=checker.count("max-call-depth", table.get("max-call-depth")),
        values=dict(table),
    )


class _Checker:
    def __init__(self, path: str, where: str, known_codes: Tuple[str, ...]) -> None:
        self.path = path
        self.where = where
        self.known_codes = known_codes

    def fail(self, key: str, value: Any, problem: str = "") -> ConfigError:
        detail = f": {problem}" if problem else ""
        return ConfigError(
            f"{self.path}: invalid value for {key!r} in {self.where}: {_show(value)}{detail}; expected {KEYS[key]}"
        )

    def strings(self, key: str, value: Any) -> Optional[List[str]]:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(key, value)
        return [item.strip() for item in value]

    def codes(self, key: str, value: Any, shown: Optional[str] = None) -> Optional[Tuple[str, ...]]:
        items = self.strings(key, value)
        if items is None:
            return None
        for code in items:
            problem = unknown_code_problem(code, self.known_codes)
            if problem is not None:
                raise ConfigError(f"{self.path}: invalid value for {shown or repr(key)} in {self.where}: {problem}")
        return tuple(items)

    def globs(self, key: str, value: Any) -> Optional[Tuple[str, ...]]:
        items = self.strings(key, value)
        if items is None:
            return None
        for glob in items:
            if not glob:
                raise self.fail(key, value, "a pattern is empty")
        return tuple(items)

    def per_file_ignores(self, value: Any) -> Tuple[Tuple[str, Tuple[str, ...]], ...]:
        key = "per-file-ignores"
        if not isinstance(value, dict):
            raise self.fail(key, value)
        entries = []
        for glob, codes in value.items():
            if not glob.strip():
                raise self.fail(key, value, "a pattern is empty")
            if not isinstance(codes, list) or not all(isinstance(code, str) for code in codes):
                raise self.fail(key, value, f"the codes for {glob!r} are not a list of strings")
            checked = self.codes(key, codes, shown=f"'{key}' for {glob!r}") or ()
            entries.append((glob.strip(), checked))
        return tuple(entries)

    def names(self, key: str, value: Any, dotted: bool) -> Optional[FrozenSet[str]]:
        items = self.strings(key, value)
        if items is None:
            return None
        for name in items:
            if not is_name(name, dotted):
                kind = "a dotted name" if dotted else "a Python identifier"
                raise self.fail(key, value, f"{name!r} is not {kind}")
        return frozenset(items)

    def size(self, key: str, value: Any) -> Optional[int]:
        if value is None:
            return None
        # bool is a subclass of int, and `max-file-size = true` is a mistake, not 1 byte.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(key, value)
        return value

    def count(self, key: str, value: Any) -> Optional[int]:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(key, value)
        return value


def is_name(text: str, dotted: bool) -> bool:
    """Return whether `text` is an identifier, or with `dotted`, identifiers joined by dots."""
    parts = text.split(".") if dotted else [text]
    return bool(text) and all(part.isidentifier() for part in parts)


def parse_head_count_names(values: Sequence[str]) -> FrozenSet[str]:
    """Parse comma-separated identifiers; raise ValueError naming the first one that is not an identifier."""
    return _parse_names(values, dotted=False)


def parse_consumer_callables(values: Sequence[str]) -> FrozenSet[str]:
    """Parse comma-separated dotted names; raise ValueError naming the first one that is not a dotted name."""
    return _parse_names(values, dotted=True)


def parse_call_depth(values: Sequence[str]) -> int:
    """Parse one call depth, a whole number 0 or more; raise ValueError naming the value otherwise."""
    text = ",".join(values).strip()
    # ASCII digits only: int() also reads "1_000", "+3" and digits of other scripts.
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"invalid call depth {text!r}: give a whole number, 0 or more")
    return int(text)


def _parse_names(values: Sequence[str], dotted: bool) -> FrozenSet[str]:
    names = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if not is_name(name, dotted):
                kind = "a dotted name such as mylib.attention.fused_attention" if dotted else "a Python identifier"
                raise ValueError(f"{name!r} is not {kind}; give names separated by commas")
            names.add(name)
    return frozenset(names)


def unknown_code_problem(code: str, known_codes: Sequence[str]) -> Optional[str]:
    """Return a description of what is wrong with a code or prefix, or None when it matches a known code."""
    if code and any(candidate.startswith(code) for candidate in known_codes):
        return None
    hint = ""
    if code and any(candidate.startswith(code.upper()) for candidate in known_codes):
        hint = f" (did you mean {code.upper()}?)"
    return (
        f"unknown rule code {code!r}{hint}; known codes: {', '.join(sorted(known_codes))} "
        "(a prefix such as MSK or MSK1 matches every code that starts with it)"
    )


def _show(value: Any) -> str:
    """Format a TOML value for an error message, as close to TOML as JSON gets."""
    import json

    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)
