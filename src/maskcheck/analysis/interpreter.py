"""Abstract interpretation of one module: follow mask values to the attention calls that consume them.

Each function body is interpreted once, in statement order. A name is bound to a short tuple of alternative values; the
branches of `if`, `try` and loops are joined by taking every alternative, so a mask that is wrong on any path that
reaches the consumer is reported. Methods of a class share `self.<attr>` values: every method is interpreted once to
collect them, then once more to report.

Calls into the project's own functions, methods and classes, in this module or in modules the project index
finds, are followed by interpreting the callee's body with the caller's argument values (`invoke`), up to the
settings' call depth. A call that cannot be followed returns a value of unknown layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

import libcst as cst

from maskcheck.analysis import einops_patterns, tensor_ops
from maskcheck.analysis.consumers import (
    CONTAINERS,
    FUNCTIONAL_HEAD_ARGUMENT,
    FUNCTIONAL_MASK_ARGUMENT,
    FUNCTIONAL_MHA,
    LAYER_SPECS,
    CONFIGURED_CONSUMER,
    UNKNOWN_CONSUMER,
    WRAPPER_KEYWORD,
    Consumer,
    find_argument,
    literal_bool,
)
from maskcheck.analysis.names import compact_text, dotted_name, label_text
from maskcheck.analysis.project import ModuleContext, ProjectIndex
from maskcheck.settings import DEFAULT_HEAD_COUNT_NAMES, DEFAULT_MAX_CALL_DEPTH
from maskcheck.analysis.values import (
    BATCH_SIZE_NAMES,
    REST_TERMS,
    SINGLETON,
    UNKNOWN_VALUE,
    Alternatives,
    Axis,
    BoundForward,
    DictValue,
    Factor,
    IndexVector,
    Layer,
    LoopIndex,
    LoopList,
    OpRecord,
    QualifiedName,
    RepeatedList,
    SequenceValue,
    ShapeOf,
    Size,
    Step,
    Tensor,
    UNKNOWN,
    Unknown,
    Value,
)

# Distinct argument tuples one function is interpreted with; calls past this return an unknown value. A bound
# on the work per function keeps modules with many small helpers calling each other linear in practice.
MAX_VARIANTS_PER_FUNCTION = 12

# Class attribute collections running inside one another before the argument-less variant is used instead.
MAX_NESTED_COLLECTIONS = 3

# Alternatives kept per name; past this the oldest are dropped (a bound, so loops and long if-chains stay fast).
MAX_ALTERNATIVES = 8

# Tensor methods that keep the axis layout of their receiver.
_LAYOUT_KEEPING_METHODS = frozenset(
    {
        "bool", "float", "half", "double", "int", "long", "byte", "bfloat16", "to", "type", "type_as",
        "detach", "clone", "contiguous", "cuda", "cpu", "logical_not", "logical_not_", "masked_fill",
        "masked_fill_", "requires_grad_", "float_", "fill_", "zero_", "eq", "ne", "lt", "le", "gt", "ge",
        "logical_and", "logical_or", "mul", "add", "sub", "neg", "abs", "log", "exp", "sigmoid", "triu", "tril",
        "triu_", "tril_", "pin_memory", "__invert__", "where",
    }
)

# Layout-keeping methods that return their receiver itself when it already has the requested dtype or device
# (PyTorch 2.13: `t.to(t.dtype) is t`, and likewise `.float()` on a float32 tensor), and a copy otherwise.
_CONVERSION_METHODS = frozenset(
    {"bool", "float", "half", "double", "int", "long", "byte", "bfloat16", "to", "type", "type_as", "cuda", "cpu"}
)

# Methods whose result is contiguous whatever the input's strides (PyTorch 2.13, checked with is_contiguous() on a
# transposed input). Other elementwise methods, clone() included, keep a transposed input's strides.
_CONTIGUOUS_RESULT_METHODS = frozenset({"contiguous", "masked_fill", "triu", "tril"})

# Layout-keeping methods that return a view or work in place, so strides stay as they were.
_VIEW_OR_IN_PLACE_METHODS = frozenset(
    {
        "detach", "requires_grad_", "pin_memory", "masked_fill_", "fill_", "zero_", "logical_not_", "triu_",
        "tril_", "float_",
    }
)

# Broadcasting binary operations whose tensor argument can add axes to the receiver's: `a.logical_and(b)` of an
# (N, L, 1) and an (N, 1, S) tensor is (N, L, S). With a scalar argument they keep the receiver's layout.
_ELEMENTWISE_BINARY_METHODS = frozenset(
    {"logical_and", "logical_or", "logical_xor", "mul", "multiply", "add", "sub", "bitwise_and", "bitwise_or"}
)
_ELEMENTWISE_BINARY_FUNCTIONS = frozenset(f"torch.{name}" for name in _ELEMENTWISE_BINARY_METHODS)

_LAYOUT_KEEPING_FUNCTIONS = frozenset(
    {
        "torch.logical_not", "torch.triu", "torch.tril", "torch.masked_fill", "torch.log", "torch.exp",
        "torch.sigmoid", "torch.abs", "torch.clone",
    }
)

_CONSTRUCTORS = frozenset(
    {
        "torch.zeros", "torch.ones", "torch.empty", "torch.rand", "torch.randn", "torch.randint", "torch.full",
        "torch.BoolTensor", "torch.FloatTensor",
    }
)

_CALLS_FIRST_ARGUMENT = frozenset({"torch.utils.checkpoint.checkpoint", "torch.utils.checkpoint.checkpoint_sequential"})

_IDENTITY_WRAPPERS = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter", "copy.deepcopy"})


@dataclass(frozen=True)
class MaskUse:
    """A value that reaches a mask argument of an attention call."""

    tensor: Tensor
    consumer: Consumer
    argument_node: cst.BaseExpression


@dataclass(frozen=True)
class Instance:
    """An instance of a class defined in the project (`self` inside its methods, or `Block(...)`)."""

    context: ModuleContext = field(compare=False, hash=False)
    class_def: cst.ClassDef
    # The layers and functions the constructor was called with (`PreNorm(dim, Attention(...))`); other
    # arguments are left out, so instances built with different tensors share one analysis.
    arguments: Optional["BoundArguments"] = None
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Instances are dictionary keys on every attribute access; hashing their nested arguments each time
        # dominated the run time on large modules.
        object.__setattr__(self, "_hash", hash((id(self.class_def), self.arguments)))

    def __hash__(self) -> int:
        return self._hash


class _DefinitionRef:
    """A function or class defined at the top level of a project module, by name.

    Evaluating a name only makes the reference: the definition is looked up, and in an imported module parsed
    (`ModuleContext.build_lazy`), when the analysis first reads it, to call it or to use it as a base. Two
    references of one kind are equal when they name the same definition of the same module context.
    """

    __slots__ = ("context", "name", "_node", "_key")

    def __init__(self, context: ModuleContext, name: str) -> None:
        self.context = context
        self.name = name
        self._node: Optional[cst.CSTNode] = None
        self._key: tuple = ("name", id(context), name)

    def _definitions(self) -> Mapping[str, cst.CSTNode]:
        raise NotImplementedError

    def _definition(self) -> cst.CSTNode:
        if self._node is None:
            self._node = self._definitions()[self.name]
        return self._node

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._key == self._key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.context.name or self.context.path}.{self.name})"


class ClassRef(_DefinitionRef):
    """A class defined at the top level of a project module (see `_DefinitionRef`)."""

    __slots__ = ()

    def _definitions(self) -> Mapping[str, cst.CSTNode]:
        return self.context.classes

    @property
    def class_def(self) -> cst.ClassDef:
        return self._definition()  # type: ignore[return-value]


class FunctionRef(_DefinitionRef):
    """A function of the project: a module's top-level function by name, or a static method by its node."""

    __slots__ = ()

    @classmethod
    def of_method(cls, context: ModuleContext, method: cst.FunctionDef) -> "FunctionRef":
        """Make the reference of a static method looked up on a class, which never equals a top-level function's."""
        reference = cls(context, method.name.value)
        reference._node = method
        reference._key = ("method", id(method))
        return reference

    def _definitions(self) -> Mapping[str, cst.CSTNode]:
        return self.context.functions

    @property
    def function(self) -> cst.FunctionDef:
        return self._definition()  # type: ignore[return-value]


@dataclass(frozen=True)
class BoundMethod:
    """`instance.method`: calling it interprets the method with `self` bound."""

    instance: Instance
    function: cst.FunctionDef


@dataclass(frozen=True)
class SuperRef:
    """`super()` inside a method: attribute lookup starts at the project base classes."""

    instance: Instance


@dataclass(frozen=True)
class ClassMethod:
    """A classmethod looked up on a project class; calling it binds `cls` to that class."""

    owner: ClassRef
    function: cst.FunctionDef


@dataclass(frozen=True)
class DictLookup:
    """`d.get` or `d.pop` of a dict whose entries are known."""

    entries: DictValue


@dataclass(frozen=True)
class BoundArguments:
    """The values a call passes, positional and by keyword."""

    positional: Tuple[Alternatives, ...]
    keywords: Tuple[Tuple[str, Alternatives], ...]
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.positional, self.keywords)))

    def __hash__(self) -> int:
        return self._hash

    def with_keywords_bound(self) -> "BoundArguments":
        """Keep one entry per keyword: its last value, at the place of its first, which is what
        `_bind_parameters` binds. `f(**kwargs, cfg=cfg)` with a `cfg` entry in `kwargs` then gives the same
        arguments as `f(cfg=cfg)`, and a class built both ways has its attributes collected once."""
        return BoundArguments(self.positional, tuple(dict(self.keywords).items()))

    def structural_only(self) -> "BoundArguments":
        """Keep layers, instances and functions; drop tensors and other values."""
        return BoundArguments(
            tuple(_structural(a) for a in self.positional),
            tuple((name, _structural(a)) for name, a in self.keywords),
        )


@dataclass(frozen=True)
class Method:
    """A tensor method looked up but not yet called (`mask.repeat`)."""

    receiver: Tensor
    name: str
    node: cst.Attribute


@dataclass
class Scope:
    """Names bound in one function body (or the module body) and the class attributes it can see."""

    values: Dict[str, Alternatives] = field(default_factory=dict)
    sizes: Dict[str, Size] = field(default_factory=dict)
    parent: Optional["Scope"] = None
    context: Optional[ModuleContext] = None
    # The instance `self` is bound to in a method, and the name of that parameter.
    instance: Optional["Instance"] = None
    self_name: Optional[str] = None

    def lookup(self, name: str) -> Optional[Alternatives]:
        scope: Optional[Scope] = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        return None

    def module_context(self) -> Optional[ModuleContext]:
        scope: Optional[Scope] = self
        while scope is not None:
            if scope.context is not None:
                return scope.context
            scope = scope.parent
        return None

    def lookup_size(self, name: str) -> Optional[Size]:
        scope: Optional[Scope] = self
        while scope is not None:
            if name in scope.sizes:
                return scope.sizes[name]
            scope = scope.parent
        return None

    def snapshot(self) -> Tuple[Dict[str, Alternatives], Dict[str, Size]]:
        return dict(self.values), dict(self.sizes)

    def restore(self, state: Tuple[Dict[str, Alternatives], Dict[str, Size]]) -> None:
        self.values, self.sizes = dict(state[0]), dict(state[1])


def join(*alternatives: Alternatives) -> Alternatives:
    """Return the distinct values of the groups in order, the last MAX_ALTERNATIVES of them."""
    if len(alternatives) == 2:
        # Branches mostly leave a name as it was, so both groups are often the same tuple or one is empty.
        first, second = alternatives
        if second is first or not second:
            alternatives = (first,)
        elif not first:
            alternatives = (second,)
    if len(alternatives) == 1 and len(alternatives[0]) <= 1:
        return tuple(alternatives[0])
    result: List[Value] = []
    for group in alternatives:
        for value in group:
            if value not in result:
                result.append(value)
    return tuple(result[-MAX_ALTERNATIVES:])


