"""Global-motion correction checked on real renders of the procedural walker (its root drifts ~1 body).

With the correction, the most static region (the body) stays put in a fixed view: its projected
centroid moves less than 2% of the image width across frames. Without it, it moves far more.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_scripts.cameras import project
from blender_scripts.motion import disentangle_motion
from blender_scripts.normalize import apply_normalization
from curation.render import render_shard, shard_paths
from profiles import load_profile

pytestmark = [pytest.mark.blender, pytest.mark.slow]

RES = 64
VIEW = 1  # static orbit, 4 views: azimuth 90 looks across the walker's drift along x


@pytest.fixture(scope="module")
def walker_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("walker")
    cmd = [sys.executable, "-m", "blender_scripts.procedural_assets", "--out", str(out), "--only", "walker"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def _render(tmp_path: Path, assets: Path, correct: bool) -> Path:
    import ray

    cfg = load_profile(
        "demo",
        [
            "assets.source=local",
            f"assets.local_dir={assets}",
            "assets.local_license=cc0",
            f"out_dir={tmp_path}",
            f"curation.motion.enabled={str(correct).lower()}",
            f"render.resolution={RES}",
            "render.orbit.num_views=4",
            "render.num_frames=6",
            "render.orbits=[static]",
            "render.samples=2",
        ],
    )
    try:
        render_shard(cfg, 0, num_cpus=1)
    finally:
        ray.shutdown()
    (asset_dir,) = [p for p in shard_paths(tmp_path, 0)["work"].iterdir() if p.is_dir()]
    return asset_dir


def _static_region_track(asset_dir: Path) -> np.ndarray:
    """Pixel centroid (F, 2) of the most static region, through the render's own transforms."""
    result = json.loads((asset_dir / "result.json").read_text())
    with np.load(asset_dir / "analysis.npz") as npz:
        positions = npz["positions"]
    box = disentangle_motion(positions).box_mask
    offsets = np.asarray(result["global_offsets"] or np.zeros((len(positions), 3)))
    c2w = np.asarray(result["cameras"]["static"]["c2w"][VIEW])
    K = np.asarray(result["K"])
    norm = result["normalization"]
    track = []
    for t in range(len(positions)):
        p = apply_normalization(positions[t, box] - offsets[t], norm["scale"], np.asarray(norm["offset"]))
        track.append(project(p, c2w, K).mean(axis=0))
    return np.asarray(track)


def _silhouette_centres(asset_dir: Path) -> np.ndarray:
    centres = []
    for png in sorted((asset_dir / "static").glob(f"v{VIEW:02d}_f*.png")):
        alpha = np.asarray(Image.open(png))[..., 3] > 127
        ys, xs = np.nonzero(alpha)
        centres.append([(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2])
    return np.asarray(centres)


def test_walker_static_region_stays_centred_only_with_correction(tmp_path, walker_dir):
    moved = {}
    boxes = {}
    for correct in (True, False):
        asset_dir = _render(tmp_path / str(correct), walker_dir, correct)
        track = _static_region_track(asset_dir)
        moved[correct] = float(np.ptp(track[:, 0]) / RES)
        boxes[correct] = float(np.ptp(_silhouette_centres(asset_dir)[:, 0]) / RES)
    print(f"static-region centroid travel {moved}, silhouette-centre travel {boxes} (fraction of width)")
    assert moved[True] < 0.02, moved
    assert moved[False] > 0.10, moved
    # the images agree: the silhouette's horizontal centre wanders far less with the correction
    assert boxes[True] < 0.5 * boxes[False], boxes
