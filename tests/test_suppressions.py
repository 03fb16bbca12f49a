"""`# maskcheck: skip-file` in both front ends, and `--add-noqa` writing comments that both front ends honour."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from conftest import BUGGY_BLOCK, parse_findings, run_flake8
from maskcheck.add_noqa import add_noqa
from maskcheck.findings import Finding

SKIPPED_BLOCK = "# maskcheck: skip-file\n" + BUGGY_BLOCK

# Five findings whose comments go to different places: the last line of a backslash continuation, the line where a
# multi-line string ends, the finding's own line inside brackets, an existing `# noqa: E501` list, and after an
# existing comment.
LAYOUTS = '''\
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads)

    def forward_continued(self, x, mask):
        mask = mask.repeat(self.num_heads, 1, 1) \\
            .contiguous()
        return self.attn(x, x, x, attn_mask=mask)[0]

    def forward_string(self, x, mask):
        mask, doc = mask.repeat(self.num_heads, 1, 1), """text
        over lines"""
        return self.attn(x, x, x, attn_mask=mask)[0]

    def forward_brackets(self, x, mask):
        return self.attn(
            x, x, x, attn_mask=mask.repeat(self.num_heads, 1, 1),
        )[0]

    def forward_listed(self, x, mask):
        mask = mask.repeat(self.num_heads, 1, 1)  # noqa: E501 keep it long
        return self.attn(x, x, x, attn_mask=mask)[0]

    def forward_commented(self, x, mask):
        mask = mask.repeat(self.num_heads, 1, 1)  # TODO: tidy
        return self.attn(x, x, x, attn_mask=mask)[0]
'''

LAYOUTS_WITH_NOQA = {
    13: "            .contiguous()  # noqa: MSK101",
    18: '        over lines"""  # noqa: MSK101',
    23: "            x, x, x, attn_mask=mask.repeat(self.num_heads, 1, 1),  # noqa: MSK101",
    27: "        mask = mask.repeat(self.num_heads, 1, 1)  # noqa: E501,MSK101 keep it long",
    31: "        mask = mask.repeat(self.num_heads, 1, 1)  # TODO: tidy  # noqa: MSK101",
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def flake8_codes(path, cwd, *options) -> list:
    result = run_flake8(["--select", "MSK", *options, str(path)], cwd=cwd)
    assert "Traceback" not in result.stderr.decode(), result.stderr.decode()
    return [finding[3] for finding in parse_findings(result.stdout.decode())]


# -- skip-file ------------------------------------------------------------------------------------------------------


def test_skip_file_in_cli(project, run_cli):
    (project / "block.py").write_text(SKIPPED_BLOCK)

    result = run_cli(["block.py"])

    assert result.code == 0
    assert result.out == ""
    assert result.err.splitlines()[-1] == "maskcheck: 0 files checked, 1 file skipped, 0 findings"


def test_skip_file_in_flake8(project):
    (project / "block.py").write_text(SKIPPED_BLOCK)
    (project / "other.py").write_text(BUGGY_BLOCK)

    assert flake8_codes("block.py", project) == []
    assert flake8_codes("other.py", project) == ["MSK101"]


@pytest.mark.parametrize(
    "line, skips",
    [
        ("# maskcheck: skip-file\n", True),
        ("#maskcheck:skip-file\n", True),
        ("    # MASKCHECK: Skip-File  # generated\n", True),
        ("# maskcheck: skip-files\n", False),
        ("x = 1  # maskcheck: skip-file\n", False),
        ("# maskcheck skip-file\n", False),
    ],
)
def test_skip_file_spellings_agree(project, run_cli, line, skips):
    (project / "block.py").write_text(line + BUGGY_BLOCK)

    cli_result = run_cli(["block.py"])

    assert (cli_result.code == 0) is skips
    assert (flake8_codes("block.py", project) == []) is skips


def test_disable_noqa_overrides_skip_file(project, run_cli):
    (project / "block.py").write_text(SKIPPED_BLOCK)

    result = run_cli(["--disable-noqa", "block.py"])

    assert result.code == 1
    assert flake8_codes("block.py", project, "--disable-noqa") == ["MSK101"]


# -- --add-noqa ---------------------------------------------------------------------------------------------------


