"""The camera convention of every shard, as pure numpy: the home for code outside Blender.

World: right-handed, Z up. A camera at (elevation, azimuth, radius) sits at
``radius * (cos(el) cos(az), cos(el) sin(az), sin(el))`` (elevation above the XY plane, azimuth from +X
toward +Y) and looks at the origin. ``c2w`` matrices are (4, 4) OpenCV camera-to-world (x right, y down,
z forward); pixel (i, j) covers [j, j + 1) x [i, i + 1) and the principal point is the image centre.

`blender_scripts/cameras.py` holds the same functions for the renderer, because code that runs inside Blender
imports nothing of ours but `profiles/`; `tests/shards/test_cameras.py` pins the two equal.
"""

from __future__ import annotations

import numpy as np


def camera_position(elevation_deg: float, azimuth_deg: float, radius: float) -> np.ndarray:
    """World position (3,) of a camera on the sphere of `radius` (see the module docstring)."""
    el, az = np.deg2rad(elevation_deg), np.deg2rad(azimuth_deg)
    return radius * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


def look_at_opencv(eye: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world for a camera at `eye` (3,) looking at `target` (default origin), Z up.

    Looking straight up or down (the view direction parallel to Z) uses +Y as the fallback up vector.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm <= 1e-12:
        raise ValueError(f"camera position {eye.tolist()} coincides with its target {target.tolist()}")
    forward /= norm
    up = np.array([0.0, 0.0, 1.0])
    if abs(forward @ up) > 1.0 - 1e-9:
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)  # right-handed: x (right) x y (down) = z (forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def c2w_opencv(elevation_deg: float, azimuth_deg: float, radius: float) -> np.ndarray:
    """(4, 4) OpenCV camera-to-world of a camera at (elevation, azimuth, radius) looking at the origin."""
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    return look_at_opencv(camera_position(elevation_deg, azimuth_deg, radius))


def spherical_from_c2w(c2w: np.ndarray) -> tuple[float, float, float]:
    """Inverse of `c2w_opencv` for the camera position: (elevation_deg, azimuth_deg in [0, 360), radius)."""
    t = np.asarray(c2w, dtype=np.float64)[:3, 3]
    radius = float(np.linalg.norm(t))
    if radius <= 0:
        raise ValueError("camera centre is at the origin: elevation/azimuth undefined")
    elevation = float(np.rad2deg(np.arcsin(np.clip(t[2] / radius, -1.0, 1.0))))
    azimuth = float(np.rad2deg(np.arctan2(t[1], t[0])) % 360.0)
    return elevation, azimuth, radius


def intrinsics(fov_deg: float, resolution: int | tuple[int, int]) -> np.ndarray:
    """(3, 3) pinhole K for a horizontal field of view `fov_deg` and resolution (W, H) or a square side.

    fx = fy = (W / 2) / tan(fov / 2); cx = W / 2, cy = H / 2 (continuous pixel coordinates, see module doc).
    Example: fov 90 deg, 64 px -> fx = 32, cx = cy = 32.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    w, h = (resolution, resolution) if np.isscalar(resolution) else resolution
    if w <= 0 or h <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    f = 0.5 * w / np.tan(0.5 * np.deg2rad(fov_deg))
    return np.array([[f, 0.0, 0.5 * w], [0.0, f, 0.5 * h], [0.0, 0.0, 1.0]])
