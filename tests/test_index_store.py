"""The pre-filter's module index on disk (`maskcheck.index_store`): round trips, reuse between runs, and bad entries."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from maskcheck import cache as cache_module
from maskcheck import engine, index_store, reach
from maskcheck.cache import CACHE_DIR_NAME
from maskcheck.files import discover
from maskcheck.index_store import IndexStore, decode_facts, encode_facts
from maskcheck.reach import UNPARSABLE, ModuleFacts, Unit
from maskcheck.runner import check_paths
from maskcheck.settings import Settings
from test_cache import MODEL_FINDING_LINE, write_package
from test_reach import BASE_FORMS, EVERY_SYNTAX, IMPORT_SPELLINGS, LIBRARY, OPAQUE_BASE_CALLERS

# Modules with the forms whose facts are hardest to keep: subscripted and call bases, alias assignments, guarded
# `isinstance` reads, `attn_mask` keywords, consumer aliases and nested classes.
NESTED_AND_GUARDED = '''\
import torch.nn as nn
import torch.nn.functional as F
from torch.nn import MultiheadAttention as MHA

from . import layers
from .layers import Block as LayerBlock

Base = layers.Block
jinja2 = None


class Outer(Base, metaclass=layers.Meta):
    class Inner(layers.Mixin, LayerBlock):
        class Deepest((lambda: object)()):
            pass

    class Fallback(layers.Block or object):
        pass

    def forward(self, q, k, v, mask):
        if isinstance(self.attn, (nn.MultiheadAttention, MHA)):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attn(q, k, v, attn_mask=mask)


def build(dim):
    class Local(layers.make_base(dim)):
        pass

    return {"attn_mask": None, "layer": Local}


async def stream(items):
    async for item in items:
        yield item
'''

# A mixer with no attention layer and no `attn_mask`: the pre-filter skips model.py when it imports this one.
SIGNLESS_MIXER = "class TokenMixer:\n    pass\n"

ROUND_TRIP_MODULES: Dict[str, str] = {
    "nested_and_guarded": NESTED_AND_GUARDED,
    "every_syntax": EVERY_SYNTAX,
    "import_spellings": IMPORT_SPELLINGS,
    **{f"library_{name}": text for name, text in LIBRARY.items()},
    **{f"base_{name}": text for name, (text, _) in BASE_FORMS.items()},
    **{f"opaque_{name}": text for name, text in OPAQUE_BASE_CALLERS.items()},
}


@pytest.fixture(autouse=True)
def fresh_reach_cache():
    reach.clear_cache()
    yield
    reach.clear_cache()


@pytest.fixture
def package(tmp_path):
    """A project whose model.py has a finding only through the imported mixer.py."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text("")
    return write_package(root / "pkg")


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / CACHE_DIR_NAME


def facts_of(text: str, path: str = "/project/pkg/module.py", dotted: str = "pkg.module") -> ModuleFacts:
    facts = reach.build_facts(ast.parse(text), "pkg", path)
    facts.key = (path, dotted, hashlib.blake2b(text.encode(), digest_size=16).hexdigest())
    return facts


def assert_same_types(left: Any, right: Any, where: str = "facts") -> None:
    """Fail where two values differ in type, which `==` misses for a set and a frozenset, or a list and a tuple."""
    assert type(left) is type(right), f"{where}: {type(left).__name__} != {type(right).__name__}"
    if dataclasses.is_dataclass(left):
        for field in dataclasses.fields(left):
            assert_same_types(getattr(left, field.name), getattr(right, field.name), f"{where}.{field.name}")
    elif isinstance(left, dict):
        for key in left:
            assert_same_types(left[key], right[key], f"{where}[{key!r}]")
    elif isinstance(left, (list, tuple)):
        for index, (first, second) in enumerate(zip(left, right)):
            assert_same_types(first, second, f"{where}[{index}]")
    elif isinstance(left, (set, frozenset)):
        for first, second in zip(sorted(left), sorted(right)):
            assert_same_types(first, second, f"{where} item")


def through_json(facts: ModuleFacts) -> ModuleFacts:
    return decode_facts(json.loads(json.dumps(encode_facts(facts))))


def run(paths, cache_dir, jobs=1) -> Dict[str, List[Tuple]]:
    """Check `paths` and return each file's findings, by file name, as (line, column, code, message)."""
    sources = discover([str(path) for path in paths]).files
    found = {}
    for source, outcome in check_paths(sources, Settings(), jobs=jobs, cache_dir=cache_dir):
        assert outcome.error is None, outcome.error
        found[Path(source.path).name] = [(f.line, f.col, f.code, f.message) for f in outcome.findings]
    return found