def test_add_noqa_places_comments_where_flake8_reads_them(project, run_cli):
    path = project / "layouts.py"
    path.write_text(LAYOUTS)
    before = run_cli(["layouts.py"])
    assert len(parse_findings(before.out)) == 5

    result = run_cli(["--add-noqa", "layouts.py"])

    assert result.code == 0
    assert result.out == ""
    assert "added noqa comments for 5 findings in 1 file" in result.err
    lines = path.read_text().splitlines()
    original = LAYOUTS.splitlines()
    for number, expected in LAYOUTS_WITH_NOQA.items():
        assert lines[number - 1] == expected
    unchanged = [n for n in range(1, len(original) + 1) if n not in LAYOUTS_WITH_NOQA]
    assert [lines[n - 1] for n in unchanged] == [original[n - 1] for n in unchanged]
    assert run_cli(["layouts.py"]).code == 0
    assert flake8_codes("layouts.py", project) == []


def test_add_noqa_twice_changes_nothing(project, run_cli):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)

    run_cli(["--add-noqa", "block.py"])
    once = path.read_bytes()
    second = run_cli(["--add-noqa", "block.py"])

    assert path.read_bytes() == once
    assert "added noqa comments for 0 findings in 0 files" in second.err


def test_add_noqa_keeps_newlines_encoding_and_mode(project, run_cli):
    text = "# -*- coding: latin-1 -*-\n# Caf\xe9 du mod\xe8le\n" + BUGGY_BLOCK
    data = text.replace("\n", "\r\n").encode("latin-1")
    path = project / "block.py"
    path.write_bytes(data)
    os.chmod(path, 0o754)

    result = run_cli(["--add-noqa", "block.py"])

    assert result.code == 0
    new = path.read_bytes()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o754
    assert new.count(b"\r\n") == data.count(b"\r\n")
    assert b"\n" not in new.replace(b"\r\n", b"")
    assert b"Caf\xe9 du mod\xe8le" in new
    assert b"mask = mask.repeat(self.num_heads, 1, 1)  # noqa: MSK101\r\n" in new
    assert len(new) == len(data) + len("  # noqa: MSK101")


def test_add_noqa_keeps_byte_order_mark(project, run_cli):
    path = project / "block.py"
    path.write_bytes(b"\xef\xbb\xbf" + BUGGY_BLOCK.encode())

    run_cli(["--add-noqa", "block.py"])

    assert path.read_bytes().startswith(b"\xef\xbb\xbfimport torch.nn as nn\n")
    assert run_cli(["block.py"]).code == 0


def test_add_noqa_leaves_clean_files_alone(project, run_cli):
    clean = project / "clean.py"
    clean.write_text("x = 1\n")
    mtime = clean.stat().st_mtime_ns
    (project / "block.py").write_text(BUGGY_BLOCK)

    run_cli(["--add-noqa", "."])

    assert clean.stat().st_mtime_ns == mtime
    assert not [p.name for p in project.iterdir() if p.name.endswith(".maskcheck")], "a temporary file was left"


def test_add_noqa_rejects_stdin(project, run_cli):
    result = run_cli(["--add-noqa", "-"], stdin=BUGGY_BLOCK.encode())

    assert result.code == 2
    assert "--add-noqa rewrites files, so it does not read standard input; pass the file's path instead" in result.err
    assert "use --diff" not in result.err


def test_add_noqa_skips_noqa_inside_string():
    text = 'mask = mask.repeat(h, 1, 1), "# noqa: E501"\n'
    finding = Finding("a.py", 1, 8, "MSK101", "message")

    edit = add_noqa(text, [finding])

    assert edit.text == text
    assert "inside a string" in edit.skipped[finding]


def test_add_noqa_reports_failed_write(project, run_cli, monkeypatch):
    from maskcheck import add_noqa as add_noqa_module

    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)

    def refuse(target, data):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(add_noqa_module, "write_atomically", refuse)

    result = run_cli(["--add-noqa", "block.py"])

    assert result.code == 2
    assert "block.py: error: no noqa comments added: cannot write the file: Permission denied" in result.err
    assert path.read_text() == BUGGY_BLOCK


def test_add_noqa_in_subprocess_gives_no_traceback(project):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = subprocess.run(
        [sys.executable, "-m", "maskcheck", "--add-noqa", "block.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0
    assert "Traceback" not in result.stderr
