"""How a cache lookup re-resolves the modules that an entry depends on, and how the entry stores them.

`ResultCache` resolves the recorded lookups with one listing per folder and one result per (root, name). These
tests hold it to `resolve_module`, which does the plain `os.stat` search that `ProjectIndex.find` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_cache import MIXER_PASSES_MASK, MODEL, MODEL_FINDING_LINE, entry_files, run
from maskcheck import cache as cache_module
from maskcheck.cache import CACHE_DIR_NAME, FileState, ResultCache, resolve_module


@pytest.fixture
def tree(tmp_path):
    """Two roots: `first` contains modules, a package, a folder named like a module and a non-identifier file."""
    first = tmp_path / "first"
    second = tmp_path / "second"
    (first / "pkg" / "sub").mkdir(parents=True)
    (first / "pkg" / "__init__.py").write_text("")
    (first / "pkg" / "sub" / "__init__.py").write_text("")
    (first / "pkg" / "sub" / "leaf.py").write_text("")
    (first / "pkg" / "module.py").write_text("")
    (first / "plain.py").write_text("")
    (first / "Upper.py").write_text("")
    (first / "my-module.py").write_text("")
    (first / "folder.py").mkdir()  # a folder, not a module file
    (first / "both").mkdir()  # a package and a module of the same name: Python imports the package
    (first / "both" / "__init__.py").write_text("")
    (first / "both.py").write_text("")
    (first / "namespace" / "inner").mkdir(parents=True)  # no __init__.py anywhere
    (first / "namespace" / "inner" / "leaf.py").write_text("")
    second.mkdir()
    (second / "plain.py").write_text("")
    (second / "only_here.py").write_text("")
    (second / "pkg").mkdir()
    (second / "pkg" / "module.py").write_text("")
    return first, second


NAMES = [
    "plain",
    "only_here",
    "pkg",
    "pkg.module",
    "pkg.sub",
    "pkg.sub.leaf",
    "pkg.missing",
    "pkg.sub.leaf.deeper",
    "namespace",
    "namespace.inner",
    "namespace.inner.leaf",
    "Upper",
    "upper",
    "UPPER",
    "my-module",
    "folder",
    "both",
    "torch",
    "torch.nn",
    "",
    "pkg..module",
    ".plain",
    "plain.",
]


@pytest.mark.parametrize("dotted", NAMES)
@pytest.mark.parametrize("order", ["first-second", "second-first", "first-only", "missing-root", "no-roots"])
def test_cached_resolution_matches_stat_search(tree, tmp_path, dotted, order):
    first, second = (str(root) for root in tree)
    roots = {
        "first-second": (first, second),
        "second-first": (second, first),
        "first-only": (first,),
        "missing-root": (str(tmp_path / "absent"), first),
        "no-roots": (),
    }[order]
    cache = ResultCache(tmp_path / CACHE_DIR_NAME, "run")

    expected = resolve_module(roots, dotted)

    assert cache._resolve(list(roots), dotted) == expected
    # The second result comes from the memo of this run.
    assert cache._resolve(list(roots), dotted) == expected


def test_listing_answers_absent_libraries(tree, tmp_path, monkeypatch):
    first, _ = tree
    cache = ResultCache(tmp_path / CACHE_DIR_NAME, "run")
    searched = []
    real_search = cache_module.module_file_in

    def counting_search(root, dotted):
        searched.append(dotted)
        return real_search(root, dotted)

    monkeypatch.setattr(cache_module, "module_file_in", counting_search)

    for dotted in ("torch", "torch.nn", "numpy.linalg", "pkg.module", "plain"):
        cache._resolve([str(first)], dotted)

    assert searched == ["pkg.module", "plain"]


def _cache_and_checked_file(tmp_path):
    """Return a new result cache in `tmp_path` and the state of a checked file there that imports `plain`."""
    checked = tmp_path / "checked.py"
    checked.write_text("import plain\n")
    state, _ = FileState.read(str(checked), "checked.py", 1 << 20)
    return ResultCache(tmp_path / CACHE_DIR_NAME, "run"), state


def test_entry_stores_roots_once_per_group(tree, tmp_path):
    first, second = (str(root) for root in tree)
    cache, state = _cache_and_checked_file(tmp_path)
    lookups = [((first, second), "plain"), ((first, second), "torch"), ((second,), "only_here")]

    cache.store(state, cache.dependencies(lookups), {"answer": 1})

    (entry_path,) = entry_files(tmp_path / CACHE_DIR_NAME)
    dependencies = json.loads(entry_path.read_bytes())["dependencies"]
    assert [group[0] for group in dependencies] == [[first, second], [second]]
    assert [lookup[:2] for lookup in dependencies[0][1]] == [
        ["plain", str(Path(first) / "plain.py")],
        ["torch", None],
    ]
    assert [lookup[:2] for lookup in dependencies[1][1]] == [["only_here", str(Path(second) / "only_here.py")]]
    assert ResultCache(tmp_path / CACHE_DIR_NAME, "run").lookup(state) == {"answer": 1}


def test_changed_dependency_in_group_is_stale(tree, tmp_path):
    first, second = (str(root) for root in tree)
    cache, state = _cache_and_checked_file(tmp_path)
    cache.store(state, cache.dependencies([((second, first), "plain"), ((second, first), "absent")]), {"answer": 1})

    (Path(second) / "plain.py").write_text("changed = True\n")

    assert ResultCache(tmp_path / CACHE_DIR_NAME, "run").lookup(state) is None


def test_module_created_beside_script_invalidates(tmp_path):
    """A lookup that found nothing in the script's own folder must not stay resolved from that folder's old listing."""
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "model.py").write_text(MODEL.replace("from .mixer import", "from mixer import"))
    cache_dir = tmp_path / CACHE_DIR_NAME

    assert run([folder / "model.py"], cache_dir)["model.py"] == []
    (folder / "mixer.py").write_text(MIXER_PASSES_MASK)

    assert run([folder / "model.py"], cache_dir)["model.py"] == [MODEL_FINDING_LINE]


def test_package_resolves_before_module_of_same_name(tree):
    from maskcheck.analysis.project import ProjectIndex

    first, second = tree
    package = str(first / "both" / "__init__.py")
    assert resolve_module((str(first), str(second)), "both") == package
    assert ProjectIndex([first, second]).find("both").path == package
