"""Check many files: in worker processes, with a result cache, and in a deterministic order.

`check_paths` runs each file through the command line's `check_file`, which reads, analyses and filters it, and
yields `(source, outcome)` pairs in the order of `sources`, whatever the number of workers. Log records that a
file's check writes are collected and written by the calling process, in the same order, so `-v` output does not
depend on `--jobs` or on the cache either.

With `jobs` above 1, files without a valid cache entry are split into runs of neighbouring files, and each worker
process takes one run at a time. Neighbouring files usually import the same modules, and each worker keeps the
modules it parsed for the rest of its runs. `jobs=1` checks every file in this process, for debugging.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

# A run whose files all come from the cache needs none of the worker-process machinery, the pre-filter
# (`maskcheck.reach`), the module index or the engine. So multiprocessing, concurrent.futures and those modules are
# imported in the functions that use them.
from maskcheck.cache import FileState, ResultCache, run_fingerprint, settings_fingerprint
from maskcheck.files import STDIN_PATH, SourceFile, decode_source
from maskcheck.findings import Finding
from maskcheck.settings import Settings

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from maskcheck.index_store import IndexStore

LOG = logging.getLogger("maskcheck")

# The logger of `maskcheck.index_store`, named here so that filtering its records does not import that module.
INDEX_LOG_NAME = "maskcheck.index_store"

# (level number, logger name, message) of one log record, as a worker sends it back.
LogLine = Tuple[int, str, str]

# Runs of neighbouring files handed to a worker: at most this many files, and about this many runs per worker,
# so that a slow run near the end keeps the other workers idle for only a short time.
MAX_FILES_PER_RUN = 32
RUNS_PER_WORKER = 8

WORKER_CRASHED = (
    "the worker process checking this file stopped without a result (exit code {code}); "
    "run maskcheck with --jobs 1 on this file to see the error, and please report it"
)


def default_jobs() -> int:
    """Return the number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_jobs(text: str) -> int:
    """Parse a `--jobs` value for argparse: a whole number of at least 1."""
    import argparse

    # ASCII digits only: int() also reads "1_000", "+3" and digits of other scripts.
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give the number of worker processes")
    jobs = int(digits)
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {jobs}; --jobs 1 checks files in this process")
    return jobs


@dataclass(frozen=True)
class _Setup:
    """The settings every file's check needs, sent once to each worker process."""

    settings: Settings
    code_filter: Any
    disable_noqa: bool
    cache_dir: Optional[str]
    fingerprint: str
    entry_key: str


@dataclass
class _Checked:
    """One file's `FileOutcome` with the log records its check wrote, as they are cached and replayed."""

    outcome: Any
    log: List[LogLine]


def check_paths(
    sources: Sequence[Union[SourceFile, str]],
    settings: Settings,
    jobs: Optional[int] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    code_filter: Any = None,
    disable_noqa: bool = False,
) -> Iterator[Tuple[SourceFile, Any]]:
    """Check each source and yield `(source, FileOutcome)` in the order of `sources`.

    `jobs` is the number of worker processes (default: the number of cores); 1 checks in this process.
    `cache_dir` is the cache folder, or None to check every file without a cache. `code_filter` is the command
    line's CodeFilter (default: every code). Standard input is always checked in this process and never cached.
    """
    from maskcheck.cli import CodeFilter  # the command line imports this module, so import it late

    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    code_filter = CodeFilter() if code_filter is None else code_filter
    sources = [SourceFile(source, source) if isinstance(source, str) else source for source in sources]
    fingerprint = entry_key = ""
    if cache_dir is not None:
        fingerprint = run_fingerprint(settings, code_filter, disable_noqa)
        entry_key = settings_fingerprint(settings, code_filter, disable_noqa)
    setup = _Setup(
        settings, code_filter, disable_noqa, None if cache_dir is None else str(cache_dir), fingerprint, entry_key
    )
    checker = _FileChecker(setup)

    # The cache is read here, before any worker starts, so a run over unchanged files starts no process. A result
    # without findings or notices is kept as None and made again when its turn comes, so a run over many unchanged
    # files does not keep one decoded result per file (20,000 small files: 24 MB of PSS, against 30 MB with them).
    answered: Dict[int, Optional[_Checked]] = {}
    pending: List[Tuple[int, SourceFile, Optional[FileState]]] = []
    for index, source in enumerate(sources):
        state, cached = checker.look_up(source)
        if cached is not None:
            answered[index] = None if _is_empty(cached, source) else cached
        else:
            pending.append((index, source, state))

    in_process = deque(task for task in pending if task[1].path == STDIN_PATH)
    parallel = [task for task in pending if task[1].path != STDIN_PATH]
    workers = min(jobs, len(parallel))
    if workers <= 1:
        in_process, parallel = deque(pending), []

    checked_in_pool = _check_in_pool(checker, parallel, workers)
    try:
        for index, source in enumerate(sources):
            if index in answered:
                checked = answered.pop(index) or _empty_result(source)
            elif in_process and in_process[0][0] == index:
                _, _, state = in_process.popleft()
                checked = checker.check(source, state)
            else:
                checked_index, checked = next(checked_in_pool)
                if checked_index != index:
                    raise RuntimeError(f"worker results arrived out of order: {checked_index} for {index}")
            _emit(checked.log)
            yield source, checked.outcome
    finally:
        # Stops the workers when the caller stops early or an interrupt arrives.
        checked_in_pool.close()


