"""The render-sample contract: what `curation.render` writes and `curation.encode_latents` reads.

One WebDataset sample per asset, `__key__` = the asset uid (``[A-Za-z0-9_-]+``: no dots, since WebDataset
splits a member name at its first dot). Fields, named by extension:

======================================  ===========================================================
field                                   content
======================================  ===========================================================
``{orbit}.v{VV}.f{FF}.png``             RGBA 8-bit PNG of view VV, frame FF (orbit: static | dynamic)
``{orbit}.c2w.npy``                     float32 (V, 4, 4) camera-to-world, OpenCV convention
``{orbit}.angles.npy``                  float32 (V, 3): elevation_deg, azimuth_deg, radius
``intrinsics.npy``                      float32 (3, 3) pinhole K in pixels (square images)
``meta.json``                           uid, mode, resolution, num_views, num_frames, orbits, fov_deg,
                                        frames, normalization, global_offsets, environment, counts...
======================================  ===========================================================

Cameras: the world is Blender's (Z up). A camera's OpenCV frame has x right, y down, z forward (into
the scene), so ``x_world = c2w @ [x_cam, 1]``. Elevation is the angle above the XY plane; azimuth is
measured from +X toward +Y. Each view keeps one camera for all frames; every camera looks at the origin.

Framing (schema version 2): ``p_world = scale * (p_asset - global_offsets[f] + offset)``, with ``offset``
centring the asset's bounding box over the whole clip at the origin, and ``scale`` the largest scale at
which every vertex of every rendered frame projects within ``fill`` (0.9) of the half side from the image
centre, along u and along v, in every camera of the sample (both orbits), and at least ``min_margin_px``
pixels from the border. So the whole object is inside every image, its widest image spans 90% of the side
(the released SV3D/SV4D samplers crop their input so the object fills about 90% of the side), and no
image has alpha on its outermost pixels. ``meta.normalization`` holds scale, offset, rule ("framing"),
fill, min_margin_px and unit_extent_scale (the paper's largest-extent-1 scale, for reference; version 1
samples used that scale, which let objects leave the frame). ``meta.curation.image_stats`` records, per
image, the alpha coverage and whether alpha touches the border; ``meta.frames`` names the rendered action
and lists every action of the file with its frame range.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 2
ORBITS = ("static", "dynamic")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
REQUIRED_META = ("uid", "mode", "resolution", "num_views", "num_frames", "orbits", "fov_deg")
#: Bounds on the sizes a sample may declare, checked before anything is allocated: a corrupt or hostile
#: meta.json must not make a reader reserve memory without limit (paper scale: 576 px, 24 x 24 images).
MAX_RESOLUTION = 4096
MAX_VIEWS = 256
MAX_FRAMES = 256
MAX_IMAGES_PER_ORBIT = 4096


class SchemaError(ValueError):
    """A sample does not follow the shard contract; the message names the offending key."""


def select_indices(indices: Sequence[int], count: int, what: str) -> list[int]:
    """`indices` of an orbit's views or frames (empty: all of range(count)), checked to lie in range and not
    repeat; `what` names the setting in the error (e.g. "evaluation.views")."""
    chosen = [int(i) for i in indices] if indices else list(range(count))
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise SchemaError(f"{what} {bad} out of range: the orbit has {count}")
    if len(set(chosen)) != len(chosen):
        raise SchemaError(f"{what} {chosen} repeat an index")
    return chosen


def image_field(orbit: str, view: int, frame: int) -> str:
    return f"{orbit}.v{view:02d}.f{frame:02d}.png"


@dataclass
class RenderSample:
    """A decoded render sample. Shapes: images[orbit] uint8 (V, F, H, W, 4); c2w[orbit] (V, 4, 4)."""

    key: str
    images: dict[str, np.ndarray]
    c2w: dict[str, np.ndarray]
    angles: dict[str, np.ndarray]
    intrinsics: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def orbits(self) -> list[str]:
        return [o for o in ORBITS if o in self.images]


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_header(data: bytes, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy from its first bytes (the header; no array data is needed)."""
    from numpy.lib import format as npy_format

    buf = io.BytesIO(data)
    try:
        version = npy_format.read_magic(buf)
        shape, fortran, dtype = npy_format._read_array_header(buf, version)  # the header parser np.load uses
    except Exception as exc:  # numpy raises several types for a corrupt header
        raise SchemaError(f"{name}: not a readable .npy header ({exc})") from exc
    if dtype.hasobject:
        raise SchemaError(f"{name}: object arrays are not allowed")
    return tuple(shape), dtype


