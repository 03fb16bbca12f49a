"""Runtime verification of MSK101 findings: replay each mask construction with real torch on synthetic masks.

Importing this package does not import torch. `verify_chain` and `verify_findings` import it on first use and
raise VerifierUnavailable when it is missing.
"""

from __future__ import annotations

from typing import Iterable, List

from maskcheck.chain import ReplayChain
from maskcheck.findings import Finding
from maskcheck.verify.verdict import BENIGN, CONFIRMED, INCONCLUSIVE, Verdict, VerifierUnavailable

__all__ = [
    "BENIGN",
    "CONFIRMED",
    "INCONCLUSIVE",
    "Verdict",
    "VerifierUnavailable",
    "verify_chain",
    "verify_findings",
]


def verify_chain(chain: ReplayChain) -> Verdict:
    """Replay one construction chain and return its verdict. Raises VerifierUnavailable without torch."""
    return verify_findings([_ChainOnly(chain)])[0]


def verify_findings(findings: Iterable[Finding]) -> List[Verdict]:
    """Return one verdict per finding, in order. All replays share one process, one torch import and one thread.

    A finding without a chain is inconclusive. Raises VerifierUnavailable without torch.
    """
    from maskcheck.verify.verifier import get_runtime

    findings = list(findings)
    runtime = get_runtime()
    verdicts = []
    with runtime.session():
        for finding in findings:
            verdicts.append(_verify_one(runtime, finding))
    return verdicts


def _verify_one(runtime, finding) -> Verdict:
    chain = finding.chain
    if chain is None:
        return Verdict(
            INCONCLUSIVE,
            reason="The analyser recorded no construction chain for this finding, so it cannot be replayed.",
        )
    # A finding's replacement replaces its `expression`, which may be only part of the flagged step.
    expression = getattr(finding, "expression", "")
    if getattr(finding, "replacement", None) != chain.replacement:
        expression = ""
    # A mask built in another module is flagged there, so this file's position does not locate the step.
    line, column = getattr(finding, "line", 0), getattr(finding, "col", 0)
    in_this_file = line > 0 and not getattr(finding, "in_other_file", False)
    try:
        return runtime.verify(chain, expression, (line, column) if in_this_file else None)
    except Exception as error:  # noqa: BLE001 - one bad chain must not stop the other findings' verdicts
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return Verdict(
            INCONCLUSIVE,
            reason=f"The verifier failed on this chain ({type(error).__name__}: {message}); please report it.",
        )


class _ChainOnly:
    """A stand-in finding that carries only a chain, whose replacement stands for the whole flagged step."""

    def __init__(self, chain: ReplayChain) -> None:
        self.chain = chain
        self.expression = ""
        self.replacement = chain.replacement
