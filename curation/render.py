"""Render one shard of the asset list with Ray workers driving headless Blender (CYCLES).

    python -m curation.render --shard 0                      # demo profile, local Ray
    python -m curation.render --profile sv4d2 --shard 17 --address auto
    python -m curation.render --shard 0 --set render.resolution=128 --set render.samples=32

Shard N takes assets [N * assets_per_shard, (N + 1) * assets_per_shard) of the source's sorted list.
Each asset is one Ray task that runs Blender in fresh processes (an analysis pass, then the render
pass) with a timeout and bounded retries; a bad asset, a crash or a timeout becomes a manifest row
with its reason, never the failure of the job. Outputs, each written atomically:

    <out>/renders/shard-NNNNNN.tar         WebDataset render samples (see shards/render_schema.py)
    <out>/manifests/shard-NNNNNN.parquet   one row per asset: status, reason, measured values, timings
    <out>/work/shard-NNNNNN/<uid>/         per-asset renders, job files, Blender logs (kept for resume)

With --set render.mode=static (orbit-only samples, F = 1, for the 3D pre-training stage) the same tree
goes under <out>/static/.

Running the same shard again resumes: finished assets are reused, the shard is rebuilt without
duplicates; a shard whose tar and manifest both exist is skipped unless --force, which renders every
asset of the shard again.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from curation.asset_task import DONE_FILE, process_asset, read_done
from curation.pack import pack_render_dir
from profiles import to_dict
from profiles.load import absolute_paths, add_profile_args, profile_from_args
from profiles.schema import PipelineConfig
from shards.layout import dataset_dir, render_manifest_path, render_shard_path, shard_name, work_dir
from shards.manifest import write_manifest
from shards.writer import ShardWriter, atomic_write_bytes

log = logging.getLogger("curation.render")


def shard_slice(records: list[Any], shard: int, per_shard: int) -> list[Any]:
    """The deterministic slice of shard `shard`; an index past the end raises with the shard count."""
    if shard < 0:
        raise ValueError(f"shard must be >= 0, got {shard}")
    count = -(-len(records) // per_shard)
    if shard >= count:
        raise ValueError(
            f"shard {shard} is empty: {len(records)} assets make {count} shard(s) of {per_shard} each"
        )
    return records[shard * per_shard : (shard + 1) * per_shard]


def shard_paths(out_dir: Path, shard: int) -> dict[str, Path]:
    """Where shard `shard` goes under a dataset folder (see `dataset_dir`)."""
    return {
        "tar": render_shard_path(out_dir, shard),
        "manifest": render_manifest_path(out_dir, shard),
        "work": work_dir(out_dir, shard),
    }


def _record_fields(record: Any) -> dict[str, Any]:
    return {
        "uid": record.uid,
        "source": record.source,
        "license": record.license,
        "url": getattr(record, "url", None),
        "annotations": getattr(record, "annotations", {}) or {},
    }


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _progress(total: int, done: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="asset", desc="render", dynamic_ncols=True, file=sys.stderr)


def run_tasks(records: list[Any], cfg: PipelineConfig, work: Path) -> list[dict[str, Any]]:
    """One Ray task per unfinished asset; returns the rows of all assets in `records` order."""
    import ray

    rows: dict[str, dict[str, Any]] = {}
    todo = []
    for record in records:
        done = read_done(work / record.uid)
        if done is not None:
            rows[record.uid] = done
        else:
            todo.append(record)
    task = ray.remote(process_asset).options(
        num_cpus=cfg.render.cpus_per_task, num_gpus=cfg.render.gpus_per_task, max_retries=1
    )
    pending = {task.remote(rec, cfg, work / rec.uid): rec for rec in todo}
    bar = _progress(len(records), len(rows))
    failed = sum(r["status"] == "failed" for r in rows.values())
    images, start = 0, time.monotonic()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        rec = pending.pop(ref)
        try:
            row = ray.get(ref)
        except Exception as exc:  # the worker itself died (OOM, node lost) after Ray's retry
            row = {"uid": rec.uid, "source": rec.source, "license": rec.license, "status": "failed"}
            row.update(reason="worker_error", detail=f"{type(exc).__name__}: {exc}"[:2000])
        rows[rec.uid] = row
        failed += row["status"] == "failed"
        images += row.get("num_images") or 0
        rate = images / max(time.monotonic() - start, 1e-9)
        bar.set_postfix_str(f"failed={failed} img/s={rate:.2f}")
        bar.update(1)
        log.info("%s: %s %s", rec.uid, row["status"], row.get("reason") or "")
    bar.close()
    return [rows[r.uid] for r in records]


def build_shard(records: list[Any], rows: list[dict[str, Any]], paths: dict[str, Path]) -> int:
    """Pack rendered assets into the shard; an asset whose outputs fail validation becomes 'failed'."""
    written = 0
    with ShardWriter(paths["tar"]) as writer:
        for record, row in zip(records, rows, strict=True):
            if row["status"] != "rendered":
                continue
            curation = {k: row.get(k) for k in ("motion", "scale_ratio", "hdri", "hdri_rotation_deg")}
            try:
                raw = pack_render_dir(paths["work"] / record.uid, _record_fields(record), curation)
            except Exception as exc:
                row.update(status="failed", reason="invalid_sample", detail=f"{type(exc).__name__}: {exc}")
                continue
            writer.write(raw)
            written += 1
    return written


def render_shard(
    cfg: PipelineConfig,
    shard: int,
    address: str | None = None,
    num_cpus: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Render shard `shard` of `cfg`'s asset list; returns a summary dict."""
    from curation import sources

    cfg = absolute_paths(cfg)  # the workers' cwd is not ours on a cluster
    out_dir = dataset_dir(Path(cfg.out_dir), cfg.render.mode)
    paths = shard_paths(out_dir, shard)
    if not force and paths["tar"].is_file() and paths["manifest"].is_file():
        log.info("%s is complete (%s); use --force to redo it", shard_name(shard), paths["tar"])
        return {"shard": shard, "skipped": True, "tar": str(paths["tar"])}
    import yaml

    atomic_write_bytes(out_dir / "profile.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    records = shard_slice(sources.list_assets(cfg.assets), shard, cfg.assets.assets_per_shard)
    log.info("%s: %d assets from source %s", shard_name(shard), len(records), cfg.assets.source)
    from curation.hdri import prepare_library

    prepare_library(cfg.curation.hdri, cfg.assets.seed)  # generate/score maps once, before the workers
    if force:  # redo means redo: finished per-asset results (maybe from other settings) are not reused
        paths["manifest"].unlink(missing_ok=True)  # so that a killed forced run is not taken as complete
        for record in records:
            (paths["work"] / record.uid / DONE_FILE).unlink(missing_ok=True)
    _init_ray(address, num_cpus)
    start = time.monotonic()
    rows = run_tasks(records, cfg, paths["work"])
    written = build_shard(records, rows, paths)
    write_manifest(paths["manifest"], rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {
        "shard": shard,
        "skipped": False,
        "tar": str(paths["tar"]),
        "manifest": str(paths["manifest"]),
        "samples": written,
        "counts": counts,
        "seconds": time.monotonic() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m curation.render",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--shard", type=int, required=True, help="shard index N (0-based)")
    add_profile_args(parser)
    parser.add_argument("--out", default=None, help="output folder (default: the profile's out_dir)")
    parser.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. 'auto')")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument("--force", action="store_true", help="re-render the shard and all its assets")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every asset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        cfg = profile_from_args(args)
        if args.out:
            cfg.out_dir = args.out
        summary = render_shard(cfg, args.shard, args.address, args.num_cpus, args.force)
    except ValueError as exc:  # bad profile, bad shard index, bad source config: a message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary["skipped"]:
        print(f"{summary['tar']} already complete (use --force to redo)")
    else:
        counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["counts"].items()))
        print(
            f"{summary['tar']}: {summary['samples']} samples ({counts}) in {summary['seconds']:.0f} s; "
            f"manifest {summary['manifest']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
