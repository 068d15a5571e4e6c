"""Sampled views at the ground truth's cameras (model/eval_predictions.py): the camera choice, the crop
undo, the frame mapping, and `python -m model.sample` on a render shard writing the evaluation's layout."""

import json

import numpy as np
import pytest

from model.crop import crop_resize
from model.eval_predictions import frame_map, relative_cameras, uncrop
from shards.cameras import c2w_opencv
from tests.synthetic import make_render_sample

pytestmark = pytest.mark.usefixtures("one_thread")


def rot_z(deg: float) -> np.ndarray:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    r = np.eye(4)
    r[:2, :2] = [[c, -s], [s, c]]
    return r


def test_relative_cameras_known_answer():
    cams, input_el = relative_cameras(np.array([[10, 40, 2], [20, 190, 2]]), [10, 100, 2])
    assert cams.azimuth_deg == (300.0, 90.0) and cams.elevation_deg == (10.0, 20.0) and input_el == 10.0


def test_relative_cameras_put_back_in_the_shard_frame_are_the_shards_cameras():
    # input: a view of the dynamic orbit (its own elevation, a jittered azimuth); targets: the static orbit.
    # The poses the sampler writes (input at azimuth 0) turned by the input's azimuth are the shard's.
    s = make_render_sample(views=5, frames=2)
    s.angles["dynamic"][3, 1] = 77.0
    s.c2w["dynamic"][3] = c2w_opencv(*s.angles["dynamic"][3])
    inp = s.angles["dynamic"][3]
    cams, input_el = relative_cameras(s.angles["static"], inp)
    c2w, _ = cams.poses(input_el, radius=2.0)
    turn = rot_z(float(inp[1]))
    np.testing.assert_allclose(turn @ c2w[0], s.c2w["dynamic"][3], atol=1e-5)
    for k in range(5):
        np.testing.assert_allclose(turn @ c2w[k + 1], s.c2w["static"][k], atol=1e-5)
    np.testing.assert_allclose(cams.elevation_deg, s.angles["static"][:, 0])


def frame_on_white(h: int = 40, w: int = 40) -> np.ndarray:
    """A smooth object (a blurred disc with a colour ramp) on a transparent background, RGBA."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.hypot(yy - 22, xx - 17)
    alpha = np.clip(9.0 - d, 0, 1) * 255
    rgb = np.stack([128 + 3 * xx, 60 + 2 * yy, 200 - 2 * xx], -1)
    return np.concatenate([rgb, alpha[..., None]], -1).round().clip(0, 255).astype(np.uint8)


def white(rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:4] / 255.0
    return rgba[..., :3] * a + 255.0 * (1 - a)


def test_uncrop_of_a_same_size_box_is_an_exact_shift():
    f = frame_on_white()
    box = np.array([5.0, 9.0, 29.0, 33.0])  # side 24 at integer offsets: crop and undo only move pixels
    crop = crop_resize(f, box, 24)[..., :3]  # RGB on white (its alpha is the mask)
    back = uncrop(crop, box, 40, 40).astype(np.float64)
    expected = np.rint(white(f))
    np.testing.assert_array_equal(back[9:33, 5:29], expected[9:33, 5:29])
    outside = np.ones((40, 40), bool)
    outside[9:33, 5:29] = False
    assert (back[outside] == 255).all()  # white where the box does not reach


def test_uncrop_round_trips_a_scaled_crop_reaching_outside_the_frame():
    f = frame_on_white()
    box = np.array([-6.5, 1.25, 37.5, 45.25])  # side 44 > frame: the crop pads, the undo drops the pad
    crop = crop_resize(f, box, 32)[..., :3]
    back = uncrop(crop, box, 40, 40).astype(np.float64)
    assert back.shape == (40, 40, 3)
    err = np.abs(back - white(f))
    assert err.mean() < 2.0 and np.median(err) == 0.0  # a resampled smooth image: small, edges only

    # the object is where it was: its centroid of non-white pixels moves by less than a quarter pixel
    def centroid(img):
        w = (255.0 - img.mean(-1)).clip(0)
        yy, xx = np.mgrid[0:40, 0:40]
        return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()

    np.testing.assert_allclose(centroid(back), centroid(white(f)), atol=0.25)
    # an RGBA model image is composited on white first
    rgba = np.concatenate([crop[..., :3], np.zeros_like(crop[..., :1])], -1)
    assert (uncrop(rgba, box, 40, 40) == 255).all()
    with pytest.raises(ValueError, match="square"):
        uncrop(crop[:, :5], box, 40, 40)


def test_frame_map_keeps_the_produced_frames_and_names_the_rest():
    assert frame_map([0, 1, 2, 3], [0, 2, 5]) == ([0, 2], [0, 2], [5])
    # frame_stride 2 (positions 0, 2, 4) and a filled-in interpolated frame at 1.5 that is no source frame
    assert frame_map([0, 1.5, 2, 4], [1, 2, 4]) == ([2, 4], [2, 3], [1])
    assert frame_map([0, 0, 1], [0, 1]) == ([0, 1], [0, 2], [])  # a repeated frame: its first copy


@pytest.mark.slow
def test_sample_command_writes_the_evaluation_layout_for_a_render_sample(tmp_path):
    from model.sample import main
    from shards.render_schema import encode_render_sample
    from shards.writer import ShardWriter
    from tests.synthetic import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path)
    s = make_render_sample("obj_1", views=4, frames=3, res=24)
    obj = np.zeros((24, 24, 4), np.uint8)
    obj[6:18, 8:16] = (200, 40, 40, 255)
    for orbit in s.images:
        s.images[orbit][:] = obj
    with ShardWriter(tmp_path / "r.tar") as w:
        w.write(encode_render_sample(s))
    sets = [
        f"out_dir={tmp_path}",
        f"encode.tiny_dir={tmp_path / 'tiny_encoders'}",
        "sample.resolution=32",
        "sample.num_steps=2",
        "sample.frames_per_pass=4",
        "sample.progress=false",
        "sample.input_orbit=static",
        "sample.input_view=1",
        "evaluation.views=[0,1,3]",
        "evaluation.frames=[0,2]",
    ]
    args = [str(tmp_path / "r.tar"), "--out", str(tmp_path / "out"), *sum((["--set", x] for x in sets), [])]
    assert main(args) == 0
    folder = tmp_path / "predictions" / "sample" / "obj_1"
    from PIL import Image

    names = sorted(p.name for p in folder.glob("*.png"))
    assert names == [f"v{v:02d}.f{f:02d}.png" for v in (0, 1, 3) for f in (0, 2)]
    assert all(
        Image.open(folder / n).size == (24, 24) and Image.open(folder / n).mode == "RGB" for n in names
    )
    info = json.loads((folder / "prediction.json").read_text())
    assert info["views"] == [0, 1, 3] and info["frames"] == [0, 2] and info["missing_frames"] == []
    assert info["training_views"] == [1]  # the input video's camera is conditioned on, not held out
    az = s.angles["static"][:, 1]
    np.testing.assert_allclose([a for _, a in info["cameras"]], (az[[0, 1, 3]] - az[1]) % 360)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["eval_predictions"]["views"] == [0, 1, 3]
    # cameras the sample lacks: the novel views stand, the summary says why there are no predictions
    bad = [*args, "--set", "evaluation.views=[7]", "--force"]
    assert main(bad) == 0
    reason = json.loads((tmp_path / "out" / "summary.json").read_text())["eval_predictions"]["reason"]
    assert "evaluation.views [7] out of range" in reason
