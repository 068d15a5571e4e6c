"""Global/local motion disentanglement on synthetic trajectories with known answers."""

import numpy as np
import pytest

from blender_scripts.motion import disentangle_motion, mean_displacement, motion_metrics


def _box_cloud(rng, n, lo, hi):
    return rng.uniform(lo, hi, size=(n, 3))


def walker(F=12, drift=(0.9, 0.0, 0.1), seed=0, swing_deg=35.0):
    """A rigid torso+head drifting linearly, two legs and two arms swinging about their joints.

    Returns positions (F, P, 3) and the true per-frame drift (F, 3) relative to frame 0. The object is
    about 1 unit tall; the limbs hold more than half of the points so a global centroid would wobble.
    """
    rng = np.random.default_rng(seed)
    torso = _box_cloud(rng, 300, (-0.15, -0.1, 0.5), (0.15, 0.1, 0.9))
    head = _box_cloud(rng, 100, (-0.08, -0.08, 0.9), (0.08, 0.08, 1.05))
    t = np.linspace(0.0, 1.0, F)
    phase = 2 * np.pi * 1.5 * t
    parts = []  # (points at rest relative to the joint, joint position, phase sign, amplitude)
    for x, sign in ((-0.08, 1.0), (0.08, -1.0)):
        leg = _box_cloud(rng, 250, (-0.04, -0.04, -0.5), (0.04, 0.04, 0.0))
        parts.append((leg, np.array([x, 0.0, 0.5]), sign, 1.0))
    for x, sign in ((-0.2, -1.0), (0.2, 1.0)):
        arm = _box_cloud(rng, 150, (-0.03, -0.03, -0.35), (0.03, 0.03, 0.0))
        parts.append((arm, np.array([x, 0.0, 0.88]), sign, 0.7))
    drift_t = t[:, None] * np.asarray(drift)[None, :]
    frames = []
    for f in range(F):
        pts = [torso, head]
        for rest, joint, sign, amp in parts:
            a = np.deg2rad(swing_deg) * amp * sign * np.sin(phase[f])
            # swing about the x axis (legs move forward/back in y-z)
            rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
            pts.append(rest @ rot.T + joint)
        frames.append(np.concatenate(pts) + drift_t[f])
    return np.stack(frames), drift_t


def _size(positions):
    flat = positions.reshape(-1, 3)
    return float((flat.max(0) - flat.min(0)).max())


@pytest.mark.parametrize("drift", [(0.9, 0.0, 0.1), (0.0, -1.5, 0.0), (0.3, 0.3, 0.0)])
def test_walker_drift_recovered(drift):
    positions, true_drift = walker(drift=drift)
    res = disentangle_motion(positions, static_quantile=0.2, box_fraction=0.3)
    size = _size(positions - true_drift[:, None, :])
    err = np.abs(res.offsets - true_drift).max()
    assert err < 1e-3 * size, err
    # The static box sits on the torso/head, not on the swinging limbs.
    assert res.box_mask[:400].sum() > 0.5 * res.box_mask.sum()
    assert res.box_mask[400:].sum() == 0
    # After correction the torso is fixed and the legs still move.
    corrected = positions - res.offsets[:, None, :]
    assert np.abs(corrected[:, :400] - corrected[:1, :400]).max() < 1e-3 * size
    assert mean_displacement(corrected[:, 400:900]).mean() > 0.02


def test_static_object_zero_correction():
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(500, 3))
    positions = np.repeat(pts[None], 8, axis=0)
    res = disentangle_motion(positions)
    assert np.all(res.offsets == 0.0)
    m = motion_metrics(positions, res.offsets, positions.min(1), positions.max(1))
    assert m["motion"] < 1e-12 and m["scale_ratio"] == pytest.approx(1.0)


def test_rotation_in_place_gives_no_translation():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-0.5, 0.5, size=(2000, 3)) * np.array([1.0, 0.6, 0.8])
    pts -= pts.mean(0)
    frames = []
    for a in np.linspace(0, np.pi, 10):
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        frames.append(pts @ rot.T)
    positions = np.stack(frames)
    res = disentangle_motion(positions)
    assert np.linalg.norm(res.offsets, axis=1).max() < 1e-3 * _size(positions)


