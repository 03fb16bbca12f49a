"""A file's findings and analysis work do not depend on the files checked before it in the same process.

The analysis parses imported project modules on demand and keeps the parsed trees between files. These tests check
a generated package file by file in one process, in two orders, with the parse cache at its default size and with
a cache so small that it drops modules all the time. Each file's findings and its count of interpreted statements
must equal those of the same file checked with an empty cache.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from maskcheck import parsing, runner
from maskcheck.analysis import project, source_cache
from maskcheck.analysis.interpreter import ModuleInterpreter
from maskcheck.analysis.source_cache import SizeBoundedCache
from maskcheck.engine import check_source
from maskcheck.findings import SourceError
from maskcheck.settings import Settings

LAYERS = '''\
import torch.nn as nn


class TokenMixer(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, mask):
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
'''

RELAY = '''\
import torch.nn as nn

from .layers import TokenMixer
from . import cycle_b


class Relay(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.inner = TokenMixer(dim, num_heads)

    def forward(self, x, mask):
        cycle_b.touch(x)
        return self.inner(x, mask)
'''

# Two modules that import each other, so that the analysis meets the same module again through a cycle.
CYCLE_A = '''\
from . import cycle_b


def touch(x):
    return cycle_b.touch(x)
'''

CYCLE_B = '''\
from . import cycle_a


def touch(x):
    return cycle_a.touch(x)
'''

HELPERS = '''\
from .relay import Relay
from .util_{index} import widen


def build(dim, num_heads):
    return Relay(widen(dim), num_heads)
'''

UTIL = '''\
def widen(dim):
    return dim * {index}
'''

CALLER = '''\
import torch.nn as nn

from .helpers_{index} import build
from .relay import Relay


class Stack(nn.Module):
    def __init__(self, dim=64, num_heads=4):
        super().__init__()
        self.num_heads = num_heads
        self.first = build(dim, num_heads)
        self.second = Relay(dim, num_heads)

    def forward(self, x, pair_mask):
        expanded = pair_mask.{expansion}
        return self.second(self.first(x, expanded), expanded)
'''

HEAD_MAJOR = "repeat(self.num_heads, 1, 1)"
BATCH_MAJOR = "repeat_interleave(self.num_heads, dim=0)"

# Helper modules, so that a run of callers imports more modules than the shrunk cache keeps.
HELPER_COUNT = 4


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check_order")
    folder = root / "ordered"
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "layers.py").write_text(LAYERS)
    (folder / "relay.py").write_text(RELAY)
    (folder / "cycle_a.py").write_text(CYCLE_A)
    (folder / "cycle_b.py").write_text(CYCLE_B)
    for index in range(HELPER_COUNT):
        (folder / f"helpers_{index}.py").write_text(HELPERS.format(index=index))
        (folder / f"util_{index}.py").write_text(UTIL.format(index=index))
        for name, expansion in (("head_major", HEAD_MAJOR), ("batch_major", BATCH_MAJOR)):
            (folder / f"caller_{name}_{index}.py").write_text(CALLER.format(index=index, expansion=expansion))
    return folder


Result = Tuple[List[Tuple], int]


def check_in_order(paths: List[Path], monkeypatch) -> Dict[Path, Result]:
    """Check the files one after another in this process; return each file's findings and statements run."""
    counts: List[int] = []
    original_run = ModuleInterpreter.run

    def counting_run(self):
        uses = original_run(self)
        counts.append(self.statements_run)
        return uses

    results: Dict[Path, Result] = {}
    with monkeypatch.context() as patch:
        patch.setattr(ModuleInterpreter, "run", counting_run)
        for path in paths:
            counts.clear()
            try:
                found = check_source(path.read_text(), str(path), Settings())
                findings = [(f.line, f.col, f.code, f.message, f.chain) for f in found]
            except SourceError as error:
                findings = [("error", str(error))]
            assert len(counts) <= 1, path.name
            results[path] = (findings, counts[0] if counts else 0)
    return results


def check_each_alone(paths: List[Path], monkeypatch) -> Dict[Path, Result]:
    """Check each file with an empty parse cache, as the first file of a fresh process is checked."""
    results: Dict[Path, Result] = {}
    for path in paths:
        project._PARSED.clear()
        results.update(check_in_order([path], monkeypatch))
    return results


@pytest.fixture()
def fresh_cache():
    project._PARSED.clear()
    yield
    project._PARSED.clear()


@pytest.mark.parametrize("cache_bytes", [project.MAX_CACHED_MEMORY_BYTES, 1], ids=["default_cache", "tiny_cache"])
def test_results_independent_of_order(package, cache_bytes, monkeypatch, fresh_cache):
    monkeypatch.setattr(project._PARSED, "max_size", cache_bytes)
    paths = sorted(package.glob("*.py"))
    alone = check_each_alone(paths, monkeypatch)

    project._PARSED.clear()
    forward = check_in_order(paths, monkeypatch)
    project._PARSED.clear()
    backward = check_in_order(list(reversed(paths)), monkeypatch)

    for path in paths:
        assert forward[path] == alone[path], f"{path.name} after the files before it in name order"
        assert backward[path] == alone[path], f"{path.name} after the files after it in name order"


