"""python -m evaluation.run: the paper's metrics of predicted views x frames against render ground truth.

For every object of the ground-truth shards and every system (a folder in the prediction layout of
evaluation/inputs.py), the image metrics, LPIPS, CLIP-S and the four FVD variants; then per system the
means over objects and the set-level FVD, and one Markdown table in the paper's layout.

Outputs under <out_dir>/<evaluation.out_subdir>/:
    <system>/<uid>.json        one object's metrics (or its failure and reason)
    <system>/<uid>.npz         its I3D features (pred_<variant>, gt_<variant>) for the set-level FVD
    <system>/total.json        means over objects, set-level FVD, failures, skipped metrics, settings
    summary.json               every system's total
    table.md                   the Markdown table (rows = systems, columns = the paper's metrics)

Resumable: an object whose JSON exists with the same settings is read back, not recomputed (`--force`
recomputes). A corrupt ground-truth sample or a missing/broken prediction is recorded in the JSON and the
totals and never stops the run; missing weights for a configured path stop it with a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.evaluate import PreparedGroundTruth, Settings, evaluate_object, prepare_ground_truth
from evaluation.inputs import (
    Failure,
    GroundTruth,
    PredictionError,
    degraded_copy,
    iter_ground_truth,
    read_prediction,
    read_prediction_frames,
    read_prediction_views,
    shard_paths,
)
from evaluation.networks import Networks, WeightsError, load_networks, make_tiny_networks
from evaluation.report import caption, markdown_table, mean_metrics, set_level_fvd, table_values
from profiles.load import add_profile_args, profile_from_args
from profiles.loader import ConfigError
from profiles.schema import EvalSystemConfig, EvaluationConfig, PipelineConfig

log = logging.getLogger("evaluation")


@dataclasses.dataclass
class System:
    name: str
    folder: Path
    stand_in: bool
    slug: str
    seed: int


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "system"


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def resolve_systems(ecfg: EvaluationConfig, root: Path) -> list[System]:
    """The configured systems with their folders; a missing folder is a stand-in or an error."""
    if not ecfg.systems:
        raise ConfigError("no systems to evaluate: set evaluation.systems or pass --predictions NAME=DIR")
    out = []
    for i, s in enumerate(ecfg.systems):
        folder = _resolve(s.predictions, root)
        stand_in = not folder.is_dir()
        if stand_in and not ecfg.stand_in:
            raise ConfigError(
                f"no prediction folder {folder} for system {s.name!r}: write predictions there "
                "(layout: evaluation/inputs.py) or set evaluation.stand_in=true"
            )
        out.append(
            System(name=s.name, folder=folder, stand_in=stand_in, slug=_slug(s.name), seed=1000 * (i + 1))
        )
    slugs = [s.slug for s in out]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(
            f"evaluation.systems names must differ in letters and digits: {[s.name for s in out]}"
        )
    return out


def _device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluation.device is cuda but no CUDA device is visible")
    return choice


def build_networks(ecfg: EvaluationConfig, out_dir: Path, device: str) -> Networks:
    if ecfg.tiny:
        paths = make_tiny_networks(
            out_dir / ecfg.out_subdir / "tiny_networks", lpips_nets=tuple(ecfg.lpips_nets)
        )
    else:
        paths = dataclasses.asdict(ecfg)
    return load_networks(
        lpips_paths={net: paths[f"lpips_{net}_path"] for net in ecfg.lpips_nets},
        clip_model=paths["clip_model"],
        clip_pretrained=paths["clip_pretrained"],
        clip_model_config=paths["clip_model_config"],
        i3d_path=paths["i3d_path"],
        device=device,
        random_weights=ecfg.tiny,
    )


def settings_key(ecfg: EvaluationConfig, system: System) -> str:
    """What an object's result depends on; a stored result is reused only if this matches."""
    keep = {
        k: v
        for k, v in dataclasses.asdict(ecfg).items()
        # what only the table or the speed depends on does not invalidate stored results
        if k not in ("systems", "device", "batch_size", "out_subdir", "region", "table_lpips", "fvd_protocol")
    }
    keep["system"] = {"folder": str(system.folder), "stand_in": system.stand_in}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomic(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:  # a file object: np.savez would append ".npz" to the temporary name
        np.savez(fh, **arrays)


def input_stamp(gt: GroundTruth, system: System) -> str:
    """Size and mtime of the ground-truth shard and of the object's prediction files: a stored result is
    stale once either changes (a re-rendered shard, re-sampled views)."""
    items: list[Any] = []
    for path in [
        Path(gt.source),
        *([] if system.stand_in else sorted((system.folder / gt.uid).glob("v*.f*.png"))),
    ]:
        try:
            st = path.stat()
            items.append((path.name, st.st_size, st.st_mtime_ns))
        except OSError:
            items.append((path.name, None))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


def _load_cached(json_path: Path, key: str) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A stored successful result with this key, and its I3D features; failures are always retried."""
    try:
        record = json.loads(json_path.read_text())
        if record.get("settings_key") != key or record.get("status") != "ok":
            return None
        feats: dict[str, np.ndarray] = {}
        npz = json_path.with_suffix(".npz")
        if npz.is_file():
            with np.load(npz) as data:
                feats = {k: data[k] for k in data.files}
        elif "fvd_f" in record.get("metrics", {}):
            return None
        return record, feats
    except (OSError, ValueError, KeyError):
        return None


def evaluate_system_object(
    gt: GroundTruth,
    prep: PreparedGroundTruth | None,
    system: System,
    nets: Networks,
    ecfg: EvaluationConfig,
    settings: Settings,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One object of one system: its JSON record and I3D features (pred_* and gt_*). `prep` may be None
    only where the system has no folder for the object (a failure before any metric)."""
    record: dict[str, Any] = {
        "uid": gt.uid,
        "system": system.name,
        "stand_in": system.stand_in,
        "orbit": gt.orbit,
        "views": gt.views,
        "frames": gt.frames,
    }
    try:
        if system.stand_in:
            pred = degraded_copy(gt.rgba, ecfg.stand_in_noise, system.seed + zlib.crc32(gt.uid.encode()))
        else:
            frames = read_prediction_frames(system.folder / gt.uid, gt.frames)
            if frames is not None and frames != gt.frames:
                if not frames:
                    raise PredictionError(f"{system.folder / gt.uid}: none of the evaluated frames exist")
                # the frames the system produced: their own ground-truth features, not the shared ones
                keep = [gt.frames.index(f) for f in frames]
                record.update(frames=frames, missing_frames=[f for f in gt.frames if f not in frames])
                gt = dataclasses.replace(gt, rgba=gt.rgba[:, keep], frames=frames)
                prep = prepare_ground_truth(gt.rgba, nets, settings)
            pred = read_prediction(system.folder / gt.uid, gt.views, gt.frames, gt.rgba.shape[2:4])
            if prep is None:
                prep = prepare_ground_truth(gt.rgba, nets, settings)
            trained = read_prediction_views(system.folder / gt.uid, gt.views)
            if trained is not None:
                record["training_views"] = trained
        metrics, per_video, feats = evaluate_object(pred, prep, nets, settings)
    except (PredictionError, ValueError) as exc:
        return {**record, "status": "failed", "reason": str(exc)}, {}
    record.update(status="ok", metrics=metrics, fvd_per_video=per_video)
    arrays = {f"pred_{k}": v for k, v in feats.items()} | {f"gt_{k}": v for k, v in prep.i3d.items()}
    return record, arrays


def run(cfg: PipelineConfig, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Evaluate every system on every ground-truth object; returns the summary (also written to disk)."""
    ecfg = cfg.evaluation
    out_dir = Path(cfg.out_dir).expanduser()
    eval_dir = out_dir / ecfg.out_subdir
    systems = resolve_systems(ecfg, out_dir)
    shards = shard_paths(ecfg.ground_truth, out_dir)
    if not shards:
        raise ConfigError(
            f"no ground-truth shards match evaluation.ground_truth {ecfg.ground_truth} under {out_dir}"
        )
    device = _device(ecfg.device)
    nets = build_networks(ecfg, out_dir, device)
    settings = Settings(
        alpha_threshold=ecfg.alpha_threshold,
        batch_size=ecfg.batch_size,
        fvd_min_frames=ecfg.fvd_min_frames,
        fvd_short_clip=ecfg.fvd_short_clip,
        diagonal=ecfg.diagonal,
        zigzag_rows=ecfg.zigzag_rows,
        device=device,
    )
    keys = {s.slug: settings_key(ecfg, s) for s in systems}
    records: dict[str, list[dict[str, Any]]] = {s.slug: [] for s in systems}
    feats: dict[str, dict[str, list[np.ndarray]]] = {s.slug: {} for s in systems}
    for s in systems:
        (eval_dir / s.slug).mkdir(parents=True, exist_ok=True)
        if s.stand_in:
            log.warning(
                "system %r: no folder %s, evaluating a stand-in (ground truth + noise)", s.name, s.folder
            )

    from tqdm import tqdm

    for obj in tqdm(
        iter_ground_truth(shards, ecfg.orbit, ecfg.views, ecfg.frames),
        desc="evaluate",
        unit="object",
        disable=not progress,
    ):
        if isinstance(obj, Failure):
            log.warning("%s: %s", obj.uid, obj.reason)
            for s in systems:
                records[s.slug].append(
                    {"uid": obj.uid, "system": s.name, "status": "failed", "reason": obj.reason}
                )
            continue
        prep: PreparedGroundTruth | None = None
        for s in systems:
            path = eval_dir / s.slug / f"{obj.uid}.json"
            key = f"{keys[s.slug]}-{input_stamp(obj, s)}"
            cached = None if force else _load_cached(path, key)
            if cached is None:
                # the ground truth's features only once some system has a prediction for this object
                # (the demo samples and fits one object of the shard: the others fail without that cost)
                if prep is None and (s.stand_in or (s.folder / obj.uid).is_dir()):
                    prep = prepare_ground_truth(obj.rgba, nets, settings)
                record, arrays = evaluate_system_object(obj, prep, s, nets, ecfg, settings)
                record["settings_key"] = key
                if arrays:
                    _write_atomic(path.with_suffix(".npz"), lambda p, a=arrays: _save_npz(p, a))
                _write_json(path, record)
            else:
                record, arrays = cached
            if record["status"] != "ok":
                log.warning("%s / %s: %s", s.name, obj.uid, record.get("reason"))
            records[s.slug].append(record)
            for name, value in arrays.items():
                feats[s.slug].setdefault(name, []).append(value)

    summary: dict[str, Any] = {"systems": [], "skipped": nets.skipped, "random_weights": nets.random_weights}
    rows = []
    counts = {}
    for s in systems:
        ok = [r for r in records[s.slug] if r["status"] == "ok"]
        failed = [
            {"uid": r["uid"], "reason": r.get("reason", "")} for r in records[s.slug] if r["status"] != "ok"
        ]
        pred_f = {k[5:]: v for k, v in feats[s.slug].items() if k.startswith("pred_")}
        gt_f = {k[3:]: v for k, v in feats[s.slug].items() if k.startswith("gt_")}
        total = {
            "system": s.name,
            "predictions": str(s.folder),
            "stand_in": s.stand_in,
            "objects": len(ok),
            "failed": failed,
            "metrics": mean_metrics(ok),
            "fvd_set": set_level_fvd(pred_f, gt_f),
            "training_views": {r["uid"]: r["training_views"] for r in ok if r.get("training_views")},
            "skipped": nets.skipped,
            "random_weights": nets.random_weights,
            "settings": {k: v for k, v in dataclasses.asdict(ecfg).items() if k != "systems"},
        }
        _write_json(eval_dir / s.slug / "total.json", total)
        summary["systems"].append(total)
        label = f"{s.name} (stand-in: ground truth + noise)" if s.stand_in else s.name
        if total["training_views"]:
            label += (
                " (not held out: fitted to the evaluated views "
                + ", ".join(sorted({str(v) for vs in total["training_views"].values() for v in vs}, key=int))
                + ")"
            )
        rows.append((label, table_values(total, ecfg.region, ecfg.table_lpips, ecfg.fvd_protocol)))
        counts[s.name] = (len(ok), len(failed))
    cap = caption(ecfg.region, ecfg.table_lpips, ecfg.fvd_protocol, counts, nets.random_weights, nets.skipped)
    table = markdown_table(rows, cap)
    eval_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(eval_dir / "table.md", lambda p: p.write_text(table))
    _write_json(eval_dir / "summary.json", summary)
    summary["table"] = table
    return summary


def parse_predictions(items: Sequence[str]) -> list[EvalSystemConfig]:
    systems = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--predictions {item!r}: expected NAME=DIR")
        systems.append(EvalSystemConfig(name=name, predictions=folder))
    return systems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.run",
        description=(
            "Evaluate predicted novel-view videos or 4D renders against render-shard ground truth with the "
            "SV4D 2.0 metrics (LPIPS, CLIP-S, PSNR, SSIM, MSE, FVD-F/V/Diag, FV4D). Predictions: one folder "
            "per system, <dir>/<uid>/v{VV}.f{FF}.png at the ground truth's views and frames of "
            "evaluation.orbit. "
            "Writes JSON per object and in total and a Markdown table under <out_dir>/evaluation/."
        ),
        epilog="Example: python -m evaluation.run --profile sv4d2 "
        "--predictions 'SV4D 2.0=predictions/sample' --set evaluation.region=foreground",
    )
    add_profile_args(parser)
    parser.add_argument(
        "--predictions",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a system to evaluate (repeatable; replaces evaluation.systems and turns evaluation.stand_in "
        "off); relative DIR is under out_dir",
    )
    parser.add_argument("--force", action="store_true", help="recompute objects whose results exist")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = profile_from_args(args)
        if args.predictions:
            cfg.evaluation.systems = parse_predictions(args.predictions)
            cfg.evaluation.stand_in = (
                False  # a folder named on the command line must exist: no silent stand-in
            )
        summary = run(cfg, force=args.force, progress=not args.no_progress)
    except (ConfigError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary["table"])
    if not any(t["objects"] for t in summary["systems"]):
        print("error: no object was evaluated (see the failures in total.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
