"""docs/usage.md lists every option of `maskcheck --help`, with the same defaults, and every exit status."""

from __future__ import annotations

import argparse
import re
from typing import Dict, List

import pytest

from conftest import REPO_ROOT
from maskcheck import cli

USAGE = REPO_ROOT / "docs" / "usage.md"
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
DEFAULT = re.compile(r"\(default: ([^;)]+)")


def option_rows() -> Dict[str, str]:
    """Map each option named in the first cell of a table row in docs/usage.md to that row's text."""
    rows: Dict[str, str] = {}
    for line in USAGE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `-"):
            continue
        first_cell = line.split("|")[1]
        for option in OPTION.findall(first_cell):
            rows[option] = line
    return rows


def help_actions() -> List[argparse.Action]:
    return [action for action in cli.build_parser()._actions if action.option_strings]


def test_every_help_option_has_a_row():
    rows = option_rows()

    missing = [option for action in help_actions() for option in action.option_strings if option not in rows]

    assert missing == [], f"options in --help without a row in docs/usage.md: {missing}"


def test_every_row_names_a_real_option():
    known = {option for action in help_actions() for option in action.option_strings}

    unknown = sorted(set(option_rows()) - known)

    assert unknown == [], f"rows in docs/usage.md for options that --help does not have: {unknown}"


def test_defaults_are_found_in_help():
    """Guards the next test against a changed help wording that it would silently stop reading."""
    with_default = [
        option for action in help_actions() if DEFAULT.search(action.help or "") for option in action.option_strings
    ]

    assert {"--max-file-size", "--stdin-filename", "--jobs", "--max-call-depth"} <= set(with_default)


@pytest.mark.parametrize(
    "action",
    [action for action in help_actions() if DEFAULT.search(action.help or "")],
    ids=lambda action: action.option_strings[-1],
)
def test_row_gives_help_default(action):
    """A default that --help states, such as `(default: 2097152)`, is stated in the option's row too."""
    row = option_rows()[action.option_strings[0]]
    default = DEFAULT.search(action.help).group(1).strip()

    assert default in row, f"{action.option_strings}: default {default!r} missing"


def test_output_format_row_lists_every_format():
    row = option_rows()["--output-format"]

    for name in cli.FORMAT_NAMES:
        assert f"`{name}`" in row, name


def test_metavars_match_help():
    """Each row shows the option with the metavar that --help shows (`--max-file-size BYTES`)."""
    rows = option_rows()

    for action in help_actions():
        if action.metavar is None or action.nargs == 0:
            continue
        for option in action.option_strings:
            assert f"`{option} {action.metavar}`" in rows[option], option


def test_exit_statuses_match_help():
    epilog_statuses = re.findall(r"^  ([0-9]+)  ", cli.EPILOG, flags=re.MULTILINE)
    text = USAGE.read_text(encoding="utf-8")
    section = text.split("## Exit status", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| ([0-9]+) \|", section, flags=re.MULTILINE)

    assert documented == epilog_statuses == ["0", "1", "2", "130", "143"]
    assert documented[:3] == [str(cli.EXIT_CLEAN), str(cli.EXIT_FINDINGS), str(cli.EXIT_ERROR)]


def exit_status_rows(path) -> List[str]:
    section = path.read_text(encoding="utf-8").split("## Exit status", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| [0-9]+ \|.*$", section, flags=re.MULTILINE)


def test_integration_exit_statuses_match_usage():
    integration = REPO_ROOT / "docs" / "integration.md"

    assert exit_status_rows(integration) == exit_status_rows(USAGE)
    assert len(exit_status_rows(USAGE)) == 5
