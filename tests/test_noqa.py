"""`# noqa` in the CLI, checked by hand and against flake8 running the maskcheck plugin on the same files."""

from __future__ import annotations

import pytest

from conftest import BUGGY_BLOCK, parse_findings, run_flake8
from maskcheck.findings import Finding
from maskcheck.noqa import codes_suppressed_by, file_is_exempt, filter_suppressed, is_suppressed, statement_text_by_line

FLAGGED_STATEMENT = "        mask = mask.repeat(self.num_heads, 1, 1)\n"
RETURN_STATEMENT = "        return self.attn(x, x, x, attn_mask=mask)[0]\n"


def with_statement(lines: str, header: str = "", replace_return: bool = False) -> str:
    """Return the canonical buggy block with the flagged statement (and the return, if asked) replaced."""
    source = BUGGY_BLOCK.replace(FLAGGED_STATEMENT + RETURN_STATEMENT if replace_return else FLAGGED_STATEMENT, lines)
    assert source != BUGGY_BLOCK or lines == FLAGGED_STATEMENT
    return header + source


def flagged(comment: str) -> str:
    return with_statement(FLAGGED_STATEMENT.rstrip("\n") + comment + "\n")


# Each case: file name, source, whether flake8 7 suppresses its one MSK101 finding (decided by reading flake8's
# NOQA_INLINE_REGEXP, Violation.is_inline_ignored and FileProcessor._noqa_line_mapping).
CASES = [
    ("plain", flagged(""), False),
    ("bare", flagged("  # noqa"), True),
    ("bare_upper", flagged("  # NOQA"), True),
    ("bare_mixed_case", flagged("  # NoQa"), True),
    ("no_space_after_hash", flagged("  #noqa"), False),
    ("two_spaces_after_hash", flagged("  #  noqa"), False),
    ("code", flagged("  # noqa: MSK101"), True),
    ("code_no_space", flagged("  # noqa:MSK101"), True),
    ("code_tab", flagged("  # noqa:\tMSK101"), True),
    ("code_list", flagged("  # noqa:E501,MSK101"), True),
    ("code_list_spaces", flagged("  # noqa: E501, MSK101"), True),
    ("code_list_whitespace", flagged("  # noqa: E501 MSK101"), True),
    ("other_code", flagged("  # noqa: E501"), False),
    ("prefix", flagged("  # noqa: MSK1"), True),
    ("prefix_other", flagged("  # noqa: MSK2"), False),
    ("letters_only_is_bare", flagged("  # noqa:MSK"), True),
    ("lowercase_code", flagged("  # noqa: msk101"), False),
    ("two_spaces_after_colon_is_bare", flagged("  # noqa:  E501"), True),
    ("space_before_colon_is_bare", flagged("  # noqa : E501"), True),
    ("reason_after_code", flagged("  # noqa: MSK101 the bias is per head"), True),
    ("after_other_comment", flagged("  # shape (N*H, L, S) # noqa: MSK101"), True),
    ("first_noqa_wins", flagged("  # noqa: E501 # noqa: MSK101"), False),
    # Inside brackets each physical line ends with an NL token, so flake8 reads only the finding's own line there.
    (
        "brackets_noqa_on_last_line",
        with_statement("        mask = mask.repeat(\n            self.num_heads, 1, 1\n        )  # noqa: MSK101\n"),
        False,
    ),
    (
        "brackets_noqa_on_middle_line",
        with_statement("        mask = mask.repeat(\n            self.num_heads, 1, 1  # noqa\n        )\n"),
        False,
    ),
    (
        "brackets_noqa_on_flagged_line",
        with_statement("        mask = mask.repeat(  # noqa: MSK101\n            self.num_heads, 1, 1\n        )\n"),
        True,
    ),
    (
        "multiline_string_first_noqa_wins",
        with_statement('        mask = mask.repeat(self.num_heads, 1, 1) if """# noqa: E501\n""" else mask  # noqa\n'),
        False,
    ),
    (
        "backslash_continuation",
        with_statement("        mask = mask.repeat(self.num_heads, 1, 1) \\\n            .bool()  # noqa: MSK101\n"),
        True,
    ),
    (
        "flagged_inside_call_noqa_on_closing_line",
        with_statement(
            "        return self.attn(\n"
            "            x, x, x,\n"
            "            attn_mask=mask.repeat(self.num_heads, 1, 1),\n"
            "        )[0]  # noqa: MSK101\n",
            replace_return=True,
        ),
        False,
    ),
    (
        "flagged_inside_call_noqa_on_its_line",
        with_statement(
            "        return self.attn(\n"
            "            x, x, x,\n"
            "            attn_mask=mask.repeat(self.num_heads, 1, 1),  # noqa: MSK101\n"
            "        )[0]\n",
            replace_return=True,
        ),
        True,
    ),
    (
        "backslash_conditional",
        with_statement("        mask = mask.repeat(self.num_heads, 1, 1) if True \\\n            else mask  # noqa\n"),
        True,
    ),
    ("own_line_before", with_statement("        # noqa\n" + FLAGGED_STATEMENT), False),
    ("next_statement", BUGGY_BLOCK.replace("[0]\n", "[0]  # noqa\n"), False),
    ("inside_string", flagged(' if "# noqa" else mask'), True),
    (
        "inside_multiline_string",
        with_statement('        mask = mask.repeat(self.num_heads, 1, 1) if """\n# noqa\n""" else mask\n'),
        True,
    ),
    ("file_level", flagged(""), False),
    ("file_level_header", with_statement(FLAGGED_STATEMENT, header="# flake8: noqa\n"), True),
    ("file_level_equals", with_statement(FLAGGED_STATEMENT, header="# FLAKE8=NOQA\n"), True),
    ("file_level_with_codes", with_statement(FLAGGED_STATEMENT, header="# flake8: noqa: E501\n"), True),
    ("file_level_indented", with_statement(FLAGGED_STATEMENT, header="  # flake8:noqa\n"), True),
    ("file_level_after_code", with_statement(FLAGGED_STATEMENT, header="x = 1  # flake8: noqa\n"), False),
]

