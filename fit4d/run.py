"""`python -m fit4d.run`: fit dynamic NeRFs to multi-view videos and export animated assets."""

from __future__ import annotations

import argparse
import json
import logging
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from profiles.load import add_profile_args, profile_from_args
from profiles.schema import PipelineConfig

log = logging.getLogger("fit4d.run")

EPILOG = """\
    python -m fit4d.run outputs/demo/renders/shard-000000.tar --key articulated
    python -m fit4d.run --profile sv4d2 shards/*.tar --workers 8     # Ray: one task per sample, one GPU each
    python -m fit4d.run SHARD --set fit4d.stage1_iters=300 --set fit4d.resolution=128
    python -m fit4d.run outputs/demo/samples/articulated/generated.tar   # the novel-view sampler's output

Each input is a render sample (ground-truth multi-view videos; `fit4d.orbit` picks the orbit) or the
generated.tar that `python -m model.sample` writes (the input view plus the generated views; its crop boxes
become the GLBs' translation track, the object's global motion in the input video). Stage 1 fits
the canonical NeRF to frame 0 for `static_iters`, then the deformation on near-orthogonal views and a
widening frame window; stage 2 replaces the targets by `fit4d.refiner`'s output and fits `stage2_iters`
more. Per sample, written to <out>/<key>/ (default out: <out_dir>/fit4d):

    nerf.pt                  NeRF weights, occupancy grid, fit4d config
    meshes/frame_NNN.ply     marching-cubes mesh per frame, vertex colours
    asset_morph.glb          fixed topology: canonical mesh + one morph target per frame, weight animation
    asset_frames.glb         one mesh per frame, shown in turn by step scale keys
    orbit_rgb.mp4, orbit_normal.mp4   the camera circles the object while the clip plays
    report.json              losses per iteration and stage, timings, export checks
    done.json                written last: a sample with done.json is skipped on the next run (--force)

With `fit4d.predictions` set (default predictions/fit4d, under out_dir), the fit is also rendered at the
ground-truth cameras of `evaluation.orbit` (every view and frame of `evaluation.views/frames`, the shard's
resolution and intrinsics, on white) into <out_dir>/<fit4d.predictions>/<uid>/vVV.fFF.png with a
prediction.json naming the views the fit trained on: `python -m evaluation.run` reads that folder.

<out>/manifest.jsonl has one row per sample: status (done | failed | skipped), reason, seconds.
A failing sample (bad input, diverged fit) is a manifest row with its reason, never the end of the job.
"""


def fit_one(shard: str, key: str, cfg: PipelineConfig, out_dir: str, force: bool = False) -> dict[str, Any]:
    """Fit and export one sample; returns its manifest row (never raises for a bad sample)."""
    from fit4d.data import fit_input_from_sample, read_sample
    from fit4d.export.outputs import write_outputs
    from fit4d.loop import fit
    from fit4d.refine import sampler_refiner

    out = Path(out_dir) / key
    row: dict[str, Any] = {"key": key, "shard": str(shard), "out": str(out)}
    if (out / "done.json").is_file() and not force:
        return {**row, "status": "skipped", "reason": "done.json exists"}
    start = time.perf_counter()
    try:
        fc = cfg.fit4d
        sample = read_sample(shard, key)
        data = fit_input_from_sample(sample, fc.orbit, fc.input_view, fc.render.background, fc.resolution)
        refiner = sampler_refiner(cfg) if fc.refiner == "sampler" and fc.stage2_iters > 0 else None
        fitter, report = fit(data, fc, refiner)
        report["export_timings"] = write_outputs(fitter, report, out)
        if fc.predictions:
            try:
                row["predictions"] = str(write_evaluation_predictions(fitter, sample, cfg))
            except ValueError as exc:
                # cameras the evaluation asks for that this sample lacks (or no ground truth): the fit stands
                log.warning("%s: no evaluation predictions: %s", key, exc)
                row["predictions_reason"] = str(exc)
        row.update(status="done", reason="", seconds=time.perf_counter() - start)
        (out / "done.json").write_text(json.dumps(row))
    except Exception as exc:  # a bad sample is a manifest row, not a crash of the batch
        log.error("%s: %s", key, exc)
        log.debug(traceback.format_exc())
        row.update(
            status="failed", reason=f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start
        )
    return row


def predictions_dir(cfg: PipelineConfig) -> Path:
    """`fit4d.predictions` (relative: under out_dir, as evaluation.systems resolves its folders)."""
    p = Path(cfg.fit4d.predictions).expanduser()
    return p if p.is_absolute() else Path(cfg.out_dir).expanduser() / p


