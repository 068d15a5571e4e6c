"""benchmarks/random_weights.py: random sampler weights saved in the loaders' layouts load back through the
sampler (tiny size here; the device builds the full size the same way)."""

from __future__ import annotations

import torch

from benchmarks.random_weights import save_random_sampler_weights
from profiles.load import load_profile


def test_tiny_weights_load_through_the_sampler_exactly_and_are_saved_once(tmp_path):
    from safetensors.torch import load_file

    from model.novel_views import NovelViewSampler

    overrides = save_random_sampler_weights(tmp_path / "w", "tiny")
    unet_file = tmp_path / "w" / "unet_tiny.safetensors"
    stamp = unet_file.stat().st_mtime_ns
    assert save_random_sampler_weights(tmp_path / "w", "tiny") == overrides  # reused, not rebuilt
    assert unet_file.stat().st_mtime_ns == stamp
    cfg = load_profile(
        "sv4d2", [*overrides, "sample.device=cpu", "sample.dtype=float32", "sample.resolution=32"]
    )
    assert cfg.fit4d.refiner == "sampler" and cfg.sample.checkpoint == str(unet_file)
    sampler = NovelViewSampler(cfg)
    saved = load_file(str(unet_file))
    loaded = sampler.net.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(loaded[k], saved[k].to(loaded[k].dtype)) for k in saved)
    assert sampler.net_info["kind"] == "ours" and sampler.encoders.clip_dim == 32
