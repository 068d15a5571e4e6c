"""Synthetic render samples for tests that must not need Blender."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards.cameras import c2w_opencv
from shards.render_schema import RenderSample


def look_at_c2w(elevation_deg: float, azimuth_deg: float, radius: float) -> np.ndarray:
    """float32 OpenCV camera-to-world looking at the origin from (elevation, azimuth), world Z up."""
    return c2w_opencv(elevation_deg, azimuth_deg, radius).astype(np.float32)


def save_tiny_checkpoint(root: Path, stage: str = "4d") -> Path:
    """A randomly initialized tiny UNet saved under <root>/checkpoints/<stage> at step 3 (EMA = model)."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import get_config, save_config
    from model.unet import build_unet

    torch.manual_seed(0)
    net = build_unet(get_config("tiny"))
    sd = net.state_dict()
    stage_dir = Path(root) / "checkpoints" / stage
    save_checkpoint(
        stage_dir, 3, sd, sd, {}, {"stage": stage}, config_writer=lambda d: save_config(net.config, d)
    )
    return stage_dir


def make_render_sample(
    key: str = "asset-0", views: int = 2, frames: int = 3, res: int = 16, seed: int = 0, mode: str = "4d"
) -> RenderSample:
    rng = np.random.default_rng(seed)
    images, c2w, angles = {}, {}, {}
    for orbit in ("static", "dynamic"):
        images[orbit] = rng.integers(0, 256, size=(views, frames, res, res, 4), dtype=np.uint8)
        az = np.linspace(0, 360, views, endpoint=False)
        el = np.full(views, 10.0) if orbit == "static" else rng.uniform(-5, 30, views)
        c2w[orbit] = np.stack([look_at_c2w(e, a, 2.0) for e, a in zip(el, az)])
        angles[orbit] = np.stack([el, az, np.full(views, 2.0)], axis=1).astype(np.float32)
    focal = 0.5 * res / np.tan(np.deg2rad(33.8) / 2)
    K = np.array([[focal, 0, res / 2], [0, focal, res / 2], [0, 0, 1]], np.float32)
    meta = {
        "uid": key,
        "mode": mode,
        "resolution": res,
        "num_views": views,
        "num_frames": frames,
        "orbits": ["static", "dynamic"],
        "fov_deg": 33.8,
    }
    return RenderSample(key=key, images=images, c2w=c2w, angles=angles, intrinsics=K, meta=meta)
