"""`benchmarks/peer_comparison.py --docs` rewrites its generated tables in docs/benchmarks.md and keeps the rest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_PATH = ROOT / "benchmarks" / "peer_comparison.py"
DOCS_PATH = ROOT / "docs" / "benchmarks.md"


def _load_script():
    spec = importlib.util.spec_from_file_location("peer_comparison_script", SCRIPT_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _section(script, body: str) -> str:
    start, end = script.PEER_MARKERS
    return f"{start}\n{body}\n{end}\n"


def test_write_docs_replaces_only_marked_block(tmp_path):
    script = _load_script()
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nbefore\n\n" + _section(script, "old tables") + "\nafter, by hand\n")

    script.write_docs(docs, _section(script, "new tables"))

    text = docs.read_text()
    assert "old tables" not in text
    assert "new tables" in text
    assert text.startswith("# Benchmarks\n\nbefore\n\n")
    assert text.endswith("\nafter, by hand\n")


def test_write_docs_appends_without_markers(tmp_path):
    script = _load_script()
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nby hand\n")

    script.write_docs(docs, _section(script, "new tables"))

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nby hand\n")
    assert "new tables" in text


def test_rerun_keeps_hand_written_analysis(tmp_path):
    # The analysis of the targets and of memory is written by hand below the generated tables. A rerun of the
    # script must not delete it, so it has to stay outside the markers.
    script = _load_script()
    docs = tmp_path / "benchmarks.md"
    docs.write_text(DOCS_PATH.read_text())

    script.write_docs(docs, _section(script, "## Peer comparison\n\nnew tables"))

    text = docs.read_text()
    assert "new tables" in text
    assert "### Where the targets stand" in text
    assert "### What sets the whole-tree peak" in text
    assert "### Scaling" in text
