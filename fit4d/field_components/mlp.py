"""Small MLPs and the frequency encoding (the deformation fields are in deformation.py)."""

from __future__ import annotations

import math

import torch
from torch import nn


def frequency_encoding(x: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """[x, sin(2^k pi x), cos(2^k pi x) for k < num_freqs] along the last axis: D -> D (1 + 2 num_freqs)."""
    if num_freqs == 0:
        return x
    freqs = (2.0 ** torch.arange(num_freqs, device=x.device, dtype=x.dtype)) * math.pi
    angles = x[..., None, :] * freqs[:, None]  # (..., K, D)
    enc = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-2).flatten(-2)
    return torch.cat([x, enc], dim=-1)


class MLP(nn.Sequential):
    """Linear-ReLU stack: in_dim -> hidden (x num_hidden) -> out_dim, no output activation."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_hidden: int = 1) -> None:
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_hidden):
            layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        super().__init__(*layers)