def join_states(first, second):
    values = dict(first[0])
    for name, alternatives in second[0].items():
        current = values.get(name, ())
        if current is alternatives and len(alternatives) <= 1:
            # A name both states share: join would return it unchanged.
            continue
        values[name] = join(current, alternatives)
    sizes = dict(first[1])
    for name, size in second[1].items():
        if name in sizes and sizes[name] != size:
            sizes[name] = Size(sizes[name].texts | size.texts, terms=sizes[name].terms)
        else:
            sizes[name] = size
    return values, sizes


class ModuleInterpreter:
    """Interprets every scope of one module and collects the mask uses it finds.

    Calls to the project's own functions, methods and layers are followed by interpreting the callee with the
    caller's argument values, up to `max_call_depth` calls deep; a recursive call, or one past the limit, returns
    a value of unknown layout. Each (callee, arguments) pair is interpreted once per run.
    """

    def __init__(
        self,
        module: cst.Module,
        path: str = "<stdin>",
        module_name: Optional[str] = None,
        project: Optional[ProjectIndex] = None,
        max_call_depth: int = DEFAULT_MAX_CALL_DEPTH,
        consumer_callables: FrozenSet[str] = frozenset(),
    ) -> None:
        self.root = ModuleContext.build(module, module_name, path)
        self.project = project
        self.max_call_depth = max_call_depth
        self.consumer_callables = consumer_callables
        self.uses: List[MaskUse] = []
        self._reporting = True
        # Values of the expressions of the current statement, by node identity. Arguments are read more than once
        # (to find nested consumers, then as operands), and without this a nested call chain costs 2**depth.
        self._memo: Dict[int, Alternatives] = {}
        self._module_scopes: Dict[int, Scope] = {}
        self._class_attributes: Dict[tuple, Dict[str, Alternatives]] = {}
        self._summaries: Dict[tuple, Alternatives] = {}
        # Ids of the Call nodes of the checked module, collected on first use by `_mark_entry`.
        self._root_calls: Optional[Set[int]] = None
        self._variants: Dict[int, int] = {}
        self._collecting = 0
        self._bases: Dict[int, List[Instance]] = {}
        self._methods: Dict[Tuple[int, str], Optional[cst.FunctionDef]] = {}
        self._call_stack: List[cst.FunctionDef] = []
        self._returns: List[List[Alternatives]] = []
        # Nodes the analysis builds itself (`checkpoint(f, x)` rewritten to `f(x)`) stay alive for the whole run,
        # so that no later node reuses the id that `_memo` stored their value under.
        self._built_nodes: List[cst.CSTNode] = []
        # Statements interpreted so far, over all modules: a deterministic measure of the analysis work.
        self.statements_run = 0
        # Per-node results of pure functions of the syntax tree, because methods and helpers are interpreted
        # many times. Keying by the node keeps it alive, so no other node can take its id during the run.
        self._compact_texts: Dict[cst.CSTNode, str] = {}
        self._nested_expressions: Dict[cst.CSTNode, Tuple[cst.BaseExpression, ...]] = {}
        # The `_evaluate_<node type>` function of each node type, or None for types evaluated as unknown. Bound
        # methods here would make a reference cycle, which keeps a finished interpreter alive until the next
        # garbage collection.
        self._evaluators: Dict[type, Optional[Callable[["ModuleInterpreter", cst.CSTNode, Scope], Alternatives]]] = {}

    # -----------------------------------------------------------------------------------------------------------
    # Scopes

    def run(self) -> List[MaskUse]:
        module_scope = self._module_scope(self.root)
        for function in self.root.functions.values():
            self._run_function(function, module_scope, instance=None)
        for class_def in _classes_in(self.root.module.body):
            self._run_class(class_def, module_scope, self.root)
        return self.uses

    def _module_scope(self, context: ModuleContext) -> Scope:
        """Interpret a module's top-level statements once and return the scope they leave."""
        scope = self._module_scopes.get(id(context))
        if scope is None:
            scope = Scope(context=context)
            self._module_scopes[id(context)] = scope
            saved = self._memo
            self._memo = {}
            self._run_block(context.module.body, scope, [], [])
            self._memo = saved
        return scope

    def _run_class(self, class_def: cst.ClassDef, outer: Scope, context: ModuleContext) -> None:
        instance = Instance(context, class_def)
        self.class_attributes(instance)
        for method in _methods_of(class_def):
            self._run_function(method, outer, instance=instance)
        # Methods inherited from project base classes run on this class's instance too: an override here can
        # change what the inherited code does (a base `forward` that calls `self.build_mask()`).
        own = {method.name.value for method in _methods_of(class_def)}
        for base in self._base_instances(instance):
            for method in self._inherited_methods(base, own):
                self._run_function(method, self._module_scope(base.context), instance=instance)
        for nested in _classes_in(class_def.body.body):
            self._run_class(nested, outer, context)

    def class_attributes(self, instance: "Instance") -> Dict[str, Alternatives]:
        """Collect the `self.<attr>` values that any method of the class (or a project base class) sets."""
        key = (id(instance.class_def), instance.arguments)
        attributes = self._class_attributes.get(key)
        if attributes is not None:
            return attributes
        if instance.arguments is not None and self._collecting >= MAX_NESTED_COLLECTIONS:
            # Building one class's attributes builds others in turn. Past this depth the variant without
            # constructor arguments is used instead.
            return self.class_attributes(Instance(instance.context, instance.class_def))
        attributes = {}
        self._class_attributes[key] = attributes
        for base in self._base_instances(instance):
            for name, value in self.class_attributes(base).items():
                attributes[name] = join(attributes.get(name, ()), value)

        # `__init__` first, so the other methods see the layers it builds.
        methods = sorted(_methods_of(instance.class_def), key=lambda m: m.name.value != "__init__")
        outer = self._module_scope(instance.context)
        was_reporting = self._reporting
        self._reporting = False
        self._collecting += 1
        saved = self._memo
        for method in methods:
            self._memo = {}
            if method.name.value == "__init__" and instance.arguments is not None:
                scope = Scope(parent=outer, context=outer.context, instance=instance)
                self._bind_parameters(method, scope, instance, instance.arguments)
                self._run_body(method, scope)
            else:
                self._run_function(method, outer, instance=instance)
        self._memo = saved
        self._collecting -= 1
        self._reporting = was_reporting
        return attributes

    def _base_instances(self, instance: "Instance") -> List["Instance"]:
        cached = self._bases.get(id(instance.class_def))
        if cached is not None:
            return cached
        bases: List[Instance] = []
        self._bases[id(instance.class_def)] = bases
        for base in instance.class_def.bases:
            for value in self._base_values(base.value, instance):
                # `class Block(Block)` after `from .base import Block` names the imported class, and the module
                # scope may already bind the name to this class: a class is never its own base.
                if isinstance(value, ClassRef) and value.class_def is not instance.class_def:
                    if not self._inherits_from(Instance(value.context, value.class_def), instance.class_def):
                        bases.append(Instance(value.context, value.class_def))
        return bases

    def _base_values(self, node: cst.BaseExpression, instance: "Instance") -> Alternatives:
        values = self.evaluate(node, self._module_scope(instance.context))
        if any(isinstance(v, ClassRef) and v.class_def is instance.class_def for v in values):
            # The class's own name shadows an imported base of the same name; the import is the base.
            qualified = instance.context.imports.resolve(node)
            found = self._project_object(qualified) if qualified is not None else None
            return (found,) if found is not None else ()
        return values

    def _inherits_from(self, candidate: "Instance", class_def: cst.ClassDef, seen: Optional[set] = None) -> bool:
        """True when `candidate` has `class_def` among its bases: adding it would make an inheritance cycle."""
        seen = set() if seen is None else seen
        if id(candidate.class_def) in seen:
            return True
        seen.add(id(candidate.class_def))
        for base in self._bases.get(id(candidate.class_def), ()):
            if base.class_def is class_def or self._inherits_from(base, class_def, seen):
                return True
        return False

    def _inherited_methods(self, base: "Instance", overridden: set) -> List[cst.FunctionDef]:
        methods = []
        for method in _methods_of(base.class_def):
            if method.name.value not in overridden:
                overridden.add(method.name.value)
                methods.append(method)
        for grand_base in self._base_instances(base):
            methods.extend(self._inherited_methods(grand_base, overridden))
        return methods

    def find_method(self, instance: "Instance", name: str) -> Optional["BoundMethod"]:
        key = (id(instance.class_def), name)
        if key not in self._methods:
            found = self._find_method(instance, name)
            self._methods[key] = found.function if found is not None else None
        function = self._methods[key]
        return BoundMethod(instance, function) if function is not None else None

    def _find_method(self, instance: "Instance", name: str) -> Optional["BoundMethod"]:
        for method in _methods_of(instance.class_def):
            if method.name.value == name:
                return BoundMethod(instance, method)
        for base in self._base_instances(instance):
            found = self._find_method(base, name)
            if found is not None:
                return BoundMethod(instance, found.function)
        return None

    def _run_function(self, function: cst.FunctionDef, outer: Scope, instance: Optional["Instance"]) -> None:
        if not self._call_stack:
            # Each top-level function gets its own budget of specialised calls.
            self._variants.clear()
        scope = Scope(parent=outer, context=outer.context, instance=instance)
        self._bind_parameters(function, scope, instance)
        self._run_body(function, scope)

    def _run_body(self, function: cst.FunctionDef, scope: Scope) -> None:
        functions: List[cst.FunctionDef] = []
        classes: List[cst.ClassDef] = []
        # A body on the `def` line (`def f(m): return m.repeat(h, 1, 1)`) is a suite of small statements.
        self._run_suite(function.body, scope, functions, classes)
        for nested in functions:
            self._run_function(nested, scope, instance=None)
        for nested_class in classes:
            self._run_class(nested_class, scope, scope.context)

    def _bind_parameters(
        self,
        function: cst.FunctionDef,
        scope: Scope,
        instance: Optional["Instance"],
        arguments: Optional["BoundArguments"] = None,
    ) -> None:
        params = list(function.params.posonly_params) + list(function.params.params)
        is_static = any(dotted_name(d.decorator) == "staticmethod" for d in function.decorators)
        if instance is not None and params and not is_static:
            scope.self_name = params[0].name.value
            scope.values[scope.self_name] = (instance,)
            params = params[1:]
        passed_positional = list(arguments.positional) if arguments else []
        passed_keywords = dict(arguments.keywords) if arguments else {}

        for param in params:
            name = param.name.value
            if passed_positional:
                scope.values[name] = passed_positional.pop(0)
            elif name in passed_keywords:
                scope.values[name] = passed_keywords.pop(name)
            else:
                scope.values[name] = (Tensor(None, source=name),)
            _bind_passed_size(scope, name)
        for param in function.params.kwonly_params:
            name = param.name.value
            scope.values[name] = passed_keywords.pop(name, None) or (Tensor(None, source=name),)
            _bind_passed_size(scope, name)
        star = function.params.star_arg
        if isinstance(star, cst.Param):
            scope.values[star.name.value] = (SequenceValue(tuple(passed_positional)),)
        if function.params.star_kwarg is not None:
            scope.values[function.params.star_kwarg.name.value] = (DictValue(tuple(passed_keywords.items())),)

    # -----------------------------------------------------------------------------------------------------------
    # Calls into the project's own code

    def invoke(self, function: cst.FunctionDef, instance: Optional["Instance"], context: ModuleContext,
               node: cst.Call, arguments: "BoundArguments") -> Alternatives:
        """Interpret a project function with the caller's argument values and return what it returns."""
        unknown_result = (Tensor(None, source=label_text(node)),)
        if len(self._call_stack) >= self.max_call_depth or function in self._call_stack:
            return unknown_result
        key = (id(function), instance, _layout_key(arguments), self._reporting)
        if key in self._summaries:
            return self._mark_entry(self._summaries[key], context, node)
        variants = self._variants.get(id(function), 0)
        if variants >= MAX_VARIANTS_PER_FUNCTION:
            # A function called with many different argument values: stop specialising it.
            return unknown_result
        self._variants[id(function)] = variants + 1
        self._summaries[key] = unknown_result

        scope = Scope(parent=self._module_scope(context), context=context, instance=instance)
        self._bind_parameters(function, scope, instance, arguments)
        if instance is not None:
            self.class_attributes(instance)
        saved_memo = self._memo
        self._memo = {}
        self._call_stack.append(function)
        self._returns.append([])
        try:
            self._run_body(function, scope)
        finally:
            returned = self._returns.pop()
            self._call_stack.pop()
            self._memo = saved_memo
        result = join(*returned) if returned else (UNKNOWN_VALUE,)
        # The summary is shared by every call with this argument layout, so it must not name any one call.
        self._summaries[key] = result
        return self._mark_entry(result, context, node)

    def _mark_entry(self, result: Alternatives, context: ModuleContext, node: cst.Call) -> Alternatives:
        """Mark masks laid out in another module as entering this one at `node`, so findings about them point there."""
        if context is self.root:
            return result
        if not any(_needs_entry(v) for v in result):
            return result
        if self._root_calls is None:
            self._root_calls = _call_ids(self.root.module)
        if id(node) not in self._root_calls:
            # A call between two other modules (a helper calling a helper): the mask enters this module later, at
            # the call in this module that returns it.
            return result
        return tuple(_with_entry(v, node) for v in result)

    def _bind_call(self, node: cst.Call, scope: Scope, skip: int = 0) -> "BoundArguments":
        positional: List[Alternatives] = []
        keywords: List[Tuple[str, Alternatives]] = []
        for arg in node.args:
            if arg.star == "**":
                for value in self.evaluate(arg.value, scope):
                    if isinstance(value, DictValue):
                        keywords.extend(value.entries)
            elif arg.star == "*":
                for value in self.evaluate(arg.value, scope):
                    if isinstance(value, SequenceValue):
                        positional.extend(value.items)
            elif arg.keyword is not None:
                value = self._with_passed_size(self.evaluate(arg.value, scope), arg.value, scope)
                keywords.append((arg.keyword.value, _record_step(value, None, arg.value)))
            else:
                value = self._with_passed_size(self.evaluate(arg.value, scope), arg.value, scope)
                positional.append(_record_step(value, None, arg.value))
        return BoundArguments(tuple(positional[skip:]), tuple(keywords))

    def _with_passed_size(self, values: Alternatives, node: cst.BaseExpression, scope: Scope) -> Alternatives:
        """Add the argument's Size when it is known to be a count, so the callee's parameter keeps the caller's
        texts: `expand(mask, num_heads)` makes `times` in `def expand(mask, times)` the head count.

        Only literals, names the caller bound to a size, and head-count names qualify. Any other name could be a
        tensor, and a Size on it would split the callee's summaries by the caller's variable names.
        """
        if isinstance(node, cst.Integer):
            return join(values, (self.size_of(node, scope),))
        text = dotted_name(node)
        if text is None or not isinstance(node, (cst.Name, cst.Attribute)):
            return values
        if scope.lookup_size(text) is None and text.rsplit(".", 1)[-1] not in DEFAULT_HEAD_COUNT_NAMES:
            return values
        return join(values, (self.size_of(node, scope),))

    # -----------------------------------------------------------------------------------------------------------
    # Statements

    def _run_block(self, statements: Sequence[cst.CSTNode], scope: Scope, functions, classes) -> None:
        for statement in statements:
            self._run_statement(statement, scope, functions, classes)

    def _run_statement(self, statement: cst.CSTNode, scope: Scope, functions, classes) -> None:
        self.statements_run += 1
        self._memo.clear()
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                self._run_small(small, scope)
        elif isinstance(statement, cst.FunctionDef):
            functions.append(statement)
        elif isinstance(statement, cst.ClassDef):
            classes.append(statement)
        elif isinstance(statement, cst.If):
            self._run_if(statement, scope, functions, classes)
        elif isinstance(statement, (cst.For, cst.While)):
            self._run_loop(statement, scope, functions, classes)
        elif isinstance(statement, cst.Try) or type(statement).__name__ == "TryStar":
            self._run_try(statement, scope, functions, classes)
        elif isinstance(statement, cst.With):
            for item in statement.items:
                self.evaluate(item.item, scope)
            self._run_suite(statement.body, scope, functions, classes)
        elif isinstance(statement, cst.Match):
            self.evaluate(statement.subject, scope)
            before = scope.snapshot()
            merged = before
            for case in statement.cases:
                scope.restore(before)
                self._run_suite(case.body, scope, functions, classes)
                merged = join_states(merged, scope.snapshot())
            scope.restore(merged)

    def _run_suite(self, suite: cst.BaseSuite, scope: Scope, functions, classes) -> None:
        if isinstance(suite, cst.IndentedBlock):
            self._run_block(suite.body, scope, functions, classes)
        elif isinstance(suite, cst.SimpleStatementSuite):
            for small in suite.body:
                self._run_small(small, scope)

    def _run_if(self, statement: cst.If, scope: Scope, functions, classes) -> None:
        self.evaluate(statement.test, scope)
        self._learn_from_guard(statement.test, scope)
        before = scope.snapshot()
        self._run_suite(statement.body, scope, functions, classes)
        after_body = scope.snapshot()
        scope.restore(before)
        if isinstance(statement.orelse, cst.If):
            self._run_if(statement.orelse, scope, functions, classes)
        elif isinstance(statement.orelse, cst.Else):
            self._run_suite(statement.orelse.body, scope, functions, classes)
        scope.restore(join_states(after_body, scope.snapshot()))

    def _run_loop(self, statement, scope: Scope, functions, classes) -> None:
        if isinstance(statement, cst.For):
            self._assign_target(statement.target, self._iterate(statement.iter, scope), scope, statement.iter)
        else:
            self.evaluate(statement.test, scope)
        before = scope.snapshot()
        # Two passes let a value set late in the body reach a use early in the body on the next iteration.
        for _ in range(2):
            self._run_suite(statement.body, scope, functions, classes)
            scope.restore(join_states(before, scope.snapshot()))
        if statement.orelse is not None:
            self._run_suite(statement.orelse.body, scope, functions, classes)

    def _iterate(self, node: cst.BaseExpression, scope: Scope) -> Alternatives:
        """Return what one iteration of `for target in node` binds, for the iterables layers live in."""
        if isinstance(node, cst.Call) and node.args:
            function = dotted_name(node.func)
            first = node.args[0].value
            if function == "enumerate":
                return (SequenceValue(((UNKNOWN_VALUE,), self._iterate(first, scope))),)
            if function == "zip":
                return (SequenceValue(tuple(self._iterate(arg.value, scope) for arg in node.args)),)
            if function in ("reversed", "list", "tuple", "iter"):
                return self._iterate(first, scope)
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and not node.args:
            method = node.func.attr.value
            if method in ("items", "values"):
                members = _loop_elements(self.evaluate(node.func.value, scope))
                if method == "values":
                    return members
                return (SequenceValue(((UNKNOWN_VALUE,), members)),)
        return _loop_elements(self.evaluate(node, scope))

    def _run_try(self, statement, scope: Scope, functions, classes) -> None:
        before = scope.snapshot()
        self._run_suite(statement.body, scope, functions, classes)
        merged = join_states(before, scope.snapshot())
        for handler in statement.handlers:
            scope.restore(merged)
            self._run_suite(handler.body, scope, functions, classes)
            merged = join_states(merged, scope.snapshot())
        scope.restore(merged)
        if statement.orelse is not None:
            self._run_suite(statement.orelse.body, scope, functions, classes)
        if statement.finalbody is not None:
            self._run_suite(statement.finalbody.body, scope, functions, classes)

    def _run_small(self, small: cst.BaseSmallStatement, scope: Scope) -> None:
        if isinstance(small, cst.Assign):
            value = self.evaluate(small.value, scope)
            for target in small.targets:
                self._assign_target(target.target, value, scope, small.value)
        elif isinstance(small, cst.AnnAssign) and small.value is not None:
            value = self.evaluate(small.value, scope)
            self._assign_target(small.target, value, scope, small.value)
        elif isinstance(small, cst.AugAssign):
            # `mask += bias` and friends keep the layout of the target.
            self.evaluate(small.value, scope)
        elif isinstance(small, cst.Expr):
            self.evaluate(small.value, scope)
            self._grow_container(small.value, scope)
        elif isinstance(small, cst.Return) and small.value is not None:
            value = self.evaluate(small.value, scope)
            if self._returns:
                self._returns[-1].append(value)
        elif isinstance(small, cst.Assert):
            self.evaluate(small.test, scope)
            self._learn_from_guard(small.test, scope)

    def _learn_shape(self, guarded: cst.BaseExpression, shape: cst.BaseExpression, scope: Scope) -> bool:
        name, prefix_only = _shape_of(guarded)
        if name is None:
            return False
        sizes = [self.size_of(e.value, scope) for e in shape.elements if not isinstance(e, cst.StarredElement)]
        if len(sizes) != len(shape.elements):
            return False
        bound = scope.lookup(name)
        if not bound:
            return False
        updated = []
        for value in bound:
            if isinstance(value, Tensor):
                value = tensor_ops.name_axes(value, sizes, whole_shape=not prefix_only)
            updated.append(value)
        scope.values[name] = tuple(updated)
        return True

    def _grow_container(self, node: cst.BaseExpression, scope: Scope) -> None:
        """`self.blocks.append(Block(...))` adds a member to a ModuleList built earlier."""
        if not (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.args):
            return
        if node.func.attr.value not in ("append", "extend", "insert", "add_module"):
            return
        target = node.func.value
        added = _layers_in(self.evaluate(node.args[-1].value, scope))
        if not added:
            return
        grown = tuple(
            replace(v, members=join(v.members, tuple(added))) if isinstance(v, Layer) and v.kind in CONTAINERS else v
            for v in self.evaluate(target, scope)
        )
        self._assign_target(target, grown, scope, target)

    def _learn_from_guard(self, test: cst.BaseExpression, scope: Scope) -> None:
        """`m.shape[0] == x.shape[0]` (or `!=`, `.size(0)`, a batch-size name) says axis 0 of `m` is the batch;
        `m.shape == (bsz, num_heads, L, S)` or `m.shape[:2] == (...)` names every axis it lists."""
        if not isinstance(test, cst.Comparison) or len(test.comparisons) != 1:
            return
        if not isinstance(test.comparisons[0].operator, (cst.Equal, cst.NotEqual)):
            return
        sides = (test.left, test.comparisons[0].comparator)
        for guarded, other in (sides, sides[::-1]):
            if isinstance(other, (cst.Tuple, cst.List)) and self._learn_shape(guarded, other, scope):
                return
        for guarded, other in (sides, sides[::-1]):
            name = _leading_size_of(guarded)
            if name is None or not _names_batch_size(other):
                continue
            bound = scope.lookup(name)
            if not bound:
                continue
            evidence = f"the guard `{tensor_ops.quote_code(test)}` shows axis 0 of `{name}` is the batch"
            scope.values[name] = tuple(
                tensor_ops.mark_batch_axis(v, evidence) if isinstance(v, Tensor) else v for v in bound
            )

    def _assign_target(
        self, target: cst.BaseExpression, value: Alternatives, scope: Scope, value_node: cst.BaseExpression
    ) -> None:
        if isinstance(target, cst.Name):
            scope.values[target.value] = _record_step(value, target.value, value_node)
            if _is_size_expression(value_node):
                size = self.size_of(value_node, scope)
                scope.sizes[target.value] = Size(size.texts | {target.value}, size.terms, size.value, size.parts)
            else:
                scope.sizes.pop(target.value, None)
        elif isinstance(target, cst.Attribute) and self._is_self(target.value, scope):
            attribute = target.attr.value
            recorded = _record_step(value, f"{scope.self_name}.{attribute}", value_node)
            scope.values[f"{scope.self_name}.{attribute}"] = recorded
            if scope.instance is not None:
                attributes = self.class_attributes(scope.instance)
                attributes[attribute] = join(attributes.get(attribute, ()), recorded)
        elif isinstance(target, (cst.Tuple, cst.List)):
            self._assign_unpacked(target, value, scope, value_node)
        elif isinstance(target, cst.Subscript):
            self._assign_item(target, value, scope)

    def _assign_unpacked(self, target, value: Alternatives, scope: Scope, value_node) -> None:
        elements = [e.value for e in target.elements]
        if isinstance(value_node, (cst.Tuple, cst.List)) and len(value_node.elements) == len(elements):
            # `a, b = m.repeat(h, 1, 1), x`: each target gets its own element, with its own step.
            if not any(isinstance(e, cst.StarredElement) for e in value_node.elements):
                for element, source in zip(elements, value_node.elements):
                    item = self.evaluate(source.value, scope)
                    self._assign_target(element, item, scope, source.value)
                return
        for index, element in enumerate(elements):
            if isinstance(element, cst.StarredElement):
                continue
            item: Alternatives = ()
            for alternative in value:
                if isinstance(alternative, SequenceValue) and len(alternative.items) == len(elements):
                    item = join(item, alternative.items[index])
                elif isinstance(alternative, ShapeOf):
                    text = f"{alternative.base}.shape[{index}]"
                    item = join(item, (Size(frozenset({text})),))
            if not item:
                item = (UNKNOWN_VALUE,)
            if isinstance(element, cst.Name):
                scope.values[element.value] = item
                sizes = [v for v in item if isinstance(v, Size)]
                if sizes:
                    scope.sizes[element.value] = Size(sizes[0].texts | {element.value})
                else:
                    scope.sizes.pop(element.value, None)
            else:
                self._assign_target(element, item, scope, value_node)

    def _assign_item(self, target: cst.Subscript, value: Alternatives, scope: Scope) -> None:
        # `kwargs["attn_mask"] = m` updates a dict built earlier in this scope.
        if not isinstance(target.value, cst.Name) or len(target.slice) != 1:
            return
        key_node = target.slice[0].slice
        if not isinstance(key_node, cst.Index) or not isinstance(key_node.value, cst.SimpleString):
            return
        key = key_node.value.evaluated_value
        current = scope.lookup(target.value.value) or ()
        updated = []
        for alternative in current:
            if isinstance(alternative, DictValue):
                entries = tuple((k, v) for k, v in alternative.entries if k != key) + ((key, value),)
                updated.append(DictValue(entries))
            else:
                updated.append(alternative)
        if updated:
            scope.values[target.value.value] = tuple(updated)

    def _is_self(self, node: cst.BaseExpression, scope: Scope) -> bool:
        return isinstance(node, cst.Name) and scope.self_name is not None and node.value == scope.self_name

    # -----------------------------------------------------------------------------------------------------------
    # Expressions

    def evaluate(self, node: cst.BaseExpression, scope: Scope) -> Alternatives:
        cached = self._memo.get(id(node))
        if cached is not None:
            return cached
        node_type = type(node)
        if node_type in self._evaluators:
            method = self._evaluators[node_type]
        else:
            method = getattr(type(self), f"_evaluate_{node_type.__name__}", None)
            self._evaluators[node_type] = method
        if method is None:
            self._visit_children(node, scope)
            result: Alternatives = (UNKNOWN_VALUE,)
        else:
            result = method(self, node, scope)
        self._memo[id(node)] = result
        return result

    def _visit_children(self, node: cst.CSTNode, scope: Scope) -> None:
        # Calls nested in unmodelled expressions (a lambda body, an f-string) can still be consumers.
        expressions = self._nested_expressions.get(node)
        if expressions is None:
            expressions = tuple(_nested_expressions(node))
            self._nested_expressions[node] = expressions
        for expression in expressions:
            self.evaluate(expression, scope)

    def _compact_text(self, node: cst.CSTNode) -> str:
        """Return `compact_text(node)`, generated once per node in a run."""
        text = self._compact_texts.get(node)
        if text is None:
            text = compact_text(node)
            self._compact_texts[node] = text
        return text

    def _evaluate_Name(self, node: cst.Name, scope: Scope) -> Alternatives:
        if node.value in ("True", "False", "None"):
            return (UNKNOWN_VALUE,)
        # NOTE: a name both imported and assigned (`try: from .layers import Block` then `except ImportError:
        # Block = object`) reads only the assigned value, so calls through the imported class are not followed.
        bound = scope.lookup(node.value)
        if bound is not None:
            return bound
        context = scope.module_context()
        if context is not None:
            if node.value in context.functions:
                return (FunctionRef(context, node.value),)
            if node.value in context.classes:
                return (ClassRef(context, node.value),)
            qualified = context.imports.resolve(node)
            if qualified is not None:
                return (self._project_object(qualified) or QualifiedName(qualified),)
        return (Tensor(None, source=node.value),)

    def _project_object(self, qualified: str, hops: int = 0) -> Optional[Value]:
        """Return the project function or class a dotted name imports, when the project has that module.

        A name that the module itself imports (a re-export in a package's `__init__.py`) is followed a few hops.
        """
        if self.project is None or qualified.startswith(("torch.", "einops.")) or hops > 4:
            return None
        module_name, _, symbol = qualified.rpartition(".")
        if not module_name:
            return None
        context = self.project.find(module_name)
        if context is None:
            return None
        if symbol in context.functions:
            return FunctionRef(context, symbol)
        if symbol in context.classes:
            return ClassRef(context, symbol)
        reexported = context.imports.resolve(cst.Name(symbol))
        if reexported is not None and reexported != qualified:
            return self._project_object(reexported, hops + 1)
        return None

    def _evaluate_Attribute(self, node: cst.Attribute, scope: Scope) -> Alternatives:
        context = scope.module_context()
        qualified = context.imports.resolve(node) if context is not None else None
        if qualified is not None and scope.lookup(qualified.split(".")[0]) is None:
            return (self._project_object(qualified) or QualifiedName(qualified),)
        attribute = node.attr.value
        results: List[Value] = []
        for base in self.evaluate(node.value, scope):
            results.extend(self._attribute_of(base, attribute, node, scope))
        return join(tuple(results))

    def _attribute_of(self, base: Value, attribute: str, node: cst.Attribute, scope: Scope) -> Alternatives:
        if isinstance(base, Instance):
            if base == scope.instance:
                local = scope.lookup(f"{scope.self_name}.{attribute}")
                if local is not None:
                    return local
            attributes = self.class_attributes(base)
            if attribute in attributes:
                return attributes[attribute]
            method = self.find_method(base, attribute)
            if method is not None:
                return (method,)
            return (Tensor(None, source=label_text(node)),)
        if isinstance(base, Tensor):
            if attribute == "shape":
                return (ShapeOf(self._compact_text(node.value), base),)
            if attribute in ("T", "mT"):
                if base.axes is not None and len(base.axes) >= 2:
                    return (tensor_ops.transpose(base, -2, -1, node),)
                return (tensor_ops.unknown_like(base),)
            if attribute == "data":
                return (base,)
            return (Method(base, attribute, node),)
        if isinstance(base, Layer) and attribute == "forward":
            return (BoundForward(base),)
        if isinstance(base, DictValue) and attribute in ("get", "pop"):
            return (DictLookup(base),)
        if isinstance(base, SuperRef):
            if attribute == "__init__":
                # Base-class attributes are collected already; running the base constructor again adds nothing.
                return (UNKNOWN_VALUE,)
            for parent in self._base_instances(base.instance):
                found = self._find_method(parent, attribute)
                if found is not None:
                    return (BoundMethod(base.instance, found.function),)
            return (UNKNOWN_VALUE,)
        if isinstance(base, ClassRef):
            found = self._find_method(Instance(base.context, base.class_def), attribute)
            if found is not None:
                decorators = {dotted_name(d.decorator) for d in found.function.decorators}
                if "classmethod" in decorators:
                    return (ClassMethod(base, found.function),)
                if "staticmethod" in decorators:
                    return (FunctionRef.of_method(base.context, found.function),)
            return (UNKNOWN_VALUE,)
        if isinstance(base, QualifiedName):
            return (QualifiedName(f"{base.name}.{attribute}"),)
        return (Tensor(None, source=label_text(node)),)

    def _evaluate_Call(self, node: cst.Call, scope: Scope) -> Alternatives:
        callees = self.evaluate(node.func, scope)
        results: List[Value] = []
        handled_unknown = False
        for callee in callees:
            if isinstance(callee, Method):
                results.extend(self._call_method(callee, node, scope))
            elif isinstance(callee, QualifiedName):
                results.extend(self._call_function(callee.name, node, scope))
            elif isinstance(callee, Layer):
                results.extend(self._call_layer(callee, node, scope))
            elif isinstance(callee, BoundForward):
                results.extend(self._call_layer(callee.layer, node, scope))
            elif isinstance(callee, FunctionRef):
                arguments = self._bind_call(node, scope)
                results.extend(self.invoke(callee.function, None, callee.context, node, arguments))
            elif isinstance(callee, BoundMethod):
                arguments = self._bind_call(node, scope)
                context = callee.instance.context
                results.extend(self.invoke(callee.function, callee.instance, context, node, arguments))
            elif isinstance(callee, ClassMethod):
                bound = self._bind_call(node, scope)
                arguments = BoundArguments(((callee.owner,),) + bound.positional, bound.keywords)
                results.extend(self.invoke(callee.function, None, callee.owner.context, node, arguments))
            elif isinstance(callee, DictLookup):
                results.extend(self._dict_lookup(callee.entries, node, scope))
            elif isinstance(callee, ClassRef):
                arguments = self._bind_call(node, scope).structural_only()
                if not any(arguments.positional) and not any(a for _, a in arguments.keywords):
                    arguments = None
                else:
                    # NOTE: a keyword whose values were all dropped still counts, so `Block(cfg=c)` and
                    # `Block(cfg=c, depth=4)` are two variants, and every method runs again for the second.
                    arguments = arguments.with_keywords_bound()
                results.append(Instance(callee.context, callee.class_def, arguments))
            elif isinstance(callee, Instance):
                results.extend(self._call_instance(callee, node, self._bind_call(node, scope)))
            elif not handled_unknown:
                handled_unknown = True
                results.extend(self._call_unknown(node, scope))
        return join(tuple(results)) or (UNKNOWN_VALUE,)

    def _dict_lookup(self, entries: DictValue, node: cst.Call, scope: Scope) -> Alternatives:
        """`kwargs.get("mask")` or `kwargs.pop("mask", None)`."""
        key_node = node.args[0].value if node.args else None
        default = self.evaluate(node.args[1].value, scope) if len(node.args) > 1 else (UNKNOWN_VALUE,)
        if not isinstance(key_node, cst.SimpleString):
            return (UNKNOWN_VALUE,)
        found = entries.get(key_node.evaluated_value)
        return join(found, default) if found is not None else default

    def _call_instance(self, instance: Instance, node: cst.Call, arguments: BoundArguments) -> Alternatives:
        """Calling an nn.Module instance runs its `forward`."""
        method = self.find_method(instance, "forward") or self.find_method(instance, "__call__")
        if method is None:
            return (Tensor(None, source=label_text(node)),)
        return self.invoke(method.function, instance, instance.context, node, arguments)

    def _evaluate_Subscript(self, node: cst.Subscript, scope: Scope) -> Alternatives:
        results: List[Value] = []
        for base in self.evaluate(node.value, scope):
            results.extend(self._subscript_of(base, node, scope))
        return join(tuple(results)) or (UNKNOWN_VALUE,)

    def _evaluate_BinaryOperation(self, node: cst.BinaryOperation, scope: Scope) -> Alternatives:
        left = self.evaluate(node.left, scope)
        right = self.evaluate(node.right, scope)
        operator = node.operator
        results: List[Value] = []
        if isinstance(operator, cst.Multiply):
            repeated = self._repeated_list(node, left, right, scope)
            if repeated is not None:
                return (repeated,)
        if isinstance(operator, (cst.Modulo, cst.FloorDivide)):
            vectors = [v for v in left if isinstance(v, IndexVector)]
            if vectors:
                return (self._index_arithmetic(vectors[0], operator, node.right, scope),)
        for first in left:
            for second in right:
                results.append(_binary(first, second, operator, node))
        return join(tuple(results)) or (UNKNOWN_VALUE,)

    def _evaluate_UnaryOperation(self, node: cst.UnaryOperation, scope: Scope) -> Alternatives:
        operand = self.evaluate(node.expression, scope)
        return tuple(_computed(v) for v in operand if isinstance(v, Tensor)) or (UNKNOWN_VALUE,)

    def _evaluate_Comparison(self, node: cst.Comparison, scope: Scope) -> Alternatives:
        # NOTE: the result keeps the left tensor's axes without broadcasting, so an outer product written as a
        # comparison (`q_pos[:, :, None] >= k_pos[:, None, :]`) gives no batch evidence, unlike `&` or `*`.
        left = self.evaluate(node.left, scope)
        tensors: List[Value] = [v for v in left if isinstance(v, Tensor)]
        for target in node.comparisons:
            right = self.evaluate(target.comparator, scope)
            if not tensors:
                tensors = [v for v in right if isinstance(v, Tensor)]
        return tuple(_computed(v) for v in tensors) or (UNKNOWN_VALUE,)

    def _evaluate_BooleanOperation(self, node: cst.BooleanOperation, scope: Scope) -> Alternatives:
        return join(self.evaluate(node.left, scope), self.evaluate(node.right, scope))

    def _evaluate_IfExp(self, node: cst.IfExp, scope: Scope) -> Alternatives:
        self.evaluate(node.test, scope)
        return join(self.evaluate(node.body, scope), self.evaluate(node.orelse, scope))

    def _evaluate_NamedExpr(self, node: cst.NamedExpr, scope: Scope) -> Alternatives:
        value = self.evaluate(node.value, scope)
        self._assign_target(node.target, value, scope, node.value)
        return value

    def _evaluate_Await(self, node: cst.Await, scope: Scope) -> Alternatives:
        return self.evaluate(node.expression, scope)

    def _evaluate_List(self, node: cst.List, scope: Scope) -> Alternatives:
        return self._sequence(node, scope)

    def _evaluate_Tuple(self, node: cst.Tuple, scope: Scope) -> Alternatives:
        return self._sequence(node, scope)

    def _sequence(self, node, scope: Scope) -> Alternatives:
        items = []
        for element in node.elements:
            if isinstance(element, cst.StarredElement):
                self.evaluate(element.value, scope)
                return (UNKNOWN_VALUE,)
            items.append(self.evaluate(element.value, scope))
        return (SequenceValue(tuple(items)),)

    def _evaluate_Dict(self, node: cst.Dict, scope: Scope) -> Alternatives:
        entries = []
        for element in node.elements:
            if isinstance(element, cst.DictElement):
                value = self.evaluate(element.value, scope)
                if isinstance(element.key, cst.SimpleString):
                    entries.append((element.key.evaluated_value, value))
            else:
                self.evaluate(element.value, scope)
        return (DictValue(tuple(entries)),)

    def _evaluate_ListComp(self, node: cst.ListComp, scope: Scope) -> Alternatives:
        return self._comprehension(node, scope)

    def _evaluate_GeneratorExp(self, node: cst.GeneratorExp, scope: Scope) -> Alternatives:
        return self._comprehension(node, scope)

    def _comprehension(self, node, scope: Scope) -> Alternatives:
        inner = Scope(parent=scope, context=scope.context, instance=scope.instance, self_name=scope.self_name)
        loop = node.for_in
        iterated = self.evaluate(loop.iter, scope)
        is_range = isinstance(loop.iter, cst.Call) and dotted_name(loop.iter.func) == "range"
        if isinstance(loop.target, cst.Name) and is_range and loop.inner_for_in is None:
            inner.values[loop.target.value] = (LoopIndex(loop.target.value),)
        else:
            self._assign_target(loop.target, _loop_elements(iterated), inner, loop.iter)
        for condition in loop.ifs:
            self.evaluate(condition.test, inner)
        element = self.evaluate(node.elt, inner)
        tensors = [v for v in element if isinstance(v, Tensor)]
        if tensors and is_range and not _uses_name(node.elt, loop.target):
            # `[mask for _ in range(h)]` is `[mask] * h`.
            count_node = loop.iter.args[-1].value if len(loop.iter.args) == 1 else None
            if count_node is not None:
                return (RepeatedList(tensors[0], self.size_of(count_node, scope)),)
        if tensors and is_range:
            return (LoopList(tensors[0]),)
        layers = tuple(v for v in element if isinstance(v, (Layer, Instance)))
        if layers:
            return (SequenceValue((layers,)),)
        return (UNKNOWN_VALUE,)

    def _evaluate_Lambda(self, node: cst.Lambda, scope: Scope) -> Alternatives:
        return (UNKNOWN_VALUE,)

    # -----------------------------------------------------------------------------------------------------------
    # Sizes

    def size_of(self, node: cst.BaseExpression, scope: Scope) -> Size:
        """Read an expression as an integer size: its texts, how many factors it multiplies, and its value."""
        text = dotted_name(node) or self._compact_text(node)
        if isinstance(node, cst.Integer):
            value = _integer_value(node)
            if value is None:
                return Size(frozenset({text}))
            return Size(frozenset({text}), terms=0 if value == 1 else 1, value=value)
        if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
            if isinstance(node.expression, cst.Integer) and node.expression.value == "1":
                return Size(frozenset({text}), terms=REST_TERMS, value=-1)
        if isinstance(node, cst.Name):
            bound = scope.lookup_size(node.value)
            if bound is not None:
                return Size(bound.texts | {text}, bound.terms, bound.value, bound.parts)
            return Size(frozenset({text}))
        if isinstance(node, cst.Attribute) and scope.self_name is not None:
            bound = scope.lookup_size(text)
            if bound is not None:
                return bound
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Multiply):
            left = self.size_of(node.left, scope)
            right = self.size_of(node.right, scope)
            parts = (left.parts or (left.texts,)) + (right.parts or (right.texts,))
            terms = max(left.terms, 0) + max(right.terms, 0)
            return Size(frozenset({text}), terms=terms, parts=parts)
        if isinstance(node, cst.Call) and dotted_name(node.func) == "int" and node.args:
            inner = self.size_of(node.args[0].value, scope)
            return Size(inner.texts | {text}, inner.terms, inner.value, inner.parts)
        return Size(frozenset({text}))

    def _sizes_from_args(self, args: Sequence[cst.Arg], scope: Scope) -> Optional[List[Size]]:
        """Read `f(a, b, c)` or `f((a, b, c))` as a list of sizes; None when they are hidden (`*shape`)."""
        positional = [a for a in args if a.keyword is None]
        if any(a.star for a in positional):
            return None
        if len(positional) == 1 and isinstance(positional[0].value, (cst.Tuple, cst.List)):
            elements = positional[0].value.elements
            if any(isinstance(e, cst.StarredElement) for e in elements):
                return None
            return [self.size_of(e.value, scope) for e in elements]
        if len(positional) == 1 and isinstance(positional[0].value, cst.Attribute):
            if positional[0].value.attr.value == "shape":
                return None
        return [self.size_of(a.value, scope) for a in positional]

    def _repeated_list(self, node, left, right, scope) -> Optional[RepeatedList]:
        if isinstance(node.left, cst.List) and len(node.left.elements) == 1:
            element, count_node = left, node.right
        elif isinstance(node.right, cst.List) and len(node.right.elements) == 1:
            element, count_node = right, node.left
        else:
            return None
        for value in element:
            if isinstance(value, SequenceValue) and len(value.items) == 1:
                tensors = [v for v in value.items[0] if isinstance(v, Tensor)]
                if tensors:
                    return RepeatedList(tensors[0], self.size_of(count_node, scope))
        return None

    def _index_arithmetic(self, vector: IndexVector, operator, divisor: cst.BaseExpression, scope) -> IndexVector:
        size = self.size_of(divisor, scope)
        other = frozenset()
        for part in vector.total.parts:
            if not part & size.texts:
                other = other | part
        if isinstance(operator, cst.Modulo):
            return IndexVector(vector.total, "inner", other or frozenset({f"{vector.total}/{size}"}))
        return IndexVector(vector.total, "outer", size.texts)

    # -----------------------------------------------------------------------------------------------------------
    # Calls

    def _call_method(
        self, method: Method, node: cst.Call, scope: Scope, args: Optional[Sequence[cst.Arg]] = None
    ) -> Alternatives:
        """Apply a tensor method. `args` replaces the call's arguments for a function form such as
        `torch.tile(m, dims)`, whose first argument is the receiver; records still point at `node`."""
        tensor, name = method.receiver, method.name
        args = node.args if args is None else args
        self._evaluate_arguments(node, scope)
        keywords = {a.keyword.value: a.value for a in args if a.keyword is not None}
        positional = [a.value for a in args if a.keyword is None and not a.star]

        if name in ("repeat", "tile"):
            counts = self._sizes_from_args(args, scope)
            return (tensor_ops.repeat(tensor, counts, node, kind=name),) if counts else (tensor,)
        if name == "repeat_interleave":
            return (self._repeat_interleave(tensor, positional, keywords, node, scope),)
        if name in ("expand", "broadcast_to"):
            sizes = self._sizes_from_args(args, scope)
            return (tensor_ops.expand(tensor, sizes, node),) if sizes else (tensor_ops.unknown_like(tensor),)
        if name == "expand_as" and positional:
            others = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
            return tuple(tensor_ops.expand_as(tensor, other) for other in others) or (tensor,)
        if name in ("unsqueeze", "unsqueeze_"):
            dim = _int_argument(positional, keywords, 0, "dim")
            return (tensor_ops.unsqueeze(tensor, dim, node),) if dim is not None else (tensor,)
        if name in ("squeeze", "squeeze_"):
            return (tensor_ops.squeeze(tensor, _int_argument(positional, keywords, 0, "dim")),)
        if name in ("view", "reshape"):
            if len(positional) == 1 and dotted_name(positional[0]) and "dtype" in name:
                return (tensor,)
            if len(positional) == 1 and _is_dtype(positional[0], scope.module_context()):
                return (tensor,)
            sizes = self._sizes_from_args(args, scope)
            if not sizes:
                return (tensor_ops.unknown_like(tensor),)
            result = tensor_ops.reshape(tensor, sizes, node)
            if name == "view" and not tensor.is_contiguous() and _merges_at(result, node):
                # view() raises when it must merge axes that transpose, permute or expand left non-contiguous.
                return (tensor_ops.unknown_like(result),)
            return (result,)
        if name == "flatten":
            start = _int_argument(positional, keywords, 0, "start_dim")
            end = _int_argument(positional, keywords, 1, "end_dim")
            return (tensor_ops.flatten(tensor, 0 if start is None else start, -1 if end is None else end, node),)
        if name in ("transpose", "swapaxes", "swapdims"):
            first = _int_argument(positional, keywords, 0, "dim0")
            second = _int_argument(positional, keywords, 1, "dim1")
            if first is None or second is None:
                return (tensor_ops.unknown_like(tensor),)
            return (tensor_ops.transpose(tensor, first, second, node),)
        if name == "permute":
            order = _int_list(positional)
            return (tensor_ops.permute(tensor, order, node),) if order is not None else (tensor_ops.unknown_like(tensor),)
        if name == "index_select" and len(positional) >= 2:
            return self._index_select(tensor, positional[0], positional[1], node, scope)
        if name in ("matmul", "bmm", "__matmul__") and positional:
            others = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
            return tuple(tensor_ops.matmul(tensor, other, node) for other in others) or (UNKNOWN_VALUE,)
        if name == "size":
            if positional:
                return (Size(frozenset({self._compact_text(node)})),)
            return (ShapeOf(self._compact_text(method.node.value), tensor),)
        if name == "masked_fill" and positional:
            return self._masked_fill(tensor, positional[0], scope)
        if name in _ELEMENTWISE_BINARY_METHODS and positional:
            others = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
            if others:
                return join(tuple(_elementwise(tensor, other, node) for other in others))
        if name in _CONTIGUOUS_RESULT_METHODS:
            return (tensor.with_axes(tensor.axes, contiguous=True),)
        if name in _VIEW_OR_IN_PLACE_METHODS:
            return (tensor,)
        if name in _CONVERSION_METHODS and not _is_true(keywords.get("copy")):
            # A conversion to the dtype or device the tensor already has returns the tensor itself, so an
            # expanded view stays expanded. Any other conversion returns a copy. Dtypes are not tracked, so keep both.
            return join((_computed(tensor), tensor))
        if name in _LAYOUT_KEEPING_METHODS:
            return (_computed(tensor),)
        # An unknown object's method (`block.attend(x, attn_mask=m)`) may be a wrapper around the layer.
        self._check_wrapper(node, scope)
        return (Tensor(None, source=label_text(node)),)

    def _masked_fill(self, tensor: Tensor, mask_node: cst.BaseExpression, scope: Scope) -> Alternatives:
        """`t.masked_fill(mask, value)`: a fresh tensor whose content follows the receiver and the mask alike.

        `zeros.masked_fill(mask.repeat(H, 1, 1), -inf)` is as head-major as its mask, so a mask argument of the
        result's rank is kept as a second alternative. A broadcast mask of lower rank is left out.
        """
        result: Alternatives = (tensor.with_axes(tensor.axes, contiguous=True),)
        masks = [
            value
            for value in self.evaluate(mask_node, scope)
            if isinstance(value, Tensor)
            and value.axes is not None
            and (tensor.axes is None or len(tensor.axes) == len(value.axes))
        ]
        return join(result, tuple(mask.with_axes(mask.axes, contiguous=True) for mask in masks))

    def _evaluate_arguments(self, node: cst.Call, scope: Scope) -> None:
        # Arguments can hold consumer calls of their own; their values are read again where needed.
        for arg in node.args:
            if not isinstance(arg.value, (cst.Integer, cst.Name, cst.SimpleString, cst.Float)):
                self.evaluate(arg.value, scope)

    def _repeat_interleave(self, tensor, positional, keywords, node, scope) -> Tensor:
        repeats = keywords.get("repeats", positional[0] if positional else None)
        dim_node = keywords.get("dim", positional[1] if len(positional) > 1 else None)
        if repeats is None:
            return tensor_ops.unknown_like(tensor)
        count = self._repeat_count(repeats, scope)
        dim = _literal_int(dim_node) if dim_node is not None else None
        if dim_node is not None and dim is None:
            return tensor_ops.unknown_like(tensor)
        return tensor_ops.repeat_interleave(tensor, count, dim, node)

    def _repeat_count(self, repeats: cst.BaseExpression, scope: Scope) -> Size:
        # `torch.full((N,), H)` as the repeats tensor repeats every element H times.
        context = scope.module_context()
        if isinstance(repeats, cst.Call) and context and context.imports.resolve(repeats.func) == "torch.full":
            if len(repeats.args) >= 2:
                return self.size_of(repeats.args[1].value, scope)
        return self.size_of(repeats, scope)

    def _index_select(self, tensor, dim_node, index_node, node, scope) -> Alternatives:
        dim = _literal_int(dim_node)
        vectors = [v for v in self.evaluate(index_node, scope) if isinstance(v, IndexVector)]
        if dim is None or not vectors:
            return (tensor_ops.unknown_like(tensor),)
        return (tensor_ops.gather(tensor, vectors[0], dim, node),)

    def _call_function(self, name: str, node: cst.Call, scope: Scope) -> Alternatives:
        positional = [a.value for a in node.args if a.keyword is None and not a.star]
        keywords = {a.keyword.value: a.value for a in node.args if a.keyword is not None}

        if name in LAYER_SPECS:
            self._evaluate_arguments(node, scope)
            return (self._build_layer(name, node, scope),)
        if name in CONTAINERS:
            return (self._build_container(name, node, scope),)
        if name == FUNCTIONAL_MHA:
            self._check_functional(node, scope)
            return (UNKNOWN_VALUE,)
        if name in _IDENTITY_WRAPPERS and positional:
            return self.evaluate(positional[0], scope)
        if name in _CALLS_FIRST_ARGUMENT and positional:
            # checkpoint(fn, *args) calls fn(*args).
            forwarded = node.with_changes(func=positional[0], args=node.args[1:])
            self._built_nodes.append(forwarded)
            return self._evaluate_Call(forwarded, scope)
        if name in ("torch.cat", "torch.concat", "torch.concatenate", "torch.stack"):
            return self._join_tensors(name, node, positional, keywords, scope)
        if name in ("einops.repeat", "einops.rearrange", "einops.einops.repeat", "einops.einops.rearrange"):
            return self._einops(node, positional, keywords, scope)
        if name == "torch.arange" and positional:
            return (IndexVector(self.size_of(positional[-1] if len(positional) == 1 else positional[1], scope)),)
        if name in _CONSTRUCTORS:
            return (self._construct(name, node, scope),)

        self._evaluate_arguments(node, scope)
        if name in _ELEMENTWISE_BINARY_FUNCTIONS and len(positional) >= 2:
            firsts = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
            seconds = [v for v in self.evaluate(positional[1], scope) if isinstance(v, Tensor)]
            if firsts and seconds:
                return join(tuple(_elementwise(a, b, node) for a in firsts for b in seconds))
            return tuple(_computed(v) for v in firsts or seconds) or (UNKNOWN_VALUE,)
        if name.startswith("torch.") and positional:
            as_method = _TORCH_FUNCTION_AS_METHOD.get(name)
            if as_method is not None:
                receivers = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
                results: List[Value] = []
                for receiver in receivers:
                    method = Method(receiver, as_method, node.func)
                    results.extend(self._call_method(method, node, scope, args=node.args[1:]))
                return join(tuple(results)) or (UNKNOWN_VALUE,)
            if name == "torch.where" and len(positional) >= 1:
                return tuple(v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)) or (
                    UNKNOWN_VALUE,
                )
        if name in ("torch.matmul", "torch.bmm") and len(positional) >= 2:
            firsts = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
            seconds = [v for v in self.evaluate(positional[1], scope) if isinstance(v, Tensor)]
            return tuple(tensor_ops.matmul(a, b, node) for a in firsts for b in seconds) or (UNKNOWN_VALUE,)
        if name == "builtins.dict" or name == "dict":
            return self._dict_call(node, scope)
        if not name.startswith("torch."):
            # torch's own functions that take `attn_mask` (scaled_dot_product_attention) have other contracts.
            self._check_wrapper(node, scope)
        return (Tensor(None, source=label_text(node)),)

    def _call_unknown(self, node: cst.Call, scope: Scope) -> Alternatives:
        if dotted_name(node.func) == "dict":
            return self._dict_call(node, scope)
        if dotted_name(node.func) in ("tuple", "list") and len(node.args) == 1:
            return self.evaluate(node.args[0].value, scope)
        if dotted_name(node.func) == "super" and scope.instance is not None:
            return (SuperRef(scope.instance),)
        self._evaluate_arguments(node, scope)
        self._check_wrapper(node, scope)
        return (Tensor(None, source=label_text(node)),)

    def _dict_call(self, node: cst.Call, scope: Scope) -> Alternatives:
        entries = []
        for arg in node.args:
            value = self.evaluate(arg.value, scope)
            if arg.keyword is not None:
                entries.append((arg.keyword.value, value))
        return (DictValue(tuple(entries)),)

    def _join_tensors(self, name, node, positional, keywords, scope) -> Alternatives:
        if not positional:
            return (UNKNOWN_VALUE,)
        dim_node = keywords.get("dim", positional[1] if len(positional) > 1 else None)
        dim = 0 if dim_node is None else _literal_int(dim_node)
        stacking = name == "torch.stack"
        results: List[Value] = []
        for value in self.evaluate(positional[0], scope):
            if dim is None:
                continue
            if isinstance(value, RepeatedList):
                op = tensor_ops.stack_copies if stacking else tensor_ops.concatenate_copies
                results.append(op(value.element, value.count, dim, node))
            elif isinstance(value, LoopList):
                op = tensor_ops.stack_loop if stacking else tensor_ops.concatenate_loop
                results.append(op(value.element, dim, node))
            elif isinstance(value, SequenceValue) and value.items:
                same = _same_tensor(value.items)
                if same is not None:
                    count = Size(frozenset({str(len(value.items))}), value=len(value.items))
                    op = tensor_ops.stack_copies if stacking else tensor_ops.concatenate_copies
                    results.append(op(same, count, dim, node))
        return join(tuple(results)) or (Tensor(None, source=label_text(node)),)

    def _einops(self, node, positional, keywords, scope) -> Alternatives:
        if len(positional) < 2 or not isinstance(positional[1], cst.SimpleString):
            return (Tensor(None, source=label_text(node)),)
        pattern = positional[1].evaluated_value
        sizes = {key: self.size_of(value, scope) for key, value in keywords.items()}
        tensors = [v for v in self.evaluate(positional[0], scope) if isinstance(v, Tensor)]
        return tuple(einops_patterns.apply_pattern(t, pattern, sizes, node) for t in tensors) or (UNKNOWN_VALUE,)

    def _construct(self, name: str, node: cst.Call, scope: Scope) -> Tensor:
        args = [a for a in node.args if a.keyword is None]
        if name == "torch.full" and args:
            args = args[:1]
        elif name == "torch.randint" and len(args) >= 2:
            # randint(high, size) or randint(low, high, size): the size is the last positional tuple.
            args = args[-1:]
        sizes = self._sizes_from_args(args, scope)
        if not sizes:
            return Tensor(None, source=label_text(node))
        # NOTE: a mask built by zeros/ones/full is treated as varying even if nothing is written into it later,
        # because masks built that way are nearly always filled per example before use.
        varying = True
        axes = tuple(
            SINGLETON if size.value == 1 else Axis((Factor(UNKNOWN, varying=varying, sizes=size.texts),))
            for size in sizes
        )
        return Tensor(None, source=label_text(node)).with_axes(axes, contiguous=True)

    # -----------------------------------------------------------------------------------------------------------
    # Layers and consumers

    def _build_layer(self, kind: str, node: cst.Call, scope: Scope) -> Layer:
        spec = LAYER_SPECS[kind]
        head_counts: frozenset = frozenset()
        if spec.head_argument is not None:
            argument = find_argument(node, *spec.head_argument)
            if argument is not None:
                head_counts = self.size_of(argument, scope).texts
        batch_first = literal_bool(find_argument(node, "batch_first", None))
        inner_layers: List[Instance] = []
        if spec.layer_argument is not None:
            argument = find_argument(node, *spec.layer_argument)
            if argument is not None:
                for value in self.evaluate(argument, scope):
                    if isinstance(value, Layer):
                        head_counts = head_counts | value.head_counts
                        if batch_first is None:
                            batch_first = value.batch_first
                    elif isinstance(value, Instance):
                        # A user-defined layer stacked by nn.TransformerEncoder/Decoder gets the masks passed on.
                        inner_layers.append(value)
        return Layer(kind, head_counts, batch_first, members=tuple(inner_layers))

    def _build_container(self, kind: str, node: cst.Call, scope: Scope) -> Layer:
        members: List[Value] = []
        for arg in node.args:
            members.extend(_layers_in(self.evaluate(arg.value, scope)))
        # Identical members (a comprehension of one block class) collapse: their analysis is the same.
        return Layer(kind, members=join(tuple(members)))

    def _subscript_of(self, base: Value, node: cst.Subscript, scope: Scope) -> Alternatives:
        if isinstance(base, Tensor):
            return (self._index_tensor(base, node, scope),)
        if isinstance(base, ShapeOf) and len(node.slice) == 1:
            return (Size(frozenset({self._compact_text(node)})),)
        if isinstance(base, Layer) and base.kind in CONTAINERS:
            if len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Slice):
                return (base,)
            return tuple(base.members) or (UNKNOWN_VALUE,)
        if isinstance(base, SequenceValue) and len(node.slice) == 1:
            index = node.slice[0].slice
            if isinstance(index, cst.Index):
                position = _literal_int(index.value)
                if position is not None and -len(base.items) <= position < len(base.items):
                    return base.items[position]
        if isinstance(base, DictValue) and len(node.slice) == 1:
            index = node.slice[0].slice
            if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
                found = base.get(index.value.evaluated_value)
                if found is not None:
                    return found
        return (UNKNOWN_VALUE,)

    def _index_tensor(self, tensor: Tensor, node: cst.Subscript, scope: Scope) -> Tensor:
        """Index a tensor: `None` adds an axis, `:` and slices keep one, an integer drops one."""
        entries = []
        for element in node.slice:
            item = element.slice
            if isinstance(item, cst.Index) and isinstance(item.value, (cst.SimpleString, cst.ConcatenatedString)):
                # `batch["mask"]`: the base is a dict-like object, and the entry is a value of its own.
                return Tensor(None, source=label_text(node))
            if isinstance(item, cst.Slice):
                entries.append(self._slice_entry(item, scope))
            elif isinstance(item.value, cst.Name) and item.value.value == "None":
                entries.append(("new", None))
            elif isinstance(item.value, cst.Ellipsis):
                entries.append(("ellipsis", None))
            else:
                values = self.evaluate(item.value, scope)
                if any(isinstance(v, LoopIndex) for v in values):
                    entries.append(("loop_drop", None))
                elif any(isinstance(v, IndexVector) for v in values):
                    entries.append(("vector", next(v for v in values if isinstance(v, IndexVector))))
                elif any(isinstance(v, Tensor) for v in values) and not _looks_scalar(item.value):
                    return tensor_ops.unknown_like(tensor)
                else:
                    entries.append(("drop", None))

        consuming = sum(1 for kind, _ in entries if kind not in ("new", "ellipsis"))
        has_ellipsis = any(kind == "ellipsis" for kind, _ in entries)
        if tensor.axes is None:
            tensor = tensor_ops.materialize(tensor, _rank_from_index(tensor, entries, consuming, has_ellipsis))
        axes = list(tensor.axes)
        if consuming > len(axes):
            return tensor_ops.unknown_like(tensor)

        if has_ellipsis:
            split = next(i for i, (kind, _) in enumerate(entries) if kind == "ellipsis")
            before, after = entries[:split], entries[split + 1 :]
            after_consuming = sum(1 for kind, _ in after if kind != "new")
            middle = axes[sum(1 for kind, _ in before if kind != "new") : len(axes) - after_consuming]
            left = self._apply_entries(before, axes, node)
            right = self._apply_entries(after, axes[len(axes) - after_consuming :], node)
            if left is None or right is None:
                return tensor_ops.unknown_like(tensor)
            return tensor.with_axes(tuple(left[0] + middle + right[0]))

        result = self._apply_entries(entries, axes, node)
        if result is None:
            return tensor_ops.unknown_like(tensor)
        applied, remaining = result
        return tensor.with_axes(tuple(applied + remaining))

    def _apply_entries(self, entries, axes: List[Axis], node) -> Optional[Tuple[List[Axis], List[Axis]]]:
        result: List[Axis] = []
        position = 0
        for kind, payload in entries:
            if kind == "new":
                result.append(Axis((), placed_by=OpRecord(node, "unsqueeze", (str(len(result)),))))
                continue
            if position >= len(axes):
                return None
            axis = axes[position]
            position += 1
            if kind == "keep":
                result.append(axis)
            elif kind == "loop_keep":
                kept, _ = tensor_ops.pick_with_loop(axis, keep_axis=True)
                result.append(kept)
            elif kind == "vector":
                gathered = tensor_ops.gather(Tensor((axis,)), payload, 0, node)
                if gathered.axes is None:
                    return None
                result.append(gathered.axes[0])
            elif kind in ("drop", "loop_drop"):
                continue
        return result, list(axes[position:])

    def _slice_entry(self, item: cst.Slice, scope: Scope):
        if item.lower is not None and isinstance(item.lower, cst.Name):
            bound = scope.lookup(item.lower.value)
            if bound and any(isinstance(v, LoopIndex) for v in bound):
                return ("loop_keep", None)
        return ("keep", None)

    def _call_layer(self, layer: Layer, node: cst.Call, scope: Scope) -> Alternatives:
        self._evaluate_arguments(node, scope)
        if layer.kind == "torch.nn.Sequential" and layer.members:
            return self._call_sequential(layer, node, scope)
        layers = layer.members if layer.kind in CONTAINERS else (layer,)
        results: List[Value] = []
        for member in layers:
            if isinstance(member, Instance):
                results.extend(self._call_instance(member, node, self._bind_call(node, scope)))
                continue
            if member.members and member.kind in _STACKS_PASSING_MASKS:
                self._call_stacked_layers(member, node, scope)
            spec = LAYER_SPECS.get(member.kind)
            if spec is None:
                continue
            for argument_name, position in spec.mask_arguments:
                argument = find_argument(node, argument_name, position)
                values = self.evaluate(argument, scope) if argument is not None else ()
                values = join(values, self._from_double_star(node, argument_name, scope))
                consumer = Consumer(
                    member.kind,
                    argument_name,
                    member.head_counts,
                    member.batch_first,
                    self._compact_text(node.func),
                    node,
                )
                self._report(values, consumer, argument if argument is not None else node)
        return join(tuple(results)) or (UNKNOWN_VALUE,)

    def _call_sequential(self, layer: Layer, node: cst.Call, scope: Scope) -> Alternatives:
        """nn.Sequential calls each member with the previous member's output."""
        arguments = self._bind_call(node, scope)
        result: Alternatives = (UNKNOWN_VALUE,)
        for member in layer.members:
            if isinstance(member, Instance):
                result = self._call_instance(member, node, arguments)
            else:
                result = (UNKNOWN_VALUE,)
            arguments = BoundArguments((result,), ())
        return result

    def _call_stacked_layers(self, stack: Layer, node: cst.Call, scope: Scope) -> None:
        """nn.TransformerEncoder passes `mask` on as each layer's `src_mask`; the decoder passes its masks on by
        the same names (PyTorch 2.13, torch/nn/modules/transformer.py)."""
        arguments = self._bind_call(node, scope)
        renames = _STACKS_PASSING_MASKS[stack.kind]
        positional_names = _STACK_POSITIONAL[stack.kind]
        keywords = dict(arguments.keywords)
        for name, value in zip(positional_names, arguments.positional):
            keywords.setdefault(name, value)
        inputs = tuple(keywords.pop(name) for name in positional_names[:_STACK_INPUTS[stack.kind]] if name in keywords)
        passed = tuple((renames.get(name, name), value) for name, value in keywords.items())
        for inner in stack.members:
            if isinstance(inner, Instance):
                self._call_instance(inner, node, BoundArguments(inputs, passed))

    def _check_functional(self, node: cst.Call, scope: Scope) -> None:
        self._evaluate_arguments(node, scope)
        heads_node = find_argument(node, *FUNCTIONAL_HEAD_ARGUMENT)
        head_counts = self.size_of(heads_node, scope).texts if heads_node is not None else frozenset()
        argument = find_argument(node, *FUNCTIONAL_MASK_ARGUMENT)
        values = self.evaluate(argument, scope) if argument is not None else ()
        values = join(values, self._from_double_star(node, "attn_mask", scope))
        consumer = Consumer(FUNCTIONAL_MHA, "attn_mask", head_counts, None, self._compact_text(node.func), node)
        self._report(values, consumer, argument if argument is not None else node)

    def _check_wrapper(self, node: cst.Call, scope: Scope) -> None:
        argument = find_argument(node, WRAPPER_KEYWORD, None)
        values = self.evaluate(argument, scope) if argument is not None else ()
        values = join(values, self._from_double_star(node, WRAPPER_KEYWORD, scope))
        if not values:
            return
        kind = CONFIGURED_CONSUMER if self._is_configured_consumer(node, scope) else UNKNOWN_CONSUMER
        consumer = Consumer(kind, WRAPPER_KEYWORD, frozenset(), None, self._compact_text(node.func), node)
        self._report(values, consumer, argument if argument is not None else node)

    def _is_configured_consumer(self, node: cst.Call, scope: Scope) -> bool:
        """Return True for a callable the user configured as taking a batch-major (N*num_heads, L, S) `attn_mask`,
        matched by its qualified name through the imports or by the last part of the called name."""
        if not self.consumer_callables:
            return False
        context = scope.module_context()
        qualified = context.imports.resolve(node.func) if context is not None else None
        if qualified is not None and qualified in self.consumer_callables:
            return True
        called = dotted_name(node.func) or ""
        last = called.rsplit(".", 1)[-1]
        return called in self.consumer_callables or last in self.consumer_callables

    def _from_double_star(self, node: cst.Call, key: str, scope: Scope) -> Alternatives:
        found: Alternatives = ()
        for arg in node.args:
            if arg.star != "**":
                continue
            for value in self.evaluate(arg.value, scope):
                if isinstance(value, DictValue):
                    entry = value.get(key)
                    if entry is not None:
                        found = join(found, entry)
        return found

    def _report(self, values: Alternatives, consumer: Consumer, argument: cst.CSTNode) -> None:
        if not self._reporting:
            return
        for value in values:
            if not isinstance(value, Tensor):
                continue
            tensor = value
            if isinstance(argument, cst.BaseExpression) and not _is_plain_reference(argument):
                tensor = tensor.with_step(Step(None, argument))
            self.uses.append(MaskUse(tensor, consumer, argument))


