"""The input of a fit: multi-view videos with cameras, from a render sample of a shard or from arrays
(a generated sample of the novel-view sampler), validated with one-line errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.reader import iter_render_samples, list_keys
from shards.render_schema import RenderSample


class FitInputError(ValueError):
    """The multi-view video cannot be fitted; the message says what is missing or inconsistent."""


@dataclass
class FitInput:
    """rgb (V, F, H, W, 3) float32 in [0, 1] composited on `background`; alpha (V, F, H, W); c2w (V, 4, 4)
    OpenCV camera-to-world; K (3, 3) pixels."""

    key: str
    rgb: np.ndarray
    alpha: np.ndarray
    c2w: np.ndarray
    K: np.ndarray
    input_view: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_views(self) -> int:
        return self.rgb.shape[0]

    @property
    def num_frames(self) -> int:
        return self.rgb.shape[1]

    @property
    def resolution(self) -> tuple[int, int]:
        return self.rgb.shape[2], self.rgb.shape[3]


def fit_input_from_views(
    key: str,
    views: Sequence[np.ndarray],
    c2w: np.ndarray | None,
    K: np.ndarray | None,
    *,
    input_view: int = 0,
    background: float = 1.0,
    resolution: int = 0,
    meta: dict[str, Any] | None = None,
) -> FitInput:
    """Per-view RGBA videos (F, H, W, 4) (uint8, or float in [0, 1]) + cameras -> a validated FitInput,
    resized to `resolution` (0: unchanged) by area averaging."""
    if c2w is None:
        raise FitInputError(f"{key}: missing cameras (c2w): a fit needs one camera-to-world per view")
    if K is None:
        raise FitInputError(f"{key}: missing intrinsics (K)")
    if len(views) == 0:
        raise FitInputError(f"{key}: no views")
    c2w = np.asarray(c2w, np.float32)
    K = np.asarray(K, np.float32)
    if c2w.shape != (len(views), 4, 4):
        raise FitInputError(
            f"{key}: c2w has shape {c2w.shape}, expected ({len(views)}, 4, 4) for {len(views)} views"
        )
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise FitInputError(
            f"{key}: intrinsics must be a finite (3, 3) pinhole K with positive focal lengths"
        )
    if not np.all(np.isfinite(c2w)):
        raise FitInputError(f"{key}: cameras contain NaN or Inf")
    first = np.asarray(views[0])
    for v, video in enumerate(views):
        video = np.asarray(video)
        if video.ndim != 4 or video.shape[-1] != 4:
            raise FitInputError(f"{key}: view {v} has shape {video.shape}, expected (frames, H, W, 4) RGBA")
        if video.shape[1:3] != first.shape[1:3]:
            raise FitInputError(
                f"{key}: view {v} images are {video.shape[1]}x{video.shape[2]}, view 0's {first.shape[1]}x"
                f"{first.shape[2]}: all images must have the same size"
            )
        if video.shape[0] != first.shape[0]:
            raise FitInputError(
                f"{key}: view {v} has {video.shape[0]} frames, view 0 has {first.shape[0]}: frames missing"
            )
    if first.shape[0] < 1:
        raise FitInputError(f"{key}: no frames")
    if not 0 <= input_view < len(views):
        raise FitInputError(f"{key}: input_view {input_view} outside the {len(views)} views")
    stack = np.stack([np.asarray(v) for v in views])
    data = stack.astype(np.float32) / 255.0 if stack.dtype == np.uint8 else stack.astype(np.float32)
    h, w = data.shape[2:4]
    if resolution and (h, w) != (resolution, resolution):
        if h != w:
            raise FitInputError(f"{key}: resizing needs square images, got {h}x{w}")
        t = torch.from_numpy(data).reshape(-1, h, w, 4).permute(0, 3, 1, 2)
        # premultiplied colour, so area averaging does not bleed the background into the edges
        t = torch.cat([t[:, :3] * t[:, 3:], t[:, 3:]], 1)
        t = torch.nn.functional.interpolate(t, size=(resolution, resolution), mode="area")
        a = t[:, 3:]
        t = torch.cat([t[:, :3] / a.clamp(min=1e-6), a], 1)
        data = t.permute(0, 2, 3, 1).reshape(*data.shape[:2], resolution, resolution, 4).numpy()
        K = K.copy()
        K[:2] *= resolution / w
    alpha = data[..., 3]
    rgb = data[..., :3] * alpha[..., None] + background * (1.0 - alpha[..., None])
    return FitInput(
        key, rgb.astype(np.float32), alpha.astype(np.float32), c2w, K, input_view, dict(meta or {})
    )


def fit_input_from_render_sample(
    sample: RenderSample,
    orbit: str = "static",
    input_view: int = 0,
    background: float = 1.0,
    resolution: int = 0,
) -> FitInput:
    if orbit not in sample.images:
        raise FitInputError(f"{sample.key}: no {orbit!r} orbit (the sample has {sample.orbits})")
    if orbit not in sample.c2w:
        raise FitInputError(f"{sample.key}: missing cameras of the {orbit!r} orbit")
    images = sample.images[orbit]
    return fit_input_from_views(
        sample.key,
        list(images),
        sample.c2w[orbit],
        sample.intrinsics,
        input_view=input_view,
        background=background,
        resolution=resolution,
        meta=sample.meta,
    )


def read_render_sample(path: str | Path, key: str | None = None) -> RenderSample:
    """The sample `key` (default: the first) of a render shard, through shards/ readers."""
    path = Path(path)
    if not path.is_file():
        raise FitInputError(f"no shard at {path}")
    keys = list_keys(path)
    if not keys:
        raise FitInputError(f"{path}: the shard holds no samples")
    want = keys[0] if key is None else key
    if want not in keys:
        raise FitInputError(
            f"{path}: no sample {want!r} (keys: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''})"
        )
    for sample in iter_render_samples(path):
        if sample.key == want:
            return sample
    raise FitInputError(f"{path}: sample {want!r} could not be decoded")
