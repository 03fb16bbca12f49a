"""The flake8 plugin, run through the real flake8 and called directly."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Dict, List

import pytest

from conftest import (
    BUGGY_BLOCK,
    BUGGY_COLUMN,
    BUGGY_LINE,
    CUSTOM_HEAD_COUNT_BLOCK,
    FIXED_BLOCK,
    parse_findings,
    run_flake8,
)
from maskcheck import flake8_plugin
from maskcheck.analysis import source_cache
from maskcheck.findings import Finding
from maskcheck.parsing import MAX_NESTING_DEPTH
from maskcheck.flake8_plugin import MaskcheckPlugin
from maskcheck.settings import Settings


@pytest.fixture(autouse=True)
def default_plugin_settings(monkeypatch):
    """Keep `parse_options` calls in one test from changing the class-level settings that the next test reads."""
    monkeypatch.setattr(MaskcheckPlugin, "settings", Settings())
    monkeypatch.setattr(MaskcheckPlugin, "caches", None)
    monkeypatch.setattr(MaskcheckPlugin, "disable_noqa", False)
    monkeypatch.setattr(MaskcheckPlugin, "parallel_jobs", 1)
    monkeypatch.setattr(source_cache, "_SHARERS", 1)


def flake8_findings(result) -> list:
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    return parse_findings(result.stdout.decode())


def test_flake8_reports_finding(tmp_path, run_cli, monkeypatch):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    monkeypatch.chdir(tmp_path)

    result = run_flake8(["--select", "MSK", "block.py"], cwd=tmp_path)
    cli_result = run_cli(["-q", "block.py"])

    assert result.returncode == 1
    assert flake8_findings(result) == parse_findings(cli_result.out)
    assert flake8_findings(result)[0][:4] == ("block.py", BUGGY_LINE, BUGGY_COLUMN, "MSK101")


def test_flake8_silent_on_correct_version(tmp_path):
    (tmp_path / "block.py").write_text(FIXED_BLOCK)

    result = run_flake8(["--select", "MSK", "block.py"], cwd=tmp_path)

    assert result.returncode == 0
    assert result.stdout == b""


def test_plugin_registered_with_flake8(tmp_path):
    result = run_flake8(["--version"], cwd=tmp_path)

    assert b"maskcheck: " in result.stdout


def test_flake8_ignore_and_default_select(tmp_path):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)

    default = run_flake8(["block.py"], cwd=tmp_path)
    ignored = run_flake8(["--extend-ignore", "MSK101", "block.py"], cwd=tmp_path)

    assert [finding[3] for finding in flake8_findings(default)] == ["MSK101"]
    assert flake8_findings(ignored) == []


def test_flake8_noqa(tmp_path):
    (tmp_path / "block.py").write_text(
        BUGGY_BLOCK.replace("(self.num_heads, 1, 1)\n", "(self.num_heads, 1, 1)  # noqa: MSK101\n")
    )

    result = run_flake8(["--select", "MSK", "block.py"], cwd=tmp_path)

    assert result.returncode == 0


def test_flake8_stdin(tmp_path):
    result = run_flake8(
        ["--select", "MSK", "--stdin-display-name", "model.py", "-"], cwd=tmp_path, stdin=BUGGY_BLOCK.encode()
    )

    assert flake8_findings(result)[0][:4] == ("model.py", BUGGY_LINE, BUGGY_COLUMN, "MSK101")


def test_head_count_names_option(tmp_path):
    (tmp_path / "block.py").write_text(CUSTOM_HEAD_COUNT_BLOCK)

    without = run_flake8(["--select", "MSK", "block.py"], cwd=tmp_path)
    with_names = run_flake8(
        ["--select", "MSK", "--maskcheck-head-count-names", "other,attn_splits", "block.py"], cwd=tmp_path
    )

    assert flake8_findings(without) == []
    assert [finding[1:4] for finding in flake8_findings(with_names)] == [(11, 16, "MSK101")]


def test_head_count_names_from_config_file(tmp_path):
    (tmp_path / "block.py").write_text(CUSTOM_HEAD_COUNT_BLOCK)
    (tmp_path / "setup.cfg").write_text("[flake8]\nselect = MSK\nmaskcheck-head-count-names = attn_splits\n")

    # Without --isolated, so that flake8 reads setup.cfg.
    command = [sys.executable, "-m", "flake8", "block.py"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=600)

    assert [finding[1:4] for finding in flake8_findings(result)] == [(11, 16, "MSK101")]


def test_head_count_names_in_worker_processes(tmp_path):
    for index in range(4):
        (tmp_path / f"block_{index}.py").write_text(CUSTOM_HEAD_COUNT_BLOCK)

    result = run_flake8(
        ["--select", "MSK", "--jobs", "2", "--maskcheck-head-count-names", "attn_splits", "."], cwd=tmp_path
    )

    assert len(flake8_findings(result)) == 4


RELAYED_BLOCK = """\
import torch.nn as nn

