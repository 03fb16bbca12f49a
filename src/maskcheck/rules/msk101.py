"""MSK101: a (N*num_heads, L, S) attention mask laid out head-major.

nn.MultiheadAttention, F.multi_head_attention_forward and the nn.Transformer* layers read slot b*num_heads + h of a
3-D mask as example b, head h (batch-major; measured on PyTorch 2.13). `m.repeat(num_heads, 1, 1)`, `tile`,
`torch.cat([m] * num_heads)`, `stack(..., dim=0)`, einops `(h b)` and a transpose before flattening all put the
head outside the example (head-major), so with N > 1 and H > 1 most heads get another example's mask. Nothing
raises or warns. The same order is wrong the other way round for per-head data: an (H, L, S) bias must be
`repeat`ed by the batch size, and `repeat_interleave` is the bug there.
"""

from __future__ import annotations

import ast
from typing import FrozenSet, List, Optional, Tuple

import libcst as cst

from maskcheck.analysis.consumers import CONFIGURED_CONSUMER, UNKNOWN_CONSUMER
from maskcheck.analysis.einops_patterns import swap_group
from maskcheck.analysis.interpreter import MaskUse
from maskcheck.analysis.names import code_without_comments, dotted_name, last_name, product_terms, source_text
from maskcheck.analysis.values import BATCH, BATCH_SIZE_NAMES, HEAD, LOOP, UNKNOWN, Axis, Factor, OpRecord
from maskcheck.chain import SOURCE_EXAMPLE, SOURCE_EXAMPLE_HEAD, SOURCE_HEAD
from maskcheck.rules import Issue
from maskcheck.settings import Settings

CODE = "MSK101"
TITLE = "head-major attention mask layout"

_MAX_QUOTED = 90

# The role of a copy count that multiplies the head count by another size. Neither check accepts it.
_HEADS_TIMES_OTHER = "head count times another size"


def check(use: MaskUse, settings: Settings) -> List[Issue]:
    tensor = use.tensor
    if tensor.axes is None or len(tensor.axes) != 3:
        return []
    heads = _HeadCounts(use.consumer.head_counts, settings.head_count_names)

    scrambled = _check_scrambled(use, heads)
    if scrambled is not None:
        return [scrambled]
    issue = _check_head_major(use, heads)
    return [issue] if issue is not None else []


class _HeadCounts:
    """Decides whether a size text is the head count of the consumer that the mask reaches."""

    def __init__(self, consumer_counts: FrozenSet[str], names: FrozenSet[str]) -> None:
        self.consumer_counts = {_without_self(text) for text in consumer_counts}
        self.names = names

    def evidence(self, texts: FrozenSet[str]) -> Optional[str]:
        # Names read better than the literal a name was bound to (`num_heads` rather than `2`).
        ordered = sorted(texts, key=lambda text: (text.isdigit(), len(text)))
        for text in ordered:
            if _without_self(text) in self.consumer_counts:
                return f"`{text}` is the head count the layer was built with"
        for text in ordered:
            # Only a plain name or attribute chain can name the head count: `bsz*self.num_heads` is a product.
            if last_name(text) in self.names:
                return f"`{text}` names the head count"
        return None

    def multiplied_head_count(self, texts: FrozenSet[str]) -> Optional[str]:
        """Return a text among `texts` that multiplies the head count by another size (`bsz*self.num_heads`),
        unless one of them is exactly the layer's head count."""
        if any(_without_self(text) in self.consumer_counts for text in texts):
            return None
        for text in sorted(texts):
            terms = product_terms(text)
            if len(terms) > 1 and any(self.evidence(frozenset({term})) for term in terms):
                return text
        return None


def _without_unit_factors(texts: FrozenSet[str]) -> FrozenSet[str]:
    """Drop factors of 1 from products: `1*self.num_heads` names the same count as `self.num_heads`."""
    kept = set()
    for text in texts:
        terms = [term for term in product_terms(text) if term != "1"]
        kept.add(terms[0] if len(terms) == 1 else text)
    return frozenset(kept)


