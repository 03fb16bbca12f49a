"""Time maskcheck against peer linters on real code bases, and time maskcheck on growing copies of one code base.

Usage:
    python benchmarks/peer_comparison.py --torchfix VENV/bin/torchfix --flake8-without VENV/bin/python
        [--workdir DIR] [--corpora fairseq,timm,...] [--sample transformers=400 ...] [--runs 3]
        [--scale 786,1572,3144] [--scale-corpus fairseq] [--docs docs/benchmarks.md]

Run it with the interpreter of an environment where maskcheck, flake8 and ruff are installed. `--torchfix` names
TorchFix's command in a separate environment (TorchFix 0.7 pins an older libcst than maskcheck's), and
`--flake8-without` names the interpreter of an environment with the same flake8 but without maskcheck.

Corpora are fetched and unpacked as benchmarks/real_world.py does, into `<workdir>/src/<name>`, and reused when
they are already there. `--sample NAME=N` checks every k-th file of a corpus, about N files in all. The whole
tree stays on disk, so cross-module imports still resolve. Every tool is given the same explicit file
list, so every tool checks the same files whatever its own exclusion rules.

Each round runs every tool once on a corpus, in a fixed order, so that a change in the load of the shared machine
affects all tools of a round alike. The tables show the median of the rounds. CPU time is the user and system time
of the tool and every process it waited for. Peak memory is the largest sum, over the tool's process tree, of the
proportional set size (PSS, which splits shared pages between the processes that share them), sampled every
SAMPLE_SECONDS; a run shorter than a few samples may show less than its real peak.

`--docs` replaces the part of the file between the two PEER_MARKERS lines, or appends it. Notes written by hand
belong outside the markers, where a rerun keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_world import fetch  # noqa: E402 - the sibling script, found through the path set above

CORPORA = {
    "fairseq": "fairseq==0.12.2",
    "timm": "timm==1.0.31",
    "transformers": "transformers==5.25.0",
    "diffusers": "diffusers==0.42.1",
    "torch": "torch==2.13.0",
}
PEER_MARKERS = ("<!-- peer-comparison: start (written by benchmarks/peer_comparison.py) -->",
                "<!-- peer-comparison: end -->")
SAMPLE_SECONDS = 0.2
PLOT_NAME = "benchmarks-scaling.png"

MASKCHECK_COLD = "maskcheck cold"
MASKCHECK_WARM = "maskcheck warm"
FLAKE8_MSK_ONLY = "flake8 --select MSK"
FLAKE8_WITH = "flake8 (maskcheck installed)"
FLAKE8_NO_CACHE = "flake8 --maskcheck-no-cache"
FLAKE8_WITHOUT = "flake8 (maskcheck not installed)"
TORCHFIX = "TorchFix"
RUFF = "ruff --select ALL --no-cache"


@dataclass
class Measurement:
    wall: float
    cpu: float
    peak_pss_mb: float
    exit_code: int


@dataclass
class ToolResult:
    corpus: str
    tool: str
    files: int
    runs: List[Measurement] = field(default_factory=list)

    def median(self, name: str) -> float:
        return statistics.median(getattr(run, name) for run in self.runs)


# -------------------------------------------------------------------------------------------------------------------
# Measuring one command


def measure(command: Sequence[str], cwd: Path, log: Path, env: Optional[Dict[str, str]] = None) -> Measurement:
    """Run a command with stdout discarded, and return its wall time, CPU time and peak PSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "ab") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        sampler = PeakSampler(process.pid)
        sampler.start()
        exit_code = process.wait()
        wall = time.perf_counter() - started
        sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measurement(wall=wall, cpu=cpu, peak_pss_mb=sampler.peak_kb / 1024, exit_code=exit_code)


