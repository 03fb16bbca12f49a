"""The shortcuts that make the interpreter faster must give what the plain code gives.

The interpreter keeps per-node results: the compact source text and the expressions inside unmodelled nodes. It
walks the syntax tree without libcst's `children` and merges repeated keywords of a constructor call. It copies
tensors without `dataclasses.replace`, reads decimal literals without `ast.literal_eval`, and joins alternatives
with shortcuts for equal or empty groups. Each test compares one of these with the slow form, or checks a case
that a wrong cache would get wrong.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Tuple

import libcst as cst
import pytest

from maskcheck.analysis import interpreter
from maskcheck.analysis.interpreter import (
    MAX_ALTERNATIVES,
    BoundArguments,
    Instance,
    ModuleInterpreter,
    join,
)
from maskcheck.analysis.names import compact_text
from maskcheck.analysis.values import (
    BATCH,
    UNKNOWN_VALUE,
    Axis,
    Factor,
    Layer,
    OpRecord,
    Size,
    Step,
    Tensor,
    axis_order,
)
from maskcheck.engine import check_source

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"


def _all_nodes(module: cst.CSTNode) -> List[cst.CSTNode]:
    found = []
    stack: List[cst.CSTNode] = [module]
    while stack:
        node = stack.pop()
        found.append(node)
        stack.extend(node.children)
    return found


@pytest.fixture(scope="module")
def fixture_children() -> List[Tuple[cst.CSTNode, List[cst.CSTNode]]]:
    """Every node of the fixture files with its libcst `children`, which are slow to list, so listed once."""
    pairs = []
    for path in sorted(FIXTURES_DIR.rglob("*.py")):
        try:
            module = cst.parse_module(path.read_text(encoding="utf-8"))
        except cst.ParserSyntaxError:
            continue
        stack: List[cst.CSTNode] = [module]
        while stack:
            node = stack.pop()
            children = list(node.children)
            pairs.append((node, children))
            stack.extend(children)
    return pairs


def test_code_children_match_libcst_children(fixture_children):
    for node, children in fixture_children:
        expected = {id(child) for child in children if not isinstance(child, interpreter._FORMATTING_NODE_TYPES)}

        assert {id(child) for child in interpreter._code_children(node)} == expected, type(node).__name__

    assert len(fixture_children) > 10_000


def test_formatting_nodes_hold_no_code(fixture_children):
    # `_code_children` skips these nodes, so `_call_ids` and `_uses_name` rely on them holding no name or call.
    formatting = [node for node, _ in fixture_children if isinstance(node, interpreter._FORMATTING_NODE_TYPES)]
    for node in formatting:
        inside = _all_nodes(node)

        assert not any(isinstance(part, (cst.Name, cst.Call)) for part in inside), type(node).__name__

    assert len(formatting) > 10_000


def test_call_ids_finds_every_call():
    module = cst.parse_module(
        "x = f(a)(b)\n"
        "def g(y=h()):\n"
        "    return [k(i) for i in range(3)] + (  # comment\n"
        "        m.n(p=q())\n"
        "    )\n"
    )
    expected = {id(node) for node in _all_nodes(module) if isinstance(node, cst.Call)}

    assert len(expected) == 7
    assert interpreter._call_ids(module) == expected


def test_compact_text_cache_separates_nodes():
    analysis = ModuleInterpreter(cst.parse_module(""))
    for index in range(200):
        # Each node is freed after use, so a cache keyed by a bare id would soon meet a reused id.
        node = cst.parse_expression(f"f( a{index} ,  b )")

        assert analysis._compact_text(node) == f"f(a{index},b)"
        del node


def test_compact_text_cache_matches_code():
    analysis = ModuleInterpreter(cst.parse_module(""))
    node = cst.parse_expression("x . view( bsz * num_heads ,  -1 )")

    assert analysis._compact_text(node) == compact_text(node)
    assert analysis._compact_text(node) == "x.view(bsz*num_heads,-1)"


UNMODELLED_CONSUMER = """\
import torch.nn as nn


def attend_and_log(attn, x, mask):
    print(f"{attn(x, x, x, attn_mask=mask)}")


