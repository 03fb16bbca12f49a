"""A restricted interpreter that rebuilds a mask from the expressions of a construction chain.

It walks libcst expression nodes itself and never imports, compiles or evaluates the user's code. Names resolve
only to the synthetic source, the size expressions the analyser recorded, the targets of earlier steps, and the
`torch`, `einops`, `F` and `nn` namespaces. Only the operations in `tensor_ops` run; anything else raises
ReplayError naming the expression and its position in the user's file.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from maskcheck.verify.tensor_ops import (
    MAX_DIM_SIZE,
    MAX_ELEMENTS,
    ReplayError,
    TensorOps,
    outer_parentheses_match,
    short_text,
)

# Upper bound on evaluated nodes per step, so nested comprehensions cannot run for minutes.
MAX_EVALUATIONS = 100_000
# libcst 1.9's native parser crashes the process (a segmentation fault, not a RecursionError) on about 2,000 nested
# brackets or 10,000 nested unary operators, so longer or deeper step texts are rejected before parsing.
MAX_STEP_CHARACTERS = 5_000
MAX_BRACKET_DEPTH = 200

__all__ = ["MAX_DIM_SIZE", "MAX_ELEMENTS", "ReplayError", "Step", "normalise_text", "parse_step", "replay_steps"]


@dataclass(frozen=True)
class Step:
    """One expression to replay: the name it binds (or None), its exact source text and where that text starts.

    `line` is 1-based and `col` is the 1-based column of the text's first character.
    """

    target: Optional[str]
    code: str
    line: int
    col: int


@dataclass(frozen=True)
class Namespace:
    """A module or function reached through `torch`, `einops`, `F` or `nn`, by its qualified name."""

    qualname: str


# Bare names that resolve without a binding. `repeat` and `rearrange` stand for `from einops import repeat,
# rearrange`: the chain carries no imports, and both take a pattern string, so any other meaning fails loudly.
_GLOBAL_NAMES: Dict[str, str] = {
    "torch": "torch",
    "einops": "einops",
    "F": "torch.nn.functional",
    "nn": "torch.nn",
    "repeat": "einops.repeat",
    "rearrange": "einops.rearrange",
    "range": "builtins.range",
    "float": "builtins.float",
}

_DTYPE_NAMES = frozenset(
    {
        "bool",
        "float",
        "float32",
        "float16",
        "half",
        "bfloat16",
        "double",
        "float64",
        "long",
        "int64",
        "int",
        "int32",
        "short",
        "int16",
        "int8",
        "uint8",
    }
)

# Keyword arguments that never change a tensor's layout or values on the CPU. They are skipped unevaluated, so
# `device=x.device` needs no binding for `x`.
_IGNORED_KEYWORDS = frozenset(
    {"device", "non_blocking", "pin_memory", "memory_format", "layout", "requires_grad", "copy"}
)

_BINARY_OPERATORS: Dict[type, Callable[[Any, Any], Any]] = {
    cst.Add: lambda a, b: a + b,
    cst.Subtract: lambda a, b: a - b,
    cst.Multiply: lambda a, b: a * b,
    cst.FloorDivide: lambda a, b: a // b,
    cst.Modulo: lambda a, b: a % b,
    cst.BitAnd: lambda a, b: a & b,
    cst.BitOr: lambda a, b: a | b,
    cst.BitXor: lambda a, b: a ^ b,
}

_COMPARISON_OPERATORS: Dict[type, Callable[[Any, Any], Any]] = {
    cst.Equal: lambda a, b: a == b,
    cst.NotEqual: lambda a, b: a != b,
    cst.LessThan: lambda a, b: a < b,
    cst.LessThanEqual: lambda a, b: a <= b,
    cst.GreaterThan: lambda a, b: a > b,
    cst.GreaterThanEqual: lambda a, b: a >= b,
}

_MISSING = object()
_EMPTY_MODULE = cst.Module(body=[])


def normalise_text(text: str) -> str:
    """Return `text` without comments, whitespace or redundant outer parentheses, for matching names to bindings."""
    if "#" in text:
        text = re.sub(r"#[^\n]*", "", text)
    text = "".join(text.split())
    while text.startswith("(") and text.endswith(")") and outer_parentheses_match(text):
        text = text[1:-1]
    return text


@functools.lru_cache(maxsize=4096)
def parse_step(code: str) -> Tuple[cst.Module, cst.BaseExpression]:
    """Parse one step's source text into a module (for positions) and its expression.

    The text is wrapped in parentheses so that code spanning lines and trailing comments parse as they did inside
    the user's statement. Raises ReplayError when the text is not a single expression.
    """
    if len(code) > MAX_STEP_CHARACTERS:
        raise ReplayError("the step's text", f"is longer than {MAX_STEP_CHARACTERS} characters; rejected")
    if _bracket_depth(code) > MAX_BRACKET_DEPTH:
        raise ReplayError("the step's text", f"nests brackets deeper than {MAX_BRACKET_DEPTH} levels; rejected")

    problem = "is not a single Python expression"
    try:
        module = cst.parse_module("(" + code + "\n)\n")
    except cst.ParserSyntaxError:
        raise ReplayError("the step's text", problem) from None
    statement = module.body[0] if len(module.body) == 1 else None
    if not isinstance(statement, cst.SimpleStatementLine) or len(statement.body) != 1:
        raise ReplayError("the step's text", problem)
    expression = statement.body[0]
    if not isinstance(expression, cst.Expr):
        raise ReplayError("the step's text", problem)
    return module, expression.value


def _bracket_depth(code: str) -> int:
    """Return the deepest bracket nesting in `code`, counting brackets inside strings too (an over-estimate)."""
    depth = deepest = 0
    for char in code:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _position(module: cst.Module, node: cst.CSTNode, step: Step) -> Tuple[int, int]:
    """Map a node of the parenthesised step text back to a 1-based line and column in the user's file."""
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    try:
        start = wrapper.resolve(PositionProvider)[node].start
    except KeyError:
        return step.line, step.col
    if start.line == 1:
        # One character of the first line is the "(" that parse_step added.
        return step.line, step.col + start.column - 1
    return step.line + start.line - 1, start.column + 1


