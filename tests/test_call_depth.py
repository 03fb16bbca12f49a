"""The --max-call-depth option bounds how many calls the analysis follows."""

from maskcheck import cli

SOURCE = """\
import torch.nn as nn

attn = nn.MultiheadAttention(8, 2)


def relay(x, mask):
    return attn(x, x, x, attn_mask=mask)


def expand(x, mask, num_heads):
    return relay(x, mask.repeat(num_heads, 1, 1))
"""


def test_call_followed_by_default(tmp_path, capsys):
    path = tmp_path / "model.py"
    path.write_text(SOURCE)

    code = cli.main(["--no-cache", "-q", str(path)])

    assert code == 1
    assert ":11:21: MSK101 " in capsys.readouterr().out


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
