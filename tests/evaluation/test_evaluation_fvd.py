"""FVD orderings and the Frechet distance: known answers (evaluation/fvd.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation import fvd


def labelled(num_views: int, num_frames: int) -> np.ndarray:
    """Matrix whose entry (v, f) is the label 100 * v + f, so an order can be read off its values."""
    return np.array([[100 * v + f for f in range(num_frames)] for v in range(num_views)])


def take(matrix: np.ndarray, order: fvd.Order) -> list[int]:
    return [int(matrix[v, f]) for v, f in order]


def test_zigzag_order_on_labelled_matrix() -> None:
    m = labelled(3, 4)
    assert take(m, fvd.zigzag_order(3, 4)) == [0, 1, 2, 3, 103, 102, 101, 100, 200, 201, 202, 203]
    assert take(m, fvd.zigzag_order(3, 4, rows="frame")) == [
        0,
        100,
        200,
        201,
        101,
        1,
        2,
        102,
        202,
        203,
        103,
        3,
    ]


@pytest.mark.parametrize("shape", [(8, 21), (21, 8), (5, 5), (1, 7), (4, 1)])
def test_zigzag_visits_every_image_once_by_unit_steps(shape: tuple[int, int]) -> None:
    order = fvd.zigzag_order(*shape)
    assert sorted(order) == [(v, f) for v in range(shape[0]) for f in range(shape[1])]
    steps = [abs(a[0] - b[0]) + abs(a[1] - b[1]) for a, b in zip(order, order[1:])]
    assert all(s == 1 for s in steps)  # a continuous video: one view or one frame apart


def test_diagonal_picks_the_diagonal() -> None:
    m = labelled(5, 5)
    assert take(m, fvd.diagonal_order(5, 5)) == [0, 101, 202, 303, 404]
    assert take(m, fvd.diagonal_order(5, 5, "main")) == [0, 101, 202, 303, 404]
    # the paper's 8 views x 21 frames: every frame once, the view cycling
    order = fvd.diagonal_order(8, 21)
    assert order == [(f % 8, f) for f in range(21)]
    assert fvd.diagonal_order(8, 21, "main") == [(i, i) for i in range(8)]
    assert fvd.diagonal_order(21, 8) == [(v, v % 8) for v in range(21)]


def test_frame_and_view_videos() -> None:
    m = labelled(2, 3)
    assert [take(m, o) for o in fvd.frame_videos(2, 3)] == [[0, 1, 2], [100, 101, 102]]
    assert [take(m, o) for o in fvd.view_videos(2, 3)] == [[0, 100], [1, 101], [2, 102]]
    assert len(fvd.variant_videos("fvd_f", 8, 21)) == 8
    assert len(fvd.variant_videos("fvd_v", 8, 21)) == 21
    assert [len(o) for o in fvd.variant_videos("fv4d", 8, 21)] == [168]
    with pytest.raises(ValueError, match="unknown FVD variant"):
        fvd.variant_videos("fvd_x", 2, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one view"):
        fvd.frame_videos(0, 3)


def test_clip_indices_stretch_short_clips() -> None:
    assert fvd.clip_indices(21, 16) == list(range(21))  # long enough: untouched
    r = fvd.clip_indices(8, 16)
    assert r == [i // 2 for i in range(16)]  # each view twice, in order
    assert fvd.clip_indices(8, 16, "pad") == list(range(8)) + [7] * 8
    assert fvd.clip_indices(1, 16) == [0] * 16
    for n in range(1, 17):
        idx = fvd.clip_indices(n, 16)
        assert len(idx) == 16 and idx == sorted(idx) and set(idx) == set(range(n))
    with pytest.raises(ValueError):
        fvd.clip_indices(0, 16)


def test_frechet_identical_features_is_zero() -> None:
    feats = np.random.default_rng(0).normal(size=(50, 6))
    assert fvd.fvd_from_features(feats, feats) == pytest.approx(0.0, abs=1e-7)


def test_frechet_matches_closed_form_for_two_gaussians() -> None:
    # 1-D worked example of the module docstring: means 0 and 3, variances 4 and 1 -> 9 + 4 + 1 - 2*2 = 10
    assert fvd.frechet_distance(np.zeros(1), np.eye(1) * 4, np.full(1, 3.0), np.eye(1)) == pytest.approx(10.0)
    # commuting covariances (same eigenvectors): d = |dmu|^2 + sum (sqrt(l1) - sqrt(l2))^2
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    l1, l2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert fvd.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_frechet_of_samples_approaches_the_population_value() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(0.0, 1.0, size=(20000, 2))
    b = rng.normal(1.0, 2.0, size=(20000, 2))
    # per dimension: 1^2 + (1 - 2)^2 = 2, two dimensions -> 4
    assert fvd.fvd_from_features(a, b) == pytest.approx(4.0, rel=0.03)


def test_single_video_fvd_is_finite() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(1, 400)), rng.normal(size=(1, 400))
    with np.errstate(all="raise"):  # np.cov of one sample would warn and return NaN
        d = fvd.fvd_from_features(a, b)
    assert math.isfinite(d) and d == pytest.approx(float(np.sum((a - b) ** 2)))
    assert fvd.per_video_fvd(a, a) == [0.0]
    # one video against a set: the single side has zero covariance, the set keeps its own
    many = rng.normal(size=(10, 400))
    _, s = fvd.feature_statistics(many)
    assert fvd.fvd_from_features(a, many) == pytest.approx(
        float(np.sum((a[0] - many.mean(0)) ** 2) + np.trace(s)), rel=1e-9
    )


def test_singular_covariances_give_a_finite_distance() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(8, 64)), rng.normal(size=(8, 64)) + 0.5  # rank 7 in 64 dimensions
    d = fvd.fvd_from_features(a, b)
    assert math.isfinite(d) and d > 0
    # exactly rank 1: all videos identical but for a common scalar
    base = rng.normal(size=64)
    c = np.outer(np.arange(5.0), base)
    assert math.isfinite(fvd.fvd_from_features(c, c + 1.0))


def test_bad_features_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        fvd.feature_statistics(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="mismatched"):
        fvd.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="paired"):
        fvd.per_video_fvd(np.zeros((2, 4)), np.zeros((3, 4)))
