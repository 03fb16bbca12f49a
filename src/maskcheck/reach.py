"""Decide, with the stdlib parser only, whether a module can have a finding: a conservative reachability check.

The engine runs this before the libcst parse and the abstract interpreter (analysis/interpreter.py). It may let a
module through that has no finding, but it returns False only when the interpreter provably reports nothing for
the module. The argument follows. Names in backticks are methods of `ModuleInterpreter` where no class is named.

Units and contexts
    A module is split into units: each function defined directly in the module body, each class defined directly
    in the module body (its whole body, bases, methods and nested definitions), and everything else as one
    top-level unit. Every statement of a module belongs to exactly one unit. The interpreter runs a statement with
    the scope of a module context (`Scope.module_context`): that module's functions, classes and `ImportTable`
    resolve the names the statement reads. The context is usually the module the statement is written in, but
    not always (step 3). A pair (unit, context) means "statements of this unit may run with that context".

1. What a finding needs. Findings are made by the rules from `MaskUse` values only, and only `_report` creates
   them. `_report` is called from `_call_layer`, `_check_functional` and `_check_wrapper`.
   a. `_call_layer` reports only for a `Layer` whose kind, or a member's kind, is a key of `LAYER_SPECS`.
      `_build_layer` creates those layers, called by `_call_function` with that name. `_build_container` and
      `_grow_container` create only container kinds. `_check_functional` runs for `FUNCTIONAL_MHA` only. So the
      interpreter called a `QualifiedName` equal to `torch.nn.X` or `torch.nn.functional.X`, where X is one of
      CONSUMER_NAMES. `_evaluate_Name` and `_evaluate_Attribute` create a `QualifiedName` from an import alias
      (`ImportTable.resolve`), and `_attribute_of` extends one by an attribute name. `canonical` rewrites
      prefixes only, so the last part of the name is X, and X is either the attribute name of an `Attribute`
      node that ran, or the last part of the import target of a `Name` that ran. Both are signs (step 5).
   b. `_check_wrapper` reports only when its call has an `attn_mask` keyword, or a `**` argument whose
      `DictValue` has an "attn_mask" key. Such a key is made from a string constant by `_evaluate_Dict` and
      `_assign_item`, or from a call's `attn_mask` keyword by `_dict_call` and `_bind_call` (which `invoke`
      passes on to `**kwargs` in `_bind_parameters`, and `structural_only` keeps in constructor arguments). Any
      call with that keyword is a sign, except one whose callee is provably a torch function that
      `_call_function` drops the keyword of (step 5).
   c. The `consumer_callables` setting only chooses the kind of a wrapper that `_check_wrapper` reports anyway
      (`_is_configured_consumer` runs after the `attn_mask` test), so it adds no sign.
   So a finding needs a statement with a sign to run, in a pair whose context gives it that sign.

2. Where project code comes from. The interpreter reads another module only through `ProjectIndex.find`, called
   only by `_project_object`. It returns a function or class defined directly in that module body, or follows a
   name the module imports (up to 4 hops), and never looks up names under `torch.` or `einops.`. Its argument
   is `ImportTable.resolve` of a `Name` or `Attribute` chain (`_evaluate_Name`, `_evaluate_Attribute`,
   `_base_values`). `_resolve` below repeats this for every name and every dotted prefix of an attribute chain
   in a unit, with every target an alias is ever imported as. It uses the same search roots (`search_roots`),
   dotted names (`module_name_for`, `package_of`) and limits (`MAX_IMPORTED_MODULE_BYTES`, NUL bytes,
   decoding), and follows up to `_MAX_REEXPORT_HOPS` hops, more than the interpreter. A module that the stdlib
   cannot parse, but libcst might, counts as having a sign. A module-level variable of another module is never
   followed (`_project_object` returns None for it), and neither is an attribute of an instance: step 3 covers
   those.

3. Which pairs run. Every function, class and instance value refers to a definition that some running
   statement named. `FunctionRef` and `ClassRef` come from `_evaluate_Name` (the context's own `functions` and
   `classes`) and from `_project_object`. `Instance` values come from calling a `ClassRef` (`_evaluate_Call`),
   from base classes (`_base_instances`), and from `_run_class` for the root's classes and for classes nested in
   a running unit. `_bind_parameters` gives parameters no instance. Bound methods, class methods, static methods
   and `super()` find only methods of an instance's class and its project base classes (`_find_method`). The
   closure in `_Search.run` adds these pairs, starting from every unit of the checked module in its own context
   (`run`, `_module_scope`, `_run_class`):
   a. (U, X) adds (top-level unit of X, X), because `_module_scope` runs X's top-level code. It also adds
      (U, home of U), a superset.
   b. (U, X) adds (D, home of D) for each function or class D that a name chain of U resolves to in X.
   c. A class's methods also run with the context of a subclass's instance: `invoke` uses the instance's context
      for a method found on a base class, `_run_class` runs a grand-base class's methods with the direct base's
      module scope, and `class_attributes` runs each base with its own. So (C, X) adds (B, X) for each base B of
      C, resolved in the home of C (`_base_instances` evaluates bases in the instance's context, which is the
      home for a top-level class). A class nested in a running unit gets the context X of that unit as its
      instance context (`_run_body`, `_run_class`), so its bases are resolved in X and add (B, X) too.
      Some bases get their class from values the interpreter computes, which this check does not follow. A
      module with such a base passes. These bases are:
      - a dotted base whose first name is bound by anything but an import, `def`, `class` or an alias
        assignment (`X = Y.Z`, `X = None`). An alias assignment is followed: its dotted names count as bases
        too;
      - a subscript (`BASES[0]`) whose subscripted value is such a base. `_subscript_of` gives a class only
        from a list, tuple or dict value. For a function, class, qualified name or unbound name it gives an
        unknown value, so the index of `Generic[T]` never decides the base;
      - a call in which some name chain (callee or argument) resolves to a project function or class, or is
        such a bound name. A library function's call returns a new unknown value. Only `_IDENTITY_WRAPPERS`
        and `_CALLS_FIRST_ARGUMENT` return an argument's value, and a class there is named by such a chain;
      - any other expression.

4. Conclusion. Every statement the interpreter runs belongs to a pair in the closure, and runs with that
   pair's context. If no pair has a sign, no statement that could create a consumer or an `attn_mask` key runs,
   so `_report` is never called and the module has no finding. With `follow_imports` off, or for a path that is
   not a file, there is no project index: only the module's own units, in its own context, count.

5. Signs of a unit in context X (`_has_sign`).
   - A `Name` or an attribute name equal to one of CONSUMER_NAMES.
   - A string constant equal to one of CONSUMER_NAMES or to "attn_mask", except a statement made of a single
     string (a docstring), which `_run_small` evaluates to nothing. This covers dict keys, `kw["attn_mask"] = m`
     and, beyond need, `getattr(nn, "MultiheadAttention")`.
   - A name whose import target in X ends in one of CONSUMER_NAMES (`from torch.nn import MultiheadAttention as
     M`). Import statements themselves are not signs: the `ImportTable` only maps names that statements read.
   - An `attn_mask` keyword in a call, unless the callee is a dotted name whose first part is bound only by
     imports of X, and every target makes the full name one of `_MASK_DROPPING_TORCH_FUNCTIONS`
     (`F.scaled_dot_product_attention`). The first part must be bound by nothing else in X or in the unit's
     home module (assignments, parameters, loop targets, definitions), because `Scope.lookup` would find such a
     binding first. `_evaluate_Name` and `_evaluate_Attribute` then give a `QualifiedName` under `torch.`, and
     `_call_function` neither calls `_check_wrapper` for it nor passes its keywords on.
   - A name or attribute read as an argument of `isinstance` or `issubclass` (directly, or inside a tuple or
     list) is not a sign while neither function name is bound in X or the home module, nor imported by X:
     `_call_unknown` evaluates such a call's arguments and returns a new unknown value.

Caches. The facts of each module are kept in this process by path, dotted name and content digest, like the
parsed modules of `ProjectIndex`. A pair is named by the keys of its two modules, which include their content
digests. Its visit reads only the facts of those two modules and the results of the module lookups it makes. So a
later search makes the same visit when its lookups of the same dotted names find the same files with the same
content: it adds the same pairs and finds the same signs, whatever its search roots. Two tables of this process
use that (`_PairRecords`):
    - `_CLEAN` keeps each pair of a search that found no sign, with every lookup made by the visits of the pair's
      closure. A later search skips the pair, and so its closure, when all those lookups find the same keys: the
      closure is then the same pairs, none of which has a sign.
    - `_SIGNED` keeps the pairs on the way from the checked module's units to the sign that stopped a search: each
      with the lookups of its visit and the next pair on the way, or none for the pair whose visit found the sign.
      A later search that adds such a pair stops with a sign when every record on the way finds the same keys.
So neither table changes the result of a check. A lookup takes a module's key from `os.stat` and a remembered digest, and
parses the module only when its facts are read. The cyclic garbage collector is paused during a check
(`parsing.collector_paused`). This module imports only the stdlib, `maskcheck.parsing` and the analysis's stdlib-only
modules (`consumer_specs`, `module_paths`): the other analysis modules import libcst. The few values it repeats from them
are checked by tests/test_reach.py.

With the cache on, the facts are also kept on disk between runs (`INDEX_STORE`, from `maskcheck.index_store`).
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import stat
import tokenize
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Callable,
    Deque,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
)

from maskcheck.analysis.consumer_specs import FUNCTIONAL_MHA, LAYER_SPECS, WRAPPER_KEYWORD
from maskcheck.analysis.module_paths import module_name_for, package_of, search_roots
from maskcheck.analysis import source_cache
from maskcheck.parsing import collector_paused
from maskcheck.analysis.source_cache import SizeBoundedCache

if TYPE_CHECKING:
    from maskcheck.index_store import IndexStore

# The last parts of the consumers' names: `MultiheadAttention`, the `Transformer` layers and
# `multi_head_attention_forward`.
CONSUMER_NAMES = frozenset(name.rpartition(".")[2] for name in (*LAYER_SPECS, FUNCTIONAL_MHA))

MASK_KEYWORD = WRAPPER_KEYWORD

# Builtins whose call drops the values of its arguments: `_call_unknown` evaluates them for nested consumer
# calls and returns a new unknown value (dict, tuple, list and super are the names it treats otherwise).
_GUARD_FUNCTIONS = frozenset({"isinstance", "issubclass"})

_SIGN_STRINGS = CONSUMER_NAMES | {MASK_KEYWORD}

# torch functions that take an `attn_mask` of their own. `_call_function` has no case for them, so it reaches
# its `name.startswith("torch.")` test and neither calls `_check_wrapper` nor passes the keyword on. A list of
# known names, not every `torch.` name, because some torch calls do pass keywords on, such as
# `torch.utils.checkpoint.checkpoint` to the function it checkpoints.
_MASK_DROPPING_TORCH_FUNCTIONS = frozenset(
    {
        "torch.nn.functional.scaled_dot_product_attention",
        "torch._C._nn.scaled_dot_product_attention",
    }
)

# `names._CANONICAL_PREFIXES`.
_CANONICAL_PREFIXES = (
    ("torch.nn.modules.activation.", "torch.nn."),
    ("torch.nn.modules.transformer.", "torch.nn."),
    ("torch.nn.modules.container.", "torch.nn."),
    ("torch.nn.parameter.", "torch.nn."),
    ("torch.nn.modules.", "torch.nn."),
)

# `_project_object` never looks up names with these prefixes.
_NEVER_FOLLOWED_PREFIXES = ("torch.", "einops.")

# `project.MAX_IMPORTED_MODULE_BYTES`: larger imported modules are not followed.
MAX_IMPORTED_MODULE_BYTES = 2 * 1024 * 1024

# `_project_object` follows at most 4 re-exports. Following more here only finds more, so the check stays conservative.
_MAX_REEXPORT_HOPS = 16

# Dotted names one base chain may expand to through alias assignments before the module passes.
_MAX_ALIAS_EXPANSIONS = 64

# Source bytes of modules whose facts stay cached, least recently used dropped first, shared by the worker
# processes (`source_cache.share_between`). NOTE: not a bound on memory. Checking 60 transformers model files
# allocated about 4.7 bytes per source byte of the modules loaded (tracemalloc, clean-pair table included), so
# this keeps about 60 MB in all.
MAX_CACHED_SOURCE_BYTES = 12 * 1024 * 1024

Chain = Tuple[str, ...]


def canonical(name: str) -> str:
    """Return the canonical dotted name the way `names.canonical` does."""
    for prefix, replacement in _CANONICAL_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


# -------------------------------------------------------------------------------------------------------------------
# Facts of one module


@dataclass
class Unit:
    """The facts of one unit of a module that the reachability check reads."""

    is_class: bool
    # A context-free sign: a consumer name, a consumer or `attn_mask` string, or an `attn_mask` keyword in a call
    # whose callee is not a plain dotted name.
    has_fixed_sign: bool = False
    # Every `Name` and every plain dotted `Attribute` chain, grouped by the first name.
    chains: Dict[str, Set[Chain]] = field(default_factory=dict)
    # The callees (plain dotted names) of calls with an `attn_mask` keyword.
    mask_callees: Set[Chain] = field(default_factory=set)
    # Names read outside the arguments of `isinstance` and `issubclass` calls, and inside them.
    unguarded_names: Set[str] = field(default_factory=set)
    guarded_names: Set[str] = field(default_factory=set)
    # Whether an argument of such a call is a consumer name, and which of the two functions the unit calls so.
    has_guarded_sign: bool = False
    guard_callees: Set[str] = field(default_factory=set)
    # Name chains in the bases of the unit's own class (class units only); of a subscript, only in its value.
    own_base_chains: Set[Chain] = field(default_factory=set)
    # The same for the bases of classes nested anywhere inside the unit.
    nested_base_chains: Set[Chain] = field(default_factory=set)
    # Name chains anywhere in bases written as calls (`make_base()`, `with_metaclass(Meta, Base)`), of the unit's own
    # class and of nested classes.
    own_call_base_chains: Set[Chain] = field(default_factory=set)
    nested_call_base_chains: Set[Chain] = field(default_factory=set)
    # Whether a base of a class in the unit is neither a dotted name, nor a subscript of one, nor a call.
    has_opaque_base: bool = False


@dataclass
class ModuleFacts:
    """The units of one module, its top-level definitions, and its imports as `ImportTable` reads them."""

    path: str
    units: List[Unit]
    # Indices of the units of functions and classes defined directly in the module body, by name.
    functions: Dict[str, List[int]]
    classes: Dict[str, List[int]]
    # Every dotted name each local name is imported as, anywhere in the module.
    imports: Dict[str, Set[str]]
    # Local names that an import binds to a target ending in a consumer name.
    consumer_aliases: FrozenSet[str]
    # Names bound anywhere in the module other than by an import.
    bindings: FrozenSet[str]
    # The subset of `bindings` bound other than by a `def` or `class` statement or an alias assignment.
    value_bindings: FrozenSet[str]
    # Names bound by an alias assignment (`Base = layers.Block`, `jinja2 = None`) anywhere in the module, with every
    # dotted name assigned to each.
    aliases: Dict[str, FrozenSet[Chain]]
    # Names that can resolve to a definition: the keys of `imports`, `functions` and `classes`.
    namespace: FrozenSet[str] = frozenset()
    # (path, dotted name, content digest) of an imported module, or None for the checked module's own text.
    key: Optional[Tuple[str, str, str]] = None

    TOP_LEVEL = 0

    def __post_init__(self) -> None:
        self.namespace = frozenset(self.imports) | frozenset(self.functions) | frozenset(self.classes)


def build_facts(tree: ast.Module, package: Optional[str], path: str) -> ModuleFacts:
    """Split a parsed module into units and collect the facts of each."""
    units = [Unit(is_class=False)]
    functions: Dict[str, List[int]] = {}
    classes: Dict[str, List[int]] = {}
    collector = _Collector(package)
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.setdefault(statement.name, []).append(len(units))
            units.append(collector.unit([statement], is_class=False))
        elif isinstance(statement, ast.ClassDef):
            classes.setdefault(statement.name, []).append(len(units))
            units.append(collector.unit([statement], is_class=True))
        else:
            collector.add_to(units[0], [statement])
    consumer_aliases = frozenset(
        local
        for local, targets in collector.imports.items()
        if any(target.rpartition(".")[2] in CONSUMER_NAMES for target in targets)
    )
    return ModuleFacts(
        path,
        units,
        functions,
        classes,
        collector.imports,
        consumer_aliases,
        frozenset(collector.bindings),
        frozenset(collector.value_bindings),
        {name: frozenset(chains) for name, chains in collector.aliases.items()},
    )


class _Collector:
    """Walks statements once and fills in units, the module's imports and its bindings."""

    def __init__(self, package: Optional[str]) -> None:
        self.package = package
        self.imports: Dict[str, Set[str]] = {}
        self.bindings: Set[str] = set()
        # Names bound other than by a `def` or `class` statement or an alias assignment: assignments, parameters,
        # loop targets.
        self.value_bindings: Set[str] = set()
        # Names bound by `X = Y.Z` or `X = None`: the dotted names assigned to each (none for a constant).
        self.aliases: Dict[str, Set[Chain]] = {}
        # The target `Name` nodes of those assignments, by id.
        self._alias_targets: Set[int] = set()
        # The nodes of the statements being added: docstring constants, and the names and attributes whose value an
        # `isinstance` or `issubclass` call drops, with that function's name.
        self._docstrings: Set[int] = set()
        self._guarded: Dict[int, str] = {}

    def _bind(self, name: str) -> None:
        self.bindings.add(name)
        self.value_bindings.add(name)

    def unit(self, statements: List[ast.stmt], is_class: bool) -> Unit:
        unit = Unit(is_class=is_class)
        self.add_to(unit, statements)
        return unit

    def add_to(self, unit: Unit, statements: List[ast.stmt]) -> None:
        # Each node is visited before its children, so a docstring's `Expr` and an `isinstance` call are seen
        # before the nodes they mark. The loop reads the most common nodes itself (names, attributes, constants),
        # and takes a shortcut for a name read again outside `isinstance` and `issubclass` calls.
        self._docstrings = docstrings = set()
        self._guarded = guarded = {}
        own_class = statements[0] if unit.is_class else None
        visitors = _VISITORS
        # Names whose `(name,)` chain and unguarded read are already recorded in the unit.
        unguarded_reads: Set[str] = set()
        child_fields = _CHILD_FIELDS
        name_type, attribute_type, constant_type, load_type = ast.Name, ast.Attribute, ast.Constant, ast.Load
        stack: List[Optional[ast.AST]] = list(statements)
        pop = stack.pop
        push = stack.append
        extend = stack.extend
        while stack:
            node = pop()
            node_type = type(node)
            if node_type is name_type:
                if guarded and id(node) in guarded:
                    self._visit_name(node, unit)
                    continue
                name = node.id
                if name not in unguarded_reads:
                    unguarded_reads.add(name)
                    self._visit_name(node, unit)
                elif not isinstance(node.ctx, load_type):
                    self._bind_target(node)
                continue
            if node_type is attribute_type:
                push(self._visit_attributes(node, unit))
                continue
            if node_type is constant_type:
                value = node.value
                if isinstance(value, str) and value in _SIGN_STRINGS and id(node) not in docstrings:
                    unit.has_fixed_sign = True
                continue
            if node is None:
                # An absent optional child, or the key of `**d` in a dict display.
                continue
            visitor = visitors.get(node_type)
            if visitor is not None:
                visitor(self, node, unit, own_class)
            fields = child_fields.get(node_type)
            if fields is None:
                fields = _child_fields(node_type)
            for name in fields:
                value = getattr(node, name, None)
                if type(value) is list:
                    extend(value)
                else:
                    push(value)

    def _visit_name(self, node: ast.Name, unit: Unit) -> None:
        name = node.id
        chains = unit.chains.get(name)
        if chains is None:
            unit.chains[name] = {(name,)}
        else:
            chains.add((name,))
        guard = self._guarded.get(id(node)) if self._guarded else None
        if guard is None:
            unit.unguarded_names.add(name)
        else:
            unit.guarded_names.add(name)
            unit.guard_callees.add(guard)
        if name in CONSUMER_NAMES:
            self._mark_sign(unit, guard)
        if not isinstance(node.ctx, ast.Load):
            self._bind_target(node)

    def _bind_target(self, node: ast.Name) -> None:
        if id(node) in self._alias_targets:
            self.bindings.add(node.id)
        else:
            self._bind(node.id)

    def _visit_attributes(self, node: ast.Attribute, unit: Unit) -> ast.AST:
        """Visit an attribute and the attributes it is read from (`a.b.c` and `a.b`), and return the node below them.

        Only the outer attribute can be an argument that `isinstance` drops, so the inner ones count as read.
        """
        guard = self._guarded.get(id(node)) if self._guarded else None
        if node.attr in CONSUMER_NAMES:
            self._mark_sign(unit, guard)
        attributes = [node.attr]
        value = node.value
        while isinstance(value, ast.Attribute):
            if value.attr in CONSUMER_NAMES:
                self._mark_sign(unit, None)
            attributes.append(value.attr)
            value = value.value
        if isinstance(value, ast.Name):
            # Each attribute node of a dotted name is a dotted name too: `a.b.c` adds ("a", "b", "c") and ("a", "b").
            head = value.id
            chains = unit.chains.get(head)
            if chains is None:
                chains = unit.chains[head] = set()
            chain: Chain = (head,)
            for attribute in reversed(attributes):
                chain = chain + (attribute,)
                chains.add(chain)
        return value

    def _visit_expr(self, node: ast.Expr, unit: Unit, own_class: Optional[ast.AST]) -> None:
        # A statement that is only a string (a docstring) evaluates to nothing.
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            self._docstrings.add(id(node.value))

    def _visit_call(self, node: ast.Call, unit: Unit, own_class: Optional[ast.AST]) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in _GUARD_FUNCTIONS:
            for argument in node.args:
                self._guard(argument, node.func.id)
        if any(keyword.arg == MASK_KEYWORD for keyword in node.keywords):
            callee = dotted_chain(node.func)
            if callee is None:
                unit.has_fixed_sign = True
            else:
                unit.mask_callees.add(callee)

    def _visit_function(self, node: ast.AST, unit: Unit, own_class: Optional[ast.AST]) -> None:
        if not isinstance(node, ast.Lambda):
            self.bindings.add(node.name)
        arguments = node.args
        for argument in arguments.posonlyargs + arguments.args + arguments.kwonlyargs:
            self._bind(argument.arg)
        for argument in (arguments.vararg, arguments.kwarg):
            if argument is not None:
                self._bind(argument.arg)

    def _visit_class(self, node: ast.ClassDef, unit: Unit, own_class: Optional[ast.AST]) -> None:
        self.bindings.add(node.name)
        own = node is own_class
        for base in node.bases:
            # `Generic[T]` and `BASES[0]`: the subscripted value decides the class (step 3c).
            value = base
            while isinstance(value, ast.Subscript):
                value = value.value
            if dotted_chain(value) is not None:
                found = unit.own_base_chains if own else unit.nested_base_chains
            elif isinstance(base, ast.Call):
                found = unit.own_call_base_chains if own else unit.nested_call_base_chains
                value = base
            else:
                unit.has_opaque_base = True
                continue
            for part in ast.walk(value):
                chain = dotted_chain(part) if isinstance(part, (ast.Name, ast.Attribute)) else None
                if chain is not None:
                    found.add(chain)

    def _visit_assign(self, node: ast.Assign, unit: Unit, own_class: Optional[ast.AST]) -> None:
        value = node.value
        chain = dotted_chain(value)
        if (chain is not None or isinstance(value, ast.Constant)) and all(
            isinstance(target, ast.Name) for target in node.targets
        ):
            for target in node.targets:
                self._alias_targets.add(id(target))
                assigned = self.aliases.setdefault(target.id, set())
                if chain is not None:
                    assigned.add(chain)

    def _visit_import(self, node: ast.Import, unit: Unit, own_class: Optional[ast.AST]) -> None:
        # Same as `ImportTable._add_import`: `import a.b` binds `a`, `import a.b as c` binds `c` to `a.b`.
        for alias in node.names:
            if alias.asname is not None:
                self.imports.setdefault(alias.asname, set()).add(alias.name)
            else:
                first = alias.name.split(".")[0]
                self.imports.setdefault(first, set()).add(first)

    def _visit_import_from(self, node: ast.ImportFrom, unit: Unit, own_class: Optional[ast.AST]) -> None:
        # Same as `ImportTable._add_import_from`: a star import binds nothing.
        if any(alias.name == "*" for alias in node.names):
            return
        module_name = node.module
        if node.level:
            base = _relative_base(self.package, node.level)
            if base is None:
                return
            module_name = f"{base}.{module_name}" if module_name else base
        if module_name is None:
            return
        for alias in node.names:
            local = alias.asname if alias.asname is not None else alias.name
            self.imports.setdefault(local, set()).add(f"{module_name}.{alias.name}")

    def _visit_scope_declaration(self, node: ast.AST, unit: Unit, own_class: Optional[ast.AST]) -> None:
        # `global` and `nonlocal`.
        for name in node.names:
            self._bind(name)

    def _visit_named_binding(self, node: ast.AST, unit: Unit, own_class: Optional[ast.AST]) -> None:
        # `except E as name`, and `case x` or `case [*rest]` in patterns: each binds its optional `name`.
        if node.name:
            self._bind(node.name)

    def _visit_type_parameter(self, node: ast.AST, unit: Unit, own_class: Optional[ast.AST]) -> None:
        # PEP 695 type parameters (Python 3.12 and later).
        self._bind(getattr(node, "name", ""))

    def _visit_match_mapping(self, node: ast.MatchMapping, unit: Unit, own_class: Optional[ast.AST]) -> None:
        if node.rest:
            self._bind(node.rest)

    def _guard(self, node: ast.AST, function: str) -> None:
        """Mark the names and attributes whose value an `isinstance` or `issubclass` call drops."""
        if isinstance(node, ast.Starred):
            self._guard(node.value, function)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                self._guard(element, function)
        elif isinstance(node, (ast.Name, ast.Attribute)):
            self._guarded[id(node)] = function

    @staticmethod
    def _mark_sign(unit: Unit, guard: Optional[str]) -> None:
        if guard is None:
            unit.has_fixed_sign = True
        else:
            unit.has_guarded_sign = True
            unit.guard_callees.add(guard)


