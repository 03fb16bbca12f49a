"""The file runner: worker processes, order of results, log lines, crashed workers, and the --jobs option."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import struct
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, Tuple

import pytest

from conftest import BUGGY_BLOCK, BUGGY_LINE, FIXED_BLOCK, parse_findings
from maskcheck import cli, runner
from maskcheck.files import SourceFile, discover
from maskcheck.runner import check_paths, default_jobs, parse_jobs
from maskcheck.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "fixtures"

needs_fork = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="the crash test sends os._exit through fork"
)


def outcome_rows(results) -> List[Tuple]:
    """Return everything an outcome holds, chains included, so two runs can be compared exactly."""
    rows = []
    for source, outcome in results:
        findings = [(finding, finding.message, finding.chain) for finding in outcome.findings]
        rows.append((source.display, findings, outcome.error, outcome.skip_notice, outcome.skipped, outcome.text))
    return rows


@pytest.fixture(scope="module")
def fixture_sources() -> List[SourceFile]:
    sources = discover([str(FIXTURES_DIR)]).files
    assert len(sources) > 100
    return sources


@pytest.fixture(scope="module")
def serial_rows(fixture_sources):
    """The fixtures checked one by one with the command line's `check_file`, without the runner."""
    code_filter = cli.CodeFilter()
    results = [(source, cli.check_file(source, Settings(), code_filter, False)) for source in fixture_sources]
    rows = outcome_rows(results)
    assert sum(len(row[1]) for row in rows) > 100, "the fixtures should give many findings"
    return rows


def test_one_job_matches_check_file(fixture_sources, serial_rows):
    results = check_paths(fixture_sources, Settings(), jobs=1)

    assert outcome_rows(results) == serial_rows


def test_two_jobs_match_one_job(fixture_sources, serial_rows):
    results = check_paths(fixture_sources, Settings(), jobs=2)

    assert outcome_rows(results) == serial_rows


def test_results_follow_input_order(fixture_sources):
    shuffled = list(fixture_sources)
    random.Random(7).shuffle(shuffled)

    results = list(check_paths(shuffled, Settings(), jobs=2))

    assert [source for source, _ in results] == shuffled


def test_more_jobs_than_files(tmp_path):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)

    results = list(check_paths([str(tmp_path / "block.py")], Settings(), jobs=8))

    assert len(results) == 1
    assert [finding.line for finding in results[0][1].findings] == [BUGGY_LINE]


def test_empty_source_list():
    assert list(check_paths([], Settings(), jobs=2)) == []


def test_log_lines_same_for_any_jobs(tmp_path, caplog):
    for index in range(6):
        (tmp_path / f"m{index}.py").write_text(BUGGY_BLOCK if index % 2 else FIXED_BLOCK)
    (tmp_path / "exempt.py").write_text("# flake8: noqa\n" + BUGGY_BLOCK)
    sources = discover([str(tmp_path)]).files
    caplog.set_level(logging.DEBUG, logger="maskcheck")

    logs = {}
    for jobs in (1, 2):
        caplog.clear()
        list(check_paths(sources, Settings(), jobs=jobs))
        logs[jobs] = [(record.levelname, record.getMessage()) for record in caplog.records]

    checking = [message for level, message in logs[1] if message.startswith("checking ")]
    assert checking == [f"checking {source.display}" for source in sources if "exempt" not in source.display]
    assert ("INFO", f"skipped {tmp_path / 'exempt.py'}: contains a '# flake8: noqa' line") in logs[1]
    assert logs[2] == logs[1]


def test_log_level_filters_worker_lines(tmp_path, caplog):
    for index in range(4):
        (tmp_path / f"m{index}.py").write_text(FIXED_BLOCK)
    caplog.set_level(logging.INFO, logger="maskcheck")

    list(check_paths(discover([str(tmp_path)]).files, Settings(), jobs=2))

    assert not [record for record in caplog.records if record.levelno < logging.INFO]


def test_stdin_checked_with_workers(tmp_path, monkeypatch):
    import io
    import sys

    for index in range(3):
        (tmp_path / f"m{index}.py").write_text(FIXED_BLOCK)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BUGGY_BLOCK.encode())))
    sources = discover([str(tmp_path / "m0.py"), "-", str(tmp_path)]).files

    results = list(check_paths(sources, Settings(), jobs=2, cache_dir=tmp_path / "cache"))

    assert [source.path for source, _ in results][1] == "-"
    assert [finding.line for finding in results[1][1].findings] == [BUGGY_LINE]
    assert all(not outcome.findings for source, outcome in results if source.path != "-")


