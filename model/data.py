"""Training examples from latent shards (`shards.latent_schema`): views, frames, cameras, noise.

An example of stage `4d` (paper supplement 7.2): from one object's V_total x F_total latent matrix of one
orbit, draw an *input view* and V distinct *target views*, and a window of F frames. The input view's
frames are the monocular input video: its latents (VAE mean, unscaled, as the release's
`VideoPredictionEmbedderWithEncoder` uses the posterior mode without the 0.18215 scale) are the
concatenated conditioning, and its CLIP embeddings the cross-attention context of each frame. The targets
are sampled from the stored posterior, ``z = (mean + std * eps) * vae_scaling_factor``. Cameras are made
relative to the input view like the release (`model.embeddings.relative_polar_azimuth`: the input view
sits at polar 90 deg, azimuth 0). Reference multi-views are the targets' unscaled mean latents at the
window's first frame.

Frames: a window ``start + s * (0..F-1)`` with a stride s drawn in [1, max_frame_stride] (clamped so the
window fits), so that frame-index embeddings keep a regular time step. The 3D stage uses F = 1: one frame
of each object (any frame of a 4D render, or the only frame of a static-mode render); its frame attention
is bypassed, so there is nothing for replicated frames to learn.

Determinism and exact resume: in the `indexed` mode the dataset is an index of (shard, member offsets)
and example number g is a pure function of (seed, g): the object is drawn with replacement (resampling),
then views, frames, latent noise and the EDM noise come from generators seeded by (seed, g). The trainer
assigns g = (micro_step * world_size + rank) * batch_size + i, so the examples of a step do not depend on
the number of processes or workers, and resuming at step s reproduces the data of an uninterrupted run
bit for bit. Trade-off: the index (a few hundred bytes per object) must fit in memory and reads are random
access into the tars (fine on local disk or a parallel file system; object stores want streaming). The
`streaming` mode is a WebDataset pipeline (resampled shards, split by node and worker, shuffle buffer) for
datasets whose index does not fit or that live behind HTTP; it resumes only approximately (the stream is
reseeded from (seed, step, rank), so no example is replayed in order, but the exact sequence differs).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.edm import bernoulli, sample_cond_aug, sample_lognormal
from model.embeddings import relative_polar_azimuth
from profiles.schema import StageConfig, TrainConfig
from shards.index import SampleEntry, index_tar, read_entry
from shards.latent_schema import (
    NPY_HEADER_BYTES,
    LatentSample,
    check_latent_headers,
    decode_latent_sample,
    draw_posterior_latents,
)
from shards.render_schema import SchemaError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Selection math (pure numpy)


def draw_views(num_total: int, num_views: int, rng: np.random.Generator) -> tuple[int, np.ndarray]:
    """(input view, (V,) distinct target views), all distinct and in [0, num_total)."""
    if num_views + 1 > num_total:
        raise ValueError(f"need {num_views} target views plus an input view, the object has {num_total}")
    views = rng.choice(num_total, size=num_views + 1, replace=False)
    return int(views[0]), np.sort(views[1:])


def draw_frames(num_total: int, num_frames: int, max_stride: int, rng: np.random.Generator) -> np.ndarray:
    """(F,) increasing frame indices: start + s * arange(F), the window inside [0, num_total)."""
    if num_frames > num_total:
        raise ValueError(f"num_frames {num_frames} exceeds the {num_total} frames of the object")
    if num_frames == 1:
        return np.array([rng.integers(num_total)])
    s_max = max(1, min(max_stride, (num_total - 1) // (num_frames - 1)))
    stride = int(rng.integers(1, s_max + 1))
    start = int(rng.integers(0, num_total - (num_frames - 1) * stride))
    return start + stride * np.arange(num_frames)


def relative_cameras(
    angles: np.ndarray, input_view: int, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(polar_rad, azimuth_rad), each (V,) float32, of `targets` relative to `input_view`.

    angles: (V_total, 3) [elevation_deg, azimuth_deg, radius] of the render schema.
    """
    el = torch.from_numpy(np.deg2rad(angles[:, 0].astype(np.float64)).astype(np.float32))
    az = torch.from_numpy(np.deg2rad(angles[:, 1].astype(np.float64)).astype(np.float32))
    polar, azim = relative_polar_azimuth(el[targets], az[targets], el[input_view], az[input_view])
    return polar.numpy(), azim.numpy()