def _without_self(text: str) -> str:
    return text[5:] if text.startswith("self.") else text


def _resolve(factor: Factor, heads: _HeadCounts) -> Tuple[str, str]:
    """Return a factor's role and the evidence for it."""
    if factor.role in (BATCH, HEAD, LOOP):
        return factor.role, factor.evidence
    sizes = _without_unit_factors(factor.sizes)
    if heads.multiplied_head_count(sizes) is not None:
        # `m.repeat(bsz * num_heads, 1, 1)` makes N*H copies of one mask: every slot gets the same data, and a
        # source with an N axis of its own would give N*N*H slots, which the layer rejects.
        return _HEADS_TIMES_OTHER, ""
    head_evidence = heads.evidence(sizes)
    if head_evidence is not None:
        return HEAD, head_evidence
    for text in sorted(sizes, key=len):
        if last_name(text) in BATCH_SIZE_NAMES:
            return BATCH, f"`{text}` names the batch size"
    return UNKNOWN, ""


# -------------------------------------------------------------------------------------------------------------------
# The checks


def _check_scrambled(use: MaskUse, heads: _HeadCounts) -> Optional[Issue]:
    """Head copies on the query or key axis: a reshape cut the mask at the wrong place (`repeat(1, 1, H).view(...)`)."""
    for axis in use.tensor.axes[1:]:
        if axis.merged_by is None:
            continue
        if any(_resolve(f, heads)[0] == HEAD for f in axis.factors):
            node = axis.merged_by.node
            expression = _quote(node)
            head_text = _head_text(axis, heads, node)
            root = _root_receiver(node)
            usable = root is not None and root == use.tensor.source and head_text is not None
            replacement = f"{root}.repeat_interleave({head_text}, dim=0)" if usable else None
            fix = f"use `{_one_line(replacement)}`" if replacement else "repeat along axis 0 with `repeat_interleave`"
            message = (
                f"`{expression}` moves the head copies into the query or key axis of the mask, so every slot gets "
                f"rows of the wrong mask; {fix} instead"
            )
            return Issue(CODE, node, message, replacement, use=use, source_kind=SOURCE_EXAMPLE)
    return None


def _check_head_major(use: MaskUse, heads: _HeadCounts) -> Optional[Issue]:
    axis = use.tensor.axes[0]
    if axis.merged_by is None or len(axis.factors) != 2:
        return None
    (outer, inner) = axis.factors
    (outer_role, outer_evidence), (inner_role, inner_evidence) = _resolve(outer, heads), _resolve(inner, heads)

    if outer_role == HEAD and inner_role in (BATCH, UNKNOWN):
        head, batch = outer, inner
        evidence = [outer_evidence, inner_evidence or "so " + _contract_evidence(use, "the other factor", "the batch")]
        if head.varying and not batch.varying:
            evidence.insert(0, f"`{use.tensor.source}` holds one mask or bias per head on axis 0")
    elif outer_role == UNKNOWN and inner_role == BATCH:
        # The batch is known (a guard, an outer product, a batch-size name), so the head count is inferred.
        head, batch = outer, inner
        evidence = [inner_evidence, _contract_evidence(use, _other_factor(head), "then the head count")]
    else:
        return None
    if not (head.varying or batch.varying):
        # Both factors are copies (a shared 2-D mask expanded both ways): every slot contains the same mask.
        return None

    node = axis.merged_by.node
    head_text = _head_text(axis, heads, node)
    replacement = _replacement(use, axis, head, batch, head_text)
    message = _message(use, node, head, batch, replacement, [e for e in evidence if e])
    return Issue(
        CODE,
        node,
        message,
        replacement,
        use=use,
        source_kind=_source_kind(head, batch),
        sizes=_size_roles(use, head, batch, heads),
    )


def _contract_evidence(use: MaskUse, factor: str, role: str) -> str:
    """Infer the role of the factor that nothing named, from the consumer's (N*num_heads, L, S) contract."""
    if use.consumer.kind == UNKNOWN_CONSUMER:
        return f"{factor} is {role} if `{use.consumer.callee}` passes `attn_mask` on"
    return f"{factor} is {role}, as the (N*num_heads, L, S) shape requires"


