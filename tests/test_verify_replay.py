"""The restricted replay interpreter, the consumers and the public verifier API."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

torch = pytest.importorskip("torch", reason="the runtime verifier needs torch: pip install torch==2.13.0")

from maskcheck.chain import ChainStep, ReplayChain  # noqa: E402
from maskcheck.findings import Finding  # noqa: E402
from maskcheck.verify import Verdict, verify_chain, verify_findings  # noqa: E402

ROLES = {"N": "N", "H": "H", "L": "L", "S": "S"}


def single(
    code,
    kind="example",
    source="m",
    sizes=ROLES,
    consumer="torch.nn.MultiheadAttention",
    batch_first=True,
    replacement=None,
    line=7,
    col=22,
):
    return ReplayChain(
        source_name=source,
        source_kind=kind,
        steps=(ChainStep(target=None, code=code, line=line, col=col),),
        sizes=sizes,
        consumer=consumer,
        batch_first=batch_first,
        flagged_step=0,
        replacement=replacement,
    )


# -- positions and messages ------------------------------------------------------------------------------------


def test_unbound_name_reports_its_position():
    verdict = verify_chain(single("m.repeat(foo, 1, 1)"))

    assert verdict.status == "inconclusive"
    # "m.repeat(" is 9 characters, so `foo` starts 9 columns after the step's column 22.
    assert verdict.reason.startswith("name `foo` at 7:31 is not bound")


def test_position_on_later_line():
    code = "m.repeat(\n        heads,  # one copy per head\n        1, 1)"
    verdict = verify_chain(single(code))

    assert verdict.status == "inconclusive"
    assert "name `heads` at 8:9 is not bound" in verdict.reason


def test_rejected_method_points_at_its_name():
    code = "m.repeat(\n    H, 1, 1,  # heads first\n).cumsum(0)"
    verdict = verify_chain(single(code))

    assert verdict.status == "inconclusive"
    assert "at 9:3 calls `.cumsum(...)`, which is not in the replay allow-list" in verdict.reason
    assert "#" not in verdict.reason


def test_torch_error_names_the_operation_and_configuration():
    verdict = verify_chain(single("m.unsqueeze(1).expand(N, H, L, S).transpose(0, 1).view(-1, L, S)"))

    assert verdict.status == "inconclusive"
    assert "at 7:72 raised RuntimeError: view size is not compatible" in verdict.reason
    assert "(with N=3, H=2, L=4, S=5)" in verdict.reason


def test_step_text_that_is_not_an_expression():
    verdict = verify_chain(single("mask = m.repeat(H, 1, 1)"))

    assert verdict.status == "inconclusive"
    assert "is not a single Python expression" in verdict.reason


def test_result_that_is_not_a_tensor():
    verdict = verify_chain(single("[m] * H"))

    assert verdict.status == "inconclusive"
    assert "gives a list, not a tensor" in verdict.reason


# -- nothing of the user's code runs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code, named",
    [
        ("__import__('os').system('true')", "name `__import__`"),
        ("eval('m')", "name `eval`"),
        ("getattr(m, 'repeat')(H, 1, 1)", "name `getattr`"),
        ("m.__class__", "attribute `.__class__`"),
        ("(lambda: m)()", "Lambda expression"),
        ("torch.load('weights.pt')", "`torch.load`"),
        ("torch.nn.functional.pad(m, (0, 1))", "`torch.nn.functional.pad`"),
        ("F.softmax(m.float(), -1)", "`torch.nn.functional.softmax`"),
        ("m.masked_fill_(m, True)", "`.masked_fill_(...)`"),
        ("m.numpy()", "`.numpy(...)`"),
        ("torch.ops.aten.repeat(m, [H, 1, 1])", "`torch.ops.aten.repeat`"),
        ("m.repeat(*open('x'))", "name `open`"),
        ("f'{m}'", "FormattedString expression"),
        ("m.repeat(H, 1, 1) if flag else m.tile((H, 1, 1))", "branch the replay cannot choose"),
    ],
)
def test_outside_allow_list_inconclusive(code, named):
    verdict = verify_chain(single(code))

    assert verdict.status == "inconclusive"
    assert named in verdict.reason


@pytest.mark.parametrize(
    "code",
    [
        "m.repeat(10**9, 1, 1)",
        "m.repeat(1000000000, 1, 1)",
        "m.unsqueeze(0).expand(5000, -1, -1, -1).flatten(0, 1)",
        "m.repeat_interleave(100000, 0)",
        "m.repeat_interleave(torch.full((N,), 10**7), dim=0)",
        "torch.cat([m] * 10**6, 0)",
        "torch.cat([m for i in range(10**9)], 0)",
        "m.index_select(0, torch.arange(10**8) % N)",
        "m[torch.arange(10**8) % N]",
        "einops.repeat(m, 'b l s -> (b h) l s', h=10**6)",
        "m.tile((H * 10**6, 1, 1))",
        "torch.arange(4000)[:, None] < torch.arange(4000)[None, :]",
        "m.repeat(2**200, 1, 1)",
    ],
)
def test_sizes_over_limit_rejected(code):
    start = time.perf_counter()
    verdict = verify_chain(single(code))
    elapsed = time.perf_counter() - start

    assert verdict.status == "inconclusive"
    assert "over the replay limit" in verdict.reason or "far over the replay limit" in verdict.reason
    assert elapsed < 2.0


@pytest.mark.parametrize(
    "code, problem",
    [
        ("m.repeat(" + "-" * 30000 + "H, 1, 1)", "longer than 5000 characters"),
        ("m.repeat(" + "[" * 1000 + "H" + "]" * 1000 + ", 1, 1)", "nests brackets deeper than 200 levels"),
        ("m.repeat(" + "+" * 3000 + "H, 1, 1)", "nests too deeply to replay"),
    ],
    ids=["unary-30000", "brackets-1000", "unary-3000"],
)
def test_deep_nesting_rejected(code, problem):
    # Run in a child process: deep nesting has crashed the libcst parser outright, which would end the test run.
    script = (
        "import sys\n"
        "from maskcheck.chain import ChainStep, ReplayChain\n"
        "from maskcheck.verify import verify_chain\n"
        "code = sys.stdin.read()\n"
        "chain = ReplayChain('m', 'example', (ChainStep(None, code, 1, 1),), {'H': 'H'}, 'unknown', True, 0, None)\n"
        "verdict = verify_chain(chain)\n"
        "print(verdict.status)\n"
        "print(verdict.reason)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], input=code, capture_output=True, text=True)

    assert result.returncode == 0, result.stderr[-500:]
    status, reason = result.stdout.splitlines()[:2]
    assert status == "inconclusive"
    assert problem in reason


# -- names, sizes and steps ------------------------------------------------------------------------------------


def test_size_expressions_bind_by_their_text():
    sizes = {"self.num_heads": "H", "x.shape[0]": "N", "x.size(1)": "L", "memory.size(1)": "S"}
    code = (
        "mask.unsqueeze(1).expand(x.shape[0], self.num_heads, x.size( 1 ), memory.size(1))"
        ".reshape(-1, x.size(1), memory.size(1))"
    )
    verdict = verify_chain(single(code, source="mask", sizes=sizes))

    assert verdict.status == "benign", verdict.reason


def test_source_name_may_be_an_attribute():
    verdict = verify_chain(single("self.mask.repeat(self.heads, 1, 1)", source="self.mask", sizes={"self.heads": "H"}))

    assert verdict.status == "confirmed"


def test_steps_bind_their_targets_in_order():
    steps = (
        ChainStep(target="mask", code="mask.unsqueeze(1)", line=10, col=16),
        ChainStep(target="mask", code="mask.expand(-1, self.num_heads, -1, -1)", line=11, col=16),
        ChainStep(
            target=None, code="mask.transpose(0, 1).reshape(bsz * self.num_heads, tgt_len, src_len)", line=12, col=40
        ),
    )
    chain = ReplayChain(
        source_name="mask",
        source_kind="example",
        steps=steps,
        sizes={"self.num_heads": "H", "bsz": "N", "tgt_len": "L", "src_len": "S"},
        consumer="torch.nn.MultiheadAttention",
        batch_first=False,
        flagged_step=2,
        replacement="mask.reshape(bsz * self.num_heads, tgt_len, src_len)",
    )

    verdict = verify_chain(chain)

    assert verdict.status == "confirmed"
    assert verdict.fix_verified


def test_unbound_replacement_not_verified():
    verdict = verify_chain(single("m.repeat(H, 1, 1)", replacement="m.repeat_interleave(num_heads, 0)"))

    assert verdict.status == "confirmed"
    assert not verdict.fix_verified


def test_einops_names_imported_directly():
    verdict = verify_chain(
        single("repeat(m, 'b l s -> (h b) l s', h=H)", replacement="repeat(m, 'b l s -> (b h) l s', h=H)")
    )

    assert verdict.status == "confirmed"
    assert verdict.fix_verified


def test_device_arguments_are_skipped():
    code = "m.to(x.device).to(device=query.device, dtype=torch.bool).repeat_interleave(H, dim=0).to('cuda')"
    verdict = verify_chain(single(code))

    assert verdict.status == "benign", verdict.reason


def test_additive_float_mask_from_masked_fill():
    code = "m.float().masked_fill(m, float('-inf')).repeat(H, 1, 1)"
    verdict = verify_chain(single(code, replacement="m.float().masked_fill(m, float('-inf')).repeat_interleave(H, 0)"))

    assert verdict.status == "confirmed"
    # The slot map matches a -inf/0 slot to the bool example mask it came from.
    assert verdict.slot_map[0] == "slot 1 (example 0, head 1) received example 1's mask"
    assert verdict.fix_verified


def test_shared_mask_is_benign_whatever_the_order():
    verdict = verify_chain(single("causal.repeat(N * H, 1, 1)", kind="shared", source="causal"))

    assert verdict.status == "benign"
    assert "shared by every example and head" in verdict.reason


def test_padding_mask_expanded_head_major():
    verdict = verify_chain(single("pad[:, None, :].expand(-1, L, -1).repeat(H, 1, 1)", kind="padding", source="pad"))

    assert verdict.status == "confirmed"
    assert "slot 1 (example 0, head 1) received example 1's padding mask" in verdict.slot_map


def test_unknown_source_kind_and_role():
    assert verify_chain(single("m", kind="window")).status == "inconclusive"
    assert verify_chain(single("m.repeat(H, 1, 1)", sizes={"H": "heads"})).status == "inconclusive"


def test_conditional_with_none_follows_the_mask_branch():
    verdict = verify_chain(single("m.repeat(H, 1, 1) if use_mask else None"))

    assert verdict.status == "confirmed", verdict.reason


def test_conditional_follows_the_flagged_branch():
    code = "m.repeat_interleave(H, 0) if self.batch_major else m.repeat(H, 1, 1)"
    chain = single(code, replacement="m.repeat_interleave(H, dim=0)")
    finding = Finding(
        "a.py",
        7,
        22,
        "MSK101",
        "head-major",
        expression="m.repeat(H, 1, 1)",
        replacement="m.repeat_interleave(H, dim=0)",
        chain=chain,
    )

    verdict = verify_findings([finding])[0]

    assert verdict.status == "confirmed", verdict.reason
    assert verdict.fix_verified


def test_partial_replacement_keeps_rest():
    # The finding flags `m.repeat(H, 1, 1)` inside a longer step; the fix must keep `.float().masked_fill(...)`.
    code = "m.repeat(H, 1, 1).float().masked_fill(m.repeat(H, 1, 1), float('-inf'))"
    chain = single(code, replacement="m.repeat_interleave(H, dim=0)")
    finding = Finding(
        "a.py",
        7,
        22,
        "MSK101",
        "head-major",
        expression="m.repeat(H, 1, 1)",
        replacement="m.repeat_interleave(H, dim=0)",
        chain=chain,
    )

    # The flagged text occurs twice and the finding's position picks the first. The second stays head-major, so
    # this fix alone does not give the per-example result.
    assert not verify_findings([finding])[0].fix_verified

    chain = single("m.repeat(H, 1, 1).to(x.dtype)", replacement="m.repeat_interleave(H, dim=0)")
    finding = Finding(
        "a.py",
        7,
        22,
        "MSK101",
        "head-major",
        expression="m.repeat(H, 1, 1)",
        replacement="m.repeat_interleave(H, dim=0)",
        chain=chain,
    )
    verdict = verify_findings([finding])[0]

    assert verdict.status == "confirmed"
    assert verdict.fix_verified


def test_walrus_binds_its_name():
    verdict = verify_chain(single("(expanded := m.tile((H, 1, 1))).bool() | expanded"))

    assert verdict.status == "confirmed", verdict.reason


def test_literal_head_count_recorded_as_a_size():
    verdict = verify_chain(single("m.repeat(8, 1, 1)", sizes={"8": "H"}, replacement="m.repeat_interleave(8, 0)"))

    assert verdict.status == "confirmed", verdict.reason
    assert verdict.fix_verified


def test_dtype_of_an_unbound_activation_is_float32():
    verdict = verify_chain(single("m.repeat_interleave(H, 0).to(x.dtype).masked_fill(m.repeat_interleave(H, 0), -1e9)"))

    assert verdict.status == "benign", verdict.reason


def test_empty_chain_is_inconclusive():
    chain = ReplayChain("m", "example", (), ROLES, "torch.nn.MultiheadAttention", True, 0, None)

    verdict = verify_chain(chain)

    assert verdict.status == "inconclusive"
    assert "records no step" in verdict.reason


@pytest.mark.parametrize(
    "code",
    [
        "(~m).repeat_interleave(H, 0)",
        "((1.0 - m.float()) * -10000.0).repeat_interleave(H, 0)",
        "m.long().float().repeat_interleave(H, 0)",
    ],
)
def test_changed_values_batch_major(code):
    # The source's polarity is unknown to the verifier, so an inverted or additive mask is compared like with like.
    verdict = verify_chain(single(code))

    assert verdict.status == "benign", verdict.reason
    assert "in the values the chain gives it" in verdict.reason


@pytest.mark.parametrize("code", ["(~m).repeat(H, 1, 1)", "((1.0 - m.float()) * -10000.0).repeat(H, 1, 1)"])
def test_changed_values_head_major(code):
    verdict = verify_chain(single(code))

    assert verdict.status == "confirmed", verdict.reason
    assert verdict.slot_map[0] == "slot 1 (example 0, head 1) received example 1's mask"


def test_scaled_head_bias():
    right = verify_chain(single("(bias * 0.5 + 1.0).repeat(N, 1, 1)", kind="head", source="bias"))
    wrong = verify_chain(single("(-bias * 0.5).repeat_interleave(N, 0)", kind="head", source="bias"))

    assert right.status == "benign", right.reason
    assert wrong.status == "confirmed", wrong.reason
    assert wrong.slot_map[0] == "slot 1 (example 0, head 1) received head 0's bias"


# -- consumers -------------------------------------------------------------------------------------------------


CONSUMERS = [
    ("torch.nn.MultiheadAttention", True),
    ("torch.nn.MultiheadAttention", False),
    ("torch.nn.functional.multi_head_attention_forward", None),
    ("torch.nn.TransformerEncoderLayer", True),
    ("torch.nn.TransformerEncoderLayer", False),
    ("torch.nn.TransformerEncoder", True),
    ("torch.nn.TransformerDecoderLayer", True),
    ("torch.nn.TransformerDecoder", False),
    ("torch.nn.Transformer", True),
    ("unknown", True),
]


@pytest.mark.parametrize("consumer, batch_first", CONSUMERS)
def test_consumer_repeat_verdicts(consumer, batch_first):
    # For the self-attention layers L and S take the same value, so the same text fits both.
    wrong = verify_chain(single("m.repeat(H, 1, 1)", consumer=consumer, batch_first=batch_first))
    right = verify_chain(single("m.repeat_interleave(H, 0)", consumer=consumer, batch_first=batch_first))

    assert wrong.status == "confirmed", wrong.reason
    assert wrong.slot_map[0] == "slot 1 (example 0, head 1) received example 1's mask"
    assert right.status == "benign", right.reason


def test_unknown_consumer_replayed_as_mha():
    verdict = verify_chain(single("m.repeat(H, 1, 1)", consumer="unknown"))

    assert "replayed as nn.MultiheadAttention" in verdict.reason


@pytest.mark.parametrize("argument", ["src_mask", "tgt_mask", "memory_mask"])
def test_transformer_arguments(argument):
    chain = single("m.repeat(H, 1, 1)", consumer="torch.nn.Transformer", replacement="m.repeat_interleave(H, 0)")
    chain = ReplayChain(**{**chain.__dict__, "argument": argument})

    verdict = verify_chain(chain)

    assert verdict.status == "confirmed", verdict.reason
    assert f"nn.Transformer ({argument})" in verdict.reason
    assert verdict.fix_verified


def test_decoder_defaults_to_memory_mask():
    chain = single("m.repeat(H, 1, 1)", consumer="torch.nn.TransformerDecoderLayer")

    verdict = verify_chain(chain)

    assert "nn.TransformerDecoderLayer (memory_mask)" in verdict.reason


def test_decoder_without_key_length():
    chain = single("m.repeat(H, 1, 1)", consumer="torch.nn.TransformerDecoderLayer", sizes={"H": "H"})

    verdict = verify_chain(chain)

    assert "nn.TransformerDecoderLayer (tgt_mask)" in verdict.reason


def test_per_head_bias_in_encoder_layer():
    verdict = verify_chain(
        single("bias.repeat(N, 1, 1)", kind="head", source="bias", consumer="torch.nn.TransformerEncoderLayer")
    )

    assert verdict.status == "benign", verdict.reason


# -- public API ------------------------------------------------------------------------------------------------


def test_verify_findings_order():
    findings = [
        Finding("a.py", 3, 5, "MSK101", "head-major", chain=single("m.repeat(H, 1, 1)")),
        Finding("a.py", 9, 5, "MSK101", "no chain"),
        Finding("a.py", 12, 5, "MSK101", "batch-major", chain=single("m.repeat_interleave(H, 0)")),
    ]

    verdicts = verify_findings(findings)

    assert [verdict.status for verdict in verdicts] == ["confirmed", "inconclusive", "benign"]
    assert "no construction chain" in verdicts[1].reason


def test_verdicts_repeat_exactly():
    first = verify_chain(single("m.repeat(H, 1, 1)"))
    second = verify_chain(single("m.repeat(H, 1, 1)"))

    assert first == second


def test_threads_and_rng_restored():
    threads = torch.get_num_threads()
    state = torch.get_rng_state()

    verify_chain(single("m.repeat(H, 1, 1)", consumer="torch.nn.TransformerDecoder"))

    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)


def test_summary_line():
    verdict = Verdict("confirmed", 0.5, ["slot 1 (example 0, head 1) received example 1's mask"], "reason", True)

    assert verdict.summary() == (
        "confirmed (max error 5.00e-01; slot 1 (example 0, head 1) received example 1's mask; fix verified)"
    )


def test_importing_the_package_does_not_import_torch():
    code = "import sys, maskcheck.verify, maskcheck.engine; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False"


def test_missing_torch_message():
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from maskcheck.chain import ChainStep, ReplayChain\n"
        "from maskcheck.verify import VerifierUnavailable, verify_chain\n"
        "chain = ReplayChain('m', 'example', (ChainStep(None, 'm', 1, 1),), {}, 'unknown', True, 0, None)\n"
        "try:\n"
        "    verify_chain(chain)\n"
        "except VerifierUnavailable as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    assert "torch" in lines[0]
    assert "pip install 'maskcheck[verify]'" in lines[0]


# -- the analyser's own findings -------------------------------------------------------------------------------


def test_no_fixture_finding_replays_as_benign():
    # Every MSK101 the analyser reports on the fixture corpus must be confirmed by the replay or be impossible to
    # replay. A benign verdict would mean a false positive of the analyser or a fault in the verifier.
    from pathlib import Path

    from maskcheck.engine import check_source

    fixtures = Path(__file__).resolve().parent.parent / "fixtures"
    paths = sorted(fixtures.rglob("*.py"))
    if not paths:
        pytest.skip("no fixtures directory next to tests/")

    findings = []
    for path in paths:
        findings += check_source(path.read_text(encoding="utf-8"), str(path))
    findings = [finding for finding in findings if finding.code == "MSK101"]
    verdicts = verify_findings(findings)

    benign = [f"{f.path}:{f.line}: {v.reason}" for f, v in zip(findings, verdicts) if v.status == "benign"]
    failed = [f"{f.path}:{f.line}: {v.reason}" for f, v in zip(findings, verdicts) if "please report" in v.reason]
    assert not benign, "\n".join(benign)
    assert not failed, "\n".join(failed)
    assert sum(verdict.status == "confirmed" for verdict in verdicts) > 0


def test_head_count_inside_view_is_bound():
    # The heads come from the bias's own axis, so only the `view` names `self.num_heads`. The chain must still
    # bind it to H, or the replay stops at an unbound name.
    from maskcheck.engine import check_source

    module = (
        "import torch.nn as nn\n"
        "\n"
        "class Block(nn.Module):\n"
        "    def __init__(self, dim, num_heads):\n"
        "        super().__init__()\n"
        "        self.num_heads = num_heads\n"
        "        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)\n"
        "\n"
        "    def forward(self, x, bias):\n"
        "        batch, length, _ = x.shape\n"
        "        per_example = bias.unsqueeze(0).expand(batch, -1, -1, -1)\n"
        "        heads_first = per_example.transpose(0, 1).clone()\n"
        "        attn_mask = heads_first.view(batch * self.num_heads, length, length)\n"
        "        return self.attn(x, x, x, attn_mask=attn_mask)[0]\n"
    )
    findings = [finding for finding in check_source(module, "block.py") if finding.code == "MSK101"]
    assert len(findings) == 1
    assert findings[0].chain is not None
    assert findings[0].chain.sizes.get("self.num_heads") == "H"
    verdict = verify_findings(findings)[0]
    assert verdict.status == "confirmed", verdict.reason


MASKED_FILL_MODULE = (
    "import torch\n"
    "import torch.nn as nn\n"
    "\n"
    "class Block(nn.Module):\n"
    "    def __init__(self, dim, num_heads):\n"
    "        super().__init__()\n"
    "        self.num_heads = num_heads\n"
    "        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)\n"
    "\n"
    "    def forward(self, x, mask):\n"
    "        {statement}\n"
    "        return self.attn(x, x, x, attn_mask=additive)[0]\n"
)


def _verified_findings(statement: str):
    from maskcheck.engine import check_source

    module = MASKED_FILL_MODULE.replace("{statement}", statement)
    findings = [finding for finding in check_source(module, "block.py") if finding.code == "MSK101"]
    return findings, verify_findings(findings)


def test_fix_replayed_at_its_own_occurrence():
    # The flagged text occurs twice in the step. Fixing one occurrence leaves the other head-major, so neither fix
    # alone may count as verified; replaying the whole step as the replacement hid that.
    findings, verdicts = _verified_findings(
        "additive = mask.repeat(self.num_heads, 1, 1).float().masked_fill(mask.repeat(self.num_heads, 1, 1), -1e4)"
    )
    assert [finding.col for finding in findings] == [20, 74]
    assert [verdict.status for verdict in verdicts] == ["confirmed", "confirmed"]
    assert [verdict.fix_verified for verdict in verdicts] == [False, False]


def test_zeros_like_and_where_replay():
    for statement in (
        "additive = torch.zeros_like(mask.repeat(self.num_heads, 1, 1), dtype=torch.float)"
        ".masked_fill(mask.repeat(self.num_heads, 1, 1), float('-inf'))",
        "additive = torch.where(mask.repeat(self.num_heads, 1, 1), float('-inf'), 0.0)",
    ):
        findings, verdicts = _verified_findings(statement)
        assert findings, statement
        assert all(verdict.status == "confirmed" for verdict in verdicts), [v.reason for v in verdicts]