def drop_results(cache_dir: Path) -> None:
    """Delete the result cache's entries but not the index, so the next run checks every file again."""
    shutil.rmtree(cache_dir / f"v{cache_module.FORMAT_VERSION}")


def index_entries(cache_dir: Path) -> List[Path]:
    return sorted(cache_dir.glob(f"index-v{index_store.FORMAT_VERSION}/*/*.json"))


def module_key(path: Path, dotted: str) -> reach.ModuleKey:
    resolved = str(path.resolve())
    return resolved, dotted, hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


class Recorder:
    """Records the pre-filter's decisions and the modules it parses or builds facts for, in this process."""

    def __init__(self, monkeypatch):
        self.decisions: Dict[str, bool] = {}
        self.parsed: List[str] = []
        self.built: List[str] = []
        original_decide = engine._may_have_findings
        original_parse = reach._parse_imported
        original_build = reach.build_facts

        def decide(source, path, *arguments):
            decision = original_decide(source, path, *arguments)
            self.decisions[Path(path).name] = decision
            return decision

        def parse(data, key):
            self.parsed.append(Path(key[0]).name)
            return original_parse(data, key)

        def build(tree, package, path):
            self.built.append(Path(path).name)
            return original_build(tree, package, path)

        monkeypatch.setattr(engine, "_may_have_findings", decide)
        monkeypatch.setattr(reach, "_parse_imported", parse)
        monkeypatch.setattr(reach, "build_facts", build)


# -------------------------------------------------------------------------------------------------------------------
# Facts as JSON


@pytest.mark.parametrize("name", list(ROUND_TRIP_MODULES))
def test_facts_round_trip(name):
    facts = facts_of(ROUND_TRIP_MODULES[name])

    loaded = through_json(facts)

    assert loaded == facts
    assert_same_types(loaded, facts)
    for field in dataclasses.fields(ModuleFacts):
        assert getattr(loaded, field.name) == getattr(facts, field.name), field.name


def test_round_trip_modules_cover_every_field():
    """Each field of `Unit` and `ModuleFacts` is set to something other than its empty value by some module."""
    all_facts = [facts_of(text) for text in ROUND_TRIP_MODULES.values()]
    units = [unit for facts in all_facts for unit in facts.units]

    for field in dataclasses.fields(Unit):
        assert any(getattr(unit, field.name) for unit in units), field.name
    for field in dataclasses.fields(ModuleFacts):
        assert any(getattr(facts, field.name) for facts in all_facts), field.name


def test_nested_and_guarded_facts_kept():
    """Spot checks that the round trip keeps the values the search reads, not only equal containers."""
    loaded = through_json(facts_of(NESTED_AND_GUARDED))
    outer = loaded.units[loaded.classes["Outer"][0]]

    assert loaded.aliases["Base"] == frozenset({("layers", "Block")})
    assert loaded.aliases["jinja2"] == frozenset()
    assert loaded.consumer_aliases == frozenset({"MHA"})
    assert ("Base",) in outer.own_base_chains
    assert ("layers", "Mixin") in outer.nested_base_chains
    assert outer.has_opaque_base
    assert outer.guard_callees == {"isinstance"}
    assert ("F", "scaled_dot_product_attention") in outer.mask_callees
    assert outer.has_guarded_sign
    assert "MHA" in outer.guarded_names
    assert loaded.namespace == frozenset(loaded.imports) | frozenset(loaded.functions) | frozenset(loaded.classes)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: {**data, "units": []},
        lambda data: {**data, "functions": {"build": [99]}},
        lambda data: {**data, "classes": {"Outer": [-1]}},
        lambda data: {**data, "bindings": [1, 2]},
        lambda data: {**data, "key": ["only", "two"]},
        lambda data: {**data, "aliases": {"Base": [[]]}},
        lambda data: {**data, "units": [{**data["units"][0], "is_class": 0}]},
        lambda data: {**data, "units": [{**data["units"][0], "chains": {"x": [["x", 1]]}}]},
        lambda data: {**data, "units": [{**data["units"][0], "surprise": True}]},
        lambda data: {key: value for key, value in data.items() if key != "imports"},
    ],
    ids=[
        "no-units", "index-too-large", "negative-index", "int-names", "short-key", "empty-chain", "int-flag",
        "int-in-chain", "unknown-field", "missing-field",
    ],
)
def test_malformed_facts_rejected(damage):
    data = encode_facts(facts_of(NESTED_AND_GUARDED))

    with pytest.raises((TypeError, ValueError)):
        decode_facts(json.loads(json.dumps(damage(data))))


