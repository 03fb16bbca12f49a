"""A store on disk of the pre-filter's module facts, so that a later run does not parse unchanged modules again.

`reach` builds a `ModuleFacts` for every project module that a checked file can reach, and keeps it for the rest
of the process. This store keeps the same facts between runs, in `<cache folder>/index-v<FORMAT_VERSION>/`, one
JSON file per (resolved path, dotted name), named by a digest of the two. The entry also records the content
digest and the code fingerprint it was built for. An entry for other content or another build is a miss, and the
new facts overwrite it, so the folder keeps at most one entry per module however often the modules change.

The facts depend only on the path, the dotted name, the content and the code fingerprint. `build_facts` and
`reach._parse_imported` read the module's bytes, its path and its dotted name (which decide where relative imports
point), and no setting. `follow_imports` only decides whether other modules are looked up at all. The code
fingerprint (`cache.code_fingerprint`) covers maskcheck's version and own sources, the major and minor Python version,
whose parser decides what parses, and the libcst version. So a new build of maskcheck never uses the facts of an old
one.

Entries are JSON, never pickle, because anyone who can write the project can write this folder too. Every value
is checked against the field types of `ModuleFacts` and `Unit` when it is read. An entry that a run reads and finds
corrupt, truncated, of another shape or written for another module is ignored with an INFO log line, and the new
facts are written in its place. It is never an error. A run that settles its files without that module's facts
leaves the entry as it is.

NOTE: entries of modules that were deleted or moved stay until the folder is removed, and so does the folder of
an older format (`index-v1/`, one entry per content and build). `--no-cache` removes neither.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from maskcheck.cache import _write_atomically, code_fingerprint, prepare_cache_folder
from maskcheck.reach import UNPARSABLE, ModuleFacts, ModuleKey

LOG = logging.getLogger(__name__)

# Raise when the entry layout changes. Changes to `ModuleFacts` or `Unit` change the code fingerprint anyway.
# Version 2 names an entry by the module's path and dotted name only, so that new content overwrites it.
FORMAT_VERSION = 2

# Names of the outcomes of `reach._parse_imported` in an entry. None means the analysis does not follow the module.
_OUTCOME_FACTS = "facts"
_OUTCOME_NOT_FOLLOWED = "not-followed"
_OUTCOME_UNPARSABLE = "unparsable"

# Fields that `ModuleFacts.__post_init__` computes from the others, so they are not stored.
_DERIVED_FIELDS = frozenset({"namespace"})

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


class _OutdatedEntry(Exception):
    """An entry of the right module that was written for other content or by another build. It is a miss, not
    damage."""


class IndexStore:
    """The stored facts of one cache folder, for the modules of one run.

    A failed write turns writing off for the rest of the process, with one INFO log line.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.fingerprint = code_fingerprint()
        self._entries = self.directory / f"index-v{FORMAT_VERSION}"
        self._write_failed = False

    def load(self, key: ModuleKey) -> Tuple[bool, object]:
        """Return (True, outcome) when a valid entry for `key` exists, else (False, None).

        The outcome is a `ModuleFacts`, `reach.UNPARSABLE`, or None for a module the analysis does not follow.
        """
        entry_path = self._entry_path(key)
        try:
            raw = entry_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            # NotADirectoryError: a file where the index folder or one of its subfolders belongs. Writing fails
            # there too, and `save` reports that once.
            return False, None
        except OSError as error:
            self._report_unusable(entry_path, f"cannot read it ({error.strerror or type(error).__name__})")
            return False, None
        try:
            return True, self._decode_entry(json.loads(raw), key)
        except _OutdatedEntry:
            return False, None
        except (ValueError, TypeError, KeyError, IndexError, RecursionError) as error:
            # json.JSONDecodeError and UnicodeDecodeError are ValueErrors. Deeply nested arrays raise RecursionError.
            self._report_unusable(entry_path, f"invalid content ({type(error).__name__}: {error})")
            return False, None

    def save(self, key: ModuleKey, outcome: object) -> None:
        """Write the entry for `key` atomically, unless an earlier write of this process failed."""
        if self._write_failed:
            return
        entry = self._encode_entry(key, outcome)
        entry_path = self._entry_path(key)
        try:
            prepare_cache_folder(self.directory, entry_path.parent)
            _write_atomically(entry_path, json.dumps(entry, separators=(",", ":"), sort_keys=True).encode())
        except OSError as error:
            self._write_failed = True
            LOG.info(
                "cannot write the module index entry %s (%s); imported modules are parsed again in the next run, "
                "delete the cache folder %s or use --no-cache to skip the cache",
                entry_path,
                error.strerror or type(error).__name__,
                self.directory,
            )

    def _entry_path(self, key: ModuleKey) -> Path:
        path, dotted, _ = key
        # A folder name that is not valid UTF-8 reaches Python with surrogate escapes, which encode back to its bytes.
        name = hashlib.blake2b(f"{path}\0{dotted}".encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return self._entries / name[:2] / f"{name[2:]}.json"

    def _report_unusable(self, entry_path: Path, reason: str) -> None:
        LOG.info(
            "ignored index entry %s: %s; the module is parsed again and its facts written in its place", entry_path, reason
        )

    def _encode_entry(self, key: ModuleKey, outcome: object) -> Dict[str, Any]:
        path, dotted, digest = key
        entry: Dict[str, Any] = {
            "format": FORMAT_VERSION,
            "code": self.fingerprint,
            "path": path,
            "module": dotted,
            "digest": digest,
        }
        if isinstance(outcome, ModuleFacts):
            entry["outcome"] = _OUTCOME_FACTS
            entry["facts"] = encode_facts(outcome)
        elif outcome is UNPARSABLE:
            entry["outcome"] = _OUTCOME_UNPARSABLE
        elif outcome is None:
            entry["outcome"] = _OUTCOME_NOT_FOLLOWED
        else:
            raise TypeError(f"cannot store {outcome!r}: expected ModuleFacts, UNPARSABLE or None")
        return entry

    def _decode_entry(self, entry: Any, key: ModuleKey) -> object:
        """Return the outcome an entry stores for `key`.

        Raises _OutdatedEntry for an entry of the module of `key` written for other content or by another build.
        Raises ValueError, TypeError, KeyError or IndexError for an entry that this code did not write for the module.
        """
        if type(entry) is not dict:
            raise TypeError("not a JSON object")
        if entry["format"] != FORMAT_VERSION:
            raise ValueError(f"entry format {entry['format']!r}, expected {FORMAT_VERSION}")
        path, dotted, digest = key
        if entry["path"] != path or entry["module"] != dotted:
            raise ValueError("it belongs to another module")
        if type(entry["code"]) is not str or type(entry["digest"]) is not str:
            raise TypeError("the code fingerprint and the content digest must be strings")
        if entry["code"] != self.fingerprint or entry["digest"] != digest:
            raise _OutdatedEntry()
        outcome = entry["outcome"]
        if outcome == _OUTCOME_NOT_FOLLOWED:
            return None
        if outcome == _OUTCOME_UNPARSABLE:
            return UNPARSABLE
        if outcome != _OUTCOME_FACTS:
            raise ValueError(f"unknown outcome {outcome!r}")
        facts = decode_facts(entry["facts"])
        if facts.key != key or facts.path != path:
            raise ValueError("its facts belong to another module or content")
        return facts


# -------------------------------------------------------------------------------------------------------------------
# Facts as JSON


def encode_facts(facts: ModuleFacts) -> Dict[str, Any]:
    """Return the facts as JSON data: sets become sorted lists, tuples become lists."""
    return _FACTS_CODEC[0](facts)


def decode_facts(data: Any) -> ModuleFacts:
    """Rebuild facts from `encode_facts` data, checking every value's type.

    Raises TypeError or ValueError when the data has another shape, or when a unit index is out of range.
    """
    facts = _FACTS_CODEC[1](data)
    if not facts.units:
        raise ValueError("no units, not even the top-level one")
    unit_count = len(facts.units)
    for table in (facts.functions, facts.classes):
        for indices in table.values():
            if any(index < 0 or index >= unit_count for index in indices):
                raise ValueError(f"unit index out of range 0-{unit_count - 1}")
    return facts


def _codec(hint: Any) -> Tuple[Encoder, Decoder]:
    """Return an encoder to JSON data and a checking decoder from it, for one field type of the facts.

    Raises TypeError at import time for a type that has no JSON form here, so a new field of `ModuleFacts` or
    `Unit` of such a type fails every test instead of being lost.
    """
    if hint is str:
        return _identity, _DECODE_STR
    if hint in (bool, int):
        return _identity, _checked_scalar(hint)
    if dataclasses.is_dataclass(hint):
        return _dataclass_codec(hint)
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin is typing.Union and len(arguments) == 2 and type(None) in arguments:
        return _optional_codec(_codec(next(argument for argument in arguments if argument is not type(None))))
    if origin is list:
        return _list_codec(_codec(arguments[0]), list)
    if origin is set or origin is frozenset:
        return _set_codec(_codec(arguments[0]), origin)
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        return _list_codec(_codec(arguments[0]), tuple, non_empty=True)
    if origin is tuple:
        return _fixed_tuple_codec([_codec(argument) for argument in arguments])
    if origin is dict and arguments[0] is str:
        return _dict_codec(_codec(arguments[1]))
    raise TypeError(f"no JSON form for the facts field type {hint!r}")


def _identity(value: Any) -> Any:
    return value


def _checked_scalar(kind: type) -> Decoder:
    def decode(value: Any) -> Any:
        # `type(...) is` keeps JSON's true and false out of int fields.
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    return decode


_DECODE_STR = _checked_scalar(str)


def _checked_strings(value: Any) -> list:
    """Return a JSON array of strings unchanged, after checking it without one function call per string."""
    for element in _require_list(value):
        if type(element) is not str:
            raise TypeError(f"expected str, got {type(element).__name__}")
    return value


def _require_list(value: Any) -> list:
    if type(value) is not list:
        raise TypeError(f"expected a JSON array, got {type(value).__name__}")
    return value


# `json.dumps` writes tuples as arrays, so a container whose items need no encoding is written as it is. This
# saves most of the time of encoding facts.


def _optional_codec(inner: Tuple[Encoder, Decoder]) -> Tuple[Encoder, Decoder]:
    encode_inner, decode_inner = inner

    def encode(value: Any) -> Any:
        return None if value is None else encode_inner(value)

    def decode(value: Any) -> Any:
        return None if value is None else decode_inner(value)

    return (_identity if encode_inner is _identity else encode), decode


def _list_codec(item: Tuple[Encoder, Decoder], kind: type, non_empty: bool = False) -> Tuple[Encoder, Decoder]:
    """Return the codec of a list, or of a tuple of any length, which is stored as a JSON array."""
    encode_item, decode_item = item
    strings = decode_item is _DECODE_STR

    def encode(value: Any) -> Any:
        return [encode_item(element) for element in value]

    def decode(value: Any) -> Any:
        # Every variable-length tuple of the facts is a name chain, and `reach` reads the first name of each.
        if non_empty and not _require_list(value):
            raise ValueError("empty name chain")
        if strings:
            return kind(_checked_strings(value))
        return kind(decode_item(element) for element in _require_list(value))

    return (_identity if encode_item is _identity else encode), decode


def _set_codec(item: Tuple[Encoder, Decoder], kind: type) -> Tuple[Encoder, Decoder]:
    encode_item, decode_item = item
    strings = decode_item is _DECODE_STR

    def encode(value: Any) -> Any:
        return sorted(encode_item(element) for element in value)

    def decode(value: Any) -> Any:
        if strings:
            return kind(_checked_strings(value))
        return kind(decode_item(element) for element in _require_list(value))

    # Sorted, so that equal facts give equal bytes whatever the hash seed.
    return (sorted if encode_item is _identity else encode), decode


def _fixed_tuple_codec(items: typing.List[Tuple[Encoder, Decoder]]) -> Tuple[Encoder, Decoder]:
    def encode(value: Any) -> Any:
        return [encode_item(element) for (encode_item, _), element in zip(items, value)]

    def decode(value: Any) -> Any:
        if len(_require_list(value)) != len(items):
            raise ValueError(f"expected {len(items)} items, got {len(value)}")
        return tuple(decode_item(element) for (_, decode_item), element in zip(items, value))

    return (_identity if all(encode_item is _identity for encode_item, _ in items) else encode), decode


def _dict_codec(item: Tuple[Encoder, Decoder]) -> Tuple[Encoder, Decoder]:
    encode_item, decode_item = item

    def encode(value: Any) -> Any:
        return {key: encode_item(element) for key, element in value.items()}

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise TypeError(f"expected a JSON object, got {type(value).__name__}")
        return {key: decode_item(element) for key, element in value.items()}

    return (_identity if encode_item is _identity else encode), decode


def _dataclass_codec(kind: type) -> Tuple[Encoder, Decoder]:
    """Return the codec of a dataclass, stored as a JSON object with one member per stored field."""
    hints = typing.get_type_hints(kind)
    stored = [field.name for field in dataclasses.fields(kind) if field.name not in _DERIVED_FIELDS]
    codecs = {name: _codec(hints[name]) for name in stored}

    def encode(value: Any) -> Any:
        return {name: codecs[name][0](getattr(value, name)) for name in stored}

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise TypeError(f"expected a JSON object for {kind.__name__}, got {type(value).__name__}")
        if value.keys() != codecs.keys():
            raise ValueError(f"{kind.__name__} fields differ: {sorted(value.keys() ^ codecs.keys())}")
        return kind(**{name: codecs[name][1](value[name]) for name in stored})

    return encode, decode


# Built from the field types, so the units (`Unit`) are covered through `ModuleFacts.units`.
_FACTS_CODEC = _codec(ModuleFacts)
