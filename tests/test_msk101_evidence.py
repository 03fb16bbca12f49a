"""MSK101 messages: the evidence each route states, comment-free quotes, product repeat counts and the
broadcast_to replacement."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import libcst as cst
import pytest

from maskcheck.analysis.names import code_without_comments, last_name, product_terms
from maskcheck.engine import check_source

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
EVIDENCE = re.compile(r"\(evidence: (?P<evidence>.*)\)$")

LAYER = """
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, groups):
        super().__init__()
        self.copies = groups
        self.num_heads = groups
        self.attn = nn.MultiheadAttention(dim, groups, batch_first=True)
"""


def findings_for(body: str):
    return check_source(LAYER + textwrap.indent(textwrap.dedent(body), "    "), "block.py")


def evidence_of(body: str) -> str:
    findings = findings_for(body)
    assert len(findings) == 1, [f.message for f in findings]
    match = EVIDENCE.search(findings[0].message)
    assert match is not None, findings[0].message
    return match.group("evidence")


def test_last_name_only_for_plain_names():
    assert last_name("self.cfg.num_heads") == "num_heads"
    assert last_name("num_heads") == "num_heads"
    assert last_name("bsz*self.num_heads") is None
    assert last_name("x.size(0)") is None


def test_product_terms_split_every_factor():
    assert product_terms("bsz*self.num_heads") == ("bsz", "self.num_heads")
    assert product_terms("(a*b)*x.size(0)") == ("a", "b", "x.size(0)")
    assert product_terms("num_heads") == ("num_heads",)
    assert product_terms("num_heads//2") == ("num_heads//2",)


def test_code_without_comments_joins_lines():
    node = cst.parse_expression("m.reshape(  # expect: MSK101\n    -1, L, S\n)")
    assert code_without_comments(node) == "m.reshape(-1, L, S)"


def test_code_without_comments_keeps_hash_in_strings():
    node = cst.parse_expression('f("# kept",  x)  ')
    assert code_without_comments(node) == 'f("# kept", x)'


@pytest.mark.parametrize(
    "count",
    ["bsz * self.num_heads", "self.num_heads * bsz", "x.size(0) * self.num_heads", "bsz * (self.num_heads)"],
)
def test_product_count_of_shared_mask_is_silent(count):
    body = f"""
    def forward(self, x, attn_mask, bsz):
        return self.attn(x, x, x, attn_mask=attn_mask.repeat({count}, 1, 1))[0]
    """
    assert findings_for(body) == []


def test_product_count_of_per_example_mask_is_silent():
    # The outer product makes axis 0 the batch. A bsz * heads count then gives N * N * heads slots, which the
    # layer rejects, so there is no head-major layout to report.
    body = """
    def forward(self, x, x_valid, bsz):
        pair = x_valid[:, :, None] & x_valid[:, None, :]
        return self.attn(x, x, x, attn_mask=pair.repeat(bsz * self.num_heads, 1, 1))[0]
    """
    assert findings_for(body) == []


def test_plain_head_count_name_still_flags():
    body = """
    def forward(self, x, mask):
        return self.attn(x, x, x, attn_mask=mask.repeat(self.num_heads, 1, 1))[0]
    """
    evidence = evidence_of(body)
    assert evidence.startswith("`self.num_heads` names the head count; ")
    assert evidence.endswith("so the other factor is the batch, as the (N*num_heads, L, S) shape requires")


def test_guard_evidence_infers_head_count():
    body = """
    def forward(self, x, mask):
        assert mask.shape[0] == x.shape[0]
        return self.attn(x, x, x, attn_mask=mask.repeat(self.copies, 1, 1))[0]
    """
    evidence = evidence_of(body)
    assert "the guard `mask.shape[0] == x.shape[0]` shows axis 0 of `mask` is the batch" in evidence
    assert "the other factor (`self.copies`) is then the head count" in evidence
    assert "the other factor is the batch" not in evidence


@pytest.mark.parametrize(
    "construction",
    [
        "x_valid[:, :, None] & m_valid[:, None, :]",
        "x_valid.unsqueeze(2) * m_valid.unsqueeze(1)",
        "torch.logical_and(x_valid.unsqueeze(-1), m_valid.unsqueeze(-2))",
        "x_valid.unsqueeze(-1).logical_or(m_valid.unsqueeze(-2))",
        "torch.matmul(x_valid.unsqueeze(2).float(), m_valid.unsqueeze(1).float())",
    ],
)
def test_outer_product_evidence_infers_head_count(construction):
    body = f"""
    def forward(self, x, x_valid, m_valid):
        pair = {construction}
        return self.attn(x, x, x, attn_mask=(pair == 0).repeat(self.copies, 1, 1))[0]
    """
    evidence = evidence_of(body)
    # Evidence quotes are cut to 60 characters.
    quoted = construction if len(construction) <= 60 else construction[:57] + "..."
    assert f"`{quoted}` is" in evidence
    assert "outer product of (N, L, 1) and (N, 1, S) tensors, so its axis 0 is the batch" in evidence
    assert "the other factor (`self.copies`) is then the head count" in evidence
    assert "the other factor is the batch" not in evidence


def test_partial_broadcast_is_no_outer_product():
    body = """
    def forward(self, x, x_pad, causal):
        blocked = x_pad[:, None, :] | causal[None]
        return self.attn(x, x, x, attn_mask=blocked.repeat(self.copies, 1, 1))[0]
    """
    assert findings_for(body) == []


def test_batch_name_evidence_infers_head_count():
    body = """
    def forward(self, x, bias, bsz):
        return self.attn(x, x, x, attn_mask=bias.repeat_interleave(bsz, dim=0))[0]
    """
    evidence = evidence_of(body)
    assert evidence.startswith("`bsz` names the batch size; ")
    assert evidence.endswith("the other factor is then the head count, as the (N*num_heads, L, S) shape requires")


def test_multi_line_quote_drops_comment():
    path = FIXTURES / "truth_table" / "example_mask_unsqueeze.py"
    findings = check_source(path.read_text(encoding="utf-8"), str(path))
    multi_line = [f for f in findings if f.end_line > f.line]
    assert multi_line, "the fixture no longer has a multi-line flagged expression"
    for finding in multi_line:
        quote = finding.message.split("`")[1]
        assert "#" not in quote, finding.message
        assert "expect" not in quote, finding.message


@pytest.mark.parametrize(
    ("expression", "replacement"),
    [
        (
            "torch.broadcast_to(mask.unsqueeze(0), (self.num_heads, N, L, S)).reshape(-1, L, S)",
            "torch.broadcast_to(mask.unsqueeze(1), (N, self.num_heads, L, S)).reshape(-1, L, S)",
        ),
        (
            "torch.broadcast_to(mask[None], [self.num_heads, N, L, S]).reshape(-1, L, S)",
            "torch.broadcast_to(mask[:, None], [N, self.num_heads, L, S]).reshape(-1, L, S)",
        ),
        (
            "mask.unsqueeze(0).broadcast_to((self.num_heads, N, L, S)).flatten(0, 1)",
            "mask.unsqueeze(1).broadcast_to((N, self.num_heads, L, S)).flatten(0, 1)",
        ),
        (
            "mask[None].broadcast_to(self.num_heads, -1, -1, -1).flatten(0, 1)",
            "mask[:, None].broadcast_to(-1, self.num_heads, -1, -1).flatten(0, 1)",
        ),
        (
            "torch.broadcast_to(mask, (self.num_heads, N, L, S)).reshape(-1, L, S)",
            "torch.broadcast_to(mask.unsqueeze(1), (N, self.num_heads, L, S)).reshape(-1, L, S)",
        ),
        (
            "mask.broadcast_to((self.num_heads, N, L, S)).reshape(-1, L, S)",
            "mask.unsqueeze(1).broadcast_to((N, self.num_heads, L, S)).reshape(-1, L, S)",
        ),
        (
            "torch.unsqueeze(mask, 0).expand(self.num_heads, N, L, S).reshape(-1, L, S)",
            "torch.unsqueeze(mask, 1).expand(N, self.num_heads, L, S).reshape(-1, L, S)",
        ),
    ],
)
def test_head_major_broadcast_replacement(expression, replacement):
    body = f"""
    def forward(self, x, mask):
        N, L, S = mask.shape
        return self.attn(x, x, x, attn_mask={expression})[0]
    """
    findings = findings_for(body)
    assert len(findings) == 1, [f.message for f in findings]
    assert f"use `{replacement}` instead" in findings[0].message
