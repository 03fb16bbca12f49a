"""The cross-function analysis on a generated package of 2,000 functions that call each other in cycles.

The package comes from benchmarks/call_graph.py, which documents its layout. It has 20 modules that import each
other in a cycle and filler functions that call each other in cycles inside and across modules. Two head-major
repeats reach nn.MultiheadAttention through a chain of relay functions: one within the default call depth, one
past it. Every module is analysed on its own with its real path, as the command line does.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set

import pytest

from maskcheck.engine import check_source
from maskcheck.settings import DEFAULT_MAX_CALL_DEPTH, Settings

GENERATOR_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "call_graph.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("call_graph_generator", GENERATOR_PATH)
    module = importlib.util.module_from_spec(spec)
    # dataclasses looks the module up by name while it runs, so it must be registered first.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


call_graph = _load_generator()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return call_graph.generate_package(tmp_path_factory.mktemp("call_graph"), modules=20, functions=2000)


@pytest.fixture(scope="module")
def findings_by_module(package):
    # Returning at all is the termination check: recursion and cycles must not make the analysis loop.
    return {path: check_source(path.read_text(), str(path)) for path in package.modules}


def _call_graph_edges(package) -> Dict[str, Set[str]]:
    """Return caller -> callees between the package's module-level functions, read from the generated source."""
    edges: Dict[str, Set[str]] = defaultdict(set)
    for path in package.modules:
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for call in ast.walk(node):
                if not isinstance(call, ast.Call):
                    continue
                if isinstance(call.func, ast.Name) and call.func.id.startswith(("fill_", "relay_")):
                    edges[node.name].add(call.func.id)
                elif isinstance(call.func, ast.Attribute) and call.func.attr.startswith(("fill_", "relay_")):
                    edges[node.name].add(call.func.attr)
    return edges


def _reaches_itself(edges: Dict[str, Set[str]], start: str, max_steps: int) -> bool:
    frontier = set(edges[start])
    for _ in range(max_steps):
        if start in frontier:
            return True
        frontier = {callee for caller in frontier for callee in edges[caller]}
    return start in frontier


def test_generated_package_size(package):
    assert len(package.modules) == 20
    assert package.function_count == 2000


def test_generated_calls_form_cycles(package):
    edges = _call_graph_edges(package)
    # A short cycle inside a module (within the default depth) and the long cycles across all 20 modules.
    assert _reaches_itself(edges, "fill_03_000", 5)
    assert _reaches_itself(edges, "relay_00", 20)
    assert _reaches_itself(edges, "fill_00_001", 40)
    assert package.deep_call_depth > DEFAULT_MAX_CALL_DEPTH


def test_every_module_analysed(package, findings_by_module):
    assert sorted(findings_by_module) == sorted(package.modules)


def test_reachable_repeat_reported(package, findings_by_module):
    findings = findings_by_module[package.shallow_module]
    assert [(f.code, f.line) for f in findings] == [("MSK101", package.shallow_line)]
    assert "pair_mask.repeat(self.num_heads, 1, 1)" in findings[0].message


def test_repeat_past_depth_not_reported(package, findings_by_module):
    lines = [f.line for f in findings_by_module[package.deep_module]]
    assert package.deep_line not in lines


def test_silent_elsewhere(package, findings_by_module):
    unexpected: List[str] = []
    for path, findings in findings_by_module.items():
        for finding in findings:
            if (path, finding.line) != (package.shallow_module, package.shallow_line):
                unexpected.append(f"{path.name}:{finding.line}: {finding.message}")
    assert not unexpected, "\n".join(unexpected)


@pytest.fixture(scope="module")
def linear_package(tmp_path_factory):
    # One project call per filler keeps a deep analysis cheap; the relay chain is the same as above.
    folder = tmp_path_factory.mktemp("call_graph_linear")
    return call_graph.generate_package(folder, modules=20, functions=400, fan_out=1)


def test_depth_option_bounds_deep_repeat(linear_package):
    deep = linear_package.deep_module
    text = deep.read_text()
    depth = linear_package.deep_call_depth

    just_enough = check_source(text, str(deep), Settings(max_call_depth=depth))
    one_short = check_source(text, str(deep), Settings(max_call_depth=depth - 1))

    assert [f.line for f in just_enough] == [linear_package.deep_line]
    assert one_short == []


def test_default_depth_finds_only_shallow_repeat(linear_package):
    found = []
    for path in linear_package.modules:
        found.extend((path, f.line) for f in check_source(path.read_text(), str(path)))
    assert found == call_graph.expected_findings(linear_package, DEFAULT_MAX_CALL_DEPTH)