def _is_empty(checked: _Checked, source: SourceFile) -> bool:
    """Return True when `checked` equals `_empty_result(source)`, so it can be dropped and made again."""
    return checked == _empty_result(source)


def _empty_result(source: SourceFile) -> _Checked:
    """Return the result of a file that `cli.check_file` analysed and found nothing in, with the record it logs."""
    from maskcheck.cli import CHECKING_MESSAGE, FileOutcome

    return _Checked(FileOutcome(), [(logging.DEBUG, "maskcheck", CHECKING_MESSAGE % source.display)])


# -------------------------------------------------------------------------------------------------------------------
# One file


class _FileChecker:
    """Checks one file at a time through the cache. One instance lives in the main process and in each worker."""

    def __init__(self, setup: _Setup) -> None:
        self.setup = setup
        self.cache = None
        # Made by the first `check`, because a file served from the cache does not need it.
        self.index_store: Optional[IndexStore] = None
        if setup.cache_dir is not None:
            self.cache = ResultCache(Path(setup.cache_dir), setup.fingerprint, setup.entry_key)

    def look_up(self, source: SourceFile) -> Tuple[Optional[FileState], Optional[_Checked]]:
        """Return the file's cache state and, when the cache contains a valid entry, its result."""
        if self.cache is None or source.path == STDIN_PATH:
            return None, None
        read = FileState.read(source.path, source.display, self.setup.settings.max_file_size)
        if read is None:
            return None, None
        state, data = read
        stored = self.cache.lookup(state)
        if stored is None:
            return state, None
        try:
            checked = _decode_checked(stored, data)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            self.cache.report_unusable(self.cache._entry_path(state), f"invalid result ({error})")
            return state, None
        return state, checked

    def check(self, source: SourceFile, state: Optional[FileState]) -> _Checked:
        """Check the file with the command line's `check_file` and store the result when it can be cached."""
        from maskcheck import cli

        setup = self.setup
        if setup.cache_dir is not None and self.index_store is None:
            from maskcheck.index_store import IndexStore

            self.index_store = IndexStore(Path(setup.cache_dir))
        record_lookups = self.cache is not None and state is not None
        with _captured_log() as log:
            with _recorded_lookups(record_lookups) as lookups, _index_store_in_use(self.index_store):
                outcome = cli.check_file(source, setup.settings, setup.code_filter, setup.disable_noqa)
            # The index store's lines are about this run's cache folder, so a later cache hit must not replay them.
            checked = _Checked(outcome, [line for line in log if line[1] != INDEX_LOG_NAME])
            if record_lookups:
                # Lines logged while storing stay out of the entry, so a later cache hit does not repeat them.
                self._store(state, lookups, checked)
        return _Checked(outcome, log)

    def _store(self, state: FileState, lookups: Set[Tuple[Tuple[str, ...], str]], checked: _Checked) -> None:
        assert self.cache is not None
        outcome = checked.outcome
        if outcome.error is not None and outcome.error.startswith("internal error"):
            return
        after = FileState.read(state.path, state.display, self.setup.settings.max_file_size)
        if after is None or after[0] != state:
            LOG.debug("not caching %s: it changed while it was checked", state.display)
            return
        encoded = _encode_checked(checked)
        if encoded is None or not _same_checked(_decode_checked(encoded, after[1]), checked):
            LOG.debug("not caching %s: its result does not survive the round trip through JSON", state.display)
            return
        self.cache.store(state, self.cache.dependencies(lookups), encoded)


