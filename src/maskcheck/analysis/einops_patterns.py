"""einops `repeat` and `rearrange` patterns as axis operations.

In einops a parenthesised group `(b h)` merges its axes with the LEFT name outermost, so `(b h)` is batch-major and
`(h b)` is head-major (einops 0.8 documentation, "composition of axes").
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Tuple

import libcst as cst

from maskcheck.analysis.tensor_ops import materialize, unknown_like
from maskcheck.analysis.values import BATCH, HEAD, UNKNOWN, Axis, Factor, OpRecord, Size, Tensor

# Axis names that tell what an axis contains, used only when no other evidence does.
_BATCH_AXIS_NAMES = frozenset({"b", "batch", "bs", "bsz"})
_HEAD_AXIS_NAMES = frozenset({"h", "head", "heads", "nh"})

_TOKEN = re.compile(r"\(|\)|\.\.\.|[A-Za-z_][A-Za-z0-9_]*|\d+")

Group = Tuple[str, ...]


def parse_side(text: str) -> Optional[List[Group]]:
    """Parse one side of a pattern into groups of axis names; `()` and `1` give an empty group."""
    groups: List[Group] = []
    current: Optional[List[str]] = None
    for token in _TOKEN.findall(text):
        if token == "(":
            if current is not None:
                return None
            current = []
        elif token == ")":
            if current is None:
                return None
            groups.append(tuple(current))
            current = None
        elif token == "...":
            return None
        elif token.isdigit():
            if token != "1":
                return None
            if current is None:
                groups.append(())
        else:
            if current is None:
                groups.append((token,))
            else:
                current.append(token)
    if current is not None:
        return None
    return groups


def apply_pattern(tensor: Tensor, pattern: str, sizes: Mapping[str, Size], node: cst.CSTNode) -> Tensor:
    """Apply an einops `repeat`/`rearrange` pattern; names only on the right are new copy axes."""
    left_text, arrow, right_text = pattern.partition("->")
    if not arrow:
        return unknown_like(tensor)
    left, right = parse_side(left_text), parse_side(right_text)
    if left is None or right is None:
        return unknown_like(tensor)

    tensor = materialize(tensor, len(left))
    if len(tensor.axes) != len(left):
        return unknown_like(tensor)

    named = _bind_input(tensor.axes, left, sizes)
    if named is None:
        return unknown_like(tensor)

    record = OpRecord(node, "einops", (pattern,))
    input_order = [name for group in left for name in group]
    axes: List[Axis] = []
    for group in right:
        factors: List[Factor] = []
        for name in group:
            if name in named:
                factors.extend(named[name])
            else:
                size = sizes.get(name, Size(frozenset({name})))
                factors.append(_new_copy(name, size))
        moved = _moved(group, input_order, len(axes))
        placed_by = record if moved else None
        merged_by = record if sum(1 for name in group if named.get(name, True)) > 1 else None
        axes.append(Axis(tuple(factors), merged_by=merged_by, placed_by=placed_by))

    # einops repeats by expanding, then reshapes only if a group merges axes: a merged group is a fresh copy, and a
    # new axis standing alone stays an expanded view whose copies share memory (einops 0.8).
    groups_with_new = [group for group in right if any(name not in named for name in group)]
    if any(len(group) > 1 for group in groups_with_new) or any(len(group) > 1 for group in right):
        return tensor.with_axes(tuple(axes), contiguous=True)
    if groups_with_new:
        return tensor.with_axes(tuple(axes), strided=True)
    return tensor.with_axes(tuple(axes))


def _bind_input(axes, left: List[Group], sizes: Mapping[str, Size]) -> Optional[Dict[str, Tuple[Factor, ...]]]:
    named: Dict[str, Tuple[Factor, ...]] = {}
    for axis, group in zip(axes, left):
        if not group:
            continue
        if len(group) == 1:
            named[group[0]] = tuple(_role_from_name(f, group[0]) for f in axis.factors)
        elif len(group) == len(axis.factors):
            for name, factor in zip(group, axis.factors):
                named[name] = (_role_from_name(factor, name),)
        elif len(axis.factors) == 1:
            original = axis.factors[0]
            for name in group:
                size = sizes.get(name, Size(frozenset({name})))
                named[name] = (_role_from_name(Factor(UNKNOWN, original.varying, size.texts), name),)
        else:
            return None
    return named


def _role_from_name(factor: Factor, name: str) -> Factor:
    if factor.role != UNKNOWN:
        return factor
    if name in _BATCH_AXIS_NAMES:
        return factor.with_role(BATCH, f"the einops pattern names the axis `{name}`")
    if name in _HEAD_AXIS_NAMES:
        return factor.with_role(HEAD, f"the einops pattern names the axis `{name}`")
    return factor


def _new_copy(name: str, size: Size) -> Factor:
    factor = Factor(UNKNOWN, varying=False, sizes=size.texts | {name})
    return _role_from_name(factor, name)


def _moved(group: Group, input_order: List[str], position: int) -> bool:
    present = [name for name in group if name in input_order]
    return bool(present) and input_order.index(present[0]) != position


def swap_group(pattern: str, first: str, second: str) -> Optional[str]:
    """Return the pattern with the output group `(first second)` written as `(second first)`."""
    left, arrow, right = pattern.partition("->")
    group = re.compile(r"\(\s*" + re.escape(first) + r"\s+" + re.escape(second) + r"\s*\)")
    if not arrow or not group.search(right):
        return None
    return left + arrow + group.sub(f"({second} {first})", right, count=1)
