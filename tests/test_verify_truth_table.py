"""Replay mask-expansion expressions whose behaviour was measured on torch 2.13 and check the verifier's verdict.

Each case is an expression that expands a source mask for nn.MultiheadAttention. Its behaviour was measured by
running it against per-example runs: right (the verifier returns benign), silently wrong (confirmed), or raising
(inconclusive, naming torch's error). Two expressions measured as wrong are wrong for a reason other than slot
order: an inverted bool mask and a 0/1 float mask, both measured against a source where True means masked. The
chain does not say which polarity the source uses, so the verifier compares with a batch-major mask in the chain's
own values and calls them benign, naming the change of values in its reason.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the runtime verifier needs torch: pip install torch==2.13.0")
pytest.importorskip("einops", reason="the einops cases need einops: pip install einops")

from maskcheck.chain import ChainStep, ReplayChain  # noqa: E402
from maskcheck.verify import verify_chain  # noqa: E402
from maskcheck.verify.consumers import TOLERANCE  # noqa: E402

RIGHT = "right"
WRONG = "wrong"
VALUES = "values"  # measured wrong, but every slot contains its own example's mask in other values
RAISES = "raises"

SIZES = {"N": "N", "H": "H", "L": "L", "S": "S"}

# (source kind, source name, expression, measured behaviour, torch's error text for RAISES, a correct replacement)
EXAMPLE_CASES = [
    ("m.repeat_interleave(H, dim=0)", RIGHT, None),
    ("torch.repeat_interleave(m, torch.full((N,), H), dim=0)", RIGHT, None),
    ("m.repeat(H, 1, 1)", WRONG, None),
    ("m.tile((H, 1, 1))", WRONG, None),
    ("torch.cat([m] * H, 0)", WRONG, None),
    ("torch.cat([m[i:i+1].repeat(H,1,1) for i in range(N)], 0)", RIGHT, None),
    ("torch.stack([m] * H, 1).flatten(0, 1)", RIGHT, None),
    ("torch.stack([m] * H, 0).flatten(0, 1)", WRONG, None),
    ("m.unsqueeze(1).expand(-1, H, -1, -1).reshape(-1, L, S)", RIGHT, None),
    ("m.unsqueeze(0).expand(H, -1, -1, -1).reshape(-1, L, S)", WRONG, None),
    (
        "m.view(N,1,L,S).expand(N,H,L,S).view(N*H,L,S)",
        RAISES,
        "view size is not compatible with input tensor's size and stride",
    ),
    ("m.unsqueeze(1).expand(N,H,L,S).transpose(0,1).reshape(-1,L,S)", WRONG, None),
    ("m.unsqueeze(1).broadcast_to(N,H,L,S).reshape(N*H,L,S)", RIGHT, None),
    ("m[:, None].repeat(1, H, 1, 1).flatten(0, 1)", RIGHT, None),
    ("m[None].repeat(H, 1, 1, 1).flatten(0, 1)", WRONG, None),
    ("m.unsqueeze(1).tile((1, H, 1, 1)).view(-1, L, S)", RIGHT, None),
    ("m.repeat(1, H, 1).view(N*H, L, S)", RIGHT, None),
    ("m.tile((1, H, 1)).view(N*H, L, S)", RIGHT, None),
    ("m.repeat(1, 1, H).view(N*H, L, S)", WRONG, None),
    ("m.repeat(H,1,1).view(H,N,L,S).transpose(0,1).reshape(-1,L,S)", RIGHT, None),
    ("m.index_select(0, torch.arange(N*H) // H)", RIGHT, None),
    ("m[torch.arange(N*H) % N]", WRONG, None),
    (
        "m.expand(N*H, L, S)",
        RAISES,
        "The expanded size of the tensor (6) must match the existing size (3) at non-singleton dimension 0",
    ),
    ("m.expand(H, N, L, S).reshape(-1, L, S)", WRONG, None),
    ("m.repeat_interleave(H)", RAISES, "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D tensor instead"),
    ("m", RAISES, "The shape of the 3D attn_mask is torch.Size([3, 4, 5]), but should be (6, 4, 5)"),
    ("m.unsqueeze(1)", RAISES, "expected `attn_mask` to be `None`, 2-D or 3-D but found 4-D tensor instead"),
    (
        "m.transpose(1, 2).repeat_interleave(H, 0)",
        RAISES,
        "The shape of the 3D attn_mask is torch.Size([6, 5, 4]), but should be (6, 4, 5)",
    ),
    ("~m.repeat_interleave(H, 0)", VALUES, None),
    ("m.float().repeat_interleave(H, 0)", VALUES, None),
    ("einops.repeat(m, 'b l s -> (b h) l s', h=H)", RIGHT, None),
    ("einops.repeat(m, 'b l s -> (h b) l s', h=H)", WRONG, None),
    ("einops.repeat(m, 'b l s -> b h l s', h=H).reshape(N*H, L, S)", RIGHT, None),
    ("einops.rearrange(einops.repeat(m,'b l s -> h b l s',h=H),'h b l s -> (b h) l s')", RIGHT, None),
]

EXAMPLE_HEAD_CASES = [
    ("m4.reshape(N*H, L, S)", RIGHT, None),
    ("m4.flatten(0, 1)", RIGHT, None),
    ("m4.view(-1, L, S)", RIGHT, None),
    ("m4.transpose(0, 1).reshape(-1, L, S)", WRONG, None),
    ("m4.transpose(0, 1).view(-1, L, S)", RAISES, "view size is not compatible with input tensor's size and stride"),
    ("m4.permute(1, 0, 2, 3).flatten(0, 1)", WRONG, None),
    ("einops.rearrange(m4, 'b h l s -> (b h) l s')", RIGHT, None),
    ("einops.rearrange(m4, 'b h l s -> (h b) l s')", WRONG, None),
    ("m4", RAISES, "expected `attn_mask` to be `None`, 2-D or 3-D but found 4-D tensor instead"),
]

HEAD_CASES = [
    ("bias.repeat(N, 1, 1)", RIGHT, None),
    ("bias.repeat_interleave(N, 0)", WRONG, None),
    ("bias.unsqueeze(0).expand(N, -1, -1, -1).reshape(-1, L, S)", RIGHT, None),
    ("einops.repeat(bias, 'h l s -> (b h) l s', b=N)", RIGHT, None),
    ("einops.repeat(bias, 'h l s -> (h b) l s', b=N)", WRONG, None),
    ("bias", RAISES, "The shape of the 3D attn_mask is torch.Size([2, 4, 5]), but should be (6, 4, 5)"),
]

PADDING_CASES = [
    ("pad[:, None, :].expand(N, L, S).repeat_interleave(H, 0)", RIGHT, None),
    ("pad.repeat_interleave(H, 0)[:, None, :].expand(-1, L, -1)", RIGHT, None),
    ("pad[:, None, :].repeat(H, L, 1)", WRONG, None),
    (
        "pad[:, :, None].expand(N, L, S).repeat_interleave(H, 0)",
        RAISES,
        "The expanded size of the tensor (4) must match the existing size (5) at non-singleton dimension 1",
    ),
]

# A batch-major replacement per source, replayed as the finding's suggested fix.
REPLACEMENTS = {
    "example": "m.repeat_interleave(H, dim=0)",
    "example_head": "m4.flatten(0, 1)",
    "head": "bias.repeat(N, 1, 1)",
    "padding": "pad[:, None, :].expand(N, L, S).repeat_interleave(H, 0)",
}

CASES = (
    [("example", "m", *case) for case in EXAMPLE_CASES]
    + [("example_head", "m4", *case) for case in EXAMPLE_HEAD_CASES]
    + [("head", "bias", *case) for case in HEAD_CASES]
    + [("padding", "pad", *case) for case in PADDING_CASES]
)


def chain_for(kind: str, source: str, expression: str, replacement: str = None) -> ReplayChain:
    return ReplayChain(
        source_name=source,
        source_kind=kind,
        steps=(ChainStep(target=None, code=expression, line=7, col=22),),
        sizes=SIZES,
        consumer="torch.nn.MultiheadAttention",
        batch_first=True,
        flagged_step=0,
        replacement=replacement,
    )


@pytest.mark.parametrize("kind, source, expression, behaviour, error_text", CASES, ids=[case[2] for case in CASES])
def test_truth_table_verdict(kind, source, expression, behaviour, error_text):
    verdict = verify_chain(chain_for(kind, source, expression, REPLACEMENTS[kind]))

    if behaviour == RIGHT:
        assert verdict.status == "benign", verdict.reason
        assert verdict.max_error is not None and verdict.max_error <= TOLERANCE
        assert verdict.slot_map == []
    elif behaviour == WRONG:
        assert verdict.status == "confirmed", verdict.reason
        assert verdict.max_error > TOLERANCE
        assert verdict.slot_map, "a confirmed verdict needs a slot map"
    elif behaviour == VALUES:
        # The chain does not record the source's polarity, so the verifier compares with a batch-major mask in the
        # same values. The slot order is right, so the outputs match.
        assert verdict.status == "benign", verdict.reason
        assert verdict.max_error <= TOLERANCE
        assert verdict.slot_map == []
        assert "in the values the chain gives it" in verdict.reason
    else:
        assert verdict.status == "inconclusive", verdict.reason
        assert verdict.max_error is None
        assert error_text in verdict.reason

    # The batch-major replacement matches the per-example runs whatever the original expression did.
    assert verdict.fix_verified, f"replacement {REPLACEMENTS[kind]!r} was not verified"


def test_repeat_slot_map_is_head_major():
    # With N=3, H=2, slot i of m.repeat(H, 1, 1) contains m[i % 3] but should contain m[i // 2].
    verdict = verify_chain(chain_for("example", "m", "m.repeat(H, 1, 1)"))

    assert verdict.slot_map == [
        "slot 1 (example 0, head 1) received example 1's mask",
        "slot 2 (example 1, head 0) received example 2's mask",
        "slot 3 (example 1, head 1) received example 0's mask",
        "slot 4 (example 2, head 0) received example 1's mask",
    ]
    assert "4 of 6 slots" in verdict.reason


def test_head_bias_repeat_interleave_slot_map():
    # With N=3, H=2, slot i of bias.repeat_interleave(N, 0) contains bias[i // 3] but should contain bias[i % 2].
    verdict = verify_chain(chain_for("head", "bias", "bias.repeat_interleave(N, 0)"))

    assert verdict.slot_map == [
        "slot 1 (example 0, head 1) received head 0's bias",
        "slot 4 (example 2, head 0) received head 1's bias",
    ]


def test_transposed_example_head_slot_map():
    # (H, N) flattened: slot i holds m4[i % 3, i // 3], but should hold m4[i // 2, i % 2].
    verdict = verify_chain(chain_for("example_head", "m4", "m4.transpose(0, 1).reshape(-1, L, S)"))

    assert verdict.slot_map == [
        "slot 1 (example 0, head 1) received the mask of example 1, head 0",
        "slot 2 (example 1, head 0) received the mask of example 2, head 0",
        "slot 3 (example 1, head 1) received the mask of example 0, head 1",
        "slot 4 (example 2, head 0) received the mask of example 1, head 1",
    ]


def test_scrambled_rows_match_no_example():
    verdict = verify_chain(chain_for("example", "m", "m.repeat(1, 1, H).view(N*H, L, S)"))

    assert verdict.status == "confirmed"
    assert "slot 0 (example 0, head 0) received content that matches no example's mask" in verdict.slot_map


def test_wrong_replacement_is_not_verified():
    verdict = verify_chain(chain_for("example", "m", "m.repeat(H, 1, 1)", replacement="m.tile((H, 1, 1))"))

    assert verdict.status == "confirmed"
    assert not verdict.fix_verified


def test_replacement_for_a_raising_expression_is_verified():
    verdict = verify_chain(chain_for("example", "m", "m.expand(N*H, L, S)", replacement="m.repeat_interleave(H, 0)"))

    assert verdict.status == "inconclusive"
    assert verdict.fix_verified
