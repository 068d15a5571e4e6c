"""Everything that happens to one asset, as a plain function (Ray runs it; tests call it directly).

fetch -> analysis pass (Blender) -> motion disentanglement and filters -> lighting choice -> render pass
(Blender) -> `done.json`, the asset's manifest row. A finished asset folder is reused on a re-run, so a
killed job resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

from curation.blender_job import run_blender_script
from curation.pack import RESULT_FILE, expected_images
from profiles.schema import PipelineConfig

log = logging.getLogger(__name__)

DONE_FILE = "done.json"
ANALYSIS_FILE = "analysis.json"


def asset_seed(uid: str, seed: int) -> int:
    """A stable per-asset seed (Python's hash() is salted per process)."""
    return (zlib.crc32(uid.encode()) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


#: Failures that another attempt may not repeat (the network, the machine, a timeout): a re-run of the
#: shard tries these assets again, while decisions about the asset itself (bad file, filtered) stand.
TRANSIENT_REASONS = frozenset({"fetch_error", "timeout", "crash", "worker_error", "missing_outputs"})


def read_done(asset_dir: Path) -> dict[str, Any] | None:
    """The asset's finished manifest row, or None when it must (still) be processed."""
    from shards.manifest import RENDER_COLUMNS as COLUMNS

    path = asset_dir / DONE_FILE
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if row.get("status") == "failed" and row.get("reason") in TRANSIENT_REASONS:
        return None
    unknown = set(row) - set(COLUMNS)
    if unknown:  # written by another version of this code: keep what the manifest knows
        log.warning("%s: ignoring unknown fields %s", path, sorted(unknown))
        row = {k: v for k, v in row.items() if k in COLUMNS}
    return row


def _finish(asset_dir: Path, row: dict[str, Any], start: float) -> dict[str, Any]:
    row["total_s"] = time.monotonic() - start
    tmp = asset_dir / (DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(row, indent=1))
    tmp.replace(asset_dir / DONE_FILE)
    return row


def base_job(cfg: PipelineConfig, uid: str, asset_path: Path, out_dir: Path) -> dict[str, Any]:
    r = cfg.render
    return {
        "uid": uid,
        "asset_path": str(asset_path),
        "out_dir": str(out_dir),
        "mode": r.mode,
        "resolution": r.resolution,
        "num_frames": r.num_frames,
        "clip_duration_s": r.clip_duration_s,
        "orbits": list(r.orbits),
        "orbit": asdict(r.orbit),
        "samples": r.samples,
        "denoiser": r.denoiser,
        "device": r.device,
        "threads": r.threads,
        "adaptive_threshold": r.adaptive_threshold,
        "max_bounces": r.max_bounces,
        "seed": asset_seed(uid, cfg.assets.seed),
        "environment": {"kind": "sky", "strength": r.sky_strength},
        "global_offsets": None,
        "static_frame": None,
        "max_points": cfg.curation.motion.max_points,
    }


def _node_id() -> str | None:
    """The Ray node that ran the task (which machine of a cluster rendered what)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:
        return None


def process_asset(record: Any, cfg: PipelineConfig, asset_dir: Path) -> dict[str, Any]:
    """Run one asset to a manifest row; never raises for a bad asset (the row says why)."""
    from curation import analysis, sources  # imported here: heavy, and only the workers need them

    asset_dir = Path(asset_dir)
    asset_dir.mkdir(parents=True, exist_ok=True)
    done = read_done(asset_dir)
    if done is not None:
        return done
    start = time.monotonic()
    row: dict[str, Any] = {
        "uid": record.uid,
        "source": record.source,
        "license": record.license,
        "expected": getattr(record, "expected", None),
        "attempts": 0,
        "node_id": _node_id(),
    }
    from curation.filters import license_decision

    lic = license_decision(record, cfg.curation.filters, cfg.assets.licenses)
    if not lic.accepted:  # decided from the listing alone: never download what cannot be used
        row.update(status="filtered", reason=lic.reason, detail=lic.detail)
        return _finish(asset_dir, row, start)
    try:
        path = sources.fetch_asset(record, cfg.assets)
    except Exception as exc:  # any fetch problem is this asset's failure, never the job's
        row.update(status="failed", reason="fetch_error", detail=f"{type(exc).__name__}: {exc}")
        return _finish(asset_dir, row, start)

    job = base_job(cfg, record.uid, Path(path).resolve(), asset_dir)

    # Cheap analysis pass first, so that filtered assets cost no render time.
    outcome = run_blender_script(
        "blender_scripts.analyze_asset",
        job,
        asset_dir,
        ANALYSIS_FILE,
        cfg.render.timeout_s,
        cfg.render.retries,
        expected_files=lambda _res: [asset_dir / "analysis.npz"],
    )
    row["attempts"] = outcome.attempts
    row["analysis_s"] = outcome.seconds
    row["num_vertices"] = outcome.result.get("num_vertices")
    row["num_faces"] = outcome.result.get("num_faces")
    if outcome.reason in analysis.FILTER_REASONS_FROM_ANALYSIS:
        row.update(status="filtered", reason=outcome.reason, detail=outcome.detail)
        return _finish(asset_dir, row, start)
    if not outcome.ok:
        row.update(status="failed", reason=outcome.reason, detail=outcome.detail)
        return _finish(asset_dir, row, start)
    try:
        decision = analysis.curate(asset_dir, outcome.result, record, cfg)
    except Exception as exc:  # degenerate geometry etc.: this asset's failure, recorded
        row.update(status="failed", reason="analysis_error", detail=f"{type(exc).__name__}: {exc}")
        return _finish(asset_dir, row, start)
    row.update({k: v for k, v in decision.values.items() if k != "license"})
    (asset_dir / "curation.json").write_text(json.dumps(decision.__dict__, indent=1, default=str))
    if decision.status != "accept":
        row.update(status="filtered", reason=decision.reason, detail=decision.detail)
        return _finish(asset_dir, row, start)

    job["global_offsets"] = decision.global_offsets
    job["environment"] = decision.environment
    row["hdri"] = decision.environment.get("path") and Path(decision.environment["path"]).name
    row["hdri_rotation_deg"] = decision.environment.get("rotation_deg")

    outcome = run_blender_script(
        "blender_scripts.render_asset",
        job,
        asset_dir,
        RESULT_FILE,
        cfg.render.timeout_s,
        cfg.render.retries,
        expected_files=lambda res: expected_images(asset_dir, res),
    )
    row["attempts"] += outcome.attempts
    row["render_s"] = outcome.seconds
    if not outcome.ok:
        row.update(status="failed", reason=outcome.reason, detail=outcome.detail)
        return _finish(asset_dir, row, start)
    timings = outcome.result.get("timings", {})
    row.update(
        status="rendered",
        reason=None,
        detail="",
        num_images=timings.get("images"),
        s_per_image=timings.get("s_per_image"),
    )
    return _finish(asset_dir, row, start)