# -------------------------------------------------------------------------------------------------------------------
# Helpers without state

_TORCH_FUNCTION_AS_METHOD = {
    "torch.repeat_interleave": "repeat_interleave",
    "torch.tile": "tile",
    "torch.transpose": "transpose",
    "torch.swapaxes": "transpose",
    "torch.permute": "permute",
    "torch.flatten": "flatten",
    "torch.reshape": "reshape",
    "torch.unsqueeze": "unsqueeze",
    "torch.squeeze": "squeeze",
    "torch.broadcast_to": "broadcast_to",
    "torch.index_select": "index_select",
    "torch.masked_fill": "masked_fill",
    "torch.logical_not": "logical_not",
    "torch.triu": "triu",
    "torch.tril": "tril",
    "torch.clone": "clone",
}


def _record_step(value: Alternatives, target: Optional[str], node: cst.BaseExpression) -> Alternatives:
    if _is_plain_reference(node):
        return value
    return tuple(v.with_step(Step(target, node)) if isinstance(v, Tensor) else v for v in value)


def _is_plain_reference(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Name) or (isinstance(node, cst.Attribute) and dotted_name(node) is not None)


def _bind_passed_size(scope: Scope, name: str) -> None:
    """Give a parameter the size texts of the count the caller passed (see `_with_passed_size`)."""
    sizes = [value for value in scope.values[name] if isinstance(value, Size)]
    if sizes:
        size = sizes[0]
        scope.sizes[name] = Size(size.texts | {name}, size.terms, size.value, size.parts)


