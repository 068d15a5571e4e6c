"""Per-shard manifests (parquet, one row per sample): what became of every asset (render) and of every render
sample (latents), with a status, a reason code and, for renders, the measured values and timings. One writer,
one column table per stage; paths in shards.layout."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards.writer import atomic_write_bytes

#: render status values: rendered (in the shard), filtered (a curation filter said no), failed (bad asset,
#: crash, timeout, fetch error). `reason` is a short code, `detail` human text.
RENDER_STATUSES = ("rendered", "filtered", "failed")

RENDER_COLUMNS: dict[str, pa.DataType] = {
    "uid": pa.string(),
    "source": pa.string(),
    "status": pa.string(),
    "reason": pa.string(),
    "detail": pa.string(),
    "license": pa.string(),
    "expected": pa.string(),
    "attempts": pa.int32(),
    "num_vertices": pa.int64(),
    "num_faces": pa.int64(),
    "num_images": pa.int32(),
    "motion": pa.float64(),
    "scale_ratio": pa.float64(),
    "clip_frames": pa.int32(),
    "hdri": pa.string(),
    "hdri_rotation_deg": pa.float64(),
    "analysis_s": pa.float64(),
    "render_s": pa.float64(),
    "total_s": pa.float64(),
    "s_per_image": pa.float64(),
    "node_id": pa.string(),
    # render stage on real assets (issue 14)
    "action": pa.string(),
    "actions": pa.string(),
    "clip_start": pa.float64(),
    "border_images": pa.int32(),
    "transparent_images": pa.int32(),
    "min_coverage": pa.float64(),
    "max_coverage": pa.float64(),
    "orphan_skeleton": pa.bool_(),
    "timeout_s": pa.float64(),
    "gyration_scale_ratio": pa.float64(),
}

#: latent status values: encoded (in the latent shard), failed (reason: unreadable_tar, schema, bad_image,
#: bad_latents, missing_rows).
LATENT_STATUSES = ("encoded", "failed")

LATENT_COLUMNS: dict[str, pa.DataType] = {
    "shard": pa.int32(),
    "uid": pa.string(),
    "status": pa.string(),
    "reason": pa.string(),
    "detail": pa.string(),
    "num_images": pa.int32(),
}


def _clean(value: Any, dtype: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_floating(dtype):
        value = float(value)
        return None if math.isnan(value) else value
    if pa.types.is_integer(dtype):
        return int(value)
    if pa.types.is_boolean(dtype):
        return bool(value)
    return str(value)


def manifest_table(
    rows: Iterable[dict[str, Any]],
    columns: dict[str, pa.DataType] = RENDER_COLUMNS,
    statuses: tuple[str, ...] = RENDER_STATUSES,
) -> pa.Table:
    """Rows (dicts; missing columns become null, unknown keys are an error) -> an Arrow table."""
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(columns)
        if unknown:
            raise ValueError(f"manifest row for {row.get('uid')!r} has unknown columns {sorted(unknown)}")
        if row.get("status") not in statuses:
            raise ValueError(f"manifest row for {row.get('uid')!r}: status {row.get('status')!r}")
    arrays = {name: pa.array([_clean(r.get(name), t) for r in rows], type=t) for name, t in columns.items()}
    return pa.table(arrays)


def write_manifest(
    path: Path,
    rows: Iterable[dict[str, Any]],
    columns: dict[str, pa.DataType] = RENDER_COLUMNS,
    statuses: tuple[str, ...] = RENDER_STATUSES,
) -> Path:
    """Write the manifest atomically (temp file + rename): a render manifest by default; the latent stage
    passes LATENT_COLUMNS and LATENT_STATUSES."""
    buf = io.BytesIO()
    pq.write_table(manifest_table(rows, columns, statuses), buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_manifest(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()
