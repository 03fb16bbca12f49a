"""The consumer-callables setting: configured wrappers are consumers stated without the weaker wording."""

from maskcheck.engine import check_source
from maskcheck.settings import Settings

SOURCE = """\
def run(block, x, mask, num_heads):
    return block.attend(x, attn_mask=mask.repeat(num_heads, 1, 1))
"""


def test_unknown_wrapper_is_less_certain():
    findings = check_source(SOURCE, "wrapper.py")

    assert [f.line for f in findings] == [2]
    assert "less certain" in findings[0].message


def test_configured_wrapper_by_bare_name():
    findings = check_source(SOURCE, "wrapper.py", Settings(extra_consumer_callables=frozenset({"attend"})))

    assert [f.line for f in findings] == [2]
    assert "less certain" not in findings[0].message
    assert "configured as passing `attn_mask`" in findings[0].message


def test_configured_wrapper_by_qualified_name():
    source = "from mylib.layers import attend\n\n" + SOURCE.replace("block.attend(", "attend(")
    settings = Settings(extra_consumer_callables=frozenset({"mylib.layers.attend"}))

    findings = check_source(source, "wrapper.py", settings)

    assert [f.line for f in findings] == [4]
    assert "configured as passing `attn_mask`" in findings[0].message
