"""The progress bar on standard error: drawn only on a terminal, after a delay, and erased before the summary."""

from __future__ import annotations

import io

from conftest import BUGGY_BLOCK
from maskcheck import cli, progress
from maskcheck.progress import Progress


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_bar_drawn_and_erased_on_terminal(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    stream = Terminal()
    bar = Progress(4, enabled=True, stream=stream)

    for _ in range(4):
        bar.advance()
    bar.finish()

    output = stream.getvalue()
    assert "\rmaskcheck: [" + "#" * 7 + " " * 23 + "] 1/4 files" in output
    assert "\rmaskcheck: [" + "#" * 30 + "] 4/4 files" in output
    width = len("maskcheck: [" + "#" * 30 + "] 4/4 files")
    assert output.endswith("\r" + " " * width + "\r")


def test_no_bar_before_delay(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 3600.0)
    stream = Terminal()
    bar = Progress(2, enabled=True, stream=stream)

    bar.advance()
    bar.advance()
    bar.finish()

    assert stream.getvalue() == ""


def test_no_bar_when_not_terminal(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    stream = io.StringIO()
    bar = Progress(2, enabled=True, stream=stream)

    bar.advance()
    bar.finish()

    assert stream.getvalue() == ""


def test_no_bar_when_disabled(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    stream = Terminal()
    bar = Progress(2, enabled=False, stream=stream)

    bar.advance()
    bar.finish()

    assert stream.getvalue() == ""


def run_with_terminal_stderr(monkeypatch, tmp_path, args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(progress, "DELAY_SECONDS", 0.0)
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    stderr = Terminal()
    monkeypatch.setattr(cli.sys, "stderr", stderr)
    monkeypatch.setattr(progress.sys, "stderr", stderr)
    status = cli.main(args)
    return status, stderr.getvalue()


def test_cli_erases_bar_before_summary(monkeypatch, tmp_path, capsys):
    for index in range(3):
        (tmp_path / f"block_{index}.py").write_text(BUGGY_BLOCK)

    status, stderr = run_with_terminal_stderr(monkeypatch, tmp_path, ["."])

    assert status == 1
    assert "3/3 files" in stderr
    # Everything after the last carriage return is the bar's erasure followed by plain lines.
    drawn, _, after = stderr.rpartition("\r")
    assert drawn.rsplit("\r", 1)[-1].strip() == ""
    assert after.splitlines()[0].startswith("maskcheck: 3 findings with a fix")
    assert after.splitlines()[-1] == "maskcheck: 3 files checked, 0 files skipped, 3 findings"


def test_cli_quiet_has_no_bar(monkeypatch, tmp_path, capsys):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)

    status, stderr = run_with_terminal_stderr(monkeypatch, tmp_path, ["--quiet", "."])

    assert status == 1
    assert stderr == ""
