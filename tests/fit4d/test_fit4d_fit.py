"""The two-stage loop on a tiny synthetic multi-view video: the loss falls, the static part fits frame 0
only, stage 2 takes its targets from the refiner, the command writes its outputs and manifest rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fit4d.cameras import image_rays
from fit4d.data import fit_input_from_views
from fit4d.loop import Fitter, fit
from fit4d.refine import RefineRequest, sampler_refiner
from fit4d.rendering import render_rays
from profiles.load import load_profile
from shards.cameras import c2w_opencv

V, F, H = 4, 3, 16


def tiny_cfg(**over):
    sets = [
        "fit4d.nerf.num_levels=4",
        "fit4d.nerf.log2_hashmap_size=10",
        "fit4d.nerf.base_resolution=4",
        "fit4d.nerf.max_resolution=32",
        "fit4d.nerf.hidden_dim=16",
        "fit4d.nerf.deform_hidden_dim=16",
        "fit4d.nerf.deform_layers=2",
        "fit4d.render.num_samples=24",
        "fit4d.render.occupancy_resolution=8",
        "fit4d.render.occupancy_warmup=4",
        "fit4d.render.occupancy_update_every=4",
        "fit4d.patch_size=8",
        "fit4d.frames_per_iter=2",
        "fit4d.progress=false",
        "fit4d.device=cpu",
        "fit4d.loss.visibility_start=5",
        "fit4d.stage1_iters=30",
        "fit4d.static_iters=10",
        "fit4d.stage2_iters=4",
    ]
    sets += [f"fit4d.{k}={v}" for k, v in over.items()]
    return load_profile("demo", sets).fit4d


def moving_sphere_video():
    """A red sphere (r 0.3) moving along +y over F frames, V cameras on an orbit: RGBA uint8 per view."""
    K = torch.tensor([[20.0, 0, H / 2], [0, 20.0, H / 2], [0, 0, 1]])
    c2w = np.stack([c2w_opencv(15.0, 360.0 * v / V, 2.0) for v in range(V)]).astype(np.float32)
    views = []
    for v in range(V):
        frames = []
        for f in range(F):
            centre = torch.tensor([0.0, 0.1 * f, 0.0])

            def field(x, t, centre=centre):
                inside = ((x - centre).norm(dim=-1) < 0.3).float()
                return 200 * inside, torch.tensor([0.9, 0.1, 0.1]).expand(x.shape[0], 3)

            o, d = image_rays(torch.from_numpy(c2w[v]), K, H, H)
            out = render_rays(field, o, d, torch.zeros(len(o)), 0.6, 256, background=0.0)
            rgba = torch.cat([out["rgb"], out["opacity"][:, None]], -1).clamp(0, 1)
            rgba[:, :3] = torch.where(
                out["opacity"][:, None] > 0, rgba[:, :3] / out["opacity"][:, None].clamp(min=1e-6), 0
            )
            frames.append((rgba.reshape(H, H, 4).numpy() * 255).round().astype(np.uint8))
        views.append(np.stack(frames))
    return fit_input_from_views("sphere", views, c2w, K.numpy())


COMMAND_SETS = [
    "fit4d.nerf.num_levels=4",
    "fit4d.nerf.log2_hashmap_size=10",
    "fit4d.nerf.max_resolution=32",
    "fit4d.nerf.hidden_dim=16",
    "fit4d.render.num_samples=16",
    "fit4d.patch_size=8",
    "fit4d.stage1_iters=6",
    "fit4d.static_iters=2",
    "fit4d.stage2_iters=2",
    "fit4d.export_resolution=24",
    "fit4d.export_threshold=1.0",
    "fit4d.video_views=4",
    "fit4d.progress=false",
    "fit4d.device=cpu",
    "fit4d.render.occupancy_warmup=100",
]


@pytest.fixture(scope="module")
def sphere_video():
    return moving_sphere_video()


@pytest.mark.slow
def test_two_stage_fit_lowers_the_loss_and_stage2_uses_refined_targets(sphere_video):
    calls: list[RefineRequest] = []

    def grey_refiner(req: RefineRequest) -> np.ndarray:
        calls.append(req)
        return np.full_like(req.rgb, 0.5)

    torch.manual_seed(0)
    fitter, report = fit(sphere_video, tiny_cfg(), refiner=grey_refiner)
    s1 = report["stages"]["stage1"]["losses"]
    first = np.mean([r["total"] for r in s1[:5]])
    last = np.mean([r["total"] for r in s1[-5:]])
    assert last < 0.75 * first, (first, last)
    # the refiner saw every view and frame rendered from the stage-1 NeRF, relative to the input view
    assert len(calls) == 1 and calls[0].rgb.shape == (V, F, H, H, 3)
    assert calls[0].azimuth_deg[0] == 0.0 and calls[0].azimuth_deg[1] == pytest.approx(90.0, abs=1e-3)
    # the input view keeps its real video, every other view now has the refined (grey) target
    assert torch.equal(fitter.rgb[0], torch.from_numpy(sphere_video.rgb[0]))
    assert torch.all(fitter.rgb[1:] == 0.5)
    assert report["stages"]["stage2"]["iterations"] == 4 and fitter.normal_targets is not None


def test_static_part_fits_frame_zero_with_the_deformation_frozen(sphere_video):
    fitter = Fitter(sphere_video, tiny_cfg())
    for it in range(3):
        views, frames = fitter.sample_batch(it, 10, static=True)
        assert set(frames.tolist()) == {0}
        fitter.step(views, frames, static=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in fitter.model.deformation.parameters())
    assert torch.equal(
        fitter.model.deformation.net[-1].weight, torch.zeros_like(fitter.model.deformation.net[-1].weight)
    )


def test_iteration_records_count_the_samples_the_field_ran_on(sphere_video):
    """`samples` in each loss record: whole rays while the occupancy grid is all occupied (every ray through
    the box has num_samples), fewer once half the grid is empty."""
    fitter = Fitter(sphere_video, tiny_cfg())
    views, frames = fitter.sample_batch(0, 10, static=True)
    full = fitter.step(views, frames, static=True)["samples"]
    rays = len(views) * fitter.cfg.patch_size**2
    assert full % fitter.cfg.render.num_samples == 0 and 0 < full <= rays * fitter.cfg.render.num_samples
    fitter.occupancy.grid[: fitter.occupancy.resolution // 2] = False
    half = fitter.step(views, frames, static=True)["samples"]
    assert 0 < half < full


def test_progressive_window_starts_at_the_first_frames(sphere_video):
    fitter = Fitter(sphere_video, tiny_cfg(window_start=1, frames_per_iter=3))
    views, frames = fitter.sample_batch(0, 100, static=False)
    assert set(frames.tolist()) == {0}
    views, frames = fitter.sample_batch(100, 100, static=False)
    assert set(frames.tolist()) == {0, 1, 2}
    assert len(set(views.tolist())) == 4  # orthogonal views of a 4-view orbit: all of them


def test_sampler_refiner_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="set sample.checkpoint"):
        sampler_refiner(load_profile("demo", [f"out_dir={tmp_path}"]))


def test_bad_config_values_are_rejected(sphere_video):
    from profiles.loader import ConfigError

    with pytest.raises(ConfigError, match="static_iters"):
        tiny_cfg(static_iters=100)
    with pytest.raises(ConfigError, match="unknown key fit4d.nerf.levels"):
        load_profile("demo", ["fit4d.nerf.levels=3"])
    with pytest.raises(ValueError, match="patch_size 32 exceeds"):
        Fitter(sphere_video, tiny_cfg(patch_size=32))
    with pytest.raises(FileNotFoundError, match="fit4d.loss.lpips_backbone_path"):
        Fitter(
            sphere_video, tiny_cfg(**{"loss.lpips": 1.0, "loss.lpips_backbone_path": "/nonexistent/vgg.pth"})
        )


@pytest.mark.slow
def write_sphere_shard(video, path):
    """A render shard with the sphere video ("sphere") and a copy with a corrupt PNG ("broken")."""
    from shards.render_schema import RenderSample, encode_render_sample
    from shards.writer import ShardWriter

    rgba = np.concatenate([video.rgb, video.alpha[..., None]], -1)
    imgs = (rgba * 255).round().astype(np.uint8)
    meta = {
        "uid": "sphere",
        "mode": "4d",
        "resolution": H,
        "num_views": V,
        "num_frames": F,
        "orbits": ["static"],
        "fov_deg": 40.0,
    }
    angles = np.zeros((V, 3), np.float32)
    with ShardWriter(path) as w:
        w.write(
            encode_render_sample(
                RenderSample(
                    "sphere",
                    {"static": imgs},
                    {"static": video.c2w},
                    {"static": angles},
                    video.K,
                    meta,
                )
            )
        )
        bad = dict(
            encode_render_sample(
                RenderSample(
                    "broken",
                    {"static": imgs},
                    {"static": video.c2w},
                    {"static": angles},
                    video.K,
                    {**meta, "uid": "broken"},
                )
            )
        )
        bad["static.v01.f01.png"] = b"not a png"
        w.write(bad)
    return path


def test_command_writes_outputs_manifest_and_resumes(sphere_video, tmp_path):
    from fit4d.run import main

    shard = write_sphere_shard(sphere_video, tmp_path / "shard-000000.tar")
    out = tmp_path / "fit"
    # out_dir: the evaluation predictions go under it
    sets = [*COMMAND_SETS, f"out_dir={tmp_path}"]
    args = [str(shard), "--out", str(out)] + [x for s in sets for x in ("--set", s)]
    assert main(args) == 0
    rows = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert rows["sphere"]["status"] == "done"
    assert rows["broken"]["status"] == "failed" and "not a readable PNG" in rows["broken"]["reason"]
    done = out / "sphere"
    for name in (
        "nerf.pt",
        "asset_morph.glb",
        "asset_frames.glb",
        "orbit_rgb.mp4",
        "orbit_normal.mp4",
        "report.json",
        "done.json",
        "meshes/frame_002.ply",
    ):
        assert (done / name).is_file(), name
    report = json.loads((done / "report.json").read_text())
    assert 0 < report["export"]["surface_level"] <= 1.0  # 6 iterations stay thin: the level adapts
    assert set(report["stages"]) == {"stage1", "stage2"} and len(report["stages"]["stage1"]["losses"]) == 6
    import imageio.v3 as iio

    assert iio.imread(done / "orbit_rgb.mp4").shape[0] == 4
    # the fit at the evaluated cameras (the demo's evaluation: every view and frame of the static orbit)
    pred = tmp_path / "predictions" / "fit4d" / "sphere"
    assert rows["sphere"]["predictions"] == str(pred)
    assert len(list(pred.glob("v*.f*.png"))) == V * F and iio.imread(pred / "v03.f02.png").shape == (H, H, 3)
    assert json.loads((pred / "prediction.json").read_text())["training_views"] == list(range(V))
    assert not (tmp_path / "predictions" / "fit4d" / "broken").exists()
    assert main(args) == 0  # resumes: the finished sample is skipped, the manifest keeps its done row
    rows = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert rows["sphere"]["status"] == "done"


def test_command_fits_a_generated_sample_and_puts_its_global_motion_back(sphere_video, tmp_path):
    """model.sample's generated.tar as input: the fit runs and both GLBs carry the crop boxes' translation."""
    import pygltflib

    from fit4d.data import crop_translations
    from fit4d.export.gltf import to_gltf_axes
    from fit4d.run import main
    from shards.generated_schema import GeneratedSample, encode_generated_sample
    from shards.writer import ShardWriter
    from tests.gltf_assets import read_accessor

    rgba = np.concatenate([sphere_video.rgb, sphere_video.alpha[..., None]], -1)
    boxes = np.array([[10 + 6 * f, 20 - 3 * f, 70 + 6 * f, 80 - 3 * f] for f in range(F)], np.float32)
    sample = GeneratedSample(
        key="clip",
        images=(rgba * 255).round().astype(np.uint8),
        c2w=sphere_video.c2w,
        angles=np.zeros((V, 3), np.float32),
        intrinsics=sphere_video.K,
        crop_boxes=boxes,
        source_frames=np.arange(F, dtype=np.float32),
        meta={"uid": "clip", "fov_deg": 43.6, "input_view": 1, "checkpoint": "ck", "seed": 0},
    )
    path = tmp_path / "generated.tar"
    with ShardWriter(path) as w:
        w.write(encode_generated_sample(sample))
    out = tmp_path / "fit"
    sets = [*COMMAND_SETS, f"out_dir={tmp_path}"]
    assert main([str(path), "--out", str(out)] + [x for s in sets for x in ("--set", s)]) == 0
    row = json.loads((out / "manifest.jsonl").read_text())
    assert row["key"] == "clip" and row["status"] == "done", row
    # generated views carry no ground-truth orbit: the fit stands, the row says why it has no predictions
    assert "not a render sample" in row["predictions_reason"]
    assert not (tmp_path / "predictions").exists()
    expected = to_gltf_axes(crop_translations(boxes, sphere_video.c2w[1], sphere_video.K, H))
    assert np.abs(expected).max() > 0.05
    for name in ("asset_morph.glb", "asset_frames.glb"):
        g = pygltflib.GLTF2().load(str(out / "clip" / name))
        (channel,) = [c for c in g.animations[0].channels if c.target.path == "translation"]
        assert channel.target.node == 0
        got = read_accessor(g, g.animations[0].samplers[channel.sampler].output)
        assert np.allclose(got, expected, atol=1e-6), name


@pytest.mark.slow
def test_command_runs_samples_as_ray_tasks(sphere_video, tmp_path):
    """--workers: the same manifest through local Ray tasks; a bad sample is a failed row, the job goes on."""
    import ray

    from fit4d.run import main

    shard = write_sphere_shard(sphere_video, tmp_path / "shard-000000.tar")
    out = tmp_path / "fit"
    sets = [*COMMAND_SETS, f"out_dir={tmp_path}"]
    args = [str(shard), "--out", str(out), "--workers", "2"] + [x for s in sets for x in ("--set", s)]
    try:
        assert main(args) == 0
    finally:
        ray.shutdown()
    rows = {r["key"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert rows["sphere"]["status"] == "done" and (out / "sphere" / "asset_morph.glb").is_file()
    assert rows["broken"]["status"] == "failed" and "not a readable PNG" in rows["broken"]["reason"]


@pytest.mark.slow
def test_lpips_loads_a_local_vgg16_state_dict(tmp_path):
    """The LPIPS backbone comes from a configured torchvision vgg16 file (random weights: no download)."""
    import torchvision

    from fit4d.losses import LPIPSLoss

    path = tmp_path / "vgg16.pth"
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    loss = LPIPSLoss(str(path))
    a = torch.rand(2, 32, 32, 3)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(a, torch.rand(2, 32, 32, 3)).item() > 0
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        LPIPSLoss(str(tmp_path / "bad.pth"))


def test_geometry_losses_backpropagate_through_analytic_normals(sphere_video):
    """The normal and bilateral-smoothness losses are differentiable (double backward through the hash
    grid) and reach the hash table."""
    cfg = tiny_cfg(**{"loss.normal": 1.0, "loss.normal_smoothness": 1.0, "loss.mse": 0.0, "loss.mask": 0.0})
    fitter = Fitter(sphere_video, cfg)
    fitter.normal_targets = torch.zeros(V, F, H, H, 3)
    fitter.normal_targets[..., 2] = 1.0
    fitter.stage = "stage2"
    views, frames = fitter.sample_batch(0, 10, static=False)
    record = fitter.step(views, frames)
    assert {"normal", "normal_smoothness"} <= set(record) and "mse" not in record
    assert all(np.isfinite(v) for v in record.values())
    # only the normal losses are on: a non-zero table gradient has come through the double backward
    assert fitter.model.encoding.table.grad.abs().sum() > 0
