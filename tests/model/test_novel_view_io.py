"""Novel-view sampling I/O: foreground and crops on a synthetic moving square, input readers, written videos
read back, the generated-sample schema, and clear errors on bad inputs."""

import json

import numpy as np
import pytest

from model.crop import crop_boxes, crop_resize, foreground_masks, prepare_frames
from model.novel_views import input_key, prepare_input
from model.video_input import read_frame_folder, read_input, read_masks, read_video, resample_frames
from model.video_output import grid_frames, grid_image, read_video_info, write_mp4
from profiles.loader import ConfigError
from shards.generated_schema import (
    GeneratedSample,
    decode_generated_sample,
    encode_generated_sample,
    image_field,
    read_generated,
)
from shards.render_schema import SchemaError
from shards.writer import ShardWriter

SIDE = 12


def moving_square(n=6, h=60, w=90, bg=(255, 255, 255), colour=(30, 160, 40), rgba=False):
    """Frames with a SIDE x SIDE square whose top-left corner moves (5 + 11 i, 8 + 3 i); returns frames and
    the true boxes [x0, y0, x1, y1]."""
    frames = np.empty((n, h, w, 4 if rgba else 3), np.uint8)
    frames[..., :3] = bg
    if rgba:
        frames[..., 3] = 0
    boxes = []
    for i in range(n):
        x0, y0 = 5 + 11 * i, 8 + 3 * i
        frames[i, y0 : y0 + SIDE, x0 : x0 + SIDE, :3] = colour
        if rgba:
            frames[i, y0 : y0 + SIDE, x0 : x0 + SIDE, 3] = 255
        boxes.append((x0, y0, x0 + SIDE, y0 + SIDE))
    return frames, np.array(boxes, float)


@pytest.mark.parametrize("kind", ["white", "green", "alpha"])
def test_foreground_from_background_difference_or_alpha(kind):
    if kind == "alpha":
        frames, true = moving_square(rgba=True, bg=(0, 0, 0))  # black but transparent background
    else:
        frames, true = moving_square(
            bg=(255, 255, 255) if kind == "white" else (0, 200, 0), colour=(200, 20, 20)
        )
    masks, source = foreground_masks(frames)
    assert source == ("alpha" if kind == "alpha" else "background")
    for m, b in zip(masks, true):
        ys, xs = np.nonzero(m)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(b)


def test_user_masks_win_and_empty_masks_are_clear_errors():
    frames, _ = moving_square()
    user = np.zeros(frames.shape[:3], bool)
    user[:, :4, :4] = True
    masks, source = foreground_masks(frames, user)
    assert source == "user" and masks.sum() == 16 * len(frames)
    user[3] = False
    with pytest.raises(ValueError, match="empty foreground mask in frame 3"):
        foreground_masks(frames, user)
    blank = np.full((2, 8, 8, 3), 255, np.uint8)
    with pytest.raises(ValueError, match="empty foreground mask in frame 0"):
        foreground_masks(blank)


def test_crops_on_a_moving_square_recover_its_boxes():
    frames, true = moving_square()
    masks, _ = foreground_masks(frames)
    per = crop_boxes(masks, "per_frame", fill=0.5)
    centres = (true[:, :2] + true[:, 2:]) / 2
    np.testing.assert_allclose((per[:, :2] + per[:, 2:]) / 2, centres)
    np.testing.assert_allclose(per[:, 2] - per[:, 0], SIDE / 0.5)
    np.testing.assert_allclose(per[:, 3] - per[:, 1], SIDE / 0.5)
    uni = crop_boxes(masks, "union", fill=0.9)
    assert (uni == uni[0]).all()
    x0, y0, x1, y1 = true[:, 0].min(), true[:, 1].min(), true[:, 2].max(), true[:, 3].max()
    side = max(x1 - x0, y1 - y0) / 0.9
    np.testing.assert_allclose(
        uni[0], [(x0 + x1 - side) / 2, (y0 + y1 - side) / 2, (x0 + x1 + side) / 2, (y0 + y1 + side) / 2]
    )
    # per-frame crops: the square sits in the middle at the same size in every output frame
    out, boxes, source = prepare_frames(frames, 48, "per_frame", fill=0.5)
    assert out.shape == (6, 48, 48, 4) and source == "background"
    for f in out:
        ys, xs = np.nonzero(f[..., 3] > 127)
        assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (12, 36, 12, 36)
        assert (f[0, 0, :3] == 255).all()  # composited on white
        assert tuple(f[24, 24, :3]) == (30, 160, 40)
    # a box reaching outside the frame is padded with white
    edge = crop_resize(
        np.concatenate([frames[0], np.full_like(frames[0][..., :1], 255)], -1),
        np.array([-30, -30, 30, 30]),
        20,
    )
    assert (edge[:8, :8, :3] == 255).all()
    with pytest.raises(ValueError, match="crop mode"):
        crop_boxes(masks, "bogus")


