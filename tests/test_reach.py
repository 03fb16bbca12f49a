"""The reachability pre-filter (`maskcheck.reach`): each route by which a module reaches a consumer keeps it checked.

Each generated caller is checked with the pre-filter and with it replaced by one that lets every module through,
and the findings must be equal. A caller that reaches a consumer only through one route must also have a finding
without the pre-filter, or the case would prove nothing. The negative cases are modules the pre-filter now skips,
and the analysis must find nothing in them either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import libcst as cst
import pytest

from test_reach_records import count_visits
from maskcheck import engine, reach
from maskcheck.analysis import consumers, interpreter, names, project
from maskcheck.analysis.interpreter import ModuleInterpreter
from maskcheck.analysis.project import ProjectIndex
from maskcheck.engine import check_source
from maskcheck.settings import Settings

# Modules every caller can import from. `gen/__init__.py` re-exports the mixer.
LIBRARY: Dict[str, str] = {
    "gen/__init__.py": "from .mixer import TokenMixer\n",
    "gen/mixer.py": '''\
import torch.nn as nn


class TokenMixer(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, mask):
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
''',
    "gen/base.py": '''\
import torch.nn as nn


class AttentionBase(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def attend(self, x, mask):
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
''',
    "gen/shared.py": '''\
import torch.nn as nn

SHARED = nn.MultiheadAttention(64, 4, batch_first=True)


def attend(x, mask):
    return SHARED(x, x, x, None, False, mask)[0]
''',
    "gen/factory.py": '''\
import torch.nn as nn


def make_attention(dim, num_heads):
    return nn.MultiheadAttention(dim, num_heads, batch_first=True)
''',
    "gen/keywords.py": '''\
def mask_keywords(mask):
    return {"attn_mask": mask}
''',
    "gen/subclass.py": '''\
import torch.nn as nn


class GatedAttention(nn.MultiheadAttention):
    pass
''',
    # Only the module's top-level code names the layer.
    "gen/helpers.py": '''\
import torch.nn as nn

LAYER = nn.MultiheadAttention(64, 4, batch_first=True)


def attend_with(x, mask):
    return LAYER(x, x, x, None, False, mask)[0]
''',
    # `attend_with` is not defined or imported here. A method called on an instance runs with the context of the
    # instance's class, so the analysis resolves the name in the subclass's module.
    "gen/plainbase.py": '''\
import torch.nn as nn


class PlainBase(nn.Module):
    def forward(self, x, pair_mask):
        return self.attend(x, pair_mask.repeat(4, 1, 1))

    def attend(self, x, mask):
        return attend_with(x, mask)
''',
    "gen/typing_utils.py": '''\
from typing import TypedDict


class TransformersKwargs(TypedDict, total=False):
    output_attentions: bool
''',
}

# A caller's class, with the import lines and the expression that builds `self.attn` or `self.inner` filled in.
LAYER_CALLER = '''\
import torch.nn as nn
{imports}


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = {layer}(dim, num_heads)

    def forward(self, x, pair_mask):
        return self.attn(x, x, x, None, False, pair_mask.repeat(self.num_heads, 1, 1))[0]
'''

MIXER_CALLER = '''\
import torch.nn as nn
{imports}


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.inner = TokenMixer(dim, num_heads)

    def forward(self, x, pair_mask):
        return self.inner(x, pair_mask.repeat(self.num_heads, 1, 1))
'''

# route: (caller text, whether the analysis finds the head-major repeat without the pre-filter). Every caller
# passes the pre-filter except the star import.
ROUTES: Dict[str, Tuple[str, bool]] = {
    "through_base_class": (
        '''\
from .base import AttentionBase


class Block(AttentionBase):
    def forward(self, x, pair_mask):
        return self.attend(x, pair_mask.repeat(self.num_heads, 1, 1))
''',
        True,
    ),
    "module_level_instance": (
        '''\
from .shared import attend


def run(x, pair_mask, num_heads=4):
    return attend(x, pair_mask.repeat(num_heads, 1, 1))
''',
        True,
    ),
    "reexport_in_init": (MIXER_CALLER.format(imports="from gen import TokenMixer"), True),
    # The analysis does not follow star imports (`ImportTable` binds no name for them), so it finds nothing, and
    # the pre-filter skips the module.
    "star_import": (MIXER_CALLER.format(imports="from gen.mixer import *"), False),
    "factory_function": (LAYER_CALLER.format(imports="from .factory import make_attention", layer="make_attention"),
                         True),
    "alias_of_torch_layer": (
        LAYER_CALLER.format(imports="from torch.nn import MultiheadAttention as Mixer", layer="Mixer"), True
    ),
    "alias_imported_in_function": (
        LAYER_CALLER.format(imports="\n\ndef unused():\n    from torch.nn import MultiheadAttention as Mixer\n",
                            layer="Mixer"),
        True,
    ),
    "double_star_keywords": (
        '''\
import torch.nn as nn

from .factory import make_attention
from .keywords import mask_keywords


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = make_attention(dim, num_heads)

    def forward(self, x, pair_mask):
        return self.attn(x, x, x, **mask_keywords(pair_mask.repeat(self.num_heads, 1, 1)))[0]
''',
        True,
    ),
    # The analysis does not model getattr, so it finds nothing. The pre-filter still lets the module through.
    "getattr_with_string": (LAYER_CALLER.format(imports="", layer='getattr(nn, "MultiheadAttention")'), False),
    # A project subclass of a torch layer has no project `forward`, so the analysis finds nothing in it.
    "subclass_of_consumer": (
        LAYER_CALLER.format(imports="from .subclass import GatedAttention", layer="GatedAttention"), False
    ),
}


def write_library(root: Path) -> None:
    for name, text in LIBRARY.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def findings_of(path: Path, prefilter: bool, monkeypatch, settings: Settings = Settings()) -> List[Tuple]:
    with monkeypatch.context() as patch:
        if not prefilter:
            patch.setattr(engine, "_may_have_findings", lambda *arguments: True)
        found = check_source(path.read_text(), str(path), settings)
    return [(finding.line, finding.col, finding.code, finding.message, finding.chain) for finding in found]


def passes(path: Path, settings: Settings = Settings()) -> bool:
    return engine._may_have_findings(path.read_text(), str(path), settings)


@pytest.fixture(autouse=True)
def fresh_reach_cache():
    reach.clear_cache()
    yield
    reach.clear_cache()


@pytest.fixture()
def library(tmp_path) -> Path:
    write_library(tmp_path)
    return tmp_path


@pytest.mark.parametrize("route", list(ROUTES))
def test_route_same_with_and_without_prefilter(library, route, monkeypatch):
    text, has_finding = ROUTES[route]
    caller = library / "gen" / f"caller_{route}.py"
    caller.write_text(text)

    without = findings_of(caller, False, monkeypatch)

    assert bool(without) == has_finding
    assert passes(caller) == (route != "star_import")
    assert findings_of(caller, True, monkeypatch) == without


SUBCLASS_CONTEXT_CALLERS = {
    "top_level_class": '''\
from .helpers import attend_with
from .plainbase import PlainBase


class Block(PlainBase):
    pass
''',
    "class_in_function": '''\
from .helpers import attend_with
from .plainbase import PlainBase


def build():
    class Block(PlainBase):
        pass

    return Block
''',
}


@pytest.mark.parametrize("kind", list(SUBCLASS_CONTEXT_CALLERS))
def test_route_through_subclass_context(library, kind, monkeypatch):
    """A base class's method runs with the context of the instance's module, which resolves `attend_with`."""
    caller = library / "gen" / f"caller_{kind}.py"
    caller.write_text(SUBCLASS_CONTEXT_CALLERS[kind])
    project_index, module_name = ProjectIndex.for_file(str(caller))
    uses = ModuleInterpreter(cst.parse_module(caller.read_text()), str(caller), module_name, project_index).run()

    # The mask reaches nn.MultiheadAttention only through `attend_with`, resolved in this module's imports.
    assert [use.consumer.kind for use in uses] == [consumers.MULTIHEAD_ATTENTION]
    assert passes(caller)
    assert findings_of(caller, True, monkeypatch) == findings_of(caller, False, monkeypatch)


def test_import_without_consumer_skipped(library, monkeypatch):
    caller = library / "gen" / "caller_plain.py"
    caller.write_text(
        '''\
import torch.nn as nn

from gen import TokenMixer
from .factory import make_attention


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj(x)
'''
    )

    assert not passes(caller)
    assert findings_of(caller, False, monkeypatch) == []


def test_transformers_kwargs_name_skipped(library, monkeypatch):
    caller = library / "gen" / "caller_kwargs_type.py"
    caller.write_text(
        '''\
from typing import Unpack

from .typing_utils import TransformersKwargs


def forward(x, **kwargs: Unpack[TransformersKwargs]):
    return x
'''
    )

    assert "Transformer" in caller.read_text()
    assert not passes(caller)
    assert findings_of(caller, False, monkeypatch) == []


ISINSTANCE_ONLY = '''\
import torch.nn as nn


def init_weights(module):
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)):
        module._reset_parameters()
'''

SDPA = '''\
import torch.nn.functional as F


def attend(q, k, v, pair_mask, num_heads):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=pair_mask.repeat(num_heads, 1, 1))
'''


@pytest.mark.parametrize(
    "text, expected",
    [
        (ISINSTANCE_ONLY, False),
        # A rebound `isinstance` is not the builtin, so its arguments may be kept.
        (ISINSTANCE_ONLY + "\n\nisinstance = print\n", True),
        (ISINSTANCE_ONLY.replace("isinstance(module, (nn.Linear, nn.MultiheadAttention))",
                                 "type(module) in (nn.Linear, nn.MultiheadAttention)"), True),
        (SDPA, False),
        # `F` rebound by a parameter: the call is no longer provably torch's.
        (SDPA.replace("(q, k, v, pair_mask, num_heads)", "(q, k, v, pair_mask, num_heads, F)"), True),
        (SDPA.replace("F.scaled_dot_product_attention", "F.some_wrapper"), True),
        (SDPA.replace("import torch.nn.functional as F", "from torch.utils.checkpoint import checkpoint as F")
         .replace("F.scaled_dot_product_attention(q, k, v,", "F(q, k, v,"), True),
        ('"""Passes attn_mask to nn.MultiheadAttention."""\n', False),
        ('KEY = "attn_mask"\n', True),
        ("def f(kw, m):\n    kw['attn_mask'] = m\n", True),
        ("def f(layer, m):\n    return layer(m, attn_mask=m)\n", True),
        ("def f(make, m):\n    return make()(m, attn_mask=m)\n", True),
    ],
    ids=[
        "isinstance", "isinstance_rebound", "type_membership", "sdpa", "sdpa_parameter_rebinds_alias",
        "other_torch_function", "checkpoint_passes_keywords", "docstring", "string_constant", "item_assignment",
        "wrapper_keyword", "keyword_on_call_result",
    ],
)
def test_signs_in_own_module(tmp_path, monkeypatch, text, expected):
    path = tmp_path / "module.py"
    path.write_text(text)

    assert passes(path) == expected
    assert findings_of(path, True, monkeypatch) == findings_of(path, False, monkeypatch)


def test_sdpa_with_head_major_mask_has_no_finding(tmp_path, monkeypatch):
    """The analysis skips torch's own attention functions, which is why the pre-filter may skip them too."""
    path = tmp_path / "module.py"
    path.write_text(SDPA)

    assert findings_of(path, False, monkeypatch) == []