def write_evaluation_predictions(fitter: Any, sample: Any, cfg: PipelineConfig) -> Path:
    """The fit rendered at the evaluation's ground-truth cameras into <predictions>/<uid>/."""
    from fit4d.export.predictions import export_predictions

    ec = cfg.evaluation
    folder = predictions_dir(cfg) / sample.key
    start = time.perf_counter()
    info = export_predictions(fitter, sample, folder, ec.orbit, ec.views, ec.frames)
    log.info(
        "%s: predictions at the %s orbit's cameras in %s (%.1f s; training views among them: %s)",
        sample.key,
        ec.orbit,
        folder,
        time.perf_counter() - start,
        info["training_views"] or "none",
    )
    return folder


def list_inputs(shards: Sequence[str], keys: Sequence[str]) -> list[tuple[str, str]]:
    from shards.reader import list_keys

    jobs = []
    for shard in shards:
        if not Path(shard).is_file():
            raise SystemExit(f"fit4d.run: no shard at {shard}")
        shard_keys = list_keys(shard)
        for k in keys:
            if k not in shard_keys and len(shards) == 1:
                raise SystemExit(
                    f"fit4d.run: {shard} has no sample {k!r} (keys: {', '.join(shard_keys[:8])})"
                )
        jobs += [(shard, k) for k in shard_keys if not keys or k in keys]
    return jobs


def run_batch(
    jobs: list[tuple[str, str]],
    cfg: PipelineConfig,
    out_dir: str,
    workers: int,
    force: bool,
    address: str | None = None,
) -> list[dict]:
    """workers 0: in this process; else Ray tasks, at most `workers` at once (one GPU each when the cluster
    has GPUs). Paths are made absolute first: a worker's working directory is not ours on a cluster."""
    import os

    from tqdm import tqdm

    rows = []
    if workers == 0:
        for shard, key in tqdm(jobs, desc="fit4d samples", disable=not cfg.fit4d.progress):
            rows.append(fit_one(shard, key, cfg, out_dir, force))
        return rows
    import ray

    from profiles.load import absolute_paths

    cfg, out_dir = absolute_paths(cfg), os.path.abspath(out_dir)
    jobs = [(os.path.abspath(s), k) for s, k in jobs]
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:  # a new local instance with room for `workers` tasks, even when `ray start` left one running
            ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_gpus=gpus, num_cpus=1, max_retries=0)(fit_one)
    todo, pending = list(jobs), {}
    with tqdm(total=len(todo), desc="fit4d samples", disable=not cfg.fit4d.progress) as bar:
        while todo or pending:
            while todo and len(pending) < workers:
                shard, key = todo.pop(0)
                pending[task.remote(shard, key, cfg, out_dir, force)] = (shard, key)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            shard, key = pending.pop(ref)
            try:
                rows.append(ray.get(ref))
            except Exception as exc:  # the worker died (out of memory, a lost node): that sample failed
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                log.error("%s: %s", key, reason)
                rows.append({"key": key, "shard": shard, "status": "failed", "reason": reason})
            bar.update(1)
    return rows


def write_manifest(out_dir: str, rows: list[dict]) -> Path:
    """Merge with earlier rows (latest row per key wins) and write atomically."""
    path = Path(out_dir) / "manifest.jsonl"
    merged: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                merged[r["key"]] = r
    for r in rows:
        if r["status"] != "skipped" or r["key"] not in merged:
            merged[r["key"]] = r
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(merged[k]) + "\n" for k in sorted(merged)))
    tmp.replace(path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fit4d.run",
        description="Fit a dynamic NeRF to each render sample's multi-view video (paper sec. 4) and export "
        "meshes, animated GLBs and orbit videos.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "shards", nargs="+", help="render shard(s) or generated.tar file(s) holding the samples"
    )
    parser.add_argument("--key", action="append", default=[], help="fit only this sample (repeatable)")
    parser.add_argument("--out", default="", help="output folder (default: <out_dir>/fit4d)")
    parser.add_argument("--limit", type=int, default=0, help="fit only the first N samples (0: all)")
    parser.add_argument(
        "--workers", type=int, default=0, help="Ray tasks at once, one sample each (0: in this process)"
    )
    parser.add_argument(
        "--address", default=None, help="with --workers: join this Ray cluster (e.g. 'auto'); default local"
    )
    parser.add_argument("--force", action="store_true", help="refit samples that have done.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_profile_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    cfg = profile_from_args(args)
    out_dir = args.out or str(Path(cfg.out_dir) / "fit4d")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    jobs = list_inputs(args.shards, args.key)
    if args.limit > 0:
        jobs = jobs[: args.limit]
    rows = run_batch(jobs, cfg, out_dir, args.workers, args.force, args.address)
    manifest = write_manifest(out_dir, rows)
    failed = [r for r in rows if r["status"] == "failed"]
    log.info(
        "fit4d: %d done, %d skipped, %d failed; manifest %s",
        sum(r["status"] == "done" for r in rows),
        sum(r["status"] == "skipped" for r in rows),
        len(failed),
        manifest,
    )
    return 1 if failed and len(failed) == len(rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
