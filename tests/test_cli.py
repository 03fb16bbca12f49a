"""The `maskcheck` command line: output format, exit status, options and code selection, on the real engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

import maskcheck
from conftest import BUGGY_BLOCK, BUGGY_COLUMN, BUGGY_LINE, CUSTOM_HEAD_COUNT_BLOCK, FIXED_BLOCK, parse_findings
from maskcheck import cli
from maskcheck.cli import CodeFilter
from maskcheck.findings import Finding


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty directory that is also the current directory, so output paths are relative."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_finding_line_format(project, run_cli):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["block.py"])

    assert result.code == 1
    findings = parse_findings(result.out)
    assert len(findings) == 1
    path, line, col, code, message = findings[0]
    assert (path, line, col, code) == ("block.py", BUGGY_LINE, BUGGY_COLUMN, "MSK101")
    assert "`mask.repeat(self.num_heads, 1, 1)`" in message
    assert "mask.repeat_interleave(self.num_heads, dim=0)" in message


def test_correct_version_exits_zero(project, run_cli):
    (project / "block.py").write_text(FIXED_BLOCK)

    result = run_cli(["block.py"])

    assert result.code == 0
    assert result.out == ""


def test_summary_line_on_stderr(project, run_cli):
    (project / "bad.py").write_text(BUGGY_BLOCK)
    (project / "good.py").write_text(FIXED_BLOCK)

    result = run_cli(["."])

    assert result.err.splitlines()[-1] == "maskcheck: 2 files checked, 0 files skipped, 1 finding"


def test_quiet_prints_only_findings(project, run_cli):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["-q", "block.py"])

    assert result.code == 1
    assert result.err == ""
    assert len(parse_findings(result.out)) == 1


def test_default_path_is_current_directory(project, run_cli):
    (project / "pkg").mkdir()
    (project / "pkg" / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli([])

    assert result.code == 1
    assert [finding[0] for finding in parse_findings(result.out)] == [os.path.join("pkg", "block.py")]


def test_output_sorted_by_path_line_column(project, run_cli):
    two_findings = BUGGY_BLOCK + (
        "\n\n"
        "class Second(Block):\n"
        "    def forward(self, x, mask):\n"
        "        mask = mask.repeat(self.num_heads, 1, 1)\n"
        "        return self.attn(x, x, x, attn_mask=mask)[0]\n"
    )
    for name in ("b.py", "a.py", os.path.join("sub", "c.py")):
        (project / name).parent.mkdir(exist_ok=True)
        (project / name).write_text(two_findings)

    result = run_cli(["sub", "b.py", "a.py"])

    positions = [(path, line, col) for path, line, col, _, _ in parse_findings(result.out)]
    assert len(positions) == 6
    assert positions == sorted(positions)
    assert positions[0] == ("a.py", BUGGY_LINE, BUGGY_COLUMN)
    assert positions[1] == ("a.py", 17, BUGGY_COLUMN)


def test_version_option(run_cli):
    result = run_cli(["--version"])

    assert result.code == 0
    assert result.out.strip() == f"maskcheck {maskcheck.__version__}"


@pytest.mark.parametrize(
    "options, reported",
    [
        ([], True),
        (["--select", "MSK"], True),
        (["--select", "MSK1"], True),
        (["--select", "MSK101"], True),
        (["--ignore", "MSK101"], False),
        (["--ignore", "MSK"], False),
        (["--select", "MSK", "--ignore", "MSK1"], False),
        (["--select", "MSK101", "--ignore", "MSK"], True),
        (["--select", "MSK101", "--ignore", "MSK101"], False),
        (["--ignore", "MSK101", "--ignore", "MSK1"], False),
    ],
)
def test_select_and_ignore(project, run_cli, options, reported):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli([*options, "block.py"])

    assert result.code == (1 if reported else 0)
    assert bool(result.out) is reported


@pytest.mark.parametrize("option", ["--select", "--ignore"])
@pytest.mark.parametrize("value", ["MSK9", "E501", "MSK101,XYZ1", "msk101"])
def test_unknown_code_is_usage_error(project, run_cli, option, value):
    result = run_cli([option, value, "."])

    assert result.code == 2
    assert result.out == ""
    assert "unknown rule code" in result.err
    assert "MSK101" in result.err
    bad_code = value.split(",")[-1] if "," in value else value
    assert repr(bad_code) in result.err


def test_lowercase_code_suggests_uppercase(project, run_cli):
    result = run_cli(["--select", "msk1", "."])

    assert "did you mean MSK1?" in result.err


def test_code_filter_longest_prefix_wins():
    assert CodeFilter().allows("MSK101")
    assert CodeFilter(select=("MSK1",)).allows("MSK101")
    assert not CodeFilter(select=("MSK2",)).allows("MSK101")
    assert not CodeFilter(select=("MSK",), ignore=("MSK10",)).allows("MSK101")
    assert CodeFilter(select=("MSK10",), ignore=("MSK",)).allows("MSK101")
    assert not CodeFilter(select=("MSK1",), ignore=("MSK1",)).allows("MSK101")


def test_stdin_shown_as_dash(run_cli):
    result = run_cli(["-"], stdin=BUGGY_BLOCK.encode())

    assert result.code == 1
    assert parse_findings(result.out)[0][:3] == ("-", BUGGY_LINE, BUGGY_COLUMN)


def test_stdin_filename(run_cli):
    result = run_cli(["--stdin-filename", "models/block.py", "-"], stdin=BUGGY_BLOCK.encode())

    assert parse_findings(result.out)[0][0] == "models/block.py"


def test_stdin_filename_alone_reads_stdin(run_cli):
    result = run_cli(["--stdin-filename", "block.py"], stdin=BUGGY_BLOCK.encode())

    assert result.code == 1
    assert parse_findings(result.out)[0][0] == "block.py"


def test_stdin_filename_without_dash_is_usage_error(project, run_cli):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["--stdin-filename", "x.py", "block.py"])

    assert result.code == 2
    assert "--stdin-filename" in result.err


def test_stdin_decoded_with_coding_comment(run_cli):
    source = "# -*- coding: latin-1 -*-\n# Gr\xfc\xdfe\n" + BUGGY_BLOCK
    result = run_cli(["-"], stdin=source.encode("latin-1"))

    assert result.code == 1
    assert parse_findings(result.out)[0][1] == BUGGY_LINE + 2


def test_head_count_names_option(project, run_cli):
    (project / "block.py").write_text(CUSTOM_HEAD_COUNT_BLOCK)

    without = run_cli(["block.py"])
    with_names = run_cli(["--head-count-names", "other,attn_splits", "block.py"])

    assert without.code == 0
    assert with_names.code == 1
    assert parse_findings(with_names.out)[0][1:4] == (11, 16, "MSK101")


def test_head_count_names_repeatable(project, run_cli):
    (project / "block.py").write_text(CUSTOM_HEAD_COUNT_BLOCK)

    result = run_cli(["--head-count-names", "other", "--head-count-names", "attn_splits", "block.py"])

    assert result.code == 1


@pytest.mark.parametrize("value", ["attn-splits", "1heads", "a.b"])
def test_invalid_head_count_name_is_usage_error(project, run_cli, value):
    result = run_cli(["--head-count-names", value, "."])

    assert result.code == 2
    assert repr(value) in result.err


@pytest.mark.parametrize("value", ["0", "-5", "ten"])
def test_invalid_max_file_size_is_usage_error(project, run_cli, value):
    result = run_cli(["--max-file-size", value, "."])

    assert result.code == 2
    assert "--max-file-size" in result.err


def test_file_over_size_limit_is_skipped(project, run_cli):
    (project / "big.py").write_text(BUGGY_BLOCK)
    (project / "small.py").write_text("x = 1\n")
    size = len(BUGGY_BLOCK.encode())

    result = run_cli(["--max-file-size", "100", "."])

    assert result.code == 0
    assert result.out == ""
    assert f"big.py: skipped: {size} bytes, over the 100-byte limit" in result.err
    assert result.err.splitlines()[-1] == "maskcheck: 1 file checked, 1 file skipped, 0 findings"


def test_file_at_size_limit_is_checked(project, run_cli):
    (project / "block.py").write_text(BUGGY_BLOCK)
    size = len(BUGGY_BLOCK.encode())

    assert run_cli(["--max-file-size", str(size), "."]).code == 1
    assert run_cli(["--max-file-size", str(size - 1), "."]).code == 0


def test_size_notice_hidden_by_quiet(project, run_cli):
    (project / "big.py").write_text(BUGGY_BLOCK)

    result = run_cli(["-q", "--max-file-size", "100", "."])

    assert result.code == 0
    assert result.err == ""


def test_verbose_logs_each_skipped_path(project, run_cli):
    for directory in (".git", "__pycache__", "build", "dist", "pkg.egg-info", "venv", ".venv", "env_with_cfg"):
        (project / directory).mkdir()
        (project / directory / "x.py").write_text(BUGGY_BLOCK)
    (project / "env_with_cfg" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / "notes.txt").write_text("text\n")
    (project / "generated.py").write_text(BUGGY_BLOCK)
    (project / "big.py").write_text("x = 1\n" * 100)

    result = run_cli(["-v", "--exclude", "generated.py", "--max-file-size", "200", "."])

    assert result.code == 0
    lines = result.err.splitlines()
    expected = [
        "maskcheck: skipped .git: hidden directory",
        "maskcheck: skipped .venv: virtual environment",
        "maskcheck: skipped __pycache__: bytecode cache",
        "maskcheck: skipped build: build output",
        "maskcheck: skipped dist: build output",
        "maskcheck: skipped env_with_cfg: virtual environment (contains pyvenv.cfg)",
        "maskcheck: skipped generated.py: excluded by --exclude 'generated.py'",
        "maskcheck: skipped notes.txt: not a .py file",
        "maskcheck: skipped pkg.egg-info: packaging metadata",
        "maskcheck: skipped venv: virtual environment",
    ]
    for line in expected:
        assert line in lines
    assert "big.py: skipped: 600 bytes, over the 200-byte limit; " in result.err


def test_without_verbose_no_skip_log(project, run_cli):
    (project / ".git").mkdir()
    (project / ".git" / "x.py").write_text(BUGGY_BLOCK)

    result = run_cli(["."])

    assert "hidden directory" not in result.err


def test_very_verbose_logs_checked_files(project, run_cli):
    (project / "block.py").write_text(FIXED_BLOCK)

    result = run_cli(["-vv", "."])

    assert "maskcheck: checking block.py" in result.err.splitlines()


def test_exclude_glob(project, run_cli):
    (project / "models").mkdir()
    (project / "models" / "block.py").write_text(BUGGY_BLOCK)
    (project / "tests").mkdir()
    (project / "tests" / "test_block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["--exclude", "tests", "."])

    assert [finding[0] for finding in parse_findings(result.out)] == [os.path.join("models", "block.py")]


def test_named_file_in_skipped_directory_is_checked(project, run_cli):
    (project / "build").mkdir()
    (project / "build" / "block.py").write_text(BUGGY_BLOCK)

    walked = run_cli(["."])
    named = run_cli([os.path.join("build", "block.py")])
    forced = run_cli(["--force-exclude", os.path.join("build", "block.py")])

    assert walked.code == 0
    assert named.code == 1
    assert forced.code == 0


def test_errors_listed_and_other_files_checked(project, run_cli):
    (project / "a_broken.py").write_text("print 'hello'\n")
    (project / "b_block.py").write_text(BUGGY_BLOCK)
    (project / "c_bytes.py").write_bytes(b"x = '\xff\xfe'\n")

    result = run_cli(["."])

    assert result.code == 2
    assert [finding[0] for finding in parse_findings(result.out)] == ["b_block.py"]
    assert len(result.error_lines) == 2
    assert result.error_lines[0].startswith("a_broken.py: error: syntax error at line 1")
    assert result.error_lines[1].startswith("c_bytes.py: error: cannot decode")
    assert result.err.splitlines()[-1] == "maskcheck: 1 file checked, 0 files skipped, 1 finding, 2 paths with errors"


def test_internal_error_reported_per_file(project, run_cli, monkeypatch):
    (project / "a.py").write_text(BUGGY_BLOCK)
    (project / "b.py").write_text(BUGGY_BLOCK)
    real_check = cli.check_source

    def check_or_fail(source, path, settings):
        if path == "a.py":
            raise KeyError("no such axis")
        return real_check(source, path, settings)

    monkeypatch.setattr(cli, "check_source", check_or_fail)

    result = run_cli(["."])

    assert result.code == 2
    assert [finding[0] for finding in parse_findings(result.out)] == ["b.py"]
    assert result.error_lines == [
        "a.py: error: internal error in maskcheck (KeyError: 'no such axis'); please report it"
    ]


def test_multiline_error_printed_on_one_line(project, run_cli, monkeypatch):
    (project / "a.py").write_text("x = 1\n")

    def fail(source, path, settings):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(cli, "check_source", fail)

    result = run_cli(["a.py"])

    assert result.error_lines == [
        "a.py: error: internal error in maskcheck (ValueError: first line second line); please report it"
    ]
    assert len(result.err.splitlines()) == 2


def test_multiline_message_printed_on_one_line(project, run_cli, monkeypatch):
    (project / "a.py").write_text("x = 1\n")
    finding = Finding("a.py", 1, 1, "MSK101", "quotes `f(\n    x,\n)` over lines")
    monkeypatch.setattr(cli, "check_source", lambda source, path, settings: [finding])

    result = run_cli(["a.py"])

    assert result.out == "a.py:1:1: MSK101 quotes `f( x, )` over lines\n"


def test_keyboard_interrupt_exits_130(project, run_cli, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "discover", interrupt)

    result = run_cli(["."])

    assert result.code == 130
    assert result.err == "maskcheck: interrupted\n"


def test_help_documents_rules(run_cli):
    result = run_cli(["--help"])

    assert result.code == 0
    for text in ("--force-exclude", "pyvenv.cfg", "exit status", "does not change the exit status", "# noqa"):
        assert text in result.out


def test_run_does_not_write_files(project, run_cli):
    (project / "pkg").mkdir()
    (project / "pkg" / "__init__.py").write_text("")
    (project / "pkg" / "block.py").write_text(BUGGY_BLOCK)
    (project / "pkg" / "broken.py").write_text("print 'x'\n")
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in project.rglob("*") if path.is_file()}

    # The result cache is the only thing a plain run writes; --no-cache turns it off.
    result = run_cli(["-vv", "--no-cache", "."])

    after = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in project.rglob("*") if path.is_file()}
    assert result.code == 2
    assert after == before
    assert sorted(path.name for path in project.rglob("*")) == ["__init__.py", "block.py", "broken.py", "pkg"]


def test_python_dash_m_entry_point(tmp_path):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)

    result = subprocess.run(
        [sys.executable, "-m", "maskcheck", "block.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 1
    assert result.stdout.startswith(f"block.py:{BUGGY_LINE}:{BUGGY_COLUMN}: MSK101 ")


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("maskcheck")
    if not script.exists():
        script = shutil.which("maskcheck")
    if script is None:
        pytest.skip("the maskcheck console script is not installed next to this interpreter or on PATH")
    (tmp_path / "block.py").write_text(FIXED_BLOCK)

    result = subprocess.run([str(script), "block.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0
    assert result.stderr == "maskcheck: 1 file checked, 0 files skipped, 0 findings\n"


def test_closed_pipe_gives_no_traceback(tmp_path):
    for index in range(200):
        (tmp_path / f"block_{index:03}.py").write_text(BUGGY_BLOCK)
    command = f"{sys.executable} -m maskcheck . | head -n 1"

    result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert result.stdout.startswith("block_000.py:11:16: MSK101 ")
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr


def test_cli_drops_outcomes_as_they_arrive(run_cli, monkeypatch, tmp_path):
    """The command line keeps what the report needs of each outcome, not the outcome itself."""
    for index in range(4):
        (tmp_path / f"clean_{index}.py").write_text("scale = 1\n")
    (tmp_path / "repeat.py").write_text(BUGGY_BLOCK)
    references = []
    alive_when_resumed = []
    real_check_paths = cli.check_paths

    def tracking_check_paths(*arguments):
        for source, outcome in real_check_paths(*arguments):
            references.append(weakref.ref(outcome))
            yield source, outcome
            # The caller asks for the next outcome only after it has read this one.
            alive_when_resumed.append(sum(reference() is not None for reference in references))

    monkeypatch.setattr(cli, "check_paths", tracking_check_paths)
    result = run_cli(["--no-cache", "--jobs", "1", str(tmp_path)])

    assert result.code == 1
    assert len(parse_findings(result.out)) == 1
    assert "5 files checked" in result.err
    assert len(references) == 5
    # Only the outcome just read is still referenced, by the loops that read it.
    assert alive_when_resumed == [1, 1, 1, 1, 1]


def write_non_utf8_file(folder: Path) -> bytes:
    """Write BUGGY_BLOCK under a name that is not valid UTF-8 and return that name, or skip where that is impossible."""
    name = b"bug\xff.py"
    try:
        (folder / os.fsdecode(name)).write_text(BUGGY_BLOCK)
    except (OSError, UnicodeError) as error:
        pytest.skip(f"this file system does not take such names: {error}")
    return name


@pytest.mark.parametrize("output_format", ["text", "json", "sarif"])
def test_non_utf8_name_in_output_file(tmp_path, output_format):
    name = write_non_utf8_file(tmp_path)
    report = tmp_path / "report.out"

    result = subprocess.run(
        [sys.executable, "-m", "maskcheck", "--no-cache", "--output-format", output_format, "--output-file",
         str(report), "."],
        cwd=tmp_path, capture_output=True, timeout=600,
    )

    assert result.returncode == 1, result.stderr
    assert b"Traceback" not in result.stderr
    written = report.read_bytes()
    if output_format == "sarif":
        assert b"bug%FF.py" in written
    else:
        assert name in written


def test_non_utf8_name_on_strict_stdout(tmp_path):
    """A standard output with a strict UTF-8 error handler gets the name as its bytes, not a traceback."""
    name = write_non_utf8_file(tmp_path)
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8"}

    result = subprocess.run(
        [sys.executable, "-m", "maskcheck", "--no-cache", "."],
        cwd=tmp_path, capture_output=True, env=environment, timeout=600,
    )

    assert result.returncode == 1, result.stderr
    assert b"Traceback" not in result.stderr
    assert result.stdout.startswith(name + b":11:16: MSK101 ")