def build_example(
    sample: LatentSample, train: TrainConfig, stage: StageConfig, rng: np.random.Generator
) -> dict[str, np.ndarray | str]:
    """One example (numpy, float32) from a decoded latent sample: ``stage`` says how many views and frames
    from which orbits, ``train.max_frame_stride`` how far apart the frames may be.

    Returns: latents (F, V, C, h, w) scaled targets; cond_latents (F, C, h, w) unscaled input-view means;
    clip (F, D); polar, azimuth (V,) radians; ref_latents (V, C, h, w) unscaled; views (V,), input_view,
    frames (F,) int64; key, orbit.
    """
    orbits = [o for o in stage.orbits if o in sample.mean]
    if not orbits:
        raise ValueError(
            f"sample {sample.key}: none of the orbits {list(stage.orbits)} (has {sample.orbits})"
        )
    orbit = orbits[int(rng.integers(len(orbits)))]
    mean, std = sample.mean[orbit], sample.std[orbit]
    v_total, f_total = mean.shape[:2]
    inp, views = draw_views(v_total, stage.num_views, rng)
    frames = draw_frames(f_total, stage.num_frames, train.max_frame_stride, rng)
    tgt = draw_posterior_latents(
        mean[views][:, frames], std[views][:, frames], sample.scaling_factor, rng
    )  # (V, F, C, h, w)
    polar, azim = relative_cameras(sample.angles[orbit], inp, views)
    return {
        "latents": np.ascontiguousarray(tgt.transpose(1, 0, 2, 3, 4)),
        "cond_latents": mean[inp, frames].astype(np.float32),
        "clip": sample.clip[orbit][inp, frames].astype(np.float32),
        "polar": polar,
        "azimuth": azim,
        "ref_latents": mean[views, frames[0]].astype(np.float32),
        "views": views.astype(np.int64),
        "input_view": np.int64(inp),
        "frames": frames.astype(np.int64),
        "key": sample.key,
        "orbit": orbit,
    }


def draw_noise(
    latent_shape: tuple[int, ...],
    cond_shape: tuple[int, ...],
    train: TrainConfig,
    stage: StageConfig,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The EDM randomness of one example: sigma, noise, cond_aug, cond_noise, drop_cond, ref_drop (the noise
    schedule and condition dropout of ``train``, the reference masking of ``stage``)."""
    return {
        "sigma": sample_lognormal(1, train.p_mean, train.p_std, gen)[0],
        "noise": torch.randn(latent_shape, generator=gen),
        "cond_aug": sample_cond_aug(
            1,
            train.cond_aug,
            train.cond_aug_p_mean,
            train.cond_aug_p_std,
            train.cond_aug_low,
            train.cond_aug_high,
            gen,
        )[0],
        "cond_noise": torch.randn(cond_shape, generator=gen),
        "drop_cond": bernoulli(1, train.cond_drop_prob, gen)[0],
        "ref_drop": bernoulli(1, stage.ref_mask_prob, gen)[0],
    }


def to_tensors(example: dict[str, Any], noise: dict[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in example.items():
        out[k] = torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray | np.integer) else v
    out.update(noise)
    return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; strings become lists."""
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else list(vals)
    return out


# ---------------------------------------------------------------------------------------------------------
# Shard discovery and the random-access index


def expand_urls(patterns: Sequence[str], root: str | Path = ".") -> list[str]:
    """Shard paths from paths, globs and brace ranges ({000000..000009}), relative to `root`; sorted."""
    urls: list[str] = []
    for pat in patterns:
        pat = str(Path(root) / Path(pat).expanduser()) if not Path(pat).expanduser().is_absolute() else pat
        m = re.search(r"\{(\d+)\.\.(\d+)\}", pat)
        if m:
            lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
            cands = [pat[: m.start()] + f"{i:0{width}d}" + pat[m.end() :] for i in range(lo, hi + 1)]
        else:
            cands = sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat]
        urls.extend(c for c in cands if not c.endswith(".partial"))
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"latent shards not found: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    if not urls:
        raise FileNotFoundError(f"no latent shards match {list(patterns)} (under {root})")
    return sorted(dict.fromkeys(urls))


def example_generators(seed: int, index: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators of example number `index` (a pure function of both)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, index & 0xFFFFFFFF, index >> 32])
    np_seed, torch_seed = ss.spawn(2)
    gen = torch.Generator().manual_seed(int(torch_seed.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1))
    return np.random.default_rng(np_seed), gen


class DataError(ValueError):
    """The training data cannot be used as a whole: a damaged shard, samples of different sizes, or more bad
    samples than ``train.max_bad_sample_fraction``."""