@contextmanager
def _captured_log() -> Iterator[List[LogLine]]:
    """Collect every record of the `maskcheck` loggers, at every level, instead of writing it.

    All levels are kept so that a cached entry can be replayed under any `-v` level; `_emit` filters them.
    """
    logger = logging.getLogger("maskcheck")
    lines: List[LogLine] = []
    handler = _ListHandler(lines)
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.handlers, level, logger.propagate = saved[0], saved[1], saved[2]
        logger.setLevel(level)


class _ListHandler(logging.Handler):
    def __init__(self, lines: List[LogLine]) -> None:
        super().__init__(logging.DEBUG)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
        self.lines.append((record.levelno, record.name, message))


def _emit(lines: Sequence[LogLine]) -> None:
    for level, name, message in lines:
        logger = logging.getLogger(name)
        if logger.isEnabledFor(level):
            logger.log(level, "%s", message)


@contextmanager
def _recorded_lookups(enabled: bool) -> Iterator[Set[Tuple[Tuple[str, ...], str]]]:
    """Record every `(roots, dotted name)` that the analysis looks up through `ProjectIndex.find`.

    Findings can depend on the project modules a file imports, so the cache entry must name them. Recording the
    lookups the analysis made is preferred to hashing every file under the project root, for two reasons. A file's
    entry stays valid when an unrelated module changes. And a script in a large folder, such as a home directory,
    does not make every run hash the whole folder. `ProjectIndex.find` is the only way the analysis reads another file; a lookup
    that found nothing is recorded too, so creating that module later invalidates the entry.
    """
    lookups: Set[Tuple[Tuple[str, ...], str]] = set()
    if not enabled:
        yield lookups
        return
    from maskcheck import engine, reach

    global _find_wrapped
    if not _find_wrapped:
        _find_wrapped = True
        # Importing ProjectIndex imports libcst, which a file that fails the pre-filter never needs. So `find` is
        # wrapped only when the engine first loads the analysis.
        engine.call_when_analysis_loads(_wrap_project_find)
    global _reach_observed
    if not _reach_observed:
        _reach_observed = True
        # The pre-filter reads imported modules too, and a module it skips keeps its result only while they
        # are unchanged.
        reach.LOOKUP_OBSERVERS.append(_record_lookup)
    _active_lookups.append(lookups)
    try:
        yield lookups
    finally:
        # Removed by identity: two open blocks can hold equal sets.
        _active_lookups[:] = [other for other in _active_lookups if other is not lookups]


@contextmanager
def _index_store_in_use(store: Optional[IndexStore]) -> Iterator[None]:
    """Let the pre-filter read and write module facts in `store` inside the block. None turns the store off."""
    from maskcheck import reach

    saved = reach.INDEX_STORE
    reach.INDEX_STORE = store
    try:
        yield
    finally:
        reach.INDEX_STORE = saved


# The lookup sets of the `_recorded_lookups` blocks open in this process. Each lookup is added to all of them.
_active_lookups: List[Set[Tuple[Tuple[str, ...], str]]] = []
_find_wrapped = False
_reach_observed = False


def _record_lookup(lookup: Tuple[Tuple[str, ...], str]) -> None:
    for lookups in _active_lookups:
        lookups.add(lookup)


def _wrap_project_find() -> None:
    """Replace `ProjectIndex.find`, for the rest of the process, by a wrapper that records each lookup."""
    from maskcheck.analysis.project import ProjectIndex

    original = ProjectIndex.find

    def find(index, dotted):
        lookup = (tuple(str(root) for root in index.roots), dotted)
        for lookups in _active_lookups:
            lookups.add(lookup)
        return original(index, dotted)

    ProjectIndex.find = find


# -------------------------------------------------------------------------------------------------------------------
# Results as JSON