CASE_IDS = [name for name, _, _ in CASES]


def test_case_names_unique():
    assert len(CASE_IDS) == len(set(CASE_IDS))


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("noqa_cases")
    for name, source, _ in CASES:
        (directory / f"{name}.py").write_text(source)
    return directory


def finding_files(output: str) -> set:
    return {path.replace("\\", "/").rsplit("/", 1)[-1][: -len(".py")] for path, *_ in parse_findings(output)}


@pytest.fixture(scope="module")
def flake8_reported(case_dir):
    result = run_flake8(["--select", "MSK", "."], cwd=case_dir)
    assert result.returncode in (0, 1), result.stderr.decode()
    return finding_files(result.stdout.decode())


@pytest.fixture(scope="module")
def flake8_unsuppressed(case_dir):
    result = run_flake8(["--select", "MSK", "--disable-noqa", "."], cwd=case_dir)
    assert result.returncode == 1, result.stderr.decode()
    return finding_files(result.stdout.decode())


def run_cli_in(directory, run_cli, monkeypatch, *options):
    monkeypatch.chdir(directory)
    return run_cli(["-q", *options, "."])


def test_every_case_has_a_finding_without_noqa(case_dir, run_cli, monkeypatch, flake8_unsuppressed):
    result = run_cli_in(case_dir, run_cli, monkeypatch, "--disable-noqa")

    assert finding_files(result.out) == set(CASE_IDS)
    assert flake8_unsuppressed == set(CASE_IDS)


def test_flake8_suppresses_expected_cases(flake8_reported):
    expected = {name for name, _, suppressed in CASES if not suppressed}

    assert flake8_reported == expected


def test_cli_suppresses_same_cases_as_flake8(case_dir, run_cli, monkeypatch, flake8_reported):
    result = run_cli_in(case_dir, run_cli, monkeypatch)

    assert finding_files(result.out) == flake8_reported


def test_cli_file_level_noqa_counts_as_skipped(case_dir, run_cli, monkeypatch):
    monkeypatch.chdir(case_dir)

    result = run_cli(["-v", "file_level_header.py"])

    assert result.code == 0
    assert "maskcheck: skipped file_level_header.py: contains a '# flake8: noqa' line" in result.err
    assert result.err.splitlines()[-1] == "maskcheck: 0 files checked, 1 file skipped, 0 findings"


@pytest.mark.parametrize(
    "text, codes",
    [
        ("x = 1", None),
        ("x = 1  # noqa", []),
        ("x = 1  # NOQA:E501", ["E501"]),
        ("x = 1  # noqa: E501,W291 , MSK101", ["E501", "W291", "MSK101"]),
        ("x = 1  # noqa:E501 MSK101 reason", ["E501", "MSK101"]),
        ("x = 1  # noqa:MSK", []),
        ("x = 1  # noqa:  E501", []),
        ("x = 1  #noqa", None),
    ],
)
def test_codes_suppressed_by(text, codes):
    assert codes_suppressed_by(text) == codes


def test_is_suppressed_prefix_and_case():
    assert is_suppressed("MSK101", "# noqa: MSK1")
    assert is_suppressed("MSK101", "# noqa: MSK101")
    assert not is_suppressed("MSK101", "# noqa: MSK1010")
    assert not is_suppressed("MSK101", "# noqa: msk101")
    assert not is_suppressed("MSK101", "no comment")


def test_statement_text_joins_backslash_continuation():
    lines = ["a = 1 + \\\n", "    2  # noqa\n", "b = 2\n"]

    mapping = statement_text_by_line(lines)

    assert mapping[1] == mapping[2] == "a = 1 + \\\n    2  # noqa\n"
    assert mapping[3] == "b = 2\n"


def test_statement_text_splits_lines_inside_brackets():
    lines = ["a = f(\n", "    1,\n", ")  # noqa\n"]

    mapping = statement_text_by_line(lines)

    assert mapping == {1: "a = f(\n", 2: "    1,\n", 3: ")  # noqa\n"}


def test_statement_text_spans_multiline_string():
    lines = ['s = """\n', "text\n", '"""\n', "t = 1\n"]

    mapping = statement_text_by_line(lines)

    assert mapping[2] == 's = """\ntext\n"""\n'
    assert mapping[4] == "t = 1\n"


def test_statement_text_empty_when_untokenizable():
    assert statement_text_by_line(["x = (\n"]) == {}


def test_filter_falls_back_to_physical_line():
    lines = ["x = (  # noqa\n", "y\n"]
    findings = [Finding("a.py", 1, 1, "MSK101", "m"), Finding("a.py", 2, 1, "MSK101", "m")]

    assert filter_suppressed(findings, lines) == [findings[1]]


def test_file_is_exempt():
    assert file_is_exempt(["x = 1\n", "# flake8: noqa\n"])
    assert file_is_exempt(["\t# Flake8=NoQA: E501\n"])
    assert not file_is_exempt(["x = 1  # flake8: noqa\n"])
    assert not file_is_exempt(["# flake8 noqa\n"])
