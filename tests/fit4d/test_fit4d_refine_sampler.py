"""Stage 2 with the real sampler (`fit4d.refiner: sampler`): the tiny network and tiny encoders are saved to
disk first and loaded through `sampler_refiner`, as a real checkpoint would be."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fit4d.refine import RefineRequest, on_background, on_white, resize_square, sampler_refiner
from profiles.load import load_profile
from shards.cameras import c2w_opencv
from tests.synthetic import save_tiny_checkpoint

V, F, H, RES = 3, 3, 24, 32


@pytest.fixture(scope="module")
def refiner_cfg(tmp_path_factory):
    """A demo profile whose `sample` section points at a tiny 4d checkpoint and tiny encoders."""
    root = tmp_path_factory.mktemp("refine")
    save_tiny_checkpoint(root)
    sets = [
        f"out_dir={root}",
        f"encode.tiny_dir={root / 'tiny_encoders'}",
        f"sample.resolution={RES}",
        "sample.frames_per_pass=4",  # more than F: the refiner's frames are repeated to fill a window
        "sample.views_per_pass=2",  # fewer than V: two chained view groups
        "sample.progress=false",
        "sample.device=cpu",
    ]
    return load_profile("demo", sets)


@pytest.fixture(scope="module")
def refiner(refiner_cfg):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only wait on a shared 2-core machine
    yield sampler_refiner(refiner_cfg)
    torch.set_num_threads(before)


def request(background: float = 1.0, start_step: int = 2, num_steps: int = 4) -> RefineRequest:
    """Renders of a square that moves over the frames, seen from V views around the input view (view 0)."""
    rng = np.random.default_rng(0)
    alpha = np.zeros((V, F, H, H), np.float32)
    for f in range(F):
        alpha[:, f, 6:18, 3 + 3 * f : 15 + 3 * f] = 1.0
    colour = rng.uniform(0.1, 0.9, (V, F, H, H, 3)).astype(np.float32)
    rgb = colour * alpha[..., None] + background * (1 - alpha[..., None])
    az = np.array([0.0, 90.0, 200.0], np.float32)
    return RefineRequest(
        rgb=rgb,
        alpha=alpha,
        c2w=np.stack([c2w_opencv(10.0, a, 2.0) for a in az]).astype(np.float32),
        K=np.array([[30.0, 0, H / 2], [0, 30.0, H / 2], [0, 0, 1]], np.float32),
        elevation_deg=np.array([0.0, 0.0, 20.0], np.float32),
        azimuth_deg=az,
        input_view=0,
        input_rgb=rgb[0].copy(),
        background=background,
        start_step=start_step,
        num_steps=num_steps,
        input_alpha=alpha[0].copy(),
    )


def test_background_conversion_round_trips_and_resize_keeps_constants():
    rng = np.random.default_rng(1)
    c, a = rng.uniform(size=(2, 5, 5, 3)).astype(np.float32), rng.uniform(size=(2, 5, 5)).astype(np.float32)
    grey = c * a[..., None] + 0.25 * (1 - a[..., None])
    white = on_white(grey, a, 0.25)
    np.testing.assert_allclose(white, c * a[..., None] + (1 - a[..., None]), atol=1e-6)
    np.testing.assert_allclose(on_background(white, a, 0.25), grey, atol=1e-6)
    const = np.full((2, 24, 24, 3), 0.3, np.float32)
    for size in (32, 16, 24):
        np.testing.assert_allclose(resize_square(const, size), 0.3, atol=1e-5)
        assert resize_square(const, size).shape == (2, size, size, 3)


@pytest.mark.slow
def test_sampler_refiner_refines_the_target_views_deterministically(refiner):
    req = request()
    out = refiner(req)
    assert out.shape == req.rgb.shape and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    # the input view is never a target: returned as rendered; the others are new images
    np.testing.assert_array_equal(out[0], req.rgb[0])
    for v in (1, 2):
        assert np.abs(out[v] - req.rgb[v]).mean() > 0.01, v
    # the same seed, the same refinement (twice through the same loaded sampler)
    np.testing.assert_array_equal(refiner(req), out)
    # only the requested views change
    only = request()
    only.views = np.array([0, 2])
    part = refiner(only)
    np.testing.assert_array_equal(part[:2], only.rgb[:2])
    assert np.abs(part[2] - only.rgb[2]).mean() > 0.01
    # nothing to denoise at the last step: the renders come back unchanged
    np.testing.assert_array_equal(refiner(request(start_step=4)), request().rgb)


class EchoSampler:
    """A stand-in NovelViewSampler whose `generate` returns the images it starts from (on white)."""

    def __init__(self, resolution: int) -> None:
        self.cfg = load_profile("demo", [f"sample.resolution={resolution}"])
        self.calls: list[dict] = []

    def generate(self, rgba, cams, **kw):
        self.calls.append({"rgba": rgba, "cams": cams, **kw})
        return kw["init_images"][..., :3]


def test_refine_with_passes_renders_cameras_and_schedule_and_maps_back():
    """The adapter alone: the renders go to the sampler on white at its resolution, with the target views'
    relative cameras and the request's schedule, and an echo comes back as the renders on their grey."""
    from fit4d.refine import refine_with

    req = request(background=0.25)
    echo = EchoSampler(H)
    out = refine_with(echo, req, seed=5)
    (call,) = echo.calls
    assert call["start_step"] == 2 and call["num_steps"] == 4 and call["seed"] == 5
    assert call["input_elevation_deg"] == 0.0
    assert call["cams"].azimuth_deg == (90.0, 200.0) and call["cams"].elevation_deg == (0.0, 20.0)
    # the input video is composited on white, opaque for the encoders
    assert call["rgba"].shape == (F, H, H, 4) and np.all(call["rgba"][..., 3] == 255)
    assert np.all(call["rgba"][0, 0, 0, :3] == 255)  # background pixel: white, not the 0.25 grey
    np.testing.assert_allclose(out, req.rgb, atol=0.5 / 255 + 1e-6)  # uint8 on the way, nothing else
    # a sampler at another resolution: resized there and back
    echo32 = EchoSampler(RES)
    out32 = refine_with(echo32, req)
    assert echo32.calls[0]["init_images"].shape == (V - 1, F, RES, RES, 3)
    assert out32.shape == req.rgb.shape
    assert np.abs(out32 - req.rgb).mean() < 0.03


