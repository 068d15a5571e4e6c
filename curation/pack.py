"""Pack a finished per-asset render folder into a render sample (shards contract), without re-encoding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from shards.render_schema import SCHEMA_VERSION, decode_render_sample, image_field, npy_bytes

RESULT_FILE = "result.json"


def expected_images(render_dir: Path, result: dict[str, Any]) -> list[Path]:
    """Every PNG the renderer promised in result.json: `{orbit}/v{VV}_f{FF}.png`."""
    views = len(next(iter(result["cameras"].values()))["c2w"])
    frames = len(result["frames"]["source_frames"]) if result.get("mode") != "static" else 1
    return [
        render_dir / orbit / f"v{v:02d}_f{f:02d}.png"
        for orbit in result["cameras"]
        for v in range(views)
        for f in range(frames)
    ]


def sample_meta(result: dict[str, Any], record_fields: dict[str, Any], curation: dict[str, Any]) -> dict:
    cams = result["cameras"]
    orbits = [o for o in ("static", "dynamic") if o in cams]
    return {
        "schema_version": SCHEMA_VERSION,
        "uid": result["uid"],
        "mode": result.get("mode", "4d"),
        "resolution": int(result["resolution"]),
        "num_views": len(cams[orbits[0]]["c2w"]),
        "num_frames": 1 if result.get("mode") == "static" else len(result["frames"]["source_frames"]),
        "orbits": orbits,
        "fov_deg": float(result["fov_deg"]),
        "frames": result["frames"],
        "normalization": result["normalization"],
        "global_offsets": result.get("global_offsets"),
        "environment": result.get("environment"),
        "num_vertices": result.get("num_vertices"),
        "num_faces": result.get("num_faces"),
        "timings": result.get("timings"),
        "blender_version": result.get("blender_version"),
        "asset": record_fields,
        "curation": curation,
    }


def pack_render_dir(
    render_dir: Path, record_fields: dict[str, Any], curation: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Read `result.json` and the PNGs of one asset into a validated raw sample (field -> bytes)."""
    result = json.loads((render_dir / RESULT_FILE).read_text())
    meta = sample_meta(result, record_fields, curation or {})
    raw: dict[str, Any] = {
        "__key__": meta["uid"],
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
        "intrinsics.npy": npy_bytes(np.asarray(result["K"], np.float32)),
    }
    for orbit in meta["orbits"]:
        cam = result["cameras"][orbit]
        raw[f"{orbit}.c2w.npy"] = npy_bytes(np.asarray(cam["c2w"], np.float32))
        angles = np.stack([cam["elevation_deg"], cam["azimuth_deg"], cam["radius"]], axis=1)
        raw[f"{orbit}.angles.npy"] = npy_bytes(angles.astype(np.float32))
        for v in range(meta["num_views"]):
            for f in range(meta["num_frames"]):
                raw[image_field(orbit, v, f)] = (render_dir / orbit / f"v{v:02d}_f{f:02d}.png").read_bytes()
    decode_render_sample(raw)  # a sample that breaks the contract never reaches a shard
    return raw
