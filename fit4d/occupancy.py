"""Empty-space skipping: an occupancy grid over the box holding the maximum density over time."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class OccupancyGrid:
    """res^3 cells over [-bound, bound]^3; a cell is occupied while its density at some frame of the
    current window, at a jittered point in the cell, exceeds `threshold`. Starts all occupied."""

    def __init__(self, resolution: int, bound: float, threshold: float, device: torch.device | str = "cpu"):
        self.resolution, self.bound, self.threshold = resolution, bound, threshold
        self.grid = torch.ones((resolution,) * 3, dtype=torch.bool, device=device)

    def cell_index(self, x: torch.Tensor) -> torch.Tensor:
        """Points (N, 3) -> flat cell indices (N,) (points outside clamp to the border cells)."""
        ijk = ((x / self.bound + 1.0) * 0.5 * self.resolution).long().clamp(0, self.resolution - 1)
        return (ijk[:, 0] * self.resolution + ijk[:, 1]) * self.resolution + ijk[:, 2]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid.reshape(-1)[self.cell_index(x)]

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        times: Sequence[float],
        chunk: int = 2**18,
        generator: torch.Generator | None = None,
    ) -> float:
        """Re-evaluate every cell at `times`; returns the occupied fraction."""
        r, dev = self.resolution, self.grid.device
        idx = torch.arange(r, device=dev)
        ijk = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1).reshape(-1, 3)
        jitter = torch.rand(ijk.shape, device=dev, generator=generator)
        pts = ((ijk + jitter) / r * 2.0 - 1.0) * self.bound
        best = torch.zeros(pts.shape[0], device=dev)
        for t in times:
            for s in range(0, pts.shape[0], chunk):
                x = pts[s : s + chunk]
                tt = torch.full((x.shape[0], 1), float(t), device=dev)
                best[s : s + chunk] = torch.maximum(best[s : s + chunk], density_fn(x, tt).float())
        occupied = (best > self.threshold).reshape(1, 1, r, r, r).float()
        # one cell of dilation: a thin part missed by the jittered point stays trainable
        self.grid = torch.nn.functional.max_pool3d(occupied, 3, stride=1, padding=1)[0, 0] > 0
        return float(self.grid.float().mean())
