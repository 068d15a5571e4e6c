"""The generated-sample contract: what `python -m model.sample` writes and `fit4d/` and the evaluation read.

One WebDataset sample per input video (``<out>/generated.tar``), `__key__` = the input's name
(``[A-Za-z0-9_-]+``). View 0 is the (cropped, model-resolution) input view, views 1..N the generated ones.

======================================  ===========================================================
field                                   content
======================================  ===========================================================
``view.v{VV}.f{FF}.png``                RGBA 8-bit PNG, view VV, frame FF (RGB on white; alpha 255
                                        for generated views, the input's mask for view 0)
``c2w.npy``                             float32 (N+1, 4, 4) camera-to-world, OpenCV convention
``angles.npy``                          float32 (N+1, 3): elevation_deg, azimuth_deg, radius
``intrinsics.npy``                      float32 (3, 3) pinhole K in pixels (fov `meta.fov_deg`)
``crop_boxes.npy``                      float32 (F, 4) [x0, y0, x1, y1] of each frame's crop in the
                                        source frame's pixels (continuous coordinates)
``source_frames.npy``                   float32 (F,) source frame position of each frame (fractional
                                        when interpolated to fill a window)
``meta.json``                           uid, schema_version, num_views (N+1), num_frames, resolution,
                                        fov_deg, input_view (0), crop_mode, foreground, source, and
                                        provenance: checkpoint, seed, num_steps, cfg, sigmas, windows,
                                        view groups, start_step
======================================  ===========================================================

Cameras follow the render schema (shards/render_schema.py): world Z up, the object at the origin, the
input camera at azimuth 0 and the configured elevation and radius; each view keeps one camera for all
frames (the object's global motion is in the crop boxes, not in the cameras).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.render_schema import (
    KEY_RE,
    SchemaError,
    check_fields,
    expect_array,
    npy_bytes,
    npy_load,
    png_bytes,
    png_load,
)

GENERATED_SCHEMA_VERSION = 1
IMAGE_RE = re.compile(r"^view\.v(\d{2,})\.f(\d{2,})\.png$")
REQUIRED_META = (
    "uid",
    "num_views",
    "num_frames",
    "resolution",
    "fov_deg",
    "input_view",
    "checkpoint",
    "seed",
)
PROVENANCE = ("checkpoint", "seed", "num_steps", "guidance", "cfg_min", "cfg_max")


def image_field(view: int, frame: int) -> str:
    return f"view.v{view:02d}.f{frame:02d}.png"


@dataclass
class GeneratedSample:
    """images uint8 (V, F, R, R, 4) with view 0 the input; c2w (V, 4, 4); angles (V, 3); crop_boxes (F, 4)."""

    key: str
    images: np.ndarray
    c2w: np.ndarray
    angles: np.ndarray
    intrinsics: np.ndarray
    crop_boxes: np.ndarray
    source_frames: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def _meta(raw: dict[str, Any]) -> dict[str, Any]:
    key = raw.get("__key__")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise SchemaError(f"__key__: {key!r} is not a valid sample key ([A-Za-z0-9_-]+)")
    if "meta.json" not in raw:
        raise SchemaError("meta.json: missing")
    try:
        meta = json.loads(raw["meta.json"])
    except Exception as exc:
        raise SchemaError(f"meta.json: not valid JSON ({exc})") from exc
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise SchemaError(f"meta.json: missing keys {missing}")
    if meta["uid"] != key:
        raise SchemaError(f"meta.json: uid {meta['uid']!r} differs from __key__ {key!r}")
    return meta


def decode_generated_sample(raw: dict[str, Any], decode_images: bool = True) -> GeneratedSample:
    """Validate a raw sample (field -> bytes) and decode it; SchemaError names the bad field."""
    meta = _meta(raw)
    V, F, R = int(meta["num_views"]), int(meta["num_frames"]), int(meta["resolution"])
    arrays = {
        "c2w": (V, 4, 4),
        "angles": (V, 3),
        "intrinsics": (3, 3),
        "crop_boxes": (F, 4),
        "source_frames": (F,),
    }
    expected = {"__key__", "meta.json"} | {f"{k}.npy" for k in arrays}
    expected |= {image_field(v, f) for v in range(V) for f in range(F)}
    check_fields(raw, expected)
    out: dict[str, np.ndarray] = {}
    for name, shape in arrays.items():
        out[name] = npy_load(raw[f"{name}.npy"], f"{name}.npy")
        expect_array(out[name], f"{name}.npy", shape, np.float32)
    rot = out["c2w"][:, :3, :3].astype(np.float64)
    if not np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-4):
        raise SchemaError("c2w.npy: rotation part is not orthonormal")
    images = np.zeros((0,), np.uint8)
    if decode_images:
        images = np.empty((V, F, R, R, 4), np.uint8)
        for v in range(V):
            for f in range(F):
                name = image_field(v, f)
                img = png_load(raw[name], name)
                if img.shape != (R, R, 4):
                    raise SchemaError(f"{name}: shape {img.shape}, expected {(R, R, 4)}")
                images[v, f] = img
    return GeneratedSample(key=meta["uid"], images=images, meta=meta, **out)


def encode_generated_sample(sample: GeneratedSample) -> dict[str, Any]:
    """GeneratedSample -> raw fields (bytes), checked by decoding the result's metadata and arrays."""
    meta = dict(sample.meta)
    meta.setdefault("schema_version", GENERATED_SCHEMA_VERSION)
    meta["uid"] = sample.key
    V, F = sample.images.shape[:2]
    meta["num_views"], meta["num_frames"], meta["resolution"] = int(V), int(F), int(sample.images.shape[2])
    raw: dict[str, Any] = {"__key__": sample.key, "meta.json": json.dumps(meta, sort_keys=True).encode()}
    for name in ("c2w", "angles", "intrinsics", "crop_boxes", "source_frames"):
        raw[f"{name}.npy"] = npy_bytes(np.asarray(getattr(sample, name), np.float32))
    for v in range(V):
        for f in range(F):
            raw[image_field(v, f)] = png_bytes(sample.images[v, f])
    decode_generated_sample(raw, decode_images=False)
    return raw


def read_generated(path: str, key: str = "") -> GeneratedSample:
    """The generated sample `key` (or the first) of a tar written by `model.sample`."""
    from shards.reader import iter_raw_samples

    for raw in iter_raw_samples(path):
        if not key or raw["__key__"] == key:
            return decode_generated_sample(raw)
    raise SchemaError(f"{path}: no generated sample {key!r}" if key else f"{path}: empty")