def replay_steps(
    steps: Sequence[Step],
    bindings: Mapping[str, Any],
    torch: Any,
    einops: Any,
    replacement: Optional[Tuple[int, str]] = None,
    flagged_text: str = "",
) -> Any:
    """Evaluate the steps in order and return the last step's value.

    `bindings` maps source texts (the source name, each size expression) to their values, and each step's target
    is bound for the steps after it. `replacement` swaps the code of one step (by index) for another text.
    `flagged_text` is the flagged expression, which picks the branch of a conditional expression when neither
    branch is `None`. Raises ReplayError whose message names the failing expression and its line:col in the
    user's file.
    """
    environment = {normalise_text(text): value for text, value in bindings.items()}
    operations = TensorOps(torch, einops)
    preferred = normalise_text(flagged_text) if flagged_text else ""
    value: Any = None
    for index, step in enumerate(steps):
        replaced = replacement is not None and replacement[0] == index
        code = replacement[1] if replacement is not None and replaced else step.code
        where_suffix = " in the replacement text" if replaced else ""
        try:
            module, expression = parse_step(code)
        except ReplayError as error:
            raise ReplayError(f"{error.subject} at {step.line}:{step.col}{where_suffix}", error.problem) from None

        interpreter = _Interpreter(operations, environment, preferred)
        try:
            value = interpreter.evaluate(expression)
        except ReplayError as error:
            line, col = (step.line, step.col) if error.position is None else _position(module, error.position, step)
            subject = f"{error.subject} at {line}:{col}{where_suffix}"
            raise ReplayError(subject, error.problem, depends_on_sizes=error.depends_on_sizes) from None
        except RecursionError:
            raise ReplayError(
                f"the expression at {step.line}:{step.col}{where_suffix}", "nests too deeply to replay"
            ) from None

        if step.target is not None:
            environment[normalise_text(step.target)] = value
    return value


