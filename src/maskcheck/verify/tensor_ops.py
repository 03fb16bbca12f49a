"""The tensor operations the replay may run, each with a size check before torch allocates anything.

The allow-list is the set of layout operations the static analyser models. Expansion: repeat, tile, expand,
broadcast_to, repeat_interleave, index_select, cat, stack, einops.repeat. Reshaping: view, reshape, flatten,
unflatten, squeeze, unsqueeze, transpose, permute, einops.rearrange. Operations that keep the layout: casts, `.to`,
`.type`, masked_fill, torch.where, detach, clone, contiguous, and zeros_like, ones_like and full_like. torch itself validates the arguments and its errors
become ReplayError, so a chain that would crash at run time is reported with torch's own message.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

import libcst as cst

# Limits for every tensor the replay creates and for every count it iterates. The synthetic sizes are at most 5,
# so honest chains stay far below them. A count such as `10**9` is rejected before anything is allocated.
MAX_DIM_SIZE = 4096
MAX_ELEMENTS = 1_000_000

_EMPTY_MODULE = cst.Module(body=[])

# Casts that take no arguments, by method name.
_CAST_METHODS = frozenset({"bool", "float", "half", "double", "long", "int", "byte"})

# Tensor methods that keep the element count and only reinterpret, cast or copy. torch validates their arguments.
_PLAIN_METHODS = frozenset(
    {
        "unsqueeze",
        "squeeze",
        "view",
        "reshape",
        "flatten",
        "unflatten",
        "transpose",
        "permute",
        "contiguous",
        "detach",
        "clone",
        "logical_not",
        "size",
        "dim",
    }
)

# `torch.<name>(tensor, ...)` forms that behave as `tensor.<name>(...)`.
_FUNCTION_FORMS = frozenset(
    {
        "repeat_interleave",
        "index_select",
        "tile",
        "broadcast_to",
        "unsqueeze",
        "squeeze",
        "reshape",
        "flatten",
        "unflatten",
        "transpose",
        "permute",
        "masked_fill",
        "clone",
        "detach",
        "logical_not",
    }
)


class ReplayError(Exception):
    """An expression the replay cannot or will not evaluate.

    The message reads `<subject> <problem>`, for example "`m.cumsum(0)` calls `.cumsum(...)`, which is not in the
    replay allow-list". `node` is the expression at fault, which the caller turns into a line:col position and
    puts after the subject.
    """

    def __init__(
        self,
        subject: str,
        problem: str,
        node: Optional[cst.CSTNode] = None,
        position: Optional[cst.CSTNode] = None,
        depends_on_sizes: bool = False,
    ) -> None:
        super().__init__(f"{subject} {problem}")
        self.subject = subject
        self.problem = problem
        self.node = node
        # True for errors that the synthetic sizes could change (torch's own errors, the size limit), so the
        # message should name the configuration.
        self.depends_on_sizes = depends_on_sizes
        # The node whose start is reported. For a call such as `m.view(...)` that is the method name, so the
        # position points at `view` and not at the start of the receiver chain.
        if position is None and isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
            position = node.func.attr
        self.position = position if position is not None else node


def short_text(node: cst.CSTNode, limit: int = 60) -> str:
    """Return the node's source text on one line, cut to `limit` characters, in backquotes."""
    text = _EMPTY_MODULE.code_for_node(node)
    if "#" in text:
        text = re.sub(r"#[^\n]*", "", text)
    text = " ".join(text.split())
    # The outermost node of a step carries the parentheses that the parser wrapped around the step's text.
    if text.startswith("(") and text.endswith(")") and outer_parentheses_match(text):
        text = text[1:-1].strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"`{text}`"


def outer_parentheses_match(text: str) -> bool:
    """Return whether the "(" that starts `text` is closed by the ")" that ends it."""
    depth = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0 and index != len(text) - 1:
                return False
    return depth == 0


