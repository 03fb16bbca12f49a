"""libcst, and other modules a run may not need, are imported only when it needs them.

Importing libcst takes 0.5-0.8 s. So the front ends must not import it, and neither may a run whose files all
come from the result cache or all fail the engine's pre-filter. A run over cached files also skips the worker
processes, the pre-filter and the output formats it does not print. Each test runs a fresh interpreter and reads
`sys.modules` there, because the test process has long since imported libcst.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUGGY_BLOCK, BUGGY_LINE, FIXED_BLOCK
from test_cache import MIXER_IGNORES_MASK, MIXER_PASSES_MASK, MODEL, MODEL_FINDING_LINE
from maskcheck import cli
from maskcheck.cache import installed_libcst_version
from maskcheck.rules import RULES

# A module that names no attention consumer and imports nothing of its project: every pre-filter rejects it.
PLAIN_MODULE = "import os\n\n\ndef joined(*parts):\n    return os.sep.join(parts)\n"

RESULT_PREFIX = "LAZY-IMPORT-RESULT "


def run_child(body: str, cwd: Path) -> dict:
    """Run `body` in a fresh interpreter and return the dict it stores in `result`, plus whether libcst loaded.

    `body` may set keys of the dict `result`. Output of the code under test stays apart from the result line.
    """
    code = (
        "import json, sys\n"
        "result = {}\n"
        f"{body}\n"
        "result['libcst'] = 'libcst' in sys.modules\n"
        f"print({RESULT_PREFIX!r} + json.dumps(result))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert len(lines) == 1, completed.stdout
    return json.loads(lines[0][len(RESULT_PREFIX) :])


def run_cli_child(args, cwd: Path) -> dict:
    """Run `maskcheck --jobs 1 ARGS` in a fresh interpreter and return its exit status, output and libcst state.

    One job keeps the analysis in the process whose modules are read.
    """
    body = (
        "import contextlib, io\n"
        "from maskcheck.cli import main\n"
        "output = io.StringIO()\n"
        "with contextlib.redirect_stdout(output):\n"
        f"    result['status'] = main(['--jobs', '1', *{list(args)!r}])\n"
        "result['output'] = output.getvalue()\n"
    )
    return run_child(body, cwd)


def run_cli_imports(args, cwd: Path, modules) -> dict:
    """Run `maskcheck ARGS` in a fresh interpreter; return its exit status, output and which of `modules` loaded."""
    body = (
        "import contextlib, io\n"
        "from maskcheck.cli import main\n"
        "output = io.StringIO()\n"
        "with contextlib.redirect_stdout(output):\n"
        f"    result['status'] = main({list(args)!r})\n"
        "result['output'] = output.getvalue()\n"
        f"result['imported'] = [name for name in {list(modules)!r} if name in sys.modules]\n"
    )
    return run_child(body, cwd)


def run_flake8_child(args, cwd: Path, modules=()) -> dict:
    """Run flake8 with one job in a fresh interpreter, so the plugin runs in the process whose modules are read.

    The result also names which of `modules` loaded.
    """
    report = cwd / "flake8-report.txt"
    # flake8 appends to an existing output file.
    report.unlink(missing_ok=True)
    body = (
        "from flake8.main.cli import main\n"
        f"result['status'] = main(['--isolated', '--jobs', '1', '--output-file', {str(report)!r}, *{list(args)!r}])\n"
        f"result['imported'] = [name for name in {list(modules)!r} if name in sys.modules]\n"
    )
    result = run_child(body, cwd)
    result["output"] = report.read_text()
    return result


@pytest.fixture
def project(tmp_path):
    """A project with a package: one file with an MSK101 finding, one cross-module finding and a plain module."""
    root = tmp_path / "project"
    package = root / "pkg"
    package.mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.maskcheck]\nselect = ["MSK101"]\n')
    (package / "__init__.py").write_text("")
    (package / "block.py").write_text(BUGGY_BLOCK)
    (package / "mixer.py").write_text(MIXER_PASSES_MASK)
    (package / "model.py").write_text(MODEL)
    (package / "paths.py").write_text(PLAIN_MODULE)
    return root


def finding_lines(output: str, name: str):
    return sorted(int(line.split(":")[1]) for line in output.splitlines() if line.startswith(f"pkg/{name}:"))


@pytest.mark.parametrize(
    "module", ["maskcheck.cli", "maskcheck.engine", "maskcheck.flake8_plugin", "maskcheck.__main__"]
)
def test_front_end_import_skips_libcst(module, tmp_path):
    assert run_child(f"import {module}", tmp_path)["libcst"] is False


def test_import_check_sees_libcst(tmp_path):
    # The same check must see the import when the analysis is imported, or the tests here prove nothing.
    assert run_child("import maskcheck.analysis.module", tmp_path)["libcst"] is True


@pytest.mark.parametrize("option", ["--version", "--help"])
def test_version_and_help_skip_libcst(option, tmp_path):
    body = (
        "import contextlib, io\n"
        "from maskcheck.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as output:\n"
        "    try:\n"
        f"        result['status'] = main([{option!r}])\n"
        "    except SystemExit as stop:\n"
        "        result['status'] = stop.code\n"
        "result['output'] = output.getvalue()\n"
    )
    result = run_child(body, tmp_path)

    assert result["status"] in (0, None)
    assert "maskcheck" in result["output"]
    assert result["libcst"] is False


def test_warm_run_skips_libcst(project):
    cold = run_cli_child(["pkg"], project)
    warm = run_cli_child(["pkg"], project)

    assert cold["libcst"] is True
    assert finding_lines(cold["output"], "block.py") == [BUGGY_LINE]
    assert finding_lines(cold["output"], "model.py") == [MODEL_FINDING_LINE]
    assert warm["libcst"] is False
    assert warm["status"] == cold["status"] == 1
    assert warm["output"] == cold["output"]


# Modules that a run served entirely from the result cache has no use for: the worker processes, the pre-filter
# and its module index, the engine and libcst, the noqa parser, file rewriting, and the output formats not chosen.
UNUSED_WHEN_WARM = (
    "multiprocessing",
    "concurrent.futures",
    "maskcheck.reach",
    "maskcheck.index_store",
    "maskcheck.engine",
    "maskcheck.parsing",
    "maskcheck.noqa",
    "maskcheck.rewrite",
    "maskcheck.report.full",
    "maskcheck.report.json_format",
    "maskcheck.report.github",
    "maskcheck.report.sarif",
    "maskcheck.report.junit",
    "xml.etree",
    "libcst",
)


@pytest.mark.parametrize("jobs", [[], ["--jobs", "1"]], ids=["default-jobs", "one-job"])
def test_warm_run_imports_only_what_it_uses(project, jobs):
    cold = run_cli_imports([*jobs, "pkg"], project, UNUSED_WHEN_WARM)
    warm = run_cli_imports([*jobs, "pkg"], project, UNUSED_WHEN_WARM)

    # The cold run analyses in this process or starts workers, so it imports some of them: the check can detect them.
    assert cold["imported"]
    assert warm["imported"] == []
    assert warm["status"] == cold["status"] == 1
    assert warm["output"] == cold["output"]
    assert finding_lines(warm["output"], "model.py") == [MODEL_FINDING_LINE]


def test_runner_names_index_store_logger():
    # The runner filters the index store's log records by this name without importing the module.
    from maskcheck import index_store, runner

    assert runner.INDEX_LOG_NAME == index_store.LOG.name


def test_run_without_config_skips_toml_parser(tmp_path):
    (tmp_path / "plain.py").write_text(PLAIN_MODULE)

    result = run_cli_imports(["--isolated", "plain.py"], tmp_path, ["tomllib", "tomli"])

    assert result["status"] == 0
    assert result["imported"] == []


def test_config_file_loads_toml_parser(project):
    # The counterpart of the test above: reading pyproject.toml does import the parser, and the check detects it.
    parser = "tomllib" if sys.version_info >= (3, 11) else "tomli"

    result = run_cli_imports(["--jobs", "1", "pkg"], project, [parser])

    assert result["status"] == 1
    assert result["imported"] == [parser]


def test_changed_file_after_warm_run_loads_libcst(project):
    run_cli_child(["pkg"], project)
    (project / "pkg" / "block.py").write_text(FIXED_BLOCK)

    result = run_cli_child(["pkg"], project)

    assert result["libcst"] is True
    assert finding_lines(result["output"], "block.py") == []
    assert finding_lines(result["output"], "model.py") == [MODEL_FINDING_LINE]


def test_cache_records_lookups_after_late_import(project):
    # The analysis is imported only after the run started, and the lookup of `pkg.mixer` must still be recorded.
    # Otherwise the second run would replay model.py's finding from its stale entry.
    run_cli_child(["pkg/model.py"], project)
    (project / "pkg" / "mixer.py").write_text(MIXER_IGNORES_MASK)

    result = run_cli_child(["pkg/model.py"], project)

    assert result["libcst"] is True
    assert result["status"] == 0
    assert finding_lines(result["output"], "model.py") == []


def test_cold_run_of_plain_files_skips_libcst(tmp_path):
    for name in ("first.py", "second.py"):
        (tmp_path / name).write_text(PLAIN_MODULE)

    for run in ("fills the cache", "reads the cache"):
        result = run_cli_child(["first.py", "second.py"], tmp_path)
        assert result["status"] == 0, run
        assert result["output"] == "", run
        assert result["libcst"] is False, run


def test_flake8_on_plain_file_skips_libcst(tmp_path):
    (tmp_path / "plain.py").write_text(PLAIN_MODULE)

    result = run_flake8_child(["--select", "MSK", "plain.py"], tmp_path)

    assert result["status"] == 0
    assert result["output"] == ""
    assert result["libcst"] is False


def test_flake8_on_buggy_file_reports(tmp_path):
    (tmp_path / "plain.py").write_text(PLAIN_MODULE)
    (tmp_path / "buggy.py").write_text(BUGGY_BLOCK)

    result = run_flake8_child(["--select", "MSK", "plain.py", "buggy.py"], tmp_path)

    assert result["status"] == 1
    assert [line.split(":")[:2] for line in result["output"].splitlines()] == [["buggy.py", str(BUGGY_LINE)]]
    assert " MSK101 " in result["output"]
    assert result["libcst"] is True


# Modules that a flake8 run over unchanged files has no use for: the command line, the runner, the pre-filter and
# its module index, and libcst.
UNUSED_BY_WARM_PLUGIN = ("maskcheck.cli", "maskcheck.runner", "maskcheck.reach", "maskcheck.index_store", "libcst")


def test_warm_flake8_run_imports_only_the_cache(project):
    cold = run_flake8_child(["--select", "MSK", "pkg"], project, UNUSED_BY_WARM_PLUGIN)
    warm = run_flake8_child(["--select", "MSK", "pkg"], project, UNUSED_BY_WARM_PLUGIN)

    assert set(cold["imported"]) == {"maskcheck.runner", "maskcheck.reach", "maskcheck.index_store", "libcst"}
    assert warm["imported"] == []
    assert warm["status"] == cold["status"] == 1
    assert warm["output"] == cold["output"]
    assert [line.split(":")[1] for line in warm["output"].splitlines() if "block.py" in line] == [str(BUGGY_LINE)]


def test_known_codes_match_registry():
    assert cli.known_codes() == tuple(sorted(RULES))


@pytest.mark.parametrize(
    "source, code",
    [
        ('CODE = "MSK900"\n\ndef check(use, settings):\n    return []\n', "MSK900"),
        ('CODE = "MSK900"\n', None),
        ("def check(use, settings):\n    return []\n", None),
        ('def check(use, settings):\n    CODE = "MSK900"\n', None),
        ("CODE = 900\n\ndef check(use, settings):\n    return []\n", None),
    ],
)
def test_rule_code_read_statically(source, code):
    assert cli._rule_code(ast.parse(source)) == code


def test_libcst_version_read_without_import():
    assert installed_libcst_version() == importlib.metadata.version("libcst")
