"""Everything a finished fit writes into its folder (see fit4d/run.py for the layout)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from fit4d.export.gltf import write_frames_glb, write_morph_glb
from fit4d.export.mesh import canonical_mesh, deform_to_frame, frame_mesh, surface_level, write_ply
from fit4d.export.video import normal_to_rgb, orbit_frames, to_uint8, write_video
from fit4d.loop import Fitter, frame_time
from profiles.loader import to_dict

log = logging.getLogger(__name__)


def save_checkpoint(fitter: Fitter, path: Path) -> None:
    """The NeRF weights, occupancy grid and fit4d config (enough to render or export again)."""
    state = {
        "model": fitter.model.state_dict(),
        "occupancy": fitter.occupancy.grid.cpu(),
        "config": to_dict(fitter.cfg),
        "num_frames": fitter.num_frames,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def global_translations(meta: dict, num_frames: int) -> np.ndarray | None:
    """Per-frame root offsets (F, 3) recorded by the renderer's global-motion removal, if any."""
    offsets = meta.get("global_offsets")
    if offsets is None:
        return None
    arr = np.asarray(offsets, np.float32)
    if arr.shape != (num_frames, 3):
        return None
    scale = (
        float(meta.get("normalization", {}).get("scale", 1.0))
        if isinstance(meta.get("normalization"), dict)
        else 1.0
    )
    return arr * scale


@torch.no_grad()
def write_outputs(fitter: Fitter, report: dict, out: Path) -> dict[str, float]:
    """Checkpoint, per-frame meshes, both GLBs, RGB and normal orbit videos, report JSON. Returns timings."""
    cfg = fitter.cfg
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    save_checkpoint(fitter, out / "nerf.pt")
    model = fitter.model
    model.dynamic = fitter.num_frames > 1
    F = fitter.num_frames
    res = cfg.export_resolution
    thr = surface_level(model, res, cfg.export_threshold)
    if thr != cfg.export_threshold:
        log.warning(
            "%s: peak density below fit4d.export_threshold %.3g: meshes at %.3g",
            fitter.data.key,
            cfg.export_threshold,
            thr,
        )
    (out / "meshes").mkdir(exist_ok=True)
    meshes = []
    for f in range(F):
        mesh = frame_mesh(model, float(frame_time(f, F)), res, thr)
        write_ply(out / "meshes" / f"frame_{f:03d}.ply", mesh)
        meshes.append(mesh)
    translations = global_translations(fitter.data.meta, F) if cfg.export_global_motion else None
    write_frames_glb(out / "asset_frames.glb", meshes, cfg.fps, translations)
    canon = canonical_mesh(model, res, thr)
    positions, residuals = [], []
    for f in range(F):
        pos, resid = deform_to_frame(model, canon.vertices, float(frame_time(f, F)))
        positions.append(pos)
        residuals.append(resid)
    write_morph_glb(out / "asset_morph.glb", canon, np.stack(positions), cfg.fps, translations)
    timings["meshes_s"] = time.perf_counter() - start
    start = time.perf_counter()
    angles = fitter.angles[fitter.data.input_view]
    side = cfg.video_resolution or fitter.height
    K = fitter.K.clone()
    K[:2] *= side / fitter.width
    rgb_frames, normal_frames = [], []
    for c2w, t in orbit_frames(
        None, cfg.video_views, F, float(angles[0]), float(angles[2]), float(angles[1])
    ):
        r = fitter.render_image(
            torch.from_numpy(c2w).float().to(fitter.device), t, side, side, K, with_normals=True
        )
        rgb_frames.append(to_uint8(r["rgb"]))
        normal_frames.append(to_uint8(normal_to_rgb(r["normal"], r["opacity"], cfg.render.background)))
    write_video(out / "orbit_rgb.mp4", rgb_frames, cfg.fps)
    write_video(out / "orbit_normal.mp4", normal_frames, cfg.fps)
    timings["videos_s"] = time.perf_counter() - start
    report = dict(report)
    report["export"] = {
        "timings": timings,
        "morph_inverse_residual_max": float(max(residuals)),
        "surface_level": thr,
        "canonical_vertices": int(len(canon.vertices)),
        "frame_vertices": [int(len(m.vertices)) for m in meshes],
    }
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "report.json")
    return timings
