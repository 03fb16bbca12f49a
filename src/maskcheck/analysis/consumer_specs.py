"""The attention calls that consume a 3-D (N*num_heads, L, S) mask, as plain data: names and argument positions.

This module imports only the stdlib, so the engine's pre-filter can read it without importing libcst, and
`maskcheck.analysis.consumers` re-exports every name defined here. Argument positions are those of PyTorch 2.13's
`forward` signatures (torch/nn/modules/activation.py and torch/nn/modules/transformer.py) and of
`torch.nn.functional.multi_head_attention_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class LayerSpec:
    """The arguments of a layer class: its head-count constructor argument and its mask arguments in `forward`."""

    head_argument: Optional[Tuple[str, int]]
    mask_arguments: Tuple[Tuple[str, int], ...]
    # TransformerEncoder/Decoder take a layer whose head count they inherit.
    layer_argument: Optional[Tuple[str, int]] = None


MULTIHEAD_ATTENTION = "torch.nn.MultiheadAttention"
FUNCTIONAL_MHA = "torch.nn.functional.multi_head_attention_forward"
UNKNOWN_CONSUMER = "unknown"
# A callable named in the `consumer-callables` setting: known to pass `attn_mask` on to nn.MultiheadAttention.
CONFIGURED_CONSUMER = "configured"

LAYER_SPECS = {
    MULTIHEAD_ATTENTION: LayerSpec(("num_heads", 1), (("attn_mask", 5),)),
    "torch.nn.Transformer": LayerSpec(("nhead", 1), (("src_mask", 2), ("tgt_mask", 3), ("memory_mask", 4))),
    "torch.nn.TransformerEncoder": LayerSpec(None, (("mask", 1),), ("encoder_layer", 0)),
    "torch.nn.TransformerEncoderLayer": LayerSpec(("nhead", 1), (("src_mask", 1),)),
    "torch.nn.TransformerDecoder": LayerSpec(None, (("tgt_mask", 2), ("memory_mask", 3)), ("decoder_layer", 0)),
    "torch.nn.TransformerDecoderLayer": LayerSpec(("nhead", 1), (("tgt_mask", 2), ("memory_mask", 3))),
}

CONTAINERS = frozenset({"torch.nn.ModuleList", "torch.nn.Sequential", "torch.nn.ModuleDict"})

# multi_head_attention_forward(query, key, value, embed_dim_to_check, num_heads, ..., key_padding_mask,
# need_weights, attn_mask, ...): attn_mask is the 17th positional parameter.
FUNCTIONAL_HEAD_ARGUMENT = ("num_heads", 4)
FUNCTIONAL_MASK_ARGUMENT = ("attn_mask", 16)

# Any call that passes this keyword is treated as a wrapper around nn.MultiheadAttention.
WRAPPER_KEYWORD = "attn_mask"

# Words that must appear in a module's text for any consumer above to be recognised in it.
CONSUMER_TOKENS = ("MultiheadAttention", "multi_head_attention_forward", "Transformer", "attn_mask")
