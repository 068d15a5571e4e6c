"""Render one asset with Blender CYCLES: V views x F frames for the static and/or dynamic orbit.

    .venv/bin/python -m blender_scripts.render_asset --job JOB.json

JOB.json (blender_scripts.job.RenderJob): uid, asset_path (absolute), out_dir (absolute), and
    render       the profile's `render` section as is (profiles/schema.py RenderConfig: mode, resolution,
                 num_frames, clip_duration_s, orbits, orbit, samples, denoiser, device, threads,
                 adaptive_threshold, max_bounces, fill, min_margin_px, crop_border, ...)
    seed         Cycles seed and the dynamic orbit's seed
    environment  {"kind": "sky", "strength"} | {"kind": "hdri", "path", "rotation_deg", "strength"}
    global_offsets  null | F triples: world offsets subtracted per rendered frame before normalization
    static_frame    null | the source frame that static mode poses an animated asset at
    action, clip_start  the action to play (null: the longest) and the clip's first source frame
    crop_border: render only the object's projected bounding box (+3 px) of each image; the pixels outside
        are transparent anyway, so the image is the same, 2-3x faster (see object_border)
Framing: the scale is the largest at which every vertex of every rendered frame projects within
render.fill of the half side from the image centre in every camera (normalize.framing_scale), so no
image has alpha on its border; result.json's normalization records it beside the unit-extent scale.

Writes into out_dir:
    {orbit}/v{VV:02d}_f{FF:02d}.png   RGBA 8-bit, transparent background, Standard view transform
    blender.log                       Blender's own output (importer, Cycles), appended per attempt
    progress.json                     {"images_done", "images_total", "elapsed_s"} after every image
    result.json                       written last; status "ok" with cameras (OpenCV c2w, see cameras.py),
                                      frames, normalization, counts, timings; or status "failed" + reason
Exit codes: 0 ok, 1 crash, 2 bad job, 3 bad asset (result.json has the reason; do not retry).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from blender_scripts.cameras import (
    blender_camera_matrix_world,
    dynamic_orbit,
    intrinsics,
    project,
    static_orbit,
    world_to_camera,
)
from blender_scripts.job import RenderJob, run_cli, write_json_atomic
from blender_scripts.normalize import framing_half_side, framing_scale, normalization_from_bboxes

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process, all threads: wall time is unreliable on a shared machine."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def orbits_for_job(job: RenderJob) -> dict[str, Any]:
    """The job's camera orbits by name (deterministic: the dynamic orbit is seeded by job.seed)."""
    o = job.render.orbit
    out = {}
    for name in job.render.orbits:
        if name == "static":
            out[name] = static_orbit(o.num_views, o.static_elevation_deg, o.radius)
        else:
            out[name] = dynamic_orbit(
                o.num_views,
                job.seed,
                tuple(o.dynamic_elevation_range_deg),
                o.dynamic_azimuth_jitter,
                o.radius,
            )
    return out


def _select_device(scene: Any, device: str) -> str:
    """Set the Cycles device; returns the backend used (CPU, CUDA, OPTIX). auto: OPTIX, CUDA, else CPU."""
    import bpy

    if device == "CPU":
        scene.cycles.device = "CPU"
        return "CPU"
    prefs = bpy.context.preferences.addons["cycles"].preferences
    for backend in ("OPTIX", "CUDA") if device == "auto" else (device,):
        try:
            prefs.compute_device_type = backend
        except TypeError:  # backend not compiled in
            continue
        prefs.get_devices()
        gpus = [d for d in prefs.devices if d.type == backend]
        if gpus:
            for d in prefs.devices:
                d.use = d.type == backend
            scene.cycles.device = "GPU"
            return backend
    if device != "auto":
        raise RuntimeError(f"device {device} requested but Cycles finds no {device} device")
    scene.cycles.device = "CPU"
    return "CPU"


def configure_cycles(job: RenderJob) -> dict[str, Any]:
    """Cycles, film and colour settings of the job; returns the settings used."""
    import bpy

    r = job.render

    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    backend = _select_device(scene, r.device)
    cyc = scene.cycles
    cyc.samples = int(r.samples)
    cyc.use_adaptive_sampling = r.adaptive_threshold > 0
    if r.adaptive_threshold > 0:
        cyc.adaptive_threshold = float(r.adaptive_threshold)
    cyc.use_denoising = r.denoiser != "none"
    if r.denoiser != "none":
        cyc.denoiser = "OPENIMAGEDENOISE" if r.denoiser == "OIDN" else "OPTIX"
    cyc.max_bounces = int(r.max_bounces)
    for attr in ("diffuse_bounces", "glossy_bounces", "transmission_bounces", "volume_bounces"):
        setattr(cyc, attr, min(getattr(cyc, attr), int(r.max_bounces)))
    cyc.seed = int(job.seed)
    cyc.use_animated_seed = False
    scene.render.use_persistent_data = True  # keeps the BVH and shaders between renders (faster)
    if r.threads > 0:
        scene.render.threads_mode = "FIXED"
        scene.render.threads = int(r.threads)
    else:
        scene.render.threads_mode = "AUTO"
    sr = scene.render
    sr.resolution_x = sr.resolution_y = int(r.resolution)
    sr.resolution_percentage = 100
    sr.film_transparent = True
    sr.image_settings.file_format = "PNG"
    sr.image_settings.color_mode = "RGBA"
    sr.image_settings.color_depth = "8"
    sr.image_settings.compression = 15
    scene.display_settings.display_device = "sRGB"
    scene.view_settings.view_transform = "Standard"  # the default AgX would tone-map the albedo
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    return {
        "engine": "CYCLES",
        "device": backend,
        "samples": int(r.samples),
        "denoiser": r.denoiser,
        "adaptive_threshold": float(r.adaptive_threshold),
        "max_bounces": int(r.max_bounces),
        "threads": int(r.threads),
        "seed": int(job.seed),
        "resolution": int(r.resolution),
    }


