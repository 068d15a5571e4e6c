"""Frame sampling and whole-clip normalization (no Blender)."""

import numpy as np
import pytest

from blender_scripts.frames import sample_frames
from blender_scripts.normalize import apply_normalization, normalization_from_bboxes


def test_sample_frames_worked_example():
    s = sample_frames(1, 49, 24.0, 3, 1.0)
    np.testing.assert_allclose(s.source_frames, [1, 9, 17])
    np.testing.assert_allclose(s.times_s, [0, 1 / 3, 2 / 3])


def test_sample_frames_whole_clip_and_short_clip():
    whole = sample_frames(0.96, 383.04, 24.0, 5, 0.0)
    # the clip end is excluded: a looping clip's last frame repeats its first
    np.testing.assert_allclose(whole.source_frames[[0, -1]], [0.96, 0.96 + 382.08 * 4 / 5])
    assert np.allclose(np.diff(whole.source_frames), np.diff(whole.source_frames)[0])
    # clip (10 frames = 0.4167 s) shorter than the requested 2 s: the whole clip
    short = sample_frames(1, 11, 24.0, 6, 2.0)
    np.testing.assert_allclose(short.source_frames, 1 + np.arange(6) * 10 / 6)


def test_sample_frames_single_frame_and_errors():
    np.testing.assert_allclose(sample_frames(5, 20, 24, 1).source_frames, [5])
    with pytest.raises(ValueError, match="empty clip"):
        sample_frames(10, 10, 24, 4)
    with pytest.raises(ValueError, match="empty clip"):
        sample_frames(10, 3, 24, 4)
    with pytest.raises(ValueError, match="fps"):
        sample_frames(0, 10, 0, 4)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frames(0, 10, 24, 0)


def test_normalization_worked_example():
    scale, offset = normalization_from_bboxes(
        np.array([[0, 0, 0], [1, 0, 0]]), np.array([[1, 1, 1], [2, 1, 1]])
    )
    assert scale == pytest.approx(0.5)
    np.testing.assert_allclose(offset, [-1, -0.5, -0.5])


def test_normalization_of_a_moving_box_uses_the_union():
    # a 0.5 x 0.2 x 0.1 box translating along +x by 3 units over 10 frames
    t = np.linspace(0, 3, 10)[:, None] * np.array([1.0, 0, 0])
    corners = np.array([[x, y, z] for x in (0, 0.5) for y in (0, 0.2) for z in (0, 0.1)]) + np.array(
        [2, -1, 5]
    )
    frames = corners[None] + t[:, None]  # (F, 8, 3)
    scale, offset = normalization_from_bboxes(frames.min(1), frames.max(1))
    assert scale == pytest.approx(1 / 3.5)
    normed = apply_normalization(frames, scale, offset)
    lo, hi = normed.reshape(-1, 3).min(0), normed.reshape(-1, 3).max(0)
    assert (hi - lo).max() == pytest.approx(1.0)
    np.testing.assert_allclose((hi + lo) / 2, 0, atol=1e-12)
    # per-frame extents stay at 0.5/3.5: the scale does not change over time
    np.testing.assert_allclose(normed.max(1)[:, 0] - normed.min(1)[:, 0], 0.5 / 3.5)


def test_normalization_rejects_degenerate():
    with pytest.raises(ValueError, match="degenerate"):
        normalization_from_bboxes(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        normalization_from_bboxes(np.full((1, 3), np.nan), np.ones((1, 3)))