class _Interpreter:
    """Evaluates one expression tree over an environment keyed by normalised source text."""

    def __init__(self, operations: TensorOps, environment: Dict[str, Any], preferred: str = "") -> None:
        self.operations = operations
        self.torch = operations.torch
        self.environment = environment
        self.preferred = preferred
        self.evaluations = 0
        # Leading names of bound texts such as `x.shape[0]` or `self.num_heads`. Rendering a node's text is the
        # slowest part of a replay, so only nodes that start with one of these names are rendered and looked up.
        self.compound_roots = {
            match.group(0)
            for key in environment
            if not key.isidentifier()
            for match in [_LEADING_NAME.match(key)]
            if match is not None
        }

    def evaluate(self, node: cst.BaseExpression) -> Any:
        self.evaluations += 1
        if self.evaluations > MAX_EVALUATIONS:
            raise ReplayError(short_text(node), f"needs more than {MAX_EVALUATIONS} evaluation steps; rejected", node)

        if isinstance(node, (cst.Name, cst.Integer)):
            # An Integer is bound when the analyser records a literal head count (`mask.repeat(8, 1, 1)` for a
            # layer built with 8 heads) as a size.
            if node.value in self.environment:
                return self.environment[node.value]
        elif isinstance(node, (cst.Attribute, cst.Subscript, cst.Call)) and _leading_name(node) in self.compound_roots:
            key = normalise_text(_EMPTY_MODULE.code_for_node(node))
            if key in self.environment:
                return self.environment[key]

        handler = self._HANDLERS.get(type(node))
        if handler is None:
            problem = f"is a {type(node).__name__} expression, which is not in the replay allow-list"
            raise ReplayError(short_text(node), problem, node)
        return handler(self, node)

    # -- names and literals ---------------------------------------------------------------------------------

    def _name(self, node: cst.Name) -> Any:
        constants = {"True": True, "False": False, "None": None}
        if node.value in constants:
            return constants[node.value]
        if node.value in _GLOBAL_NAMES:
            return Namespace(_GLOBAL_NAMES[node.value])
        raise ReplayError(
            f"name `{node.value}`",
            "is not bound: only the source, the recorded size expressions, earlier steps and torch, einops, F "
            "and nn can be replayed",
            node,
        )

    def _integer(self, node: cst.Integer) -> int:
        # Faster than libcst's evaluated_value, which calls ast.literal_eval. Base 0 reads 0x, 0o and 0b prefixes.
        return int(node.value.replace("_", ""), 0)

    def _float(self, node: cst.Float) -> float:
        return float(node.value.replace("_", ""))

    def _string(self, node: cst.BaseString) -> str:
        value = node.evaluated_value
        if not isinstance(value, str):
            raise ReplayError(short_text(node), "is a bytes literal, which the replay does not take", node)
        return value

    def _ellipsis(self, node: cst.Ellipsis) -> Any:
        return Ellipsis

    # -- operators ------------------------------------------------------------------------------------------

    def _unary(self, node: cst.UnaryOperation) -> Any:
        operand = self._plain(node.expression)
        operators: Dict[type, Callable[[Any], Any]] = {
            cst.BitInvert: lambda value: ~value,
            cst.Minus: lambda value: -value,
            cst.Plus: lambda value: +value,
        }
        operator = operators.get(type(node.operator))
        if operator is None:
            raise ReplayError(short_text(node), "uses an operator that is not in the replay allow-list", node)
        return self.operations.run(node, lambda: operator(operand))

    def _binary(self, node: cst.BinaryOperation) -> Any:
        left = self._plain(node.left)
        right = self._plain(node.right)
        if isinstance(node.operator, cst.Power):
            return self._power(node, left, right)
        operator = _BINARY_OPERATORS.get(type(node.operator))
        if operator is None:
            raise ReplayError(short_text(node), "uses an operator that is not in the replay allow-list", node)

        if isinstance(node.operator, cst.Multiply) and isinstance(left, list) != isinstance(right, list):
            items, count = (left, right) if isinstance(left, list) else (right, left)
            if not isinstance(count, int):
                raise ReplayError(short_text(node), "repeats a list by something that is not an integer", node)
            self.operations.check_count(node, count * max(len(items), 1), "a list of length")
        elif self.operations.is_tensor(left) and self.operations.is_tensor(right):
            self.operations.check_broadcast(node, left.shape, right.shape)
        return self.operations.run(node, lambda: operator(left, right))

    def _power(self, node: cst.BinaryOperation, base: Any, exponent: Any) -> Any:
        if not (isinstance(base, int) and isinstance(exponent, int)):
            raise ReplayError(short_text(node), "uses `**`, which the replay takes on integers only", node)
        if exponent > 64 and abs(base) > 1:
            raise ReplayError(short_text(node), f"is far over the replay limit of {MAX_DIM_SIZE}; rejected", node)
        return base**exponent

    def _comparison(self, node: cst.Comparison) -> Any:
        if len(node.comparisons) != 1:
            raise ReplayError(short_text(node), "is a chained comparison, which the replay does not take", node)
        target = node.comparisons[0]
        operator = _COMPARISON_OPERATORS.get(type(target.operator))
        if operator is None:
            raise ReplayError(short_text(node), "uses an operator that is not in the replay allow-list", node)
        left = self._plain(node.left)
        right = self._plain(target.comparator)
        if self.operations.is_tensor(left) and self.operations.is_tensor(right):
            self.operations.check_broadcast(node, left.shape, right.shape)
        return self.operations.run(node, lambda: operator(left, right))

    def _conditional(self, node: cst.IfExp) -> Any:
        """Follow one branch of `a if condition else b` without evaluating the condition.

        A branch that is the literal `None` means "no mask", so the other branch is the one to verify. Otherwise
        the branch that contains the flagged expression is taken.
        """
        branches = [node.body, node.orelse]
        candidates = [branch for branch in branches if not (isinstance(branch, cst.Name) and branch.value == "None")]
        if len(candidates) == 2 and self.preferred:
            texts = [normalise_text(_EMPTY_MODULE.code_for_node(branch)) for branch in branches]
            candidates = [branch for branch, text in zip(branches, texts) if self.preferred in text]
            # After a fix, both branches may read the same (`a if c else b` with b replaced by a).
            if len(candidates) == 2 and texts[0] == texts[1]:
                candidates = candidates[:1]
        if len(candidates) != 1:
            problem = "is a conditional expression whose branch the replay cannot choose without running the condition"
            raise ReplayError(short_text(node), problem, node)
        return self.evaluate(candidates[0])

    def _named(self, node: cst.NamedExpr) -> Any:
        value = self._plain(node.value)
        if not isinstance(node.target, cst.Name):
            raise ReplayError(short_text(node), "assigns to something other than a name", node)
        self.environment[node.target.value] = value
        return value

    # -- containers -----------------------------------------------------------------------------------------

    def _sequence(self, node: Any) -> Any:
        items: List[Any] = []
        for element in node.elements:
            value = self._plain(element.value)
            if isinstance(element, cst.StarredElement):
                items.extend(self._unpacked(element, value))
            else:
                items.append(value)
            self.operations.check_count(node, len(items), "a list or tuple of length")
        return tuple(items) if isinstance(node, cst.Tuple) else items

    def _comprehension(self, node: Any) -> List[Any]:
        clause = node.for_in
        if clause.inner_for_in is not None or clause.asynchronous is not None:
            raise ReplayError(
                short_text(node), "has more than one plain `for` clause, which the replay does not take", node
            )
        if not isinstance(clause.target, cst.Name):
            raise ReplayError(
                short_text(clause.target), "is not a single name, so the loop cannot be replayed", clause.target
            )

        iterable = self._plain(clause.iter)
        if not isinstance(iterable, (range, list, tuple)):
            raise ReplayError(
                short_text(clause.iter), "is not range(...) or a list, so the loop cannot be replayed", clause.iter
            )
        self.operations.check_count(clause.iter, len(iterable), "a loop of length")

        key = clause.target.value
        saved = self.environment.get(key, _MISSING)
        results: List[Any] = []
        try:
            for item in iterable:
                self.environment[key] = item
                if all(self._condition(condition.test) for condition in clause.ifs):
                    results.append(self._plain(node.elt))
        finally:
            if saved is _MISSING:
                self.environment.pop(key, None)
            else:
                self.environment[key] = saved
        return results

    def _condition(self, node: cst.BaseExpression) -> bool:
        value = self._plain(node)
        if not isinstance(value, (bool, int)):
            raise ReplayError(short_text(node), "is a comprehension filter that is not a plain boolean", node)
        return bool(value)

    def _unpacked(self, node: cst.CSTNode, value: Any) -> List[Any]:
        if not isinstance(value, (list, tuple, range)) and not self.operations.is_size(value):
            raise ReplayError(short_text(node), "unpacks something that is not a list or tuple", node)
        return list(value)

    # -- attributes and subscripts --------------------------------------------------------------------------

    def _attribute(self, node: cst.Attribute) -> Any:
        owner = self.evaluate(node.value)
        name = node.attr.value
        if isinstance(owner, Namespace) and not name.startswith("_"):
            if owner.qualname == "torch" and name in _DTYPE_NAMES:
                return getattr(self.torch, name)
            if owner.qualname == "torch" and name in ("inf", "nan"):
                return float(name)
            return Namespace(f"{owner.qualname}.{name}")
        if self.operations.is_tensor(owner) and name in ("shape", "ndim", "dtype"):
            return getattr(owner, name)
        if isinstance(owner, self.torch.finfo) and name in ("min", "max", "eps", "tiny"):
            return float(getattr(owner, name))
        raise ReplayError(short_text(node), f"reads attribute `.{name}`, which is not in the replay allow-list", node)

    def _subscript(self, node: cst.Subscript) -> Any:
        owner = self._plain(node.value)
        items = [self._index_item(element) for element in node.slice]

        if self.operations.is_tensor(owner):
            self.operations.check_indexing(node, owner, items)
            index = items[0] if len(items) == 1 else tuple(items)
            return self.operations.run(node, lambda: owner[index])

        if isinstance(owner, (tuple, list)) or self.operations.is_size(owner):
            if len(items) != 1 or not isinstance(items[0], (int, slice)):
                raise ReplayError(
                    short_text(node), "indexes a list or shape with something other than one integer or slice", node
                )
            return self.operations.run(node, lambda: owner[items[0]])
        raise ReplayError(short_text(node), "indexes a value that is not a tensor, list or shape", node)

    def _index_item(self, element: cst.SubscriptElement) -> Any:
        index = element.slice
        if isinstance(index, cst.Index):
            if index.star is not None:
                raise ReplayError(short_text(index), "is a starred index, which the replay does not take", index)
            value = self._plain(index.value)
            if isinstance(value, list):
                value = self.operations.run(index, lambda: self.torch.tensor(value))
            return value
        bounds = []
        for part in (index.lower, index.upper, index.step):
            value = None if part is None else self._plain(part)
            if value is not None and not isinstance(value, int):
                raise ReplayError(short_text(part), "is a slice bound that is not an integer", part)
            bounds.append(value)
        return slice(*bounds)

    # -- calls ----------------------------------------------------------------------------------------------

    def _call(self, node: cst.Call) -> Any:
        if isinstance(node.func, cst.Attribute):
            receiver = self.evaluate(node.func.value)
            method = node.func.attr.value
            if self.operations.is_tensor(receiver):
                args, kwargs = self._arguments(node, cast=method in ("to", "type"))
                return self.operations.tensor_method(node, receiver, method, args, kwargs)
            if isinstance(receiver, Namespace):
                args, kwargs = self._arguments(node)
                return self.operations.function(node, f"{receiver.qualname}.{method}", args, kwargs)
            raise ReplayError(short_text(node), f"calls `.{method}` on a value that is not a tensor or module", node)

        function = self.evaluate(node.func)
        if isinstance(function, Namespace):
            args, kwargs = self._arguments(node)
            return self.operations.function(node, function.qualname, args, kwargs)
        raise ReplayError(short_text(node.func), "is not callable in the replay", node)

    def _arguments(self, node: cst.Call, cast: bool = False) -> Tuple[List[Any], Dict[str, Any]]:
        """Evaluate a call's arguments. For a cast (`.to`, `.type`), device arguments are skipped and
        `<unbound>.dtype` stands for the activations' dtype."""
        args: List[Any] = []
        kwargs: Dict[str, Any] = {}
        for argument in node.args:
            if argument.star == "**":
                raise ReplayError(short_text(node), "passes `**` arguments, which the replay does not take", argument)
            if argument.keyword is not None:
                if argument.keyword.value not in _IGNORED_KEYWORDS:
                    kwargs[argument.keyword.value] = (
                        self._cast_argument(argument.value) if cast else self._plain(argument.value)
                    )
                continue
            if cast and _looks_like_device(argument.value):
                continue
            value = self._cast_argument(argument.value) if cast else self._plain(argument.value)
            if argument.star == "*":
                args.extend(self._unpacked(argument, value))
            else:
                args.append(value)
        return args, kwargs

    def _cast_argument(self, node: cst.BaseExpression) -> Any:
        try:
            return self._plain(node)
        except ReplayError:
            # `mask.to(x.dtype)` converts a mask to the activations' dtype; `x` has no binding, but the replayed
            # activations are float32.
            if isinstance(node, cst.Attribute) and node.attr.value == "dtype":
                return self.torch.float32
            raise

    def _plain(self, node: cst.BaseExpression) -> Any:
        """Evaluate a node whose value must be data (a tensor, number, string, dtype, shape or list), not a module."""
        value = self.evaluate(node)
        if isinstance(value, Namespace):
            raise ReplayError(f"`{value.qualname}`", "is not in the replay allow-list", node)
        return value

    _HANDLERS: Dict[type, Callable[["_Interpreter", Any], Any]] = {
        cst.Name: _name,
        cst.Integer: _integer,
        cst.Float: _float,
        cst.SimpleString: _string,
        cst.ConcatenatedString: _string,
        cst.Ellipsis: _ellipsis,
        cst.UnaryOperation: _unary,
        cst.BinaryOperation: _binary,
        cst.Comparison: _comparison,
        cst.List: _sequence,
        cst.Tuple: _sequence,
        cst.ListComp: _comprehension,
        cst.GeneratorExp: _comprehension,
        cst.Attribute: _attribute,
        cst.Subscript: _subscript,
        cst.Call: _call,
        cst.IfExp: _conditional,
        cst.NamedExpr: _named,
    }


_LEADING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _leading_name(node: cst.BaseExpression) -> Optional[str]:
    """Return the name an attribute, subscript or call chain starts from (`x` in `x.size(1)`), if any."""
    while True:
        if isinstance(node, cst.Name):
            return node.value
        if isinstance(node, (cst.Attribute, cst.Subscript)):
            node = node.value
        elif isinstance(node, cst.Call):
            node = node.func
        else:
            return None


def _looks_like_device(node: cst.BaseExpression) -> bool:
    """Return whether an argument of `.to(...)` names a device (`x.device`, `device`, "cuda"), which the replay
    skips."""
    if isinstance(node, cst.SimpleString):
        text = node.evaluated_value
        return isinstance(text, str) and re.fullmatch(r"(cpu|cuda|mps|xpu|meta)(:\d+)?", text) is not None
    if isinstance(node, cst.Name):
        return node.value.lower().endswith("device")
    if isinstance(node, cst.Attribute):
        return node.attr.value.lower().endswith("device")
    return False
