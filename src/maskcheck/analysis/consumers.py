"""The attention calls that consume a 3-D (N*num_heads, L, S) mask, and how their arguments are laid out.

Argument positions are those of PyTorch 2.13's `forward` signatures (torch/nn/modules/activation.py and
torch/nn/modules/transformer.py) and of `torch.nn.functional.multi_head_attention_forward`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

import libcst as cst


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


@dataclass(frozen=True)
class Consumer:
    """One attention call that receives a mask.

    `kind` is a canonical class or function name, or UNKNOWN_CONSUMER for a wrapper recognised by its keyword.
    `head_counts` are the texts the layer's head count was built from; `callee` is the text of the called object.
    """

    kind: str
    argument: str
    head_counts: FrozenSet[str]
    batch_first: Optional[bool]
    callee: str
    call: cst.Call


def find_argument(call: cst.Call, name: str, position: Optional[int]) -> Optional[cst.BaseExpression]:
    """Return the expression passed for a parameter, by keyword or position; None if absent or hidden by *args."""
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg.value
    if position is None:
        return None
    index = 0
    for arg in call.args:
        if arg.keyword is not None or arg.star == "**":
            break
        if arg.star == "*":
            return None
        if index == position:
            return arg.value
        index += 1
    return None


def literal_bool(node: Optional[cst.BaseExpression]) -> Optional[bool]:
    if isinstance(node, cst.Name) and node.value in ("True", "False"):
        return node.value == "True"
    return None