class PeakSampler(threading.Thread):
    """Samples the summed PSS of a process and its descendants until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = sum(_pss_kb(pid) for pid in _process_tree(self.pid))
            self.peak_kb = max(self.peak_kb, total)
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def _process_tree(root: int) -> List[int]:
    parents: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name in brackets may hold spaces; the parent id is the second field after it.
        parent = int(stat[stat.rindex(b")") + 2 :].split()[1])
        parents.setdefault(parent, []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(parents.get(pid, ()))
    return tree


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# -------------------------------------------------------------------------------------------------------------------
# Corpora and tools


def corpus_files(root: Path, sample: Optional[int]) -> List[Path]:
    files = sorted(path for path in root.rglob("*.py") if path.is_file())
    if sample is not None and sample < len(files):
        step = len(files) / sample
        files = [files[int(index * step)] for index in range(sample)]
    return files


@dataclass(frozen=True)
class Tools:
    python: str
    flake8_without: str
    torchfix: str
    ruff: str
    # A copy of maskcheck's `src` folder to import instead of the installed one, so that edits to the working tree
    # during a long run change neither the code measured nor the cache fingerprint of the warm runs.
    maskcheck_src: Optional[str] = None

    def env(self, tool: str) -> Optional[Dict[str, str]]:
        if self.maskcheck_src is None or tool in (FLAKE8_WITHOUT, TORCHFIX, RUFF):
            return None
        return {**os.environ, "PYTHONPATH": self.maskcheck_src}

    def commands(self, files: Sequence[str]) -> Dict[str, List[str]]:
        return {
            MASKCHECK_COLD: [self.python, "-m", "maskcheck", "--no-cache", "-q", *files],
            MASKCHECK_WARM: [self.python, "-m", "maskcheck", "-q", *files],
            FLAKE8_MSK_ONLY: [self.python, "-m", "flake8", "--isolated", "--select", "MSK", *files],
            FLAKE8_WITH: [self.python, "-m", "flake8", "--isolated", *files],
            # The plugin keeps its results in .maskcheck_cache, so after the first round the row above reads them
            # from there. This row analyses every file in every round.
            FLAKE8_NO_CACHE: [self.python, "-m", "flake8", "--isolated", "--maskcheck-no-cache", *files],
            FLAKE8_WITHOUT: [self.flake8_without, "-m", "flake8", "--isolated", *files],
            TORCHFIX: [self.torchfix, *files],
            RUFF: [self.ruff, "check", "--isolated", "--select", "ALL", "--no-cache", "--exit-zero", "-q", *files],
        }

    def versions(self) -> Dict[str, str]:
        def output(command: Sequence[str], env: Optional[Dict[str, str]] = None) -> str:
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            return (result.stdout or result.stderr).strip().splitlines()[0]

        from importlib.metadata import version

        import maskcheck

        source = f"copy of the working tree in {self.maskcheck_src}" if self.maskcheck_src else _git_state()
        return {
            "maskcheck": f"{maskcheck.__version__} ({source}), libcst {version('libcst')}",
            "python": platform.python_version(),
            "flake8 (maskcheck installed)": output([self.python, "-m", "flake8", "--version"], self.env(FLAKE8_WITH)),
            "flake8 (maskcheck not installed)": output([self.flake8_without, "-m", "flake8", "--version"]),
            "TorchFix": output([self.torchfix, "--version"]),
            "ruff": output([self.ruff, "--version"]),
        }


def _git_state() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True)
    except OSError:
        return "no git"
    state = commit.stdout.strip() or "no commit"
    return state + (" with uncommitted changes" if dirty.stdout.strip() else "")


def import_check(python: str, env: Optional[Dict[str, str]]) -> Tuple[bool, float]:
    """Return whether importing the flake8 plugin imports torch, and the import's own cumulative time in ms."""
    result = subprocess.run(
        [python, "-X", "importtime", "-c", "import maskcheck.flake8_plugin"], capture_output=True, text=True, env=env
    )
    torch_imported = False
    plugin_us = 0
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split("|"))
        if name.strip() == "torch" or name.strip().startswith("torch."):
            torch_imported = True
        if name.strip() == "maskcheck.flake8_plugin" and cumulative.isdigit():
            plugin_us = int(cumulative)
    return torch_imported, plugin_us / 1000


# -------------------------------------------------------------------------------------------------------------------
# The runs


def compare(tools: Tools, corpora: Dict[str, List[Path]], roots: Dict[str, Path], runs: int, logs: Path,
            only: Sequence[str]) -> List[ToolResult]:
    results: List[ToolResult] = []
    for name, files in corpora.items():
        shown = [str(path) for path in files]
        commands = {tool: command for tool, command in tools.commands(shown).items() if tool in only}
        by_tool = {tool: ToolResult(name, tool, len(files)) for tool in commands}
        if MASKCHECK_WARM in commands:
            # Fill the cache once, unmeasured, so the warm runs find every file unchanged.
            print(f"{name}: filling the cache for the warm runs", flush=True)
            measure(commands[MASKCHECK_WARM], roots[name], logs / f"{name}.log", tools.env(MASKCHECK_WARM))
        for round_number in range(1, runs + 1):
            for tool, command in commands.items():
                measurement = measure(command, roots[name], logs / f"{name}.log", tools.env(tool))
                by_tool[tool].runs.append(measurement)
                print(
                    f"{name} round {round_number}: {tool}: {measurement.wall:.2f} s wall, {measurement.cpu:.2f} s CPU,"
                    f" {measurement.peak_pss_mb:.0f} MB, exit {measurement.exit_code}",
                    flush=True,
                )
        results.extend(by_tool.values())
    return results


