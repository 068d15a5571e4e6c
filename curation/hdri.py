"""Near-ambient HDRI lighting (paper supplement 7.1: "filter out environment maps that have strong shading
effect and only sample from near-ambient maps").

The ambient score of a map measures how strongly it shades a diffuse object: the map's luminance is
projected onto real spherical harmonics up to order 2 (equirectangular pixels weighted by their solid
angle), the irradiance over all normal directions follows from the Ramamoorthi-Hanrahan convolution
(E(n) = sum_lm A_l L_lm Y_lm(n), A = pi, 2pi/3, pi/4), and

    score = (max_n E(n) - min_n E(n)) / mean_n E(n)    over a dense Fibonacci sphere of normals.

A uniform sky scores 0; a small bright sun on a dim sky scores about 4 (a point light alone: 4.4). The
score depends only on the map, not on its rotation about the vertical axis (the sphere of normals is
rotation-invariant), so the random rotation given to each asset does not change which maps pass.

Library: a folder of .hdr (Radiance RGBE, read and written here in numpy) and .exr (read with the `OpenEXR`
package when it is installed; otherwise .exr maps are skipped with a logged warning). Scores are cached in
`ambient_scores.json` inside the folder, keyed by "file name|size|mtime_ns". Maps scoring above
`max_ambient_score` are excluded; each asset draws a map from the rest and a rotation about the vertical
axis, both from a generator seeded by its uid (and the profile seed), so a re-run draws the same.

Equirectangular convention: row 0 is the zenith (+Z, Blender's up), rows go down to the nadir, columns
sweep the azimuth; only the vertical axis matters here, and a rotation about it is a column shift.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from profiles.schema import HdriConfig
from shards.writer import atomic_write_bytes

log = logging.getLogger(__name__)

CACHE_FILE = "ambient_scores.json"
CACHE_VERSION = 1
MAP_SUFFIXES = (".hdr", ".exr")
MAX_ROWS = 256  # maps are box-filtered down to at most this many rows before the projection
_SH_A = np.array([np.pi] + [2 * np.pi / 3] * 3 + [np.pi / 4] * 5)
_LUMA = np.array([0.2126, 0.7152, 0.0722])


# --------------------------------------------------------------------------------------------- RGBE I/O


def read_hdr(path: str | os.PathLike) -> np.ndarray:
    """Radiance .hdr (RGBE; flat or new-style run-length encoded scanlines; "-Y H +X W" orientation)
    -> float32 (H, W, 3) linear RGB. Raises ValueError for a malformed file."""
    data = Path(path).read_bytes()
    pos = 0
    header: list[bytes] = []
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: truncated Radiance header")
        line = data[pos:end]
        pos = end + 1
        if not line.strip():
            break
        header.append(line)
    if not header or not header[0].startswith(b"#?"):
        raise ValueError(f"{path}: not a Radiance file (no '#?' magic)")
    fmt = [h for h in header if h.startswith(b"FORMAT=")]
    if fmt and fmt[0].strip() != b"FORMAT=32-bit_rle_rgbe":
        raise ValueError(f"{path}: unsupported {fmt[0].decode(errors='replace')}")
    end = data.find(b"\n", pos)
    m = re.match(rb"-Y (\d+) \+X (\d+)", data[pos:end])
    if not m:
        raise ValueError(f"{path}: unsupported resolution line {data[pos:end][:40]!r} (only -Y H +X W)")
    h, w = int(m.group(1)), int(m.group(2))
    pos = end + 1
    rgbe = np.empty((h, w, 4), np.uint8)
    buf = memoryview(data)
    for y in range(h):
        if pos + 4 > len(data):
            raise ValueError(f"{path}: truncated pixel data at scanline {y}")
        if (
            8 <= w < 32768
            and data[pos : pos + 2] == b"\x02\x02"
            and (data[pos + 2] << 8 | data[pos + 3]) == w
        ):
            pos += 4
            for c in range(4):
                x = 0
                row = rgbe[y, :, c]
                while x < w:
                    if pos + 1 >= len(data):
                        raise ValueError(f"{path}: truncated scanline {y}")
                    count = data[pos]
                    if count > 128:
                        count -= 128
                        if x + count > w:
                            raise ValueError(f"{path}: run overflows scanline {y}")
                        row[x : x + count] = data[pos + 1]
                        pos += 2
                    else:
                        if count == 0 or x + count > w:
                            raise ValueError(f"{path}: bad literal run in scanline {y}")
                        row[x : x + count] = np.frombuffer(buf[pos + 1 : pos + 1 + count], np.uint8)
                        pos += 1 + count
                    x += count
        else:  # flat scanline (old-style RLE is not supported; it is not written by current tools)
            if pos + 4 * w > len(data):
                raise ValueError(f"{path}: truncated pixel data at scanline {y}")
            rgbe[y] = np.frombuffer(buf[pos : pos + 4 * w], np.uint8).reshape(w, 4)
            pos += 4 * w
    e = rgbe[..., 3].astype(np.int32)
    scale = np.where(e > 0, np.ldexp(1.0, e - 136), 0.0)  # 2^(e-128) / 256
    # +0.5: the mantissas were truncated on writing (Radiance's convention, halves the error)
    return ((rgbe[..., :3].astype(np.float64) + 0.5) * scale[..., None]).astype(np.float32)


def _to_rgbe(rgb: np.ndarray) -> np.ndarray:
    rgb = np.maximum(np.asarray(rgb, dtype=np.float64), 0.0)
    brightest = rgb.max(axis=-1)
    mant, exp = np.frexp(brightest)
    ok = brightest > 1e-32
    scale = np.where(ok, mant * 256.0 / np.where(ok, brightest, 1.0), 0.0)
    out = np.zeros(rgb.shape[:-1] + (4,), np.uint8)
    out[..., :3] = np.clip(np.floor(rgb * scale[..., None]), 0, 255).astype(np.uint8)
    out[..., 3] = np.where(ok, np.clip(exp + 128, 0, 255), 0).astype(np.uint8)
    return out


def _rle_channel(values: np.ndarray) -> bytes:
    out = bytearray()
    n, i = len(values), 0
    while i < n:
        j = i + 1
        while j < n and j - i < 127 and values[j] == values[i]:
            j += 1
        if j - i >= 4:
            out += bytes((128 + j - i, int(values[i])))
            i = j
            continue
        start = i  # literal run up to the next run of 4 equal values
        while i < n and i - start < 128:
            if i + 3 < n and values[i] == values[i + 1] == values[i + 2] == values[i + 3]:
                break
            i += 1
        out += bytes((i - start,)) + values[start:i].tobytes()
    return bytes(out)


def write_hdr(path: str | os.PathLike, rgb: np.ndarray, rle: bool = True) -> Path:
    """float (H, W, 3) linear RGB -> Radiance .hdr (new-style RLE scanlines when rle and 8 <= W < 32768)."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"write_hdr: expected (H, W, 3), got {rgb.shape}")
    h, w = rgb.shape[:2]
    rgbe = _to_rgbe(rgb)
    parts = [
        b"#?RADIANCE\n# written by sv4d2 curation.hdri\nFORMAT=32-bit_rle_rgbe\n\n",
        f"-Y {h} +X {w}\n".encode(),
    ]
    if rle and 8 <= w < 32768:
        head = bytes((2, 2, w >> 8, w & 255))
        for y in range(h):
            parts.append(head)
            parts.extend(_rle_channel(rgbe[y, :, c]) for c in range(4))
    else:
        parts.append(rgbe.tobytes())
    # a temporary name per writer: concurrent jobs may generate the same demo map at once
    return atomic_write_bytes(path, b"".join(parts))


