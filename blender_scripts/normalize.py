"""Whole-clip normalization: pure numpy, no bpy.

The paper (supplement 7.1) scales each object so the largest extent of its bounding box is 1. For an
animation we use the bounding box over the whole clip (the union over the rendered frames), so the scale
does not change from frame to frame and the object never leaves the unit cube:

    p_norm = scale * (p + offset),  offset = -(lo + hi) / 2,  scale = 1 / max(hi - lo)

where lo / hi are the per-axis min / max over all frames. The normalized clip then lies in [-0.5, 0.5]^3
with its largest axis spanning exactly [-0.5, 0.5] and the union box centred at the origin.
"""

from __future__ import annotations

import numpy as np


def normalization_from_bboxes(mins: np.ndarray, maxs: np.ndarray) -> tuple[float, np.ndarray]:
    """(scale, offset (3,)) from per-frame boxes mins, maxs (F, 3) (or (3,) for one frame).

    Example: boxes [0,0,0]-[1,1,1] and [1,0,0]-[2,1,1] -> union [0,2]x[0,1]x[0,1], scale 0.5,
    offset (-1, -0.5, -0.5).
    """
    mins = np.atleast_2d(np.asarray(mins, dtype=np.float64))
    maxs = np.atleast_2d(np.asarray(maxs, dtype=np.float64))
    if mins.shape != maxs.shape or mins.shape[-1] != 3 or mins.shape[0] == 0:
        raise ValueError(f"mins and maxs must both be (F, 3) with F >= 1, got {mins.shape} and {maxs.shape}")
    if not (np.isfinite(mins).all() and np.isfinite(maxs).all()):
        raise ValueError("bounding boxes contain non-finite values")
    lo, hi = mins.min(axis=0), maxs.max(axis=0)
    extent = float((hi - lo).max())
    if extent <= 0:
        raise ValueError(f"degenerate bounding box over the clip: lo={lo.tolist()} hi={hi.tolist()}")
    return 1.0 / extent, -0.5 * (lo + hi)


def apply_normalization(points: np.ndarray, scale: float, offset: np.ndarray) -> np.ndarray:
    """p_norm = scale * (p + offset) for points (..., 3)."""
    return scale * (np.asarray(points, dtype=np.float64) + np.asarray(offset, dtype=np.float64))
