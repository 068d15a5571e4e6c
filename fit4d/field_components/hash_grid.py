"""Multi-resolution hash encoding (Mueller et al. 2022, instant-ngp) in plain PyTorch.

Level l has resolution N_l = floor(N_min * b^l) with b = exp((ln N_max - ln N_min) / (L - 1)). A point
x in [0, 1]^3 sits in the cell of the (N_l + 1)^3 grid vertices around x * N_l; its feature is the
trilinear blend of the 8 corner entries. A level whose vertex count fits the table is indexed densely
(i + j (N+1) + k (N+1)^2, no collisions); finer levels hash the corner with the usual primes,
(i * 1) xor (j * 2654435761) xor (k * 805459861) mod T, in int64 so the products never overflow.

All levels live in one float32 parameter (fp32 gradients even under autocast) with per-level offsets,
and the whole encoding is a few gathers and elementwise ops without Python loops over points, so
`torch.compile` fuses it. Example: L = 2, N_min = 2, N_max = 4 gives resolutions [2, 4]; with T = 2^6 the
first level (27 vertices) is dense and the second (125 > 64) hashed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PRIMES = (1, 2654435761, 805459861)


def level_resolutions(num_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """N_l = floor(N_min * b^l), b = (N_max / N_min)^(1 / (L - 1)) (one level: N_min)."""
    if num_levels == 1:
        return [base_resolution]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1))
    # the epsilon keeps exact powers (e.g. 2 * 2^1 = 4) from rounding down to 3
    return [int(math.floor(base_resolution * b**lvl + 1e-6)) for lvl in range(num_levels)]


class HashGrid(nn.Module):
    """x (N, 3) in [0, 1] -> features (N, num_levels * features_per_level), level-major."""

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        init_scale: float = 1e-4,
    ) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.table_size = 2**log2_hashmap_size
        resolutions = level_resolutions(num_levels, base_resolution, max_resolution)
        sizes, dense = [], []
        for res in resolutions:
            vertices = (res + 1) ** 3
            dense.append(vertices <= self.table_size)
            sizes.append(min(vertices, self.table_size))
        offsets = [0]
        for size in sizes:
            offsets.append(offsets[-1] + size)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.int64), persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES, dtype=torch.int64), persistent=False)
        # the 8 cell corners as (8, 3) offsets in {0, 1}
        corners = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)], dtype=torch.int64)
        self.register_buffer("corners", corners, persistent=False)
        self.table = nn.Parameter(
            torch.empty(offsets[-1], features_per_level).uniform_(-init_scale, init_scale)
        )

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def corner_indices(self, cell: torch.Tensor) -> torch.Tensor:
        """Integer corners (N, L, 8, 3) -> rows of `table` (N, L, 8): dense or hashed per level."""
        stride = self.resolutions + 1  # (L,)
        dense_idx = cell[..., 0] + cell[..., 1] * stride[:, None] + cell[..., 2] * (stride * stride)[:, None]
        hashed = (
            (cell[..., 0] * self.primes[0])
            ^ (cell[..., 1] * self.primes[1])
            ^ (cell[..., 2] * self.primes[2])
        )
        hashed = torch.remainder(hashed, self.table_size)
        local = torch.where(self.dense[:, None], dense_idx, hashed)
        return local + self.offsets[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0.0, 1.0)
        res = self.resolutions.to(x.dtype)  # (L,)
        pos = x[:, None, :] * res[None, :, None]  # (N, L, 3)
        # points at the upper face belong to the last cell, so the corner index never exceeds N_l
        base = torch.minimum(pos.floor().long(), self.resolutions[None, :, None] - 1)
        frac = pos - base.to(pos.dtype)  # (N, L, 3)
        cell = base[:, :, None, :] + self.corners[None, None]  # (N, L, 8, 3)
        idx = self.corner_indices(cell)  # (N, L, 8)
        c = self.corners.to(x.dtype)  # (8, 3)
        a = frac[:, :, None, :] * c + (1 - frac[:, :, None, :]) * (1 - c)  # (N, L, 8, 3)
        w = a[..., 0] * a[..., 1] * a[..., 2]  # (N, L, 8); explicit product: prod's backward is slow
        feats = self.table[idx]  # (N, L, 8, F)
        out = (feats * w[..., None]).sum(2)  # (N, L, F)
        return out.reshape(x.shape[0], self.output_dim)
