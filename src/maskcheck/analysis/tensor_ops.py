"""Transfer functions: how each modelled tensor operation changes the axes and their factor order.

Every function takes the abstract input and returns the abstract result; none of them raises for odd input. When
an operation cannot be followed, the result has unknown axes, which makes every later check stay silent.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

import libcst as cst

from maskcheck.analysis.names import code_without_comments
from maskcheck.analysis.values import (
    BATCH,
    LOOP,
    REST_TERMS,
    SINGLETON,
    UNKNOWN,
    Axis,
    Factor,
    IndexVector,
    OpRecord,
    Size,
    Tensor,
)

# The rank assumed for a value whose rank the code does not show: the (N, L, S) per-example mask that gets
# expanded for nn.MultiheadAttention. Operations that imply a rank (repeat's counts, an index, permute) win.
DEFAULT_RANK = 3


def fresh_axes(rank: int) -> Tuple[Axis, ...]:
    return tuple(Axis((Factor(UNKNOWN, varying=True),)) for _ in range(rank))


# Names of 2-D (N, S) padding masks, read from the last part of the source's name.
_PADDING_NAME = re.compile(r"(pad|padding|valid|kpm|keep|lengths?|attention_mask)$", re.IGNORECASE)


def default_rank(tensor: Tensor) -> int:
    """Return the rank to assume for a tensor whose rank the code does not show. It is 2 for a value named like a
    key padding mask (`key_padding_mask`, `x_valid`), otherwise 3, the (N, L, S) per-example mask."""
    name = tensor.source.rsplit(".", 1)[-1]
    return 2 if _PADDING_NAME.search(name) else DEFAULT_RANK


def materialize(tensor: Tensor, rank: Optional[int] = None) -> Tensor:
    """Give a tensor of unknown rank `rank` unknown axes, one varying factor each."""
    if tensor.axes is not None:
        return tensor
    if rank is None:
        rank = default_rank(tensor)
    return tensor.with_axes(fresh_axes(max(rank, 0)), assumed_rank=True, contiguous=True)


def unknown_like(tensor: Tensor) -> Tensor:
    return tensor.with_axes(None) if tensor.axes is not None else tensor


def copy_factor(count: Size) -> Factor:
    return Factor(UNKNOWN, varying=False, sizes=count.texts)


def normalize_dim(dim: int, rank: int) -> Optional[int]:
    if dim < 0:
        dim += rank
    if 0 <= dim < rank:
        return dim
    return None


def _is_one(size: Size) -> bool:
    return size.value == 1


# ---------------------------------------------------------------------------------------------------------------
# Copies along axes


def repeat(tensor: Tensor, counts: Sequence[Size], node: cst.CSTNode, kind: str = "repeat") -> Tensor:
    """`t.repeat(c0, ..., ck)`: each count makes that many copies of the whole axis, so copies are the OUTER factor.

    `tile` is the same with fewer counts padded by leading ones.
    """
    if not counts:
        return tensor
    tensor = materialize(tensor, len(counts))
    axes = list(tensor.axes)
    if kind == "tile" and len(counts) < len(axes):
        counts = [Size(frozenset({"1"}), terms=0, value=1)] * (len(axes) - len(counts)) + list(counts)
    while len(axes) < len(counts):
        axes.insert(0, SINGLETON)
    record = OpRecord(node, kind, tuple(sorted(counts[0].texts)))
    result = []
    for axis, count in zip(axes, counts):
        if _is_one(count):
            result.append(axis)
            continue
        factors = (copy_factor(count),) + axis.factors
        merged_by = record if axis.factors else axis.merged_by
        result.append(Axis(factors, merged_by=merged_by, placed_by=axis.placed_by))
    return tensor.with_axes(tuple(result), contiguous=True)


def repeat_interleave(tensor: Tensor, count: Size, dim: Optional[int], node: cst.CSTNode) -> Tensor:
    """`t.repeat_interleave(c, dim=d)`: each element is copied c times in place, so copies are the INNER factor."""
    if dim is None:
        # Without `dim`, the input is flattened to 1-D first.
        return tensor.with_axes((Axis((Factor(UNKNOWN, varying=True),)),))
    tensor = materialize(tensor)
    position = normalize_dim(dim, len(tensor.axes))
    if position is None:
        return unknown_like(tensor)
    axes = list(tensor.axes)
    axis = axes[position]
    record = OpRecord(node, "repeat_interleave", tuple(sorted(count.texts)))
    axes[position] = Axis(axis.factors + (copy_factor(count),), merged_by=record, placed_by=axis.placed_by)
    return tensor.with_axes(tuple(axes), contiguous=True)


def expand(tensor: Tensor, sizes: Sequence[Size], node: cst.CSTNode) -> Tensor:
    """`t.expand(...)` / `t.broadcast_to(...)`: size-1 axes become copies; extra sizes add leading axes."""
    if tensor.axes is None:
        tensor = materialize(tensor, min(len(sizes), default_rank(tensor)))
    axes = list(tensor.axes)
    if len(sizes) < len(axes):
        return unknown_like(tensor)
    record = OpRecord(node, "expand", tuple(sorted(sizes[0].texts)) if sizes else ())
    new_leading = len(sizes) - len(axes)
    result: List[Axis] = []
    for size in sizes[:new_leading]:
        if _is_one(size):
            result.append(Axis((), placed_by=record))
        else:
            result.append(Axis((copy_factor(size),), placed_by=record))
    for axis, size in zip(axes, sizes[new_leading:]):
        if size.value == -1 or _is_one(size):
            result.append(axis)
        elif axis.is_singleton:
            result.append(Axis((copy_factor(size),), placed_by=axis.placed_by))
        elif len(axis.factors) == 1:
            result.append(Axis((axis.factors[0].with_sizes(size.texts),), axis.merged_by, axis.placed_by))
        else:
            result.append(axis)
    return tensor.with_axes(tuple(result), strided=True)


def expand_as(tensor: Tensor, other: Tensor) -> Tensor:
    if tensor.axes is None or other.axes is None or len(other.axes) < len(tensor.axes):
        return unknown_like(tensor)
    result: List[Axis] = list(other.axes[: len(other.axes) - len(tensor.axes)])
    for axis, target in zip(tensor.axes, other.axes[len(other.axes) - len(tensor.axes) :]):
        if axis.is_singleton and not target.is_singleton:
            copies = tuple(Factor(f.role, varying=False, sizes=f.sizes, evidence=f.evidence) for f in target.factors)
            result.append(Axis(copies, placed_by=axis.placed_by))
        else:
            result.append(axis)
    return tensor.with_axes(tuple(result), strided=True)


# ---------------------------------------------------------------------------------------------------------------
# Axis order


def unsqueeze(tensor: Tensor, dim: int, node: cst.CSTNode) -> Tensor:
    tensor = materialize(tensor)
    rank = len(tensor.axes)
    position = dim + rank + 1 if dim < 0 else dim
    if not 0 <= position <= rank:
        return unknown_like(tensor)
    axes = list(tensor.axes)
    axes.insert(position, Axis((), placed_by=OpRecord(node, "unsqueeze", (str(position),))))
    return tensor.with_axes(tuple(axes))


def squeeze(tensor: Tensor, dim: Optional[int]) -> Tensor:
    if tensor.axes is None:
        return tensor
    if dim is None:
        return tensor.with_axes(tuple(axis for axis in tensor.axes if not axis.is_singleton))
    position = normalize_dim(dim, len(tensor.axes))
    if position is None or not tensor.axes[position].is_singleton:
        return tensor
    return tensor.with_axes(tensor.axes[:position] + tensor.axes[position + 1 :])


def transpose(tensor: Tensor, first: int, second: int, node: cst.CSTNode) -> Tensor:
    tensor = materialize(tensor)
    rank = len(tensor.axes)
    a, b = normalize_dim(first, rank), normalize_dim(second, rank)
    if a is None or b is None:
        return unknown_like(tensor)
    axes = list(tensor.axes)
    record = OpRecord(node, "transpose")
    axes[a], axes[b] = _placed(axes[b], record), _placed(axes[a], record)
    return tensor.with_axes(tuple(axes))


def permute(tensor: Tensor, order: Sequence[int], node: cst.CSTNode) -> Tensor:
    tensor = materialize(tensor, len(order))
    rank = len(tensor.axes)
    positions = [normalize_dim(d, rank) for d in order]
    if len(order) != rank or None in positions or sorted(positions) != list(range(rank)):
        return unknown_like(tensor)
    record = OpRecord(node, "permute")
    axes = []
    for new_position, old_position in enumerate(positions):
        axis = tensor.axes[old_position]
        axes.append(_placed(axis, record) if new_position != old_position else axis)
    return tensor.with_axes(tuple(axes))


def _placed(axis: Axis, record: OpRecord) -> Axis:
    return Axis(axis.factors, axis.merged_by, record)


# ---------------------------------------------------------------------------------------------------------------
# Merging and splitting axes


def flatten(tensor: Tensor, start: int, end: int, node: cst.CSTNode) -> Tensor:
    tensor = materialize(tensor)
    rank = len(tensor.axes)
    a, b = normalize_dim(start, rank), normalize_dim(end, rank)
    if a is None or b is None or a > b:
        return unknown_like(tensor)
    merged = _merge(tensor.axes[a : b + 1], OpRecord(node, "flatten"))
    return tensor.with_axes(tensor.axes[:a] + (merged,) + tensor.axes[b + 1 :], contiguous=True)


def _merge(axes: Sequence[Axis], record: OpRecord) -> Axis:
    factors = tuple(f for axis in axes for f in axis.factors)
    non_empty = [axis for axis in axes if axis.factors]
    if len(non_empty) == 1:
        return non_empty[0]
    causes = tuple(axis.placed_by for axis in axes if axis.placed_by is not None)
    return Axis(factors, merged_by=record, placed_by=causes[-1] if causes else None)


def reshape(tensor: Tensor, sizes: Sequence[Size], node: cst.CSTNode) -> Tensor:
    """`view`/`reshape`: group the row-major sequence of factors into the target axes.

    Target sizes are symbolic, so the grouping is by how many factors each size multiplies (`N * H` takes two,
    `L` one, `1` none, `-1` the rest). Axes that match one to one at either end are kept as they are; the middle is
    grouped in order. A single factor split over several targets (viewing an (N*H, L, S) value as (N, H, L, S))
    becomes sub-factors named by the target sizes.
    """
    record = OpRecord(node, "reshape")
    if tensor.axes is None:
        tensor = materialize(tensor, sum(1 for s in sizes if s.terms != 0) or default_rank(tensor))
    source = [axis for axis in tensor.axes if axis.factors]
    targets = list(sizes)

    # Keep axes that line up one to one at the right end, then at the left end.
    tail: List[Axis] = []
    while targets and source and _matches_one_to_one(targets[-1], source[-1]):
        tail.insert(0, _named(source.pop(), targets.pop()))
    while targets and targets[-1].terms == 0:
        tail.insert(0, SINGLETON)
        targets.pop()
    head: List[Axis] = []
    while targets and source and _matches_one_to_one(targets[0], source[0]):
        head.append(_named(source.pop(0), targets.pop(0)))
        while targets and targets[0].terms == 0:
            head.append(SINGLETON)
            targets.pop(0)

    middle = _group_middle(source, targets, record)
    if middle is None:
        return unknown_like(tensor)
    return tensor.with_axes(tuple(head + middle + tail), contiguous=True)


def _matches_one_to_one(size: Size, axis: Axis) -> bool:
    return size.terms == 1 and len(axis.factors) == 1


def _named(axis: Axis, size: Size) -> Axis:
    # Only a factor of unknown size takes the target's name: a known size that disagrees is the evidence of a
    # reshape cut at the wrong place, and must survive.
    if len(axis.factors) != 1 or size.value is not None or axis.factors[0].sizes:
        return axis
    return Axis((axis.factors[0].with_sizes(size.texts),), axis.merged_by, axis.placed_by)


def _group_middle(source: List[Axis], targets: List[Size], record: OpRecord) -> Optional[List[Axis]]:
    factors = [f for axis in source for f in axis.factors]
    if not targets:
        return [] if not factors else None
    rest_count = sum(1 for t in targets if t.terms == REST_TERMS)
    known = sum(t.terms for t in targets if t.terms != REST_TERMS)
    if rest_count > 1:
        return None

    if rest_count == 0 and known != len(factors):
        if len(factors) == 1 and known > 1:
            return _split(source[0], targets)
        return None
    if rest_count == 1 and known > len(factors):
        return None

    rest_size = len(factors) - known
    result: List[Axis] = []
    position = 0
    for target in targets:
        count = rest_size if target.terms == REST_TERMS else target.terms
        group = factors[position : position + count]
        position += count
        result.append(_axis_from_factors(tuple(group), source, target, record))
    return result


def _axis_from_factors(group: Tuple[Factor, ...], source: List[Axis], target: Size, record: OpRecord) -> Axis:
    if not group:
        return SINGLETON
    # An axis that comes through whole keeps its history.
    for axis in source:
        if axis.factors == group:
            return _named(axis, target) if len(group) == 1 else axis
    members = [axis for axis in source if any(f in group for f in axis.factors)]
    causes = [axis.placed_by for axis in members if axis.placed_by is not None]
    if len(group) == 1:
        factor = group[0]
        if target.value is None and not factor.sizes:
            factor = factor.with_sizes(target.texts)
        # A factor cut out of a merged axis records the reshape that cut it, so a finding can point there.
        cut_from_merged = any(len(axis.factors) > 1 for axis in members)
        return Axis((factor,), merged_by=record if cut_from_merged else None, placed_by=causes[-1] if causes else None)
    return Axis(group, merged_by=record, placed_by=causes[-1] if causes else None)


def _split(axis: Axis, targets: List[Size]) -> Optional[List[Axis]]:
    """Split one axis of unknown size over several target sizes, e.g. (N*H,) viewed as (N, H)."""
    if any(t.terms == REST_TERMS for t in targets) or len(axis.factors) != 1:
        return None
    original = axis.factors[0]
    result = []
    for target in targets:
        if target.terms == 0:
            result.append(SINGLETON)
            continue
        result.append(Axis((Factor(UNKNOWN, varying=original.varying, sizes=target.texts),)))
    return result


# ---------------------------------------------------------------------------------------------------------------
# Concatenation, stacking and gathering


def concatenate_copies(element: Tensor, count: Size, dim: int, node: cst.CSTNode) -> Tensor:
    """`torch.cat([m] * H, dim)`: whole copies one after another, so the copies are the OUTER factor."""
    element = materialize(element)
    position = normalize_dim(dim, len(element.axes))
    if position is None:
        return unknown_like(element)
    axes = list(element.axes)
    axis = axes[position]
    record = OpRecord(node, "cat", tuple(sorted(count.texts)))
    axes[position] = Axis((copy_factor(count),) + axis.factors, merged_by=record, placed_by=axis.placed_by)
    return element.with_axes(tuple(axes), contiguous=True)


def stack_copies(element: Tensor, count: Size, dim: int, node: cst.CSTNode) -> Tensor:
    element = materialize(element)
    rank = len(element.axes)
    position = dim + rank + 1 if dim < 0 else dim
    if not 0 <= position <= rank:
        return unknown_like(element)
    axes = list(element.axes)
    axes.insert(position, Axis((copy_factor(count),), placed_by=OpRecord(node, "stack", (str(position),))))
    return element.with_axes(tuple(axes), contiguous=True)


def concatenate_loop(element: Tensor, dim: int, node: cst.CSTNode) -> Tensor:
    """`torch.cat([f(m[i:i+1]) for i in range(N)], dim)`: the loop is the OUTER factor of the result."""
    if element.axes is None:
        return element
    position = normalize_dim(dim, len(element.axes))
    if position is None:
        return unknown_like(element)
    axis = element.axes[position]
    picked = _loop_factors(element)
    if picked is None:
        return unknown_like(element)
    inner = tuple(f for f in axis.factors if f.role != LOOP)
    axes = list(element.axes)
    axes[position] = Axis(picked + inner, merged_by=OpRecord(node, "cat"), placed_by=axis.placed_by)
    return element.with_axes(tuple(axes))


def stack_loop(element: Tensor, dim: int, node: cst.CSTNode) -> Tensor:
    if element.axes is None:
        return element
    picked = _loop_factors(element)
    if picked is None:
        return unknown_like(element)
    rank = len(element.axes)
    position = dim + rank + 1 if dim < 0 else dim
    if not 0 <= position <= rank:
        return unknown_like(element)
    axes = [Axis(tuple(f for f in axis.factors if f.role != LOOP), axis.merged_by, axis.placed_by)
            for axis in element.axes]
    axes.insert(position, Axis(picked, placed_by=OpRecord(node, "stack", (str(position),))))
    return element.with_axes(tuple(axes))


def _loop_factors(element: Tensor) -> Optional[Tuple[Factor, ...]]:
    for axis in element.axes or ():
        for factor in axis.factors:
            if factor.role == LOOP:
                return factor.picks
    return None


def pick_with_loop(axis: Axis, keep_axis: bool) -> Tuple[Optional[Axis], Factor]:
    """Index an axis with a comprehension's loop variable: `m[i:i+1]` keeps a size-1 axis, `m[i]` drops it."""
    marker = Factor(LOOP, varying=True, picks=axis.factors)
    return (Axis((marker,), placed_by=axis.placed_by) if keep_axis else None), marker


