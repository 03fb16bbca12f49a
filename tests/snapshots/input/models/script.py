"""Snapshot input: a head-major expansion of masks that the verifier cannot rebuild, because they are named values."""

import torch
import torch.nn as nn

num_heads = 2
attn = nn.MultiheadAttention(8, num_heads, batch_first=True)
x = torch.randn(2, 4, 8)
open_mask = torch.zeros(4, 4, dtype=torch.bool)
closed_mask = torch.ones(4, 4, dtype=torch.bool)
masks = torch.stack([open_mask, closed_mask])
out, _ = attn(x, x, x, attn_mask=torch.cat([masks] * num_heads))
