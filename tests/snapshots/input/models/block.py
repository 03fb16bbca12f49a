"""Snapshot input: a per-example mask expanded head-major, which the verifier confirms."""

import torch.nn as nn


class Block(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, x, mask):
        # Each example's (L, S) mask is copied once per head, head-major.
        mask = mask.repeat(self.num_heads, 1, 1)
        return self.attn(x, x, x, attn_mask=mask)[0]