def read_exr(path: str | os.PathLike) -> np.ndarray:
    """OpenEXR -> float32 (H, W, 3) through the `OpenEXR` package (ImportError when it is missing)."""
    import OpenEXR

    with OpenEXR.File(str(path)) as f:
        ch = f.channels()
        if "RGB" in ch or "RGBA" in ch:
            return np.asarray(ch.get("RGB", ch.get("RGBA")).pixels, np.float32)[..., :3]
        if all(k in ch for k in "RGB"):
            return np.stack([np.asarray(ch[k].pixels, np.float32) for k in "RGB"], axis=-1)
        if "Y" in ch:
            y = np.asarray(ch["Y"].pixels, np.float32)
            return np.repeat(y[..., None], 3, axis=-1)
    raise ValueError(f"{path}: no R,G,B or Y channels (has {sorted(ch)})")


def read_map(path: str | os.PathLike) -> np.ndarray:
    """An environment map (.hdr / .exr) -> float32 (H, W, 3)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".hdr":
        return read_hdr(path)
    if suffix == ".exr":
        return read_exr(path)
    raise ValueError(f"{path}: not an .hdr or .exr map")


# --------------------------------------------------------------------------------------------- the score


def sh_basis(dirs: np.ndarray) -> np.ndarray:
    """Real spherical harmonics up to order 2 at unit directions (N, 3) -> (N, 9), in the order
    Y00, Y1-1, Y10, Y11, Y2-2, Y2-1, Y20, Y21, Y22 (Ramamoorthi & Hanrahan 2001)."""
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    return np.stack(
        [
            np.full_like(x, 0.282095),
            0.488603 * y,
            0.488603 * z,
            0.488603 * x,
            1.092548 * x * y,
            1.092548 * y * z,
            0.315392 * (3 * z * z - 1),
            1.092548 * x * z,
            0.546274 * (x * x - y * y),
        ],
        axis=1,
    )


def _downsample(img: np.ndarray, max_rows: int) -> np.ndarray:
    h, w = img.shape[:2]
    k = int(np.ceil(h / max_rows))
    if k <= 1:
        return img
    h2, w2 = h // k, w // k
    return img[: h2 * k, : w2 * k].reshape(h2, k, w2, k, -1).mean(axis=(1, 3))


def equirect_directions(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre directions (H*W, 3) (row 0 at the zenith, +Z up) and solid angles (H*W,)."""
    theta = (np.arange(h) + 0.5) * np.pi / h
    phi = (np.arange(w) + 0.5) * 2 * np.pi / w
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    dirs = np.stack(np.broadcast_arrays(st * np.cos(phi)[None], st * np.sin(phi)[None], ct), axis=-1)
    dw = np.repeat(np.sin(theta) * (np.pi / h) * (2 * np.pi / w), w)
    return dirs.reshape(-1, 3), dw


