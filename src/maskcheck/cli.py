"""The `maskcheck` command: read the configuration, find files, analyse them, verify, fix, and print a report."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Dict, FrozenSet, Generator, Iterator, List, Optional, Sequence, Tuple

# A run whose files all come from the result cache must not pay for modules it does not use. So the engine (and
# with it the pre-filter), the noqa parser, the rewriting helpers and the worker processes are imported where they
# are first needed, and `maskcheck.report` imports only the output format that was chosen.
from maskcheck import __version__
from maskcheck.cache import CACHE_DIR_NAME, default_cache_dir
from maskcheck.config import (
    ConfigError,
    FileConfig,
    find_pyproject,
    load_config,
    parse_call_depth,
    parse_consumer_callables,
    parse_head_count_names,
    shown_path,
    unknown_code_problem,
)
from maskcheck.files import (
    STDIN_PATH,
    FileTooLarge,
    PathError,
    ReadError,
    SourceFile,
    discover,
    read_source,
    split_lines,
)
from maskcheck.findings import Finding, SourceError
from maskcheck.progress import Progress
from maskcheck.report import (
    DEFAULT_FORMAT,
    FORMAT_NAMES,
    STATISTICS_FORMATS,
    FixState,
    PathProblem,
    RenderOptions,
    Report,
    ReportedFinding,
    render,
    single_line,
)
from maskcheck.runner import check_paths, parse_jobs
from maskcheck.settings import DEFAULT_MAX_CALL_DEPTH, DEFAULT_MAX_FILE_SIZE, Settings

if TYPE_CHECKING:
    import ast
    import pkgutil

LOG = logging.getLogger("maskcheck")

EXIT_CLEAN = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

DESCRIPTION = "Find attention-mask bugs in PyTorch code that run without an error."

EPILOG = f"""\
which files are checked:
  Directories are walked for *.py files in name order. The walk skips hidden
  directories, virtual environments (a directory containing pyvenv.cfg, or one
  named venv or .venv), __pycache__, build, dist and *.egg-info, and every
  path that an --exclude glob matches. As in ruff, a path named on the command
  line is always checked, whatever its name or extension, unless
  --force-exclude is given. Use - to read standard input.

configuration:
  Settings are read from [tool.maskcheck] in the nearest pyproject.toml that
  has that table, at or above the first PATH, or from the file given with
  --config. Command-line options override the file.

files over the size limit:
  A file larger than --max-file-size (default {DEFAULT_MAX_FILE_SIZE} bytes) is skipped with a
  message on standard error. A skipped file does not change the exit status,
  because a large .py file is almost always generated data.

noqa:
  "# noqa" and "# noqa: MSK101" suppress findings as flake8 7 does: on the
  finding's line, or on any line of the same backslash continuation or
  multi-line string. Inside brackets only the finding's own line counts. A
  line "# flake8: noqa" or "# maskcheck: skip-file" skips the whole file.
  --disable-noqa turns all of them off.

fixes:
  --fix applies a fix only when, in this run, the runtime verifier confirmed
  the finding and verified the replacement (it needs torch). --unsafe-fixes
  applies the others too. --diff prints what --fix would change, as a unified
  diff to standard output or to --output-file, and changes no file.

exit status:
  0  no findings (or --exit-zero, or only findings the verifier found benign
     without --strict)
  1  findings were printed (with --diff: a fix would change a file)
  2  usage or configuration error, a file or directory could not be read or
     analysed, a fix was rolled back, --verify without torch, or the report
     could not be written
  130  interrupted with Ctrl-C
  143  stopped with SIGTERM