def _other_factor(factor: Factor) -> str:
    texts = sorted(factor.sizes, key=lambda text: (text.isdigit(), len(text)))
    return f"the other factor (`{texts[0]}`)" if texts else "the other factor"


def _source_kind(head: Factor, batch: Factor) -> str:
    if head.varying and batch.varying:
        return SOURCE_EXAMPLE_HEAD
    if head.varying:
        return SOURCE_HEAD
    return SOURCE_EXAMPLE


def _size_roles(use: MaskUse, head: Factor, batch: Factor, heads: _HeadCounts) -> Tuple[Tuple[str, str], ...]:
    """Map the size texts of the construction to N, H, L or S, for the verifier to bind."""
    roles = {}
    for text in head.sizes:
        roles[text] = "H"
    for text in batch.sizes:
        roles.setdefault(text, "N")
    for axis, role in zip(use.tensor.axes[1:], ("L", "S")):
        for factor in axis.factors:
            for text in factor.sizes:
                roles.setdefault(text, role)
    # A head count the analysis did not attach to a factor, such as `self.num_heads` in
    # `.view(batch * self.num_heads, L, S)` when the heads came from the source's own axis.
    for step in use.tensor.steps:
        for text in _names_in(step.node):
            if heads.evidence(frozenset({text})) is not None:
                roles.setdefault(text, "H")
    return tuple(sorted(roles.items()))


def _names_in(node: cst.CSTNode) -> List[str]:
    """Source texts of the names and attribute chains (`self.cfg.num_heads`) inside `node`."""
    found: List[str] = []
    stack: List[cst.CSTNode] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, (cst.Name, cst.Attribute)):
            found.append(source_text(current))
            if isinstance(current, cst.Attribute):
                stack.append(current.value)
            continue
        stack.extend(current.children)
    return found


# -------------------------------------------------------------------------------------------------------------------
# Message


def _message(use: MaskUse, node, head: Factor, batch: Factor, replacement: Optional[str], evidence: List[str]) -> str:
    expression = _quote(node)
    if head.varying and batch.varying:
        received = "the mask of example 1, head 0"
    elif head.varying:
        received = "head 0's mask"
    else:
        received = "example 1's mask"
    consumer = _consumer_phrase(use)
    fix = f"use `{_one_line(replacement)}`" if replacement else "make the batch the outer factor of axis 0"
    text = (
        f"`{expression}` lays out the (N*num_heads, L, S) mask head-major, but {consumer} reads slot "
        f"b*num_heads + h as example b, head h, so slot 1 (example 0, head 1) gets {received}; {fix} instead"
    )
    if evidence:
        text += f" (evidence: {'; '.join(evidence)})"
    return text


def _consumer_phrase(use: MaskUse) -> str:
    consumer = use.consumer
    if consumer.kind == UNKNOWN_CONSUMER:
        return f"`{consumer.callee}` takes `attn_mask` (not a known attention layer, so this is less certain) and"
    if consumer.kind == CONFIGURED_CONSUMER:
        return f"`{consumer.callee}` (configured as passing `attn_mask` to nn.MultiheadAttention)"
    short = consumer.kind.replace("torch.nn.functional.", "F.").replace("torch.nn.", "nn.")
    return f"{short} (`{consumer.callee}`, argument `{consumer.argument}`)"


def _one_line(code: str) -> str:
    """Return code on one line for a message: a multi-line replacement keeps its comments, which would swallow
    the rest of the line if the lines were only joined."""
    if "\n" not in code:
        return code
    try:
        return ast.unparse(ast.parse(code.strip(), mode="eval"))
    except SyntaxError:
        return " ".join(line.split("#")[0].strip() for line in code.splitlines())


def _quote(node: cst.CSTNode) -> str:
    text = code_without_comments(node)
    if len(text) > _MAX_QUOTED:
        text = text[: _MAX_QUOTED - 3] + "..."
    return text


# -------------------------------------------------------------------------------------------------------------------
# Replacement


