"""The --max-call-depth option bounds how many calls the analysis follows."""

import pytest

from maskcheck import cli

SOURCE = """\
import torch.nn as nn

attn = nn.MultiheadAttention(8, 2)


def relay(x, mask):
    return attn(x, x, x, attn_mask=mask)


def expand(x, mask, num_heads):
    return relay(x, mask.repeat(num_heads, 1, 1))
"""

# The same calls, each function's body on its `def` line.
ONE_LINE_BODIES = """\
import torch.nn as nn

attn = nn.MultiheadAttention(8, 2)


def relay(x, mask): return attn(x, x, x, attn_mask=mask)


def expand(x, mask, num_heads): return relay(x, mask.repeat(num_heads, 1, 1))
"""


@pytest.mark.parametrize(
    ("source", "position"), [(SOURCE, ":11:21:"), (ONE_LINE_BODIES, ":9:49:")], ids=["indented", "one_line"]
)
def test_call_followed_by_default(tmp_path, capsys, source, position):
    path = tmp_path / "model.py"
    path.write_text(source)

    code = cli.main(["--no-cache", "-q", str(path)])

    assert code == 1
    assert f"{position} MSK101 " in capsys.readouterr().out


def test_depth_zero_follows_no_call(tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text(SOURCE)

    code = cli.main(["--no-cache", "-q", "--max-call-depth", "0", str(path)])

    assert code == 0
    assert capsys.readouterr().out == ""


def test_negative_depth_is_usage_error(tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text(SOURCE)

    code = cli.main(["--max-call-depth", "-1", str(path)])

    assert code == 2
    assert "invalid call depth" in capsys.readouterr().err


def test_depth_from_config_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "model.py").write_text(SOURCE)
    (tmp_path / "pyproject.toml").write_text("[tool.maskcheck]\nmax-call-depth = 0\n")
    monkeypatch.chdir(tmp_path)

    from_file = cli.main(["--no-cache", "-q", "model.py"])
    assert from_file == 0
    assert capsys.readouterr().out == ""

    overridden = cli.main(["--no-cache", "-q", "--max-call-depth", "1", "model.py"])
    assert overridden == 1
    assert ":11:21: MSK101 " in capsys.readouterr().out


def test_negative_depth_in_config_file_rejected(tmp_path, capsys, monkeypatch):
    (tmp_path / "model.py").write_text(SOURCE)
    (tmp_path / "pyproject.toml").write_text("[tool.maskcheck]\nmax-call-depth = -1\n")
    monkeypatch.chdir(tmp_path)

    code = cli.main(["--no-cache", "model.py"])

    assert code == 2
    assert "'max-call-depth'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1_000", "+3", "\u0663", "3.0", ""])
def test_depth_rejects_other_number_forms(tmp_path, capsys, value):
    path = tmp_path / "model.py"
    path.write_text(SOURCE)

    code = cli.main(["--max-call-depth", value, str(path)])

    assert code == 2
    assert "invalid call depth" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["1_000", "+2", "\u0662"])
def test_jobs_rejects_other_number_forms(tmp_path, capsys, value):
    path = tmp_path / "model.py"
    path.write_text(SOURCE)

    code = cli.main(["--jobs", value, str(path)])

    assert code == 2
    assert "is not a whole number" in capsys.readouterr().err