"""


@lru_cache(maxsize=None)
def known_codes() -> Tuple[str, ...]:
    """Return the rule codes that --select and --ignore accept, read from the rule modules' source.

    Importing the rule registry (`maskcheck.rules`) imports every rule and libcst, which a run over cached files
    does not need. So each module of the rules package is read with the stdlib parser. A module counts as a rule
    when its name does not start with "_" and its body assigns a string to `CODE` and defines `check`, as the
    registry requires. When a module's source cannot be read or parsed (an install without .py files), this falls
    back to the registry.
    """
    import ast
    import importlib.util
    import pkgutil

    codes = []
    spec = importlib.util.find_spec("maskcheck.rules")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for info in pkgutil.iter_modules(locations):
        if info.name.startswith("_"):
            continue
        source = _module_source(info, f"maskcheck.rules.{info.name}")
        try:
            tree = ast.parse(source) if source is not None else None
        except (SyntaxError, ValueError):
            tree = None
        if tree is None:
            from maskcheck.rules import KNOWN_CODES

            return tuple(sorted(KNOWN_CODES))
        code = _rule_code(tree)
        if code is not None:
            codes.append(code)
    return tuple(sorted(codes))


def _module_source(info: pkgutil.ModuleInfo, name: str) -> Optional[str]:
    """Return the source text of a module that `pkgutil.iter_modules` listed, or None when it has none."""
    try:
        module_spec = info.module_finder.find_spec(name)  # type: ignore[call-arg]
        if module_spec is None or module_spec.loader is None:
            return None
        return module_spec.loader.get_source(name)  # type: ignore[attr-defined]
    except (ImportError, OSError, AttributeError):
        return None


def _rule_code(tree: ast.Module) -> Optional[str]:
    """Return the string a module assigns to `CODE` at top level when it also defines `check`, else None."""
    import ast

    code = None
    has_check = False
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and statement.name == "check":
            has_check = True
        elif isinstance(statement, ast.Assign):
            named_code = any(isinstance(target, ast.Name) and target.id == "CODE" for target in statement.targets)
            if named_code and isinstance(statement.value, ast.Constant) and isinstance(statement.value.value, str):
                code = statement.value.value
    return code if has_check else None


@dataclass(frozen=True)
class CodeFilter:
    """--select and --ignore as flake8 combines them: the longest matching prefix decides, and a tie ignores.

    `per_file_ignores` pairs a glob with codes that are ignored in the files it matches, even when `select` matches
    them.
    A glob is matched with the file's path relative to `base` (the configuration file's folder) and, when it has no
    `/`, with the file name too.
    """

    select: Tuple[str, ...] = ()
    ignore: Tuple[str, ...] = ()
    per_file_ignores: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    base: str = "."

    def allows(self, code: str, path: Optional[str] = None) -> bool:
        selected = self._longest_match(code, self.select) if self.select else 0
        ignored = self._longest_match(code, self.ignore)
        if selected <= ignored:
            return False
        if path is not None and self.per_file_ignores:
            return not any(code.startswith(prefix) for prefix in self.ignored_in(path))
        return True

    def ignored_in(self, path: str) -> Tuple[str, ...]:
        import fnmatch

        if path == STDIN_PATH:
            return ()
        relative = os.path.relpath(os.path.abspath(path), self.base).replace(os.sep, "/")
        name = os.path.basename(path)
        codes: List[str] = []
        for glob, listed in self.per_file_ignores:
            glob = glob.replace(os.sep, "/")
            if glob.startswith("./"):
                glob = glob[2:]
            if fnmatch.fnmatchcase(relative, glob) or ("/" not in glob and fnmatch.fnmatchcase(name, glob)):
                codes.extend(listed)
        return tuple(codes)

    @staticmethod
    def _longest_match(code: str, prefixes: Sequence[str]) -> int:
        lengths = [len(prefix) for prefix in prefixes if code.startswith(prefix)]
        return max(lengths, default=-1)


@dataclass
class FileOutcome:
    """The result of checking one file: its findings, or the error or notice that replaced them."""

    findings: List[Finding] = field(default_factory=list)
    error: Optional[str] = None
    skip_notice: Optional[str] = None
    skipped: bool = False
    # The text the analysis read (newlines as `\n`), kept for files with findings: fixes and excerpts need it.
    text: Optional[str] = None


# -------------------------------------------------------------------------------------------------------------------
# Options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskcheck",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files and directories to check (default: .); - reads standard input",
    )
    _add_file_options(parser.add_argument_group("files"))
    _add_rule_options(parser.add_argument_group("rules"))
    _add_verify_options(parser.add_argument_group("verification"))
    _add_fix_options(parser.add_argument_group("fixes and suppressions"))
    _add_output_options(parser.add_argument_group("output"))
    _add_config_options(parser.add_argument_group("configuration"))
    parser.add_argument("--explain", metavar="CODE", help="print the documentation of rule CODE and exit")
    parser.add_argument("--version", action="version", version=f"maskcheck {__version__}")
    return parser


def _add_file_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--exclude",
        action="append",
        default=None,
        metavar="GLOB",
        help="skip paths matching GLOB, compared with each path part and with the path relative to the named "
        "directory and to the current directory; may be repeated; replaces `exclude` from the configuration",
    )
    group.add_argument(
        "--extend-exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip paths matching GLOB in addition to --exclude and the configuration's excludes; may be repeated",
    )
    group.add_argument(
        "--force-exclude",
        action="store_true",
        help="apply the excludes and the default directory rules to paths named on the command line too",
    )
    group.add_argument(
        "--max-file-size",
        type=int,
        default=None,
        metavar="BYTES",
        help=f"skip files larger than BYTES bytes (default: {DEFAULT_MAX_FILE_SIZE})",
    )
    group.add_argument(
        "--stdin-filename",
        metavar="NAME",
        help="path to show for standard input (default: -); implies - when no PATH is given",
    )
    group.add_argument(
        "--jobs",
        "-j",
        type=parse_jobs,
        default=None,
        metavar="N",
        help="check files in N worker processes (default: the number of cores); 1 checks them in this process",
    )
    group.add_argument(
        "--no-cache",
        action="store_true",
        help=f"do not read or write the cache of results and module index ({CACHE_DIR_NAME} in the project root "
        "of the first PATH that exists)",
    )


def _add_rule_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--select",
        action="append",
        default=None,
        metavar="CODES",
        help="report only these comma-separated codes or prefixes (MSK selects all, MSK1 selects MSK1xx)",
    )
    group.add_argument(
        "--ignore",
        action="append",
        default=None,
        metavar="CODES",
        help="do not report these comma-separated codes or prefixes; when --select also matches, "
        "the longer prefix wins",
    )
    group.add_argument(
        "--head-count-names",
        action="append",
        default=None,
        metavar="NAMES",
        help="comma-separated names that also mean the number of attention heads, alone or at the end of an "
        "attribute chain (for example: n_attn_heads,groups)",
    )
    group.add_argument(
        "--max-call-depth",
        type=_call_depth,
        default=None,
        metavar="N",
        help=f"follow calls into the project's own functions and layers at most N calls deep "
        f"(default: {DEFAULT_MAX_CALL_DEPTH}; 0 follows none)",
    )
    group.add_argument(
        "--consumer-callables",
        action="append",
        default=None,
        metavar="NAMES",
        help="comma-separated dotted names of your own attention callables whose attn_mask argument is read "
        "like nn.MultiheadAttention's (for example: mylib.attention.fused_attention)",
    )


def _add_verify_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--verify",
        action="store_true",
        help="replay each finding's mask construction with torch and print the verdict: confirmed, benign or "
        "inconclusive (needs torch: install the torch build you want, then pip install 'maskcheck[verify]')",
    )
    group.add_argument(
        "--strict",
        action="store_true",
        help="make findings that the verifier found benign set exit status 1 too",
    )


def _add_fix_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--fix",
        action="store_true",
        help="apply the fixes that the verifier verified in this run (turns --verify on when torch is installed)",
    )
    group.add_argument(
        "--unsafe-fixes",
        action="store_true",
        help="with --fix or --diff, also apply fixes that were not verified",
    )
    group.add_argument(
        "--diff",
        action="store_true",
        help="print the changes that --fix would make as a unified diff (to --output-file when given), and change "
        "no file",
    )
    group.add_argument(
        "--add-noqa",
        action="store_true",
        help='add "# noqa: CODE" comments for every current finding, and print nothing else',
    )
    group.add_argument(
        "--disable-noqa",
        action="store_true",
        help='report findings on lines with "# noqa" and in files with "# flake8: noqa" or '
        '"# maskcheck: skip-file" too',
    )


def _add_output_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--output-format",
        choices=FORMAT_NAMES,
        default=None,
        help="text: one line per finding (default); full: with source excerpt, slot picture, evidence and fix; "
        "json: the schema in docs/integration.md; github: workflow annotations; sarif: SARIF 2.1.0; junit: JUnit XML",
    )
    group.add_argument(
        "--output-file",
        metavar="FILE",
        help="write the report, or the diff of --diff, to FILE instead of standard output",
    )
    group.add_argument(
        "--statistics",
        action="store_true",
        help="print the number of findings per code instead of the findings (text, full and json formats)",
    )
    group.add_argument(
        "--show-fixes",
        action="store_true",
        help="list each fix after the findings: the ones applied in this run and the available ones, as diffs",
    )
    group.add_argument("--exit-zero", action="store_true", help="exit with status 0 even when findings are printed")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log every skipped path and the reason on standard error; -vv also logs each checked file",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only findings and errors: no summary line, progress bar or skipped-file messages",
    )


def _add_config_options(group: argparse._ArgumentGroup) -> None:
    exclusive = group.add_mutually_exclusive_group()
    exclusive.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from FILE: its [tool.maskcheck] table, or its top level when it has none",
    )
    exclusive.add_argument("--isolated", action="store_true", help="read no configuration file")


def _parse_codes(parser: argparse.ArgumentParser, values: Sequence[str], option: str) -> Tuple[str, ...]:
    codes = []
    for value in values:
        for code in value.split(","):
            code = code.strip()
            if not code:
                continue
            problem = unknown_code_problem(code, known_codes())
            if problem is not None:
                parser.error(f"{option}: {problem}")
            codes.append(code)
    return tuple(codes)


@dataclass(frozen=True)
class RunOptions:
    """The merged settings of the command line and the configuration file."""

    settings: Settings
    code_filter: CodeFilter
    excludes: Tuple[str, ...]
    config_path: Optional[str]


def merge_options(parser: argparse.ArgumentParser, options: argparse.Namespace, config: FileConfig) -> RunOptions:
    """Combine the configuration file with the command line, whose options replace the file's values."""
    max_file_size = options.max_file_size if options.max_file_size is not None else config.max_file_size
    if max_file_size is None:
        max_file_size = DEFAULT_MAX_FILE_SIZE
    if options.max_file_size is not None and options.max_file_size < 1:
        parser.error(f"--max-file-size must be a positive number of bytes, got {options.max_file_size}")

    try:
        head_count_names = (
            parse_head_count_names(options.head_count_names)
            if options.head_count_names is not None
            else config.head_count_names or frozenset()
        )
    except ValueError as error:
        parser.error(f"--head-count-names: {error}")
    try:
        consumer_callables = (
            parse_consumer_callables(options.consumer_callables)
            if options.consumer_callables is not None
            else config.consumer_callables or frozenset()
        )
    except ValueError as error:
        parser.error(f"--consumer-callables: {error}")

    select = _parse_codes(parser, options.select, "--select") if options.select is not None else config.select
    ignore = _parse_codes(parser, options.ignore, "--ignore") if options.ignore is not None else config.ignore
    code_filter = CodeFilter(
        select=tuple(select or ()),
        ignore=tuple(ignore or ()),
        per_file_ignores=config.per_file_ignores,
        base=config.base,
    )

    if options.exclude is not None:
        excludes = list(options.exclude)
    else:
        excludes = [_config_glob(glob, config.base) for glob in config.exclude or ()]
    excludes.extend(_config_glob(glob, config.base) for glob in config.extend_exclude)
    excludes.extend(options.extend_exclude)

    settings = Settings(
        extra_head_count_names=head_count_names,
        extra_consumer_callables=consumer_callables,
        max_file_size=max_file_size,
        max_call_depth=_first_set(options.max_call_depth, config.max_call_depth, DEFAULT_MAX_CALL_DEPTH),
    )
    return RunOptions(settings, code_filter, tuple(excludes), config.path)


