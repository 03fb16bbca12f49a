"""SIGTERM stops the command line and its worker processes, as Ctrl-C does."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BUGGY_BLOCK

from maskcheck import cli

pytestmark = pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(), reason="lists child processes from /proc"
)



def _children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_stops_workers_and_exits_143(tmp_path):
    filler = "".join(f"value_{index} = combine(first[{index}], (second, third), scale=0.5)\n" for index in range(9000))
    for number in range(4):
        (tmp_path / f"model_{number}.py").write_text(BUGGY_BLOCK + "\n\n" + filler)
    process = subprocess.Popen(
        [sys.executable, "-m", "maskcheck", "--no-cache", "--jobs", "2", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
            workers = _children(process.pid)
        assert len(workers) >= 2, "the worker processes did not start"

        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)

        assert process.returncode == 128 + signal.SIGTERM
        assert err.strip().splitlines()[-1] == "maskcheck: terminated"
        # The pool's thread must not fail on futures that were cancelled as the run stopped.
        assert "Traceback" not in err
        deadline = time.monotonic() + 10
        while any(_alive(worker) for worker in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [worker for worker in workers if _alive(worker)]
    finally:
        # A failed check must not leave processes behind.
        for pid in [process.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        process.communicate()


def test_main_restores_sigterm_handler(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "_main", lambda argv: 0)
    assert cli.main([]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_terminated_main_exits_143(monkeypatch, capsys):
    def terminate(argv):
        raise cli.Terminated()

    monkeypatch.setattr(cli, "_main", terminate)
    assert cli.main([]) == 143
    assert capsys.readouterr().err == "maskcheck: terminated\n"


def test_sigterm_during_file_check_stops_run(tmp_path, run_cli, monkeypatch):
    for number in range(3):
        (tmp_path / f"model_{number}.py").write_text(BUGGY_BLOCK)
    checked = []

    def cleanup_fails(source, path="<stdin>", settings=None):
        # As in libcst's position pass: the signal arrives in a `try` whose `finally` raises another exception.
        checked.append(path)
        try:
            cli._raise_terminated(signal.SIGTERM, None)
        finally:
            raise KeyError("cleanup")

    monkeypatch.setattr(cli, "check_source", cleanup_fails)
    result = run_cli([str(tmp_path), "--jobs", "1", "--no-cache"])

    assert result.code == 143
    assert result.err == "maskcheck: terminated\n"
    assert len(checked) == 1


def test_sigterm_outside_file_check_exits_143(monkeypatch, capsys):
    def cleanup_fails(argv):
        try:
            cli._raise_terminated(signal.SIGTERM, None)
        finally:
            raise KeyError("cleanup")

    monkeypatch.setattr(cli, "_main", cleanup_fails)
    assert cli.main([]) == 143
    assert capsys.readouterr().err == "maskcheck: terminated\n"


def test_second_sigterm_is_ignored(monkeypatch):
    monkeypatch.setattr(cli, "_terminating", True)
    assert cli._raise_terminated(signal.SIGTERM, None) is None


def test_main_clears_sigterm_state(monkeypatch):
    def terminate(argv):
        cli._raise_terminated(signal.SIGTERM, None)

    monkeypatch.setattr(cli, "_main", terminate)
    assert cli.main([]) == 143
    assert cli._terminating is False


def _signal_self_then_wait() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    sys.exit(3)


def test_forked_child_ends_by_signal(monkeypatch):
    # A pool worker that gets SIGTERM before its initializer restores the default action.
    monkeypatch.setattr(cli, "_handler_pid", os.getpid())
    previous = signal.signal(signal.SIGTERM, cli._raise_terminated)
    try:
        child = multiprocessing.get_context("fork").Process(target=_signal_self_then_wait)
        child.start()
        child.join(timeout=30)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert child.exitcode == -signal.SIGTERM
