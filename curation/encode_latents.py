"""Latent stage: render shards -> shards of VAE latents and CLIP embeddings, on Ray Data.

    python -m curation.encode_latents --profile demo [--set encode.batch_size=8] [--shard 0 --shard 3]

Reads ``<out>/renders/shard-{N:06d}.tar`` and writes ``<out>/latents/shard-{N:06d}.tar`` (one latent shard
per render shard; the static dataset's tree ``<out>/static/`` with ``--set render.mode=static``; same
sample keys, schema in `shards.latent_schema`) and
``<out>/manifests/latents-{N:06d}.parquet`` (one row per sample: uid, status encoded | failed, reason, detail,
num_images).

Pipeline (one Ray Data dataset over all pending shards, order preserved):
  shard paths --flat_map(index the tar: one row per image of each valid sample, holding the PNG's byte range)
  --map_batches(read + decode PNGs; CPU tasks) --map_batches(Encoders; actor pool, 1 GPU or N CPUs each)
  --> the driver regroups the rows per sample and writes the samples of each shard in shard order.
A sample whose metadata/cameras break the render contract or one of whose PNGs does not decode is logged,
skipped and counted in the manifest; the others are written. A latent shard appears under its final name only
once complete (temp file + rename), so a re-run skips finished shards and redoes interrupted ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.encoders import EncoderSpec, check_weights, describe_encoders, resolve_spec
from shards.index import index_tar, read_entry
from shards.latent_schema import LatentSample, encode_latent_sample
from shards.layout import (
    dataset_dir,
    latent_manifest_path,
    latent_shard_path,
    render_shard_path,
    render_shards,
    shard_number,
)
from shards.manifest import LATENT_COLUMNS, LATENT_STATUSES, write_manifest
from shards.render_schema import SchemaError, decode_render_sample, image_field, png_load
from shards.writer import ShardWriter

log = logging.getLogger(__name__)

SMALL_SUFFIXES = (".npy", ".json")


# ----------------------------------------------------------------------------------------------------------
# Indexing a render shard (driver and Ray tasks run the same function, so they agree on every image row)


@dataclass
class PlannedSample:
    """A render sample that passed the metadata/camera checks; images are byte ranges into the tar."""

    key: str
    meta: dict[str, Any]
    c2w: dict[str, np.ndarray]
    angles: dict[str, np.ndarray]
    intrinsics: np.ndarray
    images: list[tuple[str, int, int, int, int]]
    """(orbit, view, frame, offset, size) in (orbit, view, frame) order."""


@dataclass
class ShardIndex:
    number: int
    path: Path
    samples: list[PlannedSample] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def index_render_shard(path: str | Path) -> ShardIndex:
    """Check each sample's metadata and cameras (not the PNG bytes) and list its images' byte ranges."""
    path = Path(path)
    index = ShardIndex(number=shard_number(path), path=path)
    tar = index_tar(path)
    if tar.error:  # damaged or incomplete: the samples before the damage are still encoded
        log.error(tar.error)
        index.failures.append({"uid": "", "reason": "unreadable_tar", "detail": tar.error, "num_images": 0})
    for key, why in tar.rejected:  # a duplicated key: the first occurrence is among the entries
        log.warning("%s: skipping sample %s: %s", path.name, key, why)
        index.failures.append({"uid": key, "reason": "schema", "detail": why, "num_images": 0})
    for entry in tar.entries:
        fields = entry.fields()
        try:
            raw = read_entry(entry, [name for name in fields if name.endswith(SMALL_SUFFIXES)])
            # PNG content is checked where it is decoded
            raw.update({name: b"" for name in fields if name not in raw})
            sample = decode_render_sample(raw, decode_images=False)
            res = int(sample.meta["resolution"])
            if res % 8:
                raise SchemaError(f"meta.json: resolution {res} is not a multiple of 8 (VAE downsampling)")
            V, F = int(sample.meta["num_views"]), int(sample.meta["num_frames"])
            images = [
                (orbit, v, f, *fields[image_field(orbit, v, f)])
                for orbit in sample.meta["orbits"]
                for v in range(V)
                for f in range(F)
            ]
        except SchemaError as exc:
            log.warning("%s: skipping sample %s: %s", path.name, entry.key, exc)
            index.failures.append({"uid": entry.key, "reason": "schema", "detail": str(exc), "num_images": 0})
            continue
        index.samples.append(
            PlannedSample(entry.key, sample.meta, sample.c2w, sample.angles, sample.intrinsics, images)
        )
    return index


# ----------------------------------------------------------------------------------------------------------
# Ray Data stages (module-level so that workers can import them)


def image_rows(item: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """flat_map: one render shard -> one row per image of its valid samples."""
    index = index_render_shard(item["path"])
    for s in index.samples:
        res = int(s.meta["resolution"])
        for orbit, v, f, offset, size in s.images:
            yield {
                "shard": index.number,
                "key": s.key,
                "orbit": orbit,
                "view": v,
                "frame": f,
                "path": str(index.path),
                "offset": offset,
                "size": size,
                "res": res,
            }


def decode_pngs(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """map_batches (CPU tasks): read each PNG's bytes and decode to RGBA; a failure fills `error`."""
    n = len(batch["key"])
    rgba = np.empty(n, dtype=object)
    errors = np.empty(n, dtype=object)
    handles: dict[str, int] = {}
    try:
        for i in range(n):
            name = image_field(str(batch["orbit"][i]), int(batch["view"][i]), int(batch["frame"][i]))
            res = int(batch["res"][i])
            try:
                path = str(batch["path"][i])
                if path not in handles:
                    handles[path] = os.open(path, os.O_RDONLY)
                data = os.pread(handles[path], int(batch["size"][i]), int(batch["offset"][i]))
                img = png_load(data, name)
                if img.shape != (res, res, 4):
                    raise SchemaError(f"{name}: shape {img.shape}, expected {(res, res, 4)}")
                rgba[i], errors[i] = img.tobytes(), ""
            except (SchemaError, OSError) as exc:
                rgba[i], errors[i] = b"", str(exc)
    finally:
        for fd in handles.values():
            os.close(fd)
    out = {k: v for k, v in batch.items() if k not in ("path", "offset", "size")}
    out["rgba"] = rgba
    out["error"] = errors
    return out


