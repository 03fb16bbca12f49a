"""The engine's pre-filter skips only modules that cannot have a finding.

`check_source` skips the libcst parse and the analysis when `_may_have_findings` returns False. Each test here
checks files twice, with the pre-filter and with it replaced by one that lets every module through, and requires
exactly the same findings. The files are every fixture, a generated sample of modules that reach an attention layer
through each import spelling, and, in a slow test, real code bases.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Tuple

import pytest

from maskcheck import engine
from maskcheck.analysis.consumers import CONSUMER_TOKENS
from maskcheck.engine import check_source
from maskcheck.files import ReadError, decode_source
from maskcheck.findings import SourceError
from maskcheck.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE_PATHS = sorted((REPO_ROOT / "fixtures").rglob("*.py"))

# Folder of unpacked code bases for the slow test, such as the `src` folder of benchmarks/real_world.py's workdir.
CORPORA_VARIABLE = "MASKCHECK_PREFILTER_CORPORA"


def findings_of(path: Path, settings: Settings, prefilter: bool, monkeypatch) -> List[Tuple]:
    """Return the findings of one file, with or without the pre-filter, as comparable tuples."""
    with monkeypatch.context() as patch:
        if not prefilter:
            patch.setattr(engine, "_may_have_findings", lambda *arguments: True)
        try:
            found = check_source(decode_source(path.read_bytes()), str(path), settings)
        except (SourceError, ReadError) as error:
            return [("error", str(error))]
    return [(finding.line, finding.col, finding.code, finding.message, finding.chain) for finding in found]


@pytest.mark.parametrize("path", FIXTURE_PATHS, ids=lambda path: path.relative_to(REPO_ROOT).as_posix())
def test_fixture_same_with_and_without_prefilter(path, monkeypatch):
    assert findings_of(path, Settings(), True, monkeypatch) == findings_of(path, Settings(), False, monkeypatch)


def test_fixtures_exercise_the_prefilter():
    """At least some fixtures must be skipped by the pre-filter and some reach a layer only through imports."""
    decisions = {}
    for path in FIXTURE_PATHS:
        text = path.read_text(encoding="utf-8")
        decisions[path] = (engine._may_have_findings(text, str(path), Settings()), _names_consumer(text))
    assert any(not passes for passes, _ in decisions.values())
    assert any(passes and not named for passes, named in decisions.values())


def _names_consumer(text: str) -> bool:
    return any(token in text for token in CONSUMER_TOKENS)


# -------------------------------------------------------------------------------------------------------------------
# A generated sample: one caller per way of importing an attention layer, with a head-major and a batch-major mask.

LAYER = '''\
import torch.nn as nn


class TokenMixer(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, mask):
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
'''

# A layer wrapper that names no consumer: the mask reaches nn.MultiheadAttention one module further on.
RELAY = '''\
import torch.nn as nn

from .mixer import TokenMixer


class Relay(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.inner = TokenMixer(dim, num_heads)

    def forward(self, x, mask):
        return self.inner(x, mask)
'''

CALLER = '''\
import torch.nn as nn
{imports}


class Stack(nn.Module):
    def __init__(self, dim=64, num_heads=4):
        super().__init__()
{init_imports}        self.num_heads = num_heads
        self.inner = {layer}(dim, num_heads)

    def forward(self, x, pair_mask):
        expanded = pair_mask.{expansion}
        return self.inner(x, expanded)
'''

HEAD_MAJOR = "repeat(self.num_heads, 1, 1)"
BATCH_MAJOR = "repeat_interleave(self.num_heads, dim=0)"

# style: (folder of the caller, module-level imports, imports inside __init__, layer expression, reaches a layer)
STYLES = {
    "relative": ("gen/sub", "from ..mixer import TokenMixer", "", "TokenMixer", True),
    "relative_module": ("gen/sub", "from .. import mixer", "", "mixer.TokenMixer", True),
    "relative_relay": ("gen/sub", "from ..relay import Relay", "", "Relay", True),
    "import_in_method": ("gen/sub", "", "from ..mixer import TokenMixer", "TokenMixer", True),
    "absolute": ("gen/sub", "from gen.mixer import TokenMixer", "", "TokenMixer", True),
    "absolute_module": ("gen/sub", "import gen.mixer as mixer_module", "", "mixer_module.TokenMixer", True),
    "absolute_dotted": ("gen/sub", "import gen.mixer", "", "gen.mixer.TokenMixer", True),
    "script_sibling": ("loose", "from mixer import TokenMixer", "", "TokenMixer", True),
    "own_folder_sibling": ("gen/sub", "from mixer import TokenMixer", "", "TokenMixer", True),
    "beside_top_package": ("gen/sub", "from toplevel_mixer import TokenMixer", "", "TokenMixer", True),
    "after_semicolon": ("gen/sub", "import os; from ..mixer import TokenMixer", "", "TokenMixer", True),
    "one_line_if": ("gen/sub", "if True: from ..mixer import TokenMixer", "", "TokenMixer", True),
    "backslash_continuation": ("gen/sub", "from \\\n    ..mixer import TokenMixer", "", "TokenMixer", True),
    "third_party": ("gen/sub", "from thirdparty.layers import TokenMixer", "", "TokenMixer", False),
    "no_import": ("gen/sub", "", "", "nn.Identity", False),
}

# Import spellings that the earlier line-based patterns of the pre-filter missed, although the analysis follows
# them. The analysis searches the file's own folder and the folder that contains its top package for absolute
# imports. It reads imports after a semicolon, in a one-line compound statement and across a backslash continuation.
FORMERLY_MISSED = ("own_folder_sibling", "beside_top_package", "after_semicolon", "one_line_if", "backslash_continuation")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prefilter_sample")
    for folder in ("gen", "gen/sub", "loose"):
        (root / folder).mkdir()
    (root / "gen" / "__init__.py").write_text("")
    (root / "gen" / "sub" / "__init__.py").write_text("")
    for layer_path in ("gen/mixer.py", "gen/sub/mixer.py", "loose/mixer.py", "toplevel_mixer.py"):
        (root / layer_path).write_text(LAYER)
    (root / "gen" / "relay.py").write_text(RELAY)
    for style, (folder, imports, init_imports, layer, _) in STYLES.items():
        for name, expansion in (("head_major", HEAD_MAJOR), ("batch_major", BATCH_MAJOR)):
            text = CALLER.format(
                imports=imports,
                init_imports=f"        {init_imports}\n" if init_imports else "",
                layer=layer,
                expansion=expansion,
            )
            (root / folder / f"caller_{style}_{name}.py").write_text(text)
    return root


@pytest.mark.parametrize("style", list(STYLES))
def test_generated_caller_same_with_and_without_prefilter(sample, style, monkeypatch):
    folder, _, _, _, reaches_layer = STYLES[style]
    head_major = sample / folder / f"caller_{style}_head_major.py"
    batch_major = sample / folder / f"caller_{style}_batch_major.py"

    found = findings_of(head_major, Settings(), False, monkeypatch)

    # The sample is only useful if the analysis really finds the bug through the import, without the pre-filter.
    assert bool(found) == reaches_layer
    assert not _names_consumer(head_major.read_text())
    assert findings_of(head_major, Settings(), True, monkeypatch) == found
    assert findings_of(batch_major, Settings(), True, monkeypatch) == findings_of(
        batch_major, Settings(), False, monkeypatch
    )


def test_formerly_missed_imports_pass_prefilter(sample):
    for style in FORMERLY_MISSED:
        folder = STYLES[style][0]
        path = sample / folder / f"caller_{style}_head_major.py"
        assert engine._may_have_findings(path.read_text(), str(path), Settings()), style


def test_torch_tree_imports_skipped(tmp_path, monkeypatch):
    """The analysis never reads modules under `torch.`, so relative imports inside a `torch` package do not count."""
    package = tmp_path / "torch" / "nn"
    package.mkdir(parents=True)
    (tmp_path / "torch" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "mixer.py").write_text(LAYER)
    caller = package / "caller.py"
    caller.write_text(CALLER.format(imports="from .mixer import TokenMixer", init_imports="", layer="TokenMixer",
                                    expansion=HEAD_MAJOR))

    assert not engine._may_have_findings(caller.read_text(), str(caller), Settings())
    assert findings_of(caller, Settings(), False, monkeypatch) == []


def test_import_of_folder_without_init_passes(tmp_path, monkeypatch):
    """A folder without `__init__.py` beside the file can still hold a module that an import names."""
    (tmp_path / "blocks").mkdir()
    (tmp_path / "blocks" / "mixer.py").write_text(LAYER)
    caller = tmp_path / "caller.py"
    caller.write_text(
        CALLER.format(imports="import blocks.mixer", init_imports="", layer="blocks.mixer.TokenMixer",
                      expansion=HEAD_MAJOR)
    )

    found = findings_of(caller, Settings(), False, monkeypatch)
    assert len(found) == 1
    assert engine._may_have_findings(caller.read_text(), str(caller), Settings())
    assert findings_of(caller, Settings(), True, monkeypatch) == found


def test_generated_sample_without_following_imports(sample, monkeypatch):
    no_imports = Settings(follow_imports=False)
    paths = sorted(sample.rglob("*.py"))
    assert len(paths) == 2 * len(STYLES) + 7

    for path in paths:
        with_prefilter = findings_of(path, no_imports, True, monkeypatch)
        assert with_prefilter == findings_of(path, no_imports, False, monkeypatch), path.name


def test_generated_sample_has_skipped_files(sample):
    skipped = [
        path
        for path in sorted(sample.rglob("caller_*.py"))
        if not engine._may_have_findings(path.read_text(), str(path), Settings())
    ]

    assert any("third_party" in path.name for path in skipped)
    assert any("no_import" in path.name for path in skipped)


# -------------------------------------------------------------------------------------------------------------------
# Real code bases


@pytest.mark.slow
@pytest.mark.skipif(CORPORA_VARIABLE not in os.environ, reason=f"set {CORPORA_VARIABLE} to a folder of code bases")
def test_corpora_same_with_and_without_prefilter(monkeypatch):
    root = Path(os.environ[CORPORA_VARIABLE])
    paths = sorted(root.rglob("*.py"))
    assert paths, f"no .py files under {root}"

    differences = []
    for path in paths:
        with_prefilter = findings_of(path, Settings(), True, monkeypatch)
        without = findings_of(path, Settings(), False, monkeypatch)
        if with_prefilter != without:
            differences.append(f"{path}: {len(with_prefilter)} findings with the pre-filter, {len(without)} without")
    assert differences == []
