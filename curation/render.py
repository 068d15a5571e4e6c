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
duplicates. A shard is complete when its tar and manifest exist and no asset still deserves another
attempt (a crash, a fetch error, a timeout whose budget has grown since); a complete shard is skipped.
--retry-failed redoes only the failed assets of a shard; --force renders every asset again. Each asset's
work folder records a fingerprint of the render and curation settings (settings.json): changed settings
re-render that asset rather than repack its old images.

Each Blender process gets render.timeout_s + render.timeout_per_image_s x its image count; a retry after
a timeout gets render.timeout_growth times that (none when 1). With render.keep_work_images false the
work folder's PNGs are deleted once the shard tar holds them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from curation.asset_task import DONE_FILE, clip_dir, process_asset, read_done_rows, settings_fingerprint
from curation.pack import pack_render_dir
from curation.sources import AssetSourceError
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
    # no usage report and no cloud-metadata probes by default; set RAY_USAGE_STATS_ENABLED=1 to allow them
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": a new instance even when `ray start` left a cluster on this machine (ray.init() would
        # join it and then refuse num_cpus)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


def _cluster_resources() -> dict[str, float] | None:
    """The Ray cluster's total resources; None when Ray is not running here (tests stub it out)."""
    import ray

    return dict(ray.cluster_resources()) if ray.is_initialized() else None


def _progress(total: int, done: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="asset", desc="render", dynamic_ncols=True, file=sys.stderr)


def check_resources(cfg: PipelineConfig, resources: dict[str, float]) -> None:
    """ValueError naming the setting when one task asks for more CPUs or GPUs than the cluster has
    (Ray would otherwise wait forever for a node that can run it)."""
    r = cfg.render
    for key, setting, want in (
        ("CPU", "cpus_per_task", r.cpus_per_task),
        ("GPU", "gpus_per_task", r.gpus_per_task),
    ):
        have = float(resources.get(key, 0.0))
        if want > have:
            raise ValueError(
                f"render.{setting}={want:g} but the Ray cluster has {have:g} {key}s, so no task could "
                f"ever start; lower it (--set render.{setting}={have:g}) or add {key}s (--num-cpus, nodes)"
            )


def _images_in_progress(work: Path, uids: list[str]) -> int:
    """Images finished so far by the Blender processes still running (their progress.json files)."""
    import json

    done = 0
    for uid in uids:
        for path in (work / uid).glob("**/progress.json"):
            try:
                done += int(json.loads(path.read_text()).get("images_done", 0))
            except (OSError, ValueError):
                pass
    return done


def run_tasks(records: list[Any], cfg: PipelineConfig, work: Path) -> list[list[dict[str, Any]]]:
    """One Ray task per unfinished asset; returns each asset's rows, in `records` order."""
    import ray

    fingerprint = settings_fingerprint(cfg)["fingerprint"]
    rows: dict[str, list[dict[str, Any]]] = {}
    todo = []
    for record in records:
        done = read_done_rows(work / record.uid, fingerprint, cfg)
        if done is not None:
            rows[record.uid] = done
        else:
            todo.append(record)
    task = ray.remote(process_asset).options(
        num_cpus=cfg.render.cpus_per_task, num_gpus=cfg.render.gpus_per_task, max_retries=1
    )
    pending = {task.remote(rec, cfg, work / rec.uid): rec for rec in todo}
    bar = _progress(len(records), len(rows))
    failed = sum(r["status"] == "failed" for rs in rows.values() for r in rs)
    images, start = 0, time.monotonic()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        if not ready:  # per-image progress of the assets still rendering
            running = _images_in_progress(work, [rec.uid for rec in pending.values()])
            rate = (images + running) / max(time.monotonic() - start, 1e-9)
            bar.set_postfix_str(f"failed={failed} images={images + running} img/s={rate:.2f}")
            continue
        ref = ready[0]
        rec = pending.pop(ref)
        try:
            got = ray.get(ref)
        except Exception as exc:  # the worker itself died (OOM, node lost) after Ray's retry
            row = {"uid": rec.uid, "source": rec.source, "license": rec.license, "status": "failed"}
            row.update(reason="worker_error", detail=f"{type(exc).__name__}: {exc}"[:2000])
            got = [row]
        rows[rec.uid] = got
        failed += sum(r["status"] == "failed" for r in got)
        images += sum(r.get("num_images") or 0 for r in got if r["status"] == "rendered")
        rate = images / max(time.monotonic() - start, 1e-9)
        bar.set_postfix_str(f"failed={failed} images={images} img/s={rate:.2f}")
        bar.update(1)
        for r in got:
            log.info("%s: %s %s", r["uid"], r["status"], r.get("reason") or "")
    bar.close()
    return [rows[r.uid] for r in records]


def _curation_meta(row: dict[str, Any], sample_dir: Path) -> dict[str, Any]:
    import json

    meta = {
        k: row.get(k) for k in ("motion", "scale_ratio", "hdri", "hdri_rotation_deg", "action", "clip_start")
    }
    stats_path = sample_dir / "image_stats.json"
    if stats_path.is_file():
        meta["image_stats"] = json.loads(stats_path.read_text())
    return meta


