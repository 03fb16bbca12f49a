"""`maskcheck --explain CODE`: print a rule's documentation page, docs/rules/CODE.md."""

from __future__ import annotations

import pathlib
from typing import List, Optional

from maskcheck.rules import RULES

# docs/rules is the only copy of the pages. A wheel ships them as maskcheck/rule_docs/ (the package-dir mapping in
# pyproject.toml), and a source checkout or an editable installation reads them from docs/rules.
PACKAGED_RULE_DOCS = pathlib.Path(__file__).resolve().parent / "rule_docs"
SOURCE_RULE_DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "rules"


def rule_page_paths(code: str) -> List[pathlib.Path]:
    """Return where the page of `code` may be, in the order `explain` tries them."""
    return [folder / f"{code}.md" for folder in (PACKAGED_RULE_DOCS, SOURCE_RULE_DOCS)]


def explain(code: str) -> Optional[str]:
    """Return the rule's page, or its module docstring when no page is found; None for an unknown code.

    The docstring is printed only when the installation lacks the pages, for example one copied without its
    package data.
    """
    module = RULES.get(code.strip().upper())
    if module is None:
        return None
    for path in rule_page_paths(module.CODE):
        try:
            return path.read_text(encoding="utf-8")
        except OSError:
            continue
    doc = (module.__doc__ or "").strip()
    return f"# {module.CODE}: {getattr(module, 'TITLE', '')}\n\n{doc}\n"