class EncodeActor:
    """map_batches callable class: holds the loaded encoders; rows with an error pass through unencoded."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from model.encoders import Encoders

        logging.basicConfig(level=logging.INFO)
        self.encoders = Encoders(EncoderSpec(**spec))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        cols = {name: np.full(n, b"", dtype=object) for name in ("mean", "std", "clip")}
        errors = batch["error"].copy()
        ok = [i for i in range(n) if not errors[i]]
        for res in sorted({int(batch["res"][i]) for i in ok}):
            idx = [i for i in ok if int(batch["res"][i]) == res]
            rgba = np.stack([np.frombuffer(batch["rgba"][i], np.uint8).reshape(res, res, 4) for i in idx])
            enc = self.encoders.encode(rgba)
            for j, i in enumerate(idx):
                cols["mean"][i] = enc.mean[j].astype(np.float16).tobytes()
                cols["std"][i] = enc.std[j].astype(np.float16).tobytes()
                cols["clip"][i] = enc.clip[j].astype(np.float16).tobytes()
        out = {k: v for k, v in batch.items() if k != "rgba"}
        out.update(cols)
        out["error"] = errors
        return out


# ----------------------------------------------------------------------------------------------------------
# Driver: regroup rows per sample, write shards in order


class _ShardState:
    """Collects the encoded rows of one shard and writes its samples in shard order as they complete."""

    def __init__(self, index: ShardIndex, out_dir: Path, encoder: dict[str, Any]) -> None:
        self.index = index
        self.out_path = latent_shard_path(out_dir, index.number)
        self.manifest = latent_manifest_path(out_dir, index.number)
        self.encoder = encoder
        self.expected = {s.key: len(s.images) for s in index.samples}
        self.rows: dict[str, list[dict[str, Any]]] = {s.key: [] for s in index.samples}
        self.cursor = 0
        self.writer: ShardWriter | None = None
        self.records: list[dict[str, Any]] = [dict(r, status="failed") for r in index.failures]
        self.started = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        key = row["key"]
        if key not in self.rows:
            raise RuntimeError(f"shard {self.index.number}: row for unplanned sample {key!r}")
        self.rows[key].append(row)
        self._flush()

    @property
    def done(self) -> bool:
        return self.cursor == len(self.index.samples)

    def _flush(self) -> None:
        while not self.done:
            s = self.index.samples[self.cursor]
            if len(self.rows[s.key]) < self.expected[s.key]:
                return
            self._write(s, self.rows.pop(s.key))
            self.cursor += 1

    def _write(self, s: PlannedSample, rows: list[dict[str, Any]]) -> None:
        bad = [r["error"] for r in rows if r["error"]]
        if bad:
            log.warning("%s: skipping sample %s: %s", self.index.path.name, s.key, bad[0])
            self.records.append(
                {"uid": s.key, "status": "failed", "reason": "bad_image", "detail": bad[0], "num_images": 0}
            )
            return
        V, F, R = int(s.meta["num_views"]), int(s.meta["num_frames"]), int(s.meta["resolution"])
        C, D, h = int(self.encoder["latent_channels"]), int(self.encoder["clip_dim"]), R // 8
        arrays: dict[str, dict[str, np.ndarray]] = {"mean": {}, "std": {}, "clip": {}}
        for orbit in s.meta["orbits"]:
            arrays["mean"][orbit] = np.empty((V, F, C, h, h), np.float16)
            arrays["std"][orbit] = np.empty((V, F, C, h, h), np.float16)
            arrays["clip"][orbit] = np.empty((V, F, D), np.float16)
        for r in rows:
            o, v, f = r["orbit"], int(r["view"]), int(r["frame"])
            arrays["mean"][o][v, f] = np.frombuffer(r["mean"], np.float16).reshape(C, h, h)
            arrays["std"][o][v, f] = np.frombuffer(r["std"], np.float16).reshape(C, h, h)
            arrays["clip"][o][v, f] = np.frombuffer(r["clip"], np.float16).reshape(D)
        meta = dict(s.meta, encoder=self.encoder)
        sample = LatentSample(
            key=s.key,
            mean=arrays["mean"],
            std=arrays["std"],
            clip=arrays["clip"],
            c2w=s.c2w,
            angles=s.angles,
            intrinsics=s.intrinsics,
            meta=meta,
        )
        try:
            raw = encode_latent_sample(sample)
        except SchemaError as exc:  # e.g. NaN latents from a broken encoder: keep it out of the shard
            log.warning("%s: skipping sample %s: %s", self.index.path.name, s.key, exc)
            self.records.append(
                {
                    "uid": s.key,
                    "status": "failed",
                    "reason": "bad_latents",
                    "detail": str(exc),
                    "num_images": 0,
                }
            )
            return
        if self.writer is None:
            self.writer = ShardWriter(self.out_path)
        self.writer.write(raw)
        self.records.append(
            {"uid": s.key, "status": "encoded", "reason": "", "detail": "", "num_images": len(rows)}
        )

    def finish(self) -> dict[str, Any]:
        """Write the manifest, then the shard (rename): a shard that exists is complete."""
        for s in self.index.samples[self.cursor :]:  # rows that never came (should not happen)
            self.records.append(
                {"uid": s.key, "status": "failed", "reason": "missing_rows", "detail": "", "num_images": 0}
            )
        self.cursor = len(self.index.samples)
        rows = [dict(r, shard=self.index.number) for r in self.records]
        write_manifest(self.manifest, rows, LATENT_COLUMNS, LATENT_STATUSES)
        if self.writer is None:
            self.writer = ShardWriter(self.out_path)  # an empty shard still marks the shard as done
        self.writer.close()
        encoded = sum(r["status"] == "encoded" for r in self.records)
        summary = {
            "shard": self.index.number,
            "encoded": encoded,
            "failed": len(self.records) - encoded,
            "seconds": round(time.monotonic() - self.started, 2),
        }
        log.info("latent shard %s: %s", self.out_path.name, summary)
        return summary

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def pending_shards(out_dir: str | Path, shards: Sequence[int] | None = None) -> tuple[list[Path], list[Path]]:
    """(render shards to encode, render shards already encoded), in shard order."""
    renders = render_shards(out_dir)
    if shards:
        wanted = set(shards)
        renders = [p for p in renders if shard_number(p) in wanted]
        missing = wanted - {shard_number(p) for p in renders}
        if missing:
            where = render_shard_path(out_dir, 0).parent
            raise ValueError(f"no render shard(s) {sorted(missing)} under {where}")
    todo = [p for p in renders if not latent_shard_path(out_dir, shard_number(p)).exists()]
    done = [p for p in renders if latent_shard_path(out_dir, shard_number(p)).exists()]
    return todo, done


def _init_ray(num_cpus: int | None = None) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # no usage report and no cloud-metadata probes by default (as curation.render); RAY_USAGE_STATS_ENABLED=1
    # in the environment turns them back on
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)


def _device(requested: str) -> str:
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if requested == "cuda" and gpus < 1:
        raise ValueError("encode.device is 'cuda' but the Ray cluster has no GPU")
    return "cuda" if requested == "cuda" or (requested == "auto" and gpus >= 1) else "cpu"


def encode_latents(
    cfg: Any, shards: Sequence[int] | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Encode every pending render shard of ``cfg.out_dir``; returns one summary dict per shard written."""
    import ray.data
    from tqdm import tqdm

    from profiles.load import absolute_paths

    cfg = absolute_paths(cfg)  # shard paths and weights are opened in Ray workers, whose cwd may differ
    # the static (orbit-only) dataset has its own tree; the tiny encoders stay shared under cfg.out_dir
    out_dir = dataset_dir(cfg.out_dir, cfg.render.mode)
    enc_cfg = cfg.encode
    if not Path(cfg.out_dir).is_dir():
        raise NotADirectoryError(f"out_dir {cfg.out_dir} is not a folder (set it with --set out_dir=...)")
    if not render_shards(out_dir):
        raise FileNotFoundError(
            f"no render shards under {render_shard_path(out_dir, 0).parent}: render them first "
            "(python -m curation.render) or fix out_dir / render.mode"
        )
    todo, done = pending_shards(out_dir, shards)
    for p in done:
        log.info("skipping %s: latent shard already complete", p.name)
    if not todo:
        log.info("nothing to encode under %s", render_shard_path(out_dir, 0).parent)
        return []
    _init_ray()
    device = _device(enc_cfg.device)
    spec = resolve_spec(enc_cfg, cfg.out_dir, device)
    check_weights(spec)  # fail here, not in an actor, when weights are missing
    encoder_meta = describe_encoders(spec)
    log.info("encoding %d render shard(s) on %s (%s)", len(todo), device, spec.dtype)

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    actor_resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": enc_cfg.cpus_per_actor}
    ds = (
        ray.data.from_items([{"path": str(p)} for p in todo], override_num_blocks=len(todo))
        .flat_map(image_rows)
        .map_batches(decode_pngs, batch_size=enc_cfg.batch_size, num_cpus=1)
        .map_batches(
            EncodeActor,
            fn_constructor_kwargs={"spec": spec.to_dict()},
            batch_size=enc_cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=enc_cfg.num_actors),
            **actor_resources,
        )
    )

    states: dict[int, _ShardState] = {}
    order = [shard_number(p) for p in todo]
    next_to_index = 0
    summaries: list[dict[str, Any]] = []
    bar = tqdm(unit="img", desc="encode", disable=not progress, file=sys.stderr)

    def index_through(n: int) -> None:
        nonlocal next_to_index
        while next_to_index < len(order) and order[next_to_index] <= n:
            state = _ShardState(index_render_shard(todo[next_to_index]), out_dir, encoder_meta)
            if state.done:  # no valid sample: nothing will arrive for it
                summaries.append(state.finish())
            else:
                states[order[next_to_index]] = state
            next_to_index += 1

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            nrows = len(batch["key"])
            for i in range(nrows):
                row = {k: batch[k][i] for k in batch}
                n = int(row["shard"])
                index_through(n)
                state = states[n]
                state.add(row)
                if state.done:
                    summaries.append(states.pop(n).finish())
            bar.update(nrows)
        index_through(order[-1])
        for num in sorted(states):
            summaries.append(states.pop(num).finish())
    except BaseException:
        for state in states.values():
            state.abort()
        raise
    finally:
        bar.close()
    summaries.sort(key=lambda s: s["shard"])
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    from profiles.load import add_profile_args, profile_from_args
    from profiles.loader import ConfigError

    parser = argparse.ArgumentParser(
        prog="python -m curation.encode_latents",
        description=(
            "Encode render shards (<out>/renders/shard-N.tar) into latent shards "
            "(<out>/latents/shard-N.tar): "
            "SD2.1-VAE posterior mean/std and OpenCLIP ViT-H-14 embeddings per image, on Ray Data. Finished "
            "shards are skipped; bad samples are skipped and listed in <out>/manifests/latents-N.parquet. "
            "Weights: --set encode.vae_path=... --set encode.clip_pretrained=..., or encode.tiny=true."
        ),
    )
    add_profile_args(parser)
    parser.add_argument(
        "--shard", type=int, action="append", default=None, help="encode only render shard N (repeatable)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = profile_from_args(args)
        summaries = encode_latents(cfg, args.shard, progress=not args.no_progress)
    except (ConfigError, OSError, ValueError) as exc:  # bad settings or inputs: one line, no traceback
        print(f"encode_latents: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"shards": summaries}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