def gather(tensor: Tensor, vector: IndexVector, dim: int, node: cst.CSTNode) -> Tensor:
    """`m[torch.arange(T) % K]` or `m.index_select(0, torch.arange(T) // K)`."""
    tensor = materialize(tensor)
    position = normalize_dim(dim, len(tensor.axes))
    if position is None:
        return unknown_like(tensor)
    axes = list(tensor.axes)
    axis = axes[position]
    if vector.picks == "all":
        return tensor
    other = Factor(UNKNOWN, varying=False, sizes=vector.other)
    record = OpRecord(node, "gather", (vector.picks,))
    if vector.picks == "inner":
        factors = (other,) + axis.factors
    else:
        factors = axis.factors + (other,)
    axes[position] = Axis(factors, merged_by=record, placed_by=axis.placed_by)
    return tensor.with_axes(tuple(axes))


# ---------------------------------------------------------------------------------------------------------------
# Elementwise and matrix products


def broadcast(first: Tensor, second: Tensor) -> Tensor:
    """Combine two tensors elementwise with right-aligned broadcasting, keeping the first operand's history."""
    if first.axes is None or second.axes is None:
        if first.axes is None and second.axes is not None:
            return second
        return first
    longer, shorter = (first, second) if len(first.axes) >= len(second.axes) else (second, first)
    offset = len(longer.axes) - len(shorter.axes)
    axes = list(longer.axes[:offset])
    for axis_long, axis_short in zip(longer.axes[offset:], shorter.axes):
        axes.append(axis_long if not axis_long.is_singleton else axis_short)
    return first.with_axes(tuple(axes))


