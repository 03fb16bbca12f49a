"""The pre-filter's records of earlier checks in one process (`reach._CLEAN`, `reach._SIGNED`) and its fast paths.

A later check may skip a pair of (unit, context) only when the lookups that the pair's outcome depended on find the
same modules with the same content. Each test changes one such lookup between two checks and expects the
decision that a check without records would make. Where the module has a finding, the test also runs the full
analysis, so that a skipped module would show up as a lost finding.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from maskcheck import engine, reach
from maskcheck.engine import check_source
from maskcheck.settings import Settings

LAYERS = """\
import torch.nn as nn

LAYER = nn.MultiheadAttention(64, 4, batch_first=True)


def attend(x, mask):
    return LAYER(x, x, x, None, False, mask)[0]
"""

PLAIN = """\
def attend(x, mask):
    return x
"""

# Passes a head-major mask to whatever `attend` means in the module it is imported from.
HEAD_MAJOR_CALLER = """\
from {module} import {name}


def forward(x, pair_mask):
    return {name}(x, pair_mask.repeat(4, 1, 1))
"""


def write_files(root: Path, files: Dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def passes(path: Path) -> bool:
    return engine._may_have_findings(path.read_text(), str(path), Settings())


def findings_of(path: Path, prefilter: bool, monkeypatch) -> List[Tuple]:
    with monkeypatch.context() as patch:
        if not prefilter:
            patch.setattr(engine, "_may_have_findings", lambda *arguments: True)
        found = check_source(path.read_text(), str(path), Settings())
    return [(finding.line, finding.col, finding.code, finding.message) for finding in found]


def count_visits(monkeypatch) -> List[str]:
    """Record the home path of every pair that searches visit from now on."""
    visits: List[str] = []
    original_visit = reach._Search._visit

    def counting_visit(search, home, index, context):
        visits.append(home.path)
        original_visit(search, home, index, context)

    monkeypatch.setattr(reach._Search, "_visit", counting_visit)
    return visits


@pytest.fixture(autouse=True)
def fresh_reach_cache():
    reach.clear_cache()
    yield
    reach.clear_cache()


def test_same_name_resolved_per_module(tmp_path, monkeypatch):
    """`attend` is harmless in one imported module and an attention call in the other, within one search.

    The search is breadth first, so `attend` in `first` is resolved one call before `attend` in `second`.
    """
    write_files(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/layers.py": LAYERS,
            "pkg/plain.py": PLAIN,
            "pkg/first.py": "from .plain import attend\n\n\ndef run_first(x, mask):\n    return attend(x, mask)\n",
            "pkg/second.py": "from .layers import attend\n\n\ndef run_second(x, mask):\n    return attend(x, mask)\n",
            "pkg/middle.py": "from .second import run_second\n\n\ndef run_middle(x, mask):\n    return run_second(x, mask)\n",
            "pkg/only_first.py": HEAD_MAJOR_CALLER.format(module=".first", name="run_first"),
            "pkg/both.py": """\
from .first import run_first
from .middle import run_middle


def forward(x, pair_mask):
    run_first(x, pair_mask)
    return run_middle(x, pair_mask.repeat(4, 1, 1))
""",
        },
    )
    both = tmp_path / "pkg" / "both.py"

    assert passes(both)
    assert not passes(tmp_path / "pkg" / "only_first.py")
    without = findings_of(both, False, monkeypatch)
    assert without
    assert findings_of(both, True, monkeypatch) == without


def test_clean_record_depends_on_search_roots(tmp_path, monkeypatch):
    """`import helpers` finds a module only from the folder that contains one, so the clean record of `run` must not
    carry over from a caller in another folder."""
    caller = HEAD_MAJOR_CALLER.format(module="..common", name="run")
    write_files(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/common.py": "import helpers\n\n\ndef run(x, mask):\n    return helpers.attend(x, mask)\n",
            "pkg/a/__init__.py": "",
            "pkg/a/first.py": caller,
            "pkg/b/__init__.py": "",
            "pkg/b/second.py": caller,
            "pkg/b/helpers.py": LAYERS,
        },
    )
    second = tmp_path / "pkg" / "b" / "second.py"

    assert not passes(tmp_path / "pkg" / "a" / "first.py")
    assert passes(second)
    without = findings_of(second, False, monkeypatch)
    assert without
    assert findings_of(second, True, monkeypatch) == without


# `f` reaches `g` and `k`. The closure of `g` looks up `pkg.y` (as `f` does), `pkg.y2` and `pkg.z`, and the
# closure of `k` looks up `pkg.v` only.
BRANCHING_CLOSURE = {
    "pkg/__init__.py": "",
    "pkg/x.py": "from .y import g, k\n\n\ndef f(a):\n    return g(a) + k(a)\n",
    "pkg/y.py": """\