# The `_Collector` method that reads each node type, other than `Name` and `Attribute`. Nodes of other types are
# only walked through. Plain functions, not bound methods, so that a collector is not part of a reference cycle
# (`may_have_findings` runs with the garbage collector paused).
_VISITORS: Dict[type, Callable[[_Collector, ast.AST, Unit, Optional[ast.AST]], None]] = {
    ast.Expr: _Collector._visit_expr,
    ast.Call: _Collector._visit_call,
    ast.FunctionDef: _Collector._visit_function,
    ast.AsyncFunctionDef: _Collector._visit_function,
    ast.Lambda: _Collector._visit_function,
    ast.ClassDef: _Collector._visit_class,
    ast.Assign: _Collector._visit_assign,
    ast.Import: _Collector._visit_import,
    ast.ImportFrom: _Collector._visit_import_from,
    ast.Global: _Collector._visit_scope_declaration,
    ast.Nonlocal: _Collector._visit_scope_declaration,
    ast.ExceptHandler: _Collector._visit_named_binding,
    ast.MatchAs: _Collector._visit_named_binding,
    ast.MatchStar: _Collector._visit_named_binding,
    ast.MatchMapping: _Collector._visit_match_mapping,
}
for _name in ("TypeVar", "ParamSpec", "TypeVarTuple"):
    if hasattr(ast, _name):
        _VISITORS[getattr(ast, _name)] = _Collector._visit_type_parameter