attn = nn.MultiheadAttention(8, 2)


def relay(x, mask):
    return attn(x, x, x, attn_mask=mask)


def expand(x, mask, num_heads):
    return relay(x, mask.repeat(num_heads, 1, 1))
"""


def test_max_call_depth_option(tmp_path):
    """The expansion reaches the layer one call down: depth 0 follows no call, the default follows it."""
    (tmp_path / "model.py").write_text(RELAYED_BLOCK)

    default = run_flake8(["--select", "MSK", "model.py"], cwd=tmp_path)
    no_calls = run_flake8(["--select", "MSK", "--maskcheck-max-call-depth", "0", "model.py"], cwd=tmp_path)

    assert [finding[1:4] for finding in flake8_findings(default)] == [(11, 21, "MSK101")]
    assert flake8_findings(no_calls) == []


def test_invalid_max_call_depth_stops_flake8(tmp_path):
    (tmp_path / "model.py").write_text(RELAYED_BLOCK)

    result = run_flake8(["--maskcheck-max-call-depth", "-3", "model.py"], cwd=tmp_path)

    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0
    assert "--maskcheck-max-call-depth: invalid call depth '-3'" in output
    assert "Traceback" not in output


def test_invalid_head_count_name_stops_flake8(tmp_path):
    (tmp_path / "block.py").write_text(FIXED_BLOCK)

    result = run_flake8(["--maskcheck-head-count-names", "attn-splits", "block.py"], cwd=tmp_path)

    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0
    assert "--maskcheck-head-count-names: 'attn-splits' is not a Python identifier" in output
    assert "Traceback" not in output


def test_syntax_error_left_to_flake8(tmp_path):
    (tmp_path / "old.py").write_text("print 'hello'\n")
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)

    result = run_flake8(["--select", "E999,MSK", "."], cwd=tmp_path)

    codes = sorted((path, code) for path, _, _, code, _ in flake8_findings(result))
    assert codes == [("./block.py", "MSK101"), ("./old.py", "E999")]


def test_plugin_reports_unanalysable_file():
    # Deeper than the engine analyses. flake8's own pyflakes fails on such a file too, so the plugin is run
    # directly rather than through flake8.
    terms = MAX_NESTING_DEPTH + 10
    lines = ["x = " + " + ".join(["1"] * terms) + "\n"]

    results = list(MaskcheckPlugin(tree=None, lines=lines, filename="long_sum.py").run())

    assert [(line, col) for line, col, _, _ in results] == [(1, 0)]
    assert results[0][2].startswith("MSK001 maskcheck could not analyse this file: nests ")


def test_plugin_yields_flake8_tuples():
    plugin = MaskcheckPlugin(tree=None, lines=BUGGY_BLOCK.splitlines(keepends=True), filename="block.py")

    results = list(plugin.run())

    assert len(results) == 1
    line, column, text, checker = results[0]
    assert (line, column) == (BUGGY_LINE, BUGGY_COLUMN - 1)
    assert text.startswith("MSK101 `mask.repeat(self.num_heads, 1, 1)`")
    assert checker is MaskcheckPlugin


def test_plugin_reports_unanalysable_file():
    plugin = MaskcheckPlugin(tree=None, lines=["x = 1\x00\n"], filename="nul.py")

    results = list(plugin.run())

    assert len(results) == 1
    line, column, text, _ = results[0]
    assert (line, column) == (1, 0)
    assert text.startswith("MSK001 maskcheck could not analyse this file: contains a NUL byte")


def test_plugin_joins_multiline_message(monkeypatch):
    finding = Finding("a.py", 2, 5, "MSK101", "quotes `f(\n    x,\n)` over lines")
    monkeypatch.setattr(flake8_plugin, "check_source", lambda source, path, settings: [finding])
    plugin = MaskcheckPlugin(tree=None, lines=["x = 1\n"], filename="a.py")

    assert list(plugin.run()) == [(2, 4, "MSK101 quotes `f( x, )` over lines", MaskcheckPlugin)]


def test_plugin_passes_lines_and_filename(monkeypatch):
    calls = []

    def record(source, path, settings):
        calls.append((source, path, settings))
        return []

    monkeypatch.setattr(flake8_plugin, "check_source", record)
    MaskcheckPlugin.parse_options(argparse.Namespace(maskcheck_head_count_names=["n_attn"]))
    plugin = MaskcheckPlugin(tree=None, lines=["a = 1\n", "b = 2"], filename="pkg/a.py")

    assert list(plugin.run()) == []
    assert calls == [("a = 1\nb = 2", "pkg/a.py", Settings(extra_head_count_names=frozenset({"n_attn"})))]


def test_parse_options_accepts_unsplit_default():
    MaskcheckPlugin.parse_options(argparse.Namespace(maskcheck_head_count_names=""))

    assert MaskcheckPlugin.settings == Settings()


@pytest.mark.parametrize(
    "jobs, filenames, cores, expected",
    [
        ("auto", ["src"], 4, 4),
        ("3", ["src"], 4, 3),
        ("1", ["src"], 4, 1),
        ("0", ["src"], 4, 1),
        ("auto", ["-"], 4, 1),
        (None, ["src"], 4, 1),
    ],
)
def test_parse_options_counts_flake8_jobs(monkeypatch, jobs, filenames, cores, expected):
    from flake8.main.options import JobsArgument

    monkeypatch.setattr(flake8_plugin.os, "cpu_count", lambda: cores)
    values = {"maskcheck_head_count_names": "", "filenames": filenames}
    if jobs is not None:
        values["jobs"] = JobsArgument(jobs)

    MaskcheckPlugin.parse_options(argparse.Namespace(**values))

    assert MaskcheckPlugin.parallel_jobs == expected


@pytest.mark.parametrize("in_worker, expected", [(True, 3), (False, 1)], ids=["worker", "main-process"])
def test_run_shares_cache_budget_in_workers(monkeypatch, in_worker, expected):
    """flake8's workers divide the parsed-module cache budget, and its main process keeps all of it."""
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object() if in_worker else None)
    monkeypatch.setattr(flake8_plugin, "check_source", lambda source, path, settings: [])
    monkeypatch.setattr(MaskcheckPlugin, "parallel_jobs", 3)
    source_cache.share_between(7)
    plugin = MaskcheckPlugin(tree=None, lines=["a = 1\n"], filename="pkg/a.py")

    assert list(plugin.run()) == []
    assert source_cache.sharers() == expected