def _first_set(*values: Optional[int]) -> int:
    """Return the first value that is not None: the command line's, then the configuration file's, then the default."""
    return next(value for value in values if value is not None)


def _call_depth(text: str) -> int:
    try:
        return parse_call_depth([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _config_glob(glob: str, base: str) -> str:
    """Anchor a configuration glob that names a path (`src/generated/*`) at the configuration file's folder."""
    if "/" not in glob.strip("/") or os.path.isabs(glob):
        return glob
    return os.path.join(base, glob[2:] if glob.startswith("./") else glob).replace(os.sep, "/")


def _load_config(options: argparse.Namespace, paths: Sequence[str]) -> FileConfig:
    """Read the file named with --config, or the nearest pyproject.toml with [tool.maskcheck]; raise ConfigError."""
    if options.isolated:
        return FileConfig()
    path = options.config
    if path is None:
        path = find_pyproject(paths[0] if paths else os.curdir)
        if path is None:
            return FileConfig()
    config = load_config(shown_path(path), known_codes())
    LOG.info("read settings from %s", config.path)
    return config


# -------------------------------------------------------------------------------------------------------------------
# Entry point


class Terminated(KeyboardInterrupt):
    """The exception raised for SIGTERM: a KeyboardInterrupt, so workers are stopped and rewritten files listed."""


# Whether SIGTERM has arrived in this run. Code that catches exceptions checks it, because the signal can arrive
# inside a `try` whose `finally` raises another exception in place of Terminated.
_terminating = False

# The process that installed `_raise_terminated`. A forked worker inherits the handler until its initializer
# restores the default action (`runner._start_worker`).
_handler_pid: Optional[int] = None


def _raise_terminated(signal_number: int, frame: object) -> None:
    global _terminating
    if os.getpid() != _handler_pid:
        # A worker that the pool stops before its initializer has run: it ends as the default action would,
        # without a traceback of Terminated from the middle of its start.
        import signal

        signal.signal(signal_number, signal.SIG_DFL)
        os.kill(os.getpid(), signal_number)
        return
    if _terminating:
        return  # a second SIGTERM while the first stops the run changes nothing
    _terminating = True
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line and return the exit status; argparse's usage errors return 2 instead of exiting."""
    import signal

    # Without a handler, SIGTERM ended this process at once and left its worker processes running, blocked on
    # the pipe to it, with standard output still open. A caller that waits for that output then waits forever.
    global _handler_pid
    previous = None
    _handler_pid = os.getpid()
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:
        pass  # not the main thread of the interpreter, where only the default action applies
    global _terminating
    _terminating = False
    try:
        return _main(argv)
    except SystemExit as exit_request:
        code = exit_request.code
        return code if isinstance(code, int) else EXIT_ERROR
    except KeyboardInterrupt as interrupt:
        terminated = _terminating or isinstance(interrupt, Terminated)
        _print_interrupt(interrupt, "terminated" if terminated else "interrupted")
        return 128 + signal.SIGTERM if terminated else 130
    except Exception:
        if not _terminating:
            raise
        _print_interrupt(Terminated(), "terminated")
        return 128 + signal.SIGTERM
    finally:
        _terminating = False
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _print_interrupt(interrupt: KeyboardInterrupt, word: str = "interrupted") -> None:
    """Print that the run was interrupted or terminated and, when files were already rewritten, list them."""
    from maskcheck.rewrite import InterruptedRewrite

    if not isinstance(interrupt, InterruptedRewrite) or not (interrupt.rewritten or interrupt.unchecked):
        print(f"maskcheck: {word}", file=sys.stderr)
        return
    count = _count(len(interrupt.rewritten) + len(interrupt.unchecked), "file")
    print(
        f"maskcheck: {word} after {count} had been rewritten; each listed file is completely written, "
        "and every other file has its original content",
        file=sys.stderr,
    )
    for path in interrupt.rewritten:
        print(f"{path}: {interrupt.action} before the interrupt", file=sys.stderr)
    for path in interrupt.unchecked:
        print(
            f"{path}: {interrupt.action} before the interrupt, but not analysed again after the change; "
            "run maskcheck on it and review the change",
            file=sys.stderr,
        )


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)

    if options.explain is not None:
        return _explain(options.explain)

    paths = list(options.paths)
    if options.stdin_filename is not None:
        if not paths:
            paths = [STDIN_PATH]
        elif STDIN_PATH not in paths:
            parser.error("--stdin-filename names standard input, so add - to the paths or drop the option")
    if not paths:
        paths = ["."]
    _check_option_combinations(parser, options, paths)
    # The default is applied here, so that the check above can tell an explicit --output-format from none.
    if options.output_format is None:
        options.output_format = DEFAULT_FORMAT

    # The logger's state is restored afterwards, so that `main` can be called again in the same process.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("maskcheck: %(message)s"))
    saved_level, saved_propagate = LOG.level, LOG.propagate
    LOG.addHandler(handler)
    LOG.propagate = False
    LOG.setLevel(_log_level(options.verbose))
    try:
        try:
            config = _load_config(options, paths)
        except ConfigError as error:
            print(f"maskcheck: error: {error}", file=sys.stderr)
            return EXIT_ERROR
        run_options = merge_options(parser, options, config)
        return _run(paths, options, run_options)
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(saved_level)
        LOG.propagate = saved_propagate


def _check_option_combinations(parser: argparse.ArgumentParser, options: argparse.Namespace, paths: List[str]) -> None:
    if options.diff:
        for option, given in (("--output-format", options.output_format), ("--statistics", options.statistics),
                              ("--show-fixes", options.show_fixes)):
            if given:
                parser.error(
                    f"--diff writes a unified diff, to standard output or to --output-file, so {option} does not "
                    "apply; drop one of the two"
                )
    output_format = options.output_format or DEFAULT_FORMAT
    if options.statistics and output_format not in STATISTICS_FORMATS:
        parser.error(f"--statistics works with --output-format {', '.join(STATISTICS_FORMATS)}, not {output_format}")
    modes = [name for name in ("fix", "diff", "add_noqa") if getattr(options, name)]
    if len(modes) > 1:
        shown = " and ".join("--" + name.replace("_", "-") for name in modes)
        parser.error(f"{shown} cannot be combined; choose one")
    if options.unsafe_fixes and not (options.fix or options.diff):
        parser.error("--unsafe-fixes only changes what --fix and --diff do; add one of them")
    if options.fix and STDIN_PATH in paths:
        parser.error("--fix rewrites files, so it cannot take standard input; use --diff to see the fix instead")
    if options.add_noqa and STDIN_PATH in paths:
        parser.error("--add-noqa rewrites files, so it does not read standard input; pass the file's path instead")


def _explain(code: str) -> int:
    from maskcheck.explain import explain

    page = explain(code)
    if page is None:
        print(
            f"maskcheck: error: unknown rule code {code!r}; known codes: {', '.join(known_codes())}",
            file=sys.stderr,
        )
        return EXIT_ERROR
    if not _write_stdout(page if page.endswith("\n") else page + "\n"):
        return EXIT_ERROR
    return EXIT_CLEAN


def _log_level(verbosity: int) -> int:
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return logging.INFO
    return logging.WARNING


# -------------------------------------------------------------------------------------------------------------------
# One run


@dataclass
class _Checked:
    """The outcome of the file loop, before verification and fixes."""

    report: Report
    sources: Dict[str, SourceFile] = field(default_factory=dict)
    texts: Dict[str, str] = field(default_factory=dict)
    notices: List[Tuple[str, str]] = field(default_factory=list)


def _run(paths: Sequence[str], options: argparse.Namespace, run_options: RunOptions) -> int:
    verifier = None
    if options.verify:
        verifier = _load_verifier()
        if verifier is None:
            return EXIT_ERROR

    discovery = discover(
        paths,
        excludes=run_options.excludes,
        force_exclude=options.force_exclude,
        stdin_display=options.stdin_filename or STDIN_PATH,
    )
    progress = Progress(len(discovery.files), enabled=not options.quiet)
    outcomes = check_files(
        discovery.files,
        run_options.settings,
        run_options.code_filter,
        options.disable_noqa,
        progress,
        jobs=options.jobs,
        cache_dir=None if options.no_cache else default_cache_dir(paths),
    )
    try:
        checked = _collect(outcomes, discovery)
    finally:
        # Stops the worker processes at once if the collection stopped early (an interrupt).
        outcomes.close()
    progress.finish()
    report = checked.report

    if options.add_noqa:
        from maskcheck.add_noqa import add_noqa_comments

        added = add_noqa_comments(report, checked.sources, checked.texts)
        written = sorted({reported.path for reported in added})
        with _listing_rewrites_on_interrupt(written, "noqa comments added"):
            _print_problems(checked, options)
            if not options.quiet:
                print(
                    f"maskcheck: added noqa comments for {_count(len(added), 'finding')} "
                    f"in {_count(len(written), 'file')}",
                    file=sys.stderr,
                )
        return EXIT_ERROR if report.errors else EXIT_CLEAN

    wants_fix = options.fix or options.diff
    if verifier is None and wants_fix and any(r.finding.replacement is not None for r in report.findings):
        verifier = _load_verifier(required=False, quiet=options.quiet or options.unsafe_fixes)
    if verifier is not None and report.findings:
        verdicts = verifier([reported.finding for reported in report.findings])
        for reported, verdict in zip(report.findings, verdicts):
            reported.verdict = verdict
        report.verified = True

    if wants_fix or options.show_fixes or options.statistics or options.output_format in ("full", "json", "sarif"):
        from maskcheck.fix import describe_fixes

        describe_fixes(report, checked.texts)

    fix_run = None
    if wants_fix:
        from maskcheck.fix import apply_fixes

        fix_run = apply_fixes(
            report,
            checked.sources,
            checked.texts,
            reanalyse=lambda source: check_file(
                source, run_options.settings, run_options.code_filter, options.disable_noqa
            ),
            unsafe=options.unsafe_fixes,
            write=options.fix,
        )
    fixed = sorted({reported.path for reported in report.fixed})
    with _listing_rewrites_on_interrupt(fixed, "fixed"):
        return _print_outcome(report, checked, options, fix_run)


def _print_outcome(report: Report, checked: _Checked, options: argparse.Namespace, fix_run) -> int:
    """Write the report or the diff, then the problems, notes and summary; return the exit status."""
    diff_text = fix_run.diff if fix_run is not None else ""
    if options.diff:
        # --output-file receives the diff, as it receives a report. --output-format is rejected with --diff.
        output = diff_text
    else:
        output = render(
            options.output_format,
            report,
            RenderOptions(show_fixes=options.show_fixes, statistics=options.statistics),
        )
    if not _write_report(output, options.output_file):
        return EXIT_ERROR

    _print_problems(checked, options)
    if not options.quiet:
        if fix_run is not None:
            _print_unapplied_fixes(fix_run.not_applied, "not applied" if options.fix else "not in the diff")
        _print_fix_hint(report, options)
        print(_summary(report, options), file=sys.stderr)
    return _exit_status(report, options, diff_text)


@contextlib.contextmanager
def _listing_rewrites_on_interrupt(paths: Sequence[str], action: str) -> Iterator[None]:
    """Turn an interrupt into InterruptedRewrite, so that `main` lists the files already rewritten in this run."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        from maskcheck.rewrite import InterruptedRewrite

        if isinstance(interrupt, InterruptedRewrite) or not paths:
            raise
        raise InterruptedRewrite(paths, (), action) from None


def _load_verifier(required: bool = True, quiet: bool = False):
    """Import torch through the verifier and return `verify_findings`, or None when torch is missing.

    When `required`, a missing torch prints the one-line install hint as an error. Otherwise, unless `quiet`, it
    prints a note that no fix can be verified.
    """
    from maskcheck.verify import VerifierUnavailable, verify_findings
    from maskcheck.verify.verifier import get_runtime

    try:
        get_runtime()
    except VerifierUnavailable as error:
        message = str(error)
        if required:
            print(f"maskcheck: error: {message}", file=sys.stderr)
        elif not quiet:
            print(
                f"maskcheck: note: no fix can be verified: {message}; or pass --unsafe-fixes to apply unverified fixes",
                file=sys.stderr,
            )
        return None
    return verify_findings


def _collect(outcomes: Sequence[Tuple[SourceFile, FileOutcome]], discovery) -> _Checked:
    report = Report(files_skipped=discovery.skipped_files)
    checked = _Checked(report)
    errors: List[PathError] = list(discovery.errors)
    for source, outcome in outcomes:
        if outcome.error is not None:
            errors.append(PathError(source.display, outcome.error))
        elif outcome.skipped:
            report.files_skipped += 1
            if outcome.skip_notice is not None:
                checked.notices.append((source.display, outcome.skip_notice))
        else:
            report.files_checked += 1
            report.findings.extend(ReportedFinding(source.display, finding) for finding in outcome.findings)
            if outcome.findings and outcome.text is not None:
                checked.sources[source.display] = source
                checked.texts[source.display] = outcome.text
                report.sources[source.display] = split_lines(outcome.text)
    report.findings.sort(key=ReportedFinding.sort_key)
    report.errors = [PathProblem(error.display, single_line(error.message)) for error in errors]
    return checked


def _write_report(output: str, output_file: Optional[str]) -> bool:
    """Write the report to standard output or to `output_file`; on failure print one error line and return False."""
    if output_file is None:
        return _write_stdout(output)
    try:
        # A file name that is not valid UTF-8 reaches the report as surrogate escapes, written back as its bytes.
        with open(output_file, "w", encoding="utf-8", errors="surrogateescape", newline="\n") as handle:
            handle.write(output)
    except OSError as error:
        problem = _write_problem(error, "choose another --output-file")
        print(f"maskcheck: error: cannot write --output-file {output_file}: {problem}", file=sys.stderr)
        return False
    return True


def _write_stdout(text: str) -> bool:
    """Write to standard output; on failure print one error line and return False.

    A closed pipe (for example `maskcheck . | head`) is not an error: the reader has what it wanted.
    """
    try:
        try:
            sys.stdout.write(text)
        except UnicodeEncodeError:
            # A name that is not valid UTF-8 contains surrogate escapes, which a strict standard output rejects
            # (PYTHONIOENCODING=utf-8). It is written as its bytes, as under a UTF-8 locale.
            _write_stdout_bytes(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return True
    except OSError as error:
        _discard_stdout()
        problem = _write_problem(error, "write the report to a file with --output-file")
        print(f"maskcheck: error: cannot write to standard output: {problem}", file=sys.stderr)
        return False
    return True


def _write_stdout_bytes(text: str) -> None:
    # Only an encoding text stream raises UnicodeEncodeError, and such a stream has a binary buffer.
    sys.stdout.flush()
    sys.stdout.buffer.write(text.encode(sys.stdout.encoding or "utf-8", "surrogateescape"))


def _discard_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's final flush of the unwritten rest does not raise
    a second time and print a traceback."""
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):
        return  # not backed by a file descriptor (a test's capture), so there is no final flush to a broken file
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


