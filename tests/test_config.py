"""`[tool.maskcheck]` in pyproject.toml and `--config FILE`: discovery, every key, overrides and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUGGY_BLOCK, CUSTOM_HEAD_COUNT_BLOCK, REPO_ROOT, parse_findings, run_flake8
from maskcheck import cli
from maskcheck.config import KEYS, ConfigError, find_pyproject, load_config
from maskcheck.settings import DEFAULT_MAX_FILE_SIZE

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def reported_paths(result) -> list:
    return [finding[0] for finding in parse_findings(result.out)]


def capture_settings(monkeypatch) -> list:
    """Record the Settings that the engine receives, and return no findings."""
    seen = []

    def check(source, path, settings):
        seen.append(settings)
        return []

    monkeypatch.setattr(cli, "check_source", check)
    return seen


# -- discovery --------------------------------------------------------------------------------------------------


def test_pyproject_ignore_applies(project, run_cli):
    write(project / "pyproject.toml", '[tool.maskcheck]\nignore = ["MSK101"]\n')
    write(project / "block.py", BUGGY_BLOCK)

    result = run_cli(["block.py"])

    assert result.code == 0
    assert result.out == ""


def test_nearest_table_above_first_path(project, run_cli, monkeypatch):
    write(project / "repo" / "pyproject.toml", '[tool.maskcheck]\nignore = ["MSK"]\n')
    # A pyproject.toml without the table is passed over, as ruff passes over one without [tool.ruff].
    write(project / "repo" / "pkg" / "pyproject.toml", '[project]\nname = "pkg"\n')
    write(project / "repo" / "pkg" / "sub" / "block.py", BUGGY_BLOCK)
    write(project / "elsewhere" / "block.py", BUGGY_BLOCK)
    monkeypatch.chdir(project / "elsewhere")

    inside = run_cli(["../repo/pkg/sub/block.py"])
    outside = run_cli(["block.py"])

    assert inside.code == 0
    assert outside.code == 1


def test_find_pyproject_stops_at_nearest(project):
    outer = write(project / "pyproject.toml", "[tool.maskcheck]\n")
    inner = write(project / "a" / "pyproject.toml", "[tool.maskcheck]\n")
    write(project / "a" / "b" / "c.py", "")

    assert find_pyproject(str(project / "a" / "b" / "c.py")) == str(inner)
    assert find_pyproject(str(project / "x.py")) == str(outer)


def test_config_option_reads_top_level_keys(project, run_cli):
    write(project / "maskcheck.toml", 'ignore = ["MSK101"]\n')
    write(project / "block.py", BUGGY_BLOCK)

    result = run_cli(["--config", "maskcheck.toml", "block.py"])

    assert result.code == 0


def test_config_option_reads_pyproject_table(project, run_cli):
    write(project / "other" / "pyproject.toml", '[tool.maskcheck]\nignore = ["MSK101"]\n')
    write(project / "block.py", BUGGY_BLOCK)

    result = run_cli(["--config", "other/pyproject.toml", "block.py"])

    assert result.code == 0


def test_isolated_ignores_pyproject(project, run_cli):
    write(project / "pyproject.toml", '[tool.maskcheck]\nignore = ["MSK101"]\n')
    write(project / "block.py", BUGGY_BLOCK)

    result = run_cli(["--isolated", "block.py"])

    assert result.code == 1


def test_isolated_and_config_conflict(project, run_cli):
    result = run_cli(["--isolated", "--config", "x.toml", "."])

    assert result.code == 2
    assert "not allowed with argument" in result.err


# -- every key ----------------------------------------------------------------------------------------------------


def test_select_from_file(project, run_cli):
    write(project / "pyproject.toml", '[tool.maskcheck]\nselect = ["MSK1"]\nignore = ["MSK"]\n')
    write(project / "block.py", BUGGY_BLOCK)

    # The longer prefix wins: MSK1 (select) beats MSK (ignore).
    assert run_cli(["block.py"]).code == 1


def test_exclude_relative_to_config_folder(project, run_cli, monkeypatch):
    write(project / "pyproject.toml", '[tool.maskcheck]\nexclude = ["src/generated/*"]\n')
    write(project / "src" / "generated" / "block.py", BUGGY_BLOCK)
    write(project / "src" / "model.py", BUGGY_BLOCK)
    monkeypatch.chdir(project / "src")

    result = run_cli(["."])

    assert reported_paths(result) == ["model.py"]
    assert "1 file skipped" in result.err


def test_extend_exclude_adds_to_command_line_exclude(project, run_cli):
    write(project / "pyproject.toml", '[tool.maskcheck]\nextend-exclude = ["legacy"]\nexclude = ["gen"]\n')
    for folder in ("legacy", "gen", "models"):
        write(project / folder / "block.py", BUGGY_BLOCK)

    from_file = run_cli(["."])
    replaced = run_cli(["--exclude", "models", "."])

    assert reported_paths(from_file) == ["models/block.py"]
    # --exclude replaces the file's `exclude`, but the file's `extend-exclude` still applies.
    assert reported_paths(replaced) == ["gen/block.py"]


def test_per_file_ignores(project, run_cli):
    write(
        project / "pyproject.toml",
        '[tool.maskcheck]\n[tool.maskcheck.per-file-ignores]\n"tests/*" = ["MSK101"]\n"legacy_*.py" = ["MSK1"]\n',
    )
    write(project / "tests" / "test_block.py", BUGGY_BLOCK)
    write(project / "pkg" / "legacy_block.py", BUGGY_BLOCK)
    write(project / "pkg" / "block.py", BUGGY_BLOCK)

    result = run_cli(["."])

    assert reported_paths(result) == ["pkg/block.py"]


def test_head_count_names_from_file(project, run_cli):
    write(project / "pyproject.toml", '[tool.maskcheck]\nhead-count-names = ["attn_splits"]\n')
    write(project / "block.py", CUSTOM_HEAD_COUNT_BLOCK)

    from_file = run_cli(["block.py"])
    overridden = run_cli(["--head-count-names", "other_name", "block.py"])

    assert from_file.code == 1
    assert overridden.code == 0


def test_max_file_size_from_file(project, run_cli):
    write(project / "pyproject.toml", "[tool.maskcheck]\nmax-file-size = 100\n")
    write(project / "block.py", BUGGY_BLOCK)

    from_file = run_cli(["block.py"])
    overridden = run_cli(["--max-file-size", "100000", "block.py"])

    assert from_file.code == 0
    assert "over the 100-byte limit" in from_file.err
    assert overridden.code == 1


def test_consumer_callables_reach_settings(project, run_cli, monkeypatch):
    write(project / "pyproject.toml", '[tool.maskcheck]\nconsumer-callables = ["mylib.attn.fused", "fast_attention"]\n')
    write(project / "a.py", "x = 1\n")
    seen = capture_settings(monkeypatch)

    run_cli(["a.py"])
    run_cli(["--consumer-callables", "other.attention", "a.py"])

    assert seen[0].extra_consumer_callables == frozenset({"mylib.attn.fused", "fast_attention"})
    assert seen[1].extra_consumer_callables == frozenset({"other.attention"})


def test_defaults_without_file(project, run_cli, monkeypatch):
    write(project / "a.py", "x = 1\n")
    seen = capture_settings(monkeypatch)

    run_cli(["a.py"])

    assert seen[0].max_file_size == DEFAULT_MAX_FILE_SIZE
    assert seen[0].extra_head_count_names == frozenset()
    assert seen[0].extra_consumer_callables == frozenset()


# -- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, expected",
    [
        ('selct = ["MSK"]', ["unknown key 'selct'", "did you mean 'select'?", 'value ["MSK"]', "accepted keys:"]),
        ('head_count_names = ["n"]', ["unknown key 'head_count_names'", "did you mean 'head-count-names'?"]),
        ('select = "MSK101"', ["'select'", '"MSK101"', "expected a list of rule codes"]),
        ('ignore = ["MSK999"]', ["'ignore'", "unknown rule code 'MSK999'", "known codes: MSK101"]),
        ('ignore = ["msk101"]', ["unknown rule code 'msk101'", "did you mean MSK101?"]),
        ("max-file-size = true", ["'max-file-size'", "true", "positive whole number of bytes"]),
        ("max-file-size = 0", ["'max-file-size'", ": 0;", "positive whole number of bytes"]),
        ('max-file-size = "1MB"', ["'max-file-size'", '"1MB"']),
        ('head-count-names = ["n-heads"]', ["'head-count-names'", "'n-heads' is not a Python identifier"]),
        ('consumer-callables = ["my lib.f"]', ["'consumer-callables'", "'my lib.f' is not a dotted name"]),
        ('exclude = [1]', ["'exclude'", "[1]", "list of glob patterns"]),
        ('per-file-ignores = ["x"]', ["'per-file-ignores'", "table of glob patterns"]),
        ('per-file-ignores = {"a.py" = "MSK101"}', ["'per-file-ignores'", "the codes for 'a.py' are not a list"]),
        ('per-file-ignores = {"a.py" = ["E501"]}', ["'per-file-ignores' for 'a.py'", "unknown rule code 'E501'"]),
    ],
)
def test_invalid_configuration_exits_two(project, run_cli, table, expected):
    write(project / "pyproject.toml", f"[tool.maskcheck]\n{table}\n")
    write(project / "block.py", BUGGY_BLOCK)

    result = run_cli(["block.py"])

    assert result.code == 2
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("maskcheck: error: pyproject.toml: ")
    for text in expected:
        assert text in lines[0]


def test_invalid_toml_names_file(project, run_cli):
    write(project / "pyproject.toml", "[tool.maskcheck\n")

    result = run_cli(["."])

    assert result.code == 2
    assert result.err.startswith("maskcheck: error: pyproject.toml: invalid TOML: ")
    assert "Traceback" not in result.err


def test_missing_config_file(project, run_cli):
    result = run_cli(["--config", "missing.toml", "."])

    assert result.code == 2
    assert result.err == (
        "maskcheck: error: missing.toml: configuration file not found; check the path given to --config\n"
    )


def test_config_pyproject_without_table(project, run_cli):
    write(project / "pyproject.toml", '[project]\nname = "x"\n')

    result = run_cli(["--config", "pyproject.toml", "."])

    assert result.code == 2
    assert "has no [tool.maskcheck] table" in result.err


def test_every_key_is_documented():
    integration = (REPO_ROOT / "docs" / "integration.md").read_text(encoding="utf-8")
    for key in KEYS:
        assert f"| `{key}` |" in integration, f"docs/integration.md does not document {key}"


def test_load_config_returns_checked_values(project):
    path = write(
        project / "pyproject.toml",
        '[tool.maskcheck]\nselect = ["MSK"]\nhead-count-names = ["n_attn"]\nmax-file-size = 2048\n',
    )

    config = load_config(str(path), ["MSK101"])

    assert config.select == ("MSK",)
    assert config.ignore is None
    assert config.head_count_names == frozenset({"n_attn"})
    assert config.max_file_size == 2048
    assert config.base == str(project)


def test_load_config_rejects_table_that_is_not_a_table(project):
    path = write(project / "pyproject.toml", 'tool = {maskcheck = "on"}\n')

    with pytest.raises(ConfigError, match="must be a table") as raised:
        load_config(str(path), ["MSK101"])

    assert str(raised.value).endswith("write its settings under a [tool.maskcheck] header")


def test_tomli_declared_for_old_pythons():
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]

    assert "tomli>=1.1; python_version < '3.11'" in project["dependencies"]


# -- flake8 -------------------------------------------------------------------------------------------------------


def test_flake8_consumer_callables_option(tmp_path):
    write(tmp_path / "a.py", "x = 1\n")
    code = (
        "import argparse\n"
        "from maskcheck.flake8_plugin import MaskcheckPlugin\n"
        "MaskcheckPlugin.parse_options(argparse.Namespace(maskcheck_head_count_names=['n_attn'],\n"
        "    maskcheck_consumer_callables=['mylib.fused', 'fast']))\n"
        "print(sorted(MaskcheckPlugin.settings.extra_consumer_callables))\n"
        "print(sorted(MaskcheckPlugin.settings.extra_head_count_names))\n"
    )

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    assert result.stdout.splitlines() == ["['fast', 'mylib.fused']", "['n_attn']"]


def test_flake8_invalid_consumer_callable_stops_flake8(tmp_path):
    write(tmp_path / "a.py", "x = 1\n")

    result = run_flake8(["--maskcheck-consumer-callables", "my-lib", "a.py"], cwd=tmp_path)

    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode != 0
    assert "--maskcheck-consumer-callables: 'my-lib' is not a dotted name" in output
    assert "Traceback" not in output


def test_flake8_reads_options_from_its_config(tmp_path):
    write(tmp_path / "block.py", CUSTOM_HEAD_COUNT_BLOCK)
    write(tmp_path / "setup.cfg", "[flake8]\nselect = MSK\nmaskcheck-head-count-names = attn_splits\n")

    result = subprocess.run(
        [sys.executable, "-m", "flake8", "block.py"], cwd=tmp_path, capture_output=True, timeout=600
    )

    assert [finding[3] for finding in parse_findings(result.stdout.decode())] == ["MSK101"]