def _is_size_expression(node: cst.BaseExpression) -> bool:
    """True for integer-looking expressions: names, attributes, literals, `x.shape[0]`, `x.size(1)`, arithmetic."""
    if isinstance(node, (cst.Integer, cst.Name, cst.Attribute)):
        return True
    if isinstance(node, cst.BinaryOperation):
        return _is_size_expression(node.left) and _is_size_expression(node.right)
    if isinstance(node, cst.Subscript):
        return isinstance(node.value, cst.Attribute) and node.value.attr.value == "shape"
    if isinstance(node, cst.Call):
        name = dotted_name(node.func) or ""
        return name.endswith(".size") or name in ("int", "len")
    return False


def _binary(first: Value, second: Value, operator, node) -> Value:
    if isinstance(operator, cst.MatrixMultiply) and isinstance(first, Tensor) and isinstance(second, Tensor):
        return tensor_ops.matmul(first, second, node)
    if isinstance(first, Tensor) and isinstance(second, Tensor):
        return _elementwise(first, second, node)
    if isinstance(first, Tensor):
        return _computed(first)
    if isinstance(second, Tensor):
        return _computed(second)
    return UNKNOWN_VALUE


def _elementwise(first: Tensor, second: Tensor, node: cst.CSTNode) -> Tensor:
    """Combine two tensors with a broadcasting elementwise operation (`a & b`, `a.mul(b)`, `torch.logical_or`)."""
    if first.axes is None and not first.steps and first.source and second.axes is not None:
        return _computed(second)
    return _computed(tensor_ops.elementwise(first, second, node))


