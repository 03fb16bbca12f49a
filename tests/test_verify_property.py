"""Property tests: random chains of allow-listed mask operations, replayed and compared.

Hypothesis builds each chain as Python source text from layout fragments on a per-example (N, L, S) mask, a
per-head (H, L, S) bias or a per-(example, head) (N, H, L, S) mask. Each fragment records the order in which it
leaves the batch and head factors, so the generator predicts whether the final (N*H, L, S) mask is batch-major.
Two comparisons use these chains:

- the replay verdict against that prediction (confirmed exactly when the order is head-major), which needs only
  torch;
- the static analyser's verdict (MSK101 reported or not, from `check_source` on a module that passes the chain to
  nn.MultiheadAttention) against the replay.

Chains whose replay is inconclusive (for example `view` after `expand`, which torch rejects) are skipped and
counted. The quick variants run about 200 chains; the `slow` variants run 10,000.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import pytest

torch = pytest.importorskip("torch", reason="the runtime verifier needs torch: pip install torch==2.13.0")
pytest.importorskip("einops", reason="the generated chains use einops: pip install einops")
hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis: pip install hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from maskcheck.chain import ChainStep, ReplayChain  # noqa: E402
from maskcheck.engine import check_source  # noqa: E402
from maskcheck.verify import verify_chain  # noqa: E402

QUICK_EXAMPLES = 200
SLOW_EXAMPLES = 10_000

# A fragment turns the current expression text into a new one and returns the order of the two leading factors.
# For a 3-D result these are the (outer, inner) factors of the merged N*H axis, and for a 4-D result the first
# two axes. The labels are "B" for the batch and "H" for the heads.


@dataclass(frozen=True)
class Names:
    """Source texts of the sizes in the generated module."""

    heads: str
    batch: str = "bsz"
    query: str = "tgt_len"
    key: str = "src_len"

    def size(self, label: str) -> str:
        return self.batch if label == "B" else self.heads


Fragment = Callable[[str, str, str, Names], Tuple[str, Tuple[str, str]]]


def _expand_3d(template: str, outer_is_new: bool) -> Fragment:
    """A fragment that adds the missing factor X to the present factor Y and merges them into axis 0."""

    def apply(expression: str, present: str, missing: str, names: Names) -> Tuple[str, Tuple[str, str]]:
        text = template.format(
            e=expression,
            ny=names.size(present),
            nx=names.size(missing),
            y=present.lower(),
            x=missing.lower(),
            L=names.query,
            S=names.key,
        )
        return text, (missing, present) if outer_is_new else (present, missing)

    return apply


THREE_D_FORMS: List[Fragment] = [
    _expand_3d("{e}.repeat({nx}, 1, 1)", True),
    _expand_3d("{e}.tile(({nx}, 1, 1))", True),
    _expand_3d("torch.cat([{e}] * {nx}, 0)", True),
    _expand_3d("torch.cat([{e}] * {nx}, dim=0)", True),
    _expand_3d("{e}.repeat_interleave({nx}, dim=0)", False),
    _expand_3d("{e}.repeat_interleave({nx}, 0)", False),
    _expand_3d("torch.repeat_interleave({e}, {nx}, dim=0)", False),
    _expand_3d("einops.repeat({e}, '{y} l s -> ({y} {x}) l s', {x}={nx})", False),
    _expand_3d("einops.repeat({e}, '{y} l s -> ({x} {y}) l s', {x}={nx})", True),
    _expand_3d("repeat({e}, '{y} l s -> ({y} {x}) l s', {x}={nx})", False),
    _expand_3d("{e}.index_select(0, torch.arange({ny} * {nx}) // {nx})", False),
    _expand_3d("{e}.index_select(0, torch.arange({ny} * {nx}) % {ny})", True),
    _expand_3d("{e}[torch.arange({ny} * {nx}) // {nx}]", False),
    _expand_3d("{e}[torch.arange({ny} * {nx}) % {ny}]", True),
    _expand_3d("{e}.repeat(1, {nx}, 1).view({ny} * {nx}, {L}, {S})", False),
    _expand_3d("{e}.tile((1, {nx}, 1)).reshape({ny} * {nx}, {L}, {S})", False),
    _expand_3d("torch.cat([{e}[i:i + 1].repeat({nx}, 1, 1) for i in range({ny})], 0)", False),
    _expand_3d("torch.stack([{e}] * {nx}, dim=1).flatten(0, 1)", False),
    _expand_3d("torch.stack([{e}] * {nx}).flatten(0, 1)", True),
]

FOUR_D_FORMS: List[Fragment] = [
    _expand_3d("{e}.unsqueeze(1).expand(-1, {nx}, -1, -1)", False),
    _expand_3d("{e}.unsqueeze(0).expand({nx}, -1, -1, -1)", True),
    _expand_3d("{e}[:, None].repeat(1, {nx}, 1, 1)", False),
    _expand_3d("{e}[None].repeat({nx}, 1, 1, 1)", True),
    _expand_3d("{e}.unsqueeze(1).tile((1, {nx}, 1, 1))", False),
    _expand_3d("{e}.unsqueeze(0).tile(({nx}, 1, 1, 1))", True),
    _expand_3d("torch.stack([{e}] * {nx}, 1)", False),
    _expand_3d("torch.stack([{e}] * {nx}, 0)", True),
    _expand_3d("einops.repeat({e}, '{y} l s -> {y} {x} l s', {x}={nx})", False),
    _expand_3d("einops.repeat({e}, '{y} l s -> {x} {y} l s', {x}={nx})", True),
    _expand_3d("{e}.expand({nx}, {ny}, {L}, {S})", True),
    _expand_3d("{e}.unsqueeze(1).broadcast_to({ny}, {nx}, {L}, {S})", False),
    _expand_3d("{e}[:, None, :, :].expand({ny}, {nx}, {L}, {S})", False),
    _expand_3d("{e}.repeat({nx}, 1, 1).view({nx}, {ny}, {L}, {S})", True),
    _expand_3d("{e}.unsqueeze(1).repeat(1, {nx}, 1, 1)", False),
    _expand_3d("{e}.view({ny}, 1, {L}, {S}).expand({ny}, {nx}, {L}, {S})", False),
]

# (template, swaps the first two axes)
REORDERS: List[Tuple[str, bool]] = [
    ("{e}.transpose(0, 1)", True),
    ("{e}.transpose(1, 0)", True),
    ("{e}.permute(1, 0, 2, 3)", True),
    ("{e}.permute(0, 1, 2, 3)", False),
    ("{e}.contiguous()", False),
    ("{e}.transpose(2, 3).transpose(2, 3)", False),
    ("einops.rearrange({e}, 'p q l s -> q p l s')", True),
]

# (template, swaps the merged factors relative to the axis order)
MERGES: List[Tuple[str, bool]] = [
    ("{e}.flatten(0, 1)", False),
    ("{e}.reshape(-1, {L}, {S})", False),
    ("{e}.reshape({na} * {nb}, {L}, {S})", False),
    ("{e}.view(-1, {L}, {S})", False),
    ("{e}.contiguous().view({na} * {nb}, {L}, {S})", False),
    ("einops.rearrange({e}, 'p q l s -> (p q) l s')", False),
    ("einops.rearrange({e}, 'p q l s -> (q p) l s')", True),
    ("rearrange({e}, 'p q l s -> (p q) l s')", False),
]

# Operations that keep the layout, by the dtype they accept, with the dtype they produce.
BOOL_UNARY: List[Tuple[str, str]] = [
    ("{e}.bool()", "bool"),
    ("{e}.detach()", "bool"),
    ("{e}.clone()", "bool"),
    ("{e}.contiguous()", "bool"),
    ("{e}.to(torch.bool)", "bool"),
    ("{e}.to(x.device)", "bool"),
    ("(~{e})", "bool"),
    ("({e} != 0)", "bool"),
    ("{e}.float()", "float"),
    ("{e}.float().masked_fill({e}, float('-inf'))", "float"),
]
FLOAT_UNARY: List[Tuple[str, str]] = [
    ("{e}.float()", "float"),
    ("{e}.detach()", "float"),
    ("{e}.clone()", "float"),
    ("{e}.to(torch.float32)", "float"),
    ("{e}.type(torch.float32)", "float"),
    ("(-{e})", "float"),
]

SOURCES = {
    "example": ("mask", "B", "bool"),
    "head": ("bias", "H", "float"),
    "example_head": ("mask4", None, "bool"),
}


@dataclass
class GeneratedChain:
    kind: str
    source: str
    style: str
    statements: List[Tuple[Optional[str], str]]  # (target, code); the last one with target None is passed inline
    batch_major: bool
    names: Names
    guard: int  # index into the source kind's _GUARDS forms


class _ChainBuilder:
    """Accumulates statements while fragments rewrite the current expression."""

    def __init__(self, draw: Callable, source: str, dtype: str) -> None:
        self.draw = draw
        self.source = source
        self.expression = source
        self.dtype = dtype
        self.statements: List[Tuple[Optional[str], str]] = []
        self.counter = 0
        self.bound = False  # whether `expression` is a name that the last statement bound

    def apply(self, text: str) -> None:
        self.expression = text
        self.bound = False
        if self.draw(st.booleans()):
            self.counter += 1
            target = self.draw(st.sampled_from([f"m{self.counter}", self.source]))
            self.statements.append((target, self.expression))
            self.expression = target
            self.bound = True

    def maybe_unary(self) -> None:
        # The minimal drawn value (0) stops the loop, so shrinking removes unary operations.
        while self.draw(st.integers(0, 3)) == 3:
            options = BOOL_UNARY if self.dtype == "bool" else FLOAT_UNARY
            template, self.dtype = self.draw(st.sampled_from(options))
            self.apply(template.format(e=self.expression))

    def finish(self) -> None:
        """Pass the value to the consumer: inline, or by the name the last statement bound."""
        if not self.bound or self.draw(st.booleans()):
            self.statements.append((None, self.expression))


@st.composite
def generated_chains(draw) -> GeneratedChain:
    kind = draw(st.sampled_from(sorted(SOURCES)))
    style = draw(st.sampled_from(["function", "method"]))
    names = Names(heads="num_heads" if style == "function" else "self.num_heads")
    source, present, dtype = SOURCES[kind]
    builder = _ChainBuilder(draw, source, dtype)

    if kind == "example_head":
        order: Tuple[str, str] = ("B", "H")
        four_d = True
    else:
        missing = "H" if present == "B" else "B"
        builder.maybe_unary()
        form = draw(st.sampled_from(THREE_D_FORMS + FOUR_D_FORMS))
        text, order = form(builder.expression, present, missing, names)
        four_d = form in FOUR_D_FORMS
        builder.apply(text)

    if four_d:
        for _ in range(draw(st.integers(0, 2))):
            builder.maybe_unary()
            template, swaps = draw(st.sampled_from(REORDERS))
            builder.apply(template.format(e=builder.expression))
            if swaps:
                order = (order[1], order[0])
        builder.maybe_unary()
        template, swaps = draw(st.sampled_from(MERGES))
        text = template.format(
            e=builder.expression, na=names.size(order[0]), nb=names.size(order[1]), L=names.query, S=names.key
        )
        builder.apply(text)
        if swaps:
            order = (order[1], order[0])

    builder.maybe_unary()
    builder.finish()
    guard = draw(st.sampled_from([0, 1]))
    return GeneratedChain(kind, source, style, builder.statements, order == ("B", "H"), names, guard)


# -- the module the static analyser reads, and the chain the replay reads --------------------------------------

# Shape guards that tell the analyser what the source's axes are, in a whole-shape and a leading-axis form.
_GUARDS = {
    "example": ("assert {s}.shape == (bsz, tgt_len, src_len)", "assert {s}.shape[0] == bsz"),
    "head": ("assert {s}.shape == ({h}, tgt_len, src_len)", "assert {s}.shape[0] == {h}"),
    "example_head": ("assert {s}.shape == (bsz, {h}, tgt_len, src_len)", "assert {s}.shape[:2] == (bsz, {h})"),
}


def render(chain: GeneratedChain) -> Tuple[str, ReplayChain]:
    """Return the module text and the replay chain with the exact text and positions of each step."""
    lines = [
        "import einops",
        "import torch",
        "import torch.nn as nn",
        "from einops import rearrange, repeat",
        "",
        "",
    ]
    if chain.style == "function":
        lines.append(f"def attend(x, memory, {chain.source}, num_heads):")
        indent = "    "
        lines.append(indent + "attn = nn.MultiheadAttention(x.shape[-1], num_heads, batch_first=True)")
        call = "attn(x, memory, memory, attn_mask={})"
        prefix = indent + "out, _ = "
    else:
        lines += [
            "class Block(nn.Module):",
            "    def __init__(self, embed_dim, num_heads):",
            "        super().__init__()",
            "        self.num_heads = num_heads",
            "        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)",
            "",
            f"    def forward(self, x, memory, {chain.source}):",
        ]
        indent = "        "
        call = "self.attn(x, memory, memory, attn_mask={})[0]"
        prefix = indent + "out = "
    lines += [
        indent + "bsz, tgt_len, _ = x.shape",
        indent + "src_len = memory.shape[1]",
        indent + _GUARDS[chain.kind][chain.guard].format(s=chain.source, h=chain.names.heads),
    ]

    steps = []
    for target, code in chain.statements:
        if target is None:
            head = prefix + call.split("{}")[0]
            lines.append(head + code + call.split("{}")[1])
        else:
            head = f"{indent}{target} = "
            lines.append(head + code)
        steps.append(ChainStep(target=target, code=code, line=len(lines), col=len(head) + 1))
    if chain.statements[-1][0] is not None:
        lines.append(prefix + call.format(chain.statements[-1][0]))
    lines.append(indent + "return out")
    module = "\n".join(lines) + "\n"

    replay = ReplayChain(
        source_name=chain.source,
        source_kind=chain.kind,
        steps=tuple(steps),
        sizes={chain.names.heads: "H", "bsz": "N", "tgt_len": "L", "src_len": "S"},
        consumer="torch.nn.MultiheadAttention",
        batch_first=True,
        flagged_step=len(steps) - 1,
        replacement=None,
    )
    return module, replay


def static_flags(module: str) -> bool:
    return any(finding.code == "MSK101" for finding in check_source(module, "generated.py"))


CLASSIC_MODULE = """\
import torch.nn as nn


