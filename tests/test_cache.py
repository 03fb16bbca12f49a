"""The result cache: hits, and everything that must invalidate an entry or make it unusable without an error."""

from __future__ import annotations

import json
import logging
import os
import weakref
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import BUGGY_BLOCK, BUGGY_LINE, CUSTOM_HEAD_COUNT_BLOCK, FIXED_BLOCK
from maskcheck import cache as cache_module
from maskcheck import cli, runner
from maskcheck.analysis.module_paths import module_name_for
from maskcheck.analysis.project import ProjectIndex
from maskcheck.cache import CACHE_DIR_NAME, ResultCache, default_cache_dir, find_project_root, resolve_module
from maskcheck.files import SourceFile, discover
from maskcheck.runner import check_paths
from maskcheck.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# A layer that hands its `mask` argument to nn.MultiheadAttention's attn_mask, and the same layer ignoring it.
MIXER_PASSES_MASK = '''\
import torch.nn as nn


class TokenMixer(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, mask):
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
'''
MIXER_IGNORES_MASK = MIXER_PASSES_MASK.replace("attn_mask=mask", "attn_mask=None")

# model.py names no attention class or keyword: its finding exists only through mixer.py.
MODEL = '''\
import torch.nn as nn

from .mixer import TokenMixer


class MixerStack(nn.Module):
    def __init__(self, dim=128, num_heads=4):
        super().__init__()
        self.num_heads = num_heads
        self.mixer = TokenMixer(dim, num_heads)

    def forward(self, x, pair_mask):
        expanded = pair_mask.repeat(self.num_heads, 1, 1)
        return self.mixer(x, expanded)
'''
MODEL_FINDING_LINE = 13


class CountingCheck:
    """Wraps `cli.check_file` and records which files were really analysed (jobs=1 keeps it in this process)."""

    def __init__(self, monkeypatch):
        self.original = cli.check_file
        self.checked: List[str] = []
        monkeypatch.setattr(cli, "check_file", self)

    def __call__(self, source, *args):
        self.checked.append(Path(source.path).name)
        return self.original(source, *args)


def run(paths, cache_dir, settings=None, **options) -> Dict[str, list]:
    """Check `paths` in this process and return the finding lines per file name."""
    sources = discover([str(path) for path in paths]).files
    results = check_paths(sources, settings or Settings(), jobs=1, cache_dir=cache_dir, **options)
    found = {}
    for source, outcome in results:
        assert outcome.error is None, outcome.error
        found[Path(source.path).name] = [finding.line for finding in outcome.findings]
    return found


def write_package(folder: Path) -> Path:
    """Write the package `pkg` whose model.py has a finding only through mixer.py, and return its folder."""
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "mixer.py").write_text(MIXER_PASSES_MASK)
    (folder / "model.py").write_text(MODEL)
    return folder


@pytest.fixture
def package(tmp_path):
    return write_package(tmp_path / "pkg")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / CACHE_DIR_NAME


def entry_files(cache_dir: Path) -> List[Path]:
    return sorted(cache_dir.glob("v*/*/*.json"))


def test_warm_run_analyses_nothing(package, cache_dir, monkeypatch):
    cold = run([package], cache_dir)
    counter = CountingCheck(monkeypatch)

    warm = run([package], cache_dir)

    assert cold["model.py"] == [MODEL_FINDING_LINE]
    assert warm == cold
    assert counter.checked == []
    assert len(entry_files(cache_dir)) == 3


def test_warm_run_keeps_no_empty_results(tmp_path, cache_dir, monkeypatch):
    """Cached results without findings are not all decoded and kept before the first file is yielded."""
    for index in range(6):
        (tmp_path / f"clean_{index}.py").write_text("scale = 1\n")
    (tmp_path / "repeat.py").write_text(BUGGY_BLOCK)
    sources = discover([str(tmp_path)]).files
    list(check_paths(sources, Settings(), jobs=1, cache_dir=cache_dir))
    decoded = []
    real_decode = runner._decode_checked

    def tracking_decode(*arguments):
        checked = real_decode(*arguments)
        decoded.append(weakref.ref(checked.outcome))
        return checked

    monkeypatch.setattr(runner, "_decode_checked", tracking_decode)

    results = check_paths(sources, Settings(), jobs=1, cache_dir=cache_dir)
    _, first_outcome = next(results)
    alive_at_first = sum(reference() is not None for reference in decoded)
    rest = list(results)

    assert len(decoded) == 7
    # The outcome with a finding is kept until its turn, and the one just yielded is alive.
    assert alive_at_first <= 2
    outcomes = [first_outcome] + [outcome for _, outcome in rest]
    assert [len(outcome.findings) for outcome in outcomes] == [0, 0, 0, 0, 0, 0, 1]
    assert [outcome.error for outcome in outcomes] == [None] * 7
    assert [outcome.skipped for outcome in outcomes] == [False] * 7


