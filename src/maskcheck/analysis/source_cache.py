"""A least-recently-used cache bounded by the total size of what it keeps, without heavy imports.

The imported modules of `project` (sized by their estimated memory) and the `ast` facts of `reach` (sized by their
source bytes) are both kept this way between the files of one process.
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


class SizeBoundedCache:
    """Values derived from module sources, keyed by path, dotted name and content digest.

    When the sizes of the kept entries add up to more than `max_size` (divided between the processes of
    `share_between`), the least recently used entries are dropped. The newest entry is always kept, however large.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._entries: "OrderedDict[Hashable, Tuple[Any, int]]" = OrderedDict()
        self._total_size = 0

    def get(self, key: Hashable) -> Tuple[bool, Any]:
        """Return (True, value) for a kept key, and (False, None) otherwise."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        self._entries.move_to_end(key)
        return True, entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keep `value` with its size, and drop old entries past the bound."""
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._total_size -= previous[1]
        self._entries[key] = (value, size)
        self._total_size += size
        self._shrink()

    def _shrink(self) -> None:
        while self._total_size > self.max_size // _SHARERS and len(self._entries) > 1:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._total_size -= dropped

    def resize(self, key: Hashable, size: int) -> None:
        """Give a kept entry a new size, and drop the least recently used entries past the bound."""
        entry = self._entries.get(key)
        if entry is None:
            return
        self._entries[key] = (entry[0], size)
        self._total_size += size - entry[1]
        self._shrink()

    def clear(self) -> None:
        self._entries.clear()
        self._total_size = 0