def sh_project(luminance: np.ndarray) -> np.ndarray:
    """Equirectangular (H, W) radiance -> the 9 SH coefficients L_lm (solid-angle weighted sums)."""
    h, w = luminance.shape
    dirs, dw = equirect_directions(h, w)
    return sh_basis(dirs).T @ (luminance.reshape(-1).astype(np.float64) * dw)


def fibonacci_sphere(n: int = 4096) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def irradiance(coeffs: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Irradiance E(n) at unit normals (N, 3) from radiance SH coefficients (9,)."""
    return sh_basis(normals) @ (_SH_A * coeffs)


def ambient_score(rgb: np.ndarray, num_normals: int = 4096) -> dict[str, Any]:
    """Score of an equirectangular map (H, W, 3): {"score", "mean_irradiance", "sh" (9 floats)}.

    score = (max - min) / mean of the order-2 irradiance over `num_normals` normals; inf when the mean
    irradiance is not positive (a black map).
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"ambient_score: expected (H, W, 3), got {rgb.shape}")
    lum = _downsample(np.maximum(rgb[..., :3], 0.0), MAX_ROWS) @ _LUMA
    coeffs = sh_project(lum)
    e = irradiance(coeffs, fibonacci_sphere(num_normals))
    mean = float(e.mean())
    score = float((e.max() - e.min()) / mean) if mean > 0 else float("inf")
    return {"score": score, "mean_irradiance": mean, "sh": [float(c) for c in coeffs]}


# --------------------------------------------------------------------------------------------- library


@dataclass(frozen=True)
class HdriEntry:
    path: Path
    score: float
    mean_irradiance: float


def _key(path: Path) -> str:
    st = path.stat()
    return f"{path.name}|{st.st_size}|{st.st_mtime_ns}"


def _load_cache(library: Path) -> dict[str, Any]:
    try:
        data = json.loads((library / CACHE_FILE).read_text())
        if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
            return data["entries"]
    except (OSError, json.JSONDecodeError, AttributeError):
        pass
    return {}