BORDER_MARGIN_PX = 3.0  # > the 1.5 px pixel filter's reach, plus rounding


def object_border(
    lo: np.ndarray, hi: np.ndarray, c2w: np.ndarray, K: np.ndarray, resolution: int
) -> tuple[float, float, float, float] | None:
    """Blender render border (min_x, max_x, min_y, max_y; fractions, y up) around a world box lo/hi (3,).

    The projected box corners bound the silhouette (it lies in their convex hull). None when a corner is
    (nearly) behind the camera, where the projection does not bound anything.
    """
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    if (world_to_camera(corners, c2w)[:, 2] <= 0.05).any():
        return None
    uv = project(corners, c2w, K)
    (u0, v0), (u1, v1) = uv.min(0) - BORDER_MARGIN_PX, uv.max(0) + BORDER_MARGIN_PX
    clip = lambda x: float(min(max(x / resolution, 0.0), 1.0))  # noqa: E731
    return clip(u0), clip(u1), clip(resolution - v1), clip(resolution - v0)


def crop_is_exact(meshes: list[Any], camera: Any, root: Any) -> bool:
    """Whether the asset meshes' boxes bound everything Cycles renders (no hair, particles, volumes...)."""
    import bpy

    allowed = set(meshes) | {camera, root}
    for obj in bpy.data.objects:
        if obj.hide_render or obj in allowed or obj.type in ("EMPTY", "ARMATURE", "LIGHT", "CAMERA"):
            continue
        return False
    return not any(len(getattr(m, "particle_systems", ())) for m in meshes)


def make_camera(fov_deg: float) -> Any:
    """A perspective camera with horizontal = vertical field of view `fov_deg` on a square image."""
    import bpy

    cam_data = bpy.data.cameras.new("sv4d2_camera")
    cam_data.type = "PERSP"
    cam_data.lens_unit = "FOV"
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.angle = math.radians(fov_deg)
    cam_data.clip_start = 0.01
    cam_data.clip_end = 100.0
    cam = bpy.data.objects.new("sv4d2_camera", cam_data)
    bpy.context.scene.collection.objects.link(cam)
    bpy.context.scene.camera = cam
    return cam


def _progress(out_dir: Path, done: int, total: int, started: float) -> None:
    """`progress.json` after each image: the orchestrator shows per-image progress of long assets."""
    elapsed = time.perf_counter() - started
    payload = {"images_done": done, "images_total": total, "elapsed_s": elapsed}
    write_json_atomic(out_dir / PROGRESS_FILE, payload)
    log.info("image %d/%d (%.1f s/image)", done, total, elapsed / max(done, 1))


def frame_scale(
    meshes: list[Any],
    frames: np.ndarray,
    offset: np.ndarray,
    offsets: np.ndarray | None,
    orbits: dict[str, Any],
    K: np.ndarray,
    job: RenderJob,
) -> float:
    """The framing scale (normalize.framing_scale) over every rendered frame's evaluated vertices."""
    from blender_scripts import scene_io

    r = job.render
    half = framing_half_side(r.resolution, r.fill, r.min_margin_px)
    c2w = np.concatenate([o.c2w for o in orbits.values()])
    scale = np.inf
    for i, f in enumerate(frames):
        scene_io.set_frame(float(f))
        pts = np.concatenate(scene_io.evaluated_vertices(meshes))
        g = np.zeros(3) if offsets is None else offsets[i]
        scale = min(scale, framing_scale(pts - g + offset, c2w, K, half))
    return float(scale)