def test_videos_are_written_and_read_back(tmp_path):
    frames, _ = moving_square(n=7, h=64, w=96)
    path = write_mp4(tmp_path / "sq.mp4", frames, fps=8)
    assert read_video_info(path) == (7, 64, 96)
    back, info = read_video(path)
    assert back.shape == (7, 64, 96, 3) and info["fps"] == pytest.approx(8)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6  # lossy, but the same picture
    views = np.stack([frames, frames[:, :, ::-1]])
    assert grid_frames(views).shape == (7, 64, 192, 3)
    assert grid_image(views, thumb=16).shape == (32, 7 * 16, 3)
    with pytest.raises(ValueError, match="even"):
        write_mp4(tmp_path / "odd.mp4", frames[:, :63])


def test_gif_folder_and_render_shard_inputs(tmp_path):
    import imageio.v2 as imageio

    frames, _ = moving_square(n=4)
    imageio.mimsave(tmp_path / "sq.gif", list(frames), duration=0.1)
    g, info = read_input(tmp_path / "sq.gif")
    assert g.shape[0] == 4 and g.shape[1:3] == (60, 90) and info["kind"] == "gif"
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        imageio.imwrite(folder / f"{i:03d}.png", f)
    got, _ = read_frame_folder(folder)
    np.testing.assert_array_equal(got, frames)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, f in enumerate(frames):
        imageio.imwrite(masks / f"{i:03d}.png", ((f[..., 0] < 100) * 255).astype(np.uint8))
    m = read_masks(masks, 4, (60, 90))
    assert m.shape == (4, 60, 90)
    assert m[0, 10, 10] and not m[0, 0, 0]


def test_render_shard_input(tmp_path):
    from shards.render_schema import RenderSample, encode_render_sample

    v, f, r = 3, 4, 16
    images = np.zeros((v, f, r, r, 4), np.uint8)
    images[..., 4:12, 4:12, :] = 200
    c2w = np.tile(np.eye(4, dtype=np.float32), (v, 1, 1))
    angles = np.zeros((v, 3), np.float32)
    meta = {
        "uid": "obj_1",
        "mode": "4d",
        "resolution": r,
        "num_views": v,
        "num_frames": f,
        "orbits": ["dynamic"],
        "fov_deg": 33.8,
    }
    sample = RenderSample(
        "obj_1", {"dynamic": images}, {"dynamic": c2w}, {"dynamic": angles}, np.eye(3, dtype=np.float32), meta
    )
    with ShardWriter(tmp_path / "s.tar") as w:
        w.write(encode_render_sample(sample))
    got, info = read_input(f"{tmp_path / 's.tar'}#obj_1", orbit="dynamic", view=2)
    assert got.shape == (f, r, r, 4) and info["key"] == "obj_1" and len(info["gt_angles"]) == v
    assert input_key(f"{tmp_path / 's.tar'}#obj_1") == "obj_1"
    with pytest.raises(ValueError, match="view 5 out of range"):
        read_input(tmp_path / "s.tar", view=5)
    with pytest.raises(ValueError, match="no orbit"):
        read_input(tmp_path / "s.tar", orbit="static")