def test_flake8_workers_report_their_share(tmp_path):
    """Through the real flake8 with two jobs, each worker checks with half the budget (a probe plugin reads it)."""
    for index in range(6):
        (tmp_path / f"mod_{index}.py").write_text("x = 1\n")
    (tmp_path / "probe_plugin.py").write_text(
        "import os\n"
        "from maskcheck.analysis import source_cache\n"
        "class Probe:\n"
        "    name = 'probe'\n"
        "    version = '0'\n"
        "    def __init__(self, tree):\n"
        "        pass\n"
        "    def run(self):\n"
        "        yield 1, 0, f'PRB100 sharers={source_cache.sharers()} pid={os.getpid()}', type(self)\n"
    )
    (tmp_path / "setup.cfg").write_text("[flake8:local-plugins]\nextension =\n    PRB = probe_plugin:Probe\npaths = .\n")
    command = [sys.executable, "-m", "flake8", "--select", "MSK,PRB", "-j", "2", *[f"mod_{i}.py" for i in range(6)]]

    # Not `run_flake8`, whose --isolated would ignore the local plugin in setup.cfg.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=600)

    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 6
    # flake8 runs the local probe before maskcheck's plugin on a file, so each worker's first file may still show
    # the value before maskcheck's first call in that process.
    by_process: Dict[str, List[str]] = {}
    for line in lines:
        sharers, process = line.split("sharers=")[1].split(" pid=")
        by_process.setdefault(process, []).append(sharers)
    for values in by_process.values():
        assert values.count("1") <= 1, lines
        assert set(values) <= {"1", "2"}, lines
    assert any("sharers=2" in line for line in lines), lines


def test_python_api_reads_options_from_config(tmp_path, monkeypatch):
    """The docs send users of flake8's Python API to a config file, because its keyword options come too late."""
    from flake8.api import legacy

    (tmp_path / "setup.cfg").write_text("[flake8]\nmaskcheck-head-count-names = n_attn\n")
    monkeypatch.chdir(tmp_path)

    legacy.get_style_guide(select=["MSK"], maskcheck_consumer_callables=["lib.attend"])

    assert MaskcheckPlugin.settings.extra_head_count_names == frozenset({"n_attn"})
    assert MaskcheckPlugin.settings.extra_consumer_callables == frozenset()
