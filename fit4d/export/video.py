"""Orbit videos of a fitted 4D asset: the camera circles the object while the clip plays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def orbit_frames(
    render_fn,
    num_views: int,
    num_frames: int,
    elevation_deg: float,
    radius: float,
    start_azimuth: float = 0.0,
) -> list[tuple[np.ndarray, float]]:
    """(c2w (4, 4), t) of each video frame: azimuth advances 360 / num_views per video frame and the clip
    frame advances by one, looping."""
    from shards.cameras import c2w_opencv

    out = []
    for i in range(num_views):
        t = (i % num_frames) / max(num_frames - 1, 1)
        out.append((c2w_opencv(elevation_deg, start_azimuth + 360.0 * i / num_views, radius), t))
    return out


def write_video(path: str | Path, frames: list[np.ndarray], fps: int) -> None:
    """uint8 (H, W, 3) frames -> H.264 mp4 through imageio's ffmpeg plugin (imageio-ffmpeg's binary)."""
    import imageio.v2 as imageio

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(frame)
    tmp.replace(path)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().byte().cpu().numpy()


def normal_to_rgb(normal: torch.Tensor, opacity: torch.Tensor, background: float) -> torch.Tensor:
    """World normals (H, W, 3) -> colours (n + 1) / 2 on the background where the object is absent."""
    rgb = (normal + 1.0) * 0.5
    return rgb * opacity[..., None] + background * (1 - opacity[..., None])
