"""Camera rays in the shard convention (shards/cameras.py builds the poses): OpenCV cameras (x right,
y down, z forward), world Z up, azimuth from +X toward +Y, elevation above the XY plane, pixel (i, j)
covering [j, j + 1) x [i, i + 1) so its centre is (j + 0.5, i + 0.5)."""

from __future__ import annotations

import numpy as np
import torch


def pixel_rays(
    c2w: torch.Tensor, K: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel centres. c2w (R, 4, 4) or (4, 4), K (3, 3), rows/cols (R,) integer or float pixel
    indices -> origins (R, 3), unit directions (R, 3)."""
    u = cols.to(K.dtype) + 0.5
    v = rows.to(K.dtype) + 0.5
    d_cam = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)
    c2w = c2w.expand(rows.shape[0], 4, 4) if c2w.ndim == 2 else c2w
    dirs = torch.einsum("rij,rj->ri", c2w[:, :3, :3].to(K.dtype), d_cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return c2w[:, :3, 3].to(K.dtype).expand_as(dirs), dirs


def image_rays(
    c2w: torch.Tensor, K: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """All rays of one (height, width) image, row-major: (H * W, 3) origins and directions."""
    rows, cols = torch.meshgrid(
        torch.arange(height, device=K.device), torch.arange(width, device=K.device), indexing="ij"
    )
    return pixel_rays(c2w, K, rows.reshape(-1), cols.reshape(-1))


def spherical(c2w: np.ndarray) -> np.ndarray:
    """(V, 4, 4) -> (V, 3): elevation_deg, azimuth_deg in [0, 360), radius of each camera centre."""
    t = np.asarray(c2w, np.float64)[:, :3, 3]
    radius = np.linalg.norm(t, axis=-1)
    elevation = np.degrees(np.arcsin(np.clip(t[:, 2] / np.maximum(radius, 1e-12), -1, 1)))
    azimuth = np.degrees(np.arctan2(t[:, 1], t[:, 0])) % 360.0
    return np.stack([elevation, azimuth, radius], -1)