def test_non_utf8_names_cached(tmp_path, monkeypatch):
    """File and folder names that are not valid UTF-8 (surrogate escapes in Python) get cache and index entries."""
    root = os.fsencode(tmp_path)
    try:
        project = Path(os.fsdecode(root + b"/caf\xe9"))
        project.mkdir()
        (project / os.fsdecode(b"bug\xff.py")).write_text(BUGGY_BLOCK)
    except (OSError, UnicodeError) as error:
        pytest.skip(f"this file system does not take such names: {error}")
    write_package(project / "pkg")
    cache_dir = project / CACHE_DIR_NAME

    cold = run([project], cache_dir)
    counter = CountingCheck(monkeypatch)
    warm = run([project], cache_dir)

    assert cold[os.fsdecode(b"bug\xff.py")] == [BUGGY_LINE]
    assert cold["model.py"] == [MODEL_FINDING_LINE]
    assert warm == cold
    assert counter.checked == []
    assert list(cache_dir.glob("index-*/*/*.json")), "the imported modules should have index entries"


def test_changed_file_invalidates_its_entry(package, cache_dir, monkeypatch):
    (package / "solo.py").write_text(BUGGY_BLOCK)
    run([package], cache_dir)
    counter = CountingCheck(monkeypatch)

    (package / "solo.py").write_text(FIXED_BLOCK)
    found = run([package], cache_dir)

    assert counter.checked == ["solo.py"]
    assert found["solo.py"] == []
    assert len(entry_files(cache_dir)) == 4, "a changed file overwrites its entry"


def test_changed_import_invalidates_importer(package, cache_dir, monkeypatch):
    run([package], cache_dir)
    counter = CountingCheck(monkeypatch)

    (package / "mixer.py").write_text(MIXER_IGNORES_MASK)
    found = run([package], cache_dir)

    assert sorted(counter.checked) == ["mixer.py", "model.py"]
    assert found["model.py"] == []


def test_import_change_seen_when_importer_alone(package, cache_dir):
    run([package / "model.py"], cache_dir)

    (package / "mixer.py").write_text(MIXER_IGNORES_MASK)

    assert run([package / "model.py"], cache_dir)["model.py"] == []


def test_created_module_invalidates_importer(package, cache_dir):
    (package / "mixer.py").unlink()
    assert run([package], cache_dir)["model.py"] == []

    (package / "mixer.py").write_text(MIXER_PASSES_MASK)

    assert run([package], cache_dir)["model.py"] == [MODEL_FINDING_LINE]


def test_package_layout_change_invalidates(package, cache_dir, monkeypatch):
    run([package], cache_dir)
    counter = CountingCheck(monkeypatch)

    # Without __init__.py, model.py is a top-level module and its relative import resolves to nothing.
    (package / "__init__.py").unlink()
    found = run([package], cache_dir)

    assert sorted(counter.checked) == ["mixer.py", "model.py"]
    assert found["model.py"] == []


def test_settings_change_invalidates(tmp_path, cache_dir, monkeypatch):
    (tmp_path / "custom.py").write_text(CUSTOM_HEAD_COUNT_BLOCK)
    assert run([tmp_path / "custom.py"], cache_dir)["custom.py"] == []
    counter = CountingCheck(monkeypatch)

    named = Settings(extra_head_count_names=frozenset({"attn_splits"}))
    found = run([tmp_path / "custom.py"], cache_dir, settings=named)

    assert counter.checked == ["custom.py"]
    assert found["custom.py"] == [11]


def test_code_filter_change_invalidates(tmp_path, cache_dir):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    assert run([tmp_path], cache_dir)["block.py"] == [BUGGY_LINE]

    found = run([tmp_path], cache_dir, code_filter=cli.CodeFilter(ignore=("MSK101",)))

    assert found["block.py"] == []


def test_disable_noqa_change_invalidates(tmp_path, cache_dir):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK.replace("1, 1)\n", "1, 1)  # noqa\n"))
    assert run([tmp_path], cache_dir)["block.py"] == []

    assert run([tmp_path], cache_dir, disable_noqa=True)["block.py"] == [BUGGY_LINE]