def test_generated_package_has_findings(package, monkeypatch, fresh_cache):
    """The comparison above is only useful if the callers reach the layer through the imports."""
    paths = sorted(package.glob("caller_*.py"))
    results = check_each_alone(paths, monkeypatch)

    for path in paths:
        findings, statements = results[path]
        assert statements > 0, path.name
        if "head_major" in path.name:
            assert findings, path.name
        else:
            assert not findings, path.name


def test_same_module_found_once_per_file(package, monkeypatch, fresh_cache):
    """The analysis keys its tables by node identity, so a module must not be parsed again within one file."""
    monkeypatch.setattr(project._PARSED, "max_size", 1)
    index, _ = project.ProjectIndex.for_file(str(package / "caller_head_major_0.py"))
    first = index.find("ordered.relay")
    for other in ("ordered.layers", "ordered.cycle_a", "ordered.cycle_b", "ordered.util_0"):
        assert index.find(other) is not None, other

    assert first is not None
    assert index.find("ordered.relay") is first, "ordered.relay was parsed again within one file"
    assert len(index.loaded()) == 5


def test_parse_cache_bounded_by_total_size():
    cache = SizeBoundedCache(max_size=100)
    for index in range(5):
        cache.put((f"module_{index}.py", f"module_{index}", "digest"), None, 40)

    assert cache._total_size <= 100
    assert cache.get(("module_4.py", "module_4", "digest")) == (True, None)
    assert cache.get(("module_0.py", "module_0", "digest")) == (False, None)


def test_parse_cache_keeps_one_oversized_module():
    cache = SizeBoundedCache(max_size=10)
    cache.put(("large.py", "large", "digest"), None, 50)

    assert cache.get(("large.py", "large", "digest")) == (True, None)


def test_parse_cache_bound_shared_between_workers(monkeypatch):
    """Two workers each keep half of the bound, so the two caches together keep what one process would."""
    monkeypatch.setattr(source_cache, "_SHARERS", 1)
    source_cache.share_between(2)
    cache = SizeBoundedCache(max_size=100)
    for index in range(5):
        cache.put((f"module_{index}.py", f"module_{index}", "digest"), None, 20)

    assert cache._total_size <= 50
    assert cache.get(("module_4.py", "module_4", "digest")) == (True, None)
    assert cache.get(("module_1.py", "module_1", "digest")) == (False, None)


def test_worker_start_shares_cache_bounds(monkeypatch):
    monkeypatch.setattr(source_cache, "_SHARERS", 1)
    monkeypatch.setattr(runner, "_WORKER_CHECKER", None)
    setup = runner._Setup(Settings(), None, False, None, "", "")
    lock = threading.Lock()
    saved_handlers = logging.getLogger("maskcheck").handlers[:]
    saved_propagate = logging.getLogger("maskcheck").propagate
    try:
        with monkeypatch.context() as patch:
            patch.setattr(runner.signal, "signal", lambda *arguments: None)
            patch.setattr(parsing, "_large_parse_lock", None)
            runner._start_worker(setup, 3, lock)
            shared_lock = parsing._large_parse_lock
    finally:
        logging.getLogger("maskcheck").handlers = saved_handlers
        logging.getLogger("maskcheck").propagate = saved_propagate

    assert source_cache.sharers() == 3
    assert shared_lock is lock


def test_parse_cache_resize_drops_past_the_bound():
    cache = SizeBoundedCache(max_size=100)
    for index in range(3):
        cache.put((f"module_{index}.py", f"module_{index}", "digest"), None, 20)
    cache.resize(("module_2.py", "module_2", "digest"), 70)

    assert cache._total_size == 90
    assert cache.get(("module_0.py", "module_0", "digest")) == (False, None)
    assert cache.get(("module_1.py", "module_1", "digest")) == (True, None)
    cache.resize(("absent.py", "absent", "digest"), 500)
    assert cache._total_size == 90


def test_index_settle_weighs_parsed_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(project, "_PARSED", SizeBoundedCache(project.MAX_CACHED_MEMORY_BYTES))
    package = tmp_path / "weighed"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("import torch\n\n\ndef expand(mask):\n    return mask.repeat(2, 1, 1)\n")
    index = project.ProjectIndex([tmp_path])
    context = index.find("weighed.layers")
    unparsed = project._PARSED._total_size
    assert unparsed == context.weight() > 0

    assert context.functions["expand"].name.value == "expand"
    index.settle()
    assert project._PARSED._total_size == context.weight() > unparsed