class TensorOps:
    """Runs allow-listed tensor operations for the interpreter, given the imported torch and einops modules."""

    def __init__(self, torch: Any, einops: Any) -> None:
        self.torch = torch
        self.einops = einops

    # -- value tests ----------------------------------------------------------------------------------------

    def is_tensor(self, value: Any) -> bool:
        return isinstance(value, self.torch.Tensor)

    def is_size(self, value: Any) -> bool:
        return isinstance(value, self.torch.Size)

    def run(self, node: cst.CSTNode, operation: Callable[[], Any]) -> Any:
        """Call `operation` and turn any exception it raises into a ReplayError that quotes its first line."""
        try:
            return operation()
        except ReplayError:
            raise
        except Exception as error:  # torch, einops and Python raise many types for invalid arguments
            lines = str(error).strip().splitlines()
            message = lines[0].rstrip(".") if lines else ""
            problem = f"raised {type(error).__name__}: {message}"
            raise ReplayError(short_text(node), problem, node, depends_on_sizes=True) from None

    # -- tensor methods -------------------------------------------------------------------------------------

    def tensor_method(self, node: cst.Call, tensor: Any, method: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        check = self._SHAPE_CHECKS.get(method)
        if check is not None:
            check(self, node, tensor, args, kwargs)
        elif method in _CAST_METHODS:
            if args or kwargs:
                raise ReplayError(
                    short_text(node), f"passes arguments to `.{method}()`, which the replay does not take", node
                )
        elif method in ("to", "type"):
            self._check_cast_arguments(node, method, args, kwargs)
        elif method not in _PLAIN_METHODS:
            raise ReplayError(short_text(node), f"calls `.{method}(...)`, which is not in the replay allow-list", node)
        return self.run(node, lambda: getattr(tensor, method)(*args, **kwargs))

    def _check_cast_arguments(self, node: cst.Call, method: str, args: List[Any], kwargs: Dict[str, Any]) -> None:
        for value in list(args) + list(kwargs.values()):
            if isinstance(value, (self.torch.dtype, bool)) or self.is_tensor(value):
                continue
            if method == "type" and isinstance(value, str):
                continue
            raise ReplayError(
                short_text(node), f"passes `{value!r}` to `.{method}(...)`; the replay takes a dtype or a tensor", node
            )

    # -- functions ------------------------------------------------------------------------------------------

    def function(self, node: cst.Call, qualname: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        if qualname in ("einops.repeat", "einops.rearrange"):
            return self._einops(node, qualname, args, kwargs)
        if qualname == "builtins.range":
            return self._range(node, args, kwargs)
        if qualname == "builtins.float":
            if kwargs or len(args) != 1 or not isinstance(args[0], (str, int, float)):
                raise ReplayError(short_text(node), "passes float() something other than one number or string", node)
            return self.run(node, lambda: float(args[0]))

        name = qualname[len("torch.") :] if qualname.startswith("torch.") else ""
        if name in ("cat", "concat", "concatenate", "stack"):
            return self._join(node, name, args, kwargs)
        if name == "arange":
            return self._arange(node, args, kwargs)
        if name == "full":
            size = args[0] if args else kwargs.get("size")
            self.check_shape(node, self._size_list(node, [size] if size is not None else []))
            return self.run(node, lambda: self.torch.full(*args, **kwargs))
        if name == "finfo":
            return self.run(node, lambda: self.torch.finfo(*args, **kwargs))
        if name in ("zeros_like", "ones_like", "full_like"):
            # The result has the input's shape, so it is no larger than a tensor the replay already holds.
            if not (args and self.is_tensor(args[0])):
                raise ReplayError(short_text(node), "has no tensor as its first argument", node)
            return self.run(node, lambda: getattr(self.torch, name)(*args, **kwargs))
        if name == "where":
            return self._where(node, args, kwargs)
        if name in _FUNCTION_FORMS:
            if args:
                tensor = args.pop(0)
            else:
                tensor = kwargs.pop("input", None)
            if not self.is_tensor(tensor):
                raise ReplayError(short_text(node), "has no tensor as its first argument", node)
            return self.tensor_method(node, tensor, name, args, kwargs)
        raise ReplayError(short_text(node), f"calls `{qualname}`, which is not in the replay allow-list", node)

    def _where(self, node: cst.Call, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        """`torch.where(condition, input, other)`, each a tensor or a number, after checking the broadcast shape."""
        if kwargs or len(args) != 3 or not self.is_tensor(args[0]):
            raise ReplayError(short_text(node), "does not pass torch.where a condition tensor and two values", node)
        shapes = [tuple(value.shape) for value in args if self.is_tensor(value)]
        for other in shapes[1:]:
            self.check_broadcast(node, shapes[0], other)
        return self.run(node, lambda: self.torch.where(*args))

    def _einops(self, node: cst.Call, qualname: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        if self.einops is None:
            raise ReplayError(short_text(node), "needs einops, which is not installed (pip install einops)", node)
        if len(args) != 2 or not isinstance(args[1], str):
            raise ReplayError(short_text(node), "does not pass a tensor and a pattern string", node)
        tensors = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
        if not tensors or not all(self.is_tensor(tensor) for tensor in tensors):
            raise ReplayError(short_text(node), "does not pass a tensor as its first argument", node)

        growth = 1
        for axis, length in kwargs.items():
            if not isinstance(length, int) or isinstance(length, bool):
                raise ReplayError(short_text(node), f"gives axis `{axis}` a length that is not an integer", node)
            self.check_count(node, length, f"axis {axis} of length")
            growth *= max(length, 1)
        if qualname == "einops.repeat":
            # An upper bound: axis lengths that only split an existing axis count as growth here too.
            self.check_count(
                node, sum(tensor.numel() for tensor in tensors) * growth, "a tensor of", MAX_ELEMENTS, "elements"
            )
        function = getattr(self.einops, qualname.split(".")[1])
        return self.run(node, lambda: function(args[0], args[1], **kwargs))

    def _range(self, node: cst.Call, args: List[Any], kwargs: Dict[str, Any]) -> range:
        if kwargs or not 1 <= len(args) <= 3 or not all(isinstance(value, int) for value in args):
            raise ReplayError(short_text(node), "passes range() something other than one to three integers", node)
        result = self.run(node, lambda: range(*args))
        self.check_count(node, len(result), "a range of length")
        return result

    def _join(self, node: cst.Call, name: str, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        tensors = args[0] if args else kwargs.get("tensors")
        if not isinstance(tensors, (list, tuple)) or not all(self.is_tensor(tensor) for tensor in tensors):
            raise ReplayError(short_text(node), "does not pass a list or tuple of tensors", node)
        self.check_count(node, sum(tensor.numel() for tensor in tensors), "a tensor of", MAX_ELEMENTS, "elements")
        function = getattr(self.torch, name, None)
        if function is None:
            raise ReplayError(short_text(node), f"calls `torch.{name}`, which this torch version does not have", node)
        return self.run(node, lambda: function(*args, **kwargs))

    def _arange(self, node: cst.Call, args: List[Any], kwargs: Dict[str, Any]) -> Any:
        numbers = [value for value in args if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if len(numbers) != len(args) or not 1 <= len(args) <= 3:
            raise ReplayError(short_text(node), "passes arange() something other than one to three numbers", node)
        start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
        if step == 0:
            raise ReplayError(short_text(node), "has an arange step of zero", node)
        self.check_count(node, max(0, math.ceil((end - start) / step)), "an arange of length")
        return self.run(node, lambda: self.torch.arange(*args, **kwargs))

    # -- size checks for the operations that can grow a tensor ---------------------------------------------

    def _check_repeat(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        counts = self._size_list(node, args)
        shape = [1] * (len(counts) - tensor.dim()) + list(tensor.shape)
        if len(counts) == len(shape):
            self.check_shape(node, [size * count for size, count in zip(shape, counts)])

    def _check_tile(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        counts = self._size_list(node, args if args else [kwargs.get("dims", ())])
        counts = [1] * (tensor.dim() - len(counts)) + counts
        shape = [1] * (len(counts) - tensor.dim()) + list(tensor.shape)
        self.check_shape(node, [size * count for size, count in zip(shape, counts)])

    def _check_expand(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        sizes = self._size_list(node, [kwargs["size"]] if "size" in kwargs else args)
        offset = len(sizes) - tensor.dim()
        result = [tensor.shape[i - offset] if size == -1 and i >= offset else size for i, size in enumerate(sizes)]
        self.check_shape(node, result)

    def _check_expand_as(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        if len(args) != 1 or not self.is_tensor(args[0]):
            raise ReplayError(short_text(node), "does not pass expand_as one tensor", node)

    def _check_repeat_interleave(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        repeats = args[0] if args else kwargs.get("repeats")
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(dim, int) and -tensor.dim() <= dim < tensor.dim():
            length = tensor.shape[dim]
            others = tensor.numel() // length if length else 0
        else:
            # Without a dim, torch repeats the flattened tensor.
            length, others = tensor.numel(), 1

        if self.is_tensor(repeats):
            if repeats.numel() > MAX_DIM_SIZE or repeats.is_floating_point() or repeats.dtype == self.torch.bool:
                raise ReplayError(short_text(node), "passes repeats that are not a small integer tensor", node)
            flat = repeats.reshape(-1)
            new_length = length * int(flat[0]) if flat.numel() == 1 else int(flat.sum())
        elif isinstance(repeats, int) and not isinstance(repeats, bool):
            self.check_count(node, repeats, "a repeat count of")
            new_length = length * repeats
        else:
            raise ReplayError(short_text(node), "passes repeats that are not an integer or an integer tensor", node)
        self.check_count(node, new_length * max(others, 1), "a tensor of", MAX_ELEMENTS, "elements")

    def _check_index_select(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        dim = args[0] if args else kwargs.get("dim")
        index = args[1] if len(args) > 1 else kwargs.get("index")
        if not self.is_tensor(index):
            raise ReplayError(short_text(node), "does not pass index_select an index tensor", node)
        self.check_count(node, index.numel(), "an index of length")
        others = 1
        if isinstance(dim, int) and -tensor.dim() <= dim < tensor.dim() and tensor.shape[dim]:
            others = tensor.numel() // tensor.shape[dim]
        self.check_count(node, index.numel() * others, "a tensor of", MAX_ELEMENTS, "elements")

    def _check_masked_fill(self, node: cst.Call, tensor: Any, args: List[Any], kwargs: Dict[str, Any]) -> None:
        mask = args[0] if args else kwargs.get("mask")
        if not self.is_tensor(mask):
            raise ReplayError(short_text(node), "does not pass masked_fill a mask tensor", node)
        self.check_broadcast(node, tensor.shape, mask.shape)

    _SHAPE_CHECKS: Dict[str, Callable[..., None]] = {
        "repeat": _check_repeat,
        "tile": _check_tile,
        "expand": _check_expand,
        "broadcast_to": _check_expand,
        "expand_as": _check_expand_as,
        "repeat_interleave": _check_repeat_interleave,
        "index_select": _check_index_select,
        "masked_fill": _check_masked_fill,
    }

    def check_indexing(self, node: cst.CSTNode, tensor: Any, items: List[Any]) -> None:
        """Reject indexing whose result could exceed the element limit. This is an upper bound; torch validates
        the index itself."""
        index_elements = 1
        consumed = 0
        for item in items:
            if self.is_tensor(item):
                index_elements *= max(item.numel(), 1)
                consumed += item.dim() if item.dtype == self.torch.bool else 1
            elif isinstance(item, (int, slice)) and not isinstance(item, bool):
                consumed += 1
            elif item is not None and item is not Ellipsis and not isinstance(item, bool):
                raise ReplayError(short_text(node), f"indexes with `{item!r}`, which the replay does not take", node)
        remaining = 1
        for size in tensor.shape[consumed:]:
            remaining *= size
        self.check_count(node, index_elements * remaining, "a tensor of", MAX_ELEMENTS, "elements")

    def check_broadcast(self, node: cst.CSTNode, left: Sequence[int], right: Sequence[int]) -> None:
        shape = self.run(node, lambda: self.torch.broadcast_shapes(tuple(left), tuple(right)))
        self.check_shape(node, list(shape))

    def check_shape(self, node: cst.CSTNode, shape: Sequence[int]) -> None:
        total = 1
        for size in shape:
            self.check_count(node, size, "a dimension of size")
            total *= max(size, 1)
        self.check_count(node, total, "a tensor of", MAX_ELEMENTS, "elements")

    def check_count(self, node: cst.CSTNode, count: int, what: str, limit: int = MAX_DIM_SIZE, unit: str = "") -> None:
        """Raise ReplayError when `count` exceeds `limit`. `what` reads before the number ("a dimension of size"),
        `unit` after it ("elements")."""
        if count > limit:
            counted = f"{count} {unit}".strip()
            problem = f"asks for {what} {counted}, over the replay limit of {limit}; rejected"
            raise ReplayError(short_text(node), problem, node, depends_on_sizes=True)

    def _size_list(self, node: cst.CSTNode, args: List[Any]) -> List[int]:
        if len(args) == 1 and (isinstance(args[0], (tuple, list)) or self.is_size(args[0])):
            args = list(args[0])
        sizes = []
        for value in args:
            if self.is_tensor(value) and value.dim() == 0 and not value.is_floating_point():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ReplayError(short_text(node), f"passes size `{value!r}`, which is not an integer", node)
            sizes.append(value)
        return sizes
