"""A least-recently-used cache bounded by the source size of the modules it keeps, without heavy imports.

The parsed libcst trees of `project` and the `ast` facts of `reach` are both kept this way between the files of
one process.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Tuple


# The number of processes that share the bound of every such cache: worker processes divide the budget between them,
# so the total stays the same whatever `--jobs` is (`share_between`).
_SHARERS = 1


def share_between(processes: int) -> None:
    """Divide the bound of every cache of this process by `processes`, which check files at the same time."""
    global _SHARERS
    _SHARERS = max(1, processes)


def sharers() -> int:
    """Return the number of processes that share each cache bound."""
    return _SHARERS


class SourceSizeCache:
    """Values derived from module sources, keyed by path, dotted name and content digest.

    When the sources of the kept entries add up to more than `max_source_bytes` (divided between the processes of
    `share_between`), the least recently used entries are dropped. The newest entry is always kept, however large.
    """

    def __init__(self, max_source_bytes: int) -> None:
        self.max_source_bytes = max_source_bytes
        self._entries: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self._source_bytes = 0

    def get(self, key: Hashable) -> Tuple[bool, Any]:
        """Return (True, value) for a kept key, and (False, None) otherwise."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        self._entries.move_to_end(key)
        return True, entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep `value`, derived from `size` bytes of source, and drop old entries past the bound."""
        self._entries[key] = (value, size)
        self._source_bytes += size
        while self._source_bytes > self.max_source_bytes // _SHARERS and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._source_bytes -= dropped

    def clear(self) -> None:
        self._entries.clear()
        self._source_bytes = 0