def _encode_checked(checked: _Checked) -> Optional[Dict[str, Any]]:
    """Return the outcome and log as JSON data, or None when a field contains something JSON cannot keep.

    The outcome's `text` is not stored: a lookup reads the file anyway and decodes it again.
    """
    outcome = checked.outcome
    data: Dict[str, Any] = {}
    for field in fields(outcome):
        value = getattr(outcome, field.name)
        if field.name == "findings":
            data["findings"] = [_encode_finding(finding) for finding in value]
        elif field.name != "text":
            if value is not None and not isinstance(value, (bool, int, str)):
                return None
            data[field.name] = value
    return {"outcome": data, "log": [list(line) for line in checked.log]}


def _encode_finding(finding: Finding) -> Dict[str, Any]:
    data = {field.name: getattr(finding, field.name) for field in fields(finding) if field.name != "chain"}
    chain = finding.chain
    if chain is not None:
        chain_data = {field.name: getattr(chain, field.name) for field in fields(chain)}
        chain_data["steps"] = [{field.name: getattr(step, field.name) for field in fields(step)} for step in chain.steps]
        chain_data["sizes"] = dict(chain.sizes)
        data["chain"] = chain_data
    else:
        data["chain"] = None
    return data


def _decode_checked(data: Dict[str, Any], source_bytes: bytes) -> _Checked:
    """Rebuild a stored result. Raises ValueError, TypeError, KeyError or IndexError for data of another shape."""
    from maskcheck.cli import FileOutcome

    stored = dict(data["outcome"])
    findings = [_decode_finding(item) for item in stored.pop("findings")]
    outcome = FileOutcome(findings=findings, **stored)
    if findings:
        outcome.text = decode_source(source_bytes)
    log = [(int(level), str(name), str(message)) for level, name, message in data["log"]]
    return _Checked(outcome, log)


def _decode_finding(data: Dict[str, Any]) -> Finding:
    data = dict(data)
    chain = data.pop("chain")
    if chain is not None:
        from maskcheck.chain import ChainStep, ReplayChain

        chain = dict(chain)
        chain["steps"] = tuple(ChainStep(**step) for step in chain["steps"])
        chain = ReplayChain(**chain)
    return Finding(**data, chain=chain)


def _same_checked(left: _Checked, right: _Checked) -> bool:
    if left.outcome != right.outcome or left.log != right.log:
        return False
    # Finding equality leaves the chain out, so compare the chains on their own.
    return all(a.chain == b.chain for a, b in zip(left.outcome.findings, right.outcome.findings))


# -------------------------------------------------------------------------------------------------------------------
# Worker processes