def build_shard(
    records: list[Any], rows: list[list[dict[str, Any]]], paths: dict[str, Path], keep_images: bool = True
) -> int:
    """Pack rendered samples into the shard; a sample whose outputs fail validation becomes 'failed'.

    keep_images False: the work folders' PNGs go once the tar is written (the rest stays for resumes).
    """
    written = 0
    packed: list[Path] = []
    with ShardWriter(paths["tar"]) as writer:
        for record, asset_rows in zip(records, rows, strict=True):
            for row in asset_rows:
                if row["status"] != "rendered":
                    continue
                sample_dir = clip_dir(paths["work"], record.uid, row["uid"])
                fields = dict(_record_fields(record), uid=row["uid"])
                try:
                    raw = pack_render_dir(sample_dir, fields, _curation_meta(row, sample_dir))
                except Exception as exc:
                    row.update(
                        status="failed", reason="invalid_sample", detail=f"{type(exc).__name__}: {exc}"
                    )
                    continue
                writer.write(raw)
                packed.append(sample_dir)
                written += 1
    if not keep_images:
        for sample_dir in packed:
            for png in sample_dir.glob("*/*.png"):
                png.unlink()
    return written


def shard_is_complete(records: list[Any], cfg: PipelineConfig, paths: dict[str, Path]) -> bool:
    """Tar and manifest written, and every asset finished with these settings and not worth a retry."""
    if not (paths["tar"].is_file() and paths["manifest"].is_file()):
        return False
    fingerprint = settings_fingerprint(cfg)["fingerprint"]
    return all(read_done_rows(paths["work"] / r.uid, fingerprint, cfg) is not None for r in records)


def render_shard(
    cfg: PipelineConfig,
    shard: int,
    address: str | None = None,
    num_cpus: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Render shard `shard` of `cfg`'s asset list; returns a summary dict."""
    from curation import sources

    cfg = absolute_paths(cfg)  # the workers' cwd is not ours on a cluster
    out_dir = dataset_dir(Path(cfg.out_dir), cfg.render.mode)
    paths = shard_paths(out_dir, shard)
    records = shard_slice(sources.list_assets(cfg.assets), shard, cfg.assets.assets_per_shard)
    if retry_failed:  # only the failed assets are redone; decisions and renders stand
        redo = []
        for record in records:
            done = read_done_rows(paths["work"] / record.uid, None, None)
            failed = [r for r in done or [] if r["status"] == "failed"]
            if failed:
                (paths["work"] / record.uid / DONE_FILE).unlink()
                for row in failed:  # a clip of `render.clip.select: all` keeps its own row
                    (clip_dir(paths["work"], record.uid, row["uid"]) / DONE_FILE).unlink(missing_ok=True)
                redo.append(record.uid)
        log.info("%s: retrying %d failed asset(s): %s", shard_name(shard), len(redo), redo)
    if not force and shard_is_complete(records, cfg, paths):
        log.info("%s is complete (%s); use --force to redo it", shard_name(shard), paths["tar"])
        return {"shard": shard, "skipped": True, "tar": str(paths["tar"])}
    import yaml

    atomic_write_bytes(out_dir / "profile.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    log.info("%s: %d assets from source %s", shard_name(shard), len(records), cfg.assets.source)
    from curation.hdri import prepare_library

    if force:  # redo means redo: finished per-asset results (maybe from other settings) are not reused
        paths["manifest"].unlink(missing_ok=True)  # so that a killed forced run is not taken as complete
        for record in records:
            (paths["work"] / record.uid / DONE_FILE).unlink(missing_ok=True)
    _init_ray(address, num_cpus)
    resources = _cluster_resources()
    if resources is not None:
        check_resources(cfg, resources)
    prepare_library(cfg.curation.hdri, cfg.assets.seed)  # generate/score maps once, before the workers
    start = time.monotonic()
    asset_rows = run_tasks(records, cfg, paths["work"])
    written = build_shard(records, asset_rows, paths, cfg.render.keep_work_images)
    rows = [r for rs in asset_rows for r in rs]
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


def move_out_dir(cfg: PipelineConfig, out: str) -> PipelineConfig:
    """cfg with out_dir = `out`, and every folder knob that lay under the old out_dir (the demo's HDRI
    library, the asset cache) moved along with it."""
    import copy

    cfg = copy.deepcopy(cfg)
    old = Path(os.path.expanduser(cfg.out_dir)).resolve()
    new = Path(os.path.expanduser(out)).resolve()
    for section, name in (("curation.hdri", "library_dir"), ("assets", "cache_dir")):
        node: Any = cfg
        for part in section.split("."):
            node = getattr(node, part)
        value = getattr(node, name)
        if value:
            path = Path(os.path.expanduser(value)).resolve()
            if path == old or old in path.parents:
                setattr(node, name, str(new / path.relative_to(old)))
    cfg.out_dir = str(new)
    return cfg


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
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="redo only the failed assets of the shard (crashes, timeouts, bad files), even when complete",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every asset")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        cfg = profile_from_args(args)
        if args.out:
            cfg = move_out_dir(cfg, args.out)
        summary = render_shard(cfg, args.shard, args.address, args.num_cpus, args.force, args.retry_failed)
    except (
        ValueError,
        OSError,
        AssetSourceError,
    ) as exc:  # bad profile, shard, source: one line, no traceback
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