def elementwise(first: Tensor, second: Tensor, node: cst.CSTNode) -> Tensor:
    """`a & b`, `a * b` and other broadcasting binary operations. Broadcasting an (N, L, 1) tensor against an
    (N, 1, S) tensor builds one (L, S) mask per item of axis 0, so that axis indexes the examples, as for `matmul`."""
    result = broadcast(first, second)
    if result.axes is None or len(result.axes) != 3 or result.axes[0].is_singleton:
        return result
    if not _is_outer_product(first, second):
        return result
    evidence = (
        f"`{quote_code(node)}` is an outer product of (N, L, 1) and (N, 1, S) tensors, so its axis 0 is the batch"
    )
    return result.with_axes((_with_role(result.axes[0], BATCH, evidence),) + result.axes[1:])


def _is_outer_product(first: Tensor, second: Tensor) -> bool:
    """True when one operand contributes the query axis and the other the key axis: (.., L, 1) with (.., 1, S),
    in either order, each of rank 2 or more."""
    if first.axes is None or second.axes is None or len(first.axes) < 2 or len(second.axes) < 2:
        return False

    def shape(tensor: Tensor) -> Tuple[bool, bool]:
        return tensor.axes[-2].is_singleton, tensor.axes[-1].is_singleton

    pair = (shape(first), shape(second))
    return pair in (((False, True), (True, False)), ((True, False), (False, True)))


