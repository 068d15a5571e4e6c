"""fit4d inputs: bad multi-view videos stop with one clear line; good ones load through shards/ readers."""

from __future__ import annotations

import numpy as np
import pytest

from fit4d.data import (
    FitInputError,
    crop_translations,
    fit_input_from_render_sample,
    fit_input_from_sample,
    fit_input_from_views,
    read_render_sample,
    read_sample,
)
from shards.cameras import c2w_opencv
from shards.generated_schema import GeneratedSample, encode_generated_sample
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


def test_crop_translations_project_back_onto_the_crop_shift():
    """The translation of frame t, seen by the input camera, lands where the crop box moved (in model
    pixels): an in-plane shift at the object's depth projects exactly."""
    c2w = c2w_opencv(20.0, 30.0, 2.0).astype(np.float64)
    k = np.array([[80.0, 0, 32], [0, 80.0, 32], [0, 0, 1]])
    boxes = np.array([[100, 100, 300, 300], [120, 90, 320, 290], [100, 140, 300, 340]], np.float32)
    t = crop_translations(boxes, c2w, k, 64)
    assert np.allclose(t[0], 0.0)
    w2c = np.linalg.inv(c2w)
    for f in range(3):
        cam = w2c[:3, :3] @ t[f] + w2c[:3, 3]
        uv = (k @ cam)[:2] / cam[2]
        shift = (boxes[f, :2] - boxes[0, :2]) * 64 / 200.0
        assert np.allclose(uv - [32, 32], shift, atol=1e-4)
    assert t[2] @ [0, 0, 1] < 0  # the box moved down the image: the object went down (world Z up)
    union = np.tile(boxes[:1], (4, 1))
    assert np.allclose(crop_translations(union, c2w, k, 64), 0.0)
    with pytest.raises(FitInputError, match="x1 > x0"):
        crop_translations(np.array([[5, 5, 5, 5]], np.float32), c2w, k, 64)


def test_generated_sample_reads_as_a_fit_input(tmp_path):
    imgs = np.stack(views(3, 2))
    c2w = cams()
    g = GeneratedSample(
        key="clip_1",
        images=imgs,
        c2w=c2w,
        angles=np.zeros((3, 3), np.float32),
        intrinsics=K,
        crop_boxes=np.array([[0, 0, 16, 16], [4, 0, 20, 16]], np.float32),
        source_frames=np.array([0, 1], np.float32),
        meta={"uid": "clip_1", "fov_deg": 43.6, "input_view": 0, "checkpoint": "ck", "seed": 1},
    )
    path = tmp_path / "generated.tar"
    with ShardWriter(path) as w:
        w.write(encode_generated_sample(g))
    got = read_sample(path)
    assert isinstance(got, GeneratedSample) and got.key == "clip_1"
    data = fit_input_from_sample(got, orbit="ignored", input_view=2)
    assert data.num_views == 3 and data.input_view == 0  # the sample names its own input view
    assert np.array_equal(data.c2w, c2w)
    offsets = np.asarray(data.meta["global_offsets"])
    assert offsets.shape == (2, 3) and np.allclose(
        offsets[1], crop_translations(g.crop_boxes, c2w[0], K, 8)[1]
    )
    assert np.linalg.norm(offsets[1]) > 0
    with pytest.raises(FitInputError, match="a generated sample, not a render sample"):
        read_render_sample(path)
    broken = dict(encode_generated_sample(g))
    broken["c2w.npy"] = b"garbage"
    with ShardWriter(tmp_path / "bad.tar") as w:
        w.write(broken)
    with pytest.raises(FitInputError, match="clip_1.*c2w.npy"):
        read_sample(tmp_path / "bad.tar")
