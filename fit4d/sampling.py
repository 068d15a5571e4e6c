"""Which views, frames and pixels each iteration sees (paper sec. 4, "View and Frame Sampling")."""

from __future__ import annotations

import numpy as np


def angular_distance(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Absolute azimuth difference in degrees, in [0, 180]."""
    d = np.abs((np.asarray(a) - np.asarray(b)) % 360.0)
    return np.minimum(d, 360.0 - d)


def orthogonal_views(
    azimuths: np.ndarray, candidates: np.ndarray, input_view: int, jitter_deg: float, rng: np.random.Generator
) -> np.ndarray:
    """Views (among `candidates`) nearest to input azimuth + offset + {0, 90, 180, 270}, offset uniform in
    [-jitter, jitter]; duplicates (sparse view sets) are dropped, order kept."""
    offset = rng.uniform(-jitter_deg, jitter_deg) if jitter_deg > 0 else 0.0
    base = azimuths[input_view] + offset
    chosen: list[int] = []
    for k in range(4):
        d = angular_distance(azimuths[candidates], base + 90.0 * k)
        v = int(candidates[int(np.argmin(d))])
        if v not in chosen:
            chosen.append(v)
    return np.array(chosen, dtype=np.int64)


def random_views(candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(candidates, size=min(count, len(candidates)), replace=False).astype(np.int64)


def window_size(it: int, total: int, num_frames: int, start: int, grow_frac: float) -> int:
    """Frames in the progressive window at dynamic iteration `it` of `total`: `start` at it = 0, growing
    linearly to all `num_frames` at it = grow_frac * total, then all frames."""
    start = min(max(start, 1), num_frames)
    grow = max(1, int(round(grow_frac * total)))
    return min(num_frames, start + int((num_frames - start) * min(it, grow) / grow + 1e-9))


def window_frames(window: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct frames from [0, window) (all of them when the window is smaller)."""
    return np.sort(rng.choice(window, size=min(count, window), replace=False)).astype(np.int64)


def random_frames(num_frames: int, count: int, rng: np.random.Generator) -> np.ndarray:
    return window_frames(num_frames, count, rng)


def strided_patch(
    height: int, width: int, size: int, max_stride: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A size x size patch of pixel (rows, cols), each (size, size), with a random stride in
    [1, max_stride] (clamped so it fits) and a random position."""
    if size > min(height, width):
        raise ValueError(f"patch_size {size} exceeds the image ({height}x{width})")
    top_stride = max(1, min(max_stride, (min(height, width) - 1) // max(size - 1, 1)))
    s = int(rng.integers(1, top_stride + 1))
    span = (size - 1) * s
    r0 = int(rng.integers(0, height - span))
    c0 = int(rng.integers(0, width - span))
    r = r0 + s * np.arange(size)
    c = c0 + s * np.arange(size)
    rows, cols = np.meshgrid(r, c, indexing="ij")
    return rows, cols