def test_bad_inputs_give_clear_errors(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="cannot read .*broken.mp4"):
        read_video(bad)
    with pytest.raises(ValueError, match="input not found"):
        read_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="unsupported input type"):
        (tmp_path / "x.txt").write_text("hi")
        read_video(tmp_path / "x.txt")
    import imageio.v2 as imageio

    folder = tmp_path / "mixed"
    folder.mkdir()
    imageio.imwrite(folder / "0.png", np.zeros((8, 8, 3), np.uint8))
    imageio.imwrite(folder / "1.png", np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="1.png: frame size 10x8 differs from 8x8"):
        read_frame_folder(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        read_frame_folder(tmp_path / "empty")


def test_prepare_input_fills_short_videos_and_records_boxes():
    from profiles.load import load_profile

    cfg = load_profile(
        "demo",
        [
            "sample.resolution=32",
            "sample.frames_per_pass=5",
            "sample.fill=interpolate",
            "sample.crop=per_frame",
        ],
    )
    frames, true = moving_square(n=3)
    prep = prepare_input(cfg.sample, "clip.mp4", frames, {"kind": "video"})
    assert prep.key == "clip" and prep.rgba.shape == (5, 32, 32, 4)
    np.testing.assert_allclose(prep.positions, [0, 0.5, 1, 1.5, 2])
    centres = (prep.boxes[:, :2] + prep.boxes[:, 2:]) / 2
    np.testing.assert_allclose(
        centres[1], ((true[0, :2] + true[0, 2:]) / 2 + (true[1, :2] + true[1, 2:]) / 2) / 2
    )
    assert prep.info["filled"] == {"mode": "interpolate", "from_frames": 3, "to_frames": 5}
    mid = resample_frames(frames, [0.5])[0]
    assert mid.dtype == np.uint8


def test_sample_config_is_validated():
    from profiles.load import load_profile

    with pytest.raises((ConfigError, ValueError), match="start_step"):
        load_profile("demo", ["sample.start_step=60"])
    with pytest.raises((ConfigError, ValueError), match="init_images"):
        load_profile("demo", ["sample.start_step=3"])
    with pytest.raises((ConfigError, ValueError), match="crop_fill"):
        load_profile("demo", ["sample.crop_fill=1.5"])
    with pytest.raises(ConfigError):
        load_profile("demo", ["sample.no_such_knob=1"])


def _generated(v=3, f=2, r=8):
    from model.novel_cameras import preset

    c2w, angles = preset("orbit", v - 1).poses()
    rng = np.random.default_rng(0)
    return GeneratedSample(
        key="clip_1",
        images=rng.integers(0, 256, (v, f, r, r, 4), dtype=np.uint8),
        c2w=c2w,
        angles=angles,
        intrinsics=np.eye(3, dtype=np.float32),
        crop_boxes=np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32),
        source_frames=np.array([0, 1], np.float32),
        meta={
            "checkpoint": "ck",
            "seed": 23,
            "num_steps": 50,
            "guidance": "linear",
            "cfg_min": 1.0,
            "cfg_max": 2.0,
            "fov_deg": 33.8,
            "input_view": 0,
        },
    )


def test_generated_sample_round_trip_and_bad_fields(tmp_path):
    g = _generated()
    with ShardWriter(tmp_path / "g.tar") as w:
        w.write(encode_generated_sample(g))
    back = read_generated(str(tmp_path / "g.tar"))
    np.testing.assert_array_equal(back.images, g.images)
    np.testing.assert_array_equal(back.crop_boxes, g.crop_boxes)
    np.testing.assert_allclose(back.c2w, g.c2w)
    assert back.meta["seed"] == 23 and back.meta["num_views"] == 3 and back.meta["schema_version"] == 1
    raw = encode_generated_sample(g)
    del raw[image_field(2, 1)]
    with pytest.raises(SchemaError, match="missing fields"):
        decode_generated_sample(raw)
    raw = encode_generated_sample(g)
    meta = json.loads(raw["meta.json"])
    del meta["seed"]
    raw["meta.json"] = json.dumps(meta).encode()
    with pytest.raises(SchemaError, match="seed"):
        decode_generated_sample(raw)
    g.crop_boxes = g.crop_boxes[:1]
    with pytest.raises(SchemaError, match="crop_boxes"):
        encode_generated_sample(g)


def test_batch_inputs_of_a_shard_and_a_folder(tmp_path):
    from model.novel_views import resolve_input
    from model.sample_batch import list_inputs
    from shards.render_schema import RenderSample, encode_render_sample

    r = 8
    with ShardWriter(tmp_path / "s.tar") as w:
        for key in ("a", "b"):
            meta = {
                "uid": key,
                "mode": "4d",
                "resolution": r,
                "num_views": 1,
                "num_frames": 1,
                "orbits": ["dynamic"],
                "fov_deg": 33.8,
            }
            w.write(
                encode_render_sample(
                    RenderSample(
                        key,
                        {"dynamic": np.zeros((1, 1, r, r, 4), np.uint8)},
                        {"dynamic": np.eye(4, dtype=np.float32)[None]},
                        {"dynamic": np.zeros((1, 3), np.float32)},
                        np.eye(3, dtype=np.float32),
                        meta,
                    )
                )
            )
    assert [s.rsplit("#", 1)[1] for s in list_inputs(tmp_path / "s.tar")] == ["a", "b"]
    assert resolve_input(str(tmp_path / "s.tar")).endswith("s.tar#a")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "x.mp4").write_bytes(b"")
    (tmp_path / "clips" / "frames_y").mkdir()
    (tmp_path / "clips" / "notes.txt").write_text("not an input")
    assert [s.rsplit("/", 1)[1] for s in list_inputs(tmp_path / "clips")] == ["frames_y", "x.mp4"]
    with pytest.raises(ValueError, match="no inputs"):
        (tmp_path / "none").mkdir()
        list_inputs(tmp_path / "none")