from .y2 import helper
from .v import m


def util(a):
    return a


def g(a):
    return helper(a)


def k(a):
    return m(a)
""",
    "pkg/y2.py": "from .y import util\nfrom .z import h\n\n\ndef helper(a):\n    return util(a) + h(a)\n",
    "pkg/z.py": "def h(a):\n    return a\n",
    "pkg/v.py": "def m(a):\n    return a\n",
    "pkg/caller_one.py": "from .x import f\n\nf(1)\n",
    "pkg/caller_two.py": "from .x import f\n\nf(2)\n",
}


@pytest.mark.parametrize("changed", ["z", "v"])
def test_clean_record_covers_whole_closure(tmp_path, changed):
    """A module two calls below `f`, on either branch, gains a layer: the next caller of `f` must pass."""
    write_files(tmp_path, BRANCHING_CLOSURE)
    name = "h" if changed == "z" else "m"

    assert not passes(tmp_path / "pkg" / "caller_one.py")

    (tmp_path / "pkg" / f"{changed}.py").write_text(
        f"import torch.nn as nn\n\n\ndef {name}(a):\n    return nn.MultiheadAttention(4, 2)\n"
    )

    assert passes(tmp_path / "pkg" / "caller_two.py")


def test_clean_record_reused(tmp_path, monkeypatch):
    write_files(tmp_path, BRANCHING_CLOSURE)
    visits = count_visits(monkeypatch)

    assert not passes(tmp_path / "pkg" / "caller_one.py")
    first_visits, visits[:] = list(visits), []
    assert not passes(tmp_path / "pkg" / "caller_two.py")

    assert any(path.endswith("v.py") for path in first_visits)
    assert visits
    assert not any(path.endswith(("x.py", "y.py", "y2.py", "v.py")) for path in visits)


FACTORY_CALLER = "from .middle import build\n\nbuild()\n"

SIGNED_ROUTE = {
    "pkg/__init__.py": "",
    "pkg/factory.py": "import torch.nn as nn\n\n\ndef make_attention():\n    return nn.MultiheadAttention(4, 2)\n",
    "pkg/middle.py": "from .factory import make_attention\n\n\ndef build():\n    return make_attention()\n",
}


def test_signed_record_reused(tmp_path, monkeypatch):
    write_files(tmp_path, {**SIGNED_ROUTE, "pkg/caller_one.py": FACTORY_CALLER, "pkg/caller_two.py": FACTORY_CALLER})
    visits = count_visits(monkeypatch)

    assert passes(tmp_path / "pkg" / "caller_one.py")
    first_visits, visits[:] = list(visits), []
    assert passes(tmp_path / "pkg" / "caller_two.py")

    assert any(path.endswith("factory.py") for path in first_visits)
    assert visits
    assert not any(path.endswith(("factory.py", "middle.py")) for path in visits)


def test_signed_record_dropped_after_change(tmp_path):
    write_files(tmp_path, {**SIGNED_ROUTE, "pkg/caller_one.py": FACTORY_CALLER, "pkg/caller_two.py": FACTORY_CALLER})
    factory = tmp_path / "pkg" / "factory.py"

    assert passes(tmp_path / "pkg" / "caller_one.py")

    factory.write_text(factory.read_text().replace("nn.MultiheadAttention", "nn.Linear"))

    assert not passes(tmp_path / "pkg" / "caller_two.py")


def test_signed_record_keeps_lookups_before_sign(tmp_path):
    """The sign is an unparsable module found while resolving a name: the record must depend on that module."""
    write_files(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/broken.py": "def thing(:\n",
            "pkg/middle.py": "from .broken import thing\n\n\ndef build():\n    return thing()\n",
            "pkg/caller_one.py": FACTORY_CALLER,
            "pkg/caller_two.py": FACTORY_CALLER,
            "pkg/caller_three.py": FACTORY_CALLER,
        },
    )

    assert passes(tmp_path / "pkg" / "caller_one.py")
    assert passes(tmp_path / "pkg" / "caller_two.py")

    (tmp_path / "pkg" / "broken.py").write_text("def thing():\n    return 1\n")

    assert not passes(tmp_path / "pkg" / "caller_three.py")


def test_module_found_through_linked_folder(tmp_path, monkeypatch):
    """A lookup skips folders that do not exist, but a link to a folder counts as one, as for `Path.is_file`."""
    write_files(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "real/__init__.py": "",
            "real/layers.py": LAYERS,
            "pkg/caller.py": HEAD_MAJOR_CALLER.format(module="pkg.linked.layers", name="attend"),
        },
    )
    (tmp_path / "pkg" / "linked").symlink_to(tmp_path / "real", target_is_directory=True)
    caller = tmp_path / "pkg" / "caller.py"

    assert passes(caller)
    without = findings_of(caller, False, monkeypatch)
    assert without
    assert findings_of(caller, True, monkeypatch) == without


def test_package_found_in_own_folder(tmp_path, monkeypatch):
    """The package folder is missing under the first search root and present under the caller's own folder."""
    write_files(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/vendored/__init__.py": "",
            "pkg/sub/vendored/layers.py": LAYERS,
            "pkg/sub/caller.py": HEAD_MAJOR_CALLER.format(module="vendored.layers", name="attend"),
        },
    )
    caller = tmp_path / "pkg" / "sub" / "caller.py"

    assert passes(caller)
    without = findings_of(caller, False, monkeypatch)
    assert without
    assert findings_of(caller, True, monkeypatch) == without