def _is_true(node: Optional[cst.BaseExpression]) -> bool:
    return isinstance(node, cst.Name) and node.value == "True"


def _computed(tensor: Tensor) -> Tensor:
    """The result of an elementwise operation. torch gives it the input's strides when the input has no
    overlapping elements (a transposed tensor stays transposed), and fresh contiguous memory otherwise (an
    expanded tensor, whose copies share memory); measured with PyTorch 2.13 by viewing such results."""
    if tensor.strided and tensor.axes is not None:
        return tensor.with_axes(tensor.axes, contiguous=True)
    return tensor


def _same_tensor(items: Sequence[Alternatives]) -> Optional[Tensor]:
    first = items[0]
    if len(first) != 1 or not isinstance(first[0], Tensor):
        return None
    if all(item == first for item in items):
        return first[0]
    return None


_STACKS_PASSING_MASKS = {
    "torch.nn.TransformerEncoder": {"mask": "src_mask"},
    "torch.nn.TransformerDecoder": {},
}
_STACK_POSITIONAL = {
    "torch.nn.TransformerEncoder": ("src", "mask", "src_key_padding_mask", "is_causal"),
    "torch.nn.TransformerDecoder": ("tgt", "memory", "tgt_mask", "memory_mask", "tgt_key_padding_mask",
                                    "memory_key_padding_mask"),
}
# How many leading parameters are the layer's inputs, passed on positionally.
_STACK_INPUTS = {"torch.nn.TransformerEncoder": 1, "torch.nn.TransformerDecoder": 2}