class Model(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, mask):
        attend_and_log(self.attn, x, mask.repeat_interleave(self.num_heads, dim=0))
        attend_and_log(self.attn, x, mask.repeat(self.num_heads, 1, 1))
"""


def test_unmodelled_expression_evaluated_per_call(tmp_path):
    # The f-string has no evaluator, so its expressions come from the per-node cache. The first call passes a
    # batch-major mask, the second a head-major one, which must still be reported.
    path = tmp_path / "model.py"
    path.write_text(UNMODELLED_CONSUMER)

    findings = check_source(UNMODELLED_CONSUMER, str(path))

    assert [(f.code, f.line) for f in findings] == [("MSK101", 16)]


LAYER_VARIANTS = """\
import torch.nn as nn


class Plain(nn.Module):
    def forward(self, q, k, v, key_padding_mask=None, need_weights=True, attn_mask=None):
        return q


class Holder(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, mask, num_heads):
        # Positional, so that a call of an unknown `layer` is not taken for a wrapper that passes `attn_mask` on.
        return self.layer(x, x, x, None, False, mask.repeat(num_heads, 1, 1))


def run(x, mask, dim, num_heads):
    plain = Holder(Plain())
    real = Holder({second})
    plain(x, mask, num_heads)
    return real(x, mask, num_heads)
"""


def _holder_variants(source: str):
    """Run the interpreter on `source` and return the collected attributes of each Holder built with arguments."""
    analysis = ModuleInterpreter(cst.parse_module(source))
    analysis.run()
    holder = analysis.root.classes["Holder"]
    return [
        attributes
        for (class_id, arguments), attributes in analysis._class_attributes.items()
        if class_id == id(holder) and arguments is not None
    ]


def _layer_kinds(attributes) -> set:
    kinds = set()
    for value in attributes["layer"]:
        if isinstance(value, Layer):
            kinds.add(value.kind)
        elif isinstance(value, Instance):
            kinds.add(value.class_def.name.value)
    return kinds


def test_class_variants_keep_their_own_attributes():
    variants = _holder_variants(LAYER_VARIANTS.format(second="nn.MultiheadAttention(dim, num_heads)"))

    assert len(variants) == 2
    assert sorted(_layer_kinds(v) for v in variants) == sorted([{"Plain"}, {"torch.nn.MultiheadAttention"}])


def test_class_variants_report_only_real_layer(tmp_path):
    path = tmp_path / "holder.py"
    with_attention = LAYER_VARIANTS.format(second="nn.MultiheadAttention(dim, num_heads)")
    without_attention = LAYER_VARIANTS.format(second="Plain()")

    assert [(f.code, f.line) for f in check_source(with_attention, str(path))] == [("MSK101", 16)]
    assert check_source(without_attention, str(path)) == []


REPEATED_KEYWORD = """\
import torch.nn as nn


class Plain(nn.Module):
    def forward(self, q, k, v, attn_mask=None):
        return q


