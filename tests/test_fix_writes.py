"""How `--fix` and `--add-noqa` write files: permissions, owner and group, and an interrupt between files."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest

from conftest import BUGGY_BLOCK, FIXED_BLOCK
from maskcheck import add_noqa, cli, rewrite

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
OTHER_UID = OTHER_GID = 65534  # "nobody" on most Linux systems; only root can give a file to it


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def two_files(project):
    """a.py and b.py, each with one fixable finding; the fixes run in path order."""
    for name in ("a.py", "b.py"):
        (project / name).write_text(BUGGY_BLOCK)
    return project / "a.py", project / "b.py"


def make_read_only(path, monkeypatch):
    """Make `path` read-only for this process: by its mode, or for root (which may write any file) in os.access."""
    os.chmod(path, 0o444)
    if not IS_ROOT:
        return
    real_access = os.access
    read_only = os.path.realpath(path)

    def access(name, mode, *args, **kwargs):
        if mode & os.W_OK and os.path.realpath(name) == read_only:
            return False
        return real_access(name, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def temporary_files(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".maskcheck"))


# -- permissions ----------------------------------------------------------------------------------------------------


def test_fix_skips_read_only_file(two_files, run_cli, monkeypatch):
    writable, read_only = two_files
    make_read_only(read_only, monkeypatch)

    result = run_cli(["--fix", "--unsafe-fixes", "a.py", "b.py"])

    assert read_only.read_text() == BUGGY_BLOCK
    assert stat.S_IMODE(os.stat(read_only).st_mode) == 0o444
    assert writable.read_text() == FIXED_BLOCK
    assert result.code == 2
    errors = [line for line in result.err.splitlines() if ": error: " in line]
    assert errors == [
        "b.py: error: not fixed: the file is read-only; give this user write permission (for example chmod u+w) "
        "or edit it by hand"
    ]


def test_add_noqa_skips_read_only_file(two_files, run_cli, monkeypatch):
    writable, read_only = two_files
    make_read_only(read_only, monkeypatch)

    result = run_cli(["--add-noqa", "a.py", "b.py"])

    assert read_only.read_text() == BUGGY_BLOCK
    assert "# noqa: MSK101" in writable.read_text()
    assert result.code == 2
    assert "b.py: error: no noqa comments added: the file is read-only; " in result.err


def test_fix_names_folder_without_write_permission(project, run_cli, monkeypatch):
    folder = project / "locked"
    folder.mkdir()
    path = folder / "block.py"
    path.write_text(BUGGY_BLOCK)
    if IS_ROOT:
        # Root may create files in any folder, so a stand-in for mkstemp raises the error.
        def deny(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", deny)
    else:
        os.chmod(folder, 0o555)

    try:
        result = run_cli(["--fix", "--unsafe-fixes", "locked/block.py"])
    finally:
        os.chmod(folder, 0o755)

    assert path.read_text() == BUGGY_BLOCK
    assert result.code == 2
    expected = (
        f"locked/block.py: error: not fixed: the temporary file could not be created in {os.path.realpath(folder)} "
        "(Permission denied); "
    )
    assert expected in result.err
    assert temporary_files(folder) == []


# -- owner and group ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="only root can give a file to another user")
def test_fix_keeps_owner_and_group(project, run_cli):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)
    os.chown(path, OTHER_UID, OTHER_GID)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert result.code == 0
    assert path.read_text() == FIXED_BLOCK
    assert os.stat(path).st_uid == OTHER_UID
    assert os.stat(path).st_gid == OTHER_GID


@pytest.mark.skipif(not IS_ROOT, reason="only root can give a file to another user")
def test_fix_writes_when_owner_cannot_be_kept(project, run_cli, monkeypatch):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)
    os.chmod(path, 0o666)
    os.chown(path, OTHER_UID, OTHER_GID)

    def deny(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chown", deny)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    # A user who may write the file but not set its owner still gets the fix, with content and mode kept.
    assert result.code == 0
    assert path.read_text() == FIXED_BLOCK
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
    assert os.stat(path).st_uid == os.geteuid()


# -- an interrupt (Ctrl-C) between files ----------------------------------------------------------------------------


def test_interrupt_before_second_rename_lists_first_file(two_files, run_cli, monkeypatch):
    first, second = two_files
    real_replace = os.replace

    def interrupt_second(source, destination):
        if os.path.basename(destination) == "b.py":
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", interrupt_second)

    result = run_cli(["--fix", "--unsafe-fixes", "a.py", "b.py"])

    assert result.code == 130
    assert first.read_text() == FIXED_BLOCK
    assert second.read_text() == BUGGY_BLOCK
    assert result.err.splitlines()[-2:] == [
        "maskcheck: interrupted after 1 file had been rewritten; each listed file is completely written, "
        "and every other file has its original content",
        "a.py: fixed before the interrupt",
    ]
    assert temporary_files(first.parent) == []


def test_interrupt_during_check_of_fix_lists_unchecked_file(two_files, run_cli, monkeypatch):
    first, second = two_files
    real_check = cli.check_source

    def interrupt_recheck(source, display, settings):
        if display == "b.py" and "repeat_interleave" in source:
            raise KeyboardInterrupt
        return real_check(source, display, settings)

    monkeypatch.setattr(cli, "check_source", interrupt_recheck)

    result = run_cli(["--fix", "--unsafe-fixes", "-j", "1", "a.py", "b.py"])

    assert result.code == 130
    assert second.read_text() == FIXED_BLOCK
    lines = result.err.splitlines()
    assert lines[-3].startswith("maskcheck: interrupted after 2 files had been rewritten; ")
    assert lines[-2] == "a.py: fixed before the interrupt"
    assert lines[-1] == (
        "b.py: fixed before the interrupt, but not analysed again after the change; "
        "run maskcheck on it and review the change"
    )


def test_interrupt_after_fixes_lists_fixed_files(two_files, run_cli, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_print_problems", interrupt)

    result = run_cli(["--fix", "--unsafe-fixes", "a.py", "b.py"])

    assert result.code == 130
    assert result.err.splitlines()[-2:] == ["a.py: fixed before the interrupt", "b.py: fixed before the interrupt"]


def test_interrupt_before_any_fix_prints_one_line(two_files, run_cli, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rewrite.tempfile, "mkstemp", interrupt)

    result = run_cli(["--fix", "--unsafe-fixes", "a.py", "b.py"])

    assert result.code == 130
    assert result.err.splitlines()[-1] == "maskcheck: interrupted"
    assert two_files[0].read_text() == BUGGY_BLOCK


def test_interrupt_during_add_noqa_lists_written_file(two_files, run_cli, monkeypatch):
    first, second = two_files
    real_write = add_noqa.write_atomically

    def interrupt_second(path, data):
        if os.path.basename(path) == "b.py":
            raise KeyboardInterrupt
        real_write(path, data)

    monkeypatch.setattr(add_noqa, "write_atomically", interrupt_second)

    result = run_cli(["--add-noqa", "a.py", "b.py"])

    assert result.code == 130
    assert second.read_text() == BUGGY_BLOCK
    assert result.err.splitlines()[-1] == "a.py: noqa comments added before the interrupt"
