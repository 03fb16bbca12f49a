"""The `maskcheck` command: find files, run the engine on each, apply noqa and code selection, print findings."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import FrozenSet, List, Optional, Sequence, Tuple

from maskcheck import __version__
from maskcheck.engine import check_source
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
from maskcheck.noqa import file_is_exempt, filter_suppressed
from maskcheck.rules import KNOWN_CODES
from maskcheck.settings import DEFAULT_MAX_FILE_SIZE, Settings

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

files over the size limit:
  A file larger than --max-file-size (default {DEFAULT_MAX_FILE_SIZE} bytes) is skipped with a
  message on standard error. A skipped file does not change the exit status,
  because a large .py file is almost always generated data.

noqa:
  "# noqa" and "# noqa: MSK101" suppress findings as flake8 7 does: on the
  finding's line, or on any line of the same backslash continuation or
  multi-line string. Inside brackets only the finding's own line counts. A
  line "# flake8: noqa" skips the whole file. --disable-noqa turns both off.

exit status:
  0  no findings
  1  findings were printed
  2  usage error, or a file or directory could not be read or analysed
     (each one is listed on standard error; the other files are still checked)
"""


def known_codes() -> Tuple[str, ...]:
    """Return the rule codes that --select and --ignore accept, from the rule registry."""
    return tuple(sorted(KNOWN_CODES))


def parse_head_count_names(values: Sequence[str]) -> FrozenSet[str]:
    """Parse comma-separated identifiers; raise ValueError naming the first one that is not an identifier."""
    names = set()
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not a Python identifier; give names separated by commas")
            names.add(name)
    return frozenset(names)


@dataclass(frozen=True)
class CodeFilter:
    """--select and --ignore as flake8 combines them: the longest matching prefix decides, and a tie ignores."""

    select: Tuple[str, ...] = ()
    ignore: Tuple[str, ...] = ()

    def allows(self, code: str) -> bool:
        selected = self._longest_match(code, self.select) if self.select else 0
        ignored = self._longest_match(code, self.ignore)
        return selected > ignored

    @staticmethod
    def _longest_match(code: str, prefixes: Sequence[str]) -> int:
        lengths = [len(prefix) for prefix in prefixes if code.startswith(prefix)]
        return max(lengths, default=-1)


@dataclass
class FileOutcome:
    findings: List[Finding] = field(default_factory=list)
    error: Optional[str] = None
    skip_notice: Optional[str] = None
    skipped: bool = False


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
    _add_output_options(parser.add_argument_group("output"))
    parser.add_argument("--version", action="version", version=f"maskcheck {__version__}")
    return parser


def _add_file_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip paths matching GLOB, compared with each path part and with the path relative to the named "
        "directory and to the current directory; may be repeated",
    )
    group.add_argument(
        "--force-exclude",
        action="store_true",
        help="apply --exclude and the default directory rules to paths named on the command line too",
    )
    group.add_argument(
        "--max-file-size",
        type=int,
        default=DEFAULT_MAX_FILE_SIZE,
        metavar="BYTES",
        help=f"skip files larger than BYTES bytes (default: {DEFAULT_MAX_FILE_SIZE})",
    )
    group.add_argument(
        "--stdin-filename",
        metavar="NAME",
        help="path to show for standard input (default: -); implies - when no PATH is given",
    )


def _add_rule_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="CODES",
        help="report only these comma-separated codes or prefixes (MSK selects all, MSK1 selects MSK1xx)",
    )
    group.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="CODES",
        help="do not report these comma-separated codes or prefixes; when --select also matches, "
        "the longer prefix wins",
    )
    group.add_argument(
        "--head-count-names",
        action="append",
        default=[],
        metavar="NAMES",
        help="comma-separated names that also mean the number of attention heads, alone or at the end of an "
        "attribute chain (for example: n_attn_heads,groups)",
    )
    group.add_argument(
        "--disable-noqa",
        action="store_true",
        help='report findings on lines with "# noqa" and in files with "# flake8: noqa" too',
    )


def _add_output_options(group: argparse._ArgumentGroup) -> None:
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
        help="print only findings and errors: no summary line and no skipped-file messages",
    )