def _head_text(axis: Axis, heads: _HeadCounts, node: cst.CSTNode) -> Optional[str]:
    code = source_text(node)
    candidates = [text for f in axis.factors if _resolve(f, heads)[0] == HEAD for text in f.sizes]
    present = [text for text in candidates if text in code]
    pool = present or candidates
    return min(pool, key=len) if pool else None


def _replacement(use: MaskUse, axis: Axis, head: Factor, batch: Factor, head_text: Optional[str]) -> Optional[str]:
    record = axis.merged_by
    node = record.node
    rewritten = None
    if record.kind in ("repeat", "tile"):
        rewritten = _rewrite_repeat(node, head_text)
    elif record.kind == "cat":
        rewritten = _rewrite_cat(node)
    elif record.kind == "repeat_interleave":
        rewritten = _rewrite_interleave_of_head_data(node, use)
    elif record.kind == "einops":
        rewritten = _rewrite_einops(node, record, head, batch)
    elif record.kind in ("flatten", "reshape") and axis.placed_by is not None:
        rewritten = _rewrite_cause(node, axis.placed_by)
    if rewritten is None and not head.varying and head_text:
        # Only when the chain starts at the per-example source itself: `torch.cat(copies)` starts at `torch`, and
        # a chain that starts at an intermediate 4-D value needs another fix.
        root = _root_receiver(node)
        if root is not None and root == use.tensor.source and _in_first_step(use, node):
            rewritten = f"{root}.repeat_interleave({head_text}, dim=0)"
    return rewritten


def _in_first_step(use: MaskUse, node: cst.CSTNode) -> bool:
    steps = use.tensor.steps
    return not steps or _contains(steps[0].node, node)


def _call_parts(node: cst.CSTNode) -> Optional[Tuple[str, str, List[cst.Arg]]]:
    """Split `X.method(args)` into (X text, method, args)."""
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
        return source_text(node.func.value), node.func.attr.value, list(node.args)
    return None


def _counts(args: List[cst.Arg]) -> List[str]:
    if len(args) == 1 and isinstance(args[0].value, (cst.Tuple, cst.List)):
        return [source_text(e.value) for e in args[0].value.elements]
    return [source_text(a.value) for a in args if a.keyword is None]


def _rewrite_repeat(node: cst.CSTNode, head_text: Optional[str]) -> Optional[str]:
    parts = _call_parts(node)
    if parts is None:
        return None
    receiver, method, args = parts
    if method == "tile" and isinstance(node.func.value, (cst.Name, cst.Attribute)) and receiver == "torch":
        # torch.tile(x, dims)
        if len(args) < 2:
            return None
        receiver = source_text(args[0].value)
        args = args[1:]
    counts = _counts(args)
    if not counts:
        return None
    head = counts[0]
    rest = counts[1:]
    base = _wrap(receiver)
    if any(count.strip() != "1" for count in rest):
        base = f"{base}.repeat(1, {', '.join(rest)})"
    return f"{base}.repeat_interleave({head}, dim=0)"


def _rewrite_cat(node: cst.CSTNode) -> Optional[str]:
    if not isinstance(node, cst.Call) or not node.args:
        return None
    first = node.args[0].value
    if isinstance(first, (cst.ListComp, cst.GeneratorExp)) and isinstance(first.for_in.iter, cst.Call):
        # `torch.cat([m for _ in range(h)])`
        range_args = first.for_in.iter.args
        if len(range_args) == 1:
            return f"{_wrap(source_text(first.elt))}.repeat_interleave({source_text(range_args[0].value)}, dim=0)"
        return None
    if not isinstance(first, cst.BinaryOperation):
        return None
    if isinstance(first.left, cst.List) and len(first.left.elements) == 1:
        element, count = first.left.elements[0].value, first.right
    elif isinstance(first.right, cst.List) and len(first.right.elements) == 1:
        element, count = first.right.elements[0].value, first.left
    else:
        return None
    return f"{_wrap(source_text(element))}.repeat_interleave({source_text(count)}, dim=0)"