def attend(x, memory, mask, num_heads):
    bsz, tgt_len, _ = x.shape
    src_len = memory.shape[1]
    attn = nn.MultiheadAttention(x.shape[-1], num_heads, batch_first=True)
    out, _ = attn(x, memory, memory, attn_mask=mask.repeat(num_heads, 1, 1))
    return out
"""


def require_analyser() -> None:
    if not static_flags(CLASSIC_MODULE):
        pytest.skip(
            "the MSK101 analyser does not flag mask.repeat(num_heads, 1, 1) passed to nn.MultiheadAttention yet, "
            "so there is no static verdict to compare with the replay"
        )


# -- the two comparisons ---------------------------------------------------------------------------------------


Comparison = Callable[[GeneratedChain, str, ReplayChain], Optional[str]]


def _run(examples: int, make_comparison: Callable[[Counter], Comparison]) -> Tuple[Counter, List[str]]:
    """Compare generated chains; collect every disagreement instead of stopping at the first one.

    `make_comparison(counts)` returns a function that returns None when a chain agrees (or is skipped) and a
    description otherwise. The counts record how many chains ran, how many replays were inconclusive, and each
    verdict.
    """
    counts: Counter = Counter()
    compare = make_comparison(counts)
    disagreements: List[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(generated_chains())
    def check(chain: GeneratedChain) -> None:
        module, replay = render(chain)
        counts["chains"] += 1
        problem = compare(chain, module, replay)
        if problem is not None:
            counts["disagreements"] += 1
            disagreements.append(f"{problem}\n{module}")

    check()
    disagreements.sort(key=len)
    return counts, disagreements


def _compare_with_layout(counts: Counter) -> Comparison:
    def compare(chain: GeneratedChain, module: str, replay: ReplayChain) -> Optional[str]:
        verdict = verify_chain(replay)
        if verdict.status == "inconclusive":
            counts["inconclusive"] += 1
            if "please report" in verdict.reason:
                return f"the verifier failed: {verdict.reason}"
            return None
        counts[verdict.status] += 1
        expected = "benign" if chain.batch_major else "confirmed"
        if verdict.status != expected:
            return f"layout {'batch' if chain.batch_major else 'head'}-major, replay {verdict.status}: {verdict.reason}"
        return None

    return compare


def _compare_with_static(counts: Counter) -> Comparison:
    def compare(chain: GeneratedChain, module: str, replay: ReplayChain) -> Optional[str]:
        verdict = verify_chain(replay)
        if verdict.status == "inconclusive":
            counts["inconclusive"] += 1
            return None
        flagged = static_flags(module)
        counts[f"{chain.kind} {'flagged' if flagged else 'silent'} {verdict.status}"] += 1
        if flagged != (verdict.status == "confirmed"):
            return f"static {'flagged' if flagged else 'silent'}, replay {verdict.status}: {verdict.reason}"
        return None

    return compare


def _report(name: str, counts: Counter, disagreements: List[str]) -> None:
    summary = ", ".join(f"{key}: {value}" for key, value in sorted(counts.items()))
    print(f"\n{name}: {summary}")
    for text in disagreements[:3]:
        print(f"--- disagreement\n{text}")


def _assert_agreement(counts: Counter, disagreements: List[str]) -> None:
    # The generator must mostly build chains that torch accepts; otherwise the comparison proves little.
    assert counts["chains"] > 0
    assert counts["inconclusive"] <= counts["chains"] // 4, counts
    shortest = "\n".join(disagreements[:3])
    assert not disagreements, f"{len(disagreements)} of {counts['chains']} chains disagree; the shortest:\n{shortest}"


def test_replay_matches_layout_quick():
    counts, disagreements = _run(QUICK_EXAMPLES, _compare_with_layout)
    _report("replay against layout", counts, disagreements)
    _assert_agreement(counts, disagreements)
    assert counts["confirmed"] > 0
    assert counts["benign"] > 0


def test_static_matches_replay_quick():
    require_analyser()
    counts, disagreements = _run(QUICK_EXAMPLES, _compare_with_static)
    _report("static against replay", counts, disagreements)
    _assert_agreement(counts, disagreements)


@pytest.mark.slow
def test_replay_matches_layout_10000():
    counts, disagreements = _run(SLOW_EXAMPLES, _compare_with_layout)
    _report("replay against layout", counts, disagreements)
    _assert_agreement(counts, disagreements)


@pytest.mark.slow
def test_static_matches_replay_10000():
    require_analyser()
    counts, disagreements = _run(SLOW_EXAMPLES, _compare_with_static)
    _report("static against replay", counts, disagreements)
    _assert_agreement(counts, disagreements)


def test_generated_module_positions_match_the_steps():
    # The chain's positions must point at the step texts inside the module, or the analyser comparison is void.
    @settings(max_examples=50, deadline=None, derandomize=True, database=None)
    @given(generated_chains())
    def check(chain: GeneratedChain) -> None:
        module, replay = render(chain)
        lines = module.splitlines()
        for step in replay.steps:
            line = lines[step.line - 1]
            assert line[step.col - 1 :].startswith(step.code), (step, line)

    check()
