"""Generate a package whose functions call each other in cycles, and time maskcheck on each of its modules.

Usage: python benchmarks/call_graph.py [--workdir DIR] [--modules 20] [--functions 2000] [--fan-out 2]
                                      [--max-call-depth N]

The package has `--modules` modules and `--functions` functions and methods in all. Every module imports the
next one (the last imports the first), so the imports form one cycle as well. It contains:

- relay functions `relay_MM`, one per module: each runs its module's first filler and calls the next module's
  relay. The last relay also gives the mask it received to the layer as `attn_mask`. So the relays form a cycle of
  `--modules` calls with one attention call in it;
- filler functions `fill_MM_III`: each expands a per-example mask batch-major and gives it to the layer. Then it
  calls `--fan-out` other fillers: the next filler of its own module, the filler of the same index in the next
  module (a cycle across all modules), and with a fan-out of 3 also the filler two places on. Every fifth filler
  calls back four places instead of on, so each module contains cycles of five calls, shorter than the default
  depth. With a fan-out of 1 a filler makes only one of the first two calls, alternating. Every tenth filler also
  computes a head-major copy that only feeds a statistic;
- one `BlockMM` class per module that builds nn.MultiheadAttention and runs the module's first filler;
- two head-major expansions, `mask.repeat(num_heads, 1, 1)`, passed into the relay chain: `ShallowHeadMajor`
  (module `modules - NEAR_DEPTH - 1`) reaches the layer NEAR_DEPTH calls down, within the default depth of 6;
  `DeepHeadMajor` (module 0) reaches it `modules - 1` calls down, past the default depth from 8 modules on.

With 20 modules and the default depth, maskcheck must report exactly one finding: the repeat in
`ShallowHeadMajor`. The script prints the wall time and the CPU time of `check_source` per module and in total.
Parsed imported modules are cached for the whole run, so the first modules analysed also pay for parsing the
others.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from maskcheck.engine import check_source
from maskcheck.settings import DEFAULT_MAX_CALL_DEPTH, Settings

PACKAGE_NAME = "cyclic_calls"
# Relays between ShallowHeadMajor and the layer call in the last relay: with M modules, relay_(M-NEAR_DEPTH) to
# relay_(M-1).
NEAR_DEPTH = 4
# Functions and methods per module that are not fillers: the relay, BlockMM.__init__ and BlockMM.forward.
FIXED_PER_MODULE = 3
# The two entry classes add two methods each (__init__ and forward).
ENTRY_FUNCTIONS = 4


@dataclass(frozen=True)
class GeneratedPackage:
    """The written package: its folder, its modules, and the positions of its two head-major repeats."""

    root: Path
    modules: Tuple[Path, ...]
    function_count: int
    shallow_module: Path
    shallow_line: int
    deep_module: Path
    deep_line: int
    # How many nested calls lead from DeepHeadMajor.forward to the relay that calls the layer.
    deep_call_depth: int


def generate_package(parent: Path, modules: int = 20, functions: int = 2000, fan_out: int = 2) -> GeneratedPackage:
    """Write the package into `parent` and return its layout. `functions` counts functions and methods."""
    if fan_out not in (1, 2, 3):
        raise ValueError(f"fan_out={fan_out} is not supported; use 1, 2 or 3")
    if modules < NEAR_DEPTH + 2:
        raise ValueError(f"modules={modules} is too few: the shallow chain needs at least {NEAR_DEPTH + 2}")
    fillers_total = functions - modules * FIXED_PER_MODULE - ENTRY_FUNCTIONS
    if fillers_total < modules:
        raise ValueError(f"functions={functions} is too few for {modules} modules; use at least {modules * 4 + 4}")

    package = parent / PACKAGE_NAME
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""Generated call-graph stress package for maskcheck."""\n')

    near_module = modules - NEAR_DEPTH - 1
    fillers_per_module = [fillers_total // modules + (1 if m < fillers_total % modules else 0) for m in range(modules)]
    paths: List[Path] = []
    shallow_line = deep_line = 0
    for m in range(modules):
        entry = None
        if m == 0:
            entry = "deep"
        elif m == near_module:
            entry = "shallow"
        text, entry_line = _module_text(m, modules, fillers_per_module, entry, fan_out)
        path = package / f"mod_{m:02d}.py"
        path.write_text(text)
        paths.append(path)
        if entry == "deep":
            deep_line = entry_line
        elif entry == "shallow":
            shallow_line = entry_line

    written = sum(path.read_text().count("\n    def ") + path.read_text().count("\ndef ") for path in paths)
    return GeneratedPackage(
        root=package,
        modules=tuple(paths),
        function_count=written,
        shallow_module=paths[near_module],
        shallow_line=shallow_line,
        deep_module=paths[0],
        deep_line=deep_line,
        deep_call_depth=modules - 1,
    )


def _same_module_successor(index: int, count: int) -> int:
    """Return the filler that filler `index` calls in its own module.

    That is the next one, except that every fifth filler calls back four places. So the module contains cycles of
    five calls, shorter than the default depth.
    """
    if index % 5 == 4:
        return index - 4
    return (index + 1) % count


def expected_findings(package: GeneratedPackage, max_call_depth: int) -> List[Tuple[Path, int]]:
    """Return the (module, line) of each head-major repeat that reaches the layer within `max_call_depth` calls."""
    expected = [(package.shallow_module, package.shallow_line)]
    if package.deep_call_depth <= max_call_depth:
        expected.append((package.deep_module, package.deep_line))
    return sorted(expected)


def _module_text(
    m: int, modules: int, fillers_per_module: List[int], entry: Optional[str], fan_out: int
) -> Tuple[str, int]:
    """Return the source of module `m` and the line of its head-major repeat (0 when it has none)."""
    following = (m + 1) % modules
    count = fillers_per_module[m]
    next_count = fillers_per_module[following]
    lines = [
        f'"""Generated module {m} of {modules}: relays, fillers and a block that call each other in cycles."""',
        "",
        "import torch.nn as nn",
        "",
        f"from . import mod_{following:02d}",
        "",
        "",
    ]

    lines += [f"def relay_{m:02d}(layer, x, attn_mask, pair_mask, num_heads):"]
    lines += [f"    x = fill_{m:02d}_000(layer, x, pair_mask, num_heads)"]
    if m == modules - 1:
        lines += ["    x = x + layer(x, x, x, attn_mask=attn_mask)[0]"]
    next_relay = f"mod_{following:02d}.relay_{following:02d}"
    lines += [f"    return {next_relay}(layer, x, attn_mask, pair_mask, num_heads)", "", ""]

    for i in range(count):
        lines += [f"def fill_{m:02d}_{i:03d}(layer, x, pair_mask, num_heads):"]
        lines += ["    attn_mask = pair_mask.repeat_interleave(num_heads, dim=0)"]
        if i % 10 == 0:
            # A head-major copy that never reaches an attention mask argument.
            lines += ["    blocked_share = pair_mask.repeat(num_heads, 1, 1).float().mean()"]
            lines += ["    x = x * blocked_share"]
        lines += ["    x = x + layer(x, x, x, attn_mask=attn_mask)[0]"]
        same_module = f"fill_{m:02d}_{_same_module_successor(i, count):03d}(layer, x, pair_mask, num_heads)"
        next_filler = f"mod_{following:02d}.fill_{following:02d}_{i % next_count:03d}"
        next_module = f"{next_filler}(layer, x, pair_mask, num_heads)"
        if fan_out == 1:
            lines += [f"    return {same_module if i % 2 == 0 else next_module}"]
        else:
            lines += [f"    x = {same_module}"]
            if fan_out == 3:
                lines += [f"    x = fill_{m:02d}_{(i + 2) % count:03d}(layer, x, pair_mask, num_heads)"]
            lines += [f"    return {next_module}"]
        lines += ["", ""]

    lines += [
        f"class Block{m:02d}(nn.Module):",
        "    def __init__(self, dim, num_heads):",
        "        super().__init__()",
        "        self.num_heads = num_heads",
        "        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)",
        "",
        "    def forward(self, x, pair_mask):",
        f"        return fill_{m:02d}_000(self.attn, x, pair_mask, self.num_heads)",
    ]

    entry_line = 0
    if entry is not None:
        class_name = "DeepHeadMajor" if entry == "deep" else "ShallowHeadMajor"
        lines += [
            "",
            "",
            f"class {class_name}(nn.Module):",
            "    def __init__(self, dim, num_heads):",
            "        super().__init__()",
            "        self.num_heads = num_heads",
            "        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)",
            "",
            "    def forward(self, x, pair_mask):",
            "        attn_mask = pair_mask.repeat(self.num_heads, 1, 1)",
        ]
        entry_line = len(lines)
        lines += [f"        return {next_relay}(self.attn, x, attn_mask, pair_mask, self.num_heads)"]
    return "\n".join(lines) + "\n", entry_line


def time_package(
    package: GeneratedPackage, max_call_depth: Optional[int] = None
) -> Tuple[List[Tuple[Path, float, float, list]], float, float]:
    """Run check_source on every module.

    Returns (module, wall seconds, CPU seconds, findings) per module, then the total wall and CPU seconds. The CPU
    time of this process depends less on other load on a shared machine than the wall time does.
    """
    settings = Settings() if max_call_depth is None else Settings(max_call_depth=max_call_depth)
    rows = []
    wall_all = time.perf_counter()
    cpu_all = time.process_time()
    for path in package.modules:
        wall = time.perf_counter()
        cpu = time.process_time()
        findings = check_source(path.read_text(), str(path), settings)
        rows.append((path, time.perf_counter() - wall, time.process_time() - cpu, findings))
    return rows, time.perf_counter() - wall_all, time.process_time() - cpu_all


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=None, help="folder to write the package into (default: a temporary one)"
    )
    parser.add_argument("--modules", type=int, default=20, help="number of modules (default 20)")
    parser.add_argument("--functions", type=int, default=2000, help="functions and methods in all (default 2000)")
    parser.add_argument(
        "--fan-out", type=int, default=2, help="project calls made by each filler function: 1, 2 or 3 (default 2)"
    )
    parser.add_argument("--max-call-depth", type=int, default=None, help="override Settings.max_call_depth")
    options = parser.parse_args()

    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="maskcheck-call-graph-"))
    if (workdir / PACKAGE_NAME).exists():
        print(f"{workdir / PACKAGE_NAME} already exists; remove it or pass another --workdir", file=sys.stderr)
        return 2
    try:
        package = generate_package(workdir, options.modules, options.functions, options.fan_out)
    except ValueError as error:
        print(f"invalid size: {error}", file=sys.stderr)
        return 2
    print(
        f"{package.root}: {len(package.modules)} modules, {package.function_count} functions and methods, "
        f"fan-out {options.fan_out}"
    )

    rows, wall_total, cpu_total = time_package(package, options.max_call_depth)
    for path, wall, cpu, findings in rows:
        where = ", ".join(f"line {f.line}" for f in findings) or "no finding"
        print(f"  {path.name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {where}")
    finding_count = sum(len(findings) for _, _, _, findings in rows)
    print(f"total: {wall_total:.2f} s wall, {cpu_total:.2f} s CPU for {len(rows)} modules, {finding_count} finding(s)")
    depth = DEFAULT_MAX_CALL_DEPTH if options.max_call_depth is None else options.max_call_depth
    expected = ", ".join(f"{path.name} line {line}" for path, line in expected_findings(package, depth))
    print(f"expected at call depth {depth}: {expected}")

    if options.workdir is None:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
