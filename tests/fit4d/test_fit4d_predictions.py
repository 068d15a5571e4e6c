"""The evaluation export: a known field rendered at a render sample's own cameras lands in the evaluation's
layout, at the ground truth's size, on white, each frame at its own time, and the evaluation reads it back
with the training views recorded."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from evaluation.inputs import PREDICTION_NAME, read_prediction, read_prediction_views
from fit4d.cameras import image_rays
from fit4d.data import fit_input_from_views
from fit4d.export.predictions import (
    export_predictions,
    prediction_cameras,
    render_on_white,
    render_predictions,
    training_views,
)
from fit4d.loop import Fitter
from fit4d.occupancy import OccupancyGrid
from fit4d.rendering import render_rays
from profiles.load import load_profile
from shards.cameras import c2w_opencv
from shards.render_schema import RenderSample

V, F, GT, FIT = 3, 3, 20, 8
"""Views and frames of the sample; the ground truth's side (20 px) differs from the fit's (8 px)."""
FOCAL = 20.0


class TimeColouredSphere(nn.Module):
    """Opaque sphere (r 0.25, sigma 1000) at the origin whose colour is (1 - t, t, 0) at time t."""

    dynamic = True

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = 1000.0 * (x.norm(dim=-1) < 0.25).float()
        tt = t.reshape(-1, 1).expand(x.shape[0], 1)
        return sigma, torch.cat([1 - tt, tt, torch.zeros_like(tt)], -1)


def render_sample(num_frames: int = F) -> RenderSample:
    c2w = np.stack([c2w_opencv(10.0, 120.0 * v, 2.0) for v in range(V)]).astype(np.float32)
    K = np.array([[FOCAL, 0, GT / 2], [0, FOCAL, GT / 2], [0, 0, 1]], np.float32)
    meta = {
        "uid": "ball",
        "mode": "4d",
        "resolution": GT,
        "num_views": V,
        "num_frames": num_frames,
        "orbits": ["static"],
        "fov_deg": 53.0,
    }
    images = np.zeros((V, num_frames, GT, GT, 4), np.uint8)
    angles = np.tile(np.array([[10.0, 0.0, 2.0]], np.float32), (V, 1))
    return RenderSample("ball", {"static": images}, {"static": c2w}, {"static": angles}, K, meta)


@pytest.fixture
def fitter() -> Fitter:
    """A Fitter at 8x8 whose field is the known sphere; the fit renders on black (background 0)."""
    sample = render_sample()
    cfg = load_profile(
        "demo",
        [
            "fit4d.device=cpu",
            "fit4d.progress=false",
            "fit4d.patch_size=4",
            "fit4d.render.num_samples=64",
            "fit4d.render.background=0.0",
            "fit4d.train_views=[0,2]",
        ],
    ).fit4d
    K8 = sample.intrinsics.copy()
    K8[:2] *= FIT / GT
    views = [np.zeros((F, FIT, FIT, 4), np.uint8) for _ in range(V)]
    data = fit_input_from_views("ball", views, sample.c2w["static"], K8, background=0.0)
    fitter = Fitter(data, cfg, "cpu")
    fitter.model = fitter.field_fn = TimeColouredSphere()
    return fitter


def test_known_field_renders_to_the_expected_files_and_sizes(fitter, tmp_path):
    sample = render_sample()
    folder = tmp_path / "predictions" / "fit4d" / "ball"
    info = export_predictions(fitter, sample, folder, "static", views=[0, 2], frames=[])
    expected = {PREDICTION_NAME.format(view=v, frame=f) for v in (0, 2) for f in range(F)}
    assert {p.name for p in folder.iterdir()} == expected | {"prediction.json"}
    assert not (folder.parent / "ball.partial").exists()
    centre, corner = (GT // 2, GT // 2), (0, 0)
    for v in (0, 2):
        for f in range(F):
            with Image.open(folder / PREDICTION_NAME.format(view=v, frame=f)) as im:
                assert im.mode == "RGB" and im.size == (GT, GT)  # the ground truth's size, not the fit's
                px = np.asarray(im).astype(int)
            t = f / (F - 1)
            # the sphere's colour at this frame's time, and white (not the fit's black) where it is absent
            np.testing.assert_allclose(px[centre], [255 * (1 - t), 255 * t, 0], atol=1)
            assert px[corner].tolist() == [255, 255, 255]
    record = json.loads((folder / "prediction.json").read_text())
    assert record["views"] == [0, 2] and record["frames"] == [0, 1, 2] and record["resolution"] == [GT, GT]
    assert info["training_views"] == record["training_views"] == [0, 2]  # fit4d.train_views [0, 2]
    assert record["fit_resolution"] == [FIT, FIT]
    # the evaluation reads the folder back as it reads any prediction
    pred = read_prediction(folder, [0, 2], [0, 1, 2], (GT, GT))
    assert pred.shape == (2, 3, GT, GT, 3)
    assert read_prediction_views(folder, [0, 1, 2]) == [0, 2]
    assert read_prediction_views(tmp_path, [0, 1]) is None  # no prediction.json: nothing known


def test_export_replaces_an_older_folder_whole(fitter, tmp_path):
    folder = tmp_path / "ball"
    folder.mkdir()
    (folder / PREDICTION_NAME.format(view=5, frame=5)).write_bytes(b"stale")
    export_predictions(fitter, render_sample(), folder, "static", views=[1], frames=[2])
    assert sorted(p.name for p in folder.iterdir()) == ["prediction.json", "v01.f02.png"]


class FuzzyBlobs(nn.Module):
    """Two soft, semi-transparent Gaussian blobs moving with t, colours varying in space: no sample's
    weight is negligible by construction, some rays saturate, some pass with transmittance left."""

    dynamic = True

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = torch.tensor([0.2, 0.0, 0.0]) + 0.2 * t * torch.tensor([0.0, 1.0, 0.0])
        c2 = torch.tensor([-0.3, 0.1, 0.1])
        sigma = 60.0 * torch.exp(-((x - c1) ** 2).sum(-1) / 0.02) + 8.0 * torch.exp(
            -((x - c2) ** 2).sum(-1) / 0.05
        )
        return sigma, torch.sigmoid(torch.cat([3 * x[:, :1], 3 * x[:, 1:2] + t, -x[:, 2:3]], -1))


def test_render_on_white_equals_render_rays_composited_on_white():
    torch.manual_seed(0)
    field = FuzzyBlobs()
    c2w = torch.from_numpy(c2w_opencv(20.0, 30.0, 2.0)).float()
    K = torch.tensor([[20.0, 0, 10], [0, 20.0, 10], [0, 0, 1]])
    o, d = image_rays(c2w, K, 20, 20)
    times = torch.linspace(0, 1, o.shape[0])
    grid = OccupancyGrid(8, 1.0, 0.5)
    grid.update(lambda x, t: field(x, t)[0], [0.0, 1.0])
    assert 0.0 < grid.grid.float().mean() < 0.5  # empty space to skip, and some to render
    for occupied in (None, grid):
        ref = render_rays(field, o, d, times, 1.0, 48, occupied=occupied, background=0.3)
        ref_white = ref["rgb"] + (1 - ref["opacity"])[:, None] * 0.7  # the same ray on white
        assert (ref["opacity"] > 0.999).any() and ((ref["opacity"] > 0.05) & (ref["opacity"] < 0.9)).any()
        # small segments and field calls of 100 points: every batching path, the same values
        got = render_on_white(field, o, d, times, 1.0, 48, occupied, segment=5, max_points=100)
        torch.testing.assert_close(got, ref_white, atol=2e-4, rtol=0)
        # without early termination it is the same sum, term for term
        exact = render_on_white(field, o, d, times, 1.0, 48, occupied, min_transmittance=0.0)
        torch.testing.assert_close(exact, ref_white, atol=1e-5, rtol=0)


def test_batched_predictions_equal_one_render_per_image(fitter):
    # the fit renders on black (background 0); the predictions are on white, at the ground truth's size
    fitter.model = fitter.field_fn = FuzzyBlobs()
    fitter.occupancy.update(lambda x, t: fitter.model(x, t)[0], [0.0, 0.5, 1.0])
    cams = prediction_cameras(render_sample(), "static", views=[2, 0], frames=[1, 2])
    got = render_predictions(fitter, cams)
    assert got.shape == (2, 2, GT, GT, 3) and got.dtype == np.uint8
    for i in range(2):
        for j, f in enumerate(cams.frames):
            r = fitter.render_image(
                torch.from_numpy(cams.c2w[i]), f / (F - 1), GT, GT, torch.from_numpy(cams.K)
            )
            white = r["rgb"] + (1 - r["opacity"])[..., None]
            ref = (white.clamp(0, 1) * 255).round().byte().numpy()
            assert np.abs(got[i, j].astype(int) - ref).max() <= 1


def test_frames_must_line_up_and_indices_stay_in_range():
    cams = prediction_cameras(render_sample(num_frames=4), "static")
    assert cams.views == [0, 1, 2] and cams.frames == [0, 1, 2, 3] and cams.c2w.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="the fit has 3 frames, the evaluated orbit 'static' has 4"):
        render_predictions(SimpleNamespace(num_frames=3), cams)
    with pytest.raises(ValueError, match=r"evaluation.views \[3\] out of range"):
        prediction_cameras(render_sample(), "static", views=[0, 3])
    with pytest.raises(ValueError, match="no cameras of the evaluated orbit 'dynamic'"):
        prediction_cameras(render_sample(), "dynamic")


def test_training_views_are_only_those_of_the_fitted_orbit():
    cams = prediction_cameras(render_sample(), "static", views=[0, 1])
    assert training_views(cams, "static", [1, 2]) == [1]
    assert training_views(cams, "dynamic", [0, 1, 2]) == []  # other cameras: every evaluated view held out