def _write_problem(error: OSError, alternative: str) -> str:
    """Describe a failed write and the next step, for example `No space left on device; free space ...`."""
    reason = error.strerror or type(error).__name__
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{reason}; free space on that file system or {alternative}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{reason}; check the permissions or {alternative}"
    return f"{reason}; check that the folder exists and is writable, or {alternative}"


def _print_problems(checked: _Checked, options: argparse.Namespace) -> None:
    if not options.quiet:
        for display, notice in sorted(checked.notices):
            print(f"{display}: skipped: {notice}", file=sys.stderr)
    for error in sorted(checked.report.errors, key=lambda error: error.path):
        print(f"{error.path}: error: {error.message}", file=sys.stderr)


def _print_unapplied_fixes(not_applied: Sequence[ReportedFinding], outcome: str) -> None:
    """List the fixes that --fix or --diff left out, each with why, which option would apply it, and its diff."""
    for reported in not_applied:
        finding = reported.finding
        print(
            f"{reported.path}:{finding.line}:{finding.col}: {finding.code} fix {outcome}: {reported.fix.note}",
            file=sys.stderr,
        )
        for line in reported.fix.diff.rstrip("\n").split("\n") if reported.fix.diff else ():
            print("    " + line, file=sys.stderr)


def _print_fix_hint(report: Report, options: argparse.Namespace) -> None:
    """Say which option applies the fixes that this run did not apply."""
    if options.fix or options.diff:
        return
    fixable = [r for r in report.findings if r.finding.replacement is not None and (r.fix is None or r.fix.available)]
    if not fixable:
        return
    verified = sum(1 for r in fixable if r.verdict is not None and r.verdict.status == "confirmed"
                   and r.verdict.fix_verified)
    if report.verified:
        parts = []
        if verified:
            parts.append(f"--fix applies the {_count(verified, 'verified fix')}")
        if len(fixable) - verified:
            parts.append(f"--fix --unsafe-fixes also applies the {_count(len(fixable) - verified, 'unverified fix')}")
        hint = "; ".join(parts)
    else:
        hint = "--fix applies those the verifier verifies (needs torch), --fix --unsafe-fixes applies them all"
    print(f"maskcheck: {_count(len(fixable), 'finding')} with a fix: {hint}; --diff shows the changes",
          file=sys.stderr)


