"""Bad input: each bad file gives one line on stderr and exit status 2, never a traceback, and the run goes on."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from maskcheck.settings import DEFAULT_MAX_FILE_SIZE

from conftest import BUGGY_BLOCK, BUGGY_COLUMN, BUGGY_LINE, parse_findings
from maskcheck import cli, files
from maskcheck.files import discover

DEEP_PARENS = "x = " + "(" * 5000 + "1" + ")" * 5000 + "\n"
DEEP_CHAIN = "x = y" + ".f()" * 3000 + "\n"

# Each file, and the start of its one error line after "NAME: error: ". The engine writes the texts of syntax and
# nesting errors, so only their first words are checked here.
BAD_FILES = {
    "py2_print.py": ("print 'hello'\n".encode(), "syntax error at line 1"),
    "latin1_without_coding.py": (b"name = 'caf\xe9'\n", "cannot decode byte 0xe9 on line 1 as utf-8; "),
    "unknown_coding.py": (
        b"# coding: nonsense\nx = 1\n",
        "cannot decode: invalid coding comment (unknown encoding: nonsense); ",
    ),
    "bad_byte_line_5.py": (b"a = 1\nb = 2\nc = 3\nd = 4\ne = '\xff'\n", "cannot decode byte 0xff on line 5 as utf-8; "),
    "utf16.py": ("x = 1\n".encode("utf-16"), "cannot decode byte 0xff on line 1 as utf-8; "),
    "binary.py": (bytes(range(256)) * 4, "cannot decode"),
    "nul_byte.py": (b"x = 1\x00\n", "contains a NUL byte"),
    "deep_parens.py": (DEEP_PARENS.encode(), "nests "),
    # `attn_mask` makes the engine parse with libcst, whose native parser overflows the stack on this input.
    "deep_parens_mask.py": (
        ("out = attn(x, attn_mask=" + "(" * 5000 + "m" + ")" * 5000 + ")\n").encode(),
        "nests ",
    ),
    "deep_chain.py": (DEEP_CHAIN.encode(), "nests "),
    "deep_chain_mask.py": (
        ("out = attn(x, attn_mask=m" + ".f()" * 3000 + ")\n").encode(),
        "nests ",
    ),
    "long_sum.py": (("x = " + "+".join(["1"] * 100_000) + "\n").encode(), "nests "),
    "unary_chain.py": (("x = " + "-" * 100_000 + "1\n").encode(), "nests "),
}

GOOD_FILES = {
    "empty.py": b"",
    "only_newlines.py": b"\n\n\n",
    "bom_only.py": b"\xef\xbb\xbf",
    "crlf.py": BUGGY_BLOCK.replace("\n", "\r\n").encode(),
    "zz_block.py": BUGGY_BLOCK.encode(),
}


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    for name, (data, _) in BAD_FILES.items():
        (root / name).write_bytes(data)
    for name, data in GOOD_FILES.items():
        (root / name).write_bytes(data)
    # 6 bytes per line, over the default limit: skipped, not an error.
    (root / "huge.py").write_bytes(b"x = 1\n" * (DEFAULT_MAX_FILE_SIZE // 6 + 1))
    return root


@pytest.fixture(scope="module")
def bad_run(bad_tree):
    """One run of the real entry point in a child process, so a crash of the interpreter fails the test."""
    before = snapshot(bad_tree)
    result = subprocess.run(
        [sys.executable, "-m", "maskcheck", "--no-cache", "."], cwd=bad_tree, capture_output=True, text=True, timeout=600
    )
    assert snapshot(bad_tree) == before, "maskcheck changed the files it checked"
    return result


def snapshot(root):
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in root.iterdir()}


def test_bad_input_exit_status(bad_run):
    assert bad_run.returncode == 2, bad_run.stderr


def test_bad_input_no_traceback(bad_run):
    assert "Traceback" not in bad_run.stderr
    assert "Error:" not in bad_run.stderr.replace("error:", "")


def test_good_files_still_reported(bad_run):
    findings = parse_findings(bad_run.stdout)

    assert [(path, line, col, code) for path, line, col, code, _ in findings] == [
        ("crlf.py", BUGGY_LINE, BUGGY_COLUMN, "MSK101"),
        ("zz_block.py", BUGGY_LINE, BUGGY_COLUMN, "MSK101"),
    ]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_one_error_line_per_bad_file(bad_run, name):
    lines = [line for line in bad_run.stderr.splitlines() if line.startswith(f"{name}: ")]

    assert len(lines) == 1, bad_run.stderr
    prefix = f"{name}: error: "
    assert lines[0].startswith(prefix + BAD_FILES[name][1]), lines[0]
    # Every message ends with what to do next, after a semicolon.
    assert "; " in lines[0][len(prefix) :]


def test_good_files_give_no_error(bad_run):
    for name in GOOD_FILES:
        assert not any(line.startswith(f"{name}:") for line in bad_run.stderr.splitlines()), name


def test_file_over_limit_reported_as_skipped(bad_run):
    size = 6 * (DEFAULT_MAX_FILE_SIZE // 6 + 1)
    assert f"huge.py: skipped: {size} bytes, over the {DEFAULT_MAX_FILE_SIZE}-byte limit; " in bad_run.stderr


def test_bad_input_summary(bad_run):
    checked = len(GOOD_FILES)
    errors = len(BAD_FILES)
    assert bad_run.stderr.splitlines()[-1] == (
        f"maskcheck: {checked} files checked, 1 file skipped, 2 findings, {errors} paths with errors"
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    return tmp_path


def test_missing_path(workdir, run_cli):
    result = run_cli(["missing.py", "missing_dir", "block.py"])

    assert result.code == 2
    assert len(parse_findings(result.out)) == 1
    assert result.error_lines == [
        "missing.py: error: no such file or directory; check the path",
        "missing_dir: error: no such file or directory; check the path",
    ]


def test_file_removed_after_discovery(workdir, run_cli, monkeypatch):
    (workdir / "gone.py").write_text(BUGGY_BLOCK)

    def discover_then_remove(*args, **kwargs):
        found = discover(*args, **kwargs)
        os.remove("gone.py")
        return found

    monkeypatch.setattr(cli, "discover", discover_then_remove)

    result = run_cli(["."])

    assert result.code == 2
    assert [finding[0] for finding in parse_findings(result.out)] == ["block.py"]
    assert result.error_lines == [
        "gone.py: error: file not found (it may have been removed after maskcheck listed it); check the path"
    ]


def test_unreadable_file(workdir, run_cli, monkeypatch):
    (workdir / "secret.py").write_text("x = 1\n")
    real_open = open

    def deny_secret(path, *args, **kwargs):
        if os.path.basename(str(path)) == "secret.py":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(files, "open", deny_secret, raising=False)

    result = run_cli(["."])

    assert result.code == 2
    assert result.error_lines == [
        "secret.py: error: cannot read file: permission denied; fix its permissions or leave it out"
    ]


def test_directory_without_permission(workdir, run_cli, monkeypatch):
    (workdir / "locked").mkdir()
    real_scandir = os.scandir

    def deny_locked(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(files.os, "scandir", deny_locked)

    result = run_cli(["."])

    assert result.code == 2
    assert len(parse_findings(result.out)) == 1
    assert result.error_lines == [
        "locked: error: cannot list directory: permission denied; fix its permissions or leave it out"
    ]


def test_empty_stdin(run_cli):
    result = run_cli(["-"], stdin=b"")

    assert result.code == 0
    assert result.err == "maskcheck: 1 file checked, 0 files skipped, 0 findings\n"


def test_stdin_syntax_error(run_cli):
    result = run_cli(["--stdin-filename", "model.py", "-"], stdin=b"def f(:\n")

    assert result.code == 2
    assert len(result.error_lines) == 1
    assert result.error_lines[0].startswith("model.py: error: syntax error at line 1")


def test_stdin_over_limit(run_cli):
    result = run_cli(["--max-file-size", "10", "-"], stdin=BUGGY_BLOCK.encode())

    assert result.code == 0
    assert result.out == ""
    assert "-: skipped: 11 bytes, over the 10-byte limit" in result.err