def matmul(first: Tensor, second: Tensor, node: cst.CSTNode) -> Tensor:
    """`a @ b`: batch axes broadcast, then a's rows and b's columns (the outer product of (N, L, 1) and (N, 1, S)
    is an (N, L, S) per-example mask)."""
    if first.axes is None or second.axes is None or len(first.axes) < 2 or len(second.axes) < 2:
        return unknown_like(first)
    batch = broadcast(first.with_axes(first.axes[:-2]), second.with_axes(second.axes[:-2]))
    batch_axes = tuple(batch.axes)
    if first.axes[-1].is_singleton and second.axes[-2].is_singleton and len(batch_axes) == 1:
        # An outer product of (N, L, 1) and (N, 1, S): one (L, S) mask per item of the leading axis.
        evidence = (
            f"`{quote_code(node)}` is a batched outer product of (N, L, 1) and (N, 1, S) tensors, so its axis 0 is "
            "the batch"
        )
        batch_axes = (_with_role(batch_axes[0], BATCH, evidence),)
    return first.with_axes(batch_axes + (first.axes[-2], second.axes[-1]))


# Maximum length of an expression that an evidence text quotes in full.
_MAX_QUOTED = 60


def quote_code(node: cst.CSTNode) -> str:
    """Return an expression's code for a message: one line, without comments, cut to 60 characters."""
    text = code_without_comments(node)
    if len(text) > _MAX_QUOTED:
        text = text[: _MAX_QUOTED - 3] + "..."
    return text