def _layers_in(values: Alternatives) -> List[Value]:
    layers: List[Value] = []
    for value in values:
        if isinstance(value, (Layer, Instance)):
            layers.append(value)
        elif isinstance(value, SequenceValue):
            for item in value.items:
                layers.extend(_layers_in(item))
        elif isinstance(value, DictValue):
            for _, item in value.entries:
                layers.extend(_layers_in(item))
        elif isinstance(value, RepeatedList):
            continue
    return layers


def _loop_elements(values: Alternatives) -> Alternatives:
    elements: List[Value] = []
    for value in values:
        if isinstance(value, Layer) and value.kind in CONTAINERS:
            elements.extend(value.members)
        elif isinstance(value, SequenceValue):
            for item in value.items:
                elements.extend(item)
    return join(tuple(elements)) or (UNKNOWN_VALUE,)


def _shape_of(node: cst.BaseExpression) -> Tuple[Optional[str], bool]:
    """Return (`m`, False) for `m.shape`, `m.size()` or `tuple(m.shape)`, and (`m`, True) for `m.shape[:k]`."""
    if isinstance(node, cst.Call) and dotted_name(node.func) == "tuple" and len(node.args) == 1:
        return _shape_of(node.args[0].value)
    if isinstance(node, cst.Attribute) and node.attr.value == "shape":
        return dotted_name(node.value), False
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value == "size":
        if not node.args:
            return dotted_name(node.func.value), False
    if isinstance(node, cst.Subscript) and len(node.slice) == 1 and isinstance(node.slice[0].slice, cst.Slice):
        part = node.slice[0].slice
        if part.lower is None and part.step is None:
            name, _ = _shape_of(node.value)
            return name, True
    return None, False


