"""Path discovery and reading: skip rules, excludes, named paths, order, encodings and newlines."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest

from maskcheck import files
from maskcheck.files import FileTooLarge, ReadError, SourceFile, decode_source, discover, read_source, split_lines


@pytest.fixture
def tree(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def touch(root: Path, *relative: str) -> None:
    for name in relative:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n")


def shown(discovery) -> list:
    return [source.display.replace(os.sep, "/") for source in discovery.files]


def test_walk_order_is_depth_first_by_name(tree):
    touch(tree, "b.py", "a/z.py", "a/b/c.py", "A.py", "c.py", "a/a.py")

    assert shown(discover(["."])) == ["A.py", "a/a.py", "a/b/c.py", "a/z.py", "b.py", "c.py"]


def test_walk_order_is_stable(tree):
    touch(tree, *(f"pkg{index % 3}/mod{index}.py" for index in range(30)))

    first = shown(discover(["."]))

    assert first == shown(discover(["."]))
    assert first == sorted(first, key=lambda path: path.split("/"))


def test_default_skip_rules(tree):
    touch(
        tree,
        "keep.py",
        ".hidden/x.py",
        "__pycache__/x.py",
        "build/x.py",
        "dist/x.py",
        "pkg.egg-info/x.py",
        "venv/x.py",
        ".venv/x.py",
        "myenv/x.py",
        "sub/build/x.py",
        "sub/keep.py",
    )
    (tree / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")

    assert shown(discover(["."])) == ["keep.py", "sub/keep.py"]


def test_hidden_file_is_checked(tree):
    touch(tree, ".config.py")

    assert shown(discover(["."])) == [".config.py"]


def test_only_py_files_found_in_directories(tree):
    touch(tree, "a.py", "b.pyi", "c.txt", "d.py.bak", "script")

    assert shown(discover(["."])) == ["a.py"]


def test_named_file_always_checked(tree):
    touch(tree, "build/gen.py", ".venv/lib.py", "script")

    result = discover(["build/gen.py", ".venv/lib.py", "script"])

    assert shown(result) == ["build/gen.py", ".venv/lib.py", "script"]


def test_named_directory_walked_despite_rules(tree):
    touch(tree, "build/gen.py", "build/.cache/skip.py")

    assert shown(discover(["build"])) == ["build/gen.py"]


def test_force_exclude_applies_to_named_paths(tree):
    touch(tree, "build/gen.py", "src/gen_table.py", "src/model.py", ".venv/lib.py")

    result = discover(
        ["build/gen.py", "src/gen_table.py", "src/model.py", ".venv/lib.py"],
        excludes=["gen_*.py"],
        force_exclude=True,
    )

    assert shown(result) == ["src/model.py"]
    assert result.skipped_files == 3


def test_exclude_matches_name_and_relative_path(tree):
    touch(tree, "src/pkg/gen/a.py", "src/pkg/b.py", "src/pkg/c_test.py", "tests/t.py")

    assert shown(discover(["."], excludes=["gen"])) == ["src/pkg/b.py", "src/pkg/c_test.py", "tests/t.py"]
    assert shown(discover(["."], excludes=["*_test.py"])) == ["src/pkg/b.py", "src/pkg/gen/a.py", "tests/t.py"]
    assert shown(discover(["."], excludes=["src/pkg/gen"])) == ["src/pkg/b.py", "src/pkg/c_test.py", "tests/t.py"]
    assert shown(discover(["src"], excludes=["pkg/gen"])) == ["src/pkg/b.py", "src/pkg/c_test.py"]
    assert shown(discover(["."], excludes=["./tests/"])) == ["src/pkg/b.py", "src/pkg/c_test.py", "src/pkg/gen/a.py"]


def test_exclude_matches_path_relative_to_current_directory(tree):
    touch(tree, "src/pkg/gen/a.py", "src/pkg/b.py")

    result = discover([str(tree / "src")], excludes=["src/pkg/gen"])

    assert [Path(source.path).name for source in result.files] == ["b.py"]


def test_exclude_counts_skipped_py_files(tree):
    touch(tree, "a.py", "b.py", "gen/c.py")

    result = discover(["."], excludes=["a.py", "gen"])

    assert shown(result) == ["b.py"]
    assert result.skipped_files == 1


def test_named_path_not_excluded_without_force(tree):
    touch(tree, "gen_table.py")

    assert shown(discover(["gen_table.py"], excludes=["gen_*.py"])) == ["gen_table.py"]


def test_duplicates_removed(tree):
    touch(tree, "src/a.py", "src/b.py")

    result = discover(["src", "src/a.py", "./src/b.py", str(tree / "src" / "a.py")])

    assert shown(result) == ["src/a.py", "src/b.py"]


def test_stdin_entry(tree):
    result = discover(["-", "-"], stdin_display="model.py")

    assert result.files == [SourceFile("-", "model.py")]


def test_missing_path_is_error(tree):
    touch(tree, "a.py")

    result = discover(["missing.py", "a.py"])

    assert shown(result) == ["a.py"]
    assert [(error.display, error.message) for error in result.errors] == [
        ("missing.py", "no such file or directory; check the path")
    ]


def test_unlistable_directory_is_error(tree, monkeypatch):
    touch(tree, "ok/a.py", "locked/b.py")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(files.os, "scandir", scandir)

    result = discover(["."])

    assert shown(result) == ["ok/a.py"]
    assert [(error.display, error.message) for error in result.errors] == [
        ("locked", "cannot list directory: permission denied; fix its permissions or leave it out")
    ]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can list a directory without permissions")
def test_directory_without_permission_is_error(tree):
    touch(tree, "ok/a.py", "locked/b.py")
    (tree / "locked").chmod(0)
    try:
        result = discover(["."])
    finally:
        (tree / "locked").chmod(0o755)

    assert shown(result) == ["ok/a.py"]
    assert result.errors[0].display == "locked"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this platform")
def test_symlinked_directory_not_followed(tree, caplog):
    touch(tree, "real/a.py")
    os.symlink(tree / "real", tree / "link")
    os.symlink(tree, tree / "real" / "loop")

    with caplog.at_level(logging.INFO, logger="maskcheck"):
        result = discover(["."])

    assert shown(result) == ["real/a.py"]
    assert "skipped link: symbolic link to a directory, not followed" in caplog.messages


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links on this platform")
def test_broken_symlink_skipped(tree, caplog):
    os.symlink(tree / "gone.py", tree / "dangling.py")

    with caplog.at_level(logging.INFO, logger="maskcheck"):
        result = discover(["."])

    assert result.files == []
    assert result.errors == []
    assert "skipped dangling.py: broken symbolic link" in caplog.messages


def test_absolute_root_keeps_absolute_display(tree):
    touch(tree, "pkg/a.py")

    result = discover([str(tree / "pkg")])

    assert [source.display for source in result.files] == [str(tree / "pkg" / "a.py")]


def test_deep_tree_walked_without_recursion(tree):
    deep = tree.joinpath(*["d"] * 300)
    deep.mkdir(parents=True)
    (deep / "x.py").write_text("x = 1\n")

    assert len(discover(["."]).files) == 1


def test_decode_utf8_bom():
    assert decode_source(b"\xef\xbb\xbfx = 1\n") == "x = 1\n"


def test_decode_coding_comment():
    assert decode_source(b"# coding: latin-1\nx = '\xe9'\n") == "# coding: latin-1\nx = '\u00e9'\n"


def test_decode_translates_newlines():
    assert decode_source(b"a = 1\r\nb = 2\rc = 3\n") == "a = 1\nb = 2\nc = 3\n"


def test_decode_invalid_utf8_names_line():
    with pytest.raises(ReadError) as raised:
        decode_source(b"a = 1\nb = 2\nc = 3\nd = '\xff'\n")

    assert str(raised.value).startswith("cannot decode byte 0xff on line 4 as utf-8; ")


def test_decode_invalid_bytes_in_first_lines():
    with pytest.raises(ReadError) as raised:
        decode_source(b"x = '\xff'\n")

    assert str(raised.value).startswith("cannot decode byte 0xff on line 1 as utf-8; ")


def test_decode_unknown_coding():
    with pytest.raises(ReadError) as raised:
        decode_source(b"# coding: klingon\nx = 1\n")

    assert str(raised.value).startswith("cannot decode: invalid coding comment (unknown encoding: klingon); ")


def test_decode_bom_with_other_coding():
    with pytest.raises(ReadError) as raised:
        decode_source(b"\xef\xbb\xbf# coding: latin-1\nx = 1\n")

    assert str(raised.value).startswith("cannot decode: invalid coding comment (encoding problem: utf-8); ")


def test_decode_utf16_file_rejected():
    with pytest.raises(ReadError) as raised:
        decode_source("x = 1\n".encode("utf-16"))

    assert str(raised.value).startswith("cannot decode byte 0xff on line 1 as utf-8; ")


def test_read_too_large(tmp_path):
    path = tmp_path / "big.py"
    path.write_bytes(b"x = 1\n" * 10)

    with pytest.raises(FileTooLarge) as raised:
        read_source(SourceFile(str(path), "big.py"), max_size=59)

    assert (raised.value.size, raised.value.limit) == (60, 59)
    assert read_source(SourceFile(str(path), "big.py"), max_size=60) == "x = 1\n" * 10


def test_read_stdin_too_large():
    with pytest.raises(FileTooLarge):
        read_source(SourceFile("-", "-"), max_size=3, stdin=io.BytesIO(b"x = 1\n"))


def test_read_vanished_file(tmp_path):
    with pytest.raises(ReadError) as raised:
        read_source(SourceFile(str(tmp_path / "gone.py"), "gone.py"), max_size=100)

    assert str(raised.value).startswith("file not found (it may have been removed after maskcheck listed it)")


def test_read_directory(tmp_path):
    with pytest.raises(ReadError) as raised:
        read_source(SourceFile(str(tmp_path), "pkg"), max_size=100)

    assert str(raised.value).startswith("is a directory")


def test_split_lines_only_on_newline():
    assert split_lines("a\x0cb\nc\u2028d\n\ne") == ["a\x0cb\n", "c\u2028d\n", "\n", "e"]