# -------------------------------------------------------------------------------------------------------------------
# The store


@pytest.mark.parametrize("outcome", ["facts", None, UNPARSABLE], ids=["facts", "not-followed", "unparsable"])
def test_store_keeps_each_outcome(tmp_path, outcome):
    facts = facts_of(NESTED_AND_GUARDED)
    stored = facts if outcome == "facts" else outcome
    store = IndexStore(tmp_path / CACHE_DIR_NAME)

    store.save(facts.key, stored)
    found, loaded = IndexStore(tmp_path / CACHE_DIR_NAME).load(facts.key)

    assert found
    if outcome == "facts":
        assert loaded == facts
    else:
        assert loaded is stored


def test_store_misses_other_content(tmp_path):
    facts = facts_of(NESTED_AND_GUARDED)
    store = IndexStore(tmp_path / CACHE_DIR_NAME)
    store.save(facts.key, facts)
    path, dotted, _ = facts.key

    assert store.load((path, dotted, "0" * 32)) == (False, None)
    assert store.load((path, "pkg.other", facts.key[2])) == (False, None)
    assert store.load(("/elsewhere/module.py", dotted, facts.key[2])) == (False, None)


@pytest.mark.parametrize("outcome", [None, UNPARSABLE], ids=["not-followed", "unparsable"])
def test_store_rejects_moved_entry(tmp_path, caplog, outcome):
    store = IndexStore(tmp_path / CACHE_DIR_NAME)
    first = ("/project/pkg/first.py", "pkg.first", "1" * 32)
    second = ("/project/pkg/second.py", "pkg.second", "2" * 32)
    store.save(first, outcome)
    store._entry_path(second).parent.mkdir(parents=True, exist_ok=True)
    store._entry_path(first).rename(store._entry_path(second))
    caplog.set_level(logging.INFO, logger="maskcheck")

    assert store.load(second) == (False, None)
    assert any("belongs to another module" in record.getMessage() for record in caplog.records)


def test_store_misses_other_build(tmp_path, monkeypatch):
    facts = facts_of(NESTED_AND_GUARDED)
    IndexStore(tmp_path / CACHE_DIR_NAME).save(facts.key, facts)
    monkeypatch.setattr(index_store, "code_fingerprint", lambda: "another build")

    assert IndexStore(tmp_path / CACHE_DIR_NAME).load(facts.key) == (False, None)


def test_store_overwrites_outdated_entry(tmp_path, caplog):
    facts = facts_of(NESTED_AND_GUARDED)
    path, dotted, digest = facts.key
    store = IndexStore(tmp_path / CACHE_DIR_NAME)
    for old_digest in ("1" * 32, "2" * 32):
        store.save((path, dotted, old_digest), None)
    caplog.set_level(logging.INFO, logger="maskcheck")

    missed = store.load(facts.key)
    store.save(facts.key, facts)

    assert missed == (False, None)
    assert caplog.records == [], "an entry for older content is a plain miss, not a damaged entry"
    assert len(index_entries(tmp_path / CACHE_DIR_NAME)) == 1
    assert store.load(facts.key) == (True, facts)
    assert store.load((path, dotted, "1" * 32)) == (False, None)


def test_new_build_overwrites_entry(tmp_path, monkeypatch):
    facts = facts_of(NESTED_AND_GUARDED)
    IndexStore(tmp_path / CACHE_DIR_NAME).save(facts.key, facts)
    monkeypatch.setattr(index_store, "code_fingerprint", lambda: "another build")
    new_build = IndexStore(tmp_path / CACHE_DIR_NAME)

    new_build.save(facts.key, facts)

    assert len(index_entries(tmp_path / CACHE_DIR_NAME)) == 1
    assert new_build.load(facts.key) == (True, facts)


def test_index_store_imports_no_libcst():
    code = "import sys, maskcheck.index_store\nprint(sorted(m for m in ('libcst', 'torch') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------------------------------------
# Runs