def test_follow_imports_off_counts_own_units(library, monkeypatch):
    text, _ = ROUTES["factory_function"]
    caller = library / "gen" / "caller_factory_function.py"
    caller.write_text(text)
    no_imports = Settings(follow_imports=False)

    assert passes(caller)
    assert not passes(caller, no_imports)
    assert findings_of(caller, False, monkeypatch, no_imports) == []


def test_changed_import_seen_by_next_check(library, monkeypatch):
    """Facts and clean pairs are cached in the process; a changed imported module must not be missed."""
    caller = library / "gen" / "caller_factory_function.py"
    caller.write_text(ROUTES["factory_function"][0])
    factory = library / "gen" / "factory.py"
    original = factory.read_text()
    factory.write_text(original.replace("nn.MultiheadAttention", "nn.Linear"))

    assert not passes(caller)

    factory.write_text(original)

    assert passes(caller)
    assert findings_of(caller, True, monkeypatch) == findings_of(caller, False, monkeypatch) != []


def test_created_module_seen_by_next_check(library):
    caller = library / "gen" / "caller_late.py"
    caller.write_text(LAYER_CALLER.format(imports="from .late import make_attention", layer="make_attention"))

    assert not passes(caller)

    (library / "gen" / "late.py").write_text(LIBRARY["gen/factory.py"])

    assert passes(caller)