def test_records_share_equal_lookups():
    table = reach._PairRecords(max_entries=1_000)
    key = ("/src/pkg/a.py", "pkg.a", "0" * 32)
    lookups = (("pkg.b", ("/src/pkg/b.py", "pkg.b", "1" * 32)), ("numpy", None))
    equal_copy = tuple(tuple(item) for item in lookups)

    table.add({(key, 1, key): reach._PairRecord(lookups), (key, 2, key): reach._PairRecord(equal_copy)})

    assert table.pairs[(key, 1, key)].lookups is table.pairs[(key, 2, key)].lookups


def test_records_cleared_past_bound():
    table = reach._PairRecords(max_entries=2 * reach._PAIR_ENTRIES + 2)
    key = ("/src/pkg/a.py", "pkg.a", "0" * 32)
    lookups = (("numpy", None), ("scipy", None))

    table.add({(key, 1, key): reach._PairRecord(lookups)})
    table.add({(key, 2, key): reach._PairRecord(lookups[:1])})

    assert list(table.pairs) == [(key, 2, key)]


# Siblings are walked in either order, so each binding appears once before and once after a read.
UNIT_FACTS = """\
import torch.nn as nn


def run(m):
    first = compute()
    print(first, second, Base, Other)
    second = compute()
    Base = layers.Block
    Other = layers.Other
    if isinstance(m, nn.MultiheadAttention):
        return a.b.c
    print(Base)
"""


def test_facts_of_attribute_chains():
    facts = reach.build_facts(ast.parse(UNIT_FACTS), None, "module.py")
    unit = facts.units[facts.functions["run"][0]]

    assert unit.chains["a"] == {("a",), ("a", "b"), ("a", "b", "c")}
    assert unit.chains["nn"] == {("nn",), ("nn", "MultiheadAttention")}
    # Only the argument itself is guarded: `nn` inside it is read.
    assert unit.has_guarded_sign
    assert not unit.has_fixed_sign
    assert unit.guard_callees == {"isinstance"}
    assert unit.guarded_names == {"m"}
    assert "nn" in unit.unguarded_names


def test_facts_of_name_read_and_bound():
    facts = reach.build_facts(ast.parse(UNIT_FACTS), None, "module.py")

    assert {"first", "second"} <= facts.value_bindings
    assert {"Base", "Other"} <= facts.bindings
    assert not {"Base", "Other"} & facts.value_bindings
    assert facts.aliases["Base"] == frozenset({("layers", "Block")})


@pytest.mark.parametrize(
    "text, has_fixed_sign",
    [
        ("nn.MultiheadAttention.forward(x)\n", True),
        ("make().MultiheadAttention\n", True),
        ("isinstance(m, nn.MultiheadAttention.inner)\n", True),
        ("isinstance(m, (nn.MultiheadAttention, nn.Linear))\n", False),
    ],
)
def test_facts_of_consumer_attribute(text, has_fixed_sign):
    facts = reach.build_facts(ast.parse(text), None, "module.py")

    assert facts.units[0].has_fixed_sign == has_fixed_sign


@pytest.mark.parametrize("enabled", [True, False])
def test_collector_state_restored(tmp_path, monkeypatch, enabled):
    write_files(tmp_path, {"pkg/__init__.py": "", "pkg/caller.py": FACTORY_CALLER})
    caller = tmp_path / "pkg" / "caller.py"
    was_enabled = gc.isenabled()
    try:
        if enabled:
            gc.enable()
        else:
            gc.disable()

        passes(caller)
        assert gc.isenabled() == enabled

        def failing_run(search):
            raise OSError("failed on purpose")

        monkeypatch.setattr(reach._Search, "run", failing_run)
        with pytest.raises(OSError):
            passes(caller)
        assert gc.isenabled() == enabled
    finally:
        if was_enabled:
            gc.enable()
        else:
            gc.disable()
