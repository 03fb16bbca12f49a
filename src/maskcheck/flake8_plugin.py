"""flake8 adapter: runs the maskcheck engine on the lines flake8 has read and reports its findings.

flake8 applies `--select`, `--ignore`, `--extend-ignore`, `--per-file-ignores`, `--exclude`, `# noqa` and
`# flake8: noqa` to what this plugin yields, so the plugin does none of that itself. It honours
`# maskcheck: skip-file` as the command line does, unless flake8 runs with `--disable-noqa`. This module imports
neither flake8 nor torch at import time, and libcst is imported only for the first file that passes the engine's
pre-filter.

Results are cached in the command line's cache folder, under their own fingerprint (`maskcheck.flake8_cache`),
unless flake8 runs with `--maskcheck-no-cache`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from maskcheck import __version__
from maskcheck.analysis.source_cache import share_between
from maskcheck.config import parse_call_depth, parse_consumer_callables, parse_head_count_names
from maskcheck.engine import check_source
from maskcheck.findings import SourceError
from maskcheck.flake8_cache import PluginCaches, PluginResult
from maskcheck.noqa import file_is_skipped
from maskcheck.report import single_line
from maskcheck.settings import DEFAULT_MAX_CALL_DEPTH, Settings

# Reported once, at line 1, when flake8 could parse the file but the engine raised SourceError, for example for
# nesting past the engine's depth limit. Without it such a file would pass unchecked and unreported.
UNANALYSABLE_CODE = "MSK001"

HEAD_COUNT_NAMES_OPTION = "--maskcheck-head-count-names"
CONSUMER_CALLABLES_OPTION = "--maskcheck-consumer-callables"
MAX_CALL_DEPTH_OPTION = "--maskcheck-max-call-depth"
NO_CACHE_OPTION = "--maskcheck-no-cache"
CACHE_DIR_OPTION = "--maskcheck-cache-dir"


class MaskcheckPlugin:
    """flake8 checker for the `MSK` codes.

    flake8 picks the plugin kind from the constructor's parameters and supports only tree, logical-line and
    physical-line plugins. So the constructor accepts `tree` but does not use it, because the engine parses the
    joined `lines` with libcst.
    """

    name = "maskcheck"
    version = __version__

    # Set by `parse_options` once per flake8 process, including each worker process of `--jobs`.
    settings = Settings()
    disable_noqa = False
    # None until `parse_options` turns the cache on, so the plugin called without flake8 writes no cache folder.
    caches: Optional[PluginCaches] = None
    # How many worker processes flake8 checks files in when it checks them in parallel (`parse_options`).
    parallel_jobs = 1

    def __init__(self, tree: Any, lines: List[str], filename: str) -> None:
        self.lines = lines
        self.filename = filename

    @classmethod
    def add_options(cls, parser: Any) -> None:
        """Register the maskcheck options on flake8's option manager; flake8 also reads them from its config."""
        parser.add_option(
            HEAD_COUNT_NAMES_OPTION,
            default="",
            parse_from_config=True,
            comma_separated_list=True,
            help="comma-separated names that also mean the number of attention heads, "
            "alone or at the end of an attribute chain (for example: n_attn_heads,groups)",
        )
        parser.add_option(
            CONSUMER_CALLABLES_OPTION,
            default="",
            parse_from_config=True,
            comma_separated_list=True,
            help="comma-separated dotted names of your own attention callables whose attn_mask argument is read "
            "like nn.MultiheadAttention's (for example: mylib.attention.fused_attention)",
        )
        parser.add_option(
            MAX_CALL_DEPTH_OPTION,
            default=str(DEFAULT_MAX_CALL_DEPTH),
            parse_from_config=True,
            help="follow calls into the project's own functions and layers at most this many calls deep "
            f"(default: {DEFAULT_MAX_CALL_DEPTH}; 0 follows none)",
        )
        parser.add_option(
            NO_CACHE_OPTION,
            action="store_true",
            default=False,
            parse_from_config=True,
            help="do not read or write maskcheck's result cache (.maskcheck_cache in the project root of each file)",
        )
        parser.add_option(
            CACHE_DIR_OPTION,
            default=None,
            metavar="DIR",
            parse_from_config=True,
            normalize_paths=True,
            help="keep maskcheck's result cache in DIR instead of .maskcheck_cache in the project root of each file",
        )

    @classmethod
    def parse_options(cls, options: argparse.Namespace) -> None:
        """Build the engine settings from flake8's parsed options; invalid names stop flake8 with a message."""
        head_count_names = cls._parse(options, HEAD_COUNT_NAMES_OPTION, parse_head_count_names)
        consumer_callables = cls._parse(options, CONSUMER_CALLABLES_OPTION, parse_consumer_callables)
        max_call_depth = cls._parse(options, MAX_CALL_DEPTH_OPTION, _call_depth_or_default)
        cls.settings = Settings(
            extra_head_count_names=head_count_names,
            extra_consumer_callables=consumer_callables,
            max_call_depth=max_call_depth,
        )
        cls.disable_noqa = bool(getattr(options, "disable_noqa", False))
        cls.parallel_jobs = _flake8_processes(options)
        if getattr(options, NO_CACHE_OPTION.lstrip("-").replace("-", "_"), False):
            cls.caches = None
        else:
            cache_dir = getattr(options, CACHE_DIR_OPTION.lstrip("-").replace("-", "_"), None)
            cls.caches = PluginCaches(cls.settings, cls.disable_noqa, cache_dir or None)

    @staticmethod
    def _parse(options: argparse.Namespace, option: str, parse) -> Any:
        raw = getattr(options, option.lstrip("-").replace("-", "_"), "")
        values: Sequence[str] = [raw] if isinstance(raw, str) else list(raw or [])
        try:
            return parse(values)
        except ValueError as error:
            # flake8 prints an ExecutionError's message without a traceback and exits with status 1.
            from flake8.exceptions import ExecutionError

            raise ExecutionError(f"{option}: {error}") from None

    def run(self) -> Iterator[Tuple[int, int, str, type]]:
        """Yield `(line, column, "CODE message", type)` with flake8's 0-based column."""
        if not self.disable_noqa and file_is_skipped(self.lines):
            return
        _share_cache_budget(self.parallel_jobs)
        source = "".join(self.lines)
        if self.caches is None:
            result = self._analyse(source)
        else:
            result = self.caches.check(self.filename, source, lambda: self._analyse(source))

        if result.source_error is not None:
            yield 1, 0, f"{UNANALYSABLE_CODE} maskcheck could not analyse this file: {result.source_error}", type(self)
            return
        for line, column, text in result.findings:
            yield line, column, text, type(self)

    def _analyse(self, source: str) -> PluginResult:
        try:
            findings = check_source(source, self.filename, self.settings)
        except SourceError as error:
            return PluginResult(source_error=str(error))
        return PluginResult(
            tuple(
                (finding.line, finding.col - 1, f"{finding.code} {single_line(finding.message)}")
                for finding in findings
            )
        )