# Fields of each node type that hold child nodes or lists of them, filled in on first use. The walk skips
# expression contexts and operators, which hold no names, and the fields that hold strings or numbers. It also
# skips the `alias` nodes of imports, which `_Collector` reads from the import statement.
_CHILD_FIELDS: Dict[type, Tuple[str, ...]] = {ast.Constant: ()}
_SKIPPED_FIELDS = frozenset(
    {
        "ctx", "op", "ops", "id", "attr", "name", "names", "asname", "arg", "module", "level", "kind",
        "conversion", "type_comment", "is_async", "simple", "rest", "kwd_attrs", "tag",
    }
)


def _child_fields(node_type: type) -> Tuple[str, ...]:
    # A value that is not a node (the `True` of a `case True:` pattern, a string in a list) has no children.
    names = getattr(node_type, "_fields", ()) if issubclass(node_type, ast.AST) else ()
    fields = tuple(name for name in names if name not in _SKIPPED_FIELDS)
    _CHILD_FIELDS[node_type] = fields
    return fields


def _relative_base(package: Optional[str], dots: int) -> Optional[str]:
    if package is None:
        return None
    parts = package.split(".")
    if dots - 1 >= len(parts):
        return None
    return ".".join(parts[: len(parts) - (dots - 1)])


def dotted_chain(node: ast.AST) -> Optional[Chain]:
    """Return ("a", "b", "c") for `a.b.c` made of a Name and attributes only, else None."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    parts.reverse()
    return tuple(parts)


# -------------------------------------------------------------------------------------------------------------------
# Loading imported modules, as `ProjectIndex.find` does


class _Unparsable:
    """A module the interpreter may parse with libcst although the stdlib parser rejects it."""


UNPARSABLE = _Unparsable()

# The result of a lookup: ModuleFacts, UNPARSABLE, or None for a module the interpreter does not follow.
_Loaded = Optional[object]

# (path, dotted name, content digest) of a loaded module.
ModuleKey = Tuple[str, str, str]


# Facts of imported modules, keyed by path, dotted name and content digest.
_FACTS = SizeBoundedCache(MAX_CACHED_SOURCE_BYTES)

# The facts kept on disk between runs, consulted after a miss in `_FACTS`. The runner sets it while it checks a file
# with the cache on. None reads and writes nothing.
INDEX_STORE: Optional["IndexStore"] = None


# Content digests of files by path, with the `os.stat` fields that must be unchanged for the digest to be reused.
# NOTE: a file rewritten twice within one tick of the file system's clock, with the same size, keeps all of these
# fields, so a process that checks files while they are being edited can see a stale digest. The analysis reads
# each file again (`ProjectIndex._load`), so this only widens the race that any pre-filter has with an editor.
_DIGESTS: Dict[str, Tuple[Tuple[int, ...], str]] = {}
_MAX_DIGESTS = 200_000


def _file_signature(status: os.stat_result) -> Tuple[int, ...]:
    return (status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino, status.st_dev)


def _known_key(path: str, status: os.stat_result, dotted: str) -> Optional[ModuleKey]:
    """Return the key of a module file from its remembered digest without reading it, or None if none is valid."""
    known = _DIGESTS.get(path)
    if known is not None and known[0] == _file_signature(status):
        return (path, dotted, known[1])
    return None


def _load(path: str, status: os.stat_result, dotted: str) -> Tuple[_Loaded, Optional[ModuleKey]]:
    """Return the facts of a module file and its key, like `ProjectIndex._load`, with no key when it cannot be read."""
    signature = _file_signature(status)
    known = _DIGESTS.get(path)
    if known is not None and known[0] == signature:
        key = (path, dotted, known[1])
        cached, facts = _FACTS.get(key)
        if cached:
            return facts, key
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None, None
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    if len(_DIGESTS) >= _MAX_DIGESTS:
        _DIGESTS.clear()
    _DIGESTS[path] = (signature, digest)
    key = (path, dotted, digest)
    cached, facts = _FACTS.get(key)
    if cached:
        return facts, key
    facts = None
    if len(data) <= MAX_IMPORTED_MODULE_BYTES and b"\x00" not in data:
        store = INDEX_STORE
        stored, facts = store.load(key) if store is not None else (False, None)
        if not stored:
            facts, lasting = _parse_imported(data, key)
            if store is not None and lasting:
                store.save(key, facts)
    _FACTS.put(key, facts, len(data))
    return facts, key


def _parse_imported(data: bytes, key: ModuleKey) -> Tuple[_Loaded, bool]:
    """Return the outcome for an imported module, and whether another run would get the same outcome.

    The outcome is the module's facts, None where `ProjectIndex._load` gives up, or UNPARSABLE if unsure. Only a
    lack of memory gives an outcome that another run may not get, and `INDEX_STORE` must not keep that one.
    """
    path, dotted, _ = key
    try:
        text = data.decode(tokenize.detect_encoding(io.BytesIO(data).readline)[0])
    except (UnicodeDecodeError, LookupError, SyntaxError, ValueError):
        return None, True
    try:
        tree = ast.parse(text)
    except SyntaxError as error:
        if "too many nested" in str(error.msg):
            return None, True
        # `check_syntax_and_depth` lets libcst decide when the stdlib parser fails (a newer grammar).
        return UNPARSABLE, True
    except (RecursionError, ValueError):
        return None, True
    except MemoryError:
        return None, False
    try:
        facts = build_facts(tree, package_of(dotted, path), path)
    except RecursionError:
        return UNPARSABLE, True
    facts.key = key
    return facts, True


# -------------------------------------------------------------------------------------------------------------------
# Pairs known to have no sign in their closure, or a sign, shared by the checks of one process


# A pair of imported modules' units: (home key, unit index, context key).
PairKey = Tuple[ModuleKey, int, ModuleKey]
# The module lookups one visit of a pair made: (dotted name, key of what it found or None).
Lookups = Tuple[Tuple[str, Optional[ModuleKey]], ...]
# The dotted names looked up by the visits of a closure, and their lookups tuple if one exists already.
_ClosureLookups = Tuple[AbstractSet[str], Optional[Lookups]]


@dataclass(frozen=True)
class _PairRecord:
    """Module lookups that a pair's outcome depends on, and for `_SIGNED`, the next pair on the way to a sign."""

    lookups: Lookups
    successors: Tuple[PairKey, ...] = ()


