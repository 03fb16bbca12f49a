"""Snapshot tests: each output format on tests/snapshots/input, with and without verdicts.

Each snapshot was read line by line against the input files when it was written. To rewrite them after an
intended change, run `MASKCHECK_UPDATE_SNAPSHOTS=1 pytest tests/test_report_snapshots.py` and review the diff.
The tool version, the absolute folder in SARIF and the verifier's floating-point errors are replaced by
placeholders, so that the snapshots do not depend on the machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from maskcheck import __version__
from maskcheck.report import FORMAT_NAMES

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
INPUT = SNAPSHOTS / "input"
UPDATE = os.environ.get("MASKCHECK_UPDATE_SNAPSHOTS") == "1"

EXTENSIONS = {"text": "txt", "full": "txt", "json": "json", "github": "txt", "sarif": "sarif", "junit": "xml"}


def normalise(output: str) -> str:
    output = output.replace(f'"{__version__}"', '"<version>"')
    output = output.replace(Path(INPUT).as_uri() + "/", "file:///<input>/")
    output = re.sub(r"max error [0-9.]+(e[-+]?\d+)?", "max error <number>", output)
    output = re.sub(r'"max_error": [0-9.]+(e[-+]?\d+)?', '"max_error": <number>', output)
    return output


def check_snapshot(name: str, result) -> None:
    actual = f"exit status: {result.code}\n{normalise(result.out)}"
    path = SNAPSHOTS / name
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"missing snapshot {path.name}; run with MASKCHECK_UPDATE_SNAPSHOTS=1 and review it"
    assert actual == path.read_text(encoding="utf-8")


@pytest.fixture
def in_input(monkeypatch):
    monkeypatch.chdir(INPUT)


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_static_snapshot(in_input, run_cli, format_name):
    result = run_cli(["--quiet", "--output-format", format_name, "."])

    check_snapshot(f"static.{format_name}.{EXTENSIONS[format_name]}", result)


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_verified_snapshot(in_input, run_cli, format_name):
    pytest.importorskip("torch", reason="the runtime verifier needs torch: pip install torch==2.13.0")

    result = run_cli(["--quiet", "--verify", "--output-format", format_name, "."])

    check_snapshot(f"verified.{format_name}.{EXTENSIONS[format_name]}", result)


def test_statistics_snapshot(in_input, run_cli):
    result = run_cli(["--quiet", "--statistics", "."])

    check_snapshot("static.statistics.txt", result)


def test_show_fixes_snapshot(in_input, run_cli):
    result = run_cli(["--quiet", "--show-fixes", "."])

    check_snapshot("static.show-fixes.txt", result)


def test_summary_lines_snapshot(in_input, run_cli):
    result = run_cli(["."])

    check_snapshot("static.stderr.txt", type(result)(result.code, result.err, ""))


def test_snapshots_have_no_strays():
    expected = {f"{kind}.{name}.{EXTENSIONS[name]}" for kind in ("static", "verified") for name in FORMAT_NAMES}
    expected |= {"static.statistics.txt", "static.show-fixes.txt", "static.stderr.txt"}
    present = {path.name for path in SNAPSHOTS.iterdir() if path.is_file()}
    assert present == expected