ROUND_LINE = re.compile(
    r"^(?P<corpus>\S+) round \d+: (?P<tool>.+?): (?P<wall>[\d.]+) s wall, (?P<cpu>[\d.]+) s CPU, "
    r"(?P<peak>[\d.]+) MB, exit (?P<exit>-?\d+)$"
)


def results_from_log(path: Path, files: Dict[str, int]) -> List[ToolResult]:
    """Read the per-round lines that an earlier run printed, for the corpora in `files`."""
    by_key: Dict[Tuple[str, str], ToolResult] = {}
    for line in path.read_text().splitlines():
        match = ROUND_LINE.match(line)
        if match is None or match["corpus"] not in files:
            continue
        key = (match["corpus"], match["tool"])
        result = by_key.setdefault(key, ToolResult(match["corpus"], match["tool"], files[match["corpus"]]))
        result.runs.append(
            Measurement(float(match["wall"]), float(match["cpu"]), float(match["peak"]), int(match["exit"]))
        )
    return list(by_key.values())


def discovered_count(tools: Tools, arguments: Sequence[str], cwd: Path) -> int:
    """Return how many files maskcheck's own discovery lists for `arguments`, which may name folders."""
    code = "import sys\nfrom maskcheck.files import discover\nprint(len(discover(sys.argv[1:]).files))"
    completed = subprocess.run(
        [tools.python, "-c", code, *arguments], cwd=cwd, env=tools.env(MASKCHECK_COLD), capture_output=True,
        text=True, check=True,
    )
    return int(completed.stdout.strip())