def _summary(report: Report, options: argparse.Namespace) -> str:
    parts = [
        _count(report.files_checked, "file") + " checked",
        _count(report.files_skipped, "file") + " skipped",
        _count(len(report.findings), "finding"),
    ]
    if report.verified and report.findings:
        statuses = Counter(reported.status for reported in report.findings)
        parts[-1] += " (" + ", ".join(f"{statuses[s]} {s}" for s in ("confirmed", "benign", "inconclusive")
                                      if statuses[s]) + ")"
    if options.fix:
        parts.append(f"{len(report.fixed)} fixed")
    if report.errors:
        parts.append(_count(len(report.errors), "path") + " with errors")
    return "maskcheck: " + ", ".join(parts)


def _exit_status(report: Report, options: argparse.Namespace, diff_text: str) -> int:
    if report.errors:
        return EXIT_ERROR
    if options.exit_zero:
        return EXIT_CLEAN
    if options.diff:
        return EXIT_FINDINGS if diff_text else EXIT_CLEAN
    if any(reported.fails(options.strict) for reported in report.findings):
        return EXIT_FINDINGS
    return EXIT_CLEAN


def _count(number: int, noun: str) -> str:
    if number == 1:
        return f"{number} {noun}"
    return f"{number} {noun}es" if noun.endswith(("x", "s")) else f"{number} {noun}s"


