"""Time the runtime verifier on 200 construction chains in one process.

Usage: python benchmarks/verify_bench.py [--chains 200]

Prints the wall time of `import torch`, of importing maskcheck's engine and verifier (libcst), and of verifying
the chains, whose target is under 1 s beyond `import torch` on a 2-core machine. The process CPU time of the
verification is printed too, because wall time swings when other processes share the cores. Every chain has its
own source name, so no parse is reused between chains. The mix covers single expressions, multi-step chains, every
consumer layer, and chains that end inconclusive.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter

# (source kind, source name prefix, steps as (target, code), consumer, argument)
_TEMPLATES = [
    ("example", "mask", [(None, "{s}.repeat(num_heads, 1, 1)")], "torch.nn.MultiheadAttention", None),
    ("example", "mask", [(None, "{s}.repeat_interleave(num_heads, dim=0)")], "torch.nn.MultiheadAttention", None),
    ("example", "mask", [(None, "torch.cat([{s}] * num_heads, 0)")], "torch.nn.MultiheadAttention", None),
    (
        "example",
        "mask",
        [(None, "einops.repeat({s}, 'b l s -> (h b) l s', h=num_heads)")],
        "torch.nn.MultiheadAttention",
        None,
    ),
    (
        "example",
        "mask",
        [
            ("m", "{s}.unsqueeze(1).expand(-1, self.num_heads, -1, -1)"),
            ("m", "m.transpose(0, 1)"),
            (None, "m.reshape(bsz * self.num_heads, tgt_len, src_len)"),
        ],
        "torch.nn.MultiheadAttention",
        None,
    ),
    (
        "example",
        "mask",
        [(None, "{s}[:, None].repeat(1, nhead, 1, 1).flatten(0, 1)")],
        "torch.nn.TransformerEncoderLayer",
        "src_mask",
    ),
    ("example", "mask", [(None, "{s}.tile((nhead, 1, 1))")], "torch.nn.TransformerDecoderLayer", "memory_mask"),
    ("example", "mask", [(None, "{s}.repeat(nhead, 1, 1)")], "torch.nn.Transformer", "tgt_mask"),
    (
        "example_head",
        "mask4",
        [(None, "{s}.transpose(0, 1).reshape(-1, tgt_len, src_len)")],
        "torch.nn.functional.multi_head_attention_forward",
        None,
    ),
    ("head", "bias", [(None, "{s}.repeat_interleave(bsz, 0)")], "torch.nn.MultiheadAttention", None),
    ("padding", "pad", [(None, "{s}[:, None, :].expand(-1, tgt_len, -1).repeat(num_heads, 1, 1)")], "unknown", None),
    (
        "example",
        "mask",
        [
            (
                None,
                "{s}.view(bsz, 1, tgt_len, src_len).expand(bsz, num_heads, tgt_len, src_len)"
                ".view(-1, tgt_len, src_len)",
            )
        ],
        "torch.nn.MultiheadAttention",
        None,
    ),
]

_SIZES = {
    "num_heads": "H",
    "self.num_heads": "H",
    "nhead": "H",
    "bsz": "N",
    "tgt_len": "L",
    "src_len": "S",
}

_REPLACEMENTS = {
    "example": "{s}.repeat_interleave(num_heads, dim=0)",
    "example_head": "{s}.flatten(0, 1)",
    "head": "{s}.repeat(bsz, 1, 1)",
    "padding": "{s}[:, None, :].expand(-1, tgt_len, -1).repeat_interleave(num_heads, 0)",
}


def build_findings(count: int):
    from maskcheck.chain import ChainStep, ReplayChain
    from maskcheck.findings import Finding

    findings = []
    for index in range(count):
        kind, prefix, steps, consumer, argument = _TEMPLATES[index % len(_TEMPLATES)]
        source = f"{prefix}_{index}"
        chain_steps = tuple(
            ChainStep(target=target, code=code.format(s=source), line=10 + position, col=9)
            for position, (target, code) in enumerate(steps)
        )
        sizes = {text: role for text, role in _SIZES.items() if any(text in step.code for step in chain_steps)}
        replacement = _REPLACEMENTS[kind].format(s=source) if len(chain_steps) == 1 else None
        if replacement is not None:
            sizes.update({text: role for text, role in _SIZES.items() if text in replacement})
        chain = ReplayChain(
            source_name=source,
            source_kind=kind,
            steps=chain_steps,
            sizes=sizes,
            consumer=consumer,
            batch_first=index % 2 == 0,
            flagged_step=len(chain_steps) - 1,
            replacement=replacement,
            argument=argument,
        )
        findings.append(Finding("bench.py", 10, 9, "MSK101", "benchmark chain", chain=chain))
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=200, help="number of chains to verify (default 200)")
    options = parser.parse_args()

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Failed to initialize NumPy.*")
        import torch
    torch_import = time.perf_counter() - start

    start = time.perf_counter()
    import maskcheck.engine  # noqa: F401  (libcst, which a real run has loaded before verifying)
    from maskcheck.verify import verify_findings

    maskcheck_import = time.perf_counter() - start

    findings = build_findings(options.chains)
    start, start_cpu = time.perf_counter(), time.process_time()
    verdicts = verify_findings(findings)
    verify_time, verify_cpu = time.perf_counter() - start, time.process_time() - start_cpu

    statuses = Counter(verdict.status for verdict in verdicts)
    fixes = sum(verdict.fix_verified for verdict in verdicts)
    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}, {torch.get_num_threads()} intra-op threads")
    print(f"import torch:                 {torch_import:6.3f} s")
    print(f"import maskcheck (libcst):    {maskcheck_import:6.3f} s")
    print(
        f"verify {len(findings)} chains:            {verify_time:6.3f} s  ({verify_time / len(findings) * 1000:.2f} ms "
        f"each; CPU time {verify_cpu:.3f} s)"
    )
    print(f"beyond import torch:          {maskcheck_import + verify_time:6.3f} s")
    print(
        "verdicts: "
        + ", ".join(f"{status} {count}" for status, count in sorted(statuses.items()))
        + f"; fix verified {fixes}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