class Holder(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer


def run(dim, num_heads):
    attention = nn.MultiheadAttention(dim, num_heads)
    options = dict(layer=Plain())
    first = Holder(**options, layer=attention)
    second = Holder(layer=attention)
    return first.layer, second.layer
"""


def test_repeated_keyword_binds_last_value():
    variants = _holder_variants(REPEATED_KEYWORD)

    # Both calls bind `layer` to the attention layer, so they share one variant.
    assert len(variants) == 1
    assert _layer_kinds(variants[0]) == {"torch.nn.MultiheadAttention"}


def test_with_keywords_bound_keeps_first_place():
    first, second, third = (Tensor(None, source="a"),), (Tensor(None, source="b"),), (UNKNOWN_VALUE,)
    arguments = BoundArguments((), (("layer", first), ("extra", third), ("layer", second)))

    bound = arguments.with_keywords_bound()

    assert bound.keywords == (("layer", second), ("extra", third))
    assert bound.positional == ()


def _tensors(count: int) -> tuple:
    return tuple(Tensor(None, source=f"t{index}") for index in range(count))


@pytest.mark.parametrize(
    "groups, expected",
    [
        ((), ()),
        (((), ()), ()),
        (("a",), ("a",)),
        ((("a", "a", "b"),), ("a", "b")),
        ((("a", "a"), ("a", "a")), ("a",)),
        ((("a", "b"), ()), ("a", "b")),
        (((), ("b", "b")), ("b",)),
        ((("a", "b"), ("b", "c")), ("a", "b", "c")),
    ],
)
def test_join_examples(groups, expected):
    groups = tuple(tuple(group) for group in groups)

    assert join(*groups) == expected


def test_join_same_group_twice_drops_duplicates():
    group = ("x", "y", "x")

    assert join(group, group) == ("x", "y")


def test_join_keeps_last_alternatives():
    many = _tensors(MAX_ALTERNATIVES + 3)

    assert join(many, many) == many[-MAX_ALTERNATIVES:]
    assert join(many, ()) == many[-MAX_ALTERNATIVES:]
    assert join((), many) == many[-MAX_ALTERNATIVES:]


def test_join_states_dedupes_shared_names():
    repeated = ("m", "m")
    first = ({"a": repeated, "b": ("x",)}, {})
    second = ({"a": repeated, "b": ("y",), "c": ("z",)}, {})

    values, _ = interpreter.join_states(first, second)

    assert values == {"a": ("m",), "b": ("x", "y"), "c": ("z",)}


def _tensor_with_every_field() -> Tensor:
    node = cst.parse_expression("m.repeat(h, 1, 1)")
    factor = Factor(BATCH, varying=True, sizes=frozenset({"bsz"}), evidence="guard")
    axis = Axis((factor,), merged_by=OpRecord(node, "repeat", ("h",)))
    values = {
        "axes": (axis,),
        "source": "mask",
        "steps": (Step("m", node),),
        "assumed_rank": True,
        "strided": True,
        "memory_order": (factor.uid,),
        "entry": node,
    }
    # A new Tensor field without a value here fails this check: the copy must be tested with it set.
    assert set(values) == {field.name for field in dataclasses.fields(Tensor)}
    return Tensor(**values)


def test_tensor_with_step_matches_replace():
    tensor = _tensor_with_every_field()
    step = Step("n", cst.parse_expression("m.float()"))

    copied = tensor.with_step(step)

    assert copied == dataclasses.replace(tensor, steps=tensor.steps + (step,))
    assert copied.entry is tensor.entry
    assert tensor.steps == copied.steps[:-1]


def test_tensor_with_axes_matches_replace():
    tensor = _tensor_with_every_field()
    axes = tensor.axes + (Axis(()),)

    assert tensor.with_axes(axes) == dataclasses.replace(tensor, axes=axes)
    assert tensor.with_axes(axes, contiguous=True) == dataclasses.replace(
        tensor, axes=axes, strided=False, memory_order=axis_order(axes)
    )


@pytest.mark.parametrize("text", ["0", "00", "7", "12", "1_000", "0x1F", "0o17", "0b101", "0X_ff", "1" * 50])
def test_integer_value_matches_evaluated_value(text):
    node = cst.Integer(text)

    assert interpreter._integer_value(node) == int(node.evaluated_value)


def test_integer_value_of_huge_literal_is_unknown():
    # Python 3.11 converts at most 4,300 digits, so a longer literal has no known value.
    assert interpreter._integer_value(cst.Integer("9" * 5000)) is None


def test_size_of_literal_keeps_value():
    analysis = ModuleInterpreter(cst.parse_module(""))
    scope = interpreter.Scope()

    assert analysis.size_of(cst.Integer("1_0"), scope) == Size(frozenset({"1_0"}), terms=1, value=10)
    assert analysis.size_of(cst.Integer("1"), scope).terms == 0


def test_analysis_of_source_is_repeatable():
    # The caches live in one interpreter: a second interpreter on the same tree does the same work.
    module = cst.parse_module(UNMODELLED_CONSUMER)
    counts = []
    for _ in range(2):
        analysis = ModuleInterpreter(module)
        uses = analysis.run()
        counts.append((analysis.statements_run, len(uses)))

    assert counts[0] == counts[1]
    assert counts[0][1] > 0
