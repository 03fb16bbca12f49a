"""Run maskcheck over real packages from the package registry and print what it saw.

Usage: python benchmarks/real_world.py [--workdir DIR] [PACKAGE==VERSION ...]

Each package is fetched with `pip download --no-deps`, unpacked (only `*.py` files; for torch only the `torch/`
tree), and analysed in this process with the engine. The output lists, per package: files checked, files skipped
with a syntax error, wall time, how many mask values reached an attention consumer (by consumer), and every
finding. Read each finding by hand before recording it in docs/real-world.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import libcst as cst

from maskcheck.analysis.interpreter import ModuleInterpreter
from maskcheck.engine import check_source
from maskcheck.findings import SourceError

DEFAULT_PACKAGES = [
    "torch==2.13.0",
    "transformers==5.25.0",
    "timm==1.0.31",
    "fairseq==0.12.2",
    "open_clip_torch==3.3.0",
    "x-transformers==2.31.10",
]


def fetch(requirement: str, workdir: Path) -> Path:
    """Download and unpack one package; return the folder holding its Python files."""
    name = requirement.split("==")[0].replace("-", "_").lower()
    target = workdir / "src" / name
    if target.exists():
        return target
    downloads = workdir / "downloads" / name
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(downloads), requirement],
        check=True,
    )
    archive = next(downloads.iterdir())
    target.mkdir(parents=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(".py")]
            if name == "torch":
                members = [m for m in members if m.startswith("torch/")]
            wheel.extractall(target, members)
    else:
        with tarfile.open(archive) as sdist:
            members = [m for m in sdist.getmembers() if m.name.endswith(".py") and m.isfile()]
            sdist.extractall(target, members, filter="data")
    return target


def analyse(root: Path) -> None:
    files = sorted(root.rglob("*.py"))
    consumers: Counter = Counter()
    findings = []
    errors = []
    elapsed = 0.0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        started = time.perf_counter()
        try:
            findings.extend(check_source(text, str(path)))
        except SourceError as error:
            errors.append(f"{path.relative_to(root)}: {error}")
            continue
        finally:
            elapsed += time.perf_counter() - started
        consumers.update(_consumer_counts(text))
    print(f"{root.name}: {len(files)} files, {elapsed:.1f} s in check_source, {len(errors)} not analysed, {len(findings)} findings")
    print(f"  mask values reaching a consumer: {sum(consumers.values())} {dict(consumers)}")
    for line in errors:
        print(f"  not analysed: {line}")
    for finding in findings:
        print(f"  {finding.path}:{finding.line}:{finding.col}: {finding.code} {finding.message}")


def _consumer_counts(text: str) -> Counter:
    # A second pass over files that name a consumer, only to count the mask values the analysis followed.
    if "attn_mask" not in text and "MultiheadAttention" not in text and "Transformer" not in text:
        return Counter()
    try:
        module = cst.parse_module(text)
    except (cst.ParserSyntaxError, RecursionError):
        return Counter()
    uses = ModuleInterpreter(module).run()
    return Counter(use.consumer.kind.replace("torch.nn.", "nn.") for use in uses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maskcheck-real-world"))
    parser.add_argument("packages", nargs="*", default=DEFAULT_PACKAGES)
    options = parser.parse_args()
    for requirement in options.packages:
        analyse(fetch(requirement, options.workdir))


if __name__ == "__main__":
    main()