# -------------------------------------------------------------------------------------------------------------------
# The loop over files. `check_files` runs every file through `check_file` and yields the outcomes in the order of
# `sources`. A parallel or caching runner replaces this one function and keeps its signature and result.


def check_files(
    sources: Sequence[SourceFile],
    settings: Settings,
    code_filter: CodeFilter,
    disable_noqa: bool,
    progress: Optional[Progress] = None,
    jobs: Optional[int] = 1,
    cache_dir: Optional[str] = None,
) -> Generator[Tuple[SourceFile, FileOutcome], None, None]:
    """Yield `(source, outcome)` for every source, in order, as each result arrives.

    The caller keeps only what it needs of each outcome, so the main process does not hold one outcome per file.
    When it did, its memory grew from 39 MB to 64 MB over 50,270 files (docs/benchmarks.md, Scaling).
    """
    results = check_paths(sources, settings, jobs, cache_dir, code_filter, disable_noqa)
    try:
        for source, outcome in results:
            yield source, outcome
            if progress is not None:
                progress.advance()
    finally:
        results.close()


def check_source(source: str, path: str = "<stdin>", settings: Optional[Settings] = None) -> List[Finding]:
    """Analyse one module's text with `maskcheck.engine.check_source`, which is imported on the first call.

    Raises SourceError as the engine does. `check_file` calls the engine through this name.
    """
    from maskcheck.engine import check_source as check_with_engine

    return check_with_engine(source, path, settings)