def test_lookups_reported_to_observers(library, monkeypatch):
    caller = library / "gen" / "caller_plain.py"
    caller.write_text("from .factory import make_attention\n\nmake_attention(1, 2)\n")
    seen: List[Tuple[Tuple[str, ...], str]] = []
    monkeypatch.setattr(reach, "LOOKUP_OBSERVERS", [seen.append])

    assert passes(caller)
    roots = (str(library.resolve()),)
    assert (roots + (str((library / "gen").resolve()),), "gen.factory") in seen


def test_clean_pairs_reused_between_modules(library, monkeypatch):
    first = library / "gen" / "first.py"
    second = library / "gen" / "second.py"
    for path in (first, second):
        path.write_text("from .typing_utils import TransformersKwargs\n\nTransformersKwargs()\n")
    visits = count_visits(monkeypatch)

    assert not passes(first)
    first_visits, visits[:] = list(visits), []
    assert not passes(second)

    # The second module's own units are visited, but the imported class's pairs are known to be clean.
    assert any(path.endswith("typing_utils.py") for path in first_visits)
    assert not any(path.endswith("typing_utils.py") for path in visits)
    assert visits


# -------------------------------------------------------------------------------------------------------------------
# The copies of the analysis's rules and constants in reach.py


def test_constants_match_analysis():
    assert len(reach.CONSUMER_NAMES) == len(consumers.LAYER_SPECS) + 1
    assert reach.MASK_KEYWORD == consumers.WRAPPER_KEYWORD
    assert reach.MAX_IMPORTED_MODULE_BYTES == project.MAX_IMPORTED_MODULE_BYTES