def scale_run(tools: Tools, source: Path, counts: Sequence[int], workdir: Path, runs: int, logs: Path
              ) -> List[ToolResult]:
    """Time maskcheck cold on `counts` files made of whole copies of `source`, and cut from the last copy."""
    files = sorted(path for path in source.rglob("*.py") if path.is_file())
    results = []
    for count in counts:
        target = workdir / "scale" / source.name / str(count)
        if not target.exists():
            copies = -(-count // len(files))
            for copy in range(copies):
                shutil.copytree(source, target / f"copy{copy:03d}")
        # Whole copies are named as folders and only the remainder as files: 50,000 file paths would exceed
        # the 2 MB limit on a command line here (`getconf ARG_MAX` prints 2097152).
        whole = count // len(files)
        arguments = [str(target / f"copy{copy:03d}") for copy in range(whole)]
        remainder = sorted(path for path in (target / f"copy{whole:03d}").rglob("*.py") if path.is_file())
        arguments += [str(path) for path in remainder[: count - whole * len(files)]]
        checked = discovered_count(tools, arguments, target)
        if checked != count:
            print(f"scale {count}: maskcheck's discovery lists {checked} files, so the row counts those", flush=True)
        result = ToolResult(source.name, f"{MASKCHECK_COLD}, {checked} files", checked)
        command = tools.commands(arguments)[MASKCHECK_COLD]
        for round_number in range(1, runs + 1):
            measurement = measure(command, target, logs / "scale.log", tools.env(MASKCHECK_COLD))
            result.runs.append(measurement)
            print(
                f"scale {count} round {round_number}: {measurement.wall:.1f} s wall, {measurement.cpu:.1f} s CPU, "
                f"{measurement.peak_pss_mb:.0f} MB, exit {measurement.exit_code}",
                flush=True,
            )
        results.append(result)
    return results


# -------------------------------------------------------------------------------------------------------------------
# Reporting


def comparison_table(results: List[ToolResult]) -> List[str]:
    lines = [
        "| corpus | tool | files | wall s (median) | CPU s (median) | peak MB (PSS) | files/s | wall runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        wall = result.median("wall")
        walls = ", ".join(f"{run.wall:.1f}" for run in result.runs)
        lines.append(
            f"| {result.corpus} | {result.tool} | {result.files} | {wall:.2f} | {result.median('cpu'):.2f} | "
            f"{max(run.peak_pss_mb for run in result.runs):.0f} | {result.files / wall:.0f} | {walls} |"
        )
    return lines


def ratio_table(results: List[ToolResult]) -> List[str]:
    by_key = {(result.corpus, result.tool): result for result in results}

    def ratio(corpus: str, top: str, bottom: str) -> str:
        if (corpus, top) not in by_key or (corpus, bottom) not in by_key:
            return "-"
        upper, lower = by_key[(corpus, top)], by_key[(corpus, bottom)]
        wall = upper.median("wall") / lower.median("wall")
        cpu = upper.median("cpu") / lower.median("cpu") if lower.median("cpu") > 0 else float("nan")
        return f"{wall:.2f} ({cpu:.2f})"

    lines = [
        "| corpus | cold / ruff (target ≤ 2) | warm / ruff (target ≤ 1) | TorchFix / cold (target ≥ 40) | "
        "flake8 with / without maskcheck (target ≤ 1.1) | the same, plugin cache off |",
        "|---|---|---|---|---|---|",
    ]
    for corpus in dict.fromkeys(result.corpus for result in results):
        lines.append(
            f"| {corpus} | {ratio(corpus, MASKCHECK_COLD, RUFF)} | {ratio(corpus, MASKCHECK_WARM, RUFF)} | "
            f"{ratio(corpus, TORCHFIX, MASKCHECK_COLD)} | {ratio(corpus, FLAKE8_WITH, FLAKE8_WITHOUT)} | "
            f"{ratio(corpus, FLAKE8_NO_CACHE, FLAKE8_WITHOUT)} |"
        )
    return lines


def plot(results: List[ToolResult], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return False
    counts = [result.files for result in results]
    figure, (time_axis, memory_axis) = pyplot.subplots(1, 2, figsize=(10, 4))
    time_axis.plot(counts, [result.median("wall") for result in results], "o-", label="wall")
    time_axis.plot(counts, [result.median("cpu") for result in results], "s--", label="CPU")
    time_axis.set_xlabel("files")
    time_axis.set_ylabel("seconds (median)")
    time_axis.set_title("maskcheck --no-cache: time")
    time_axis.legend()
    memory_axis.plot(counts, [max(run.peak_pss_mb for run in result.runs) for result in results], "o-")
    memory_axis.set_xlabel("files")
    memory_axis.set_ylabel("peak PSS of all processes, MB")
    memory_axis.set_title("maskcheck --no-cache: memory")
    memory_axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return True


def report(
    results: List[ToolResult], scaled: List[ToolResult], versions: Dict[str, str], imports: Tuple[bool, float],
    samples: Dict[str, str], plotted: Optional[str], started: str, loads: Tuple[str, str],
) -> str:
    lines = [
        PEER_MARKERS[0],
        "## Peer comparison",
        "",
        f"Written by `benchmarks/peer_comparison.py` on {started}. Machine: {os.cpu_count()} cores "
        f"({len(os.sched_getaffinity(0))} usable), {platform.machine()}, Linux {platform.release()}. "
        f"Load average (1, 5, 15 min) at the start: {loads[0]}; at the end: {loads[1]}. Other sessions used the "
        "same cores during the runs.",
        "",
        "Versions:",
        "",
        *[f"- {name}: {version}" for name, version in versions.items()],
        "",
        "Corpora (every tool gets the same explicit list of files):",
        "",
        *[f"- {name}: {text}" for name, text in samples.items()],
        "",
        "Each row is the median of the rounds; `wall runs` lists every round. `files/s` is files over median wall "
        "time. Peak memory is the largest sampled sum of PSS over the tool's process tree.",
        "",
        *comparison_table(results),
        "",
        "Ratios of median wall times from the same runs, and of median CPU times in brackets:",
        "",
        *ratio_table(results),
        "",
        f"`python -X importtime -c 'import maskcheck.flake8_plugin'`: torch imported: "
        f"{'yes' if imports[0] else 'no'}; cumulative import time of the plugin {imports[1]:.0f} ms.",
    ]
    if scaled:
        lines += [
            "",
            "### Scaling",
            "",
            "maskcheck `--no-cache` with the default workers on whole copies of one corpus:",
            "",
            *comparison_table(scaled),
        ]
        if plotted:
            lines += ["", f"![maskcheck time and memory against file count]({plotted})"]
    lines.append(PEER_MARKERS[1])
    return "\n".join(lines) + "\n"


def write_docs(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = PEER_MARKERS
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/maskcheck-bench"))
    parser.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated names from: " + ", ".join(CORPORA))
    parser.add_argument("--sample", action="append", default=[], metavar="NAME=N", help="check about N files of NAME")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tools", default="all", help="tool names to run, separated by commas (default: all)")
    parser.add_argument("--torchfix", required=True, help="TorchFix's command, in its own environment")
    parser.add_argument("--flake8-without", required=True, help="python of an environment with flake8, no maskcheck")
    parser.add_argument("--ruff", default=shutil.which("ruff") or "ruff")
    parser.add_argument("--maskcheck-src", help="folder to put first on PYTHONPATH for maskcheck and its flake8 plugin")
    parser.add_argument("--scale", default="", help="comma-separated file counts for the scaling run")
    parser.add_argument("--scale-corpus", default="fairseq")
    parser.add_argument("--scale-runs", type=int, default=1)
    parser.add_argument("--docs", type=Path, help="markdown file to write the tables into")
    parser.add_argument("--json", type=Path, help="file to write every measurement into")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="LOG",
        help="standard output of an earlier run with the same options: corpora it finished are not run again",
    )
    options = parser.parse_args()

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = " ".join(f"{value:.1f}" for value in os.getloadavg())
    tools = Tools(sys.executable, options.flake8_without, options.torchfix, options.ruff, options.maskcheck_src)
    if options.maskcheck_src is not None:
        # An installed package has its bytecode compiled by pip, and so do the peers' environments. A bare copy
        # has none, and with PYTHONDONTWRITEBYTECODE set every run would compile maskcheck's modules again.
        subprocess.run([sys.executable, "-m", "compileall", "-q", options.maskcheck_src], check=True)
    every_tool = list(tools.commands([]))
    only = every_tool if options.tools == "all" else [tool for tool in every_tool if tool in options.tools.split(",")]
    samples = dict(item.split("=", 1) for item in options.sample)
    logs = options.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    corpora: Dict[str, List[Path]] = {}
    roots: Dict[str, Path] = {}
    described: Dict[str, str] = {}
    for name in filter(None, options.corpora.split(",")):
        root = fetch(CORPORA[name], options.workdir)
        files = corpus_files(root, int(samples[name]) if name in samples else None)
        total = len(list(root.rglob("*.py")))
        lines = sum(path.read_bytes().count(b"\n") for path in files)
        corpora[name], roots[name] = files, root
        sampled = f", every {total / len(files):.1f}th file" if len(files) < total else ""
        described[name] = f"{CORPORA[name]}: {len(files)} of {total} .py files{sampled}, {lines:,} lines"

    versions = tools.versions()
    for name, version in versions.items():
        print(f"{name}: {version}", flush=True)
    imports = import_check(sys.executable, tools.env(FLAKE8_WITH))
    print(f"plugin import: torch imported {imports[0]}, {imports[1]:.0f} ms", flush=True)

    earlier: List[ToolResult] = []
    if options.resume is not None:
        earlier = results_from_log(options.resume, {name: len(files) for name, files in corpora.items()})
        finished = {result.corpus for result in earlier if len(result.runs) >= options.runs}
        earlier = [result for result in earlier if result.corpus in finished]
        corpora = {name: files for name, files in corpora.items() if name not in finished}
        print(f"taken from {options.resume}: {', '.join(sorted(finished)) or 'nothing'}", flush=True)
    results = earlier + compare(tools, corpora, roots, options.runs, logs, only)
    scaled: List[ToolResult] = []
    plotted = None
    if options.scale:
        source = fetch(CORPORA[options.scale_corpus], options.workdir)
        counts = [int(count) for count in options.scale.split(",")]
        scaled = scale_run(tools, source, counts, options.workdir, options.scale_runs, logs)
        if options.docs is not None and plot(scaled, options.docs.parent / PLOT_NAME):
            plotted = PLOT_NAME

    print("\n".join(comparison_table(results + scaled)))
    print("\n".join(ratio_table(results)))
    load_end = " ".join(f"{value:.1f}" for value in os.getloadavg())
    section = report(results, scaled, versions, imports, described, plotted, started, (load_start, load_end))
    if options.json is not None:
        options.json.write_text(json.dumps([asdict(result) for result in results + scaled], indent=1))
    if options.docs is not None:
        write_docs(options.docs, section)


if __name__ == "__main__":
    main()
