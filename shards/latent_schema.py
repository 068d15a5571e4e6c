"""The latent-sample contract: what `curation.encode_latents` writes and training reads.

One WebDataset sample per asset, same ``__key__`` as its render sample. Latent shard N
(``<out>/latents/shard-{N:06d}.tar``) holds the encoded samples of render shard N. Fields:

===========================  ====================================================================
field                        content
===========================  ====================================================================
``{orbit}.latent_mean.npy``  float16 (V, F, C, H/8, W/8): VAE posterior mean, UNSCALED (C = 4)
``{orbit}.latent_std.npy``   float16 (V, F, C, H/8, W/8): VAE posterior std, unscaled, >= 0
``{orbit}.clip.npy``         float16 (V, F, D): CLIP image embedding, not normalized (D = 1024 ViT-H-14)
``{orbit}.c2w.npy``          float32 (V, 4, 4), copied from the render sample
``{orbit}.angles.npy``       float32 (V, 3), copied
``intrinsics.npy``           float32 (3, 3), copied
``meta.json``                the render sample's meta (frames mapping, normalization, ...) plus
                             ``encoder`` (see REQUIRED_ENCODER_META) and ``latent_schema_version``
===========================  ====================================================================

Training draws ``z = (mean + std * eps) * meta["encoder"]["vae_scaling_factor"]`` (see
`draw_posterior_latents`); the images were composited on white before encoding
(``meta["encoder"]["background"]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shards.render_schema import (
    ORBITS,
    REQUIRED_META,
    SchemaError,
    check_fields,
    expect_array,
    npy_bytes,
    npy_header,
    npy_load,
    parse_meta,
)

LATENT_SCHEMA_VERSION = 1
REQUIRED_ENCODER_META = (
    "vae",
    "vae_scaling_factor",
    "latent_channels",
    "downsample",
    "clip_model",
    "clip_dim",
    "background",
)
ARRAY_FIELDS = ("latent_mean", "latent_std", "clip", "c2w", "angles")


@dataclass
class LatentSample:
    """A decoded latent sample. mean/std[orbit]: float16 (V, F, C, h, w); clip[orbit]: float16 (V, F, D)."""

    key: str
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    clip: dict[str, np.ndarray]
    c2w: dict[str, np.ndarray]
    angles: dict[str, np.ndarray]
    intrinsics: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def orbits(self) -> list[str]:
        return [o for o in ORBITS if o in self.mean]

    @property
    def scaling_factor(self) -> float:
        return float(self.meta["encoder"]["vae_scaling_factor"])


def _meta(raw: dict[str, Any]) -> dict[str, Any]:
    meta = parse_meta(raw, (*REQUIRED_META, "encoder"))
    enc = meta["encoder"]
    if not isinstance(enc, dict):
        raise SchemaError("meta.json: encoder must be a mapping")
    missing = [k for k in REQUIRED_ENCODER_META if k not in enc]
    if missing:
        raise SchemaError(f"meta.json: encoder is missing keys {missing}")
    return meta


def expected_fields(meta: dict[str, Any]) -> set[str]:
    names = {"__key__", "meta.json", "intrinsics.npy"}
    for orbit in meta["orbits"]:
        names |= {f"{orbit}.{a}.npy" for a in ARRAY_FIELDS}
    return names


def expected_arrays(meta: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Field -> (shape, dtype) of every array a sample with this (validated) meta must hold."""
    V, F, R = int(meta["num_views"]), int(meta["num_frames"]), int(meta["resolution"])
    enc = meta["encoder"]
    try:
        down, C, D = int(enc["downsample"]), int(enc["latent_channels"]), int(enc["clip_dim"])
    except (TypeError, ValueError) as exc:
        raise SchemaError(f"meta.json: encoder sizes are not integers ({exc})") from exc
    if not (1 <= down <= R and 1 <= C <= 64 and 1 <= D <= 8192):
        raise SchemaError(f"meta.json: encoder sizes out of range (downsample {down}, channels {C}, dim {D})")
    if R % down:
        raise SchemaError(f"meta.json: resolution {R} is not a multiple of the VAE downsampling {down}")
    h = R // down
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {"intrinsics.npy": ((3, 3), np.float32)}
    for orbit in meta["orbits"]:
        shapes[f"{orbit}.latent_mean.npy"] = ((V, F, C, h, h), np.float16)
        shapes[f"{orbit}.latent_std.npy"] = ((V, F, C, h, h), np.float16)
        shapes[f"{orbit}.clip.npy"] = ((V, F, D), np.float16)
        shapes[f"{orbit}.c2w.npy"] = ((V, 4, 4), np.float32)
        shapes[f"{orbit}.angles.npy"] = ((V, 3), np.float32)
    return shapes


