"""The verifier's result type and its error for a missing torch. Importing this module imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

CONFIRMED = "confirmed"
BENIGN = "benign"
INCONCLUSIVE = "inconclusive"

INSTALL_COMMAND = "pip install 'maskcheck[verify]'"


class VerifierUnavailable(Exception):
    """torch cannot be imported, so no finding can be replayed. The message is one line with the install command."""

    def __init__(self, detail: str = "") -> None:
        message = (
            f"the runtime verifier (--verify) needs torch, which could not be imported{detail}; "
            # The extra requires torch>=1.9, so installing it alone lets pip pick a torch build, often a CUDA build
            # of several GB.
            "install the torch build you want first (for example pip install torch==<version> einops, "
            f"or a CPU or CUDA build from pytorch.org), then {INSTALL_COMMAND}"
        )
        super().__init__(message)


@dataclass
class Verdict:
    """What replaying one finding's mask construction with real tensors showed.

    `status` is "confirmed" when a slot of the mask contains another example's or head's content and the attention
    outputs differ from each example run alone. It is "benign" when no wrong slot order changes the outputs, and
    "inconclusive" when the chain could not be replayed (`reason` names the operation or name and its line:col).
    `max_error` is the largest absolute output difference against the per-example runs over all configurations,
    or None when no consumer ran. `slot_map` lists the slots that received foreign content (confirmed only).
    `fix_verified` is True when the finding's replacement, replayed the same way, matches the per-example runs in
    every configuration.
    """

    status: str
    max_error: Optional[float] = None
    slot_map: List[str] = field(default_factory=list)
    reason: str = ""
    fix_verified: bool = False

    def summary(self) -> str:
        """Format the verdict as one line for a finding's message, e.g. `confirmed (max error 9.05e-01; ...)`."""
        parts = []
        if self.max_error is not None:
            parts.append(f"max error {self.max_error:.2e}")
        if self.slot_map:
            shown = self.slot_map[:2]
            more = len(self.slot_map) - len(shown)
            parts.append("; ".join(shown) + (f"; {more} more slot(s)" if more else ""))
        if self.status != CONFIRMED and self.reason:
            parts.append(self.reason.rstrip("."))
        if self.fix_verified:
            parts.append("fix verified")
        return f"{self.status} ({'; '.join(parts)})" if parts else self.status
