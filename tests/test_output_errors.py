"""A report that cannot be written (a full disk, a missing folder) is one error line and exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import BUGGY_BLOCK

FULL_DEVICE = "/dev/full"
needs_full_device = pytest.mark.skipif(not os.path.exists(FULL_DEVICE), reason="needs /dev/full (Linux)")


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_with_stdout(args, cwd, stdout_path):
    with open(stdout_path, "w") as stdout:
        return subprocess.run(
            [sys.executable, "-m", "maskcheck", "--no-cache", *args],
            cwd=cwd,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=600,
        )


@needs_full_device
def test_output_file_on_full_disk(project, run_cli):
    result = run_cli(["--no-cache", "--output-file", FULL_DEVICE, "block.py"])

    assert result.code == 2
    assert result.err == (
        "maskcheck: error: cannot write --output-file /dev/full: No space left on device; free space on that "
        "file system or choose another --output-file\n"
    )


@needs_full_device
@pytest.mark.parametrize(
    "args",
    [
        ["block.py"],
        ["--output-format", "sarif", "block.py"],
        ["--diff", "--unsafe-fixes", "block.py"],
        ["--explain", "MSK101"],
    ],
    ids=["text", "sarif", "diff", "explain"],
)
def test_full_standard_output(project, args):
    result = run_with_stdout(args, project, FULL_DEVICE)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        "maskcheck: error: cannot write to standard output: No space left on device; free space on that file "
        "system or write the report to a file with --output-file"
    ]


def test_output_file_in_missing_folder(project, run_cli):
    result = run_cli(["--no-cache", "--output-file", "missing/report.txt", "block.py"])

    assert result.code == 2
    assert result.err == (
        "maskcheck: error: cannot write --output-file missing/report.txt: No such file or directory; check that "
        "the folder exists and is writable, or choose another --output-file\n"
    )