def _leading_size_of(node: cst.BaseExpression) -> Optional[str]:
    """Return `m` for `m.shape[0]` or `m.size(0)`."""
    if isinstance(node, cst.Subscript) and isinstance(node.value, cst.Attribute) and len(node.slice) == 1:
        index = node.slice[0].slice
        if node.value.attr.value == "shape" and isinstance(index, cst.Index) and _literal_int(index.value) == 0:
            return dotted_name(node.value.value)
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and node.func.attr.value == "size":
        if len(node.args) == 1 and _literal_int(node.args[0].value) == 0:
            return dotted_name(node.func.value)
    return None


def _names_batch_size(node: cst.BaseExpression) -> bool:
    if _leading_size_of(node) is not None:
        return True
    name = dotted_name(node)
    if name is not None and name.rsplit(".", 1)[-1] in BATCH_SIZE_NAMES:
        return True
    return isinstance(node, cst.Call) and dotted_name(node.func) == "len"


def _merges_at(tensor: Tensor, node: cst.CSTNode) -> bool:
    return any(
        axis.merged_by is not None and axis.merged_by.node is node and len(axis.factors) > 1
        for axis in tensor.axes or ()
    )


def _rank_from_index(tensor: Tensor, entries, consuming: int, has_ellipsis: bool) -> int:
    """Guess the rank of an unknown tensor from how it is indexed.

    An index that ends with a slice and names at least two axes (`pad[:, None, :]`) is taken to name them all;
    otherwise the tensor is assumed to have at least the default rank (`m[:, None]` of an (N, L, S) mask).
    """
    if not has_ellipsis and consuming >= 2 and entries and entries[-1][0] in ("keep", "loop_keep"):
        return consuming
    return max(consuming, tensor_ops.default_rank(tensor))


