"""Camera math: OpenCV camera-to-world, intrinsics, projection, orbits (no Blender)."""

import numpy as np
import pytest

from blender_scripts.cameras import (
    blender_camera_matrix_world,
    c2w_opencv,
    camera_position,
    dynamic_orbit,
    intrinsics,
    opencv_from_blender_matrix_world,
    project,
    spherical_from_c2w,
    static_orbit,
    world_to_camera,
)


def test_worked_example_axes():
    c2w = c2w_opencv(0.0, 0.0, 2.0)
    np.testing.assert_allclose(c2w[:3, 3], [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [-1, 0, 0], atol=1e-12)  # forward toward the origin
    np.testing.assert_allclose(c2w[:3, 0], [0, 1, 0], atol=1e-12)  # image right
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)  # image down = world down


@pytest.mark.parametrize("el,az,r", [(0, 0, 2), (10, 37, 1.5), (-5, 200, 2.0), (60, 359, 3.0), (30, 90, 2)])
def test_rotation_proper_and_origin_projects_to_centre(el, az, r):
    c2w = c2w_opencv(el, az, r)
    rot = c2w[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    K = intrinsics(33.8, (96, 64))
    np.testing.assert_allclose(project(np.zeros(3), c2w, K), [48.0, 32.0], atol=1e-9)
    assert world_to_camera(np.zeros(3), c2w)[2] == pytest.approx(r)


@pytest.mark.parametrize(
    "el,az,r", [(0, 0, 2), (10, 37, 1.5), (-5, 200, 2.0), (60, 359.5, 3.0), (-80, 123, 1)]
)
def test_spherical_round_trip(el, az, r):
    e2, a2, r2 = spherical_from_c2w(c2w_opencv(el, az, r))
    assert e2 == pytest.approx(el, abs=1e-9)
    assert a2 == pytest.approx(az % 360, abs=1e-9)
    assert r2 == pytest.approx(r)


def test_elevation_and_azimuth_conventions():
    # azimuth 90 = +Y axis; positive elevation = above the XY plane
    np.testing.assert_allclose(camera_position(0, 90, 1), [0, 1, 0], atol=1e-12)
    assert camera_position(30, 0, 2)[2] == pytest.approx(1.0)


def test_intrinsics_hand_values():
    K = intrinsics(90.0, 64)
    np.testing.assert_allclose(K, [[32, 0, 32], [0, 32, 32], [0, 0, 1]], atol=1e-12)
    with pytest.raises(ValueError, match="fov_deg"):
        intrinsics(0.0, 64)


def test_projection_directions_and_fov_edge():
    c2w = c2w_opencv(0.0, 0.0, 2.0)  # camera at +X, image right = +Y, image down = -Z
    K = intrinsics(90.0, 64)
    u, v = project(np.array([0.0, 0.5, 0.0]), c2w, K)
    assert u > 32 and v == pytest.approx(32)
    u, v = project(np.array([0.0, 0.0, 0.5]), c2w, K)
    assert v < 32 and u == pytest.approx(32)
    # a point at the 45 degree half-fov lands on the right image border
    u, _ = project(np.array([0.0, 2.0, 0.0]), c2w, K)
    assert u == pytest.approx(64.0)


def test_blender_conversion():
    c2w = c2w_opencv(20.0, 45.0, 2.0)
    mw = blender_camera_matrix_world(c2w)
    # Blender camera looks down its -Z: the world direction of -Z equals OpenCV's +z (forward)
    np.testing.assert_allclose(-mw[:3, 2], c2w[:3, 2], atol=1e-12)
    np.testing.assert_allclose(mw[:3, 1], -c2w[:3, 1], atol=1e-12)  # Blender +Y up = OpenCV -y
    np.testing.assert_allclose(mw[:3, 0], c2w[:3, 0], atol=1e-12)
    np.testing.assert_allclose(mw[:3, 3], c2w[:3, 3], atol=1e-12)
    np.testing.assert_allclose(opencv_from_blender_matrix_world(mw), c2w, atol=1e-12)


def test_static_orbit():
    orb = static_orbit(8, 10.0, 2.0)
    assert len(orb) == 8 and orb.c2w.shape == (8, 4, 4)
    np.testing.assert_allclose(orb.elevation_deg, 10.0)
    np.testing.assert_allclose(orb.azimuth_deg, np.arange(8) * 45.0)
    for c2w, el, az in zip(orb.c2w, orb.elevation_deg, orb.azimuth_deg, strict=True):
        e2, a2, r2 = spherical_from_c2w(c2w)
        assert (e2, a2, r2) == pytest.approx((el, az, 2.0))


def test_dynamic_orbit_properties():
    lo, hi = -5.0, 30.0
    orb = dynamic_orbit(24, rng_seed=7, elevation_range_deg=(lo, hi), azimuth_jitter=0.5, radius=2.0)
    el = orb.elevation_deg
    assert el.min() >= lo and el.max() <= hi
    assert el.std() > 1.0  # it varies
    # smooth: neighbouring views (loop closed) differ far less than the range
    assert np.abs(np.diff(np.r_[el, el[0]])).max() < 0.35 * (hi - lo)
    # azimuth: monotonic increments, irregular, summing to one full turn
    unwrapped = np.unwrap(np.deg2rad(orb.azimuth_deg))
    steps = np.diff(np.rad2deg(unwrapped))
    assert (steps > 0).all()
    assert steps.std() > 1.0
    total = steps.sum() + (orb.azimuth_deg[0] - orb.azimuth_deg[-1]) % 360.0
    assert total == pytest.approx(360.0)
    # cameras agree with their angles
    for c2w, e, a in zip(orb.c2w, orb.elevation_deg, orb.azimuth_deg, strict=True):
        assert spherical_from_c2w(c2w)[:2] == pytest.approx((e, a))


def test_dynamic_orbit_deterministic_per_seed():
    a = dynamic_orbit(12, rng_seed=3)
    b = dynamic_orbit(12, rng_seed=3)
    c = dynamic_orbit(12, rng_seed=4)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    assert not np.allclose(a.azimuth_deg, c.azimuth_deg)


def test_dynamic_orbit_rejects_bad_jitter():
    with pytest.raises(ValueError, match="azimuth_jitter"):
        dynamic_orbit(4, 0, azimuth_jitter=1.5)