def _with_role(axis: Axis, role: str, evidence: str) -> Axis:
    factors = tuple(f.with_role(role, evidence) if f.role == UNKNOWN else f for f in axis.factors)
    return Axis(factors, axis.merged_by, axis.placed_by)


def name_axes(tensor: Tensor, sizes: Sequence[Size], whole_shape: bool) -> Tensor:
    """Record the sizes a shape guard names: `assert m.shape == (bsz, num_heads, L, S)` gives m rank 4 and
    names each axis, so the roles of its factors are known later."""
    if tensor.axes is None:
        # A guard on a prefix names the leading axes of a mask, which then ends with its (L, S) axes.
        tensor = materialize(tensor, len(sizes) if whole_shape else len(sizes) + 2)
    if len(sizes) > len(tensor.axes) or (whole_shape and len(sizes) != len(tensor.axes)):
        return tensor
    axes = list(tensor.axes)
    for position, size in enumerate(sizes):
        axis = axes[position]
        if len(axis.factors) == 1 and size.value is None:
            axes[position] = Axis((axis.factors[0].with_sizes(size.texts),), axis.merged_by, axis.placed_by)
    return tensor.with_axes(tuple(axes))


def mark_batch_axis(tensor: Tensor, evidence: str) -> Tensor:
    """Record that axis 0 holds the batch, from a guard such as `assert m.shape[0] == x.shape[0]`."""
    tensor = materialize(tensor)
    if not tensor.axes:
        return tensor
    return tensor.with_axes((_with_role(tensor.axes[0], BATCH, evidence),) + tensor.axes[1:])