def _save_cache(library: Path, entries: dict[str, Any]) -> None:
    # atomic: concurrent workers may race, each writes a whole file
    payload = json.dumps({"version": CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
    atomic_write_bytes(library / CACHE_FILE, payload.encode())


def scan_library(library_dir: str | os.PathLike) -> list[HdriEntry]:
    """Every readable map of the folder with its score (computed once, then read from the cache), sorted
    by file name. Unreadable maps are logged and left out; .exr maps too when OpenEXR is missing."""
    library = Path(os.path.expanduser(str(library_dir))).resolve()
    if not library.is_dir():
        return []
    cache = _load_cache(library)
    fresh: dict[str, Any] = {}
    entries = []
    have_exr: bool | None = None
    for path in sorted(p for p in library.iterdir() if p.is_file() and p.suffix.lower() in MAP_SUFFIXES):
        key = _key(path)
        if key not in cache:
            if path.suffix.lower() == ".exr":
                if have_exr is None:
                    try:
                        import OpenEXR  # noqa: F401

                        have_exr = True
                    except ImportError:
                        have_exr = False
                        log.warning("OpenEXR is not installed: skipping the .exr maps of %s", library)
                if not have_exr:
                    continue
            try:
                cache[key] = ambient_score(read_map(path))
            except (OSError, ValueError) as exc:
                log.warning("skipping environment map %s: %s", path, exc)
                continue
            fresh[key] = cache[key]
        rec = cache[key]
        entries.append(
            HdriEntry(path=path, score=float(rec["score"]), mean_irradiance=rec["mean_irradiance"])
        )
    if fresh:
        try:
            merged = {**_load_cache(library), **cache}
            live = {_key(e.path) for e in entries}
            _save_cache(library, {k: v for k, v in merged.items() if k in live})
        except OSError as exc:  # a read-only library still works, only slower next time
            log.warning("cannot write the score cache in %s: %s", library, exc)
    return entries


def ambient_pool(entries: list[HdriEntry], max_ambient_score: float) -> list[HdriEntry]:
    """The near-ambient maps: score <= max_ambient_score (a NaN or inf score never passes)."""
    return [e for e in entries if e.score <= max_ambient_score]


def prepare_library(cfg: HdriConfig, seed: int = 0) -> list[HdriEntry]:
    """Run once before dispatching assets: generate the demo maps when configured, score every map.

    Returns the near-ambient pool (empty without a library)."""
    if not cfg.library_dir:
        return []
    library = Path(os.path.expanduser(cfg.library_dir))
    if cfg.generate_demo_maps > 0:
        generate_demo_maps(library, cfg.generate_demo_maps, seed)
    entries = scan_library(library)
    pool = ambient_pool(entries, cfg.max_ambient_score)
    log.info(
        "HDRI library %s: %d maps, %d near-ambient (score <= %g): %s",
        library,
        len(entries),
        len(pool),
        cfg.max_ambient_score,
        ", ".join(f"{e.path.name}={e.score:.2f}" for e in entries),
    )
    return pool


def choose_environment(
    uid: str,
    cfg: HdriConfig,
    seed: int = 0,
    sky_strength: float = 1.0,
    pool: list[HdriEntry] | None = None,
) -> dict[str, Any]:
    """The environment spec for one asset (the renderer's `environment` contract).

    With a non-empty near-ambient pool: {"kind": "hdri", "path": absolute path, "rotation_deg": [0, 360),
    "strength": cfg.strength, "ambient_score": score}, map and rotation drawn from a generator seeded by
    (crc32(uid), seed). Otherwise {"kind": "sky", "strength": sky_strength}. `pool` defaults to scanning
    cfg.library_dir (scores come from the cache after `prepare_library`).
    """
    if pool is None:
        pool = ambient_pool(scan_library(cfg.library_dir), cfg.max_ambient_score) if cfg.library_dir else []
    if not pool:
        return {"kind": "sky", "strength": float(sky_strength)}
    pool = sorted(pool, key=lambda e: e.path.name)
    rng = np.random.default_rng([zlib.crc32(uid.encode()), int(seed)])
    entry = pool[int(rng.integers(len(pool)))]
    return {
        "kind": "hdri",
        "path": str(entry.path.resolve()),
        "rotation_deg": float(rng.uniform(0.0, 360.0)),
        "strength": float(cfg.strength),
        "ambient_score": entry.score,
    }


# --------------------------------------------------------------------------------------------- demo maps


def _sky(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    dirs, _ = equirect_directions(h, w)
    z = dirs[:, 2].reshape(h, w)
    tint = 1.0 + 0.08 * rng.uniform(-1, 1, 3)
    if kind == "overcast":
        # nearly uniform: a faint gradient and low-frequency mottling
        base = 1.0 + 0.06 * z
        phase = rng.uniform(0, 2 * np.pi, 2)
        yy, xx = np.mgrid[:h, :w]
        base = base * (
            1 + 0.03 * np.sin(2 * np.pi * xx / w * 3 + phase[0]) * np.sin(np.pi * yy / h * 2 + phase[1])
        )
    elif kind == "gradient":
        # brighter sky than ground, smooth: a mild top light
        top, bottom = 1.0, rng.uniform(0.6, 0.75)
        base = bottom + (top - bottom) * (z + 1) / 2
    elif kind == "sun":
        # dim sky plus a small, very bright sun (about 2 degrees across) high in the sky
        base = 0.3 + 0.2 * np.clip(z, 0, None)
        el, az = np.deg2rad(rng.uniform(30, 60)), rng.uniform(0, 2 * np.pi)
        sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        cosang = (dirs @ sun).reshape(h, w)
        base = base + np.where(cosang > np.cos(np.deg2rad(2.0)), 8000.0, 0.0)
    else:
        raise ValueError(f"unknown demo sky kind {kind!r}")
    return (base[..., None] * tint[None, None, :]).astype(np.float32)


DEMO_KINDS = ("overcast", "gradient", "sun")


def generate_demo_maps(
    out_dir: str | os.PathLike, n: int, seed: int = 0, height: int = 128, width: int = 256
) -> list[Path]:
    """Write n synthetic equirectangular .hdr maps, cycling through near-uniform overcast skies, gradient
    skies and skies with a small bright sun (the last ones score high and are excluded). Deterministic;
    existing files are kept (so their cached scores stay valid)."""
    out = Path(os.path.expanduser(str(out_dir)))
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        kind = DEMO_KINDS[i % len(DEMO_KINDS)]
        path = out / f"demo_{i:02d}_{kind}.hdr"
        if not path.is_file():
            write_hdr(path, _sky(kind, np.random.default_rng([seed, i]), height, width))
        paths.append(path)
    return paths
