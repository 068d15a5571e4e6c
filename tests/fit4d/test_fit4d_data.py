"""fit4d inputs: bad multi-view videos stop with one clear line; good ones load through shards/ readers."""

from __future__ import annotations

import numpy as np
import pytest

from fit4d.data import FitInputError, fit_input_from_render_sample, fit_input_from_views, read_render_sample
from shards.cameras import c2w_opencv
from shards.render_schema import RenderSample, encode_render_sample
from shards.writer import ShardWriter


def views(v=3, f=2, h=8, w=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (f, h, w, 4), dtype=np.uint8) for _ in range(v)]


def cams(v=3):
    return np.stack([c2w_opencv(10.0, 360.0 * i / v, 2.0) for i in range(v)]).astype(np.float32)


K = np.array([[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]], np.float32)


def test_good_input_composites_on_the_background():
    vids = views()
    vids[0][0, 0, 0] = [255, 0, 0, 0]  # fully transparent red: must become the background
    vids[0][0, 0, 1] = [0, 0, 255, 255]
    data = fit_input_from_views("a", vids, cams(), K, background=1.0)
    assert data.rgb.shape == (3, 2, 8, 8, 3) and data.alpha.shape == (3, 2, 8, 8)
    assert data.rgb[0, 0, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert data.rgb[0, 0, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_resize_scales_intrinsics_and_keeps_a_uniform_image():
    vids = [np.full((1, 16, 16, 4), 255, np.uint8)] * 2
    vids = [v.copy() for v in vids]
    vids[0][..., :3] = [10, 20, 30]
    data = fit_input_from_views("a", vids, cams(2), K * np.array([[2], [2], [1]], np.float32), resolution=8)
    assert data.rgb.shape == (2, 1, 8, 8, 3)
    np.testing.assert_allclose(data.K, K)
    np.testing.assert_allclose(
        data.rgb[0, 0], np.broadcast_to(np.array([10, 20, 30]) / 255, (8, 8, 3)), atol=1e-6
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda v, c, k: (v, None, k), "missing cameras"),
        (lambda v, c, k: (v, c, None), "missing intrinsics"),
        (lambda v, c, k: (v, c[:2], k), r"c2w has shape \(2, 4, 4\), expected \(3, 4, 4\)"),
        (lambda v, c, k: ([v[0], v[1][:, :4], v[2]], c, k), "view 1 images are 4x8, view 0's 8x8"),
        (lambda v, c, k: ([v[0], v[1], v[2][:1]], c, k), "view 2 has 1 frames, view 0 has 2: frames missing"),
        (lambda v, c, k: ([v[0][..., :3], v[1], v[2]], c, k), "expected \\(frames, H, W, 4\\) RGBA"),
        (lambda v, c, k: (v, np.full_like(c, np.nan), k), "NaN"),
        (lambda v, c, k: (v, c, np.zeros((3, 3), np.float32)), "positive focal"),
        (lambda v, c, k: ([], c, k), "no views"),
    ],
)
def test_bad_inputs_give_clear_errors(mutate, message):
    v, c, k = mutate(views(), cams(), K)
    with pytest.raises(FitInputError, match=message):
        fit_input_from_views("obj", v, c, k)


def test_render_sample_from_a_shard(tmp_path):
    imgs = np.stack(views(3, 2)).astype(np.uint8)
    meta = {
        "uid": "obj1",
        "mode": "4d",
        "resolution": 8,
        "num_views": 3,
        "num_frames": 2,
        "orbits": ["static"],
        "fov_deg": 40.0,
    }
    angles = np.tile(np.array([[10.0, 0.0, 2.0]], np.float32), (3, 1))
    sample = RenderSample("obj1", {"static": imgs}, {"static": cams()}, {"static": angles}, K, meta)
    path = tmp_path / "shard-000000.tar"
    with ShardWriter(path) as w:
        w.write(encode_render_sample(sample))
    got = read_render_sample(path)
    data = fit_input_from_render_sample(got, "static")
    assert data.key == "obj1" and data.rgb.shape == (3, 2, 8, 8, 3)
    with pytest.raises(FitInputError, match="no 'dynamic' orbit"):
        fit_input_from_render_sample(got, "dynamic")
    with pytest.raises(FitInputError, match="no sample 'nope'"):
        read_render_sample(path, "nope")
    with pytest.raises(FitInputError, match="no shard at"):
        read_render_sample(tmp_path / "missing.tar")