# The debug record of every file that `check_file` analyses. The runner rebuilds it for cached results.
CHECKING_MESSAGE = "checking %s"


def check_file(source: SourceFile, settings: Settings, code_filter: CodeFilter, disable_noqa: bool) -> FileOutcome:
    """Read, analyse and filter one file. A failure comes back as `FileOutcome.error`, so it cannot stop the run."""
    from maskcheck.noqa import file_is_exempt, file_is_skipped, filter_suppressed

    try:
        text = read_source(source, settings.max_file_size, stdin=_stdin_bytes())
    except FileTooLarge as error:
        notice = (
            f"{error.size} bytes, over the {error.limit}-byte limit; "
            "raise --max-file-size to check it or --exclude it to hide this message"
        )
        return FileOutcome(skipped=True, skip_notice=notice)
    except ReadError as error:
        return FileOutcome(error=str(error))

    lines = split_lines(text)
    if not disable_noqa and file_is_exempt(lines):
        LOG.info("skipped %s: contains a '# flake8: noqa' line", source.display)
        return FileOutcome(skipped=True)
    if not disable_noqa and file_is_skipped(lines):
        LOG.info("skipped %s: contains a '# maskcheck: skip-file' line", source.display)
        return FileOutcome(skipped=True)

    LOG.debug(CHECKING_MESSAGE, source.display)
    try:
        found = check_source(text, source.display, settings)
    except SourceError as error:
        return FileOutcome(error=str(error))
    except Exception as error:  # noqa: BLE001 - one file's crash must not stop the run
        if _terminating:
            # SIGTERM arrived inside code whose cleanup raised another exception (libcst's position pass does).
            raise Terminated() from error
        LOG.debug("internal error while checking %s", source.display, exc_info=True)
        return FileOutcome(error=f"internal error in maskcheck ({type(error).__name__}: {error}); please report it")

    found = [finding for finding in found if code_filter.allows(finding.code, source.display)]
    if not disable_noqa:
        found = filter_suppressed(found, lines)
    return FileOutcome(findings=found, text=text if found else None)


def _stdin_bytes():
    return getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None
