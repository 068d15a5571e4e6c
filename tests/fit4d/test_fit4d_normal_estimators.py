"""Omnidata's DPT-Hybrid normal estimator: the official checkpoint layout, loading a checkpoint in the
official format, the camera -> world convention on an analytic sphere, and the stage-2 wiring."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fit4d.cameras import image_rays
from fit4d.loop import Fitter, fit
from fit4d.normal_estimators import (
    OmnidataNormalEstimator,
    camera_to_world_normals,
    decode_omnidata,
    video_normal_targets,
)
from model.omnidata_dpt import (
    OmnidataCheckpointError,
    OmnidataDPT,
    OmnidataDPTConfig,
    load_omnidata_dpt,
    tiny_omnidata_config,
)
from shards.cameras import c2w_opencv
from tests.fit4d.test_fit4d_fit import moving_sphere_video, tiny_cfg

KEYS = Path(__file__).parent / "data" / "omnidata_dpt_normal_v2_keys.txt"


def official_layout() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split()
            rows.append((key, tuple(int(s) for s in shape.split("x"))))
    return rows


def test_full_size_layout_equals_the_official_checkpoint():
    with torch.device("meta"):
        model = OmnidataDPT()
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    official = official_layout()
    assert dict(ours) == dict(official)
    assert [k for k, _ in ours] == [k for k, _ in official]
    assert sum(int(np.prod(s)) for _, s in official) == 123_147_051  # DPT-Hybrid: 123 M parameters


def save_official_format(model: OmnidataDPT, path: Path, **extra) -> None:
    """A Lightning-style checkpoint as the official file: `state_dict` with the `model.` prefix."""
    sd = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 7, "global_step": 1234, **extra}, path)


@pytest.fixture(scope="module")
def tiny_model() -> OmnidataDPT:
    torch.manual_seed(0)
    model = OmnidataDPT(tiny_omnidata_config()).eval()
    # the head ends in ReLU; shift its last bias so random weights give non-zero normals
    with torch.no_grad():
        model.scratch.output_conv[4].bias.add_(0.5)
    return model


def test_a_tiny_checkpoint_in_the_official_format_loads_through_the_loader(tiny_model, tmp_path):
    cfg = tiny_omnidata_config()
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        want = tiny_model(x)
    # a Lightning checkpoint also pickles hyper-parameter objects the safe unpickler refuses
    path = tmp_path / "omnidata_dpt_normal_v2.ckpt"
    save_official_format(tiny_model, path, hyper_parameters=argparse.Namespace(lr=1e-4))
    loaded = load_omnidata_dpt(path, cfg)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(x), want)
    # a bare state dict (the official demo's other branch) loads too
    torch.save(tiny_model.state_dict(), tmp_path / "bare.pt")
    with torch.no_grad():
        assert torch.equal(load_omnidata_dpt(tmp_path / "bare.pt", cfg)(x), want)


def test_a_checkpoint_of_another_layout_is_a_one_line_error(tiny_model, tmp_path):
    cfg = tiny_omnidata_config()
    path = tmp_path / "tiny.ckpt"
    save_official_format(tiny_model, path)
    with pytest.raises(OmnidataCheckpointError) as err:
        load_omnidata_dpt(path, OmnidataDPTConfig())  # the full-size layout
    assert "\n" not in str(err.value) and "of another shape" in str(err.value)
    sd = {f"model.{k}": v for k, v in tiny_model.state_dict().items() if "refinenet2" not in k}
    torch.save({"state_dict": sd}, path)
    with pytest.raises(OmnidataCheckpointError, match=r"10 missing \['scratch.refinenet2"):
        load_omnidata_dpt(path, cfg)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(OmnidataCheckpointError, match="cannot be read"):
        load_omnidata_dpt(tmp_path / "junk.ckpt", cfg)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_omnidata_dpt(tmp_path / "nope.ckpt", cfg)


def test_the_hooked_vit_tokens_are_timms_own_intermediates(tiny_model):
    """Our forward of the hybrid ViT (class token, position embedding, blocks) equals timm's."""
    cfg = tiny_model.config
    x = torch.rand(2, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        _, _, layer3, layer4 = tiny_model.encode(x)
        inter = tiny_model.pretrained.model.forward_intermediates(
            x, indices=list(cfg.hooks), return_prefix_tokens=True, output_fmt="NLC", intermediates_only=True
        )
        grid = cfg.image_size // 16
        for post, (spatial, prefix), ours in zip(
            (tiny_model.pretrained.act_postprocess3, tiny_model.pretrained.act_postprocess4),
            inter,
            (layer3, layer4),
            strict=True,
        ):
            tokens = torch.cat([prefix, spatial], 1)
            want = post[3:](OmnidataDPT.tokens_to_image(post[0](tokens), grid, grid))
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    assert layer3.shape[-1] == grid and layer4.shape[-1] == grid // 2


def test_decoding_follows_the_official_demo_colours_in_opencv_camera_axes():
    """Colours of the official demo output (test1_normal.png) decode to OpenCV camera axes: the floor
    (0.5, 0, 0.5) is up (-y); seen by a level camera, that is world +Z."""
    colours = torch.tensor([[0.5, 0.0, 0.5], [1.0, 0.5, 0.5], [0.5, 0.5, 0.0]])
    cam = decode_omnidata(colours)
    torch.testing.assert_close(cam, torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]))
    c2w = torch.from_numpy(c2w_opencv(0.0, 30.0, 2.0)).float()
    world = camera_to_world_normals(cam[None, None], c2w[None])[0, 0]
    torch.testing.assert_close(world[0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    # the surface facing the camera points back at it
    towards = c2w[:3, 3] / c2w[:3, 3].norm()
    torch.testing.assert_close(world[2], towards, atol=1e-6, rtol=0)


def sphere_view(c2w: np.ndarray, K: torch.Tensor, size: int, centre: torch.Tensor, radius: float):
    """Analytic ray/sphere hits of one camera: hit mask (H, W), world normals (H, W, 3) (zero off the
    sphere) and the exact camera-space normals a perfect estimator would predict."""
    c2w_t = torch.from_numpy(c2w).double()
    o, d = image_rays(c2w_t, K.double(), size, size)
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b**2 - ((oc * oc).sum(-1) - radius**2)
    hit = disc > 0
    t = -b - disc.clamp(min=0).sqrt()
    n_world = (o + t[:, None] * d - centre) / radius
    n_world = torch.where(hit[:, None], n_world, torch.zeros_like(n_world))
    n_cam = n_world @ c2w_t[:3, :3]  # R^T n, row-wise
    return hit.reshape(size, size), n_world.reshape(size, size, 3), n_cam.reshape(size, size, 3)


def test_camera_space_sphere_normals_convert_to_the_spheres_world_normals():
    size, radius = 24, 0.4
    centre = torch.tensor([0.1, -0.05, 0.08], dtype=torch.float64)
    K = torch.tensor([[30.0, 0, size / 2], [0, 30.0, size / 2], [0, 0, 1]])
    cams = [c2w_opencv(el, az, 2.0) for el, az in ((20.0, 0.0), (-10.0, 100.0), (45.0, 250.0))]
    hits, worlds, cam_normals = zip(*(sphere_view(c, K, size, centre, radius) for c in cams), strict=True)
    cam_normals = torch.stack(cam_normals).float()
    # a facing sphere has outward camera normals with z < 0 (OpenCV camera: z forward)
    assert torch.all(cam_normals[..., 2][torch.stack(hits)] < 1e-6)
    alpha = torch.stack(hits).float()[:, None]  # (V, F=1, H, W)
    rgb = torch.rand(3, 1, size, size, 3)
    calls = []

    def perfect(images: torch.Tensor) -> torch.Tensor:
        calls.append(images)
        return cam_normals[[0, 2]]  # views 0 and 2, frame 0

    c2w = torch.from_numpy(np.stack(cams)).float()
    targets = video_normal_targets(perfect, rgb, alpha, c2w, np.array([0, 2]))
    assert torch.equal(calls[0], rgb[[0, 2], 0])
    want = torch.stack(worlds).float()
    torch.testing.assert_close(targets[0, 0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(targets[2, 0], want[2], atol=1e-5, rtol=0)
    assert torch.all(targets[1] == 0)  # not a requested view
    assert torch.all(targets[0, 0][~hits[0]] == 0)  # background masked by alpha


class EchoNet(nn.Module):
    """Stands in for the network: returns its input image (so the estimator's normals are the decoded
    image), with the config and a parameter the estimator reads."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.config = OmnidataDPTConfig(image_size=size)
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == (self.config.image_size, self.config.image_size)
        return x


def test_the_estimator_resizes_pads_and_crops_back_in_place():
    """A smooth non-square image through the echo network comes back as its own decoding, pixel for pixel:
    the pad to a square, the resize to the network size and back, and the crop line up."""
    h, w = 40, 56
    rows, cols = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.2 + 0.6 * cols, 0.8 - 0.6 * rows, 0.3 + 0.2 * rows * cols], -1)
    est = OmnidataNormalEstimator(EchoNet(96), batch_size=2)
    out = est(torch.stack([img, img.flip(0), img.flip(1)]))
    want = decode_omnidata(torch.stack([img, img.flip(0), img.flip(1)]))
    assert out.shape == (3, h, w, 3)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, h, w))
    inner = (slice(None), slice(2, -2), slice(2, -2))  # bilinear edges aside
    torch.testing.assert_close(out[inner], want[inner], atol=5e-3, rtol=0)


def test_the_tiny_network_estimates_unit_normals_at_any_size(tiny_model):
    est = OmnidataNormalEstimator(tiny_model, batch_size=3)
    images = torch.rand(4, 20, 36, 3)
    out = est(images)
    assert out.shape == (4, 20, 36, 3) and torch.all(torch.isfinite(out))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4, 20, 36))
    # each image is estimated on its own: batches of 3 + 1 give what one image at a time gives
    torch.testing.assert_close(out[3], est(images[3:])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], est(images[1:2])[0], atol=1e-5, rtol=0)
    assert est(images[:0]).shape == (0, 20, 36, 3)


@pytest.fixture(scope="module")
def sphere_video():
    return moving_sphere_video()


def test_stage2_takes_its_normal_targets_from_the_estimator(sphere_video):
    """A stub estimator that sees every surface as facing its camera: stage 2's normal and visibility
    targets become -(camera forward) on the foreground of the refined training views."""
    seen: list[torch.Tensor] = []

    def facing(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        n = torch.zeros(*images.shape)
        n[..., 2] = -1.0
        return n

    def grey(req):
        return np.full_like(req.rgb, 0.5)

    sets = {"stage1_iters": 3, "static_iters": 1, "stage2_iters": 2, "train_views": [0, 1, 3]}
    cfg = tiny_cfg(**sets, **{"loss.normal": 1.0})
    fitter, report = fit(sphere_video, cfg, refiner=grey, normal_estimator=facing)
    V, F_ = sphere_video.num_views, sphere_video.num_frames
    assert len(seen) == 1 and seen[0].shape == (3 * F_, *sphere_video.resolution, 3)
    # the estimator ran on the stage-2 targets: the input view's video, the refined (grey) others
    assert torch.equal(seen[0][:F_], torch.from_numpy(sphere_video.rgb[0]))
    assert torch.all(seen[0][F_:] == 0.5)
    targets = fitter.normal_targets
    fg = torch.from_numpy(sphere_video.alpha) > 0.5
    for v in (0, 1, 3):
        forward = torch.from_numpy(sphere_video.c2w[v, :3, 2])
        torch.testing.assert_close(targets[v][fg[v]], (-forward).expand(int(fg[v].sum()), 3))
        assert torch.all(targets[v][~fg[v]] == 0)
    assert torch.all(targets[2] == 0)  # held out
    assert all("normal" in r for r in report["stages"]["stage2"]["losses"])
    assert report["normal_source"].startswith("facing on the stage-2 targets")
    assert V == 4


def test_omnidata_without_a_checkpoint_fails_at_startup_naming_the_setting(sphere_video, tmp_path):
    with pytest.raises(ValueError, match="fit4d.loss.omnidata_checkpoint") as err:
        tiny_cfg(**{"loss.normal_estimator": "omnidata"})
    assert "\n" not in str(err.value)
    cfg = tiny_cfg(
        **{"loss.normal_estimator": "omnidata", "loss.omnidata_checkpoint": str(tmp_path / "x.ckpt")}
    )
    with pytest.raises(FileNotFoundError, match="fit4d.loss.omnidata_checkpoint") as err:
        Fitter(sphere_video, cfg)
    assert "\n" not in str(err.value) and "x.ckpt" in str(err.value)


def test_the_configured_checkpoint_reaches_the_loader(sphere_video, tiny_model, tmp_path):
    """The config path loads the official (full-size) layout: a tiny file there is a one-line layout error."""
    path = tmp_path / "omnidata_dpt_normal_v2.ckpt"
    save_official_format(tiny_model, path)
    cfg = tiny_cfg(**{"loss.normal_estimator": "omnidata", "loss.omnidata_checkpoint": str(path)})
    with pytest.raises(OmnidataCheckpointError, match="not an Omnidata DPT-Hybrid checkpoint") as err:
        Fitter(sphere_video, cfg)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_the_nerf_estimator_keeps_the_stage1_normals(sphere_video):
    cfg = tiny_cfg(stage1_iters=3, static_iters=1, stage2_iters=1)
    fitter, report = fit(sphere_video, cfg)
    assert fitter.normal_estimator is None and fitter.normal_targets is not None
    assert report["normal_source"].startswith("stage-1 NeRF normals")
