"""shards.cameras is the renderer's convention (blender_scripts/cameras.py) outside Blender: the two agree."""

import numpy as np
import pytest

from blender_scripts import cameras as render_cameras
from shards import cameras


@pytest.mark.parametrize("elevation", [-89.0, -30.0, 0.0, 10.0, 45.0, 90.0])
@pytest.mark.parametrize("azimuth", [0.0, 60.0, 135.0, 270.0, 359.0])
def test_poses_equal_the_renderers(elevation, azimuth):
    got = cameras.c2w_opencv(elevation, azimuth, 2.0)
    np.testing.assert_array_equal(got, render_cameras.c2w_opencv(elevation, azimuth, 2.0))
    el, az, r = cameras.spherical_from_c2w(got)
    assert r == pytest.approx(2.0) and el == pytest.approx(elevation, abs=1e-6)
    if abs(elevation) < 90:
        assert (az - azimuth + 180) % 360 - 180 == pytest.approx(0.0, abs=1e-6)


def test_intrinsics_equal_the_renderers():
    for fov, res in [(33.8, 576), (90.0, 64), (49.1, (320, 240))]:
        np.testing.assert_array_equal(cameras.intrinsics(fov, res), render_cameras.intrinsics(fov, res))
    np.testing.assert_allclose(
        cameras.intrinsics(90.0, 64), [[32, 0, 32], [0, 32, 32], [0, 0, 1]], atol=1e-12
    )


def test_a_camera_at_plus_x_looks_down_minus_x_with_image_right_plus_y():
    c2w = cameras.c2w_opencv(0.0, 0.0, 2.0)
    np.testing.assert_allclose(c2w[:3, 3], [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 2], [-1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0, 0, -1], atol=1e-12)
