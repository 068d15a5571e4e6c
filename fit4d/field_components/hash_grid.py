"""Multi-resolution hash encoding (Mueller et al. 2022, instant-ngp) in plain PyTorch, in D dimensions.

Level l has resolution N_l = floor(N_min * b^l) with b = exp((ln N_max - ln N_min) / (L - 1)) along every
axis, unless per-axis resolutions are given (the deformation's 4D grid resolves time more coarsely than
space). A point x in [0, 1]^D sits in the cell of the grid vertices around x * N_l; its feature is the
multilinear blend of the 2^D corner entries. A level whose vertex count fits the table is indexed densely
(mixed radix: i + j (N_0+1) + k (N_0+1)(N_1+1) + ..., no collisions); finer levels hash the corner with the
usual primes, (i * 1) xor (j * 2654435761) xor (k * 805459861) [xor (l * 3674653429)] mod T, in int64 so
the products never overflow.

All levels live in one float32 parameter (fp32 gradients even under autocast) with per-level offsets,
and the whole encoding is a few gathers and elementwise ops without Python loops over points, so
`torch.compile` fuses it. Example: L = 2, N_min = 2, N_max = 4, D = 3 gives resolutions [2, 4]; with
T = 2^6 the first level (27 vertices) is dense and the second (125 > 64) hashed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fit4d.field_components import hash_kernels

PRIMES = (1, 2654435761, 805459861, 3674653429)


class _GatherRows(torch.autograd.Function):
    """table[idx] whose backward scatters with index_add (atomic adds on CUDA). The backward of plain
    indexing is index_put(accumulate=True), which sorts every index on CUDA: 42% of a fit iteration's
    GPU time on the H200 (benchmarks/RESULTS.md, fit4d). The backward is itself differentiable (the
    source gradient of index_add is a gather), so the normal losses' second derivative still works."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.num_rows = table.shape[0]
        return table.index_select(0, idx.reshape(-1)).reshape(*idx.shape, table.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (idx,) = ctx.saved_tensors
        flat = grad.reshape(idx.numel(), -1)
        return flat.new_zeros(ctx.num_rows, flat.shape[1]).index_add(0, idx.reshape(-1), flat), None


def gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (T, F), idx (...) int64 -> (..., F), the table's gradient accumulated by index_add."""
    return _GatherRows.apply(table, idx)


def level_resolutions(num_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """N_l = floor(N_min * b^l), b = (N_max / N_min)^(1 / (L - 1)) (one level: N_min)."""
    if num_levels == 1:
        return [base_resolution]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (num_levels - 1))
    # the epsilon keeps exact powers (e.g. 2 * 2^1 = 4) from rounding down to 3
    return [int(math.floor(base_resolution * b**lvl + 1e-6)) for lvl in range(num_levels)]


class HashGrid(nn.Module):
    """x (N, D) in [0, 1] -> features (N, num_levels * features_per_level), level-major.

    `axis_resolutions` (L, D) replaces the geometric series (the same on every axis) by per-level,
    per-axis resolutions; `dim` is then its second size.
    """

    def __init__(
        self,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        init_scale: float = 1e-4,
        dim: int = 3,
        axis_resolutions: Sequence[Sequence[int]] | None = None,
        kernel: str = "torch",
    ) -> None:
        super().__init__()
        if kernel == "triton" and hash_kernels.triton is None:
            raise RuntimeError("fit4d.nerf.hash_kernel=triton needs the triton package (pip install triton)")
        self.kernel = kernel
        """torch, or triton: the fused kernels on CUDA (fit4d/field_components/hash_kernels.py)."""
        if axis_resolutions is None:
            per_level = level_resolutions(num_levels, base_resolution, max_resolution)
            axis_resolutions = [[r] * dim for r in per_level]
        res = [list(map(int, r)) for r in axis_resolutions]
        dim = len(res[0])
        if len(res) != num_levels or any(len(r) != dim for r in res) or not 1 <= dim <= len(PRIMES):
            raise ValueError(f"axis_resolutions must be {num_levels} rows of 1-{len(PRIMES)} resolutions")
        if min(min(r) for r in res) < 1:
            raise ValueError("hash grid resolutions must be >= 1")
        self.dim = dim
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.table_size = 2**log2_hashmap_size
        offsets, dense = [0], []
        for r in res:
            vertices = math.prod(n + 1 for n in r)
            dense.append(vertices <= self.table_size)
            offsets.append(offsets[-1] + min(vertices, self.table_size))
        resolutions = torch.tensor(res, dtype=torch.int64)  # (L, D)
        # mixed-radix strides of the dense index: prod_{e < d} (N_e + 1)
        strides = torch.cumprod(
            torch.cat([torch.ones(num_levels, 1, dtype=torch.int64), resolutions + 1], 1), 1
        )
        self.register_buffer("resolutions", resolutions, persistent=False)
        self.register_buffer("strides", strides[:, :dim], persistent=False)
        self.register_buffer("dense", torch.tensor(dense), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        self.register_buffer("primes", torch.tensor(PRIMES[:dim], dtype=torch.int64), persistent=False)
        self.table = nn.Parameter(
            torch.empty(offsets[-1], features_per_level).uniform_(-init_scale, init_scale)
        )

    @property
    def output_dim(self) -> int:
        return self.num_levels * self.features_per_level

    def corner_indices(self, base: torch.Tensor) -> torch.Tensor:
        """Lower cell corners (N, L, D) -> the rows of `table` of the cell's 2^D corners (N, L, 2^D), dense
        or hashed per level; corner c has bit d of c set where it is the upper corner along axis d."""
        coords = torch.stack([base, base + 1], -1)  # (N, L, D, 2)
        # per axis and side first, then combined corner by corner (axis 0 the lowest bit of the corner
        # number): 2 D products per level instead of D 2^D
        dense_terms = coords * self.strides[None, :, :, None]
        hash_terms = coords * self.primes[None, None, :, None]
        dense, hashed = dense_terms[:, :, 0], hash_terms[:, :, 0]  # (N, L, 2)
        for d in range(1, self.dim):
            dense = (dense[..., None, :] + dense_terms[:, :, d, :, None]).flatten(-2)
            hashed = (hashed[..., None, :] ^ hash_terms[:, :, d, :, None]).flatten(-2)
        local = torch.where(self.dense[:, None], dense, torch.remainder(hashed, self.table_size))
        return local + self.offsets[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "triton" and self.dim in (3, 4) and hash_kernels.available(x.device):
            return hash_kernels.hash_encode(x, self)
        x = x.float().clamp(0.0, 1.0)
        res = self.resolutions.to(x.dtype)  # (L, D)
        pos = x[:, None, :] * res[None]  # (N, L, D)
        # points at the upper face belong to the last cell, so the corner index never exceeds N_l
        base = torch.minimum(pos.floor().long(), self.resolutions[None] - 1)
        frac = pos - base.to(pos.dtype)  # (N, L, D)
        idx = self.corner_indices(base)  # (N, L, 2^D)
        # multilinear weights built like the indices: prod over axes of (1 - frac, frac)[bit]
        sides = torch.stack([1 - frac, frac], -1)  # (N, L, D, 2)
        w = sides[:, :, 0]
        for d in range(1, self.dim):
            w = (w[..., None, :] * sides[:, :, d, :, None]).flatten(-2)  # (N, L, 2^(d+1))
        feats = gather_rows(self.table, idx)  # (N, L, 2^D, F)
        out = (feats * w[..., None]).sum(2)  # (N, L, F)
        return out.reshape(x.shape[0], self.output_dim)
