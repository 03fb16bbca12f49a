"""Helpers shared by the front-end tests: the canonical MSK101 example, and runners for the CLI and for flake8."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import pytest

from maskcheck.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]

# A per-example (N, L, S) mask expanded head-major: MSK101 on line 11, at column 16 where `mask.repeat` starts.
BUGGY_BLOCK = '''\
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads)

    def forward(self, x, mask):
        mask = mask.repeat(self.num_heads, 1, 1)
        return self.attn(x, x, x, attn_mask=mask)[0]
'''
BUGGY_LINE = 11
BUGGY_COLUMN = 16

FIXED_BLOCK = BUGGY_BLOCK.replace("mask.repeat(self.num_heads, 1, 1)", "mask.repeat_interleave(self.num_heads, dim=0)")

# Functions without a mask, to make a module large: `large_filler(count)` writes `count` of them.
_FILLER_FUNCTION = """

def helper_{index}(values, scale):
    total = 0
    for value in values:
        total = total + value * scale
    return total
"""


def large_filler(count: int) -> str:
    return "".join(_FILLER_FUNCTION.format(index=index) for index in range(count))

# MSK101 is found only when the head-count option names `attn_splits`: nothing else ties it to the head count.
CUSTOM_HEAD_COUNT_BLOCK = '''\
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, cfg):
        super().__init__()
        self.cfg = cfg
        self.attn = nn.MultiheadAttention(dim, cfg.width // 64)

    def forward(self, x, mask):
        mask = mask.repeat(self.cfg.attn_splits, 1, 1)
        return self.attn(x, x, x, attn_mask=mask)[0]
'''

FINDING_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<col>\d+): (?P<code>[A-Z]+\d+) (?P<message>.*)$")


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> List[str]:
        return [line for line in self.err.splitlines() if ": error: " in line]


@pytest.fixture
def buggy_source() -> str:
    return BUGGY_BLOCK


@pytest.fixture
def fixed_source() -> str:
    return FIXED_BLOCK


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Call `maskcheck.cli.main` in-process and return its exit status and captured output."""

    def run(args: Sequence[str], stdin: Optional[bytes] = None) -> CliResult:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def parse_findings(output: str) -> List[Tuple[str, int, int, str, str]]:
    """Parse `path:line:col: CODE message` lines; fail on any other line, so stray output is caught."""
    findings = []
    for line in output.splitlines():
        match = FINDING_LINE.match(line)
        assert match is not None, f"not a finding line: {line!r}"
        findings.append(
            (match["path"], int(match["line"]), int(match["col"]), match["code"], match["message"])
        )
    return findings


def run_flake8(args: Sequence[str], cwd: Path, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run this interpreter's flake8 with config files ignored, so only the given options apply."""
    return subprocess.run(
        [sys.executable, "-m", "flake8", "--isolated", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=600,
    )