def test_reach_imports_no_libcst():
    code = "import sys, maskcheck.reach\nprint(sorted(m for m in ('libcst', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_sdpa_names_unhandled_by_interpreter():
    """`_call_function` must reach its `torch.` test for these names, so no other case may name them."""
    source = Path(interpreter.__file__).read_text()
    for name in reach._MASK_DROPPING_TORCH_FUNCTIONS:
        assert name not in source
        assert name not in interpreter._CALLS_FIRST_ARGUMENT


@pytest.mark.parametrize(
    "name",
    ["torch.nn.modules.activation.MultiheadAttention", "torch.nn.modules.transformer.Transformer",
     "torch.nn.modules.container.ModuleList", "torch.nn.parameter.Parameter", "torch.nn.modules.rnn.LSTM",
     "pkg.torch.nn.modules.X"],
)
def test_canonical_matches_names(name):
    assert reach.canonical(name) == names.canonical(name)


IMPORT_SPELLINGS = '''\
import os, torch.nn as nn, a.b.c
import x.y
from . import sibling
from .. import parent_thing as pt
from ...too_far import nothing
from .sub.mod import Thing, Other as O
from pkg.mod import *
if True: from z import w
try:
    from q import r
except ImportError:
    r = None


def f():
    from inner.mod import deep


class C:
    from klass import member
'''


@pytest.mark.parametrize("package", [None, "pkg", "pkg.sub"])
def test_imports_match_import_table(package):
    facts = reach.build_facts(ast.parse(IMPORT_SPELLINGS), package, "mod.py")
    table = names.ImportTable.from_module(cst.parse_module(IMPORT_SPELLINGS), package)

    assert set(facts.imports) == set(table._aliases)
    for local, target in table._aliases.items():
        assert target in facts.imports[local], local


EVERY_SYNTAX = '''\
import torch.nn as nn


async def stream(items, *args, key=None, **options):
    global counter
    async for item in items:
        async with item as handle:
            yield f"{handle!r:>{key}}", [y async for y in handle if (z := y)]
    match options:
        case {"a": True, **rest}:
            pass
        case [1, *others] | None:
            pass
        case nn.Linear(in_features=3) as layer:
            pass
    try:
        del counter
    except* ValueError as error:
        raise
    lambda value=nn.MultiheadAttention: value
'''


def test_facts_of_every_syntax():
    facts = reach.build_facts(ast.parse(EVERY_SYNTAX), None, "module.py")
    unit = facts.units[facts.functions["stream"][0]]

    assert unit.has_fixed_sign
    assert {"counter", "item", "handle", "y", "z", "rest", "others", "layer", "error", "value", "args", "options"} <= (
        facts.bindings
    )
    assert ("nn", "Linear") in unit.chains["nn"]


OPAQUE_BASE_CALLERS = {
    "alias_of_base": '''\
from .helpers import attend_with
from .plainbase import PlainBase

Base = PlainBase


class Block(Base):
    pass
''',
    "base_from_factory": '''\
from .helpers import attend_with
from .plainbase import PlainBase


def base_class():
    return PlainBase


class Block(base_class()):
    pass
''',
}