@pytest.mark.slow
def test_the_sampler_starts_from_the_encoded_renders(refiner_cfg):
    """On the real (tiny) network: started at the last step (sigma_min) the sampled latents are the encoded
    init images within the one last denoising step; from pure noise they are not."""
    from model.novel_cameras import CameraSet
    from model.novel_views import NovelViewSampler

    torch.set_num_threads(1)
    sampler = NovelViewSampler(refiner_cfg)
    rng = np.random.default_rng(2)
    cond = rng.integers(0, 256, (4, RES, RES, 4), dtype=np.uint8)
    init = rng.integers(0, 256, (2, 4, RES, RES, 3), dtype=np.uint8)
    cams = CameraSet((0.0, 10.0), (90.0, 180.0))
    target = sampler._encode_views(init)
    late = sampler.generate_latents(cond, cams, init_images=init, start_step=3, num_steps=4)
    noise = sampler.generate_latents(cond, cams, init_images=init, start_step=0, num_steps=4)
    assert late.shape == target.shape == noise.shape
    err = (late - target).abs().mean().item()
    assert err < 0.05 * target.abs().mean().item() + 1e-3, err
    assert (noise - target).abs().mean().item() > 10 * err


@pytest.mark.slow
def test_short_fit_with_the_sampler_refiner_end_to_end(refiner):
    from fit4d.loop import fit
    from tests.fit4d.test_fit4d_fit import moving_sphere_video, tiny_cfg

    data = moving_sphere_video()
    seen: list[tuple[RefineRequest, np.ndarray]] = []

    def recording(req: RefineRequest) -> np.ndarray:
        out = refiner(req)
        seen.append((req, out))
        return out

    recording.__name__ = "sampler"
    torch.manual_seed(0)
    cfg = tiny_cfg(stage1_iters=12, static_iters=4, stage2_iters=3, refine_step=2, refine_num_steps=4)
    fitter, report = fit(data, cfg, refiner=recording)
    ((req, out),) = seen
    assert req.start_step == 2 and req.num_steps == 4 and req.input_alpha is not None
    train = [int(v) for v in req.views if v != data.input_view]
    assert train
    # stage 2's targets are the refined images for the training views, the real video for the input view
    np.testing.assert_allclose(fitter.rgb[train].cpu().numpy(), out[train], atol=1e-6)
    assert torch.equal(fitter.rgb[data.input_view], torch.from_numpy(data.rgb[data.input_view]))
    assert not np.allclose(out[train], data.rgb[train], atol=0.02)
    s2 = report["stages"]["stage2"]
    assert s2["refiner"] == "sampler" and s2["iterations"] == 3
    assert all(np.isfinite(r["total"]) for r in s2["losses"])