def test_articulation_without_drift_gives_no_translation():
    positions, _ = walker(drift=(0.0, 0.0, 0.0))
    res = disentangle_motion(positions)
    assert np.abs(res.offsets).max() < 1e-6


def test_scale_ratio_of_known_scaling():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-0.5, 0.5, size=(400, 3))
    scales = np.linspace(1.0, 2.5, 6)
    positions = np.stack([pts * s for s in scales])
    m = motion_metrics(positions, None, positions.min(1), positions.max(1))
    assert m["scale_ratio"] == pytest.approx(2.5, rel=1e-9)


def test_motion_metric_after_correction():
    positions, true_drift = walker()
    res = disentangle_motion(positions)
    bmin, bmax = positions.min(1), positions.max(1)
    before = motion_metrics(positions, None, bmin, bmax)
    after = motion_metrics(positions, res.offsets, bmin, bmax)
    # Drift removed: the object is smaller over the clip and moves less, but the limbs still swing.
    assert after["object_size"] < before["object_size"]
    assert after["motion"] < before["motion"]
    assert after["motion"] > 0.02
    assert after["max_offset"] == pytest.approx(
        np.linalg.norm(true_drift, axis=1).max() / after["object_size"], rel=1e-3
    )
    # A tiny wiggle is small motion.
    rng = np.random.default_rng(4)
    pts = rng.uniform(-0.5, 0.5, size=(300, 3))
    wiggle = np.stack([pts + 1e-4 * np.sin(f) for f in range(6)])
    assert motion_metrics(wiggle, None, wiggle.min(1), wiggle.max(1))["motion"] < 1e-3


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="shape"):
        disentangle_motion(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="static_quantile"):
        disentangle_motion(np.zeros((2, 5, 3)), static_quantile=0.0)
    with pytest.raises(ValueError, match="offsets"):
        motion_metrics(np.zeros((2, 5, 3)), np.zeros((3, 3)), np.zeros((2, 3)), np.ones((2, 3)))


def _spin(pts, angles, axis_point):
    frames = []
    for a in angles:
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        frames.append((pts - axis_point) @ rot.T + axis_point)
    return np.stack(frames)


def test_uneven_body_spinning_about_bbox_centre_gives_no_translation():
    """Uneven point density (the centroid is off the axis), spinning about its bounding-box centre.

    (Spin plus drift is left out on purpose: a rigid motion's split into rotation and translation depends on
    the chosen centre, so it has no unique "true" drift.)
    """
    rng = np.random.default_rng(5)
    pts = np.concatenate([rng.uniform(-0.5, 0.5, (1500, 3)), rng.uniform(0.2, 0.5, (800, 3))])
    axis_point = 0.5 * (pts.min(0) + pts.max(0))
    positions = _spin(pts, np.linspace(0, 1.5 * np.pi, 9), axis_point)
    res = disentangle_motion(positions)
    assert np.linalg.norm(res.offsets, axis=1).max() < 1e-3 * _size(positions)
    # The plain mean of the box points circles around the axis instead.
    mean = disentangle_motion(positions, anchor="mean")
    assert np.linalg.norm(mean.offsets, axis=1).max() > 3e-3 * _size(positions)


def test_mean_anchor_matches_paper_definition_on_walker():
    positions, true_drift = walker(drift=(0.5, 0.2, 0.0), F=8)
    res = disentangle_motion(positions, anchor="mean")
    box = positions[:, res.box_mask]
    np.testing.assert_allclose(res.offsets, box.mean(1) - box[0].mean(0), atol=1e-12)
    assert np.abs(res.offsets - true_drift).max() < 1e-3 * _size(positions - true_drift[:, None])


def test_analysis_sized_input_is_fast():
    import time

    rng = np.random.default_rng(6)
    positions = rng.normal(size=(24, 20000, 3)).astype(np.float32) * 0.01 + rng.normal(size=(1, 20000, 3))
    start = time.perf_counter()
    disentangle_motion(positions)
    assert time.perf_counter() - start < 5.0