def _check_in_pool(
    checker: _FileChecker, tasks: List[Tuple[int, SourceFile, Optional[FileState]]], workers: int
) -> Iterator[Tuple[int, _Checked]]:
    """Yield `(index, result)` for every task, in order, from `workers` processes.

    When a worker process dies (the interpreter crashed, or the system ended it for lack of memory), the rest is
    checked by a single worker, one file at a time, so the file that kills it is found and reported as an error.
    When no worker process can be started at all, the files are checked in this process.
    """
    if not tasks:
        return
    from concurrent.futures.process import BrokenProcessPool

    remaining = tasks
    single = False
    while remaining:
        count = 1 if single else workers
        chunk = 1 if single else max(1, min(MAX_FILES_PER_RUN, len(remaining) // (count * RUNS_PER_WORKER)))
        executor = _start_executor(checker.setup, count)
        done = 0
        finished = False
        # The pool drops its reference to its processes once it breaks, so hold the dict now, before any
        # worker starts: a worker can die while `map` is still submitting. Workers are added to it as they start.
        # NOTE: `_processes` is private to concurrent.futures (see `_stop_executor`).
        processes = getattr(executor, "_processes", None)
        if not isinstance(processes, dict):
            processes = {}
        try:
            results = executor.map(_check_in_worker, remaining, chunksize=chunk)
            for result in results:
                yield result
                done += 1
            finished = True
            remaining = []
        except BrokenProcessPool:
            if single:
                from maskcheck.cli import FileOutcome

                index = remaining[done][0]
                error = WORKER_CRASHED.format(code=_exit_code(list(processes.values())))
                yield index, _Checked(FileOutcome(error=error), [])
                done += 1
            remaining = remaining[done:]
            single = True
        except OSError as error:
            if done:
                raise
            LOG.warning(
                "cannot start worker processes (%s); checking the files in this process",
                error.strerror or type(error).__name__,
            )
            for index, source, state in remaining:
                yield index, checker.check(source, state)
            remaining = []
        finally:
            _stop_executor(executor, wait_for_workers=finished)


def _start_executor(setup: _Setup, workers: int) -> ProcessPoolExecutor:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork starts a worker in milliseconds and keeps the parent's imports. macOS and Windows use spawn, because
    # fork is unsafe with the macOS system libraries and missing on Windows.
    methods = multiprocessing.get_all_start_methods()
    method = "fork" if "fork" in methods and sys.platform != "darwin" else "spawn"
    context = multiprocessing.get_context(method)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_start_worker,
        initargs=(setup, workers, context.Lock()),
    )


def _stop_executor(executor: ProcessPoolExecutor, wait_for_workers: bool) -> None:
    """Shut the pool down; unless `wait_for_workers`, end the workers at once, also in the middle of a file.

    Ending them at once is for an interrupt, an early `close` of `check_paths`, or a broken pool.
    """
    if wait_for_workers:
        executor.shutdown(wait=True)
        return
    terminate = getattr(executor, "terminate_workers", None)  # Python 3.14 and later
    if terminate is not None:
        terminate()
        return
    # NOTE: `_processes`, `_executor_manager_thread` and `_result_queue` are private to concurrent.futures (read in
    # CPython 3.11's source); where one is missing, its step is skipped. `shutdown` drops them, so read them first.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    thread = getattr(executor, "_executor_manager_thread", None)
    writer = getattr(getattr(executor, "_result_queue", None), "_writer", None)
    # The pool's thread learns of the shutdown before any worker ends, so it drops the futures that were cancelled
    # (`map` cancels them when its caller stops) first. Had it seen a worker end first, it would mark them as
    # failed, and CPython 3.11 prints a traceback of InvalidStateError for a cancelled future.
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=_WORKER_STOP_SECONDS)
        if process.is_alive():
            process.kill()
            process.join(timeout=_WORKER_STOP_SECONDS)
    # A worker ended in the middle of sending a result leaves part of a message in the pipe, and the pool's thread
    # then waits for the rest for ever, so `shutdown` never returned (seen once in the test suite). With every
    # worker gone, closing this process's end for writing ends that wait: the thread reads the end of the pipe,
    # takes the pool as broken, and stops.
    if writer is not None and all(not process.is_alive() for process in processes):
        writer.close()
    if thread is not None:
        thread.join()


# How long `_stop_executor` waits for an ended worker process to exit, before it kills it, and again after.
_WORKER_STOP_SECONDS = 5.0


def _exit_code(processes: list) -> str:
    # A worker that just died may not have been reaped yet. The pool's own thread reaps workers too, and when it
    # wins the race our `join` gets no status for a moment, so poll until every exit code is known.
    deadline = time.monotonic() + 2.0
    while True:
        for process in processes:
            process.join(timeout=0.1)
            if process.exitcode not in (None, 0):
                return str(process.exitcode)
        if all(process.exitcode is not None for process in processes) or time.monotonic() > deadline:
            return "unknown"
        time.sleep(0.05)


_WORKER_CHECKER: Optional[_FileChecker] = None


def _start_worker(setup: _Setup, workers: int, large_parse_lock: Any) -> None:
    from maskcheck.analysis.source_cache import share_between
    from maskcheck.parsing import share_large_parse_lock

    global _WORKER_CHECKER
    # The workers check files at the same time, so each keeps its share of the parsed-module caches, and they take
    # turns to parse large modules. With one worker per core the peak memory then stays about the same whatever
    # the number of workers.
    share_between(workers)
    share_large_parse_lock(large_parse_lock)
    # The main process handles Ctrl-C and stops the workers; a worker that saw it too would print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the command line's SIGTERM handler, but the pool stops workers with SIGTERM.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # A forked worker inherits the command line's log handler; records go back to the main process instead.
    logger = logging.getLogger("maskcheck")
    logger.handlers = []
    logger.propagate = False
    _WORKER_CHECKER = _FileChecker(setup)


def _check_in_worker(task: Tuple[int, SourceFile, Optional[FileState]]) -> Tuple[int, _Checked]:
    index, source, state = task
    assert _WORKER_CHECKER is not None
    return index, _WORKER_CHECKER.check(source, state)
