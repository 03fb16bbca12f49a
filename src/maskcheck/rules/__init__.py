"""Rule registry. Every module in this package that defines `CODE` and `check` is a rule; nothing is listed by hand.

A rule's `check(use, settings)` receives one mask value that reaches an attention call and returns `Issue`s.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, FrozenSet, Optional, Tuple

import libcst as cst


@dataclass(frozen=True)
class Issue:
    """A rule violation before positions are known: the node to point at, the message and the fix."""

    code: str
    node: cst.CSTNode
    message: str
    replacement: Optional[str] = None
    # For the runtime verifier: the mask use the issue is about, what its source holds, and size roles by text.
    use: Optional[object] = None
    source_kind: Optional[str] = None
    sizes: Tuple[Tuple[str, str], ...] = ()


def _discover() -> Dict[str, ModuleType]:
    rules: Dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        code = getattr(module, "CODE", None)
        if isinstance(code, str) and callable(getattr(module, "check", None)):
            rules[code] = module
    return rules


RULES: Dict[str, ModuleType] = _discover()
KNOWN_CODES: FrozenSet[str] = frozenset(RULES)