def render(job: RenderJob) -> dict[str, Any]:
    """The whole job: import, frames, framing, root transform, lighting, cameras, renders, result."""
    import bpy
    from mathutils import Matrix

    from blender_scripts import scene_io
    from blender_scripts.lighting import setup_environment

    r = job.render
    t_start = time.perf_counter()
    out_dir = Path(job.out_dir)
    log_path = out_dir / "blender.log"
    (out_dir / PROGRESS_FILE).unlink(missing_ok=True)
    with open(log_path, "a") as f:
        f.write(f"=== render_asset {job.uid} {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
    asset = scene_io.load_asset(job, str(log_path))
    t_setup = time.perf_counter()
    frames = asset.source_frames
    offsets = None if job.global_offsets is None else np.asarray(job.global_offsets, dtype=np.float64)
    mins, maxs = scene_io.bboxes_at_frames(asset.meshes, frames)
    if offsets is not None:
        mins, maxs = mins - offsets, maxs - offsets
    unit_scale, offset = normalization_from_bboxes(mins, maxs)
    orbits = orbits_for_job(job)
    K = intrinsics(r.orbit.fov_deg, r.resolution)
    scale = frame_scale(asset.meshes, frames, offset, offsets, orbits, K, job)
    scene_io.set_frame(float(frames[0]))
    num_vertices, num_faces = scene_io.mesh_counts(asset.meshes)
    root = scene_io.add_root(frames, scale, offset, offsets)
    # the asset's box per frame in the rendered (normalized) world, for the render border
    norm_lo, norm_hi = scale * (mins + offset), scale * (maxs + offset)

    settings = configure_cycles(job)
    env_used = setup_environment(job.environment)
    cam = make_camera(r.orbit.fov_deg)
    crop = bool(r.crop_border) and crop_is_exact(asset.meshes, cam, root)
    settings["crop_border"] = crop
    for name in orbits:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    scene = bpy.context.scene

    t_render = time.perf_counter()
    cpu_render = _cpu_seconds()
    images = 0
    total = len(frames) * sum(len(o) for o in orbits.values())
    image_s: list[float] = []  # per image, in render order (frame-major, then orbit, then view)
    image_cpu_s: list[float] = []
    for fi, frame in enumerate(frames):
        scene_io.set_frame(float(frame))
        for name, orbit in orbits.items():
            for vi, c2w in enumerate(orbit.c2w):
                cam.matrix_world = Matrix(blender_camera_matrix_world(c2w).tolist())
                border = object_border(norm_lo[fi], norm_hi[fi], c2w, K, r.resolution) if crop else None
                scene.render.use_border = border is not None
                scene.render.use_crop_to_border = False  # full-size image, transparent outside
                if border is not None:
                    sr = scene.render
                    sr.border_min_x, sr.border_max_x, sr.border_min_y, sr.border_max_y = border
                scene.render.filepath = str(out_dir / name / f"v{vi:02d}_f{fi:02d}.png")
                t_img, cpu_img = time.perf_counter(), _cpu_seconds()
                with scene_io.captured_output(log_path):
                    bpy.ops.render.render(write_still=True)
                image_s.append(time.perf_counter() - t_img)
                image_cpu_s.append(_cpu_seconds() - cpu_img)
                images += 1
                _progress(out_dir, images, total, t_render)
    t_end = time.perf_counter()
    cpu_render = _cpu_seconds() - cpu_render
    missing = [
        f"{name}/v{vi:02d}_f{fi:02d}.png"
        for name, orbit in orbits.items()
        for vi in range(len(orbit))
        for fi in range(len(frames))
        if not (out_dir / name / f"v{vi:02d}_f{fi:02d}.png").is_file()
    ]
    if missing:
        raise RuntimeError(
            f"Cycles wrote no image for {missing[:5]} ({len(missing)} missing); see {log_path}"
        )

    render_s = t_end - t_render
    return {
        "status": "ok",
        "uid": job.uid,
        "mode": r.mode,
        "blender_version": ".".join(str(v) for v in bpy.app.version),
        "resolution": int(r.resolution),
        "fov_deg": float(r.orbit.fov_deg),
        "K": K.tolist(),
        "cameras": {name: orbit.to_json() for name, orbit in orbits.items()},
        "frames": asset.frames_json(),
        "normalization": {
            "scale": float(scale),
            "offset": [float(v) for v in offset],
            "rule": "framing",
            "fill": float(r.fill),
            "min_margin_px": float(r.min_margin_px),
            "unit_extent_scale": float(unit_scale),
        },
        "global_offsets": None if offsets is None else offsets.tolist(),
        "num_vertices": int(num_vertices),
        "num_faces": int(num_faces),
        "num_meshes": len(asset.meshes),
        "mesh_names": [m.name for m in asset.meshes],
        "single_sided_materials": asset.single_sided,
        "orphan_skeleton_pose": asset.viewer_fix,
        "environment": env_used,
        "render_settings": settings,
        "timings": {
            "import_s": asset.import_s,
            "setup_s": t_render - t_setup,
            "render_s": render_s,
            "total_s": t_end - t_start,
            "images": images,
            "s_per_image": render_s / max(images, 1),
            "render_cpu_s": cpu_render,
            "image_s": image_s,
            "image_cpu_s": image_cpu_s,
        },
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, __doc__, "result.json", render)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # a bpy process can hang at interpreter exit after rendering
