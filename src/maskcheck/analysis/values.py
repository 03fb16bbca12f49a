"""Abstract values for the mask analysis.

A tensor's shape is a tuple of axes. Each axis is a tuple of factors, outer to inner, so a merged axis records the
order of what was merged: the axis of `m.repeat(H, 1, 1)` is (head copy, batch), which is head-major, and the axis
of `m.repeat_interleave(H, dim=0)` is (batch, head copy), which is batch-major. An empty tuple is a size-1 axis.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import FrozenSet, Optional, Tuple

import libcst as cst

# Factor roles. UNKNOWN factors are resolved at the consumer from its shape contract.
BATCH = "batch"
HEAD = "head"
UNKNOWN = "unknown"
LOOP = "loop"  # the element picked by a comprehension's loop variable; replaced when the list is concatenated

# Names that mean "batch size" when nothing else tells what an axis holds.
BATCH_SIZE_NAMES = frozenset({"batch_size", "bsz", "bs", "batch", "n_batch", "nbatch", "num_batch", "batchsize"})

_factor_ids = itertools.count(1)


def new_factor_id() -> int:
    return next(_factor_ids)


@dataclass(frozen=True)
class Factor:
    """One factor of an axis.

    `varying` is False for copies made by repeat, expand, tile or concatenating the same tensor: the data is the same
    along such a factor. `sizes` holds the source texts known to give this factor's size (`num_heads`, `x.shape[0]`).
    `evidence` says why the role is known, for the finding's message.
    """

    role: str
    varying: bool
    sizes: FrozenSet[str] = frozenset()
    evidence: str = ""
    # For a LOOP factor: the factors of the axis that the loop variable walks over.
    picks: Tuple["Factor", ...] = ()
    uid: int = field(default_factory=new_factor_id)

    def with_role(self, role: str, evidence: str) -> "Factor":
        return replace(self, role=role, evidence=evidence)

    def with_sizes(self, sizes: FrozenSet[str]) -> "Factor":
        if not sizes or sizes <= self.sizes:
            return self
        return replace(self, sizes=self.sizes | sizes)


@dataclass(frozen=True)
class OpRecord:
    """The call that produced an axis layout, kept so a finding can point at it and rewrite it."""

    node: cst.CSTNode
    kind: str
    # Count or size texts that the rewrite needs (the head count of a repeat, for example).
    detail: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Axis:
    """An axis: its factors (outer to inner), the call that merged them, and the call that placed the axis."""

    factors: Tuple[Factor, ...]
    merged_by: Optional[OpRecord] = None
    placed_by: Optional[OpRecord] = None

    @property
    def is_singleton(self) -> bool:
        return not self.factors


SINGLETON = Axis(())


@dataclass(frozen=True)
class Step:
    """A statement on the way from the source value to the consumer (see maskcheck.chain.ChainStep)."""

    target: Optional[str]
    node: cst.CSTNode


@dataclass(frozen=True)
class Tensor:
    """A tensor value. `axes` is None while the rank is unknown (a parameter, say).

    `source` is the source text of the value the construction starts from, and `steps` the statements followed
    since then. `opaque` marks a value built by an operation the analysis does not model: its layout is unknown.
    """

    axes: Optional[Tuple[Axis, ...]]
    source: str = ""
    steps: Tuple[Step, ...] = ()
    # The rank the analysis assumed for an unknown value, so messages can say so.
    assumed_rank: bool = False
    # True after expand, whose copies have stride 0: `view` cannot merge such axes and raises (reshape copies).
    strided: bool = False
    # The axes (by the uid of their first factor) in memory order when the tensor was last contiguous; a
    # transpose or permute changes the axis order but not this, so two transposes that cancel leave it contiguous.
    memory_order: Optional[Tuple[int, ...]] = None
    # The call in the analysed module that returned this value from another module, if it came from one.
    entry: Optional[cst.CSTNode] = None

    @property
    def rank(self) -> Optional[int]:
        return None if self.axes is None else len(self.axes)

    def with_axes(
        self,
        axes: Optional[Tuple[Axis, ...]],
        assumed_rank: Optional[bool] = None,
        strided: Optional[bool] = None,
        contiguous: bool = False,
    ) -> "Tensor":
        """Return the tensor with new axes; `contiguous=True` for operations that return a fresh copy."""
        memory_order = axis_order(axes) if contiguous else self.memory_order
        return self._replace(
            axes=axes,
            assumed_rank=self.assumed_rank if assumed_rank is None else assumed_rank,
            strided=False if contiguous else (self.strided if strided is None else strided),
            memory_order=memory_order,
        )

    def is_contiguous(self) -> bool:
        if self.strided:
            return False
        return self.memory_order is None or self.axes is None or axis_order(self.axes) == self.memory_order

    def with_step(self, step: Step) -> "Tensor":
        return self._replace(steps=self.steps + (step,))

    def _replace(self, **changes: object) -> "Tensor":
        """Return a copy with some fields changed, as `dataclasses.replace` does, in under half its time (timeit,
        Python 3.11), because the analysis makes a new tensor for nearly every expression.

        Copying the instance dictionary gives what `replace` gives only while Tensor has no `__post_init__`, no
        `init=False` field and no `__slots__`.
        """
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(changes)
        return copy


def axis_order(axes: Optional[Tuple[Axis, ...]]) -> Optional[Tuple[int, ...]]:
    if axes is None:
        return None
    return tuple(axis.factors[0].uid for axis in axes if axis.factors)


@dataclass(frozen=True)
class Size:
    """An integer size or count. `texts` are the source texts that name it; `terms` is how many factors it
    multiplies (`bsz * num_heads` has 2, `1` has 0, `-1` is REST_TERMS)."""

    texts: FrozenSet[str]
    terms: int = 1
    value: Optional[int] = None
    # The texts of the factors of a product, outer to inner (`bsz * num_heads` gives ("bsz", "num_heads")).
    parts: Tuple[FrozenSet[str], ...] = ()


REST_TERMS = -1


@dataclass(frozen=True)
class ShapeOf:
    """`x.shape` or `x.size()`: indexing or unpacking it gives sizes named after the texts used."""

    base: str
    tensor: Optional[Tensor] = None


@dataclass(frozen=True)
class RepeatedList:
    """`[m] * H` or `H * [m]`: H references to the same tensor."""

    element: Tensor
    count: Size


@dataclass(frozen=True)
class SequenceValue:
    """A list or tuple display whose items are known."""

    items: Tuple["Alternatives", ...]


@dataclass(frozen=True)
class LoopList:
    """A list comprehension over `range(...)` whose element selected one item along an axis per iteration."""

    element: Tensor


@dataclass(frozen=True)
class IndexVector:
    """`torch.arange(T)` and `% K` or `// K` of it, used to gather slots (`m[torch.arange(N * H) // H]`).

    `picks` is "all" for the plain range, "inner" for `% K` (the inner factor of size K is picked) and "outer" for
    `// K` (the outer factor of size T / K is picked). `other` holds the texts of the factor that is not picked.
    """

    total: Size
    picks: str = "all"
    other: FrozenSet[str] = frozenset()


@dataclass(frozen=True)
class LoopIndex:
    """A comprehension's loop variable over `range(...)`."""

    name: str


