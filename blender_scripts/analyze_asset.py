"""Cheap pre-render analysis of one asset: evaluated vertex trajectories over the clip (for the filters).

    .venv/bin/python -m blender_scripts.analyze_asset --job JOB.json

Reads the same JOB.json as render_asset; uses uid, asset_path, out_dir, render.{mode, num_frames,
clip_duration_s, clip}, action, clip_start, static_frame and max_points. Samples the clip's frames exactly
as render_asset does. With measure_actions it instead samples every action (actions.npz, actions.json) for
render.clip.select most_motion.

Writes into out_dir:
    analysis.npz    positions float32 (F, P, 3): world-space evaluated positions of a deterministic subsample
                    of at most max_points vertices (the same vertices, in the same order, every frame);
                    bbox_min, bbox_max float64 (F, 3) over ALL vertices; source_frames, times_s (F,);
                    vertex_index int64 (P,): indices of the subsample into the concatenated vertex list
                    (asset meshes sorted by name)
    blender.log     importer output, appended
    analysis.json   written last: {"status": "ok"|"failed", "uid", "reason", "detail", "num_vertices",
                    "num_faces", "num_meshes", "frames": {...as in result.json, with every action},
                    "has_animation", "orphan_skeleton", "extent_xyz", "timings"}
Exit codes: 0 ok, 1 crash, 2 bad job, 3 bad asset (analysis.json has the reason; do not retry).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blender_scripts.job import RenderJob, run_cli


def subsample_indices(num_vertices: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a deterministic random subsample of at most `max_points` of `num_vertices`."""
    if num_vertices <= max_points:
        return np.arange(num_vertices)
    return np.sort(np.random.default_rng(seed).choice(num_vertices, size=max_points, replace=False))


class VertexTrack:
    """The same deterministic vertex subsample at every evaluated frame: evaluated vertices (V, 3) ->
    float32 (P, 3). A vertex count that changes between frames fails the asset (`varying_topology`): the
    subsample would no longer follow the same points."""

    def __init__(self, max_points: int, over: str) -> None:
        self.max_points, self.over = max_points, over
        self.count = 0
        self.index: np.ndarray | None = None

    def sample(self, verts: np.ndarray) -> np.ndarray:
        from blender_scripts.scene_io import AssetError

        if self.index is None:
            self.count = len(verts)
            self.index = subsample_indices(self.count, self.max_points)
        elif len(verts) != self.count:
            raise AssetError(
                "varying_topology", f"vertex count changes over {self.over} ({self.count} then {len(verts)})"
            )
        return verts[self.index].astype(np.float32)


def measure_actions(job: RenderJob, asset: Any, out_dir: Path) -> dict[str, Any]:
    """Sample every action at render.clip.motion_samples uniform frames (render.clip.select most_motion).

    Writes actions.npz: positions_{i} float32 (K, P, 3) (the same vertex subsample for every action) and
    frames_{i} (K,) for action i of the returned "actions" list.
    """
    from blender_scripts import scene_io

    actions = asset.clip.actions
    arrays: dict[str, np.ndarray] = {}
    track = VertexTrack(int(job.max_points), "the actions")
    for i, action in enumerate(actions):
        scene_io.apply_action(action["name"])
        lo, hi = action["frame_range"]
        frames = np.linspace(lo, hi, int(job.render.clip.motion_samples)) if hi > lo else np.array([lo])
        positions = []
        for frame in frames:
            scene_io.set_frame(float(frame))
            positions.append(track.sample(np.concatenate(scene_io.evaluated_vertices(asset.meshes))))
        arrays[f"positions_{i}"] = np.stack(positions)
        arrays[f"frames_{i}"] = frames
    np.savez(out_dir / "actions.npz", **arrays)
    return {"status": "ok", "uid": job.uid, "actions": actions, "fps": asset.clip.fps}


def analyze(job: RenderJob) -> dict[str, Any]:
    from blender_scripts import scene_io
    from blender_scripts.gltf_checks import orphan_skin_rotation_deg, orphan_skins, read_gltf_json

    t_start = time.perf_counter()
    out_dir = Path(job.out_dir)
    log_path = out_dir / "blender.log"
    with open(log_path, "a") as f:
        f.write(f"=== analyze_asset {job.uid} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
    try:
        asset = scene_io.load_asset(job, str(log_path))
    except scene_io.AssetError as exc:
        if exc.reason == "no_animation":  # the scene is loaded: record the counts for the manifest anyway
            meshes = scene_io.asset_meshes()
            nv, nf = scene_io.mesh_counts(meshes)
            exc.extra = {
                "num_vertices": nv,
                "num_faces": nf,
                "num_meshes": len(meshes),
                "has_animation": False,
            }
        raise
    if job.measure_actions:
        return measure_actions(job, asset, out_dir)
    gltf = read_gltf_json(job.asset_path)
    orphans = orphan_skins(gltf) if gltf is not None else []
    orphan_rotation = orphan_skin_rotation_deg(gltf) if orphans else 0.0
    t_eval = time.perf_counter()
    positions, mins, maxs = [], [], []
    track = VertexTrack(int(job.max_points), "the clip")
    for frame in asset.source_frames:
        scene_io.set_frame(float(frame))
        verts = np.concatenate(scene_io.evaluated_vertices(asset.meshes))
        if len(verts) == 0:
            raise scene_io.AssetError("no_mesh", f"the asset's meshes have no vertices at frame {frame}")
        positions.append(track.sample(verts))
        mins.append(verts.min(0))
        maxs.append(verts.max(0))
    scene_io.set_frame(float(asset.source_frames[0]))
    nv, nf = scene_io.mesh_counts(asset.meshes)
    np.savez(
        out_dir / "analysis.npz",
        positions=np.stack(positions),
        bbox_min=np.array(mins),
        bbox_max=np.array(maxs),
        source_frames=asset.source_frames,
        times_s=asset.times_s,
        vertex_index=track.index.astype(np.int64),
    )
    t_end = time.perf_counter()
    return {
        "status": "ok",
        "uid": job.uid,
        "reason": None,
        "detail": None,
        "mode": job.render.mode,
        "num_vertices": int(nv),
        "num_faces": int(nf),
        "num_meshes": len(asset.meshes),
        "num_points": len(track.index),
        "frames": asset.frames_json(),
        "has_animation": bool(asset.clip.has_animation),
        # viewers and Blender disagree on the orientation (blender_scripts/gltf_checks.py)
        "orphan_skeleton": orphan_rotation > 1.0,
        "orphan_skins": orphans,
        "orphan_skin_rotation_deg": orphan_rotation,
        "orphan_skeleton_pose": asset.viewer_fix,
        # up-axis evidence: the clip's extent along Blender's X, Y, Z (a figure lying down has a small Z)
        "extent_xyz": (np.array(maxs).max(0) - np.array(mins).min(0)).tolist(),
        "single_sided_materials": asset.single_sided,
        "timings": {"import_s": asset.import_s, "evaluate_s": t_end - t_eval, "total_s": t_end - t_start},
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, __doc__, "analysis.json", analyze)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
