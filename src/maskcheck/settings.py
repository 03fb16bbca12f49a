"""Analysis settings shared by the command line and the flake8 plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import FrozenSet

# Names that mean "number of attention heads" when they stand alone or end an attribute chain
# (`num_heads`, `self.cfg.num_attention_heads`).
DEFAULT_HEAD_COUNT_NAMES: FrozenSet[str] = frozenset(
    {
        "num_heads",
        "n_heads",
        "nhead",
        "nheads",
        "n_head",
        "head_num",
        "num_attention_heads",
        "heads",
    }
)

DEFAULT_MAX_CALL_DEPTH = 6

# 10 MiB: far above any hand-written module; larger .py files are generated data, skipped with a message.
DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What to analyse and how. Front ends build one from options; the engine only reads it."""

    extra_head_count_names: FrozenSet[str] = field(default_factory=frozenset)
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    # How many calls into the project's own functions and layers are followed from one another.
    max_call_depth: int = DEFAULT_MAX_CALL_DEPTH
    # Whether imports of the project's own modules are parsed and followed.
    follow_imports: bool = True

    @property
    def head_count_names(self) -> FrozenSet[str]:
        return DEFAULT_HEAD_COUNT_NAMES | self.extra_head_count_names
