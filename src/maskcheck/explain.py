"""`maskcheck --explain CODE`: print a rule's documentation page, docs/rules/CODE.md."""

from __future__ import annotations

import pathlib
from typing import Optional

from maskcheck.rules import RULES

# The rule pages live in the source tree, next to the package folder (src/maskcheck -> docs/rules).
RULE_DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "rules"


def rule_page_path(code: str) -> pathlib.Path:
    return RULE_DOCS / f"{code}.md"


def explain(code: str) -> Optional[str]:
    """Return the rule's page, or its module docstring when the page is not installed; None for an unknown code.

    NOTE: the pages are not part of the built wheel, so an installation from a wheel prints the docstring. An
    editable installation or a run from the source tree prints the page.
    """
    module = RULES.get(code.strip().upper())
    if module is None:
        return None
    path = rule_page_path(module.CODE)
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        doc = (module.__doc__ or "").strip()
        return f"# {module.CODE}: {getattr(module, 'TITLE', '')}\n\n{doc}\n"
