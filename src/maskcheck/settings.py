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

# 2 MiB: above any hand-written module (torch 2.13's largest .py file is 1.4 MB); larger .py files are generated
# data. parsing takes about 400 bytes of memory per byte of source (a 10 MB file of assignments took 4.2 GB
# and 52 s on the 2-core test machine).
DEFAULT_MAX_FILE_SIZE = 2 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What to analyse and how. Front ends build one from options; the engine only reads it."""

    extra_head_count_names: FrozenSet[str] = field(default_factory=frozenset)
    # Dotted names of callables, such as `mylib.attention.fused_attention`, whose `attn_mask` argument is read
    # like nn.MultiheadAttention's: an (N*num_heads, L, S) mask in batch-major order. A name without a dot also
    # matches a method or attribute of that name.
    # Callables (qualified or bare names) that pass their `attn_mask` keyword to nn.MultiheadAttention; findings
    # through them are stated without the "less certain" wording of an unrecognised wrapper.
    extra_consumer_callables: FrozenSet[str] = field(default_factory=frozenset)
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    # How many calls into the project's own functions and layers are followed from one another.
    max_call_depth: int = DEFAULT_MAX_CALL_DEPTH
    # Whether imports of the project's own modules are parsed and followed.
    follow_imports: bool = True

    @property
    def head_count_names(self) -> FrozenSet[str]:
        return DEFAULT_HEAD_COUNT_NAMES | self.extra_head_count_names
