"""The flake8 plugin's result cache: warm runs repeat the output without analysing, and edits invalidate entries.

End-to-end checks run the real flake8 in a subprocess. Checks that a warm run does not analyse the file again call
the plugin class in this process and count the calls of `check_source`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import BUGGY_BLOCK, BUGGY_LINE, FIXED_BLOCK, parse_findings, run_flake8
from maskcheck import flake8_plugin
from maskcheck.cache import CACHE_DIR_NAME
from maskcheck.flake8_cache import text_state
from maskcheck.flake8_plugin import MaskcheckPlugin
from maskcheck.settings import Settings
from test_cache import MIXER_IGNORES_MASK, MIXER_PASSES_MASK, MODEL_FINDING_LINE, write_package

# A marker file makes the test folder the project root, so the cache goes in `<project>/.maskcheck_cache`.
PROJECT_MARKER = "setup.cfg"


@pytest.fixture(autouse=True)
def default_plugin_state(monkeypatch):
    """Keep `parse_options` calls in one test from changing the class attributes that the next test reads."""
    monkeypatch.setattr(MaskcheckPlugin, "settings", Settings())
    monkeypatch.setattr(MaskcheckPlugin, "disable_noqa", False)
    monkeypatch.setattr(MaskcheckPlugin, "caches", None)


@pytest.fixture
def project(tmp_path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / PROJECT_MARKER).write_text("")
    return folder


@pytest.fixture
def package(project) -> Path:
    """`pkg/model.py` has MSK101 only because `pkg/mixer.py` passes the mask on to nn.MultiheadAttention."""
    return write_package(project / "pkg")


def entry_files(cache_dir: Path) -> List[Path]:
    return sorted(cache_dir.glob("v*/*/*.json"))


def flake8_lines(project: Path, *args: str, stdin: Optional[bytes] = None) -> List[tuple]:
    """Run flake8 with only the MSK codes in `project` and return its parsed findings. A traceback fails the test."""
    result = run_flake8(["--select", "MSK", *args], cwd=project, stdin=stdin)
    stderr = result.stderr.decode()
    assert "Traceback" not in stderr, stderr
    assert result.returncode in (0, 1), stderr
    return parse_findings(result.stdout.decode())


def codes_and_lines(findings: List[tuple]) -> List[tuple]:
    return [(path, line, code) for path, line, _, code, _ in findings]


class CountingCheck:
    """Wraps the plugin's `check_source` and counts the files it analyses in this process."""

    def __init__(self, monkeypatch):
        self.original = flake8_plugin.check_source
        self.paths: List[str] = []
        monkeypatch.setattr(flake8_plugin, "check_source", self)

    def __call__(self, source, path, settings):
        self.paths.append(path)
        return self.original(source, path, settings)


def parse_plugin_options(**overrides) -> None:
    """Call `parse_options` as flake8 does, with the defaults of every option the plugin registers."""
    values = {
        "maskcheck_head_count_names": "",
        "maskcheck_consumer_callables": "",
        "maskcheck_max_call_depth": "",
        "maskcheck_no_cache": False,
        "maskcheck_cache_dir": None,
        "disable_noqa": False,
    }
    values.update(overrides)
    MaskcheckPlugin.parse_options(argparse.Namespace(**values))


def run_plugin(path: Path, text: Optional[str] = None, filename: Optional[str] = None) -> list:
    """Run the plugin on `text` (default: the file's content), shown as `filename` (default: `path`)."""
    if text is None:
        text = path.read_text()
    plugin = MaskcheckPlugin(tree=None, lines=text.splitlines(keepends=True), filename=filename or str(path))
    return list(plugin.run())


# -------------------------------------------------------------------------------------------------------------------
# In this process: hits skip the analysis