def test_maskcheck_code_change_invalidates(tmp_path, cache_dir, monkeypatch):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    run([tmp_path], cache_dir)
    counter = CountingCheck(monkeypatch)

    monkeypatch.setattr(cache_module, "code_fingerprint", lambda: "another build of maskcheck")
    run([tmp_path], cache_dir)

    assert counter.checked == ["block.py"]
    assert len(entry_files(cache_dir)) == 1, "the new build overwrites the entry instead of adding one"


@pytest.mark.parametrize(
    "damaged",
    # json.loads raises RecursionError, not ValueError, for arrays nested this deep.
    [b"\x00not json{", b"[" * 100_000 + b"]" * 100_000],
    ids=["garbage", "deeply-nested"],
)
def test_corrupt_entry_ignored_and_rewritten(package, cache_dir, caplog, damaged):
    run([package], cache_dir)
    for entry in entry_files(cache_dir):
        entry.write_bytes(damaged)
    caplog.set_level(logging.INFO, logger="maskcheck")

    found = run([package], cache_dir)

    assert found["model.py"] == [MODEL_FINDING_LINE]
    ignored = [record for record in caplog.records if "ignored cache entry" in record.getMessage()]
    assert len(ignored) == 3
    assert all(record.levelno == logging.INFO for record in ignored)
    assert all("\n" not in record.getMessage() for record in ignored)
    for entry in entry_files(cache_dir):
        assert json.loads(entry.read_bytes())["format"] == cache_module.FORMAT_VERSION


