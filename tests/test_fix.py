"""`--fix`, `--unsafe-fixes` and `--diff`: when a fix is applied, how the file is written, and the rollback."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import libcst
import pytest

from conftest import BUGGY_BLOCK, FIXED_BLOCK, REPO_ROOT, large_filler, parse_findings
from maskcheck import cli, fix, parsing, rewrite
from maskcheck.findings import Finding, SourceError
from maskcheck.rewrite import StoredSource, read_stored, write_atomically

SNAPSHOT_INPUT = REPO_ROOT / "tests" / "snapshots" / "input" / "models"

# The snapshot input's script: a head-major torch.cat that the verifier cannot replay, so its fix is unverified.
UNVERIFIED_BEFORE = "out, _ = attn(x, x, x, attn_mask=torch.cat([masks] * num_heads))"
UNVERIFIED_AFTER = "out, _ = attn(x, x, x, attn_mask=masks.repeat_interleave(num_heads, dim=0))"


def needs_torch():
    pytest.importorskip("torch", reason="verified fixes need the runtime verifier: pip install torch==2.13.0")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def unverified(project):
    shutil.copy(SNAPSHOT_INPUT / "script.py", project / "script.py")
    return project / "script.py"


# -- which fixes are applied ----------------------------------------------------------------------------------------


def test_fix_applies_verified_fix(project, run_cli):
    needs_torch()
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)

    result = run_cli(["--fix", "block.py"])

    assert path.read_text() == FIXED_BLOCK
    assert result.code == 0
    assert result.out == ""
    assert result.err.splitlines()[-1] == "maskcheck: 1 file checked, 0 files skipped, 0 findings, 1 fixed"


def test_fix_large_file_parsed_in_parts(project, run_cli, monkeypatch):
    needs_torch()
    filler = large_filler(1500)
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK + filler)
    assert path.stat().st_size >= parsing.PARSE_IN_PARTS_CHARACTERS
    parsed = []
    real_parse = libcst.parse_module
    monkeypatch.setattr(libcst, "parse_module", lambda text, *rest: parsed.append(text) or real_parse(text, *rest))

    result = run_cli(["--fix", "--no-cache", "block.py"])

    assert path.read_text() == FIXED_BLOCK + filler
    assert result.code == 0
    # The analysis and the fix both parsed the file in parts, never as one text.
    assert parsed
    assert BUGGY_BLOCK + filler not in parsed
    assert FIXED_BLOCK + filler not in parsed


def test_second_fix_run_finds_nothing(project, run_cli):
    needs_torch()
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)

    run_cli(["--fix", "block.py"])
    second = run_cli(["--fix", "block.py"])

    assert second.code == 0
    assert second.err.splitlines()[-1] == "maskcheck: 1 file checked, 0 files skipped, 0 findings, 0 fixed"
    assert path.read_text() == FIXED_BLOCK


def test_fix_leaves_unverified_fix_and_shows_it(project, run_cli, unverified):
    needs_torch()
    before = unverified.read_bytes()

    result = run_cli(["--fix", "script.py"])

    assert unverified.read_bytes() == before
    assert result.code == 1
    assert len(parse_findings(result.out)) == 1
    assert "script.py:12:34: MSK101 fix not applied: the verifier found the finding inconclusive; " \
        "--unsafe-fixes applies it" in result.err
    assert f"    -{UNVERIFIED_BEFORE}" in result.err.splitlines()
    assert f"    +{UNVERIFIED_AFTER}" in result.err.splitlines()


def test_unsafe_fixes_apply_unverified_fix(project, run_cli, unverified):
    result = run_cli(["--fix", "--unsafe-fixes", "script.py"])

    lines = unverified.read_text().splitlines()
    assert lines[11] == UNVERIFIED_AFTER
    assert result.code == 0


def test_fix_without_torch_applies_nothing(project, unverified):
    (project / "block.py").write_text(BUGGY_BLOCK)
    code = "import sys\nsys.modules['torch'] = None\nfrom maskcheck.cli import main\nsys.exit(main(['--fix', '.']))\n"

    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300)

    assert result.returncode == 1
    assert (project / "block.py").read_text() == BUGGY_BLOCK
    assert "maskcheck: note: no fix can be verified" in result.stderr
    assert "pip install 'maskcheck[verify]'" in result.stderr
    assert "or pass --unsafe-fixes" in result.stderr
    assert "Traceback" not in result.stderr


def test_fix_without_torch_hint_installs_torch_first(project, unverified):
    code = (
        "import sys\nsys.modules['torch'] = None\nfrom maskcheck.cli import main\n"
        "sys.exit(main(['--verify', 'script.py']))\n"
    )

    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300)

    # A bare `pip install 'maskcheck[verify]'` lets pip choose a torch build, often a CUDA build of several GB.
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "install the torch build you want first (for example pip install torch==<version> einops" in lines[0]
    assert lines[0].endswith("then pip install 'maskcheck[verify]'")
    assert lines[0].count("pip install 'maskcheck[verify]'") == 1


def test_unsafe_fixes_needs_a_fix_option(project, run_cli):
    result = run_cli(["--unsafe-fixes", "."])

    assert result.code == 2
    assert "--unsafe-fixes only changes what --fix and --diff do" in result.err


def test_fix_and_diff_cannot_combine(project, run_cli):
    result = run_cli(["--fix", "--diff", "."])

    assert result.code == 2
    assert "--fix and --diff cannot be combined" in result.err


def test_fix_rejects_stdin(project, run_cli):
    result = run_cli(["--fix", "-"], stdin=BUGGY_BLOCK.encode())

    assert result.code == 2
    assert "--fix rewrites files, so it cannot take standard input" in result.err


# -- --diff ---------------------------------------------------------------------------------------------------------


def test_diff_prints_unified_diff_and_writes_nothing(project, run_cli, unverified):
    before = unverified.read_bytes()

    result = run_cli(["--diff", "--unsafe-fixes", "script.py"])

    assert unverified.read_bytes() == before
    assert result.code == 1
    assert result.out.splitlines() == [
        "--- a/script.py",
        "+++ b/script.py",
        "@@ -11,2 +11,2 @@",
        " masks = torch.stack([open_mask, closed_mask])",
        f"-{UNVERIFIED_BEFORE}",
        f"+{UNVERIFIED_AFTER}",
    ]


def test_diff_goes_to_output_file(project, run_cli, unverified):
    result = run_cli(["--diff", "--unsafe-fixes", "--output-file", "fix.diff", "script.py"])

    assert result.code == 1
    assert result.out == ""
    lines = (project / "fix.diff").read_text().splitlines()
    assert lines[:2] == ["--- a/script.py", "+++ b/script.py"]
    assert f"+{UNVERIFIED_AFTER}" in lines


@pytest.mark.parametrize(
    "option", [["--output-format", "json"], ["--output-format", "text"], ["--statistics"], ["--show-fixes"]]
)
def test_diff_rejects_report_options(project, run_cli, unverified, option):
    before = unverified.read_bytes()

    result = run_cli(["--diff", "--unsafe-fixes", *option, "script.py"])

    assert result.code == 2
    assert result.out == ""
    assert f"--diff writes a unified diff, to standard output or to --output-file, so {option[0]} does not apply" \
        in result.err
    assert unverified.read_bytes() == before


def test_diff_without_applicable_fix_exits_zero(project, run_cli):
    (project / "clean.py").write_text(FIXED_BLOCK)

    result = run_cli(["--diff", "clean.py"])

    assert result.out == ""
    assert result.code == 0


def test_diff_of_stdin(project, run_cli):
    result = run_cli(["--diff", "--unsafe-fixes", "--stdin-filename", "block.py", "-"], stdin=BUGGY_BLOCK.encode())

    assert "-        mask = mask.repeat(self.num_heads, 1, 1)" in result.out.splitlines()
    assert "+        mask = mask.repeat_interleave(self.num_heads, dim=0)" in result.out.splitlines()


# -- how files are written ------------------------------------------------------------------------------------------


def test_fix_keeps_encoding_newlines_mode_and_comments(project, run_cli):
    text = "# -*- coding: latin-1 -*-\n# Caf\xe9\n" + BUGGY_BLOCK.replace(
        "mask = mask.repeat(self.num_heads, 1, 1)", "mask = mask.repeat(self.num_heads, 1, 1)  # d\xe9j\xe0 vu"
    )
    data = text.replace("\n", "\r\n").encode("latin-1")
    path = project / "block.py"
    path.write_bytes(data)
    os.chmod(path, 0o640)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert result.code == 0
    expected = data.replace(b"mask.repeat(self.num_heads, 1, 1)", b"mask.repeat_interleave(self.num_heads, dim=0)")
    assert path.read_bytes() == expected
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_fix_keeps_byte_order_mark(project, run_cli):
    path = project / "block.py"
    path.write_bytes(b"\xef\xbb\xbf" + BUGGY_BLOCK.encode())

    run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert path.read_bytes() == b"\xef\xbb\xbf" + FIXED_BLOCK.encode()


def test_fix_writes_through_symbolic_link(project, run_cli):
    (project / "real.py").write_text(BUGGY_BLOCK)
    os.symlink("real.py", project / "link.py")

    run_cli(["--fix", "--unsafe-fixes", "link.py"])

    assert os.path.islink(project / "link.py")
    assert (project / "real.py").read_text() == FIXED_BLOCK


def test_fix_replaces_multiline_expression(project, run_cli):
    source = BUGGY_BLOCK.replace(
        "        mask = mask.repeat(self.num_heads, 1, 1)\n",
        "        mask = mask.repeat(\n            self.num_heads, 1, 1\n        )  # expanded\n",
    )
    path = project / "block.py"
    path.write_text(source)

    run_cli(["--fix", "--unsafe-fixes", "block.py"])

    # The whole flagged expression is replaced; the code and the comment after it keep their text.
    expected = BUGGY_BLOCK.replace(
        "        mask = mask.repeat(self.num_heads, 1, 1)\n",
        "        mask = mask.repeat_interleave(self.num_heads, dim=0)  # expanded\n",
    )
    assert path.read_text() == expected
    assert run_cli(["block.py"]).code == 0


def test_fix_skips_expression_with_comment(project, run_cli):
    source = BUGGY_BLOCK.replace(
        "        mask = mask.repeat(self.num_heads, 1, 1)\n",
        "        mask = mask.repeat(  # one copy per head\n            self.num_heads, 1, 1\n        )\n",
    )
    path = project / "block.py"
    path.write_text(source)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    # A replacement would drop the comment, so the file stays as it was and the run names the edit to make.
    assert path.read_text() == source
    assert result.code == 1
    assert "contains a comment" in result.err
    assert "mask.repeat_interleave(self.num_heads, dim=0)" in result.err


def test_syntax_error_file_is_never_touched(project, run_cli):
    broken = project / "broken.py"
    broken.write_text("print 'x'\n" + BUGGY_BLOCK)
    stamp = broken.stat().st_mtime_ns

    result = run_cli(["--fix", "--unsafe-fixes", "."])

    assert result.code == 2
    assert broken.stat().st_mtime_ns == stamp
    assert broken.read_text() == "print 'x'\n" + BUGGY_BLOCK


def test_no_temporary_files_left(project, run_cli):
    (project / "block.py").write_text(BUGGY_BLOCK)

    run_cli(["--fix", "--unsafe-fixes", "block.py"])

    # The atomic write names its temporary file `.block.py.<random>.maskcheck` in the same folder.
    leftovers = [path.name for path in project.iterdir() if path.name.startswith(".block.py.")]
    assert leftovers == []
    assert (project / "block.py").read_text() == FIXED_BLOCK


# -- rollback -------------------------------------------------------------------------------------------------------


def test_rollback_when_finding_remains(project, run_cli, monkeypatch):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)
    real_check = cli.check_source
    calls = []

    def check_again(source, display, settings):
        findings = real_check(source, display, settings)
        calls.append(display)
        if len(calls) > 1:
            # Pretend the analysis still flags the replaced expression.
            stale = Finding(display, 11, 16, "MSK101", "still head-major", 11, 61,
                            expression="mask.repeat_interleave(self.num_heads, dim=0)")
            return [stale]
        return findings

    monkeypatch.setattr(cli, "check_source", check_again)
    stat_before = os.stat(path)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert path.read_text() == BUGGY_BLOCK
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IMODE(stat_before.st_mode)
    assert result.code == 2
    assert (
        "block.py: error: fix rolled back, the file is unchanged: the fix did not remove the MSK101 finding"
        in result.err
    )


def test_rollback_when_fixed_file_cannot_be_analysed(project, run_cli, monkeypatch):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)
    real_check = cli.check_source

    def fail_after_write(source, display, settings):
        if "repeat_interleave" in source:
            raise SourceError("syntax error at line 11, column 5: invented for the test")
        return real_check(source, display, settings)

    monkeypatch.setattr(cli, "check_source", fail_after_write)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert path.read_text() == BUGGY_BLOCK
    assert result.code == 2
    assert "left a file that cannot be analysed (syntax error at line 11" in result.err


def test_rollback_when_new_finding_appears(project, run_cli, monkeypatch):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)
    real_check = cli.check_source

    def add_finding(source, display, settings):
        findings = real_check(source, display, settings)
        if "repeat_interleave" in source:
            findings.append(Finding(display, 12, 16, "MSK101", "new", 12, 20, expression="self"))
        return findings

    monkeypatch.setattr(cli, "check_source", add_finding)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert path.read_text() == BUGGY_BLOCK
    assert "the fix introduced a new MSK101 finding" in result.err


def test_file_changed_during_run_is_not_fixed(project, run_cli, monkeypatch):
    path = project / "block.py"
    path.write_text(BUGGY_BLOCK)
    real_check = cli.check_source

    def edit_after_check(source, display, settings):
        findings = real_check(source, display, settings)
        path.write_text(BUGGY_BLOCK + "# edited\n")
        return findings

    monkeypatch.setattr(cli, "check_source", edit_after_check)

    result = run_cli(["--fix", "--unsafe-fixes", "block.py"])

    assert path.read_text() == BUGGY_BLOCK + "# edited\n"
    assert "the file changed while maskcheck ran" in result.err
    assert result.code == 2


# -- the pieces -----------------------------------------------------------------------------------------------------


def stored(text: str, newline: str = "\n") -> StoredSource:
    return StoredSource("x.py", text.encode(), "utf-8", False, text, newline)


def test_plan_rejects_text_that_does_not_match():
    finding = Finding("x.py", 1, 5, "MSK101", "m", 1, 10, expression="other", replacement="y")

    plan = fix.plan_fixes(stored("x = m.r()\n"), [finding])

    assert plan.applied == []
    assert "not at this position" in plan.skipped[finding]


def test_plan_applies_outer_of_overlapping_fixes():
    text = "y = f(g(m))\n"
    outer = Finding("x.py", 1, 5, "MSK101", "m", 1, 12, expression="f(g(m))", replacement="F(g(m))")
    inner = Finding("x.py", 1, 7, "MSK101", "m", 1, 11, expression="g(m)", replacement="G(m)")

    plan = fix.plan_fixes(stored(text), [inner, outer])

    assert plan.text == "y = F(g(m))\n"
    assert plan.applied == [outer]
    assert "run --fix again" in plan.skipped[inner]


def test_plan_refuses_lone_backslash_line():
    text = "x = 1\n\\\ny = f(m)\n"
    finding = Finding("x.py", 3, 5, "MSK101", "m", 3, 9, expression="f(m)", replacement="g(m)")

    plan = fix.plan_fixes(stored(text), [finding])

    assert plan.text == text
    assert "lone backslash line" in plan.skipped[finding]
    assert "\\r" not in plan.skipped[finding]


def test_plan_refuses_lone_carriage_returns():
    text = "x = 1\ry = f(m)\r"
    finding = Finding("x.py", 2, 5, "MSK101", "m", 2, 9, expression="f(m)", replacement="g(m)")

    plan = fix.plan_fixes(stored(text, "\r"), [finding])

    assert plan.text == text
    assert "newlines" in plan.skipped[finding]


def test_plan_keeps_mixed_newlines():
    text = "x = 1\r\ny = f(m)\nz = 2\r\n"
    finding = Finding("x.py", 2, 5, "MSK101", "m", 2, 9, expression="f(m)", replacement="g(m)")

    plan = fix.plan_fixes(stored(text, "\r\n"), [finding])

    assert plan.text == "x = 1\r\ny = g(m)\nz = 2\r\n"


def test_plan_keeps_parentheses_of_replaced_node():
    # As the analysis reports it: the range and the expression's text both leave the parentheses out.
    text = "y = (f(m)) + 1\n"
    finding = Finding("x.py", 1, 6, "MSK101", "m", 1, 10, expression="f(m)", replacement="g(m)")

    plan = fix.plan_fixes(stored(text), [finding])

    assert plan.text == "y = (g(m)) + 1\n"


def test_write_atomically_removes_temporary_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "a.py"
    target.write_text("old\n")

    def fail(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rewrite.os, "replace", fail)

    with pytest.raises(OSError):
        write_atomically(str(target), b"new\n")

    assert target.read_text() == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.py"]


def test_read_stored_detects_newline_style(tmp_path):
    for data, newline in ((b"a = 1\r\nb = 2\r\n", "\r\n"), (b"a = 1\nb = 2\n", "\n"), (b"a = 1", "\n")):
        path = tmp_path / "a.py"
        path.write_bytes(data)

        assert read_stored(str(path)).newline == newline