def test_warm_plugin_skips_analysis(project, monkeypatch):
    (project / "block.py").write_text(BUGGY_BLOCK)
    parse_plugin_options()
    cold = run_plugin(project / "block.py")

    parse_plugin_options()
    counter = CountingCheck(monkeypatch)
    warm = run_plugin(project / "block.py")

    assert [(line, code[:6]) for line, _, code, _ in cold] == [(BUGGY_LINE, "MSK101")]
    assert warm == cold
    assert counter.paths == []
    assert len(entry_files(project / CACHE_DIR_NAME)) == 1


def test_warm_plugin_repeats_unanalysable(project, monkeypatch):
    (project / "nul.py").write_text("x = 1\n")
    text = "x = 1\x00\n"
    parse_plugin_options()
    cold = run_plugin(project / "nul.py", text=text)

    parse_plugin_options()
    counter = CountingCheck(monkeypatch)
    warm = run_plugin(project / "nul.py", text=text)

    assert [(line, column) for line, column, _, _ in cold] == [(1, 0)]
    assert cold[0][2].startswith("MSK001 maskcheck could not analyse this file: contains a NUL byte")
    assert warm == cold
    assert counter.paths == []


def test_plugin_imported_module_edit_reanalyses(package, monkeypatch):
    model = package / "model.py"
    parse_plugin_options()
    assert [line for line, _, _, _ in run_plugin(model)] == [MODEL_FINDING_LINE]

    (package / "mixer.py").write_text(MIXER_IGNORES_MASK)
    parse_plugin_options()
    counter = CountingCheck(monkeypatch)
    after_edit = run_plugin(model)

    assert after_edit == []
    assert counter.paths == [str(model)]


def test_plugin_internal_error_not_cached(project, monkeypatch):
    (project / "block.py").write_text(BUGGY_BLOCK)
    parse_plugin_options()

    def fail(source, path, settings):
        raise RuntimeError("simulated analysis bug")

    monkeypatch.setattr(flake8_plugin, "check_source", fail)
    with pytest.raises(RuntimeError, match="simulated analysis bug"):
        run_plugin(project / "block.py")

    assert entry_files(project / CACHE_DIR_NAME) == []


def test_plugin_without_parse_options_has_no_cache(project):
    (project / "block.py").write_text(BUGGY_BLOCK)

    results = run_plugin(project / "block.py")

    assert [line for line, _, _, _ in results] == [BUGGY_LINE]
    assert not (project / CACHE_DIR_NAME).exists()


@pytest.mark.parametrize("filename", ["stdin", "-", "missing.py"])
def test_text_state_rejects_stdin_and_missing(project, monkeypatch, filename):
    monkeypatch.chdir(project)
    (project / "stdin").write_text(BUGGY_BLOCK)  # a file named like flake8's standard input is still not cached

    assert text_state(filename, BUGGY_BLOCK) is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda result: {"findings": [[True, 0, "MSK101 x"]], "source_error": None},
        lambda result: {"findings": [[0, 0, "MSK101 x"]], "source_error": None},
        lambda result: {"findings": [[1, 0]], "source_error": None},
        lambda result: {"findings": [], "source_error": 3},
        lambda result: {"findings": [[11, 15, "MSK101 x"]], "source_error": "too deep"},
        lambda result: {**result, "surprise": 1},
        lambda result: {"source_error": None},
        # flake8 splits a text at its first space and writes it as UTF-8: these crashed flake8 before.
        lambda result: {"findings": [[1, 0, "nocode"]], "source_error": None},
        lambda result: {"findings": [[1, 0, "MSK101 \ud800"]], "source_error": None},
        lambda result: {"findings": [[1, 0, "MSK101 a\nfake.py:1:1: MSK101 b"]], "source_error": None},
        lambda result: {"findings": [[1, 0, "E501 injected"]], "source_error": None},
        lambda result: {"findings": [], "source_error": "two\nlines"},
    ],
    ids=[
        "bool-line", "line-zero", "short-finding", "error-not-string", "error-and-findings", "extra", "missing",
        "no-space", "lone-surrogate", "newline", "other-code", "error-newline",
    ],
)
def test_malformed_plugin_entry_rewritten(project, monkeypatch, damage):
    (project / "block.py").write_text(BUGGY_BLOCK)
    parse_plugin_options()
    cold = run_plugin(project / "block.py")
    (entry_path,) = entry_files(project / CACHE_DIR_NAME)
    entry = json.loads(entry_path.read_text())
    good_result = entry["result"]
    entry_path.write_text(json.dumps({**entry, "result": damage(good_result)}))

    parse_plugin_options()
    counter = CountingCheck(monkeypatch)
    again = run_plugin(project / "block.py")

    assert again == cold
    assert counter.paths == [str(project / "block.py")]
    assert json.loads(entry_path.read_text())["result"] == good_result


