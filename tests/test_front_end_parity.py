"""The CLI and the flake8 plugin report the same findings, with the same columns, on every fixture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT, parse_findings, run_flake8

FIXTURES = sorted((REPO_ROOT / "fixtures").rglob("*.py"))


def by_position(findings) -> dict:
    """Map (path, line, code, message) to the column; fail if one key appears twice with different columns."""
    columns: dict = {}
    for path, line, col, code, message in findings:
        posix = Path(path).as_posix()
        key = (posix[2:] if posix.startswith("./") else posix, line, code, message)
        assert columns.setdefault(key, col) == col, f"two columns for {key}"
    return columns


@pytest.fixture(scope="module")
def fixture_paths():
    if not FIXTURES:
        pytest.skip("fixtures/ holds no .py files, so there is nothing to compare the two front ends on")
    return [path.relative_to(REPO_ROOT).as_posix() for path in FIXTURES]


@pytest.fixture(scope="module")
def cli_findings(fixture_paths):
    result = subprocess.run(
        [sys.executable, "-m", "maskcheck", "-q", *fixture_paths],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode in (0, 1), result.stderr
    return by_position(parse_findings(result.stdout))


@pytest.fixture(scope="module")
def flake8_findings(fixture_paths):
    result = run_flake8(["--select", "MSK", *fixture_paths], cwd=REPO_ROOT)
    assert result.returncode in (0, 1), result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()
    return by_position(parse_findings(result.stdout.decode()))


def test_fixtures_produce_findings(cli_findings):
    # Guards against an empty comparison: the fixtures contain flagged lines, so an empty result means a broken run.
    assert cli_findings, "the CLI found nothing in fixtures/"


def test_same_findings(cli_findings, flake8_findings):
    only_cli = sorted(set(cli_findings) - set(flake8_findings))
    only_flake8 = sorted(set(flake8_findings) - set(cli_findings))

    assert only_cli == [], "reported by the CLI only"
    assert only_flake8 == [], "reported by flake8 only"


def test_same_columns(cli_findings, flake8_findings):
    different = {
        key: (column, flake8_findings[key])
        for key, column in cli_findings.items()
        if key in flake8_findings and flake8_findings[key] != column
    }

    assert different == {}