def npy_load(data: bytes, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt data
        raise SchemaError(f"{name}: not a readable .npy ({exc})") from exc


def png_bytes(rgba: np.ndarray) -> bytes:
    from PIL import Image

    if rgba.dtype != np.uint8 or rgba.ndim != 3 or rgba.shape[2] != 4:
        raise SchemaError(f"PNG image must be uint8 (H, W, 4), got {rgba.dtype} {rgba.shape}")
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def png_load(data: bytes, name: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGBA":
                raise SchemaError(f"{name}: PNG mode {im.mode}, expected RGBA")
            return np.asarray(im).copy()
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError(f"{name}: not a readable PNG ({exc})") from exc


def expect_array(arr: np.ndarray, name: str, shape: tuple[int, ...], dtype: Any) -> None:
    """Raise SchemaError naming `name` unless `arr` has exactly this dtype and shape and is finite."""
    if arr.dtype != np.dtype(dtype):
        raise SchemaError(f"{name}: dtype {arr.dtype}, expected {np.dtype(dtype)}")
    if arr.shape != shape:
        raise SchemaError(f"{name}: shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise SchemaError(f"{name}: contains NaN or Inf")


def parse_meta(raw: dict[str, Any], required: tuple[str, ...] = REQUIRED_META) -> dict[str, Any]:
    """The sample's meta.json as a dict, with the `required` keys and a valid orbit list, and the sample
    key checked against its uid."""
    key = raw.get("__key__")
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise SchemaError(f"__key__: {key!r} is not a valid sample key ([A-Za-z0-9_-]+)")
    if "meta.json" not in raw:
        raise SchemaError("meta.json: missing")
    value = raw["meta.json"]
    try:
        meta = json.loads(value) if isinstance(value, bytes | str) else dict(value)
    except Exception as exc:
        raise SchemaError(f"meta.json: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise SchemaError(f"meta.json: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in required if k not in meta]
    if missing:
        raise SchemaError(f"meta.json: missing keys {missing}")
    orbits = meta["orbits"]
    if not isinstance(orbits, list) or not orbits or any(o not in ORBITS for o in orbits):
        raise SchemaError(f"meta.json: orbits {orbits!r} must be a non-empty subset of {list(ORBITS)}")
    if len(set(orbits)) != len(orbits):
        raise SchemaError(f"meta.json: orbits {orbits!r} repeat an orbit")
    if meta["uid"] != key:
        raise SchemaError(f"meta.json: uid {meta['uid']!r} differs from __key__ {key!r}")
    _bounded_int(meta, "resolution", MAX_RESOLUTION)
    views = _bounded_int(meta, "num_views", MAX_VIEWS)
    frames = _bounded_int(meta, "num_frames", MAX_FRAMES)
    if views * frames > MAX_IMAGES_PER_ORBIT:
        raise SchemaError(
            f"meta.json: {views} views x {frames} frames exceeds {MAX_IMAGES_PER_ORBIT} images per orbit"
        )
    if meta["mode"] not in ("4d", "static"):
        raise SchemaError(f"meta.json: mode {meta['mode']!r} is not one of 4d, static")
    return meta


def _bounded_int(meta: dict[str, Any], name: str, limit: int) -> int:
    value = meta[name]
    # bool is an int in Python; "64" or 64.5 in a JSON file is a writer's bug, not a size
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise SchemaError(f"meta.json: {name} {value!r} must be an integer in [1, {limit}]")
    return value


def check_fields(raw: dict[str, Any], expected: set[str]) -> None:
    """Raise SchemaError listing missing or unexpected fields (``__url__`` and other ``__`` keys aside)."""
    present = {k for k in raw if not k.startswith("__") or k == "__key__"}
    missing = sorted(expected - present)
    if missing:
        raise SchemaError(f"missing fields: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    extra = sorted(present - expected)
    if extra:
        raise SchemaError(f"unexpected fields: {extra[:5]}")


def decode_render_sample(raw: dict[str, Any], decode_images: bool = True) -> RenderSample:
    """Validate a raw sample (field -> bytes) and decode it; raises SchemaError naming the bad field."""
    meta = parse_meta(raw)
    key = meta["uid"]
    V, F, R = int(meta["num_views"]), int(meta["num_frames"]), int(meta["resolution"])
    if meta["mode"] == "static" and F != 1:
        raise SchemaError(f"meta.json: static-mode samples have num_frames 1, got {F}")

    expected = {"__key__", "meta.json", "intrinsics.npy"}
    for orbit in meta["orbits"]:
        expected |= {f"{orbit}.c2w.npy", f"{orbit}.angles.npy"}
        expected |= {image_field(orbit, v, f) for v in range(V) for f in range(F)}
    check_fields(raw, expected)

    intrinsics = npy_load(raw["intrinsics.npy"], "intrinsics.npy")
    expect_array(intrinsics, "intrinsics.npy", (3, 3), np.float32)
    images: dict[str, np.ndarray] = {}
    c2w: dict[str, np.ndarray] = {}
    angles: dict[str, np.ndarray] = {}
    for orbit in meta["orbits"]:
        c2w[orbit] = npy_load(raw[f"{orbit}.c2w.npy"], f"{orbit}.c2w.npy")
        expect_array(c2w[orbit], f"{orbit}.c2w.npy", (V, 4, 4), np.float32)
        rot = c2w[orbit][:, :3, :3].astype(np.float64)
        if not np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-4):
            raise SchemaError(f"{orbit}.c2w.npy: rotation part is not orthonormal")
        angles[orbit] = npy_load(raw[f"{orbit}.angles.npy"], f"{orbit}.angles.npy")
        expect_array(angles[orbit], f"{orbit}.angles.npy", (V, 3), np.float32)
        if decode_images:
            stack = np.empty((V, F, R, R, 4), np.uint8)
            for v in range(V):
                for f in range(F):
                    name = image_field(orbit, v, f)
                    img = png_load(raw[name], name)
                    if img.shape != (R, R, 4):
                        raise SchemaError(f"{name}: shape {img.shape}, expected {(R, R, 4)}")
                    stack[v, f] = img
            images[orbit] = stack
    return RenderSample(key=key, images=images, c2w=c2w, angles=angles, intrinsics=intrinsics, meta=meta)


def encode_render_sample(sample: RenderSample) -> dict[str, Any]:
    """RenderSample -> raw fields (bytes), validated by decoding the result's metadata and arrays."""
    meta = dict(sample.meta)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    raw: dict[str, Any] = {
        "__key__": sample.key,
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
        "intrinsics.npy": npy_bytes(np.asarray(sample.intrinsics, np.float32)),
    }
    for orbit in meta.get("orbits", []):
        raw[f"{orbit}.c2w.npy"] = npy_bytes(np.asarray(sample.c2w[orbit], np.float32))
        raw[f"{orbit}.angles.npy"] = npy_bytes(np.asarray(sample.angles[orbit], np.float32))
        stack = sample.images[orbit]
        for v in range(stack.shape[0]):
            for f in range(stack.shape[1]):
                raw[image_field(orbit, v, f)] = png_bytes(stack[v, f])
    decode_render_sample(raw, decode_images=False)
    return raw