class SkipRecord:
    """The samples a run leaves out, as JSON lines ``{"shard", "key", "reason"}`` in a file beside the run
    (``<out>/logs/train_<stage>/skipped_samples.jsonl``). Each sample is listed once per run, resumes
    included; lines are appended whole, so DataLoader workers may add to it too."""

    def __init__(self, path: str | Path | None, reset: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.seen: set[tuple[str, str]] = set()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if reset:
                self.path.unlink(missing_ok=True)
            elif self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                        self.seen.add((row["shard"], row["key"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by a kill: the sample is listed again

    def add(self, shard: str, key: str, reason: str) -> None:
        log.warning("skipping latent sample %s of %s: %s", key, shard, reason)
        if (shard, key) in self.seen:
            return
        self.seen.add((shard, key))
        if self.path is not None:
            line = json.dumps({"shard": shard, "key": key, "reason": reason}) + "\n"
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)


def index_latent_samples(
    urls: Sequence[str], skips: SkipRecord, max_bad_fraction: float
) -> tuple[list[SampleEntry], int]:
    """(the samples that pass the cheap checks, the number that failed them), in shard order.

    Every shard is indexed and every sample checked once, up front, from its tar headers, its meta.json and
    its arrays' .npy headers (`shards.latent_schema.check_latent_headers`; no array data is read). A bad
    sample goes to ``skips``; a damaged or incomplete shard, samples of different latent sizes, or more than
    ``max_bad_fraction`` bad samples raise DataError."""
    entries: list[SampleEntry] = []
    bad, first_size = 0, None
    for url in urls:
        tar = index_tar(url)
        if tar.error:
            raise DataError(f"latent shard {url}: {tar.error}")
        for key, why in tar.rejected:
            skips.add(url, key, why)
            bad += 1
        for entry in tar.entries:
            try:
                raw = read_entry(entry, ["meta.json"])
                arrays = [name for name in entry.fields() if name.endswith(".npy")]
                raw.update(read_entry(entry, arrays, max_bytes=NPY_HEADER_BYTES))
                size = check_latent_headers(raw)
            except SchemaError as exc:
                skips.add(url, entry.key, str(exc))
                bad += 1
                continue
            if first_size is None:
                first_size = (size, url, entry.key)
            elif size != first_size[0]:
                raise DataError(
                    f"latent samples of different sizes: {first_size[1]}:{first_size[2]} has latents "
                    f"{first_size[0][:3]} and CLIP dim {first_size[0][3]}, {url}:{entry.key} has "
                    f"{size[:3]} and {size[3]} (shards rendered or encoded at different resolutions?)"
                )
            entries.append(entry)
    check_bad_fraction(bad, bad + len(entries), max_bad_fraction, skips)
    return entries, bad


def check_bad_fraction(bad: int, total: int, max_fraction: float, skips: SkipRecord) -> None:
    if total and bad > max_fraction * total:
        raise DataError(
            f"{bad} of {total} latent samples are bad (train.max_bad_sample_fraction={max_fraction}); "
            f"they are listed in {skips.path}"
        )
    if not total:
        raise DataError("no samples in the latent shards")


class IndexedLatentDataset(torch.utils.data.Dataset):
    """Example g = f(seed, g): an object drawn with replacement, then its views/frames/noise (see module doc).

    `__len__` is nominal (2^62): the sampler, not the dataset, decides which g are drawn. Samples are checked
    up front by `index_latent_samples`; a sample whose values turn out bad when first decoded (NaN latents)
    is recorded in ``skips`` and replaced by the next object drawn from the example's own generator, so the
    example is still a pure function of (seed, g) and the data, and a resumed run passes it the same way.
    """

    MAX_REDRAWS = 64

    def __init__(
        self,
        urls: Sequence[str],
        train: TrainConfig,
        stage: StageConfig,
        seed: int = 0,
        cache_size: int = 0,
        skips: SkipRecord | None = None,
    ) -> None:
        self.skips = skips or SkipRecord(None)
        self.max_bad_fraction = train.max_bad_sample_fraction
        self.entries, self.bad_indexed = index_latent_samples(urls, self.skips, self.max_bad_fraction)
        self.train, self.stage = train, stage
        self.seed = seed
        self.cache_size = cache_size
        self._cache: dict[int, LatentSample] = {}
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return 1 << 62

    def load(self, i: int) -> LatentSample | None:
        """The decoded sample ``i``, or None (recorded in the skip record) when its values are bad."""
        if i in self._cache:
            return self._cache[i]
        if i in self._bad:
            return None
        entry = self.entries[i]
        try:
            sample = decode_latent_sample(read_entry(entry))
        except (SchemaError, OSError) as exc:
            self._bad.add(i)
            self.skips.add(entry.path, entry.key, str(exc))
            total = len(self.entries) + self.bad_indexed
            check_bad_fraction(len(self._bad) + self.bad_indexed, total, self.max_bad_fraction, self.skips)
            return None
        if len(self._cache) < self.cache_size:
            self._cache[i] = sample
        return sample

    def __getitem__(self, g: int) -> dict[str, Any]:
        rng, gen = example_generators(self.seed, int(g))
        for _ in range(self.MAX_REDRAWS):
            sample = self.load(int(rng.integers(len(self.entries))))
            if sample is not None:
                break
        else:
            raise DataError(f"example {g}: {self.MAX_REDRAWS} draws in a row hit bad samples")
        ex = build_example(sample, self.train, self.stage, rng)
        noise = draw_noise(ex["latents"].shape, ex["cond_latents"].shape, self.train, self.stage, gen)
        out = to_tensors(ex, noise)
        out["index"] = torch.tensor(int(g))
        return out


class StepSampler(torch.utils.data.Sampler[int]):
    """Infinite example numbers of one rank from micro-step `start`: for micro-step k the global batch is
    g in [k * world * batch, (k + 1) * world * batch), of which this rank takes its contiguous slice."""

    def __init__(self, batch_size: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.batch_size, self.rank, self.world_size, self.start = batch_size, rank, world_size, start

    def __iter__(self) -> Iterator[int]:
        k = self.start
        while True:
            base = (k * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            k += 1

    def __len__(self) -> int:  # pragma: no cover - infinite
        return 1 << 62


# ---------------------------------------------------------------------------------------------------------
# Streaming WebDataset path


def streaming_dataset(
    urls: Sequence[str],
    train: TrainConfig,
    stage: StageConfig,
    seed: int,
    resume_token: int = 0,
    shuffle_buffer: int = 64,
) -> Any:
    """A WebDataset pipeline of examples: resampled shards (infinite), split by node and worker, shuffled.

    With resampled shards every node/worker draws shards independently from its own seed, so
    `split_by_node`/`split_by_worker` matter only for the finite (non-resampled) fallback of a single
    shard list; both are kept so that the same pipeline serves evaluation passes. `resume_token`
    (the step) reseeds the stream on resume. Imports webdataset lazily (absent on the GPU machine).
    """
    import webdataset as wds

    base_seed = (seed * 1_000_003 + resume_token) & 0x7FFFFFFF

    def make(sample_iter: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        winfo = torch.utils.data.get_worker_info()
        wid = winfo.id if winfo is not None else 0
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        count = 0
        for raw in sample_iter:
            try:
                sample = decode_latent_sample({k: v for k, v in raw.items() if k != "__url__"})
            except SchemaError as exc:
                log.warning("skipping bad latent sample %s: %s", raw.get("__key__"), exc)
                continue
            rng, gen = example_generators(base_seed, (rank << 40) + (wid << 32) + count)
            count += 1
            ex = build_example(sample, train, stage, rng)
            noise = draw_noise(ex["latents"].shape, ex["cond_latents"].shape, train, stage, gen)
            yield to_tensors(ex, noise)

    return wds.DataPipeline(
        wds.ResampledShards(list(urls), seed=base_seed, deterministic=True),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.shuffle(shuffle_buffer, rng=random.Random(base_seed)) if shuffle_buffer > 1 else (lambda s: s),
        make,
    )


def make_loader(
    urls: Sequence[str],
    train: TrainConfig,
    stage: StageConfig,
    *,
    seed: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    start_micro_step: int = 0,
    mode: str = "indexed",
    num_workers: int = 0,
    shuffle_buffer: int = 64,
    skips: SkipRecord | None = None,
) -> torch.utils.data.DataLoader:
    """An infinite DataLoader of collated example batches for one rank; ``skips`` lists the bad samples
    left out (indexed mode)."""
    if mode == "indexed":
        cache = 256 if num_workers == 0 else 0
        ds = IndexedLatentDataset(urls, train, stage, seed, cache_size=cache, skips=skips)
        sampler = StepSampler(batch_size, rank, world_size, start_micro_step)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=collate,
            persistent_workers=num_workers > 0,
        )
    if mode == "streaming":
        ds = streaming_dataset(urls, train, stage, seed, start_micro_step, shuffle_buffer)
        return torch.utils.data.DataLoader(
            ds, batch_size=batch_size, num_workers=num_workers, collate_fn=collate
        )
    raise ValueError(f"data mode {mode!r} is not one of indexed, streaming")
