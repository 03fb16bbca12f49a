"""Replay a finding's construction chain in every configuration and turn the comparison into a Verdict."""

from __future__ import annotations

import contextlib
import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from maskcheck.chain import (
    ROLE_BATCH,
    ROLE_HEADS,
    ROLE_KEY,
    ROLE_QUERY,
    SOURCE_EXAMPLE_HEAD,
    SOURCE_HEAD,
    SOURCE_PADDING,
    SOURCE_SHARED,
    ReplayChain,
)
from maskcheck.verify import consumers
from maskcheck.verify.consumers import CONFIGURATIONS, TOLERANCE, Configuration, ConsumerSpec, Harness
from maskcheck.verify.replay import ReplayError, Step, replay_steps
from maskcheck.verify.verdict import BENIGN, CONFIRMED, INCONCLUSIVE, Verdict, VerifierUnavailable

_ROLES = (ROLE_BATCH, ROLE_HEADS, ROLE_QUERY, ROLE_KEY)


@dataclass
class _Outcome:
    """The replay of one chain (or its replacement) in one configuration."""

    config: Configuration
    error: Optional[str] = None
    max_error: float = 0.0
    foreign: List[str] = field(default_factory=list)  # slot-map lines for slots with another example's content
    slots: int = 0
    values_changed: bool = False  # the chain changed the mask's values, and the error compares like with like