class _PairRecords:
    """Records of pairs by pair key, kept for later searches of this process.

    A visit reads the facts of the pair's two modules, which the pair key names by content, and the results of the
    module lookups it makes. A later search whose lookups of the same dotted names find the same keys makes the
    same visit, whatever its search roots: it adds the same successors and finds the same signs.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.pairs: Dict[PairKey, _PairRecord] = {}
        # One object for each distinct lookups tuple, which many records share (the pairs of one class or of one
        # strongly connected component), and for each distinct lookup in them.
        self._lookups: Dict[Lookups, Lookups] = {}
        self._lookup_items: Dict[Tuple[str, Optional[ModuleKey]], Tuple[str, Optional[ModuleKey]]] = {}
        # The measure that `max_entries` bounds: `_PAIR_ENTRIES` for each stored pair, plus its successors, plus the
        # entries of the distinct lookups tuples.
        self._size = 0

    def add(self, records: Dict[PairKey, _PairRecord]) -> None:
        added = sum(_PAIR_ENTRIES + len(record.successors) + len(record.lookups) for record in records.values())
        if self._size + added > self.max_entries // source_cache.sharers():
            self.clear()
        for pair, record in records.items():
            # A pair recorded again had a stale record for that search, or none. The new record describes the pair
            # under the lookups of the latest search, and the old one is dropped. NOTE: so checks that alternate
            # between folders where a pair's lookups differ (`import helpers` with a `helpers.py` in one folder)
            # visit that pair again each time.
            old = self.pairs.get(pair)
            if old is not None:
                self._size -= _PAIR_ENTRIES + len(old.successors)
            lookups = self._lookups.get(record.lookups)
            if lookups is None:
                items = self._lookup_items
                lookups = tuple(items.setdefault(item, item) for item in record.lookups)
                self._lookups[lookups] = lookups
                self._size += len(lookups)
            self.pairs[pair] = _PairRecord(lookups, record.successors)
            self._size += _PAIR_ENTRIES + len(record.successors)

    def clear(self) -> None:
        self.pairs.clear()
        self._lookups.clear()
        self._lookup_items.clear()
        self._size = 0


# A stored pair costs about as much memory as this many entries of a lookups tuple. Checking the first 700
# transformers files in sorted order stored 10,727 pairs and 396,148 entries in 5.4 MB. Checking the whole diffusers
# tree stored 2,450 pairs and 9,886 entries in 0.6 MB. Both measured with tracemalloc, they give about 210 bytes a
# pair and 8 an entry.
_PAIR_ENTRIES = 25

# Pairs whose whole closure had no sign, each with every lookup made by the visits of its closure. A pair is clean
# for a later search when these lookups find the same keys in that search (`_Search._is_clean`): then its closure
# is the same pairs, visited the same way. At 8 bytes an entry, this bound, shared by the worker processes like the
# facts, keeps the table to about 16 MB, an estimate.
_CLEAN = _PairRecords(max_entries=2_000_000)

# Pairs whose closure had a sign: each record has no successor when the visit itself found the sign, else one
# successor, the next pair on the way to it. A pair has a sign for a later search when the chain of records from it
# ends in a visit that found the sign. Every record on the chain must have lookups that find the same keys in that
# search (`_Search._is_signed`). A search stores one chain. Checking the whole diffusers tree (696 of 1,105 files
# with a sign) stored 714 pairs, about 22,000 in the measure of `_PairRecords`, in 0.6 MB (tracemalloc). At that
# ratio this bound keeps the table to about 4 MB, an estimate.
_SIGNED = _PairRecords(max_entries=150_000)

# Called with (search roots, dotted name) for every module lookup, like the result cache's wrapper around
# `ProjectIndex.find`: a skipped module's cached result depends on the modules the check looked up.
LOOKUP_OBSERVERS: List[Callable[[Tuple[Tuple[str, ...], str]], None]] = []


# -------------------------------------------------------------------------------------------------------------------
# The closure


class _SignFound(Exception):
    """Raised inside the search as soon as a pair with a sign, or an unparsable module, is reached."""


class _Search:
    """The closure of (unit, context) pairs of one checked module, by default stopped at the first sign."""

    def __init__(self, root: ModuleFacts, roots: Optional[List[Path]], stop_at_signs: bool = True) -> None:
        self.root = root
        self.roots = [folder.resolve() for folder in roots] if roots is not None else None
        self._roots_text = tuple(str(folder) for folder in self.roots or ())
        self.stop_at_signs = stop_at_signs
        # Without stopping: every pair visited, as (home path, unit index, context path, has a sign).
        self.visited: List[Tuple[str, int, str, bool]] = []
        self.found_sign = False
        # Module lookups by dotted name: the key found (None for no module), the file of a found module, and the
        # module's facts once something reads them. A key alone needs no parse (`_lookup`).
        self._keys: Dict[str, Optional[ModuleKey]] = {}
        self._files: Dict[str, Tuple[str, os.stat_result]] = {}
        # Whether each folder below a search root that a lookup needed exists.
        self._folders: Dict[str, bool] = {}
        self._facts: Dict[str, _Loaded] = {}
        # Definitions each (context, name chain) resolves to, with the dotted names looked up to find them.
        self._resolved: Dict[Tuple[int, Chain], Tuple[List[Tuple[ModuleFacts, int]], FrozenSet[str]]] = {}
        self._seen: Set[Tuple[int, int, int]] = set()
        # Breadth first, so the checked module's own units are looked at before anything they reach.
        self._pending: Deque[Tuple[ModuleFacts, int, ModuleFacts]] = deque()
        # Visited pairs with keys: the dotted names each visit looked up, and the pairs it added (None for a pair
        # without keys).
        self._explored: Dict[PairKey, Tuple[Set[str], Set[Optional[PairKey]]]] = {}
        # The visit running now: its pair (None without keys), lookups and successors.
        self._visiting: Optional[PairKey] = None
        self._visit_lookups: Optional[Set[str]] = None
        self._visit_successors: Optional[Set[Optional[PairKey]]] = None
        # The pair whose visit added each pending pair with keys first (None for the checked module's own units), and
        # the pair of `_SIGNED` whose check stopped the search.
        self._discovered_by: Dict[PairKey, Optional[PairKey]] = {}
        self._signed_successor: Optional[PairKey] = None
        # Whether the lookups of each stored record checked so far find the same keys, by id of the tuple, with the
        # tuple kept so that the id stays unique.
        self._checked_lookups: Dict[int, Tuple[Lookups, bool]] = {}
        # The dotted names of each stored lookups tuple read so far, by id in the same way.
        self._lookup_names: Dict[int, Tuple[Lookups, FrozenSet[str]]] = {}
        # Facts stay referenced while the search runs, so no id() in the keys above is reused.
        self._alive: List[ModuleFacts] = [root]

    def run(self) -> bool:
        """Return True when some reachable pair has a sign."""
        try:
            for index in range(len(self.root.units)):
                self._add(self.root, index, self.root)
            while self._pending:
                home, index, context = self._pending.popleft()
                self._visit(home, index, context)
        except _SignFound:
            if self.roots is not None:
                _SIGNED.add(self._signed_records())
            return True
        if not self.found_sign and self._explored and self.roots is not None:
            _CLEAN.add(self._clean_records())
        return self.found_sign

    def _clean_records(self) -> Dict[PairKey, _PairRecord]:
        """Return, for each visited pair, a record of every lookup made by the visits of its closure.

        A pair's closure is the pair and the closures of its successors, so the pairs of one strongly connected
        component share one closure. Tarjan's algorithm finds the components of the visited pairs with each
        component's successors outside it done first. A successor that was not visited was found clean in this
        search and adds its record's lookups. A pair that reaches a pair without keys gets no record.
        """
        explored = self._explored
        # The lookups of each finished pair's closure, one object per component, or None for no record.
        closures: Dict[PairKey, Optional[_ClosureLookups]] = {}
        order: Dict[PairKey, int] = {}
        low: Dict[PairKey, int] = {}
        stack: List[PairKey] = []
        on_stack: Set[PairKey] = set()
        for start in explored:
            if start in order:
                continue
            order[start] = low[start] = len(order)
            stack.append(start)
            on_stack.add(start)
            frames: List[Tuple[PairKey, Iterator[Optional[PairKey]]]] = [(start, iter(explored[start][1]))]
            while frames:
                pair, successors = frames[-1]
                descended = False
                for successor in successors:
                    if successor is None or successor not in explored:
                        continue
                    if successor not in order:
                        order[successor] = low[successor] = len(order)
                        stack.append(successor)
                        on_stack.add(successor)
                        frames.append((successor, iter(explored[successor][1])))
                        descended = True
                        break
                    if successor in on_stack and order[successor] < low[pair]:
                        low[pair] = order[successor]
                if descended:
                    continue
                frames.pop()
                if frames and low[pair] < low[frames[-1][0]]:
                    low[frames[-1][0]] = low[pair]
                if low[pair] == order[pair]:
                    members: List[PairKey] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        members.append(member)
                        if member == pair:
                            break
                    closure = self._component_closure(members, closures)
                    for member in members:
                        closures[member] = closure

        records: Dict[PairKey, _PairRecord] = {}
        lookups_by_component: Dict[int, Lookups] = {}
        for pair, closure in closures.items():
            if closure is None:
                continue
            names, lookups = closure
            if lookups is None:
                lookups = lookups_by_component.get(id(names))
                if lookups is None:
                    lookups = lookups_by_component[id(names)] = self._lookups_of(names)
            records[pair] = _PairRecord(lookups)
        return records

    def _component_closure(
        self, members: List[PairKey], closures: Dict[PairKey, Optional[_ClosureLookups]]
    ) -> Optional[_ClosureLookups]:
        """Return the lookups of the closure of one component, or None if it can have no record.

        When one successor's closure looked up every name the others and the component's own visits did, the
        component shares that closure's objects. That is the usual case (a module's function that reaches a large
        class), and it saves building a new tuple.
        """
        inside = set(members)
        own: Set[str] = set()
        below: Dict[int, _ClosureLookups] = {}
        for member in members:
            looked_up, successors = self._explored[member]
            own |= looked_up
            for successor in successors:
                if successor in inside:
                    continue
                if successor is None:
                    # A pair without keys cannot be checked by a later search, so neither can this one.
                    return None
                if successor in self._explored:
                    closure = closures[successor]
                    if closure is None:
                        return None
                else:
                    record = _CLEAN.pairs.get(successor)
                    if record is None:
                        return None
                    closure = (self._names_of(record.lookups), record.lookups)
                below[id(closure[0])] = closure
        if below:
            largest = max(below.values(), key=lambda closure: len(closure[0]))
            if own <= largest[0] and all(closure[0] <= largest[0] for closure in below.values()):
                return largest
        names = own
        for closure in below.values():
            names |= closure[0]
        return names, None

    def _names_of(self, lookups: Lookups) -> FrozenSet[str]:
        """Return the dotted names of a stored lookups tuple, remembered by id for this search."""
        known = self._lookup_names.get(id(lookups))
        if known is None or known[0] is not lookups:
            known = self._lookup_names[id(lookups)] = (lookups, frozenset(dotted for dotted, _ in lookups))
        return known[1]

    def _signed_records(self) -> Dict[PairKey, _PairRecord]:
        """Return the records of the pairs on the way from the checked module's units to the sign just found.

        The pair whose visit found the sign keeps only the lookups made before it, which are the ones the sign
        depended on: a visit makes every lookup of its unit whatever the others find, and stops only at a sign.
        """
        records: Dict[PairKey, _PairRecord] = {}
        pair = self._visiting
        if pair is None:
            return records
        found_at = (self._signed_successor,) if self._signed_successor is not None else ()
        records[pair] = _PairRecord(self._lookups_of(self._explored[pair][0]), found_at)
        parent = self._discovered_by.get(pair)
        while parent is not None and parent not in records:
            records[parent] = _PairRecord(self._lookups_of(self._explored[parent][0]), (pair,))
            pair, parent = parent, self._discovered_by.get(parent)
        return records

    def _lookups_of(self, looked_up: Iterable[str]) -> Lookups:
        return tuple((dotted, self._keys[dotted]) for dotted in sorted(looked_up))

    def _sign(self) -> None:
        self.found_sign = True
        if self.stop_at_signs:
            raise _SignFound

    def _add(self, home: ModuleFacts, index: int, context: ModuleFacts) -> None:
        pair = (home.key, index, context.key) if home.key is not None and context.key is not None else None
        if self._visit_successors is not None:
            self._visit_successors.add(pair)
        key = (id(home), index, id(context))
        if key in self._seen:
            return
        self._seen.add(key)
        if pair is not None and self.stop_at_signs:
            if self._is_signed(pair):
                self._signed_successor = pair
                self._sign()
            if self._is_clean(pair):
                return
            self._discovered_by[pair] = self._visiting
        self._pending.append((home, index, context))

    def _is_signed(self, pair: PairKey) -> bool:
        """Return True when the chain of `_SIGNED` records from a pair is the same in this search, so it has a sign."""
        if pair not in _SIGNED.pairs:
            return False
        on_chain: Set[PairKey] = set()
        current: Optional[PairKey] = pair
        while current is not None and current not in on_chain:
            on_chain.add(current)
            record = _SIGNED.pairs.get(current)
            if record is None or not self._lookups_unchanged(record.lookups):
                return False
            if not record.successors:
                return True
            current = record.successors[0]
        # A chain that comes back to itself (records written by different searches) shows no sign.
        return False

    def _is_clean(self, pair: PairKey) -> bool:
        """Return True when a stored pair's closure is the same in this search, so it has no sign here either."""
        record = _CLEAN.pairs.get(pair)
        return record is not None and self._lookups_unchanged(record.lookups)

    def _lookups_unchanged(self, lookups: Lookups) -> bool:
        """Return True when each dotted name of a stored lookups tuple finds the same key in this search.

        Equal tuples are one object (`_PairRecords.add`), so each is checked once per search.
        """
        if not lookups:
            return True
        checked = self._checked_lookups.get(id(lookups))
        if checked is not None and checked[0] is lookups:
            return checked[1]
        unchanged = all(self._find_key(dotted) == key for dotted, key in lookups)
        self._checked_lookups[id(lookups)] = (lookups, unchanged)
        return unchanged

    def _visit(self, home: ModuleFacts, index: int, context: ModuleFacts) -> None:
        unit = home.units[index]
        self._visit_lookups = set()
        self._visit_successors = set()
        self._visiting = None
        if home.key is not None and context.key is not None:
            self._visiting = (home.key, index, context.key)
            self._explored[self._visiting] = (self._visit_lookups, self._visit_successors)
        signed = _has_sign(unit, home, context)
        if not self.stop_at_signs:
            self.visited.append((home.path, index, context.path, signed))
        if signed:
            self._sign()
        self._add(context, ModuleFacts.TOP_LEVEL, context)
        if context is not home:
            self._add(home, index, home)

        # Step 3b: definitions the unit's names resolve to in this context.
        for head in unit.chains.keys() & context.namespace:
            for chain in unit.chains[head]:
                for target_home, target in self._resolve(context, chain):
                    self._add(target_home, target, target_home)

        # Step 3c: base classes also run with the context of the subclass's instance. A base given its class by a
        # value the interpreter computes (`Base = B` then `class M(Base)`, or `class M(make_base())` with a
        # project `make_base`) is not followed here, so the module passes.
        if unit.has_opaque_base:
            self._sign()
        for chain in unit.nested_base_chains:
            for target_home, target in self._base_targets(context, chain):
                self._add(target_home, target, context)
        for chain in unit.nested_call_base_chains:
            if self._base_targets(context, chain):
                self._sign()
        if unit.is_class:
            for chain in unit.own_base_chains:
                for target_home, target in self._base_targets(home, chain):
                    self._add(target_home, target, context)
            for chain in unit.own_call_base_chains:
                if self._base_targets(home, chain):
                    self._sign()
        self._visiting = None
        self._visit_lookups = None
        self._visit_successors = None

    def _base_targets(self, module: ModuleFacts, chain: Chain) -> List[Tuple[ModuleFacts, int]]:
        """Return the definitions a name chain in a base can refer to in a module, following alias assignments.

        Calls `_sign` when the first name of the chain, or of a dotted name assigned to it, is bound to a
        computed value.
        """
        found: List[Tuple[ModuleFacts, int]] = []
        pending = [chain]
        seen = {chain}
        while pending:
            current = pending.pop()
            if current[0] in module.value_bindings:
                self._sign()
            found.extend(self._resolve(module, current))
            for assigned in module.aliases.get(current[0], ()):
                extended = assigned + current[1:]
                if extended not in seen:
                    if len(seen) >= _MAX_ALIAS_EXPANSIONS:
                        # `A = A.b` grows without end, so treat the base like an opaque one.
                        self._sign()
                    seen.add(extended)
                    pending.append(extended)
        return found

    def _resolve(self, context: ModuleFacts, chain: Chain) -> List[Tuple[ModuleFacts, int]]:
        """Return the units of the functions and classes a name chain can refer to in a context.

        The dotted names looked up on the way count as lookups of the visit running now, also when the result
        comes from this search's memo.
        """
        key = (id(context), chain)
        cached = self._resolved.get(key)
        if cached is not None:
            if cached[1] and self._visit_lookups is not None:
                self._visit_lookups.update(cached[1])
            return cached[0]
        found: List[Tuple[ModuleFacts, int]] = []
        looked_up: Set[str] = set()
        head = chain[0]
        if len(chain) == 1:
            for index in context.functions.get(head, []) + context.classes.get(head, []):
                found.append((context, index))
        rest = "." + ".".join(chain[1:]) if len(chain) > 1 else ""
        try:
            for target in context.imports.get(head, ()):
                self._project_object(canonical(target + rest), 0, found, looked_up)
        finally:
            # Also when a sign stops the search here: the record of the visit must list the lookups that led to it.
            if self._visit_lookups is not None:
                self._visit_lookups.update(looked_up)
        self._resolved[key] = (found, frozenset(looked_up))
        return found

    def _project_object(
        self, qualified: str, hops: int, found: List[Tuple[ModuleFacts, int]], looked_up: Set[str]
    ) -> None:
        """Add the definitions `ModuleInterpreter._project_object` can return for a dotted name."""
        if self.roots is None or qualified.startswith(_NEVER_FOLLOWED_PREFIXES) or hops > _MAX_REEXPORT_HOPS:
            return
        module_name, _, symbol = qualified.rpartition(".")
        if not module_name:
            return
        looked_up.add(module_name)
        facts = self._find(module_name)
        if facts is None:
            return
        if not isinstance(facts, ModuleFacts):
            # An unparsable module: the interpreter may still parse it with libcst and find anything in it.
            self._sign()
            return
        indices = facts.functions.get(symbol, []) + facts.classes.get(symbol, [])
        if indices:
            found.extend((facts, index) for index in indices)
            return
        for target in facts.imports.get(symbol, ()):
            reexported = canonical(target)
            if reexported != qualified:
                self._project_object(reexported, hops + 1, found, looked_up)

    def _find(self, dotted: str) -> _Loaded:
        """Return the facts of a project module by dotted name, searching the roots as `ProjectIndex.find` does."""
        if dotted in self._facts:
            return self._facts[dotted]
        key = self._find_key(dotted)
        if dotted in self._facts:
            return self._facts[dotted]
        facts: _Loaded = None
        if key is not None:
            path, status = self._files[dotted]
            facts, loaded_key = _load(path, status, dotted)
            if loaded_key != key:
                # The file changed after its digest was taken: record the key of the content the facts come from.
                self._keys[dotted] = loaded_key
        self._keep(dotted, facts)
        return facts

    def _find_key(self, dotted: str) -> Optional[ModuleKey]:
        """Return the key of a project module by dotted name, without parsing it when its digest is known."""
        if dotted in self._keys:
            return self._keys[dotted]
        return self._lookup(dotted)

    def _lookup(self, dotted: str) -> Optional[ModuleKey]:
        for observer in LOOKUP_OBSERVERS:
            observer((self._roots_text, dotted))
        key: Optional[ModuleKey] = None
        # The candidates of `ProjectIndex.find`, as strings: `os.stat` on them is several times faster than
        # pathlib's `is_file`. Dotted names come from identifiers, so no part is empty, `.` or `..`.
        package, _, _ = dotted.rpartition(".")
        relative = dotted.replace(".", os.sep)
        for root in self._roots_text:
            if package and not self._is_folder(f"{root}{os.sep}{package.replace('.', os.sep)}", root):
                # No file exists under a path whose folder does not. Most lookups find no file (other libraries'
                # modules such as `huggingface_hub.utils`), and this needs one `os.stat` per missing folder and search.
                continue
            for candidate in (f"{root}{os.sep}{relative}{os.sep}__init__.py", f"{root}{os.sep}{relative}.py"):
                status = _regular_file_status(candidate)
                if status is not None:
                    key = _known_key(candidate, status, dotted)
                    if key is None:
                        facts, key = _load(candidate, status, dotted)
                        self._keep(dotted, facts)
                    self._files[dotted] = (candidate, status)
                    break
            else:
                continue
            break
        self._keys[dotted] = key
        return key

    def _is_folder(self, path: str, root: str) -> bool:
        """Return True when `path`, a folder below `root`, and every folder between them exist.

        The outcome for each folder is kept for the rest of the search.
        """
        known = self._folders.get(path)
        if known is None:
            parent = path.rpartition(os.sep)[0]
            known = (parent == root or self._is_folder(parent, root)) and _is_folder_path(path)
            self._folders[path] = known
        return known

    def _keep(self, dotted: str, facts: _Loaded) -> None:
        self._facts[dotted] = facts
        if isinstance(facts, ModuleFacts):
            self._alive.append(facts)


