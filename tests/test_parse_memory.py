"""Memory of large parses: freed memory goes back to the operating system, and workers parse large files in turn."""

from __future__ import annotations

import gc
import multiprocessing
import os
import platform
import time
from pathlib import Path
from typing import List, Optional

import pytest
from conftest import BUGGY_BLOCK

from maskcheck import engine, parsing, runner
from maskcheck.findings import SourceError
from maskcheck.settings import Settings


def _lines(characters: int, line: str) -> str:
    """Copies of `line` with `{0}` numbered, until they make at least `characters` characters."""
    lines = []
    total = 0
    index = 0
    while total < characters:
        lines.append(line.format(index))
        total += len(lines[-1])
        index += 1
    return "".join(lines)


def _source(characters: int) -> str:
    return _lines(characters, "value_{0} = combine(first[{0}], (second, third), {{'key': [1, 2, 3]}}, scale=0.5)\n")


def _one_statement(characters: int) -> str:
    """One statement of about `characters` characters, which `parse_module_in_parts` cannot split: a call, not a
    display."""
    rows = _lines(characters, "    combine(first[{0}], (second, third), {{'key': [1, 2, 3]}}, scale=0.5),\n")
    return "TABLE = build(\n" + rows + ")\n"


@pytest.fixture
def trims(monkeypatch):
    calls = []
    monkeypatch.setattr(parsing, "release_freed_memory", lambda: calls.append(1) or True)
    return calls