NPY_HEADER_BYTES = 4096
"""Enough of a .npy member to parse its header (numpy writes 128 bytes for our shapes)."""


def check_latent_headers(raw: dict[str, Any]) -> tuple[int, ...]:
    """The cheap check of a latent sample: meta.json, the field list and every array's .npy header (dtype
    and shape), without the array data; ``raw`` holds meta.json and at least the first NPY_HEADER_BYTES of
    each array. Returns the sample's latent (C, h, w) and CLIP dim, which all samples of a run must share.
    Values (NaN, negative std) are checked where the sample is decoded (`decode_latent_sample`)."""
    meta = _meta(raw)
    check_fields(raw, expected_fields(meta))
    shapes = expected_arrays(meta)
    for fname, (shape, dtype) in shapes.items():
        got_shape, got_dtype = npy_header(raw[fname], fname)
        if got_dtype != np.dtype(dtype):
            raise SchemaError(f"{fname}: dtype {got_dtype}, expected {np.dtype(dtype)}")
        if got_shape != shape:
            raise SchemaError(f"{fname}: shape {got_shape}, expected {shape}")
    orbit = meta["orbits"][0]
    return (*shapes[f"{orbit}.latent_mean.npy"][0][2:], shapes[f"{orbit}.clip.npy"][0][2])


def decode_latent_sample(raw: dict[str, Any]) -> LatentSample:
    """Validate a raw latent sample (field -> bytes) and decode it; SchemaError names the offending field."""
    meta = _meta(raw)
    key = meta["uid"]
    shapes = expected_arrays(meta)
    check_fields(raw, expected_fields(meta))

    intrinsics = npy_load(raw["intrinsics.npy"], "intrinsics.npy")
    expect_array(intrinsics, "intrinsics.npy", *shapes["intrinsics.npy"])
    out: dict[str, dict[str, np.ndarray]] = {a: {} for a in ARRAY_FIELDS}
    for orbit in meta["orbits"]:
        for name in ARRAY_FIELDS:
            fname = f"{orbit}.{name}.npy"
            arr = npy_load(raw[fname], fname)
            expect_array(arr, fname, *shapes[fname])
            out[name][orbit] = arr
        if np.any(out["latent_std"][orbit] < 0):
            raise SchemaError(f"{orbit}.latent_std.npy: negative standard deviations")
    return LatentSample(
        key=key,
        mean=out["latent_mean"],
        std=out["latent_std"],
        clip=out["clip"],
        c2w=out["c2w"],
        angles=out["angles"],
        intrinsics=intrinsics,
        meta=meta,
    )


def encode_latent_sample(sample: LatentSample) -> dict[str, Any]:
    """LatentSample -> raw fields (bytes) for `shards.writer.ShardWriter`, validated before returning.

    Arrays are written with the dtypes of the contract (float16 latents/embeddings, float32 cameras); a
    wrong shape raises SchemaError naming the field.
    """
    meta = dict(sample.meta)
    meta.setdefault("latent_schema_version", LATENT_SCHEMA_VERSION)
    raw: dict[str, Any] = {
        "__key__": sample.key,
        "meta.json": json.dumps(meta, sort_keys=True).encode(),
        "intrinsics.npy": npy_bytes(np.asarray(sample.intrinsics, np.float32)),
    }
    for orbit in meta.get("orbits", []):
        raw[f"{orbit}.latent_mean.npy"] = npy_bytes(np.asarray(sample.mean[orbit], np.float16))
        raw[f"{orbit}.latent_std.npy"] = npy_bytes(np.asarray(sample.std[orbit], np.float16))
        raw[f"{orbit}.clip.npy"] = npy_bytes(np.asarray(sample.clip[orbit], np.float16))
        raw[f"{orbit}.c2w.npy"] = npy_bytes(np.asarray(sample.c2w[orbit], np.float32))
        raw[f"{orbit}.angles.npy"] = npy_bytes(np.asarray(sample.angles[orbit], np.float32))
    decode_latent_sample(raw)
    return raw


def draw_posterior_latents(
    mean: np.ndarray, std: np.ndarray, scaling_factor: float, rng: np.random.Generator
) -> np.ndarray:
    """One draw of the scaled training latent: (mean + std * eps) * scaling_factor, float32, mean's shape."""
    eps = rng.standard_normal(mean.shape, dtype=np.float32)
    return (mean.astype(np.float32) + std.astype(np.float32) * eps) * np.float32(scaling_factor)
