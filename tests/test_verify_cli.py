"""`maskcheck --verify` and `--strict`: verdicts on each finding's line, the exit status, and a missing torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUGGY_BLOCK, BUGGY_COLUMN, BUGGY_LINE, REPO_ROOT, parse_findings
from maskcheck import cli
from maskcheck.chain import ChainStep, ReplayChain
from maskcheck.findings import Finding

FIXTURES = REPO_ROOT / "fixtures"
INSTALL_HINT = "pip install 'maskcheck[verify]'"
VERDICT_SUFFIX = re.compile(r" \[(?P<status>confirmed|benign|inconclusive)(?:: (?P<body>.*))?\]$")


def needs_torch():
    """Skip the calling test when torch is missing: the verifier replays masks with real torch."""
    pytest.importorskip("torch", reason="the runtime verifier needs torch: pip install torch==2.13.0")


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def verdict_of(message: str):
    match = VERDICT_SUFFIX.search(message)
    assert match is not None, f"no verdict at the end of: {message}"
    return match["status"], (match["body"] or "").split("; ")


def chain_for(code: str) -> ReplayChain:
    """A one-step chain that expands an (N, L, S) per-example mask `m` for nn.MultiheadAttention."""
    return ReplayChain(
        source_name="m",
        source_kind="example",
        steps=(ChainStep(target=None, code=code, line=1, col=1),),
        sizes={"N": "N", "H": "H", "L": "L", "S": "S"},
        consumer="torch.nn.MultiheadAttention",
        batch_first=True,
        flagged_step=0,
        replacement=None,
    )


def test_confirmed_verdict_on_finding_line(project, run_cli):
    needs_torch()
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["--verify", "block.py"])

    assert result.code == 1
    [(path, line, col, code, message)] = parse_findings(result.out)
    assert (path, line, col, code) == ("block.py", BUGGY_LINE, BUGGY_COLUMN, "MSK101")
    status, parts = verdict_of(message)
    assert status == "confirmed"
    assert re.fullmatch(r"max error \d\.\d+(e-?\d+)?", parts[0]), parts
    # With N=3 examples and H=2 heads, `repeat` puts example s % 3 in slot s, which PyTorch reads as example s // 2:
    # slots 1, 2, 3 and 4 hold another example's mask, and the first of them is listed.
    assert parts[1] == "slot 1 (example 0, head 1) received example 1's mask"
    assert parts[2] == "3 more slots with foreign content"
    assert parts[-1] == "fix verified"
    assert result.err.splitlines()[-1] == "maskcheck: 1 file checked, 0 files skipped, 1 finding (1 confirmed)"


def test_inconclusive_verdict_names_the_operation(project, run_cli):
    needs_torch()
    shutil.copy(FIXTURES / "classic_experiment.py", project / "classic.py")

    result = run_cli(["--verify", "classic.py"])

    assert result.code == 1
    [(_, _, _, _, message)] = parse_findings(result.out)
    status, parts = verdict_of(message)
    assert status == "inconclusive"
    # The stacked source reads `open_mask` on line 21, which the replay cannot bind.
    assert parts[0].startswith("name `open_mask` at 21:21 is not bound")
    assert parts[-1] == "fix not verified"


def test_every_fixture_finding_gets_a_verdict(project, run_cli):
    needs_torch()
    shutil.copytree(FIXTURES / "consumers", project / "consumers")

    plain = run_cli(["consumers"])
    verified = run_cli(["--verify", "--output-format", "json", "consumers"])

    expected = [(path, line, col, code) for path, line, col, code, _ in parse_findings(plain.out)]
    document = json.loads(verified.out)
    got = [
        (f["path"], f["location"]["line"], f["location"]["column"], f["code"]) for f in document["findings"]
    ]
    assert expected, "the consumers fixtures have findings"
    assert got == expected
    assert document["summary"]["verified"] is True
    for finding in document["findings"]:
        assert finding["verdict"]["status"] in ("confirmed", "benign", "inconclusive"), finding


def test_benign_finding_exits_zero_unless_strict(project, run_cli, monkeypatch):
    needs_torch()
    (project / "a.py").write_text("x = 1\n")
    # `repeat_interleave` is the batch-major expansion, so the real replay finds the outputs unchanged.
    benign = Finding("a.py", 1, 1, "MSK101", "stand-in finding", chain=chain_for("m.repeat_interleave(H, dim=0)"))
    monkeypatch.setattr(cli, "check_source", lambda source, path, settings: [benign])

    lenient = run_cli(["--verify", "a.py"])
    strict = run_cli(["--verify", "--strict", "a.py"])

    assert verdict_of(parse_findings(lenient.out)[0][4])[0] == "benign"
    assert lenient.code == 0
    assert strict.code == 1
    assert strict.out == lenient.out


def test_benign_next_to_confirmed_exits_one(project, run_cli, monkeypatch):
    needs_torch()
    (project / "a.py").write_text("x = 1\n")
    findings = [
        Finding("a.py", 1, 1, "MSK101", "benign stand-in", chain=chain_for("m.repeat_interleave(H, dim=0)")),
        Finding("a.py", 2, 1, "MSK101", "head-major stand-in", chain=chain_for("m.repeat(H, 1, 1)")),
    ]
    monkeypatch.setattr(cli, "check_source", lambda source, path, settings: findings)

    result = run_cli(["--verify", "a.py"])

    statuses = [verdict_of(message)[0] for *_, message in parse_findings(result.out)]
    assert statuses == ["benign", "confirmed"]
    assert result.code == 1


def test_exit_zero_with_confirmed_finding(project, run_cli):
    needs_torch()
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["--verify", "--exit-zero", "block.py"])

    assert result.code == 0
    assert "[confirmed:" in result.out


def test_without_verify_no_verdict(project, run_cli):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_cli(["block.py"])

    [(_, _, _, _, message)] = parse_findings(result.out)
    assert VERDICT_SUFFIX.search(message) is None


def run_without_torch(args, cwd: Path) -> subprocess.CompletedProcess:
    """Run the command line in a fresh interpreter in which `import torch` fails."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "from maskcheck.cli import main\n"
        f"sys.exit(main({list(args)!r}))\n"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_verify_without_torch_exits_two(project):
    (project / "block.py").write_text(BUGGY_BLOCK)

    result = run_without_torch(["--verify", "block.py"], project)

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert INSTALL_HINT in lines[0]
    assert "Traceback" not in result.stderr


def test_verify_without_torch_fails_before_analysis(project):
    # A clean tree still fails: a CI job that asked for verification must learn that it cannot run.
    (project / "clean.py").write_text("x = 1\n")

    result = run_without_torch(["--verify", "clean.py"], project)

    assert result.returncode == 2
    assert INSTALL_HINT in result.stderr


def test_static_run_does_not_import_torch(project):
    (project / "block.py").write_text(BUGGY_BLOCK)
    code = (
        "import sys\n"
        "from maskcheck.cli import main\n"
        "status = main(['--output-format', 'full', '--show-fixes', 'block.py'])\n"
        "print('torch' in sys.modules, status, file=sys.stderr)\n"
    )

    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=300)

    assert result.stderr.splitlines()[-1] == "False 1"
