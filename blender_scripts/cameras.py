"""Camera math for the orbit renders: pure numpy, no bpy.

Conventions (shared with `shards/`, `curation/` and `fit4d/`):

- World: Blender's, right-handed and Z-up.
- Spherical camera position around the origin: ``elevation`` is the angle above the XY plane (degrees,
  positive looks down on the object), ``azimuth`` is measured in the XY plane from +X toward +Y (degrees,
  counter-clockwise seen from above), ``radius`` is the distance to the origin::

      position = radius * (cos(el) cos(az), cos(el) sin(az), sin(el))

- Camera-to-world matrices ``c2w`` are (4, 4) in the OpenCV camera convention: camera x points right in the
  image, y down, z forward (toward the origin, which the camera looks at). ``c2w[:3, :3]`` columns are the
  camera axes in world coordinates and ``c2w[:3, 3]`` is the camera centre.
- Pixels: continuous coordinates with pixel (i, j) covering [i, i+1) x [j, j+1), u to the right (column),
  v down (row); the principal point is the image centre (W/2, H/2).
- Blender cameras look down their local -Z with +Y up: ``matrix_world = c2w_opencv @ diag(1, -1, -1, 1)``.

Worked example: ``c2w_opencv(0, 0, 2)`` puts the camera at (2, 0, 0) looking along -X; its x axis
(image right) is +Y and its y axis (image down) is -Z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_OPENCV_TO_BLENDER = np.diag([1.0, -1.0, -1.0, 1.0])


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


def project(points_world: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Project world points (..., 3) to pixel coordinates (..., 2) (u right, v down).

    Points behind the camera get a negative depth and a meaningless projection; use `camera_depth` to mask.
    """
    cam = world_to_camera(points_world, c2w)
    uvw = cam @ np.asarray(K, dtype=np.float64).T
    return uvw[..., :2] / uvw[..., 2:3]


def world_to_camera(points_world: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points (..., 3) in OpenCV camera coordinates (..., 3); z is the depth along the view axis."""
    c2w = np.asarray(c2w, dtype=np.float64)
    rot, t = c2w[:3, :3], c2w[:3, 3]
    return (np.asarray(points_world, dtype=np.float64) - t) @ rot


def blender_camera_matrix_world(c2w: np.ndarray) -> np.ndarray:
    """Blender camera `matrix_world` (looks down local -Z, +Y up) for an OpenCV camera-to-world (4, 4)."""
    return np.asarray(c2w, dtype=np.float64) @ _OPENCV_TO_BLENDER


def opencv_from_blender_matrix_world(matrix_world: np.ndarray) -> np.ndarray:
    """Inverse of `blender_camera_matrix_world` (the flip is its own inverse)."""
    return np.asarray(matrix_world, dtype=np.float64) @ _OPENCV_TO_BLENDER


@dataclass
class Orbit:
    """V cameras on a sphere around the origin.

    elevation_deg, azimuth_deg, radius: (V,); c2w: (V, 4, 4) OpenCV camera-to-world.
    """

    elevation_deg: np.ndarray
    azimuth_deg: np.ndarray
    radius: np.ndarray
    c2w: np.ndarray

    @classmethod
    def from_angles(cls, elevation_deg: np.ndarray, azimuth_deg: np.ndarray, radius: np.ndarray) -> Orbit:
        el = np.asarray(elevation_deg, dtype=np.float64)
        az = np.asarray(azimuth_deg, dtype=np.float64) % 360.0
        r = np.broadcast_to(np.asarray(radius, dtype=np.float64), el.shape).copy()
        c2w = np.stack([c2w_opencv(e, a, rr) for e, a, rr in zip(el, az, r, strict=True)])
        return cls(el, az, r, c2w)

    def __len__(self) -> int:
        return len(self.elevation_deg)

    def to_json(self) -> dict:
        return {
            "c2w": self.c2w.tolist(),
            "elevation_deg": self.elevation_deg.tolist(),
            "azimuth_deg": self.azimuth_deg.tolist(),
            "radius": self.radius.tolist(),
        }


def static_orbit(num_views: int, elevation_deg: float, radius: float) -> Orbit:
    """SV3D's static orbit: fixed elevation, azimuth uniform over the turn starting at 0 (360 / V steps)."""
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    az = np.arange(num_views) * (360.0 / num_views)
    return Orbit.from_angles(np.full(num_views, float(elevation_deg)), az, radius)


def dynamic_orbit(
    num_views: int,
    rng_seed: int,
    elevation_range_deg: tuple[float, float] = (-5.0, 30.0),
    azimuth_jitter: float = 0.5,
    radius: float = 2.0,
) -> Orbit:
    """SV3D's dynamic orbit: irregular azimuth steps and a smoothly varying elevation, deterministic per seed.

    Azimuth: steps (360 / V) * (1 + jitter * U(-1, 1)), renormalized to sum to one full turn, starting at a
    random offset; so the azimuth increases monotonically and the V views cover the turn (the last step
    closes it). Elevation: a smooth periodic curve of the orbit's progress s in [0, 1) (the cumulative
    azimuth / 360), mid + half_range * sum_k a_k sin(2 pi k s + phi_k), k = 1..3, with sum |a_k| = 1, so it
    stays inside `elevation_range_deg` and joins up smoothly around the loop.
    """
    if num_views < 1:
        raise ValueError(f"num_views must be at least 1, got {num_views}")
    lo, hi = (float(v) for v in elevation_range_deg)
    if not lo <= hi or lo <= -90.0 or hi >= 90.0:
        raise ValueError(f"elevation_range_deg must satisfy -90 < lo <= hi < 90, got {elevation_range_deg}")
    if not 0.0 <= azimuth_jitter < 1.0:
        raise ValueError(
            f"azimuth_jitter must lie in [0, 1) so azimuth steps stay positive, got {azimuth_jitter}"
        )
    rng = np.random.default_rng(rng_seed)
    steps = (360.0 / num_views) * (1.0 + azimuth_jitter * rng.uniform(-1.0, 1.0, num_views))
    steps *= 360.0 / steps.sum()
    progress = np.concatenate([[0.0], np.cumsum(steps[:-1])])  # degrees travelled before each view
    offset = rng.uniform(0.0, 360.0)
    az = offset + progress

    freqs = np.arange(1, 4)
    amps = rng.uniform(0.2, 1.0, freqs.size) / freqs  # lower frequencies dominate: smooth
    amps *= rng.choice([-1.0, 1.0], freqs.size)
    amps /= np.abs(amps).sum()
    phases = rng.uniform(0.0, 2.0 * np.pi, freqs.size)
    s = progress / 360.0
    curve = (amps[None, :] * np.sin(2.0 * np.pi * freqs[None, :] * s[:, None] + phases[None, :])).sum(axis=1)
    el = 0.5 * (lo + hi) + 0.5 * (hi - lo) * curve
    return Orbit.from_angles(el, az, radius)