@needs_fork
def test_crashed_worker_reported_as_error(tmp_path, monkeypatch):
    for index in range(6):
        (tmp_path / f"m{index}.py").write_text(BUGGY_BLOCK)
    original = cli.check_source

    def crash_on_m3(source, path, settings):
        if path.endswith("m3.py"):
            os._exit(7)
        return original(source, path, settings)

    monkeypatch.setattr(cli, "check_source", crash_on_m3)
    sources = discover([str(tmp_path)]).files

    results = list(check_paths(sources, Settings(), jobs=2))

    by_name = {Path(source.path).name: outcome for source, outcome in results}
    assert [Path(source.path).name for source, _ in results] == [f"m{index}.py" for index in range(6)]
    assert by_name["m3.py"].error is not None
    assert "worker process" in by_name["m3.py"].error
    assert "exit code 7" in by_name["m3.py"].error
    assert "--jobs 1" in by_name["m3.py"].error
    for name, outcome in by_name.items():
        if name != "m3.py":
            assert outcome.error is None, name
            assert [finding.line for finding in outcome.findings] == [BUGGY_LINE], name


def test_early_close_stops_workers(fixture_sources):
    results = check_paths(fixture_sources, Settings(), jobs=2)

    first = next(results)
    results.close()

    assert first[0] == fixture_sources[0]
    for child in multiprocessing.active_children():
        child.join(timeout=10)
    assert multiprocessing.active_children() == []


# The pool whose worker sends part of a result; a forked worker finds it here.
_POOL_WITH_PART_SENT = None


def _send_part_of_a_result(_: int) -> None:
    writer = _POOL_WITH_PART_SENT._result_queue._writer
    # The header of a 1,000-byte message, and 10 of its bytes.
    os.write(writer.fileno(), struct.pack("!i", 1000) + b"x" * 10)
    time.sleep(600)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the worker must be forked")
def test_stop_executor_after_partial_result():
    global _POOL_WITH_PART_SENT
    executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    _POOL_WITH_PART_SENT = executor
    writer = executor._result_queue._writer
    try:
        executor.submit(_send_part_of_a_result, 0)
        # Let the pool's thread start reading the message.
        time.sleep(1.0)
        stopping = threading.Thread(target=runner._stop_executor, args=(executor, False), daemon=True)
        stopping.start()
        stopping.join(timeout=30)
        stopped = not stopping.is_alive()
    finally:
        # Unblock the pool's thread if the stop did not, so that this process can still exit.
        writer.close()
        _POOL_WITH_PART_SENT = None
    assert stopped
    assert multiprocessing.active_children() == []


def test_jobs_below_one_rejected():
    with pytest.raises(ValueError):
        list(check_paths([], Settings(), jobs=0))


@pytest.mark.parametrize("text", ["0", "-2", "two", ""])
def test_parse_jobs_rejects(text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        parse_jobs(text)


def test_parse_jobs_accepts():
    assert parse_jobs("3") == 3


def test_default_jobs_counts_cores():
    assert 1 <= default_jobs() <= (os.cpu_count() or 1)


# The command line


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'demo'\n")
    for index in range(5):
        (tmp_path / f"block{index}.py").write_text(BUGGY_BLOCK if index != 2 else FIXED_BLOCK)
    return tmp_path


def test_cli_jobs_same_output(project, run_cli):
    serial = run_cli(["--no-cache", "--jobs", "1", "."])
    parallel = run_cli(["--no-cache", "--jobs", "2", "."])

    assert serial.code == parallel.code == 1
    assert len(parse_findings(serial.out)) == 4
    assert parallel.out == serial.out
    assert parallel.err == serial.err


def test_cli_jobs_zero_is_usage_error(project, run_cli):
    result = run_cli(["--jobs", "0", "."])

    assert result.code == 2
    assert "--jobs" in result.err
    assert "at least 1" in result.err


def test_cli_no_cache_writes_nothing(project, run_cli):
    before = sorted(path.name for path in project.iterdir())

    run_cli(["--no-cache", "."])

    assert sorted(path.name for path in project.iterdir()) == before


def test_cli_cache_in_project_root(project, run_cli):
    (project / "sub").mkdir()
    (project / "sub" / "inner.py").write_text(BUGGY_BLOCK)

    cold = run_cli(["sub"])
    warm = run_cli(["sub"])

    assert (project / ".maskcheck_cache" / "CACHEDIR.TAG").is_file()
    assert not (project / "sub" / ".maskcheck_cache").exists()
    assert cold.code == warm.code == 1
    assert warm.out == cold.out
    assert warm.err == cold.err


def test_cli_warm_run_skips_analysis(project, run_cli, monkeypatch):
    cold = run_cli(["--jobs", "1", "."])

    def fail(*args):
        raise AssertionError("the warm run analysed a file")

    monkeypatch.setattr(cli, "check_source", fail)
    warm = run_cli(["--jobs", "2", "."])

    assert warm.out == cold.out
    assert warm.code == cold.code == 1