def test_analyze_clip_enabled_and_disabled():
    from blender_scripts.motion import analyze_clip

    positions, true_drift = walker()
    bmin, bmax = positions.min(1), positions.max(1)
    on = analyze_clip(positions, bmin, bmax)
    off = analyze_clip(positions, bmin, bmax, enabled=False)
    assert np.abs(on["offsets"] - true_drift).max() < 1e-6
    assert np.all(off["offsets"] == 0)
    assert on["metrics"]["motion"] < off["metrics"]["motion"]


def test_scale_ratio_ignores_rotation_and_sees_uniform_growth():
    rng = np.random.default_rng(7)
    cube = rng.uniform(-0.5, 0.5, size=(1000, 3))
    # a tumbling rigid cube: its bounding box changes a lot, its size does not
    positions = _spin(cube, np.linspace(0, np.pi / 2, 7), np.zeros(3))
    m = motion_metrics(positions, None, positions.min(1), positions.max(1))
    assert m["scale_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert m["bbox_scale_ratio"] > 1.3
    # an object that appears from (almost) nothing
    grow = np.stack([cube * s for s in (0.0, 0.5, 1.0)])
    assert motion_metrics(grow, None, grow.min(1), grow.max(1))["scale_ratio"] == float("inf")


def test_scale_ratio_follows_deformation_not_articulation():
    # two rigid boxes; the upper one rises out of the lower one (the 1.82 case): no scaling at all
    rng = np.random.default_rng(3)
    lower = rng.uniform(-0.5, 0.5, (300, 3))
    upper = rng.uniform(-0.4, 0.4, (300, 3))
    frames = []
    for lift in np.linspace(0.0, 1.6, 5):
        frames.append(np.concatenate([lower, upper + [0.0, 0.0, lift]]))
    pos = np.stack(frames)
    m = motion_metrics(pos, None, pos.min(1), pos.max(1))
    assert m["scale_ratio"] == pytest.approx(1.0, abs=0.02)
    assert m["gyration_scale_ratio"] > 1.5  # the old measure, still recorded, calls this inconsistent
    # the same pair uniformly grown by 1.7 over the clip: exactly 1.7
    grow = np.stack([pos[0] * s for s in np.linspace(1.0, 1.7, 4)])
    assert motion_metrics(grow, None, grow.min(1), grow.max(1))["scale_ratio"] == pytest.approx(1.7, rel=1e-9)


def test_scale_ratio_of_a_squash_and_stretch_stays_near_one():
    # surface points of a sphere, stretched 1.6x along z and squashed 1/sqrt(1.6) across: same volume
    rng = np.random.default_rng(5)
    v = rng.normal(size=(1500, 3))
    sphere = v / np.linalg.norm(v, axis=1, keepdims=True)
    frames = [sphere * [1 / np.sqrt(s), 1 / np.sqrt(s), s] for s in np.linspace(1.0, 1.6, 4)]
    pos = np.stack(frames)
    m = motion_metrics(pos, None, pos.min(1), pos.max(1))
    assert m["scale_ratio"] < 1.15 and m["bbox_scale_ratio"] == pytest.approx(1.6, rel=1e-3)


def test_vertex_track_keeps_one_subsample_and_fails_a_changing_vertex_count():
    from blender_scripts.analyze_asset import VertexTrack
    from blender_scripts.scene_io import AssetError

    rng = np.random.default_rng(0)
    track = VertexTrack(max_points=5, over="the clip")
    first = rng.random((12, 3))
    sampled = track.sample(first)
    assert sampled.dtype == np.float32 and sampled.shape == (5, 3)
    moved = first + 1.0
    np.testing.assert_allclose(track.sample(moved), sampled + 1.0, rtol=1e-6)  # the same points again
    with pytest.raises(
        AssetError, match="varying_topology: vertex count changes over the clip \\(12 then 13\\)"
    ):
        track.sample(rng.random((13, 3)))