def _is_folder_path(path: str) -> bool:
    """Return True for a folder or a link to one."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _regular_file_status(path: str) -> Optional[os.stat_result]:
    """Return the status of a regular file (following links, as `Path.is_file` does), else None."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status if stat.S_ISREG(status.st_mode) else None


def _has_sign(unit: Unit, home: ModuleFacts, context: ModuleFacts) -> bool:
    """Return True when the unit, run with this context, can create a consumer or an `attn_mask` key (step 5)."""
    if unit.has_fixed_sign:
        return True
    aliases = context.consumer_aliases
    if aliases and not aliases.isdisjoint(unit.unguarded_names):
        return True
    if unit.guard_callees and not all(_is_builtin(name, home, context) for name in unit.guard_callees):
        if unit.has_guarded_sign or (aliases and not aliases.isdisjoint(unit.guarded_names)):
            return True
    return any(not _is_mask_dropping_torch_call(callee, home, context) for callee in unit.mask_callees)


def _is_builtin(name: str, home: ModuleFacts, context: ModuleFacts) -> bool:
    """Return True when a name read in this pair provably evaluates to an unknown value, as builtins do."""
    return name not in home.bindings and name not in context.bindings and name not in context.imports


def _is_mask_dropping_torch_call(callee: Chain, home: ModuleFacts, context: ModuleFacts) -> bool:
    """Return True when the callee provably evaluates to a torch function that drops an `attn_mask` keyword."""
    head = callee[0]
    if head in home.bindings or head in context.bindings:
        return False
    targets = context.imports.get(head)
    if not targets:
        return False
    rest = "." + ".".join(callee[1:]) if len(callee) > 1 else ""
    return all(canonical(target + rest) in _MASK_DROPPING_TORCH_FUNCTIONS for target in targets)