def test_second_run_reads_index(package, cache_dir, monkeypatch):
    first_recorder = Recorder(monkeypatch)
    first = run([package / "model.py"], cache_dir)
    first_decisions = dict(first_recorder.decisions)
    drop_results(cache_dir)
    reach.clear_cache()
    first_parsed = list(first_recorder.parsed)
    second_recorder = Recorder(monkeypatch)

    second = run([package / "model.py"], cache_dir)

    assert first["model.py"] and first["model.py"][0][0] == MODEL_FINDING_LINE
    assert first_parsed == ["mixer.py"], "the first run must parse the imported module"
    assert second_recorder.parsed == []
    assert second_recorder.built == []
    assert second == first
    assert second_recorder.decisions == first_decisions == {"model.py": True}


def test_whole_package_second_run_builds_nothing(package, cache_dir, monkeypatch):
    # Here every imported module is also checked, so its facts come from `_facts_of_own_file`.
    first_recorder = Recorder(monkeypatch)
    first = run([package], cache_dir)
    first_decisions = dict(first_recorder.decisions)
    first_built = list(first_recorder.built)
    drop_results(cache_dir)
    reach.clear_cache()
    second_recorder = Recorder(monkeypatch)

    second = run([package], cache_dir)

    assert first_built == ["__init__.py", "mixer.py", "model.py"]
    assert second_recorder.built == []
    assert second_recorder.parsed == []
    assert second == first
    assert second_recorder.decisions == first_decisions
    assert len(index_entries(cache_dir)) == 3


def test_changed_import_builds_new_facts(package, cache_dir, monkeypatch):
    run([package / "model.py"], cache_dir)
    entries_before = index_entries(cache_dir)
    (package / "mixer.py").write_text(SIGNLESS_MIXER)
    drop_results(cache_dir)
    reach.clear_cache()
    recorder = Recorder(monkeypatch)

    found = run([package / "model.py"], cache_dir)

    assert recorder.parsed == ["mixer.py"]
    assert found["model.py"] == []
    assert recorder.decisions == {"model.py": False}
    assert index_entries(cache_dir) == entries_before, "the new content overwrites the module's entry"
    mixer_key = module_key(package / "mixer.py", "pkg.mixer")
    assert IndexStore(cache_dir).load(mixer_key)[0]


def test_memory_error_outcome_not_stored(package, cache_dir, monkeypatch):
    mixer_key = module_key(package / "mixer.py", "pkg.mixer")
    original_parse = reach.ast.parse

    def parse_without_memory(text, *arguments, **options):
        if "class TokenMixer" in text:
            raise MemoryError
        return original_parse(text, *arguments, **options)

    with monkeypatch.context() as patch:
        patch.setattr(reach.ast, "parse", parse_without_memory)
        run([package / "model.py"], cache_dir)

    assert IndexStore(cache_dir).load(mixer_key) == (False, None)

    drop_results(cache_dir)
    reach.clear_cache()
    found = run([package / "model.py"], cache_dir)

    assert found["model.py"][0][0] == MODEL_FINDING_LINE
    assert IndexStore(cache_dir).load(mixer_key)[0]


