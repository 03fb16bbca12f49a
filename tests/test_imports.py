"""Importing the engine and both front ends must not import torch or flake8: both are slow or may be missing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRONT_END_MODULES = [
    "maskcheck.engine",
    "maskcheck.flake8_plugin",
    "maskcheck.cli",
    "maskcheck.files",
    "maskcheck.noqa",
    "maskcheck.__main__",
]


def heavy_modules_after_import(modules) -> list:
    """Import `modules` in a fresh interpreter and return which of torch and flake8 it then holds."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'flake8') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_front_ends_import_neither_torch_nor_flake8():
    assert heavy_modules_after_import(FRONT_END_MODULES) == []


@pytest.mark.parametrize("module", FRONT_END_MODULES)
def test_each_module_alone(module):
    assert heavy_modules_after_import([module]) == []


def test_check_detects_flake8_import():
    # The same check must see an import when one happens, or the tests above prove nothing.
    assert heavy_modules_after_import(["flake8.main.application"]) == ["flake8"]