def _rewrite_interleave_of_head_data(node: cst.CSTNode, use: MaskUse) -> Optional[str]:
    parts = _call_parts(node)
    if parts is None:
        return None
    receiver, _, args = parts
    positional = [a for a in args if a.keyword is None]
    repeats = next((a for a in args if a.keyword is not None and a.keyword.value == "repeats"), None)
    count = source_text((repeats or positional[0]).value) if (repeats or positional) else None
    if count is None:
        return None
    ones = ", ".join(["1"] * (len(use.tensor.axes) - 1))
    return f"{_wrap(receiver)}.repeat({count}, {ones})"


def _rewrite_einops(node: cst.CSTNode, record: OpRecord, head: Factor, batch: Factor) -> Optional[str]:
    if not isinstance(node, cst.Call) or len(node.args) < 2:
        return None
    pattern_node = node.args[1].value
    if not isinstance(pattern_node, cst.SimpleString):
        return None
    pattern = pattern_node.evaluated_value
    _, _, right = pattern.partition("->")
    for group in _groups(right):
        if len(group) == 2:
            swapped = swap_group(pattern, group[0], group[1])
            if swapped is not None:
                quote = pattern_node.quote
                new_string = pattern_node.with_changes(value=f"{pattern_node.prefix}{quote}{swapped}{quote}")
                return source_text(node.deep_replace(pattern_node, new_string))
    return None


def _groups(side: str) -> List[List[str]]:
    groups = []
    depth_start = None
    for index, char in enumerate(side):
        if char == "(":
            depth_start = index + 1
        elif char == ")" and depth_start is not None:
            groups.append(side[depth_start:index].split())
            depth_start = None
    return groups


def _rewrite_cause(node: cst.CSTNode, cause: OpRecord) -> Optional[str]:
    """Fix the call that put the head axis before the batch axis, when it sits inside the flagged expression."""
    if not _contains(node, cause.node):
        return None
    if cause.kind in ("transpose", "permute") and isinstance(cause.node, cst.Call):
        receiver = cause.node.func.value if isinstance(cause.node.func, cst.Attribute) else None
        if receiver is None:
            return None
        return source_text(node.deep_replace(cause.node, receiver))
    if cause.kind == "stack" and isinstance(cause.node, cst.Call) and cause.node.args:
        first = source_text(cause.node.args[0].value)
        fixed = cst.parse_expression(f"{source_text(cause.node.func)}({first}, dim=1)")
        return source_text(node.deep_replace(cause.node, fixed))
    if cause.kind == "unsqueeze":
        return _rewrite_new_leading_axis(node, cause.node)
    if cause.kind == "expand" and isinstance(cause.node, cst.Call):
        # `X.expand(H, N, L, S)` or `torch.broadcast_to(X, (H, N, L, S))` added the head axis in front of X's axes.
        copier = _copy_call(cause.node)
        if copier is None:
            return None
        receiver, method, shape_args, function = copier
        sizes = _counts(shape_args)
        if len(sizes) < 2:
            return None
        swapped = [sizes[1], sizes[0]] + sizes[2:]
        fixed = _copy_call_text(f"{_wrap(source_text(receiver))}.unsqueeze(1)", method, shape_args, swapped, function)
        return source_text(node.deep_replace(cause.node, cst.parse_expression(fixed)))
    return None


