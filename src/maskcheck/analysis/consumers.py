"""The attention calls that consume a 3-D (N*num_heads, L, S) mask, and how their arguments are read from libcst.

The table of consumer names and argument positions is in `consumer_specs`, which does not import libcst.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import FrozenSet, Optional

import libcst as cst

# The consumer table moved to consumer_specs, which does not import libcst. Its names stay importable from here.
from maskcheck.analysis.consumer_specs import (  # noqa: F401
    CONFIGURED_CONSUMER,
    CONSUMER_TOKENS,
    CONTAINERS,
    FUNCTIONAL_HEAD_ARGUMENT,
    FUNCTIONAL_MASK_ARGUMENT,
    FUNCTIONAL_MHA,
    LAYER_SPECS,
    MULTIHEAD_ATTENTION,
    UNKNOWN_CONSUMER,
    WRAPPER_KEYWORD,
    LayerSpec,
)


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
