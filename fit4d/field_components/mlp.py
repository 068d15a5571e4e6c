"""Small MLPs and the frequency encoding of the deformation field."""

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


class DeformationMLP(nn.Module):
    """MLP_t: (x, t) -> displacement dx, so the canonical point of x at time t is x + dx.

    The last layer starts at zero, so the field is exactly the identity at initialization and the
    static-to-dynamic schedule starts from the canonical NeRF of frame 0.
    """

    def __init__(self, hidden_dim: int = 128, num_layers: int = 3, pos_freqs: int = 6, time_freqs: int = 6):
        super().__init__()
        self.pos_freqs, self.time_freqs = pos_freqs, time_freqs
        in_dim = 3 * (1 + 2 * pos_freqs) + (1 + 2 * time_freqs)
        self.net = MLP(in_dim, hidden_dim, 3, num_hidden=num_layers)
        last = self.net[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (N, 3) in box coordinates [-1, 1]; t (N, 1) in [0, 1] -> dx (N, 3)."""
        feats = torch.cat([frequency_encoding(x, self.pos_freqs), frequency_encoding(t, self.time_freqs)], -1)
        return self.net(feats)
