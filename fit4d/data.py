"""The input of a fit: multi-view videos with cameras, from a render sample of a shard (ground truth) or
a generated sample of the novel-view sampler (`model.sample`'s generated.tar), validated with one-line
errors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shards.generated_schema import GeneratedSample, decode_generated_sample, image_field
from shards.index import index_tar, raise_problems, read_entry
from shards.render_schema import RenderSample, SchemaError, decode_render_sample


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


def crop_translations(
    crop_boxes: np.ndarray, input_c2w: np.ndarray, K: np.ndarray, resolution: int
) -> np.ndarray:
    """World translation (F, 3) of the object in each frame relative to frame 0, from the sampler's crop
    boxes.

    A crop box of side s source pixels becomes the model's `resolution`-pixel input view, whose camera
    (`input_c2w`, focal `K[0, 0]` in model pixels) looks at the object at the origin from distance r. A shift
    of the box centre by d source pixels is then d * resolution / s model pixels, that is
    d * resolution / s * r / f world units across the input camera's image plane (x right, y down). Depth
    motion is not recoverable from a square crop of constant side and is left at 0.
    """
    boxes = np.asarray(crop_boxes, np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise FitInputError(f"crop boxes must be (frames, 4), got {boxes.shape}")
    side = boxes[:, 2] - boxes[:, 0]
    if np.any(side <= 0) or not np.all(np.isfinite(boxes)):
        raise FitInputError("crop boxes must be finite with x1 > x0")
    centre = np.stack([boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]], -1) / 2.0
    c2w = np.asarray(input_c2w, np.float64)
    depth = float(np.linalg.norm(c2w[:3, 3]))
    shift = (centre - centre[0]) * (resolution / side)[:, None] * depth / float(K[0, 0])
    cam = np.concatenate([shift, np.zeros((len(boxes), 1))], -1)
    return (cam @ c2w[:3, :3].T).astype(np.float32)


def fit_input_from_generated(
    sample: GeneratedSample, background: float = 1.0, resolution: int = 0
) -> FitInput:
    """A generated sample (view 0 the cropped input, the rest generated) as a FitInput; its crop boxes become
    `meta["global_offsets"]`, the translation track the exports put back (`fit4d.export_global_motion`)."""
    meta = dict(sample.meta)
    input_view = int(meta.get("input_view", 0))
    if not 0 <= input_view < len(sample.c2w):
        raise FitInputError(f"{sample.key}: input_view {input_view} outside the {len(sample.c2w)} views")
    meta["global_offsets"] = crop_translations(
        sample.crop_boxes, sample.c2w[input_view], sample.intrinsics, int(sample.images.shape[2])
    ).tolist()
    meta.pop("normalization", None)  # the offsets are already in the fit's world units
    return fit_input_from_views(
        sample.key,
        list(sample.images),
        sample.c2w,
        sample.intrinsics,
        input_view=input_view,
        background=background,
        resolution=resolution,
        meta=meta,
    )


FitSample = RenderSample | GeneratedSample


def read_sample(path: str | Path, key: str | None = None) -> FitSample:
    """The sample `key` (default: the first) of a render shard or of a generated.tar from `model.sample`:
    a sample with `view.v00.f00.png` is a generated one. A bad file or sample raises FitInputError."""
    path = Path(path)
    if not path.is_file():
        raise FitInputError(f"no shard at {path}")
    index = index_tar(path)
    keys = [e.key for e in index.entries]
    if not keys:
        try:
            raise_problems(index)  # a damaged tar says so rather than "no samples"
        except SchemaError as exc:
            raise FitInputError(f"{path}: {exc}") from exc
        raise FitInputError(f"{path}: the shard holds no samples")
    want = keys[0] if key is None else key
    if want not in keys:
        raise FitInputError(
            f"{path}: no sample {want!r} (keys: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''})"
        )
    raw = read_entry(index.entries[keys.index(want)])
    try:
        if image_field(0, 0) in raw:
            return decode_generated_sample(raw)
        return decode_render_sample(raw)
    except SchemaError as exc:
        raise FitInputError(f"{path}: sample {want!r}: {exc}") from exc


def read_render_sample(path: str | Path, key: str | None = None) -> RenderSample:
    """The render sample `key` (default: the first) of a shard."""
    sample = read_sample(path, key)
    if not isinstance(sample, RenderSample):
        raise FitInputError(f"{path}: sample {sample.key!r} is a generated sample, not a render sample")
    return sample


def fit_input_from_sample(
    sample: FitSample,
    orbit: str = "static",
    input_view: int = 0,
    background: float = 1.0,
    resolution: int = 0,
) -> FitInput:
    """Either kind of sample as a FitInput (`orbit` and `input_view` apply to render samples; a generated
    sample names its own input view)."""
    if isinstance(sample, GeneratedSample):
        return fit_input_from_generated(sample, background, resolution)
    return fit_input_from_render_sample(sample, orbit, input_view, background, resolution)