def _integer_value(node: cst.Integer) -> Optional[int]:
    # Python 3.11 refuses to convert integer literals of more than 4,300 digits.
    text = node.value
    try:
        if text.isascii() and text.isdigit():
            # A decimal literal: `evaluated_value` gives the same number through `ast.literal_eval`, which
            # compiles the text and took 3% of the analysis time of timm 1.0.31 naflexvit.py (cProfile).
            return int(text)
        return int(node.evaluated_value)
    except (ValueError, SyntaxError):
        return None


def _literal_int(node: Optional[cst.BaseExpression]) -> Optional[int]:
    if isinstance(node, cst.Integer):
        return _integer_value(node)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
        inner = _literal_int(node.expression)
        return None if inner is None else -inner
    return None


def _int_argument(positional, keywords, index: int, keyword: str) -> Optional[int]:
    if keyword in keywords:
        return _literal_int(keywords[keyword])
    if len(positional) > index:
        return _literal_int(positional[index])
    return None


def _int_list(positional) -> Optional[List[int]]:
    if len(positional) == 1 and isinstance(positional[0], (cst.Tuple, cst.List)):
        positional = [e.value for e in positional[0].elements]
    values = [_literal_int(p) for p in positional]
    if not values or None in values:
        return None
    return values


def _is_dtype(node: cst.BaseExpression, context: Optional[ModuleContext]) -> bool:
    name = (context.imports.resolve(node) if context is not None else None) or ""
    return name.startswith("torch.") and name.split(".")[-1] in (
        "bool", "float", "float32", "float16", "bfloat16", "float64", "double", "half", "int", "long", "uint8",
        "int8", "int32", "int64",
    )


def _looks_scalar(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.Integer, cst.Name, cst.Attribute, cst.BinaryOperation, cst.UnaryOperation))


def _uses_name(node: cst.CSTNode, target: cst.BaseExpression) -> bool:
    if not isinstance(target, cst.Name):
        return True
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, cst.Name) and current.value == target.value:
            return True
        stack.extend(_code_children(current))
    return False


def _needs_entry(value: Value, depth: int = 0) -> bool:
    """True for a tensor with a merged axis that has not been marked with the call that brought it in.

    Also true for a tuple, list or dict that contains such a tensor (`return mask.repeat(h, 1, 1), 0` or
    `return {"attn_mask": ...}`), up to `_MAX_ENTRY_NESTING` containers deep.
    """
    if isinstance(value, Tensor):
        return value.entry is None and _has_merged_axis(value)
    if depth >= _MAX_ENTRY_NESTING:
        return False
    if isinstance(value, SequenceValue):
        return any(_needs_entry(item, depth + 1) for items in value.items for item in items)
    if isinstance(value, DictValue):
        return any(_needs_entry(item, depth + 1) for _, items in value.entries for item in items)
    return False


# How many containers deep `_needs_entry` and `_with_entry` look for masks in a returned value.
_MAX_ENTRY_NESTING = 3


def _with_entry(value: Value, node: cst.Call, depth: int = 0) -> Value:
    """Return `value` with each tensor that `_needs_entry` finds marked as entering the checked module at `node`."""
    if not _needs_entry(value, depth):
        return value
    if isinstance(value, Tensor):
        return replace(value, entry=node)
    if isinstance(value, SequenceValue):
        items = tuple(tuple(_with_entry(v, node, depth + 1) for v in alternatives) for alternatives in value.items)
        return replace(value, items=items)
    if isinstance(value, DictValue):
        return replace(
            value,
            entries=tuple(
                (key, tuple(_with_entry(v, node, depth + 1) for v in alternatives))
                for key, alternatives in value.entries
            ),
        )
    return value


def _has_merged_axis(tensor: Tensor) -> bool:
    return any(axis.merged_by is not None for axis in tensor.axes or ())


def _layout_key(arguments: "BoundArguments") -> tuple:
    """Build a summary key that ignores where argument tensors came from (their steps and source names). It
    keeps what the analysis of the callee depends on: their axes, including the calls that made each layout."""

    def value_key(value: Value) -> object:
        if isinstance(value, Tensor):
            return ("tensor", value.axes, value.strided, value.memory_order)
        return value

    def alternatives_key(values: Alternatives) -> tuple:
        return tuple(value_key(v) for v in values)

    return (
        tuple(alternatives_key(a) for a in arguments.positional),
        tuple((name, alternatives_key(a)) for name, a in arguments.keywords),
    )


def _structural(values: Alternatives) -> Alternatives:
    """Keep the layers and functions among a constructor's arguments. Instances passed in keep only their class:
    an instance built from an instance built from ... (`Graph(self)`) must not nest without end."""
    kept: List[Value] = []
    for value in values:
        if isinstance(value, Instance):
            kept.append(Instance(value.context, value.class_def) if value.arguments is not None else value)
        elif isinstance(value, BoundMethod):
            instance = value.instance
            kept.append(BoundMethod(Instance(instance.context, instance.class_def), value.function))
        elif isinstance(value, (Layer, FunctionRef, ClassRef)):
            kept.append(value)
    return tuple(kept)


def _call_ids(module: cst.Module) -> Set[int]:
    """Return the ids of every Call node in a module."""
    found: Set[int] = set()
    stack: List[cst.CSTNode] = [module]
    while stack:
        node = stack.pop()
        if isinstance(node, cst.Call):
            found.add(id(node))
        stack.extend(_code_children(node))
    return found


# Node types that hold only whitespace, comments or punctuation, so never a name or a call.
_FORMATTING_NODE_TYPES = (
    cst.BaseParenthesizableWhitespace, cst.TrailingWhitespace, cst.EmptyLine, cst.Newline, cst.Comment, cst.Comma,
    cst.Dot, cst.AssignEqual, cst.Colon, cst.Semicolon, cst.LeftParen, cst.RightParen, cst.LeftSquareBracket,
    cst.RightSquareBracket, cst.LeftCurlyBrace, cst.RightCurlyBrace,
)

# For each node type met: the names of its fields, and whether it is one of the formatting node types.
_NODE_FIELDS: Dict[type, Tuple[str, ...]] = {}
_IS_FORMATTING: Dict[type, bool] = {}


def _code_children(node: cst.CSTNode) -> List[cst.CSTNode]:
    """Return the nodes of `node.children` that are not formatting nodes (whitespace, comments, punctuation), in no
    particular order.

    `children` in libcst 1.9 rebuilds the node from its visited children and validates every new node, which took
    most of the time of `_call_ids` (cProfile, timm 1.0.31 naflexvit.py). Reading the dataclass fields builds nothing.
    """
    names = _NODE_FIELDS.get(type(node))
    if names is None:
        names = tuple(field.name for field in fields(node))
        _NODE_FIELDS[type(node)] = names
    found: List[cst.CSTNode] = []
    for name in names:
        value = getattr(node, name)
        if isinstance(value, cst.CSTNode):
            if not _is_formatting(value):
                found.append(value)
        elif isinstance(value, (tuple, list)):
            found.extend(item for item in value if isinstance(item, cst.CSTNode) and not _is_formatting(item))
    return found


def _is_formatting(node: cst.CSTNode) -> bool:
    formatting = _IS_FORMATTING.get(type(node))
    if formatting is None:
        formatting = isinstance(node, _FORMATTING_NODE_TYPES)
        _IS_FORMATTING[type(node)] = formatting
    return formatting


def _nested_expressions(node: cst.CSTNode) -> Iterable[cst.BaseExpression]:
    """Yield the expressions directly inside `node`, in source order, looking through nodes that are neither
    expressions, statements nor suites (the arguments and parts of a lambda or an f-string)."""
    for child in node.children:
        if isinstance(child, cst.BaseExpression):
            yield child
        elif not isinstance(child, (cst.BaseSuite, cst.BaseStatement)):
            yield from _nested_expressions(child)


def _methods_of(class_def: cst.ClassDef) -> List[cst.FunctionDef]:
    return [s for s in class_def.body.body if isinstance(s, cst.FunctionDef)]


def _classes_in(statements) -> List[cst.ClassDef]:
    return [s for s in statements if isinstance(s, cst.ClassDef)]