def _parse_codes(parser: argparse.ArgumentParser, values: Sequence[str], option: str) -> Tuple[str, ...]:
    known = known_codes()
    codes = []
    for value in values:
        for code in value.split(","):
            code = code.strip()
            if not code:
                continue
            if not any(candidate.startswith(code) for candidate in known):
                hint = f" (did you mean {code.upper()}?)" if any(c.startswith(code.upper()) for c in known) else ""
                parser.error(
                    f"unknown rule code {code!r} in {option}{hint}; known codes: {', '.join(known)} "
                    "(a prefix such as MSK or MSK1 matches every code that starts with it)"
                )
            codes.append(code)
    return tuple(codes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line and return the exit status; argparse's usage errors return 2 instead of exiting."""
    try:
        return _main(argv)
    except SystemExit as exit_request:
        code = exit_request.code
        return code if isinstance(code, int) else EXIT_ERROR
    except KeyboardInterrupt:
        print("maskcheck: interrupted", file=sys.stderr)
        return 130


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)

    if options.max_file_size < 1:
        parser.error(f"--max-file-size must be a positive number of bytes, got {options.max_file_size}")
    try:
        head_count_names = parse_head_count_names(options.head_count_names)
    except ValueError as error:
        parser.error(f"--head-count-names: {error}")
    code_filter = CodeFilter(
        select=_parse_codes(parser, options.select, "--select"),
        ignore=_parse_codes(parser, options.ignore, "--ignore"),
    )

    paths = list(options.paths)
    if options.stdin_filename is not None:
        if not paths:
            paths = [STDIN_PATH]
        elif STDIN_PATH not in paths:
            parser.error("--stdin-filename names standard input, so add - to the paths or drop the option")
    if not paths:
        paths = ["."]

    settings = Settings(extra_head_count_names=head_count_names, max_file_size=options.max_file_size)
    # The logger's state is restored afterwards, so that `main` can be called again in the same process.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("maskcheck: %(message)s"))
    saved_level, saved_propagate = LOG.level, LOG.propagate
    LOG.addHandler(handler)
    LOG.propagate = False
    LOG.setLevel(_log_level(options.verbose))
    try:
        return _run(paths, options, settings, code_filter)
    finally:
        LOG.removeHandler(handler)
        LOG.setLevel(saved_level)
        LOG.propagate = saved_propagate


def _log_level(verbosity: int) -> int:
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1:
        return logging.INFO
    return logging.WARNING


def _run(paths: Sequence[str], options: argparse.Namespace, settings: Settings, code_filter: CodeFilter) -> int:
    discovery = discover(
        paths,
        excludes=options.exclude,
        force_exclude=options.force_exclude,
        stdin_display=options.stdin_filename or STDIN_PATH,
    )
    errors: List[PathError] = list(discovery.errors)
    findings: List[Tuple[str, Finding]] = []
    notices: List[Tuple[str, str]] = []
    checked = 0
    skipped = discovery.skipped_files

    for source in discovery.files:
        outcome = check_file(source, settings, code_filter, disable_noqa=options.disable_noqa)
        if outcome.error is not None:
            errors.append(PathError(source.display, outcome.error))
        elif outcome.skipped:
            skipped += 1
            if outcome.skip_notice is not None:
                notices.append((source.display, outcome.skip_notice))
        else:
            checked += 1
            findings.extend((source.display, finding) for finding in outcome.findings)

    findings.sort(key=lambda item: (item[0], item[1].line, item[1].col, item[1].code, item[1].message))
    _print_findings(findings)

    if not options.quiet:
        for display, notice in sorted(notices):
            print(f"{display}: skipped: {notice}", file=sys.stderr)
    for error in sorted(errors, key=lambda error: error.display):
        print(f"{error.display}: error: {single_line(error.message)}", file=sys.stderr)
    if not options.quiet:
        print(_summary(checked, skipped, len(findings), len(errors)), file=sys.stderr)

    if errors:
        return EXIT_ERROR
    return EXIT_FINDINGS if findings else EXIT_CLEAN


def _print_findings(findings: Sequence[Tuple[str, Finding]]) -> None:
    try:
        for display, finding in findings:
            message = single_line(finding.message)
            sys.stdout.write(f"{display}:{finding.line}:{finding.col}: {finding.code} {message}\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed the pipe (for example `maskcheck . | head`). Point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def single_line(message: str) -> str:
    """Join a message's lines with single spaces, so that each finding prints as one line.

    Messages quote the user's expression, which can span several lines of source.
    """
    return _LINE_BREAK.sub(" ", message.strip())


_LINE_BREAK = re.compile(r"[ \t]*[\r\n]+[ \t]*")


def check_file(source: SourceFile, settings: Settings, code_filter: CodeFilter, disable_noqa: bool) -> FileOutcome:
    """Read, analyse and filter one file. A failure comes back as `FileOutcome.error`, so it cannot stop the run."""
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

    LOG.debug("checking %s", source.display)
    try:
        found = check_source(text, source.display, settings)
    except SourceError as error:
        return FileOutcome(error=str(error))
    except Exception as error:  # noqa: BLE001 - one file's crash must not stop the run
        LOG.debug("internal error while checking %s", source.display, exc_info=True)
        return FileOutcome(error=f"internal error in maskcheck ({type(error).__name__}: {error}); please report it")

    found = [finding for finding in found if code_filter.allows(finding.code)]
    if not disable_noqa:
        found = filter_suppressed(found, lines)
    return FileOutcome(findings=found)


def _stdin_bytes():
    return getattr(sys.stdin, "buffer", None) if sys.stdin is not None else None


def _summary(checked: int, skipped: int, findings: int, errors: int) -> str:
    parts = [_count(checked, "file") + " checked", _count(skipped, "file") + " skipped", _count(findings, "finding")]
    if errors:
        parts.append(_count(errors, "path") + " with errors")
    return "maskcheck: " + ", ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