def test_entries_folder_that_is_a_file(package, cache_dir, caplog):
    """A file where the entries folder belongs gives one line about writing and none per file checked."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / f"v{cache_module.FORMAT_VERSION}").write_text("not a folder")
    caplog.set_level(logging.INFO, logger="maskcheck")

    found = run([package], cache_dir)

    assert found["model.py"] == [MODEL_FINDING_LINE]
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "ignored cache entry" in message]
    assert len([message for message in messages if "cannot write the cache" in message]) == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: {},
        lambda entry: [],
        lambda entry: {**entry, "dependencies": [["not", "four"]]},
        lambda entry: {**entry, "result": {"outcome": {"findings": [{"line": "x"}]}, "log": []}},
        lambda entry: {**entry, "result": {"outcome": {"surprise": 1, "findings": []}, "log": []}},
        lambda entry: {**entry, "result": None},
    ],
    ids=["empty-object", "list", "bad-dependency", "bad-finding", "unknown-field", "no-result"],
)
def test_malformed_entry_ignored(tmp_path, cache_dir, caplog, damage):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    run([tmp_path / "block.py"], cache_dir)
    (entry,) = entry_files(cache_dir)
    entry.write_text(json.dumps(damage(json.loads(entry.read_text()))))
    caplog.set_level(logging.INFO, logger="maskcheck")

    found = run([tmp_path / "block.py"], cache_dir)

    assert found["block.py"] == [BUGGY_LINE]
    assert any("ignored cache entry" in record.getMessage() for record in caplog.records)


def test_unreadable_entry_ignored(tmp_path, cache_dir, caplog):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    run([tmp_path / "block.py"], cache_dir)
    (entry,) = entry_files(cache_dir)
    entry.unlink()
    entry.mkdir()  # reading a folder fails even for root, which file permissions would not stop
    caplog.set_level(logging.INFO, logger="maskcheck")

    found = run([tmp_path / "block.py"], cache_dir)

    assert found["block.py"] == [BUGGY_LINE]
    messages = [record.getMessage() for record in caplog.records]
    assert any("ignored cache entry" in message and "cannot read it" in message for message in messages)


def test_unwritable_cache_is_not_an_error(tmp_path, caplog):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    caplog.set_level(logging.INFO, logger="maskcheck")

    found = run([tmp_path / "block.py"], blocked / CACHE_DIR_NAME)

    assert found["block.py"] == [BUGGY_LINE]
    assert any("cannot write the cache" in record.getMessage() for record in caplog.records)


def test_writes_leave_no_temporary_files(package, cache_dir):
    run([package], cache_dir)
    run([package], cache_dir)

    leftovers = [path for path in cache_dir.rglob("*") if path.name.startswith(".tmp-")]
    assert leftovers == []
    assert (cache_dir / ".gitignore").read_text().splitlines()[-1] == "*"
    assert (cache_dir / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_two_jobs_cold_and_warm_match_serial(package, cache_dir):
    for index in range(4):
        (package / f"extra{index}.py").write_text(BUGGY_BLOCK if index % 2 else FIXED_BLOCK)
    sources = discover([str(package)]).files
    serial = [outcome for _, outcome in check_paths(sources, Settings(), jobs=1)]

    cold = [outcome for _, outcome in check_paths(sources, Settings(), jobs=2, cache_dir=cache_dir)]
    warm = [outcome for _, outcome in check_paths(sources, Settings(), jobs=2, cache_dir=cache_dir)]

    assert cold == serial
    assert warm == serial
    assert [[f.chain for f in outcome.findings] for outcome in warm] == [[f.chain for f in o.findings] for o in serial]
    assert [outcome.text for outcome in warm] == [outcome.text for outcome in serial]


def test_error_outcome_cached(tmp_path, cache_dir, monkeypatch):
    (tmp_path / "broken.py").write_text("print 'python 2'\n")
    first = list(check_paths([str(tmp_path / "broken.py")], Settings(), jobs=1, cache_dir=cache_dir))
    counter = CountingCheck(monkeypatch)

    second = list(check_paths([str(tmp_path / "broken.py")], Settings(), jobs=1, cache_dir=cache_dir))

    assert first[0][1].error is not None
    assert second[0][1].error == first[0][1].error
    assert counter.checked == []


def test_internal_error_not_cached(tmp_path, cache_dir, monkeypatch):
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)

    def crash(source, path, settings):
        raise RuntimeError("simulated analyser bug")

    monkeypatch.setattr(cli, "check_source", crash)
    first = list(check_paths([str(tmp_path / "block.py")], Settings(), jobs=1, cache_dir=cache_dir))
    monkeypatch.undo()
    second = list(check_paths([str(tmp_path / "block.py")], Settings(), jobs=1, cache_dir=cache_dir))

    assert first[0][1].error.startswith("internal error")
    assert [finding.line for finding in second[0][1].findings] == [BUGGY_LINE]


def test_large_file_not_cached(tmp_path, cache_dir):
    (tmp_path / "big.py").write_text(BUGGY_BLOCK)
    small_limit = Settings(max_file_size=100)

    results = list(check_paths([str(tmp_path / "big.py")], small_limit, jobs=1, cache_dir=cache_dir))

    assert results[0][1].skipped
    assert entry_files(cache_dir) == []


def test_replayed_log_lines(tmp_path, cache_dir, caplog):
    checked = tmp_path / "checked"
    checked.mkdir()
    (checked / "exempt.py").write_text("# flake8: noqa\n" + BUGGY_BLOCK)
    caplog.set_level(logging.INFO, logger="maskcheck")
    run([checked], cache_dir)
    cold = [record.getMessage() for record in caplog.records]
    caplog.clear()

    run([checked], cache_dir)

    warm = [record.getMessage() for record in caplog.records]
    assert any("flake8: noqa" in message for message in cold)
    assert warm == cold


def test_resolve_module_matches_project_index():
    """The cache re-resolves recorded lookups itself; it must pick the file that `ProjectIndex.find` reads."""
    fixtures = sorted((REPO_ROOT / "fixtures" / "cross_module").rglob("*.py"))
    lookups = set()
    with runner._recorded_lookups(True) as recorded:
        for path in fixtures:
            list(check_paths([str(path)], Settings(), jobs=1))
        lookups |= recorded
    assert len(lookups) > 10

    for roots, dotted in sorted(lookups):
        context = ProjectIndex([Path(root) for root in roots]).find(dotted)
        resolved = resolve_module(roots, dotted)
        if context is not None:
            assert resolved == context.path, dotted
        elif resolved is not None:
            # Found but not parsed (too large or invalid): the entry still depends on the file.
            assert Path(resolved).is_file()


def test_dependencies_record_missing_modules(tmp_path):
    cache = ResultCache(tmp_path / "cache", "run")
    roots = (str(tmp_path),)
    (tmp_path / "present.py").write_text("x = 1\n")

    dependencies = cache.dependencies([(roots, "present"), (roots, "absent"), (roots, "present")])

    assert [(dotted, path is not None) for _, dotted, path, _ in dependencies] == [("absent", False), ("present", True)]


def test_project_root_found_by_marker(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    (nested / "mod.py").write_text("")

    assert find_project_root(str(nested / "mod.py")) == tmp_path
    assert default_cache_dir(["-", str(nested)]) == tmp_path / CACHE_DIR_NAME
    assert default_cache_dir(["-"]) is None
    # A missing path gets no cache folder; the first path that exists decides.
    assert default_cache_dir([str(tmp_path / "typo" / "mod.py"), str(nested)]) == tmp_path / CACHE_DIR_NAME
    assert default_cache_dir([str(tmp_path / "typo" / "mod.py")]) is None


def test_project_root_without_marker(tmp_path):
    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "script.py").write_text("")

    root = find_project_root(str(folder / "script.py"))

    # tmp_path has no marker, but a folder above it might; the root is never below the file's folder.
    assert root == folder or root in folder.parents


def test_settings_fingerprint_ignores_set_order():
    first = cache_module.run_fingerprint(Settings(extra_head_count_names=frozenset({"a", "b", "c"})))
    second = cache_module.run_fingerprint(Settings(extra_head_count_names=frozenset({"c", "b", "a"})))
    other = cache_module.run_fingerprint(Settings(extra_head_count_names=frozenset({"a", "b"})))

    assert first == second
    assert first != other


def test_stdin_never_cached(tmp_path, cache_dir, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(BUGGY_BLOCK.encode())))

    results = list(check_paths([SourceFile("-", "-")], Settings(), jobs=1, cache_dir=cache_dir))

    assert [finding.line for finding in results[0][1].findings] == [BUGGY_LINE]
    assert entry_files(cache_dir) == []


def test_project_root_without_marker_is_above_top_package(tmp_path):
    if any(
        (folder / marker).exists() for folder in (tmp_path, *tmp_path.parents) for marker in cache_module.PROJECT_MARKERS
    ):
        pytest.skip("a folder above the temporary folder holds a project marker")
    package = tmp_path / "vendor" / "pkg"
    (package / "models" / "deep").mkdir(parents=True)
    for folder in (package, package / "models", package / "models" / "deep"):
        (folder / "__init__.py").write_text("")
    (package / "models" / "deep" / "layer.py").write_text("")
    (tmp_path / "vendor" / "script.py").write_text("")

    assert find_project_root(str(package / "models" / "deep" / "layer.py")) == tmp_path / "vendor"
    assert find_project_root(str(package / "models")) == tmp_path / "vendor"
    assert find_project_root(str(tmp_path / "vendor" / "script.py")) == tmp_path / "vendor"
    assert default_cache_dir([str(package / "models" / "deep")]) == tmp_path / "vendor" / CACHE_DIR_NAME


def test_folder_memos_give_same_roots_and_names(tmp_path):
    marked_project = tmp_path / "marked"
    (marked_project / "src" / "pkg" / "sub").mkdir(parents=True)
    (marked_project / "pyproject.toml").write_text("")
    loose = tmp_path / "loose" / "lib" / "inner"
    loose.mkdir(parents=True)
    for folder in (marked_project / "src" / "pkg", marked_project / "src" / "pkg" / "sub", loose.parent, loose):
        (folder / "__init__.py").write_text("")
    files = []
    for folder in (marked_project / "src" / "pkg" / "sub", marked_project / "src", loose, loose.parent, tmp_path):
        (folder / "mod.py").write_text("")
        files += [str(folder / "mod.py"), str(folder / "__init__.py")]
    packages: dict = {}
    marked: dict = {}

    for _ in range(2):
        for path in files:
            assert module_name_for(path, packages) == module_name_for(path)
            assert find_project_root(path, marked) == find_project_root(path)
    assert module_name_for(str(loose / "mod.py"), packages) == ("lib.inner.mod", tmp_path / "loose")
    assert packages and marked


def test_missing_first_path_makes_no_cache_folder(tmp_path, capsys, monkeypatch):
    if any(
        (folder / marker).exists() for folder in (tmp_path, *tmp_path.parents) for marker in cache_module.PROJECT_MARKERS
    ):
        pytest.skip("a folder above the temporary folder holds a project marker")
    (tmp_path / "block.py").write_text(BUGGY_BLOCK)
    monkeypatch.chdir(tmp_path)

    status = cli.main(["nosuchdir/x.py", "block.py"])

    assert status == 2
    assert not (tmp_path / "nosuchdir").exists()
    assert (tmp_path / CACHE_DIR_NAME).is_dir()
    captured = capsys.readouterr()
    assert "nosuchdir/x.py" in captured.err
    assert f"block.py:{BUGGY_LINE}:" in captured.out