def _share_cache_budget(parallel_jobs: int) -> None:
    """Give this process its share of the cache budget of parsed project modules.

    flake8's worker processes check files at the same time, as the command line's workers do, so each keeps an
    equal share and the peak memory does not grow with the number of jobs. flake8's main process checks files only
    when it runs serially, and then keeps the whole budget.
    """
    import multiprocessing

    share_between(parallel_jobs if multiprocessing.parent_process() is not None else 1)


def _flake8_processes(options: argparse.Namespace) -> int:
    """Return how many worker processes flake8 starts, as flake8's `Manager._job_count` decides: 1 for standard
    input, the number of cores for `--jobs auto` (flake8's default), else the number given.

    NOTE: flake8 7 starts no more processes than it found files, which its options do not show. With fewer files
    than jobs, each process then keeps less than its share, while it checks about one file.
    """
    if "-" in (getattr(options, "filenames", None) or ()):
        return 1
    jobs = getattr(options, "jobs", None)
    if jobs is None:
        return 1
    if getattr(jobs, "is_auto", False):
        return os.cpu_count() or 1
    return max(1, getattr(jobs, "n_jobs", 1))


def _call_depth_or_default(values: Sequence[str]) -> int:
    """Parse the call depth option; an empty value, as when the option was never registered, means the default."""
    if not "".join(values).strip():
        return DEFAULT_MAX_CALL_DEPTH
    return parse_call_depth(values)