def test_parse_small_source_not_trimmed(trims):
    parsing.parse_module(_source(parsing.TRIM_AFTER_CHARACTERS // 2))
    assert trims == []


def test_parse_large_source_trimmed_once(trims):
    parsing.parse_module(_source(parsing.TRIM_AFTER_CHARACTERS))
    assert trims == [1]


def test_parse_invalid_large_source_trimmed(trims):
    with pytest.raises(SourceError, match="syntax error"):
        parsing.parse_module(_source(parsing.TRIM_AFTER_CHARACTERS) + "def broken(:\n")
    assert trims == [1]


def _resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_parse_large_source_returns_memory():
    if not parsing.release_freed_memory():
        pytest.skip("the C library has no malloc_trim")
    source = _source(250 * 1024)
    before = _resident_mb()
    tree = parsing.parse_module(source)
    grown = _resident_mb() - before
    # Measured with libcst 1.9: the process grew by 28 MB with the trim and by 293 MB without it, because the
    # parser's freed memory stayed in the process.
    assert grown < 60, f"resident memory grew by {grown:.0f} MB"
    assert len(tree.body) > 1000


def test_release_freed_memory_without_malloc_trim(monkeypatch):
    monkeypatch.setattr(parsing, "_looked_up", True)
    monkeypatch.setattr(parsing, "_malloc_trim", None)
    assert parsing.release_freed_memory() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is a glibc function")
def test_release_freed_memory_in_glibc(monkeypatch):
    monkeypatch.setattr(parsing, "_looked_up", False)
    monkeypatch.setattr(parsing, "_malloc_trim", None)
    assert parsing.release_freed_memory() is True


class _RecordingLock:
    def __init__(self, acquired: bool = True) -> None:
        self.acquired = acquired
        self.events: List[str] = []

    def acquire(self, block: bool = True, timeout: Optional[float] = None) -> bool:
        self.events.append(f"acquire {timeout}")
        return self.acquired

    def release(self) -> None:
        self.events.append("release")


def test_parse_large_source_takes_shared_lock(monkeypatch):
    lock = _RecordingLock()
    monkeypatch.setattr(parsing, "_large_parse_lock", lock)
    parsing.parse_module(_source(parsing.SERIAL_PARSE_CHARACTERS))
    assert lock.events == [f"acquire {parsing.SERIAL_PARSE_WAIT_SECONDS}", "release"]


def test_parse_below_serial_size_skips_lock(monkeypatch):
    lock = _RecordingLock()
    monkeypatch.setattr(parsing, "_large_parse_lock", lock)
    parsing.parse_module(_source(parsing.SERIAL_PARSE_CHARACTERS - 200))
    assert lock.events == []


def test_parse_after_lock_timeout_releases_nothing(monkeypatch):
    lock = _RecordingLock(acquired=False)
    monkeypatch.setattr(parsing, "_large_parse_lock", lock)
    tree = parsing.parse_module(_source(parsing.SERIAL_PARSE_CHARACTERS))
    assert lock.events == [f"acquire {parsing.SERIAL_PARSE_WAIT_SECONDS}"]
    assert len(tree.body) > 1000


def test_parse_invalid_large_source_releases_lock(monkeypatch):
    lock = _RecordingLock()
    monkeypatch.setattr(parsing, "_large_parse_lock", lock)
    with pytest.raises(SourceError, match="syntax error"):
        parsing.parse_module(_source(parsing.SERIAL_PARSE_CHARACTERS) + "def broken(:\n")
    assert lock.events[-1] == "release"




@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="patches reach forked workers")
def test_pool_parses_large_files_in_turn(tmp_path, monkeypatch):
    import libcst

    intervals = tmp_path / "intervals"

    def timed_parse(source: str, *arguments, **keywords):
        started = time.monotonic()
        tree = real_libcst_parse(source, *arguments, **keywords)
        if len(source) >= parsing.SERIAL_PARSE_CHARACTERS:
            with open(intervals, "a") as handle:
                handle.write(f"{os.getpid()} {started} {time.monotonic()}\n")
        return tree

    real_libcst_parse = libcst.parse_module
    monkeypatch.setattr(libcst, "parse_module", timed_parse)
    paths = []
    for number in range(4):
        path = tmp_path / f"model_{number}.py"
        path.write_text(BUGGY_BLOCK + "\n\n" + _one_statement(parsing.SERIAL_PARSE_CHARACTERS))
        paths.append(str(path))

    results = list(runner.check_paths(paths, Settings(), jobs=2))

    assert [len(outcome.findings) for _, outcome in results] == [1, 1, 1, 1]
    records = [line.split() for line in intervals.read_text().splitlines()]
    assert len(records) == 4
    # Both workers parsed, so without the lock their parses would have overlapped.
    assert len({record[0] for record in records}) == 2
    spans = sorted((float(record[1]), float(record[2])) for record in records)
    for (_, first_end), (second_start, _) in zip(spans, spans[1:]):
        assert second_start >= first_end


@pytest.mark.parametrize("enabled_before", [True, False])
def test_syntax_check_pauses_collector(monkeypatch, enabled_before):
    seen = []
    real_parse = parsing.ast.parse

    def recording_parse(*arguments, **keywords):
        seen.append(gc.isenabled())
        return real_parse(*arguments, **keywords)

    monkeypatch.setattr(parsing.ast, "parse", recording_parse)
    if not enabled_before:
        gc.disable()
    try:
        parsing.check_syntax_and_depth("value = [1, 2, 3]\n")
        enabled_after = gc.isenabled()
    finally:
        gc.enable()
    assert seen == [False]
    assert enabled_after is enabled_before


def test_analysed_file_returns_freed_memory(monkeypatch):
    """The engine hands the memory that an analysis freed back to the system, and skips that for skipped files."""
    calls = []
    monkeypatch.setattr(engine, "release_freed_memory", lambda: calls.append(1) or True)
    analysed = "import torch.nn as nn\nlayer = nn.MultiheadAttention(8, 2)\n"
    skipped = "x = 1\n"

    engine.check_source(skipped, "skipped.py")
    after_skipped = len(calls)
    engine.check_source(analysed, "analysed.py")

    assert after_skipped == 0
    assert calls == [1]


def test_failed_analysis_returns_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "release_freed_memory", lambda: calls.append(1) or True)

    def fail(module, path, settings):
        raise RecursionError

    monkeypatch.setattr(engine, "_load_analysis", lambda: fail)

    with pytest.raises(SourceError):
        engine.check_source("import torch.nn as nn\nlayer = nn.MultiheadAttention(8, 2)\n", "failing.py")
    assert calls == [1]
