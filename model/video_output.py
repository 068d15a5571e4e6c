"""Writing novel-view results: one mp4 per view, a grid video, a PNG grid (views x frames).

Videos go through imageio's ffmpeg plugin (libx264, yuv420p, so every player reads them); frame sizes must
be even (the model resolution always is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """uint8 (N, H, W, 3) -> H.264 mp4 at `path`, written to a temporary name and renamed."""
    import imageio.v2 as imageio

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (N, H, W, 3) with N >= 1, got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 needs even frame sizes, got {frames.shape[2]}x{frames.shape[1]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    with imageio.get_writer(
        str(tmp),
        format="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,
        quality=8,
    ) as w:
        for f in frames:
            w.append_data(np.ascontiguousarray(f))
    tmp.replace(path)
    return path


def read_video_info(path: str | Path) -> tuple[int, int, int]:
    """(frame count, height, width) of a written video, by decoding every frame."""
    import imageio.v2 as imageio

    with imageio.get_reader(str(path), format="FFMPEG") as r:
        frames = [f for f in r]
    return len(frames), frames[0].shape[0], frames[0].shape[1]


def grid_frames(views: np.ndarray) -> np.ndarray:
    """uint8 (V, N, H, W, 3) -> (N, H, V * W, 3): the views side by side in every frame."""
    v, n, h, w, c = views.shape
    return np.ascontiguousarray(views.transpose(1, 2, 0, 3, 4).reshape(n, h, v * w, c))


def grid_image(views: np.ndarray, thumb: int = 0) -> np.ndarray:
    """uint8 (V, N, H, W, 3) -> (V * H', N * W', 3): one row per view, one column per frame (H' = thumb)."""
    from PIL import Image

    v, n, h, w, _ = views.shape
    if thumb and thumb != h:
        views = np.stack(
            [
                np.stack([np.asarray(Image.fromarray(f).resize((thumb, thumb), Image.LANCZOS)) for f in row])
                for row in views
            ]
        )
        h = w = thumb
    return np.ascontiguousarray(views.transpose(0, 2, 1, 3, 4).reshape(v * h, n * w, 3))


def write_png(path: str | Path, image: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
