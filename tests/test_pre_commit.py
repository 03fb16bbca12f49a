"""The pre-commit hooks in .pre-commit-hooks.yaml, run by pre-commit itself on temporary git repositories.

The tests marked slow build the hook's environment, which installs maskcheck and libcst from the package registry
into a virtual environment under the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUGGY_BLOCK, FIXED_BLOCK, REPO_ROOT
from maskcheck.cli import build_parser

HOOKS_FILE = REPO_ROOT / ".pre-commit-hooks.yaml"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "maskcheck tests",
    "GIT_AUTHOR_EMAIL": "tests@maskcheck.invalid",
    "GIT_COMMITTER_NAME": "maskcheck tests",
    "GIT_COMMITTER_EMAIL": "tests@maskcheck.invalid",
}


def load_hooks() -> list:
    clientlib = pytest.importorskip("pre_commit.clientlib", reason="the hook tests need pre-commit")
    return clientlib.load_manifest(str(HOOKS_FILE))


def test_manifest_is_valid_for_pre_commit():
    hooks = load_hooks()

    assert [hook["id"] for hook in hooks] == ["maskcheck", "maskcheck-fix"]
    for hook in hooks:
        assert hook["language"] == "python"
        assert set(hook["types_or"]) == {"python", "pyi"}


@pytest.mark.parametrize("hook_id", ["maskcheck", "maskcheck-fix"])
def test_hook_entry_is_a_valid_command_line(hook_id):
    hook = next(hook for hook in load_hooks() if hook["id"] == hook_id)
    program, *arguments = hook["entry"].split()

    options = build_parser().parse_args([*arguments, "file.py"])

    assert program == "maskcheck"
    assert options.force_exclude
    assert options.fix is (hook_id == "maskcheck-fix")


# -- running the hooks ------------------------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **GIT_IDENTITY}
    return subprocess.run(["git", *args], cwd=cwd, env=environment, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory) -> Path:
    """A git repository with this project's package, metadata and hook manifest, committed."""
    if shutil.which("git") is None:
        pytest.skip("the hook tests need git")
    root = tmp_path_factory.mktemp("hook_repo")
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(
        REPO_ROOT / "src" / "maskcheck",
        root / "src" / "maskcheck",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    # The wheel ships the rule pages from docs/rules, so the build needs that folder.
    shutil.copytree(REPO_ROOT / "docs" / "rules", root / "docs" / "rules")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "hooks under test")
    return root


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory) -> Path:
    """pre-commit's cache of hook environments, shared by the tests of this module so it is built once."""
    return tmp_path_factory.mktemp("pre_commit_home")


@pytest.fixture
def user_repo(tmp_path) -> Path:
    root = tmp_path / "user_repo"
    root.mkdir()
    git(root, "init", "-q")
    return root


def pre_commit(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **GIT_IDENTITY, "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_hook_fails_on_finding(hook_repo, pre_commit_home, user_repo):
    (user_repo / "block.py").write_text(BUGGY_BLOCK)
    git(user_repo, "add", "block.py")

    result = pre_commit(user_repo, pre_commit_home, "try-repo", str(hook_repo), "maskcheck")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "block.py:11:16: MSK101 " in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_hook_passes_clean_file(hook_repo, pre_commit_home, user_repo):
    (user_repo / "block.py").write_text(FIXED_BLOCK)
    git(user_repo, "add", "block.py")

    result = pre_commit(user_repo, pre_commit_home, "try-repo", str(hook_repo), "maskcheck")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "maskcheck....." in result.stdout
    assert "Passed" in result.stdout


@pytest.mark.slow
def test_hook_skips_commit_without_python_files(hook_repo, pre_commit_home, user_repo):
    (user_repo / "block.py").write_text(BUGGY_BLOCK)
    git(user_repo, "add", "block.py")
    git(user_repo, "commit", "-q", "--no-verify", "-m", "model")
    (user_repo / "notes.txt").write_text("no Python here\n")
    git(user_repo, "add", "notes.txt")

    try_repo = pre_commit(user_repo, pre_commit_home, "try-repo", str(hook_repo), "maskcheck")

    assert try_repo.returncode == 0, try_repo.stdout + try_repo.stderr
    assert "(no files to check)Skipped" in try_repo.stdout
    assert "Traceback" not in try_repo.stdout + try_repo.stderr

    # The same through `git commit` with the hooks installed.
    revision = git(hook_repo, "rev-parse", "HEAD").stdout.strip()
    (user_repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {hook_repo}\n  rev: {revision}\n  hooks:\n  - id: maskcheck\n  - id: maskcheck-fix\n"
    )
    git(user_repo, "add", ".pre-commit-config.yaml")
    installed = pre_commit(user_repo, pre_commit_home, "install")
    assert installed.returncode == 0, installed.stderr
    environment = {**os.environ, **GIT_IDENTITY, "PRE_COMMIT_HOME": str(pre_commit_home)}
    commit = subprocess.run(
        ["git", "commit", "-m", "notes only"], cwd=user_repo, env=environment, capture_output=True, text=True
    )
    assert commit.returncode == 0, commit.stdout + commit.stderr
    assert "(no files to check)Skipped" in commit.stdout + commit.stderr


@pytest.mark.slow
def test_fix_hook_without_torch_shows_fix(hook_repo, pre_commit_home, user_repo):
    (user_repo / "block.py").write_text(BUGGY_BLOCK)
    git(user_repo, "add", "block.py")

    result = pre_commit(user_repo, pre_commit_home, "try-repo", str(hook_repo), "maskcheck-fix")

    # The hook environment has no torch, so no fix is verified and the file stays as it was.
    assert result.returncode == 1, result.stdout + result.stderr
    assert (user_repo / "block.py").read_text() == BUGGY_BLOCK
    assert "fix not applied" in result.stdout
    assert "+        mask = mask.repeat_interleave(self.num_heads, dim=0)" in result.stdout


@pytest.mark.slow
def test_fix_hook_with_unsafe_fixes_rewrites_file(hook_repo, pre_commit_home, user_repo):
    revision = git(hook_repo, "rev-parse", "HEAD").stdout.strip()
    (user_repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n- repo: {hook_repo}\n  rev: {revision}\n  hooks:\n"
        "  - id: maskcheck-fix\n    args: [--unsafe-fixes]\n"
    )
    (user_repo / "block.py").write_text(BUGGY_BLOCK)
    git(user_repo, "add", "-A")

    first = pre_commit(user_repo, pre_commit_home, "run")
    git(user_repo, "add", "-A")
    second = pre_commit(user_repo, pre_commit_home, "run")

    assert first.returncode == 1, first.stdout + first.stderr
    assert "files were modified by this hook" in first.stdout
    assert (user_repo / "block.py").read_text() == FIXED_BLOCK
    assert second.returncode == 0, second.stdout + second.stderr
