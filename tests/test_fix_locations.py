"""Where a fix goes: the exact text of the flagged expression, and masks built in another module."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from maskcheck.engine import check_source
from maskcheck.findings import source_lines, text_in_range

CROSS_MODULE = REPO_ROOT / "fixtures" / "cross_module"

# One parenthesised and one multi-line head-major repeat, both inside an indented method body.
SHAPED_BLOCK = """\
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, pair_mask):
        first = (pair_mask.repeat(self.num_heads, 1, 1))
        out = self.attn(x, x, x, attn_mask=first)[0]
        second = pair_mask.repeat(
            self.num_heads,
            1,
            1,
        )
        return self.attn(out, out, out, attn_mask=second)[0]
"""
MULTI_LINE_EXPRESSION = """\
pair_mask.repeat(
            self.num_heads,
            1,
            1,
        )"""


def test_text_in_range_single_line():
    lines = source_lines("a = (f(m))\n")

    assert text_in_range(lines, 1, 5, 1, 9) == "f(m)"


def test_text_in_range_keeps_crlf_lines_as_lf():
    lines = source_lines("x = f(\r\n    m,\r\n)\r\n")

    assert text_in_range(lines, 1, 4, 3, 1) == "f(\n    m,\n)"


def test_text_in_range_ignores_form_feed():
    # str.splitlines would split at the form feed, which Python and libcst do not count as a line break.
    lines = source_lines("\x0cx = f(m)\ny = 1\n")

    assert text_in_range(lines, 2, 0, 2, 1) == "y"


def test_parenthesised_expression_is_exact():
    findings = check_source(SHAPED_BLOCK, "block.py")

    first = findings[0]
    assert (first.line, first.col, first.end_line, first.end_col) == (11, 18, 11, 56)
    assert first.expression == "pair_mask.repeat(self.num_heads, 1, 1)"


def test_multi_line_expression_keeps_indentation():
    findings = check_source(SHAPED_BLOCK, "block.py")

    second = findings[1]
    assert (second.line, second.end_line) == (13, 17)
    assert second.expression == MULTI_LINE_EXPRESSION


def test_expression_matches_file_text_for_every_fixture():
    """For every same-file finding in fixtures/, `expression` is the text between its start and end."""
    checked = 0
    for path in sorted((REPO_ROOT / "fixtures").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = source_lines(text)
        for finding in check_source(text, str(path)):
            if finding.in_other_file:
                continue
            located = text_in_range(lines, finding.line, finding.col - 1, finding.end_line, finding.end_col - 1)
            assert finding.expression == located, f"{path}:{finding.line}"
            checked += 1
    assert checked > 50


def test_fix_keeps_parentheses_and_indentation(tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "block.py"
    path.write_text(SHAPED_BLOCK)

    result = run_cli(["--quiet", "--no-cache", "--fix", "--unsafe-fixes", "block.py"])

    fixed = path.read_text()
    assert result.code == 0, result.err
    assert "        first = (pair_mask.repeat_interleave(self.num_heads, dim=0))\n" in fixed
    assert "        second = pair_mask.repeat_interleave(self.num_heads, dim=0)\n" in fixed
    assert check_source(fixed, str(path)) == []


# -- masks built in another module ----------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*.py")}


@pytest.fixture
def padding_helpers(tmp_path, monkeypatch):
    """A copy of the fixture package whose decoder calls a head-major helper in masking.py."""
    shutil.copytree(CROSS_MODULE / "padding_helpers", tmp_path / "padding_helpers")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "padding_helpers"


def test_other_module_finding_names_its_file(padding_helpers):
    path = padding_helpers / "decoder.py"

    (finding,) = check_source(path.read_text(), "padding_helpers/decoder.py")

    assert finding.in_other_file
    assert (finding.expression_path, finding.expression_line, finding.expression_col) == (
        "padding_helpers/masking.py",
        23,
        12,
    )
    masking_lines = source_lines((padding_helpers / "masking.py").read_text())
    assert masking_lines[22][11:].startswith(finding.expression)
    assert finding.replacement == "pair_mask.repeat_interleave(num_heads, dim=0)"


def test_other_module_path_absolute_like_given_path(padding_helpers, run_cli):
    decoder = str(padding_helpers.resolve() / "decoder.py")

    result = run_cli(["--no-cache", "--output-format", "json", decoder])

    (finding,) = json.loads(result.out)["findings"]
    assert finding["path"] == decoder
    assert finding["expression_location"]["path"] == str(padding_helpers.resolve() / "masking.py")
    assert f"returns a mask built in {padding_helpers.resolve() / 'masking.py'}:23" in finding["message"]


def test_fix_leaves_other_module_unchanged(padding_helpers, run_cli):
    before = snapshot(padding_helpers)

    result = run_cli(["--no-cache", "--fix", "--unsafe-fixes", "padding_helpers"])

    assert snapshot(padding_helpers) == before
    assert result.code == 1
    notes = [line for line in result.err.splitlines() if "fix not applied" in line]
    assert len(notes) == 1
    assert notes[0].startswith("padding_helpers/decoder.py:20:21: MSK101 fix not applied: the mask is built in "
                               "padding_helpers/masking.py:23:12, so the fix belongs in that file")
    assert "replace `torch.cat([pair_mask] * num_heads, dim=0)` with " in notes[0]


def test_diff_shows_nothing_for_other_module(padding_helpers, run_cli):
    result = run_cli(["--no-cache", "--diff", "--unsafe-fixes", "padding_helpers"])

    assert result.out == ""
    assert result.code == 0
    assert "fix not in the diff: the mask is built in padding_helpers/masking.py:23:12" in result.err


def test_json_gives_expression_location(padding_helpers, run_cli):
    result = run_cli(["--quiet", "--no-cache", "--output-format", "json", "padding_helpers"])

    (finding,) = json.loads(result.out)["findings"]
    assert finding["expression_location"] == {"path": "padding_helpers/masking.py", "line": 23, "column": 12}
    assert finding["fix"]["available"] is False
    assert finding["fix"]["note"].startswith("the mask is built in padding_helpers/masking.py:23:12")


def test_sarif_points_at_other_module(padding_helpers, run_cli):
    result = run_cli(["--quiet", "--no-cache", "--output-format", "sarif", "padding_helpers"])

    (sarif_result,) = json.loads(result.out)["runs"][0]["results"]
    assert "fixes" not in sarif_result
    (related,) = sarif_result["relatedLocations"]
    location = related["physicalLocation"]
    assert location["artifactLocation"]["uri"] == "padding_helpers/masking.py"
    assert location["region"] == {"startLine": 23, "startColumn": 12}


def test_fix_applies_same_file_findings(tmp_path, monkeypatch, run_cli):
    shutil.copytree(CROSS_MODULE / "stack_forwarding", tmp_path / "stack_forwarding")
    monkeypatch.chdir(tmp_path)
    masks_before = (tmp_path / "stack_forwarding" / "masks.py").read_bytes()

    result = run_cli(["--no-cache", "--fix", "--unsafe-fixes", "stack_forwarding"])

    model = (tmp_path / "stack_forwarding" / "model.py").read_text()
    assert "pair_mask.repeat_interleave(self.nhead, dim=0)" in model
    assert "alignment.repeat_interleave(self.nhead, dim=0)" in model
    assert (tmp_path / "stack_forwarding" / "masks.py").read_bytes() == masks_before
    assert result.code == 1
    assert "stack_forwarding/model.py:60:23: MSK101 fix not applied: the mask is built in " in result.err