@dataclass(frozen=True)
class DictValue:
    """A dict display or `dict(...)` call with string keys."""

    entries: Tuple[Tuple[str, "Alternatives"], ...]

    def get(self, key: str) -> Optional["Alternatives"]:
        for entry_key, value in self.entries:
            if entry_key == key:
                return value
        return None


@dataclass(frozen=True)
class QualifiedName:
    """A reference to an imported module, class or function, by its canonical dotted name."""

    name: str


@dataclass(frozen=True)
class Layer:
    """An instance of a torch attention layer (or a container of layers).

    `kind` is the canonical class name (`torch.nn.MultiheadAttention`); `head_counts` the source texts of the
    `num_heads`/`nhead` argument it was built with; `members` the layers a ModuleList, ModuleDict or Sequential holds.
    """

    kind: str
    head_counts: FrozenSet[str] = frozenset()
    batch_first: Optional[bool] = None
    members: Tuple["Layer", ...] = ()
    text: str = ""


@dataclass(frozen=True)
class BoundForward:
    """`layer.forward`: calling it is calling the layer."""

    layer: Layer


@dataclass(frozen=True)
class Unknown:
    """A value the analysis does not model."""


UNKNOWN_VALUE = Unknown()

Value = object
Alternatives = Tuple[Value, ...]
