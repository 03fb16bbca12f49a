"""Fix round trip on every fixture: fix, parse, analyse again, and find nothing left to fix.

The first pass applies only the fixes that the verifier verified: for each of them the replayed replacement matched
every example run alone. The second pass applies the unverified fixes too. After both, every file still parses, no
fixed finding comes back, and a third run has nothing to change.
"""

from __future__ import annotations

import ast
import json
import shutil

import pytest

from conftest import REPO_ROOT

FIXTURES = REPO_ROOT / "fixtures"


def run_json(run_cli, args) -> tuple:
    result = run_cli(["--quiet", "--output-format", "json", *args])
    return result, json.loads(result.out)


def assert_every_file_parses(root) -> None:
    broken = []
    for path in sorted(root.rglob("*.py")):
        try:
            ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError as error:
            broken.append(f"{path.relative_to(root)}: {error}")
    assert not broken, "\n".join(broken)


def positions(document, key="findings") -> list:
    return [(f["path"], f["location"]["line"], f["location"]["column"]) for f in document[key]]


def test_fix_round_trip_on_every_fixture(tmp_path, monkeypatch, run_cli):
    pytest.importorskip("torch", reason="verified fixes need the runtime verifier: pip install torch==2.13.0")
    shutil.copytree(FIXTURES, tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)

    # Pass 1: verified fixes only.
    _, verified = run_json(run_cli, ["--fix", "fixtures"])
    assert verified["errors"] == []
    assert verified["fixed"], "most fixture findings have a fix that the verifier verifies"
    for fixed in verified["fixed"]:
        assert fixed["verdict"]["status"] == "confirmed", fixed
        assert fixed["verdict"]["fix_verified"] is True, fixed
        assert fixed["fix"]["applied"] is True
    for remaining in verified["findings"]:
        assert remaining["fix"] is None or not remaining["fix"]["applied"]
        kept_for_comment = remaining["fix"] is not None and "contains a comment" in remaining["fix"]["note"]
        verified_fix = remaining["verdict"]["status"] == "confirmed" and remaining["verdict"]["fix_verified"]
        assert kept_for_comment or not verified_fix, remaining
    assert len(verified["fixed"]) + len(verified["findings"]) > 100
    assert_every_file_parses(tmp_path / "fixtures")

    # Pass 2: the unverified fixes too.
    _, unsafe = run_json(run_cli, ["--fix", "--unsafe-fixes", "fixtures"])
    assert unsafe["errors"] == []
    assert_every_file_parses(tmp_path / "fixtures")
    for remaining in unsafe["findings"]:
        assert not remaining["fix"]["available"], remaining
    # A fresh analysis finds exactly the findings that the fixing run reported as left.
    _, after_unsafe = run_json(run_cli, ["fixtures"])
    assert positions(after_unsafe) == positions(unsafe)

    # Pass 3: nothing is left to fix.
    again = run_cli(["--quiet", "--diff", "--unsafe-fixes", "fixtures"])
    assert again.out == ""
    assert again.code == 0
