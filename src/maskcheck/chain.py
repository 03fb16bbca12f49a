"""The construction chain of a flagged mask, handed from the static analyser to the runtime verifier.

The analyser records the expressions it followed, from the mask's source value to the value that reaches the
attention call. The verifier replays them with real tensors; it never imports or runs the user's module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

# What the source value holds, by the axes of its shape.
SOURCE_EXAMPLE = "example"  # (N, L, S): one mask per example
SOURCE_EXAMPLE_HEAD = "example_head"  # (N, H, L, S): one mask per example and head
SOURCE_HEAD = "head"  # (H, L, S): one mask or bias per head, shared by all examples
SOURCE_PADDING = "padding"  # (N, S): key padding, True = padded
SOURCE_SHARED = "shared"  # (L, S): one mask for every example and head

# Size roles for names and expressions in the chain.
ROLE_BATCH = "N"
ROLE_HEADS = "H"
ROLE_QUERY = "L"
ROLE_KEY = "S"


@dataclass(frozen=True)
class ChainStep:
    """One expression on the way from the source to the consumer.

    `target` is the name the statement binds (None for the expression written inline in the consumer call).
    `code` is the exact source text of the expression.
    """

    target: Optional[str]
    code: str
    line: int
    col: int


@dataclass(frozen=True)
class ReplayChain:
    """Everything the verifier needs to rebuild the mask with synthetic tensors.

    `source_name` is the name (or expression text) whose value is the source; the first step reads it.
    `sizes` maps expression texts found in the steps (`num_heads`, `x.shape[0]`, `bsz`) to a size role.
    `consumer` is the qualified name of the attention call, e.g. `torch.nn.MultiheadAttention`.
    `flagged_step` indexes `steps`; `replacement` is the fixed text of that step's expression.
    `argument` is the consumer's parameter that receives the mask (`attn_mask`, `src_mask`, `mask`, `tgt_mask`,
    `memory_mask`), or None when unknown. The decoder layers and nn.Transformer take a square self-attention mask
    through `tgt_mask` and an (L, S) cross-attention mask through `memory_mask`, so the replay needs to know which.
    """

    source_name: str
    source_kind: str
    steps: Tuple[ChainStep, ...]
    sizes: Mapping[str, str]
    consumer: str
    batch_first: Optional[bool]
    flagged_step: int
    replacement: Optional[str]
    argument: Optional[str] = None
