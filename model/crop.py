"""Foreground masks, crop boxes and the model-resolution input frames of novel-view sampling.

Foreground (`foreground_masks`), in this order: user masks when given; the alpha channel when the frames
are RGBA with any alpha below 255; else the difference to the background colour (the median colour of the
frames' one-pixel border, e.g. white renders, a green screen): a pixel is foreground when a channel differs
by more than `threshold` (the release's rule "darker than 250 on white" is this with white and 5).

Boxes are squares [x0, y0, x1, y1] in continuous source-pixel coordinates (pixel (i, j) covers
[i, i+1) x [j, j+1)); they may reach outside the frame, which is padded with white.
- ``union`` (the release): one box for all frames, centred on the bounding box of the union of the masks,
  its side the union's larger side / `fill` (0.9: the object fills 90% of the side).
- ``per_frame``: one box per frame centred on that frame's object, all of the same side (the largest
  object side over the clip / `fill`), so the object keeps a constant scale and stays centred, as in the
  training renders whose global motion was removed. The boxes are recorded with the generated sample, so
  the global motion can be put back on the 4D asset (its translation is the box centre's).
Frames are composited on white with the mask as alpha, cropped and resized with Lanczos (antialiased) to
the model resolution.
"""

from __future__ import annotations

import numpy as np

CROP_MODES = ("union", "per_frame")


def foreground_masks(
    frames: np.ndarray, masks: np.ndarray | None = None, threshold: int = 5
) -> tuple[np.ndarray, str]:
    """uint8 frames (N, H, W, 3|4) -> (bool masks (N, H, W), source: user | alpha | background).

    Raises ValueError naming the first frame whose mask is empty.
    """
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3|4), got {frames.dtype} {frames.shape}")
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != frames.shape[:3]:
            raise ValueError(f"masks shape {masks.shape} != frames {frames.shape[:3]}")
        fg, source = masks > (127 if masks.dtype == np.uint8 else 0.5), "user"
    elif frames.shape[-1] == 4 and (frames[..., 3] < 255).any():
        fg, source = frames[..., 3] > 127, "alpha"
    else:
        rgb = frames[..., :3].astype(np.int16)
        border = np.concatenate(
            [rgb[:, 0].reshape(-1, 3), rgb[:, -1].reshape(-1, 3), rgb[:, :, 0].reshape(-1, 3)]
            + [rgb[:, :, -1].reshape(-1, 3)]
        )
        bg = np.median(border, axis=0)
        fg, source = (np.abs(rgb - bg).max(axis=-1) > threshold), "background"
    empty = np.flatnonzero(~fg.reshape(fg.shape[0], -1).any(axis=1))
    if empty.size:
        raise ValueError(f"empty foreground mask in frame {int(empty[0])} (from {source}): nothing to crop")
    return fg, source


def mask_bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Bounding box [x0, y0, x1, y1] (continuous, x1/y1 exclusive) of a non-empty bool mask (H, W)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1)


def _square(cx: float, cy: float, side: float) -> np.ndarray:
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], np.float64)


def crop_boxes(masks: np.ndarray, mode: str = "union", fill: float = 0.9) -> np.ndarray:
    """float64 boxes (N, 4) for masks (N, H, W): the same box N times (union) or one per frame (see doc).

    Example: a 10x20 object in every frame, fill 0.5 -> boxes of side 40 centred on the object.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode {mode!r} is not one of {', '.join(CROP_MODES)}")
    if not 0.0 < fill <= 1.0:
        raise ValueError(f"crop fill must lie in (0, 1], got {fill}")
    boxes = np.array([mask_bbox(m) for m in masks])
    if mode == "union":
        x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
        x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
        side = max(x1 - x0, y1 - y0) / fill
        return np.repeat(_square((x0 + x1) / 2, (y0 + y1) / 2, side)[None], len(masks), axis=0)
    side = float(np.max(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))) / fill
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    return np.stack([_square(cx, cy, side) for cx, cy in centres])


def crop_resize(frame_rgba: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGBA (H, W, 4) composited on white, cropped to `box` (padded with white), Lanczos-resized to
    (size, size). Returns uint8 RGBA: RGB on white, alpha the resized mask."""
    from PIL import Image

    h, w = frame_rgba.shape[:2]
    a = frame_rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = frame_rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    img = np.concatenate([rgb, frame_rgba[..., 3:4].astype(np.float32)], axis=-1)
    x0, y0, x1, y1 = (float(v) for v in box)
    pad_l, pad_t = max(0, int(np.ceil(-x0))), max(0, int(np.ceil(-y0)))
    pad_r, pad_b = max(0, int(np.ceil(x1 - w))), max(0, int(np.ceil(y1 - h)))
    if pad_l or pad_t or pad_r or pad_b:
        padded = np.zeros((h + pad_t + pad_b, w + pad_l + pad_r, 4), np.float32)
        padded[..., :3] = 255.0
        padded[pad_t : pad_t + h, pad_l : pad_l + w] = img
        img = padded
    box_shifted = (x0 + pad_l, y0 + pad_t, x1 + pad_l, y1 + pad_t)
    channels = [
        np.asarray(Image.fromarray(img[..., c], "F").resize((size, size), Image.LANCZOS, box=box_shifted))
        for c in range(4)
    ]
    return np.clip(np.rint(np.stack(channels, axis=-1)), 0, 255).astype(np.uint8)


def prepare_frames(
    frames: np.ndarray,
    size: int,
    mode: str = "union",
    fill: float = 0.9,
    masks: np.ndarray | None = None,
    threshold: int = 5,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Source frames (N, H, W, 3|4) -> (model-size RGBA on white (N, size, size, 4), boxes (N, 4) float64,
    foreground source)."""
    fg, source = foreground_masks(frames, masks, threshold)
    boxes = crop_boxes(fg, mode, fill)
    rgba = np.concatenate([frames[..., :3], (fg * 255).astype(np.uint8)[..., None]], axis=-1)
    if source == "alpha":  # keep the soft alpha edges
        rgba[..., 3] = frames[..., 3]
    out = np.stack([crop_resize(f, b, size) for f, b in zip(rgba, boxes)])
    return out, boxes, source
