"""The wheel: its package list, and the rule pages that `--explain` prints from an installed wheel."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from maskcheck.rules import RULES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9 and 3.10 only
    import tomli as tomllib

# Folders and files of a checkout that a wheel build neither needs nor should see.
UNCOPIED = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".maskcheck_cache", ".hypothesis",
            ".pytest_cache")


def setuptools_table() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)["tool"]["setuptools"]


def test_package_list_names_every_package():
    source_packages = {
        ".".join(init.parent.relative_to(REPO_ROOT / "src").parts)
        for init in (REPO_ROOT / "src" / "maskcheck").rglob("__init__.py")
    }

    assert set(setuptools_table()["packages"]) == source_packages | {"maskcheck.rule_docs"}


def test_rule_docs_package_is_docs_rules():
    table = setuptools_table()

    assert table["package-dir"]["maskcheck.rule_docs"] == "docs/rules"
    assert table["package-data"]["maskcheck.rule_docs"] == ["*.md"]
    for code in RULES:
        assert (REPO_ROOT / "docs" / "rules" / f"{code}.md").is_file(), code


@pytest.mark.slow
def test_explain_from_installed_wheel(tmp_path):
    """Build a wheel, install it in a fresh virtual environment, and run `--explain` outside the source tree."""
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*UNCOPIED))
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(wheels), str(source)]
    if importlib.util.find_spec("setuptools") is not None:
        # Build with this environment's setuptools, so the test needs no download.
        build.insert(4, "--no-build-isolation")
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("maskcheck-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for code in RULES:
        assert f"maskcheck/rule_docs/{code}.md" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=600)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # The new environment borrows libcst and the other dependencies from this one, after its own packages, so
    # `import maskcheck` still finds the wheel's copy.
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site_packages / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    located = subprocess.run(
        [str(python), "-c", "import maskcheck; print(maskcheck.__file__)"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    )
    assert Path(located.stdout.strip()).is_relative_to(venv)

    for code in RULES:
        result = subprocess.run(
            [str(venv / "bin" / "maskcheck"), "--explain", code],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        page = (REPO_ROOT / "docs" / "rules" / f"{code}.md").read_text(encoding="utf-8")
        assert result.stdout == page