# -------------------------------------------------------------------------------------------------------------------
# Through flake8


def test_flake8_warm_run_same_output(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    (project / "fixed.py").write_text(FIXED_BLOCK)

    cold = flake8_lines(project, ".")
    entries = entry_files(project / CACHE_DIR_NAME)
    warm = flake8_lines(project, ".")

    assert codes_and_lines(cold) == [("./block.py", BUGGY_LINE, "MSK101")]
    assert warm == cold
    assert len(entries) == 2
    assert entry_files(project / CACHE_DIR_NAME) == entries


def test_flake8_edited_file_changes_output(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    assert codes_and_lines(flake8_lines(project, "block.py")) == [("block.py", BUGGY_LINE, "MSK101")]

    (project / "block.py").write_text(FIXED_BLOCK)
    assert flake8_lines(project, "block.py") == []

    (project / "block.py").write_text(BUGGY_BLOCK)
    assert codes_and_lines(flake8_lines(project, "block.py")) == [("block.py", BUGGY_LINE, "MSK101")]


def test_flake8_edited_import_changes_output(package, project):
    model = os.path.join("pkg", "model.py")
    expected = [(model, MODEL_FINDING_LINE, "MSK101")]
    assert codes_and_lines(flake8_lines(project, model)) == expected

    (package / "mixer.py").write_text(MIXER_IGNORES_MASK)
    assert flake8_lines(project, model) == []

    (package / "mixer.py").write_text(MIXER_PASSES_MASK)
    assert codes_and_lines(flake8_lines(project, model)) == expected


def test_flake8_created_import_changes_output(package, project):
    (package / "mixer.py").unlink()
    model = os.path.join("pkg", "model.py")
    assert flake8_lines(project, model) == []

    (package / "mixer.py").write_text(MIXER_PASSES_MASK)

    assert codes_and_lines(flake8_lines(project, model)) == [(model, MODEL_FINDING_LINE, "MSK101")]


def test_flake8_stdin_not_answered_from_file_entry(project):
    (project / "block.py").write_text(FIXED_BLOCK)
    assert flake8_lines(project, "block.py") == []

    unsaved = flake8_lines(project, "--stdin-display-name", "block.py", "-", stdin=BUGGY_BLOCK.encode())
    saved_again = flake8_lines(project, "block.py")

    assert codes_and_lines(unsaved) == [("block.py", BUGGY_LINE, "MSK101")]
    assert saved_again == []


def test_flake8_stdin_fixed_text_over_buggy_file(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    assert len(flake8_lines(project, "block.py")) == 1

    unsaved = flake8_lines(project, "--stdin-display-name", "block.py", "-", stdin=FIXED_BLOCK.encode())

    assert unsaved == []


def test_flake8_stdin_without_name_not_cached(project):
    findings = flake8_lines(project, "-", stdin=BUGGY_BLOCK.encode())

    assert codes_and_lines(findings) == [("stdin", BUGGY_LINE, "MSK101")]
    assert not (project / CACHE_DIR_NAME).exists()


def test_flake8_no_cache_option(project):
    (project / "block.py").write_text(BUGGY_BLOCK)

    findings = flake8_lines(project, "--maskcheck-no-cache", "block.py")

    assert codes_and_lines(findings) == [("block.py", BUGGY_LINE, "MSK101")]
    assert not (project / CACHE_DIR_NAME).exists()


def test_flake8_no_cache_from_config(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    (project / PROJECT_MARKER).write_text("[flake8]\nselect = MSK\nmaskcheck-no-cache = true\n")

    # Without --isolated, so that flake8 reads setup.cfg.
    command = [sys.executable, "-m", "flake8", "block.py"]
    result = subprocess.run(command, cwd=project, capture_output=True, timeout=600)

    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    assert codes_and_lines(parse_findings(result.stdout.decode())) == [("block.py", BUGGY_LINE, "MSK101")]
    assert not (project / CACHE_DIR_NAME).exists()


def test_flake8_cache_dir_option(project, tmp_path):
    (project / "block.py").write_text(BUGGY_BLOCK)
    elsewhere = tmp_path / "elsewhere"

    cold = flake8_lines(project, "--maskcheck-cache-dir", str(elsewhere), "block.py")
    warm = flake8_lines(project, "--maskcheck-cache-dir", str(elsewhere), "block.py")

    assert codes_and_lines(cold) == [("block.py", BUGGY_LINE, "MSK101")]
    assert warm == cold
    assert len(entry_files(elsewhere)) == 1
    assert not (project / CACHE_DIR_NAME).exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders anyway"
)
def test_flake8_read_only_project(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    project.chmod(0o555)
    try:
        result = run_flake8(["--select", "MSK", "block.py"], cwd=project)
    finally:
        project.chmod(0o755)

    assert result.stderr == b""
    assert codes_and_lines(parse_findings(result.stdout.decode())) == [("block.py", BUGGY_LINE, "MSK101")]
    assert not (project / CACHE_DIR_NAME).exists()


def test_flake8_unwritable_cache_folder(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    (project / "other.py").write_text(BUGGY_BLOCK)
    # A file in place of the cache folder makes every write fail, also for root.
    (project / CACHE_DIR_NAME).write_text("not a folder")

    result = run_flake8(["--select", "MSK", "."], cwd=project)

    assert result.stderr == b""
    assert sorted(codes_and_lines(parse_findings(result.stdout.decode()))) == [
        ("./block.py", BUGGY_LINE, "MSK101"),
        ("./other.py", BUGGY_LINE, "MSK101"),
    ]
    assert (project / CACHE_DIR_NAME).read_text() == "not a folder"


def test_flake8_and_cli_share_cache_folder(project, run_cli, monkeypatch):
    monkeypatch.chdir(project)
    (project / "block.py").write_text(BUGGY_BLOCK)
    expected = [("block.py", BUGGY_LINE, "MSK101")]

    for text, findings in [(BUGGY_BLOCK, expected), (FIXED_BLOCK, []), (BUGGY_BLOCK, expected)]:
        (project / "block.py").write_text(text)
        for _ in range(2):
            cli_result = run_cli(["-q", "--jobs", "1", "block.py"])
            flake8_result = flake8_lines(project, "block.py")

            assert codes_and_lines(parse_findings(cli_result.out)) == findings
            assert codes_and_lines(flake8_result) == findings
            assert flake8_result == parse_findings(cli_result.out)

    # One entry per front end for the one file: neither overwrote the other's.
    assert len(entry_files(project / CACHE_DIR_NAME)) == 2


def test_flake8_two_jobs(package, project):
    for index in range(4):
        (project / f"block_{index}.py").write_text(BUGGY_BLOCK)

    serial = flake8_lines(project, "--maskcheck-no-cache", ".")
    cold = flake8_lines(project, "--jobs", "2", ".")
    warm = flake8_lines(project, "--jobs", "2", ".")

    assert len(serial) == 5
    assert sorted(cold) == sorted(serial)
    assert sorted(warm) == sorted(serial)
    # block_0..3, pkg/__init__.py, pkg/mixer.py and pkg/model.py each have one entry.
    assert len(entry_files(project / CACHE_DIR_NAME)) == 7