# -------------------------------------------------------------------------------------------------------------------
# Entry point


def may_have_findings(tree: ast.Module, path: str, follow_imports: bool, source: Optional[str] = None) -> bool:
    """Return False only when the analysis provably reports nothing for this module (see the module docstring).

    `tree` is the stdlib tree of `source`, the module's text. When `source` is the text of the file at `path`,
    the module's facts are shared with the checks of other modules that import it.
    """
    module_name, root = module_name_for(path) if follow_imports else (None, None)
    roots = search_roots(path, root) if root is not None else None
    with collector_paused():
        facts = None
        if module_name is not None and source is not None:
            facts = _facts_of_own_file(tree, path, module_name, source)
        if facts is None:
            facts = build_facts(tree, package_of(module_name, path), path)
        return _Search(facts, roots).run()


def _facts_of_own_file(tree: ast.Module, path: str, module_name: str, source: str) -> Optional[ModuleFacts]:
    """Return the module's facts under the key an import of it would use, if `source` is the file's text."""
    resolved = str(Path(path).resolve())
    if package_of(module_name, resolved) != package_of(module_name, path):
        # A link named differently from its target (`link.py` to `real/__init__.py`): the analysis resolves
        # relative imports from the path it was given, so the facts shared under the target's key do not apply.
        return None
    status = _regular_file_status(resolved)
    if status is None or status.st_size > MAX_IMPORTED_MODULE_BYTES:
        return None
    try:
        with open(resolved, "rb") as file:
            data = file.read()
        text = data.decode(tokenize.detect_encoding(io.BytesIO(data).readline)[0])
    except (OSError, UnicodeDecodeError, LookupError, SyntaxError):
        return None
    # The engine's text has its newlines translated (`files.decode_source`), and facts do not depend on line ends.
    if b"\x00" in data or text.replace("\r\n", "\n").replace("\r", "\n") != source:
        return None
    key = (resolved, module_name, hashlib.blake2b(data, digest_size=16).hexdigest())
    cached, facts = _FACTS.get(key)
    store = INDEX_STORE
    if not cached and store is not None:
        cached, facts = store.load(key)
        if cached:
            _FACTS.put(key, facts, len(data))
    if cached:
        return facts if isinstance(facts, ModuleFacts) else None
    facts = build_facts(tree, package_of(module_name, resolved), resolved)
    facts.key = key
    _FACTS.put(key, facts, len(data))
    if store is not None:
        # The same entry that an import of this module would write. Imports in this process find the facts in
        # `_FACTS` and never reach `_load`'s save, so without this line a checked module would never be stored.
        store.save(key, facts)
    return facts


def clear_cache() -> None:
    """Forget the cached facts of imported modules and the pairs known to have no sign."""
    _FACTS.clear()
    _CLEAN.clear()
    _SIGNED.clear()
    _DIGESTS.clear()


def reached_pairs(tree: ast.Module, path: str, follow_imports: bool = True) -> List[Tuple[str, int, str, bool]]:
    """Return every pair of a module's closure as (home path, unit index, context path, has a sign).

    Unlike `may_have_findings`, this explores the whole closure instead of stopping at the first sign. For tests
    and for finding out why a module passes.
    """
    module_name, root = module_name_for(path) if follow_imports else (None, None)
    roots = search_roots(path, root) if root is not None else None
    search = _Search(build_facts(tree, package_of(module_name, path), path), roots, stop_at_signs=False)
    search.run()
    return search.visited