@pytest.mark.slow
def test_fit4d_command_with_refiner_sampler(refiner_cfg, tmp_path):
    """`python -m fit4d.run SHARD --set fit4d.refiner=sampler`: the network and encoders come from the
    `sample` section, stage 2 reports the sampler as its refiner."""
    import json

    from fit4d.run import main
    from shards.render_schema import RenderSample, encode_render_sample
    from shards.writer import ShardWriter
    from tests.fit4d.test_fit4d_fit import moving_sphere_video

    data = moving_sphere_video()
    imgs = (np.concatenate([data.rgb, data.alpha[..., None]], -1) * 255).round().astype(np.uint8)
    nv, nf, h = imgs.shape[:3]
    meta = {"uid": "sphere", "mode": "4d", "resolution": h, "num_views": nv, "num_frames": nf}
    meta |= {"orbits": ["static"], "fov_deg": 40.0}
    angles = np.zeros((nv, 3), np.float32)
    angles[:, 1] = np.arange(nv) * 360.0 / nv
    shard = tmp_path / "shard-000000.tar"
    with ShardWriter(shard) as w:
        w.write(
            encode_render_sample(
                RenderSample(
                    "sphere", {"static": imgs}, {"static": data.c2w}, {"static": angles}, data.K, meta
                )
            )
        )
    sets = [
        f"out_dir={refiner_cfg.out_dir}",
        f"encode.tiny_dir={refiner_cfg.encode.tiny_dir}",
        f"sample.resolution={RES}",
        "sample.progress=false",
        "sample.device=cpu",
        "fit4d.refiner=sampler",
        "fit4d.refine_step=2",
        "fit4d.refine_num_steps=4",
        "fit4d.nerf.num_levels=4",
        "fit4d.nerf.log2_hashmap_size=10",
        "fit4d.nerf.max_resolution=32",
        "fit4d.nerf.hidden_dim=16",
        "fit4d.render.num_samples=16",
        "fit4d.patch_size=8",
        "fit4d.stage1_iters=4",
        "fit4d.static_iters=2",
        "fit4d.stage2_iters=2",
        "fit4d.export_resolution=16",
        "fit4d.export_threshold=1.0",
        "fit4d.video_views=2",
        "fit4d.progress=false",
        "fit4d.device=cpu",
        "fit4d.render.occupancy_warmup=100",
    ]
    out = tmp_path / "fit"
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only wait on a shared 2-core machine
    try:
        assert main([str(shard), "--out", str(out)] + [x for s in sets for x in ("--set", s)]) == 0
    finally:
        torch.set_num_threads(before)
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert row["status"] == "done", row
    s2 = json.loads((out / "sphere" / "report.json").read_text())["stages"]["stage2"]
    assert s2["refiner"] == "sampler" and s2["iterations"] == 2 and s2["refine_seconds"] > 0