DAMAGES = {
    "garbage-bytes": lambda raw, other: b"\x00\xff not json {",
    "truncated": lambda raw, other: raw[: len(raw) // 2],
    "wrong-shape": lambda raw, other: json.dumps({"format": index_store.FORMAT_VERSION, "facts": []}).encode(),
    "json-list": lambda raw, other: b"[]",
    "bad-facts": lambda raw, other: json.dumps({**json.loads(raw), "facts": {"units": "none"}}).encode(),
    "other-module": lambda raw, other: other,
    # json.loads raises RecursionError, not ValueError, for arrays nested this deep.
    "deeply-nested": lambda raw, other: b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_entries_ignored_and_rewritten(package, cache_dir, caplog, damage):
    # The entries of mixer.py and model.py are damaged. Each is read once, when its own file is checked.
    first = run([package], cache_dir)
    keys = [module_key(package / name, f"pkg.{name[:-3]}") for name in ("mixer.py", "model.py")]
    store = IndexStore(cache_dir)
    paths = [store._entry_path(key) for key in keys]
    originals = [path.read_bytes() for path in paths]
    for path, raw, other in zip(paths, originals, reversed(originals)):
        path.write_bytes(DAMAGES[damage](raw, other))
    drop_results(cache_dir)
    reach.clear_cache()
    caplog.set_level(logging.INFO, logger="maskcheck")

    second = run([package], cache_dir)

    assert second == first
    ignored = [record for record in caplog.records if "ignored index entry" in record.getMessage()]
    assert len(ignored) == 2
    assert all(record.levelno == logging.INFO for record in ignored)
    for key, path, raw in zip(keys, paths, originals):
        assert path.read_bytes() == raw, "the entry is rewritten with the same bytes as the first run wrote"
        assert store.load(key)[0]


def test_index_log_lines_not_replayed(package, cache_dir, caplog):
    run([package], cache_dir)
    for entry in index_entries(cache_dir):
        entry.write_bytes(b"garbage")
    drop_results(cache_dir)
    reach.clear_cache()
    caplog.set_level(logging.INFO, logger="maskcheck")
    run([package], cache_dir)
    caplog.clear()

    run([package], cache_dir)

    assert [record.getMessage() for record in caplog.records if "index entry" in record.getMessage()] == []


def test_no_cache_writes_no_index(package, run_cli):
    result = run_cli(["--jobs", "1", "--no-cache", str(package)])

    assert result.code == 1
    assert f"model.py:{MODEL_FINDING_LINE}:" in result.out
    assert not (package.parent / CACHE_DIR_NAME).exists()
    assert reach.INDEX_STORE is None


def test_cached_run_leaves_no_store_set(package, cache_dir):
    run([package], cache_dir)

    assert index_entries(cache_dir)
    assert reach.INDEX_STORE is None


@pytest.mark.parametrize("blocking", ["file-in-place", "read-only-folder"])
def test_unwritable_index_logs_once(package, cache_dir, caplog, blocking):
    expected = run([package], None)
    reach.clear_cache()
    if blocking == "file-in-place":
        cache_dir.mkdir()
        (cache_dir / f"index-v{index_store.FORMAT_VERSION}").write_text("a file where the index folder should be")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        cache_dir.mkdir()
        cache_dir.chmod(0o555)
    caplog.set_level(logging.INFO, logger="maskcheck")

    try:
        found = run([package], cache_dir)
    finally:
        cache_dir.chmod(0o755)

    assert found == expected
    lines = [record for record in caplog.records if "cannot write the module index" in record.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO


def test_two_jobs_fill_and_read_index(package, cache_dir):
    for index in range(4):
        text = f"from .model import MixerStack\n\nSTACKS = [MixerStack()] * {index}\n"
        (package / f"extra{index}.py").write_text(text)
    serial = run([package], None)
    reach.clear_cache()

    cold = run([package], cache_dir, jobs=2)

    assert cold == serial
    assert len(index_entries(cache_dir)) == 7, "the workers write one entry per module"

    # Workers must read the entries: replace the mixer's facts by those of a mixer with no attention layer. Only a
    # worker that reads the index can then skip model.py.
    mixer = package / "mixer.py"
    signless = reach.build_facts(ast.parse(SIGNLESS_MIXER), "pkg", str(mixer.resolve()))
    signless.key = module_key(mixer, "pkg.mixer")
    IndexStore(cache_dir).save(signless.key, signless)
    drop_results(cache_dir)
    reach.clear_cache()

    warm = run([package], cache_dir, jobs=2)

    assert cold["model.py"] != []
    assert warm["model.py"] == []
    assert {name: found for name, found in warm.items() if name != "model.py"} == {
        name: found for name, found in cold.items() if name != "model.py"
    }


def test_index_folder_that_is_a_file(package, cache_dir, caplog):
    """A file where the index folder belongs gives one line about writing and none per module read."""
    first = run([package], cache_dir)
    shutil.rmtree(cache_dir / f"index-v{index_store.FORMAT_VERSION}")
    (cache_dir / f"index-v{index_store.FORMAT_VERSION}").write_text("not a folder")
    drop_results(cache_dir)
    reach.clear_cache()
    caplog.set_level(logging.INFO, logger="maskcheck")

    second = run([package], cache_dir)

    assert second == first
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "ignored index entry" in message]
    assert len([message for message in messages if "cannot write the module index" in message]) == 1


def test_folder_entry_named_in_log(tmp_path, caplog):
    """A folder in an entry's place cannot be read or replaced, and the write failure names it and the next step."""
    facts = facts_of(NESTED_AND_GUARDED)
    store = IndexStore(tmp_path / CACHE_DIR_NAME)
    store._entry_path(facts.key).mkdir(parents=True)
    caplog.set_level(logging.INFO, logger="maskcheck")

    missed = store.load(facts.key)
    store.save(facts.key, facts)

    assert missed == (False, None)
    messages = [record.getMessage() for record in caplog.records]
    writes = [message for message in messages if "cannot write the module index entry" in message]
    assert len(writes) == 1
    assert str(store._entry_path(facts.key)) in writes[0]
    assert f"delete the cache folder {tmp_path / CACHE_DIR_NAME}" in writes[0]