def _rewrite_new_leading_axis(node: cst.CSTNode, inserted: cst.CSTNode) -> Optional[str]:
    """Move a new leading axis behind the batch axis: `X.unsqueeze(0).expand(H, ...)` becomes
    `X.unsqueeze(1).expand(-1, H, ...)` and `X[None]` becomes `X[:, None]`. The copy call may also be `broadcast_to`,
    `repeat` or `tile`, as a method or as a torch function (`torch.broadcast_to(X[None], shape)`)."""
    found = _find_call_on(node, inserted)
    if found is None:
        return None
    copier = _copy_call(found)
    if copier is None:
        return None
    _, method, shape_args, function = copier
    if isinstance(inserted, cst.Call) and dotted_name(inserted.func) == "torch.unsqueeze":
        if not inserted.args:
            return None
        new_axis = f"torch.unsqueeze({source_text(inserted.args[0].value)}, 1)"
    elif isinstance(inserted, cst.Call) and isinstance(inserted.func, cst.Attribute):
        new_axis = f"{_wrap(source_text(inserted.func.value))}.unsqueeze(1)"
    elif isinstance(inserted, cst.Subscript) and len(inserted.slice) == 1:
        new_axis = f"{_wrap(source_text(inserted.value))}[:, None]"
    else:
        return None
    sizes = _counts(shape_args)
    if len(sizes) < 2:
        return None
    keep = "-1" if method in ("expand", "broadcast_to") else "1"
    first_kept = sizes[1] if sizes[1].strip() not in ("-1", "1") else keep
    swapped = [first_kept, sizes[0]] + sizes[2:]
    fixed = _copy_call_text(new_axis, method, shape_args, swapped, function)
    return source_text(node.deep_replace(found, cst.parse_expression(fixed)))


# torch functions that copy their first argument along the sizes that follow it, and their method names.
_COPY_FUNCTIONS = {"torch.broadcast_to": "broadcast_to", "torch.tile": "tile"}
_COPY_METHODS = ("expand", "broadcast_to", "repeat", "tile")


def _copy_call(call: cst.Call) -> Optional[Tuple[cst.BaseExpression, str, List[cst.Arg], Optional[str]]]:
    """Split `X.expand(sizes)` or `torch.broadcast_to(X, shape)` into (X, method name, the size arguments, and
    the function's name for the function form or None for the method form)."""
    function = dotted_name(call.func)
    if function in _COPY_FUNCTIONS:
        if not call.args or call.args[0].keyword is not None:
            return None
        return call.args[0].value, _COPY_FUNCTIONS[function], list(call.args[1:]), function
    if isinstance(call.func, cst.Attribute) and call.func.attr.value in _COPY_METHODS:
        return call.func.value, call.func.attr.value, list(call.args), None
    return None


def _copy_call_text(
    receiver: str, method: str, shape_args: List[cst.Arg], sizes: List[str], function: Optional[str]
) -> str:
    """Write the copy call again with new sizes, keeping the form of the original: function or method, and one
    tuple or list argument or separate arguments."""
    shape = ", ".join(sizes)
    if len(shape_args) == 1 and isinstance(shape_args[0].value, cst.Tuple):
        shape = f"({shape})"
    elif len(shape_args) == 1 and isinstance(shape_args[0].value, cst.List):
        shape = f"[{shape}]"
    if function is not None:
        return f"{function}({receiver}, {shape})"
    return f"{receiver}.{method}({shape})"


def _find_call_on(node: cst.CSTNode, receiver: cst.CSTNode) -> Optional[cst.Call]:
    """Find the copy call inside `node` whose input is `receiver`, as a method (`receiver.expand(...)`) or as the
    first argument of `torch.broadcast_to` or `torch.tile`."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Call):
            copier = _copy_call(current)
            if copier is not None and copier[0] is receiver:
                return current
        stack.extend(current.children)
    return None


def _contains(node: cst.CSTNode, target: cst.CSTNode) -> bool:
    stack = [node]
    while stack:
        current = stack.pop()
        if current is target:
            return True
        stack.extend(current.children)
    return False


def _root_receiver(node: cst.CSTNode) -> Optional[str]:
    """The value a method chain starts from: `m` in `m.unsqueeze(0).expand(...).reshape(...)`."""
    current = node
    while True:
        if isinstance(current, cst.Call) and isinstance(current.func, cst.Attribute):
            current = current.func.value
        elif isinstance(current, cst.Subscript):
            current = current.value
        else:
            break
    if current is node or not isinstance(current, (cst.Name, cst.Attribute)):
        return None
    return source_text(current)


def _wrap(text: str) -> str:
    """Parenthesise an expression that a method call would otherwise bind to only in part (`~m`, `a * b`)."""
    try:
        expression = cst.parse_expression(text)
    except cst.ParserSyntaxError:
        return f"({text})"
    if isinstance(expression, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) or expression.lpar:
        return text
    return f"({text})"
