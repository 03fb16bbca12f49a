"""Rule pages: fixed headings, `--explain`, and every code example analysed with the documented result.

In a page's "Example" section, each line that ends with `# CODE` must produce exactly that finding and no other
line may produce one. Every example in "Use instead" must produce no finding.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import REPO_ROOT
from maskcheck.engine import check_source
from maskcheck.rules import RULES

RULE_DOCS = REPO_ROOT / "docs" / "rules"
HEADINGS = [
    "What it does",
    "Why it is a bug",
    "Example",
    "Use instead",
    "Fix safety",
    "What the analysis follows and what it does not",
    "References",
]
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)
MARKER = re.compile(r"#\s*(?P<code>[A-Z]+[0-9]+)\s*$")


def sections(page: str) -> Dict[str, str]:
    parts = re.split(r"^## (.+)$", page, flags=re.MULTILINE)
    return {parts[index].strip(): parts[index + 1] for index in range(1, len(parts), 2)}


def examples(page: str, heading: str) -> List[str]:
    return PYTHON_BLOCK.findall(sections(page)[heading])


def marked(code: str) -> List[Tuple[int, str]]:
    found = []
    for number, line in enumerate(code.splitlines(), start=1):
        match = MARKER.search(line)
        if match:
            found.append((number, match["code"]))
    return found


def page_of(code: str) -> str:
    return (RULE_DOCS / f"{code}.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("code", sorted(RULES))
def test_every_rule_has_a_page(code):
    assert (RULE_DOCS / f"{code}.md").is_file()


@pytest.mark.parametrize("code", sorted(RULES))
def test_page_has_fixed_headings(code):
    page = page_of(code)

    assert page.startswith(f"# {code}: {RULES[code].TITLE}\n")
    assert list(sections(page)) == HEADINGS


@pytest.mark.parametrize("code", sorted(RULES))
def test_examples_give_documented_findings(code, tmp_path):
    blocks = examples(page_of(code), "Example")
    assert blocks, "the Example section has no python block"

    for index, block in enumerate(blocks):
        expected = marked(block)
        assert expected, f"example {index + 1} marks no line with `# {code}`"
        # A real file path in an empty folder, so the analysis cannot pick up sibling modules.
        findings = check_source(block, str(tmp_path / f"example_{index}.py"))
        got = [(finding.line, finding.code) for finding in findings]
        assert got == expected, f"example {index + 1}:\n{block}"


@pytest.mark.parametrize("code", sorted(RULES))
def test_use_instead_gives_no_finding(code, tmp_path):
    blocks = examples(page_of(code), "Use instead")
    assert blocks, "the Use instead section has no python block"

    for index, block in enumerate(blocks):
        assert not marked(block), "a Use instead example must not mark a finding"
        findings = check_source(block, str(tmp_path / f"instead_{index}.py"))
        assert findings == [], f"Use instead example {index + 1} has findings: {[f.message for f in findings]}"


@pytest.mark.parametrize("code", sorted(RULES))
def test_fixes_turn_examples_into_use_instead_forms(code):
    """Each example's replacement appears in the page's Use instead code, so the two sections agree."""
    page = page_of(code)
    instead = "\n".join(examples(page, "Use instead"))

    for block in examples(page, "Example"):
        for finding in check_source(block, "example.py"):
            assert finding.replacement is not None
            assert finding.replacement in instead, finding.replacement


def test_explain_prints_the_page(run_cli):
    result = run_cli(["--explain", "MSK101"])

    assert result.code == 0
    assert result.out == page_of("MSK101")


def test_explain_accepts_lower_case(run_cli):
    assert run_cli(["--explain", "msk101"]).out == page_of("MSK101")


def test_explain_unknown_code(run_cli):
    result = run_cli(["--explain", "MSK999"])

    assert result.code == 2
    assert result.err == "maskcheck: error: unknown rule code 'MSK999'; known codes: MSK101\n"


def test_explain_falls_back_to_docstring(run_cli, monkeypatch):
    from maskcheck import explain

    monkeypatch.setattr(explain, "PACKAGED_RULE_DOCS", Path("/nonexistent"))
    monkeypatch.setattr(explain, "SOURCE_RULE_DOCS", Path("/nonexistent"))

    result = run_cli(["--explain", "MSK101"])

    assert result.code == 0
    assert result.out.startswith("# MSK101: head-major attention mask layout\n\nMSK101: a (N*num_heads, L, S)")


def test_explain_reads_packaged_page_first(run_cli, monkeypatch, tmp_path):
    """The wheel's copy (maskcheck/rule_docs) wins over the source tree, which a wheel installation lacks."""
    from maskcheck import explain

    packaged = tmp_path / "rule_docs"
    packaged.mkdir()
    (packaged / "MSK101.md").write_text("# MSK101: packaged page\n", encoding="utf-8")
    monkeypatch.setattr(explain, "PACKAGED_RULE_DOCS", packaged)

    result = run_cli(["--explain", "MSK101"])

    assert result.code == 0
    assert result.out == "# MSK101: packaged page\n"


def test_explain_reads_source_tree_without_packaged_page(run_cli, monkeypatch, tmp_path):
    from maskcheck import explain

    monkeypatch.setattr(explain, "PACKAGED_RULE_DOCS", tmp_path / "missing")

    assert run_cli(["--explain", "MSK101"]).out == page_of("MSK101")
