"""Target cameras of novel-view sampling: presets, lists from YAML/JSON, the network's angles, OpenCV poses.

Angles are in degrees. Azimuths are relative to the input view (the input camera sits at azimuth 0);
elevations are the cameras' own, with the input camera at `input_elevation_deg` (0 by default, as the
release assumes). The network gets them in the release's
convention (`model.embeddings.relative_polar_azimuth`: the input view at polar 90 deg, azimuth 0). The
poses written with the samples are our render convention (shards/cameras.py: world Z up, camera on
a sphere of `radius` looking at the origin, OpenCV axes), so `fit4d/` and the evaluation read them like
render cameras.

Presets: ``sv4d2`` (the release's default: azimuth 60/120/180/240, elevation 0), ``sv4d2_8views``
(30/75/.../330), ``orbit`` (N views evenly spaced around the turn after the input view, at one elevation).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.embeddings import relative_polar_azimuth

PRESETS = ("sv4d2", "sv4d2_8views", "orbit")
_RELEASE_AZIMUTHS = {
    "sv4d2": (60.0, 120.0, 180.0, 240.0),
    "sv4d2_8views": (30.0, 75.0, 120.0, 165.0, 210.0, 255.0, 300.0, 330.0),
}


@dataclass(frozen=True)
class CameraSet:
    """N target views: elevation_deg, azimuth_deg (N,) (see module doc for the convention)."""

    elevation_deg: tuple[float, ...]
    azimuth_deg: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.elevation_deg) != len(self.azimuth_deg) or not self.elevation_deg:
            raise ValueError("a camera set needs as many elevations as azimuths, at least one")
        for el in self.elevation_deg:
            if not -90.0 < el < 90.0:
                raise ValueError(f"elevation {el} deg must lie strictly between -90 and 90")

    def __len__(self) -> int:
        return len(self.elevation_deg)

    def network_angles(self, input_elevation_deg: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(polar_rad, azimuth_rad), each (N,), as the network is conditioned."""
        el = torch.tensor(self.elevation_deg, dtype=torch.float32).deg2rad()
        az = torch.tensor(self.azimuth_deg, dtype=torch.float32).deg2rad()
        return relative_polar_azimuth(el, az, math.radians(input_elevation_deg), 0.0)

    def poses(self, input_elevation_deg: float = 0.0, radius: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
        """(c2w (N+1, 4, 4), angles (N+1, 3) [elevation_deg, azimuth_deg, radius]) float32; row 0 is the
        input view, rows 1.. the targets."""
        from shards.cameras import c2w_opencv

        el = [float(input_elevation_deg), *self.elevation_deg]
        az = [0.0, *(a % 360.0 for a in self.azimuth_deg)]
        c2w = np.stack([c2w_opencv(e, a, radius) for e, a in zip(el, az)]).astype(np.float32)
        angles = np.array([[e, a, radius] for e, a in zip(el, az)], np.float32)
        return c2w, angles


def preset(name: str, num_views: int = 4, elevation_deg: float = 0.0) -> CameraSet:
    """A named camera set (see module doc); `num_views` and `elevation_deg` apply to ``orbit``."""
    if name in _RELEASE_AZIMUTHS:
        az = _RELEASE_AZIMUTHS[name]
        return CameraSet((float(elevation_deg),) * len(az), az)
    if name == "orbit":
        if num_views < 1:
            raise ValueError(f"orbit preset needs at least one view, got {num_views}")
        az = tuple(360.0 * (i + 1) / (num_views + 1) for i in range(num_views))
        return CameraSet((float(elevation_deg),) * num_views, az)
    raise ValueError(f"unknown camera preset {name!r}; known: {', '.join(PRESETS)}")


def from_pairs(pairs: object, where: str = "cameras") -> CameraSet:
    """[[elevation, azimuth], ...] or [{"elevation": e, "azimuth": a}, ...] (degrees) -> CameraSet."""
    if isinstance(pairs, dict) and "views" in pairs:
        pairs = pairs["views"]
    if not isinstance(pairs, list) or not pairs:
        raise ValueError(f"{where}: expected a non-empty list of (elevation, azimuth) pairs")
    el, az = [], []
    for i, p in enumerate(pairs):
        if isinstance(p, dict) and {"elevation", "azimuth"} <= set(p):
            e, a = p["elevation"], p["azimuth"]
        elif isinstance(p, list | tuple) and len(p) == 2:
            e, a = p
        else:
            raise ValueError(f"{where}: entry {i} ({p!r}) is not [elevation, azimuth] or a dict with both")
        try:
            el.append(float(e))
            az.append(float(a))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: entry {i} ({p!r}) is not numeric") from None
    return CameraSet(tuple(el), tuple(az))


def load_cameras(path: str | Path) -> CameraSet:
    """A camera list from a .json or .yaml/.yml file (see `from_pairs`)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"camera file not found: {path} (sample.cameras)")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    return from_pairs(data, where=str(path))


def resolve_cameras(spec: str | list, num_views: int, elevation_deg: float) -> CameraSet:
    """`sample.cameras`: a preset name, a file path, a list of pairs or an inline JSON list "[[0, 90]]"."""
    if not isinstance(spec, str):
        return from_pairs([list(p) for p in spec], where="sample.cameras")
    spec = spec.strip()
    if spec.startswith("["):
        return from_pairs(json.loads(spec), where="sample.cameras")
    if spec in PRESETS:
        return preset(spec, num_views, elevation_deg)
    if Path(spec).expanduser().suffix.lower() in (".json", ".yaml", ".yml"):
        return load_cameras(spec)
    raise ValueError(f"sample.cameras {spec!r} is neither a preset ({', '.join(PRESETS)}), a file nor a list")


def intrinsics_matrix(fov_deg: float, resolution: int) -> np.ndarray:
    """float32 (3, 3) pinhole K of the written poses (the render convention, shards/cameras.py)."""
    from shards.cameras import intrinsics

    return np.asarray(intrinsics(fov_deg, resolution), np.float32)