class Runtime:
    """The imported torch, with the consumers, sources and reference outputs built so far in this process."""

    def __init__(self, torch: Any, einops: Any) -> None:
        self.torch = torch
        self.einops = einops
        self._sources: Dict[Tuple[str, Configuration], Any] = {}
        self._candidates: Dict[Tuple[str, Configuration], consumers.SlotCandidates] = {}
        self._harnesses: Dict[Tuple[ConsumerSpec, Configuration], Harness] = {}
        self._references: Dict[Tuple[ConsumerSpec, Configuration, str], Any] = {}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Run with one intra-op thread, no autograd and torch's warnings silenced; restore the thread count after.

        One thread avoids the thread-pool start-up and contention that made these tiny operations several times
        slower with two threads.
        """
        threads = self.torch.get_num_threads()
        self.torch.set_num_threads(1)
        try:
            with self.torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            self.torch.set_num_threads(threads)

    # -- one chain ------------------------------------------------------------------------------------------

    def verify(
        self, chain: ReplayChain, flagged_expression: str = "", expression_at: Optional[Tuple[int, int]] = None
    ) -> Verdict:
        """Replay `chain` (and its replacement) in every configuration and decide the verdict.

        `flagged_expression` is the source text that `chain.replacement` replaces (a finding's `expression`), for
        when it is only part of the flagged step's expression, and `expression_at` its 1-based (line, column) in the
        file. Without `flagged_expression` the replacement stands for the whole step.
        """
        if chain.source_kind not in consumers.SOURCE_KINDS:
            return Verdict(
                INCONCLUSIVE, reason=f"The source kind {chain.source_kind!r} is not one the verifier can synthesise."
            )
        unknown_roles = sorted({role for role in chain.sizes.values() if role not in _ROLES})
        if unknown_roles:
            return Verdict(INCONCLUSIVE, reason=f"The size roles {unknown_roles} are not N, H, L or S.")

        spec = consumers.resolve_consumer(
            chain.consumer,
            chain.batch_first,
            chain.argument,
            frozenset(chain.sizes.values()),
        )
        steps = [Step(step.target, step.code, step.line, step.col) for step in chain.steps]

        if not steps:
            return Verdict(
                INCONCLUSIVE,
                reason="The chain records no step between the source and the consumer, so there is nothing to replay.",
            )

        outcomes = [
            self._replay(chain, steps, spec, base, None, flagged_expression, map_slots=True) for base in CONFIGURATIONS
        ]
        fix_verified = self._fix_verified(chain, steps, spec, flagged_expression, expression_at)
        verdict = _decide(chain.source_kind, spec, outcomes)
        verdict.fix_verified = fix_verified
        if spec.note:
            verdict.reason = f"{verdict.reason} {spec.note}"
        return verdict

    def _fix_verified(
        self,
        chain: ReplayChain,
        steps: List[Step],
        spec: ConsumerSpec,
        flagged_expression: str,
        expression_at: Optional[Tuple[int, int]],
    ) -> bool:
        if chain.replacement is None or not 0 <= chain.flagged_step < len(steps):
            return False
        step = steps[chain.flagged_step]
        code = step.code
        if flagged_expression and flagged_expression != code:
            # `x.reshape(...).to(device)` flagged at `x.reshape(...)`: replace that expression where the fix will,
            # and keep the rest of the step. The same text may occur twice in a step, so place it by position.
            start = _offset_in_step(step, code, flagged_expression, expression_at)
            if start is None:
                return False
            code = code[:start] + chain.replacement + code[start + len(flagged_expression) :]
        else:
            code = chain.replacement
        replacement = (chain.flagged_step, code)
        for base in CONFIGURATIONS:
            outcome = self._replay(chain, steps, spec, base, replacement, chain.replacement, map_slots=False)
            if outcome.error is not None or not outcome.max_error <= TOLERANCE:
                return False
        return True

    def _replay(
        self,
        chain: ReplayChain,
        steps: List[Step],
        spec: ConsumerSpec,
        base: Configuration,
        replacement: Optional[Tuple[int, str]],
        flagged_text: str,
        map_slots: bool,
    ) -> _Outcome:
        """Replay one chain in one configuration and compare the consumer's outputs with the per-example runs.

        `flagged_text` picks the branch of a conditional expression. With `map_slots`, a mismatch is explained
        slot by slot; matching outputs need no slot map.
        """
        config = spec.configuration(base)
        outcome = _Outcome(config)
        source = self._source(chain.source_kind, config)

        role_sizes = config.role_sizes()
        bindings: Dict[str, Any] = {text: role_sizes[role] for text, role in chain.sizes.items()}
        bindings[chain.source_name] = source
        try:
            mask = replay_steps(steps, bindings, self.torch, self.einops, replacement, flagged_text or "")
        except ReplayError as error:
            outcome.error = f"{error} (with {config.label})" if error.depends_on_sizes else str(error)
            return outcome

        if not isinstance(mask, self.torch.Tensor):
            outcome.error = f"The chain's last step gives a {type(mask).__name__}, not a tensor (with {config.label})"
            return outcome

        harness = self._harness(spec, config)
        try:
            output = harness.run(mask, slice(None))
        except Exception as error:  # the consumer's own shape and dtype checks raise several types
            lines = str(error).strip().splitlines()
            message = lines[0].rstrip(".") if lines else ""
            outcome.error = f"{spec.display} raised {type(error).__name__}: {message} (with {config.label})"
            return outcome

        reference = self._reference(chain.source_kind, spec, config, harness)
        outcome.max_error = consumers.output_error(self.torch, output, reference)
        if outcome.max_error <= TOLERANCE:
            return outcome

        # The outputs differ. Find out which content each slot holds, and compare again with a batch-major mask
        # in the chain's own values, so that an inverted or additive mask is not mistaken for a wrong order.
        candidates = self._slot_candidates(chain.source_kind, config)
        match = consumers.match_slots(self.torch, mask, candidates, config)
        outcome.slots = config.batch * config.heads
        if match is None:
            outcome.error = (
                f"The consumer accepted a mask of shape {tuple(mask.shape)}, which does not map onto "
                f"{outcome.slots} (example, head) slots (with {config.label})"
            )
            return outcome
        ideal = consumers.batch_major_mask(self.torch, match, candidates, mask, config)
        if ideal is not None:
            outcome.values_changed = True
            try:
                outcome.max_error = consumers.output_error(self.torch, output, harness.run(ideal, slice(None)))
            except Exception:  # a value form the consumer rejects in batch-major order too: keep the plain error
                outcome.values_changed = False
        if map_slots:
            self._map_slots(match, candidates, config, outcome)
        return outcome

    def _map_slots(
        self, match: consumers.SlotMatch, candidates: consumers.SlotCandidates, config: Configuration, outcome: _Outcome
    ) -> None:
        matches = match.matches
        holds_own = matches[self.torch.arange(outcome.slots), candidates.expected]
        if bool(holds_own.all()):
            return
        first_held = matches.to(self.torch.uint8).argmax(1).tolist()
        holds_any = matches.any(1).tolist()
        for slot in (~holds_own).nonzero().flatten().tolist():
            if holds_any[slot]:
                content = candidates.labels[first_held[slot]]
            else:
                content = f"content that matches {candidates.unmatched_label}"
            example, head = divmod(slot, config.heads)
            outcome.foreign.append(f"slot {slot} (example {example}, head {head}) received {content}")

    # -- caches ---------------------------------------------------------------------------------------------

    def _source(self, kind: str, config: Configuration) -> Any:
        key = (kind, config)
        if key not in self._sources:
            self._sources[key] = consumers.make_source(self.torch, kind, config)
        return self._sources[key]

    def _slot_candidates(self, kind: str, config: Configuration) -> consumers.SlotCandidates:
        key = (kind, config)
        if key not in self._candidates:
            self._candidates[key] = consumers.slot_candidates(self.torch, kind, self._source(kind, config), config)
        return self._candidates[key]

    def _harness(self, spec: ConsumerSpec, config: Configuration) -> Harness:
        key = (spec, config)
        if key not in self._harnesses:
            self._harnesses[key] = Harness(self.torch, spec, config)
        return self._harnesses[key]

    def _reference(self, kind: str, spec: ConsumerSpec, config: Configuration, harness: Harness) -> Any:
        key = (spec, config, kind)
        if key not in self._references:
            masks = consumers.own_masks(kind, self._source(kind, config), config)
            outputs = [harness.run(masks[b], slice(b, b + 1)) for b in range(config.batch)]
            self._references[key] = self.torch.cat(outputs)
        return self._references[key]


# The content of one mask slot, by source kind, as the verdict's reason names it.
_CONTENT = {
    SOURCE_HEAD: "head's bias",
    SOURCE_EXAMPLE_HEAD: "(example, head) pair's mask",
    SOURCE_PADDING: "example's padding mask",
    SOURCE_SHARED: "copy of the shared mask",
}


def _decide(kind: str, spec: ConsumerSpec, outcomes: Sequence[_Outcome]) -> Verdict:
    for outcome in outcomes:
        if outcome.error is not None:
            return Verdict(INCONCLUSIVE, reason=_sentence(outcome.error))

    max_error = max(outcome.max_error for outcome in outcomes)
    labels = " and ".join(outcome.config.label for outcome in outcomes)
    content = _CONTENT.get(kind, "example's mask")
    for outcome in outcomes:
        if outcome.max_error > TOLERANCE and outcome.foreign:
            reason = (
                f"{len(outcome.foreign)} of {outcome.slots} slots of the mask given to {spec.display} contain another "
                f"{content} with {outcome.config.label}, and the outputs differ from each example run alone."
            )
            return Verdict(CONFIRMED, max_error, list(outcome.foreign), reason)

    if max_error > TOLERANCE:
        reason = (
            f"Every slot contains its own {content}, so the slot order is right, but the outputs still differ from "
            f"each example run alone by {max_error:.2e}, for a reason the slot map cannot show."
        )
    elif kind == SOURCE_SHARED:
        reason = (
            "The source is one (L, S) mask shared by every example and head, so the slot order cannot change the "
            "outputs."
        )
    elif any(outcome.values_changed for outcome in outcomes):
        reason = (
            f"Every slot contains its own {content} in the values the chain gives it (inverted, float or additive), "
            f"and with those values the outputs match each example run alone with {labels}."
        )
    else:
        reason = (
            f"The outputs match each example run alone with {labels}; the sources differ per "
            f"{'head' if kind == SOURCE_HEAD else 'example'}, so a slot with another {content} would show."
        )
    return Verdict(BENIGN, max_error, [], reason)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


# -- torch loading -------------------------------------------------------------------------------------------

_RUNTIME: Optional[Runtime] = None


def get_runtime() -> Runtime:
    """Import torch (and einops, when installed) once per process and return the shared runtime.

    Raises VerifierUnavailable when torch cannot be imported.
    """
    global _RUNTIME
    if _RUNTIME is None:
        with warnings.catch_warnings():
            # torch 2.x warns at import when numpy is missing; the verifier never uses numpy.
            warnings.filterwarnings("ignore", message=".*Failed to initialize NumPy.*")
            try:
                torch = importlib.import_module("torch")
            except Exception as error:  # a missing package raises ImportError, a broken install other errors
                detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise VerifierUnavailable(f" ({detail})") from None
        try:
            einops = importlib.import_module("einops")
        except ImportError:
            einops = None
        _RUNTIME = Runtime(torch, einops)
    return _RUNTIME


def _offset_in_step(
    step: Step, code: str, expression: str, expression_at: Optional[Tuple[int, int]]
) -> Optional[int]:
    """Return where `expression` starts inside the step's `code`, or None when its place is ambiguous.

    The finding's position decides. When it does not point into the step, a text that occurs once still does.
    """
    unique = code.index(expression) if code.count(expression) == 1 else None
    if expression_at is None:
        return unique
    line, column = expression_at
    lines = code.split("\n")
    row = line - step.line
    if not 0 <= row < len(lines):
        return unique
    # The step's first line starts at the step's column; later lines start at column 1 of the file.
    start_column = column - step.col if row == 0 else column - 1
    offset = sum(len(text) + 1 for text in lines[:row]) + start_column
    if start_column >= 0 and code[offset : offset + len(expression)] == expression:
        return offset
    return unique
