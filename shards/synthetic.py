"""Synthetic latent samples in the latent-shard contract (shards/latent_schema.py), for tests and for
benchmarks that train at full size without real data (random latents, valid cameras and metadata)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards.latent_schema import LatentSample, encode_latent_sample
from shards.layout import shard_file
from shards.writer import ShardWriter

SYNTHETIC_ENCODER = {
    "vae": "synthetic",
    "vae_scaling_factor": 0.18215,
    "latent_channels": 4,
    "downsample": 8,
    "clip_model": "synthetic",
    "clip_dim": 32,
    "background": "white",
}


def synthetic_latent_sample(
    key: str, views: int = 6, frames: int = 6, h: int = 8, clip_dim: int = 32, seed: int = 0
) -> LatentSample:
    """A latent sample with a static and a dynamic orbit of ``views`` x ``frames`` latents (4, h, h)."""
    rng = np.random.default_rng(seed)
    mean, std, clip, c2w, angles = {}, {}, {}, {}, {}
    for o, orbit in enumerate(("static", "dynamic")):
        mean[orbit] = rng.standard_normal((views, frames, 4, h, h), dtype=np.float32).astype(np.float16)
        std[orbit] = rng.uniform(0.05, 0.2, (views, frames, 4, h, h)).astype(np.float16)
        clip[orbit] = rng.standard_normal((views, frames, clip_dim), dtype=np.float32).astype(np.float16)
        az = (np.arange(views) * 360.0 / views + 17.0 * o) % 360.0
        el = np.full(views, 10.0) if orbit == "static" else rng.uniform(-5, 30, views)
        angles[orbit] = np.stack([el, az, np.full(views, 2.0)], 1).astype(np.float32)
        c2w[orbit] = np.tile(np.eye(4, dtype=np.float32), (views, 1, 1))
    meta = {
        "uid": key,
        "mode": "4d",
        "resolution": h * 8,
        "num_views": views,
        "num_frames": frames,
        "orbits": ["static", "dynamic"],
        "fov_deg": 33.8,
        "encoder": {**SYNTHETIC_ENCODER, "clip_dim": clip_dim},
    }
    k = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]], np.float32)
    return LatentSample(key, mean, std, clip, c2w, angles, k, meta)


def write_latent_shards(
    directory: str | Path, num_shards: int = 2, per_shard: int = 2, **kwargs
) -> list[str]:
    """Write ``num_shards`` shards of ``per_shard`` synthetic objects (``synthetic_latent_sample`` kwargs);
    returns their paths."""
    paths = []
    Path(directory).mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        path = shard_file(directory, s)
        with ShardWriter(path) as w:
            for i in range(per_shard):
                n = s * per_shard + i
                w.write(encode_latent_sample(synthetic_latent_sample(f"obj{n:03d}", seed=n, **kwargs)))
        paths.append(str(path))
    return paths
