"""Synthetic sources, the real attention consumers, the per-example reference runs and the slot map.

Every consumer is a real torch layer with fixed weights. The replayed mask goes into one batched call, and the
reference is each example run alone with its own mask, not expanded over heads. Both run on the same inputs, so
any difference comes from the mask alone.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from maskcheck.chain import (
    ROLE_BATCH,
    ROLE_HEADS,
    ROLE_KEY,
    ROLE_QUERY,
    SOURCE_EXAMPLE,
    SOURCE_EXAMPLE_HEAD,
    SOURCE_HEAD,
    SOURCE_PADDING,
    SOURCE_SHARED,
)

EMBED_DIM = 6  # divisible by every head count in CONFIGURATIONS
FEEDFORWARD_DIM = 8
SEED = 20240611

# When the mask is right, the float32 outputs of the batched call and of the per-example calls differ only by
# rounding in kernels that block the batch differently. Measured on torch 2.13.0 CPU with these configurations
# (every measured truth-table expression, every consumer and 2,000 generated chains), that difference was at most
# 5.2e-7, and every wrong mask moved some output by at least 0.37. 1e-4 leaves more than two orders of magnitude
# on each side.
TOLERANCE = 1e-4

SOURCE_KINDS = (SOURCE_EXAMPLE, SOURCE_EXAMPLE_HEAD, SOURCE_HEAD, SOURCE_PADDING, SOURCE_SHARED)


@dataclass(frozen=True)
class Configuration:
    """Sizes of one replay: batch N, heads H, query length L and key length S, plus the length of the sequence
    that the mask does not cover (the decoder's memory under a `tgt_mask`, for example)."""

    batch: int
    heads: int
    query: int
    key: int
    other: int

    def role_sizes(self) -> Dict[str, int]:
        return {ROLE_BATCH: self.batch, ROLE_HEADS: self.heads, ROLE_QUERY: self.query, ROLE_KEY: self.key}

    @property
    def label(self) -> str:
        return f"N={self.batch}, H={self.heads}, L={self.query}, S={self.key}"


# No two sizes are equal within a configuration, so a transposed or mislabelled axis changes a shape or a slot.
CONFIGURATIONS = (Configuration(3, 2, 4, 5, 5), Configuration(2, 3, 5, 4, 4))


@dataclass(frozen=True)
class ConsumerSpec:
    """The layer that receives the mask, the argument it arrives in, and how the layer is called."""

    layer: str  # one of the keys of _BUILDERS
    argument: str
    batch_first: bool
    display: str
    square: bool  # the mask's query and key lengths are equal (self-attention)
    note: str = ""

    def configuration(self, base: Configuration) -> Configuration:
        """Adapt a configuration to the consumer: for a square mask S takes L's value."""
        if self.square:
            return replace(base, key=base.query, other=base.key)
        return base


_LAYER_NAMES = {
    "MultiheadAttention": "multi_head_attention",
    "multi_head_attention_forward": "multi_head_attention_forward",
    "TransformerEncoderLayer": "encoder_layer",
    "TransformerEncoder": "encoder",
    "TransformerDecoderLayer": "decoder_layer",
    "TransformerDecoder": "decoder",
    "Transformer": "transformer",
}

_DEFAULT_ARGUMENTS = {
    "multi_head_attention": "attn_mask",
    "multi_head_attention_forward": "attn_mask",
    "encoder_layer": "src_mask",
    "encoder": "mask",
    "decoder_layer": "tgt_mask",
    "decoder": "tgt_mask",
    "transformer": "tgt_mask",
}

_VALID_ARGUMENTS = {
    "multi_head_attention": ("attn_mask",),
    "multi_head_attention_forward": ("attn_mask",),
    "encoder_layer": ("src_mask",),
    "encoder": ("mask",),
    "decoder_layer": ("tgt_mask", "memory_mask"),
    "decoder": ("tgt_mask", "memory_mask"),
    "transformer": ("src_mask", "tgt_mask", "memory_mask"),
}

_DISPLAY_NAMES = {
    "multi_head_attention": "nn.MultiheadAttention",
    "multi_head_attention_forward": "F.multi_head_attention_forward",
    "encoder_layer": "nn.TransformerEncoderLayer",
    "encoder": "nn.TransformerEncoder",
    "decoder_layer": "nn.TransformerDecoderLayer",
    "decoder": "nn.TransformerDecoder",
    "transformer": "nn.Transformer",
}


def resolve_consumer(
    consumer: str, batch_first: Optional[bool], argument: Optional[str], roles: FrozenSet[str]
) -> ConsumerSpec:
    """Map the chain's consumer name (`torch.nn.MultiheadAttention`, `unknown`, ...) to a runnable spec.

    `roles` are the size roles the chain's expressions use. A decoder or `nn.Transformer` mask without a recorded
    argument is replayed as `memory_mask` when the chain uses a key length, and as `tgt_mask` otherwise. An
    unresolved consumer is replayed as nn.MultiheadAttention. The mask is square for the self-attention arguments,
    and also when the chain names only one of the two lengths (self-attention through nn.MultiheadAttention, where
    `L` stands for both).
    """
    uses_key_role = ROLE_KEY in roles
    last = consumer.rsplit(".", 1)[-1]
    layer = _LAYER_NAMES.get(last)
    note = ""
    if layer is None:
        layer = "multi_head_attention"
        note = "The call was not resolved to a known layer, so it was replayed as nn.MultiheadAttention."

    if argument not in _VALID_ARGUMENTS[layer]:
        argument = _DEFAULT_ARGUMENTS[layer]
        if layer in ("decoder_layer", "decoder", "transformer") and uses_key_role:
            argument = "memory_mask"

    seq_first_only = layer == "multi_head_attention_forward"
    display = _DISPLAY_NAMES[layer]
    if layer not in ("multi_head_attention", "multi_head_attention_forward"):
        display = f"{display} ({argument})"
    self_attention = argument in ("src_mask", "mask", "tgt_mask")
    one_length = (ROLE_QUERY in roles) != (ROLE_KEY in roles)
    return ConsumerSpec(
        layer=layer,
        argument=argument,
        batch_first=False if seq_first_only else bool(batch_first),
        display=display,
        square=self_attention or one_length,
        note=note,
    )


# -- synthetic sources -----------------------------------------------------------------------------------------


def make_source(torch: Any, kind: str, config: Configuration) -> Any:
    """Build the synthetic source for a kind, deterministic for a configuration.

    Bool masks use True = masked. Every mask leaves key 0 visible, so no row is fully masked and no mask equals
    another mask's complement, and every mask masks at least one key. Per-example and per-(example, head) masks
    are pairwise distinct, and padding lengths differ between examples.
    """
    n, h, l, s = config.batch, config.heads, config.query, config.key
    generator = torch.Generator().manual_seed(SEED + 7 * n + 11 * h + 13 * l + 17 * s)
    if kind == SOURCE_HEAD:
        return torch.randn(h, l, s, generator=generator)
    if kind == SOURCE_PADDING:
        lengths = torch.tensor([max(1, s - 1 - b) for b in range(n)])
        return torch.arange(s)[None, :] >= lengths[:, None]

    shape = {SOURCE_EXAMPLE: (n, l, s), SOURCE_EXAMPLE_HEAD: (n, h, l, s), SOURCE_SHARED: (l, s)}[kind]
    while True:
        mask = torch.rand(*shape, generator=generator) < 0.5
        mask[..., 0] = False
        masks = mask.reshape(-1, l, s)
        distinct = len({tuple(m.flatten().tolist()) for m in masks}) == masks.shape[0]
        if distinct and bool(masks.flatten(1).any(1).all()):
            return mask


def own_masks(kind: str, source: Any, config: Configuration) -> List[Any]:
    """Return each example's own mask as a consumer takes it for a batch of one: (L, S), or (H, L, S) per head."""
    if kind == SOURCE_EXAMPLE:
        return [source[b] for b in range(config.batch)]
    if kind == SOURCE_EXAMPLE_HEAD:
        return [source[b] for b in range(config.batch)]
    if kind == SOURCE_PADDING:
        return [source[b][None, :].expand(config.query, config.key).clone() for b in range(config.batch)]
    return [source for _ in range(config.batch)]


@dataclass(frozen=True)
class SlotCandidates:
    """Each slot's possible contents, flattened to (count, L*S), with what a batch-major slot i should hold."""

    flat: Any
    true_index: Any  # first masked position of each candidate (bool kinds)
    false_index: Any  # first unmasked position of each candidate (bool kinds)
    expected: Any  # candidate index that slot i should hold, for i in range(N*H)
    labels: Tuple[str, ...]
    unmatched_label: str
    boolean: bool


def slot_candidates(torch: Any, kind: str, source: Any, config: Configuration) -> SlotCandidates:
    n, h, l, s = config.batch, config.heads, config.query, config.key
    slots = torch.arange(n * h)
    if kind == SOURCE_HEAD:
        flat = source.reshape(h, l * s)
        return SlotCandidates(
            flat, None, None, slots % h, tuple(f"head {j}'s bias" for j in range(h)), "no head's bias", False
        )

    if kind == SOURCE_EXAMPLE:
        flat = source.reshape(n, l * s)
        labels = tuple(f"example {b}'s mask" for b in range(n))
        expected, unmatched = slots // h, "no example's mask"
    elif kind == SOURCE_PADDING:
        flat = torch.stack(own_masks(kind, source, config)).reshape(n, l * s)
        labels = tuple(f"example {b}'s padding mask" for b in range(n))
        expected, unmatched = slots // h, "no example's padding mask"
    elif kind == SOURCE_EXAMPLE_HEAD:
        flat = source.reshape(n * h, l * s)
        labels = tuple(f"the mask of example {j // h}, head {j % h}" for j in range(n * h))
        expected, unmatched = slots, "no example's or head's mask"
    else:
        flat = source.reshape(1, l * s)
        labels = ("the shared mask",)
        expected, unmatched = torch.zeros(n * h, dtype=torch.long), "the shared mask"
    true_index = flat.float().argmax(1)
    false_index = (~flat).float().argmax(1)
    return SlotCandidates(flat, true_index, false_index, expected, labels, unmatched, True)


@dataclass(frozen=True)
class SlotMatch:
    """The candidate each slot of a replayed mask contains, and in which values.

    `matches[i, j]` is True when slot i contains candidate j. For bool sources `masked[i, j]` and `visible[i, j]` are
    the values slot i has where candidate j is True and where it is False. For a per-head bias they are the scale
    and offset that map candidate j onto slot i.
    """

    matches: Any
    masked: Any
    visible: Any


def match_slots(torch: Any, mask: Any, candidates: SlotCandidates, config: Configuration) -> Optional[SlotMatch]:
    """Compare every slot of `mask` with every candidate, up to a change of values.

    For bool sources a slot contains candidate j when it is any two-valued function of it: the mask itself, its
    complement, a 0/1 float or a -inf/0 additive form. A float per-head bias matches any non-zero scaling of
    itself plus an offset (`-bias`, `bias * slope`). Returns None for a mask shape that does not map onto N*H slots.
    """
    n, h, l, s = config.batch, config.heads, config.query, config.key
    if tuple(mask.shape) == (l, s):
        mask = mask.expand(n * h, l, s)
    if tuple(mask.shape) != (n * h, l, s):
        return None
    values = torch.nan_to_num(mask.reshape(n * h, l * s).double(), nan=-7.25e33)

    if not candidates.boolean:
        # Fit slot = scale * bias + offset on positions 0 and 1, where a random bias has distinct values.
        bias = candidates.flat.double()
        scale = (values[:, None, 1] - values[:, None, 0]) / (bias[None, :, 1] - bias[None, :, 0])
        offset = values[:, None, 0] - scale * bias[None, :, 0]
        predicted = scale[..., None] * bias[None] + offset[..., None]
        close = torch.isclose(predicted, values[:, None, :], rtol=1e-5, atol=1e-5).all(-1)
        return SlotMatch(close & (scale.abs() > 1e-6), scale, offset)

    on_masked = values[:, candidates.true_index]  # (slots, candidates)
    on_visible = values[:, candidates.false_index]
    predicted = torch.where(candidates.flat[None], on_masked[..., None], on_visible[..., None])
    matches = (predicted == values[:, None, :]).all(-1) & (on_masked != on_visible)
    return SlotMatch(matches, on_masked, on_visible)


def batch_major_mask(
    torch: Any, match: SlotMatch, candidates: SlotCandidates, mask: Any, config: Configuration
) -> Optional[Any]:
    """Build the mask a batch-major layout would give, in the values the replayed mask uses.

    The chain may have inverted the mask, cast it to float or turned it into a -inf/0 additive mask. Those values
    are read from a slot that contains a candidate (its own one if any), and every slot i then gets its expected
    candidate in those values. Returns None when no slot contains any candidate, or when the values equal the
    synthetic source's own (so the plain per-example reference already applies).
    """
    slots = config.batch * config.heads
    own = match.matches[torch.arange(slots), candidates.expected]
    chosen = own.nonzero().flatten()
    if chosen.numel() == 0:
        chosen = match.matches.any(1).nonzero().flatten()
        if chosen.numel() == 0:
            return None
    slot = int(chosen[0])
    candidate = int(match.matches[slot].to(torch.uint8).argmax())
    shape = (slots, config.query, config.key)
    expected_flat = candidates.flat[candidates.expected]

    if not candidates.boolean:
        scale = float(match.masked[slot, candidate])
        offset = float(match.visible[slot, candidate])
        if abs(scale - 1.0) < 1e-6 and abs(offset) < 1e-6 and mask.dtype == candidates.flat.dtype:
            return None
        return (scale * expected_flat.double() + offset).reshape(shape).to(mask.dtype)

    masked = float(match.masked[slot, candidate])
    visible = float(match.visible[slot, candidate])
    if mask.dtype == torch.bool and masked == 1.0 and visible == 0.0:
        return None
    if mask.dtype == torch.bool:
        return (expected_flat if masked == 1.0 else ~expected_flat).reshape(shape)
    filled = torch.where(
        expected_flat, torch.tensor(masked, dtype=torch.float64), torch.tensor(visible, dtype=torch.float64)
    )
    return filled.reshape(shape).to(mask.dtype)


# -- consumers -------------------------------------------------------------------------------------------------


class Harness:
    """One consumer layer with fixed weights and fixed random inputs for one configuration."""

    def __init__(self, torch: Any, spec: ConsumerSpec, config: Configuration) -> None:
        self.torch = torch
        self.spec = spec
        self.config = config
        generator = torch.Generator().manual_seed(SEED + config.batch * 101 + config.heads)
        n, e = config.batch, EMBED_DIM
        # Batch-first master copies; `_layout` transposes them for sequence-first calls.
        self.query = torch.randn(n, config.query, e, generator=generator)
        self.keys = torch.randn(n, config.key, e, generator=generator)
        self.other = torch.randn(n, config.other, e, generator=generator)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(SEED)
            self.module = _BUILDERS[spec.layer](torch, spec, config.heads)

    def run(self, mask: Any, examples: slice) -> Any:
        """Run the consumer on the given examples with `mask` in the spec's argument; return batch-first outputs."""
        call = _CALLS[self.spec.layer]
        out = call(self, mask, examples)
        return out if self.spec.batch_first else out.transpose(0, 1)

    def _layout(self, tensor: Any) -> Any:
        return tensor if self.spec.batch_first else tensor.transpose(0, 1)


def _build_attention(torch: Any, spec: ConsumerSpec, heads: int) -> Any:
    module = torch.nn.MultiheadAttention(EMBED_DIM, heads, dropout=0.0, batch_first=spec.batch_first)
    # Non-zero projection biases keep a fully masked row distinguishable from an unmasked one.
    with torch.no_grad():
        module.in_proj_bias.normal_()
        module.out_proj.bias.normal_()
    return module.eval()


def _build_encoder_layer(torch: Any, spec: ConsumerSpec, heads: int) -> Any:
    layer = torch.nn.TransformerEncoderLayer(
        EMBED_DIM, heads, dim_feedforward=FEEDFORWARD_DIM, dropout=0.0, batch_first=spec.batch_first
    )
    # Training mode with dropout 0 is deterministic and keeps the layer off its inference fast path, which reads a
    # float mask as "nonzero = masked" on torch 2.13.
    return layer.train()


def _build_encoder(torch: Any, spec: ConsumerSpec, heads: int) -> Any:
    return torch.nn.TransformerEncoder(_build_encoder_layer(torch, spec, heads), num_layers=1).train()


def _build_decoder_layer(torch: Any, spec: ConsumerSpec, heads: int) -> Any:
    layer = torch.nn.TransformerDecoderLayer(
        EMBED_DIM, heads, dim_feedforward=FEEDFORWARD_DIM, dropout=0.0, batch_first=spec.batch_first
    )
    return layer.train()


def _build_decoder(torch: Any, spec: ConsumerSpec, heads: int) -> Any:
    return torch.nn.TransformerDecoder(_build_decoder_layer(torch, spec, heads), num_layers=1).train()


def _build_transformer(torch: Any, spec: ConsumerSpec, heads: int) -> Any:
    model = torch.nn.Transformer(
        EMBED_DIM,
        heads,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dim_feedforward=FEEDFORWARD_DIM,
        dropout=0.0,
        batch_first=spec.batch_first,
    )
    return model.train()


def _call_attention(harness: Harness, mask: Any, examples: slice) -> Any:
    query = harness._layout(harness.query[examples])
    keys = harness._layout(harness.keys[examples])
    return harness.module(query, keys, keys, attn_mask=mask, need_weights=False)[0]


def _call_attention_function(harness: Harness, mask: Any, examples: slice) -> Any:
    module = harness.module
    query = harness._layout(harness.query[examples])
    keys = harness._layout(harness.keys[examples])
    output, _ = harness.torch.nn.functional.multi_head_attention_forward(
        query,
        keys,
        keys,
        EMBED_DIM,
        module.num_heads,
        module.in_proj_weight,
        module.in_proj_bias,
        None,
        None,
        False,
        0.0,
        module.out_proj.weight,
        module.out_proj.bias,
        training=False,
        need_weights=False,
        attn_mask=mask,
    )
    return output


def _call_encoder(harness: Harness, mask: Any, examples: slice) -> Any:
    source = harness._layout(harness.query[examples])
    return harness.module(source, **{harness.spec.argument: mask})


def _call_decoder(harness: Harness, mask: Any, examples: slice) -> Any:
    # The mask covers target positions (L) and, for memory_mask, memory positions (S).
    memory = harness.keys if harness.spec.argument == "memory_mask" else harness.other
    target = harness._layout(harness.query[examples])
    return harness.module(target, harness._layout(memory[examples]), **{harness.spec.argument: mask})


def _call_transformer(harness: Harness, mask: Any, examples: slice) -> Any:
    # The masked attention always has the query tensor (length L) as its queries. Under src_mask that is the
    # source sequence, and the target (length `other`) is what the model returns.
    argument = harness.spec.argument
    if argument == "src_mask":
        source, target = harness.query, harness.other
    else:
        source, target = (harness.keys if argument == "memory_mask" else harness.other), harness.query
    return harness.module(harness._layout(source[examples]), harness._layout(target[examples]), **{argument: mask})


_BUILDERS: Dict[str, Callable[[Any, ConsumerSpec, int], Any]] = {
    "multi_head_attention": _build_attention,
    "multi_head_attention_forward": _build_attention,
    "encoder_layer": _build_encoder_layer,
    "encoder": _build_encoder,
    "decoder_layer": _build_decoder_layer,
    "decoder": _build_decoder,
    "transformer": _build_transformer,
}

_CALLS: Dict[str, Callable[[Harness, Any, slice], Any]] = {
    "multi_head_attention": _call_attention,
    "multi_head_attention_forward": _call_attention_function,
    "encoder_layer": _call_encoder,
    "encoder": _call_encoder,
    "decoder_layer": _call_decoder,
    "decoder": _call_decoder,
    "transformer": _call_transformer,
}


def output_error(torch: Any, output: Any, reference: Any) -> float:
    """Return the largest absolute difference; a NaN or a shape mismatch counts as infinitely wrong."""
    if tuple(output.shape) != tuple(reference.shape):
        return float("inf")
    if output.numel() == 0:
        return 0.0
    error = float((output - reference).abs().max())
    # max() propagates NaN, and NaN compares unequal to itself.
    return error if error == error else float("inf")