@pytest.mark.parametrize("kind", list(OPAQUE_BASE_CALLERS))
def test_base_given_by_value_passes(library, kind, monkeypatch):
    """A base named through a variable or a call gets its class from the interpreter, so the module passes."""
    caller = library / "gen" / f"caller_{kind}.py"
    caller.write_text(OPAQUE_BASE_CALLERS[kind])

    assert passes(caller)
    assert findings_of(caller, True, monkeypatch) == findings_of(caller, False, monkeypatch)


# Bases the check reads without giving up: (source, whether the module passes).
BASE_FORMS = {
    # The subscript's index is a type variable, a value; only the subscripted class decides the base.
    "generic_with_type_variable": (
        """\
from typing import Generic, TypeVar

from .plainbase import PlainBase

T = TypeVar("T")


class Box(Generic[T]):
    pass
""",
        False,
    ),
    "subscript_of_tuple": (
        """\
from .helpers import attend_with
from .plainbase import PlainBase

BASES = (PlainBase,)


class Block(BASES[0]):
    pass
""",
        True,
    ),
    "library_call": (
        """\
from collections import namedtuple


class Point(namedtuple("Point", "x y")):
    pass
""",
        False,
    ),
    "call_with_project_class": (
        """\
from six import with_metaclass

from .helpers import attend_with
from .plainbase import PlainBase


class Block(with_metaclass(type, PlainBase)):
    pass
""",
        True,
    ),
    # An optional import with a fallback value: the check follows the imported class. The interpreter reads only
    # the fallback value today, so neither run has a finding.
    "import_with_fallback_class": (
        """\
from .helpers import attend_with

try:
    from .plainbase import PlainBase
except ImportError:
    PlainBase = object


class Block(PlainBase):
    pass
""",
        True,
    ),
    "import_with_fallback_none": (
        """\
try:
    import jinja2
except ImportError:
    jinja2 = None


class Loader(jinja2.BaseLoader):
    pass
""",
        False,
    ),
    "alias_of_itself": (
        """\
Base = Base.inner


class Block(Base):
    pass
""",
        True,
    ),
}


@pytest.mark.parametrize("form", list(BASE_FORMS))
def test_base_forms(library, form, monkeypatch):
    """Subscripts, library calls and alias assignments in bases are read, and the findings stay the same."""
    text, passing = BASE_FORMS[form]
    caller = library / "gen" / f"caller_{form}.py"
    caller.write_text(text)

    assert passes(caller) == passing
    assert findings_of(caller, True, monkeypatch) == findings_of(caller, False, monkeypatch)


@pytest.mark.parametrize(
    "text",
    [BASE_FORMS["subscript_of_tuple"][0], OPAQUE_BASE_CALLERS["alias_of_base"], OPAQUE_BASE_CALLERS["base_from_factory"]],
    ids=["subscript_of_tuple", "alias_of_base", "base_from_factory"],
)
def test_passing_base_forms_reach_a_layer(library, text):
    """The interpreter reaches nn.MultiheadAttention through these bases, so the check must let them pass."""
    caller = library / "gen" / "caller_base.py"
    caller.write_text(text)
    project_index, module_name = ProjectIndex.for_file(str(caller))
    uses = ModuleInterpreter(cst.parse_module(text), str(caller), module_name, project_index).run()

    assert [use.consumer.kind for use in uses] == [consumers.MULTIHEAD_ATTENTION]
    assert passes(caller)


def test_linked_module_uses_package_of_link(tmp_path, monkeypatch):
    """A link `pkg/link.py` to `pkg/real/__init__.py` resolves `.layers` from `pkg`, as the analysis does."""
    package = tmp_path / "pkg"
    (package / "real").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text(
        "import torch.nn as nn\n\nattn = nn.MultiheadAttention(16, 4)\n\n\n"
        "def run(x, m):\n    return attn(x, x, x, None, True, m)\n"
    )
    (package / "real" / "__init__.py").write_text(
        "from .layers import run\n\n\ndef f(x, mask, num_heads):\n    return run(x, mask.repeat(num_heads, 1, 1))\n"
    )
    link = package / "link.py"
    link.symlink_to(package / "real" / "__init__.py")
    reach.clear_cache()

    without = findings_of(link, False, monkeypatch)

    assert len(without) == 1
    assert findings_of(link, True, monkeypatch) == without
