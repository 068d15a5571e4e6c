"""Novel-view video synthesis: from a monocular video of an object to videos of it from new viewpoints.

Data flow (one input): read frames (model/video_input.py) -> select / fill frames (model/windows.py) ->
foreground, crop, resize, composite on white (model/crop.py) -> encode the input frames (VAE mean latents,
unscaled, and CLIP embeddings; model/encoders.py) -> sample latents window by window and view group by view
group
(`sample_views`, around `model.sampler.sample_latents`) -> decode -> videos, grids and a `generated` sample
(shards/generated_schema.py) that `fit4d/` and the evaluation read.

Where this differs from the release (`simple_video_sample_4d2.py`), on purpose: reference views are the
generated latents themselves (unscaled), not the decoded frames encoded again (the same content without a
decode/encode round trip per window); windows overlap by one frame (model/windows.py: equal to the release's
for every length it supports, and defined for longer videos); a frame covered by two windows keeps the
first window's version (the one the next window's reference views were taken from).

`sample_views` is the orchestration alone, with the sampler as a callback (tests give it a known
denoiser); `NovelViewSampler` holds the loaded network and encoders and runs one input end to end;
its `generate` is the array entry point (images and cameras in, images out) that `run` and fit4d's
stage-2 refiner (fit4d/refine.py) share.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.edm import noise_to_step
from model.sampler import autocast_dtype
from model.windows import ViewGroup, Window, fill_frames, select_frames, view_groups, window_schedule

log = logging.getLogger(__name__)

#: sampler(cond (1, T, C, h, w), clip (1, T, D), polar (1, V), azimuth (1, V), ref (1, V, C, h, w) | None,
#:         x_init (1, T, V, C, h, w) | None) -> scaled latents (1, T, V, C, h, w)
SamplerFn = Callable[..., torch.Tensor]

DONE_FILE = "summary.json"


def sample_views(
    sampler: SamplerFn,
    cond_latents: torch.Tensor,
    clip: torch.Tensor,
    polar: torch.Tensor,
    azimuth: torch.Tensor,
    *,
    frames_per_pass: int,
    views_per_pass: int,
    anchors: int = 1,
    scale: float = 0.18215,
    init_latents: torch.Tensor | None = None,
    start_step: int = 0,
    noise_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_pass: Callable[[Window, ViewGroup], None] | None = None,
) -> torch.Tensor:
    """Scaled latents (N, Nv, C, h, w) of Nv target views x N frames, autoregressively (model/windows.py).

    cond_latents (N, C, h, w) unscaled input latents; clip (N, D); polar, azimuth (Nv,) network angles.
    A pass's reference views are the generated latents at its reference frame, unscaled (as training feeds
    the targets' unscaled mean latents), zero for views not generated yet (the new views of a later group in
    the first window). Start-from-image: `init_latents` (N, Nv, C, h, w) scaled clean latents are noised to
    step `start_step` by `noise_fn` and every pass denoises from there.
    """
    n, nv = cond_latents.shape[0], polar.shape[0]
    c, h, w = cond_latents.shape[1:]
    out = torch.zeros(n, nv, c, h, w, dtype=torch.float32)
    known = torch.zeros(n, nv, dtype=torch.bool)
    windows = window_schedule(n, frames_per_pass)
    groups = view_groups(nv, views_per_pass, anchors)
    for win in windows:
        fr = list(win.frames)
        for grp in groups:
            slots = list(grp.slots)
            ref_frame = win.ref_frame if win.ref_frame is not None else (win.start if grp.anchors else None)
            ref = None
            if ref_frame is not None:
                have = known[ref_frame, slots]
                if not have[: grp.anchors].all() or (win.ref_frame is not None and not have.all()):
                    raise RuntimeError(f"reference frame {ref_frame} of views {slots} is not generated yet")
                ref = (out[ref_frame, slots] / scale) * have[:, None, None, None]
                ref = ref[None].to(cond_latents.device)
            x_init = None
            if init_latents is not None and start_step > 0:
                if noise_fn is None:
                    raise ValueError("start-from-image needs noise_fn")
                x_init = noise_fn(init_latents[fr][:, slots][None].to(cond_latents.device))
            lat = sampler(
                cond_latents[fr][None], clip[fr][None], polar[slots][None], azimuth[slots][None], ref, x_init
            )
            lat = lat[0].float().cpu()
            outs = list(grp.outputs)
            k0 = grp.anchors
            for f in win.writes:
                i = fr.index(f)
                out[f, outs] = lat[i, k0:]
                known[f, outs] = True
            if on_pass is not None:
                on_pass(win, grp)
    if not known.all():
        raise RuntimeError("internal: some (frame, view) latents were never generated")
    return out


# ----------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class PreparedInput:
    """Model-resolution input: rgba uint8 (N, R, R, 4) on white; boxes (N, 4); positions (N,)."""

    key: str
    rgba: np.ndarray
    boxes: np.ndarray
    positions: np.ndarray
    info: dict[str, Any]


def resolve_input(spec: str) -> str:
    """A render shard named without a key (``x.tar``) means its first sample: ``x.tar#KEY``."""
    spec = str(spec)
    if spec.endswith(".tar") and Path(spec).expanduser().is_file():
        from shards.reader import list_keys

        keys = list_keys(Path(spec).expanduser())
        if not keys:
            raise ValueError(f"{spec}: the shard holds no sample")
        return f"{spec}#{keys[0]}"
    return spec


def input_key(spec: str) -> str:
    """A sample key ([A-Za-z0-9_-]+) from an input path (``shard.tar#KEY`` gives KEY)."""
    base, _, key = str(spec).partition("#")
    name = key or Path(base.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "input"


def prepare_input(
    scfg: Any, spec: str, frames: np.ndarray | None = None, info: dict | None = None
) -> PreparedInput:
    """Read (unless `frames` is given), select, crop and fill the input frames as `scfg` says."""
    from model.crop import prepare_frames
    from model.video_input import read_input, read_masks, resample_frames

    if frames is None:
        frames, info = read_input(spec, scfg.input_orbit, scfg.input_view)
    info = dict(info or {})
    idx = select_frames(len(frames), scfg.frame_stride, scfg.num_frames)
    masks = None
    if scfg.masks:
        masks = read_masks(scfg.masks, len(frames), frames.shape[1:3])[idx]
    rgba, boxes, source = prepare_frames(
        frames[idx], scfg.resolution, scfg.crop, scfg.crop_fill, masks, scfg.fg_threshold
    )
    positions = np.asarray(idx, np.float64)
    t = scfg.frames_per_pass
    if len(idx) < t:
        pos = fill_frames(len(idx), t, scfg.fill)
        log.warning(
            "%s has %d frames (after selection), fewer than one window of %d: %s frames to fill it",
            spec,
            len(idx),
            t,
            "repeating" if scfg.fill == "repeat" else "interpolating",
        )
        info["filled"] = {"mode": scfg.fill, "from_frames": len(idx), "to_frames": t}
        rgba = resample_frames(rgba, pos)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, len(idx) - 1)
        frac = (np.asarray(pos) - lo)[:, None]
        boxes = boxes[lo] * (1 - frac) + boxes[hi] * frac
        positions = positions[lo] * (1 - frac[:, 0]) + positions[hi] * frac[:, 0]
    log.info("%s: foreground from %s, %s crop, %d frames", spec, source, scfg.crop, len(rgba))
    info.update({"foreground": source, "crop_mode": scfg.crop, "crop_fill": scfg.crop_fill})
    return PreparedInput(input_key(spec), rgba, boxes, positions, info)


# ----------------------------------------------------------------------------------------------------------
# Weights


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("sample.device is cuda but no CUDA device is available")
    return torch.device(name)


def _official_path(spec: str) -> Path | None:
    from model.checkpoint import is_official_file

    p = Path(spec).expanduser()
    return p if p.suffix == ".safetensors" and is_official_file(p) else None


def load_network(cfg: Any, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The UNet of `cfg.sample.checkpoint` on `device`, in eval mode, and its provenance."""
    from model.checkpoint import load_weights, resolve_checkpoint
    from model.config import CONFIG_FILENAME, get_config, load_config
    from model.unet import build_unet

    scfg = cfg.sample
    official = _official_path(scfg.checkpoint)
    if official is not None:
        from model.convert import load_unet_from_official

        net, report = load_unet_from_official(official, config=get_config(cfg.model.unet))
        info = {"checkpoint": str(official), "kind": "official", "source": report.source}
    else:
        try:
            path = resolve_checkpoint(scfg.checkpoint, Path(cfg.out_dir) / "checkpoints")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{exc} (set sample.checkpoint)") from None
        has_cfg = path.is_dir() and (path / CONFIG_FILENAME).is_file()
        net = build_unet(load_config(path) if has_cfg else get_config(cfg.model.unet))
        net.load_state_dict(load_weights(path, scfg.weights))
        info = {"checkpoint": str(path), "kind": "ours", "weights": scfg.weights}
        meta = path / "meta.json" if path.is_dir() else None
        if meta is not None and meta.is_file():
            stage = json.loads(meta.read_text()).get("stage")
            info["stage"] = stage
            if stage == "3d":  # trained with the frame attention bypassed
                net.set_frame_attention(False)
    info["unet"] = net.config.name
    return net.to(device).eval().requires_grad_(False), info


def load_encoders(cfg: Any, device: torch.device) -> Any:
    """The VAE + CLIP pair (model/encoders.py): from the official checkpoint when sampling from one (and
    `sample.encoders_from_checkpoint`), else from the `encode` section (tiny in the demo)."""
    from model import encoders

    ecfg = cfg.encode
    official = _official_path(cfg.sample.checkpoint)
    if official is not None and cfg.sample.encoders_from_checkpoint:
        ecfg = dataclasses.replace(ecfg, official_checkpoint=str(official), tiny=False)
    ecfg = dataclasses.replace(ecfg, compile=False)  # a few calls per input: compiling would not pay
    spec = encoders.resolve_spec(ecfg, cfg.out_dir, device.type)
    encoders.check_weights(spec)
    return encoders.Encoders(spec)


# ----------------------------------------------------------------------------------------------------------
# One input end to end


class NovelViewSampler:
    """Loaded network + encoders; `run(input, out_dir)` writes one input's outputs (resumable per input)."""

    def __init__(self, cfg: Any, device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device or resolve_device(cfg.sample.device)
        self.net, self.net_info = load_network(cfg, self.device)
        self.dtype = autocast_dtype(cfg.sample.dtype)
        if self.dtype is not None and self.device.type == "cuda":
            # half-precision weights as the release: half the memory, the same products as autocast alone
            self.net.to(self.dtype)
        self.encoders = load_encoders(cfg, self.device)
        if self.encoders.clip_dim != self.net.config.context_dim:
            raise ValueError(
                f"CLIP embedding size {self.encoders.clip_dim} != UNet context_dim "
                f"{self.net.config.context_dim}:"
                " the encode section and the checkpoint do not belong together"
            )
        levels = len(self.net.config.channel_mult)
        multiple = 8 * 2 ** (levels - 1)
        if cfg.sample.resolution % multiple:
            raise ValueError(f"sample.resolution {cfg.sample.resolution} must be a multiple of {multiple}")

    def cameras(self) -> Any:
        from model.novel_cameras import resolve_cameras

        s = self.cfg.sample
        return resolve_cameras(s.cameras, s.orbit_views, s.orbit_elevation_deg)

    def _sampler(self, generator: torch.Generator, start_step: int, num_steps: int) -> SamplerFn:
        from model.sampler import sample_latents, sample_options

        options = {**sample_options(self.cfg.sample), "num_steps": num_steps}

        def run(cond, clip, polar, azimuth, ref, x_init):
            return sample_latents(
                self.net,
                cond.to(self.device),
                clip.to(self.device),
                polar.to(self.device),
                azimuth.to(self.device),
                ref,
                **options,
                latent_channels=self.net.config.out_channels,
                generator=generator,
                x_init=x_init,
                start_step=start_step if x_init is not None else 0,
            )

        return run

    def generate_latents(
        self,
        rgba: np.ndarray,
        cams: Any,
        *,
        init_images: np.ndarray | None = None,
        start_step: int = 0,
        num_steps: int | None = None,
        seed: int | None = None,
        input_elevation_deg: float | None = None,
        desc: str = "sample",
    ) -> torch.Tensor:
        """Scaled latents (N, Nv, C, h, w) of the views `cams` (model/novel_cameras.py CameraSet) x N frames.

        rgba: uint8 (N, R, R, 4) input frames at `sample.resolution`, already cropped (composited on white
        by the encoders). init_images: uint8 (Nv, N, R, R, 3 or 4), start-from-image: encoded, noised to step
        `start_step` of the `num_steps`-step schedule and denoised from there (4D stage 2). num_steps, seed,
        input_elevation_deg default to the `sample` section's. A video shorter than one window has its frames
        repeated to fill it (model/windows.py `fill_frames`) and each frame's first copy returned.
        """
        from tqdm import tqdm

        s = self.cfg.sample
        num_steps = s.num_steps if num_steps is None else int(num_steps)
        seed = s.seed if seed is None else int(seed)
        in_el = s.input_elevation_deg if input_elevation_deg is None else float(input_elevation_deg)
        n, r = len(rgba), s.resolution
        if rgba.ndim != 4 or rgba.shape[1:] != (r, r, 4) or n < 1:
            raise ValueError(f"input frames of shape {tuple(rgba.shape)}, expected (N, {r}, {r}, 4) uint8")
        if not 0 <= start_step < num_steps:
            raise ValueError(f"start_step {start_step} must lie in [0, num_steps={num_steps})")
        init = None
        if start_step > 0:
            if init_images is None:
                raise ValueError("start_step > 0 needs init images (the images to start from)")
            if init_images.shape[:4] != (len(cams), n, r, r) or init_images.shape[4] not in (3, 4):
                raise ValueError(
                    f"init images of shape {tuple(init_images.shape)}, expected "
                    f"({len(cams)} views, {n} frames, {r}, {r}, 3 or 4)"
                )
            init = init_images
        idx = np.arange(n)
        if n < s.frames_per_pass:  # fewer frames than one window: repeat them (as prepare_input does)
            idx = np.rint(fill_frames(n, s.frames_per_pass, "repeat")).astype(int)
            rgba = rgba[idx]
            init = None if init is None else init[:, idx]
        cond, clip = self.encode(rgba)
        cond = cond.to(self.device)
        clip = clip.to(self.device)
        init_latents = None if init is None else self._encode_views(init)
        polar, azimuth = cams.network_angles(in_el)
        gen = torch.Generator().manual_seed(seed)
        windows = window_schedule(len(rgba), s.frames_per_pass)
        groups = view_groups(len(cams), s.views_per_pass, s.group_anchors)
        bar = tqdm(
            total=len(windows) * len(groups) * (num_steps - start_step),
            desc=desc,
            unit="step",
            disable=not s.progress,
        )
        last = {"t": None}

        def count_steps(_module, args):  # one step per new noise level, however many forwards it takes
            tv = float(args[1].reshape(-1)[0])
            if tv != last["t"]:
                last["t"] = tv
                bar.update(1)

        hook = self.net.register_forward_pre_hook(count_steps)
        try:
            lat = sample_views(
                self._sampler(gen, start_step, num_steps),
                cond,
                clip,
                polar,
                azimuth,
                frames_per_pass=s.frames_per_pass,
                views_per_pass=s.views_per_pass,
                anchors=s.group_anchors,
                scale=self.encoders.scaling_factor,
                init_latents=init_latents,
                start_step=start_step,
                noise_fn=lambda x0: noise_to_step(
                    x0, start_step, num_steps, s.sigma_min, s.sigma_max, s.rho, generator=gen
                ),
                on_pass=lambda w, g: bar.set_postfix(
                    frames=f"{w.frames[0]}-{w.frames[-1]}", views=str(g.outputs)
                ),
            )
        finally:
            hook.remove()
            bar.close()
        if len(idx) != n:
            lat = lat[[int(np.flatnonzero(idx == f)[0]) for f in range(n)]]
        return lat

    def generate(self, rgba: np.ndarray, cams: Any, **kwargs: Any) -> np.ndarray:
        """Images in, images out: uint8 (Nv, N, R, R, 3) views of `cams` x N frames, on white
        (`generate_latents` says what rgba and the keyword arguments are), decoded."""
        return self.decode(self.generate_latents(rgba, cams, **kwargs).permute(1, 0, 2, 3, 4))

    def encode(self, rgba: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoders.encode(rgba)
        return torch.from_numpy(enc.mean), torch.from_numpy(enc.clip)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (..., C, h, w) -> uint8 (..., H, W, 3)."""
        from model import vae

        images = vae.decode_latents(
            latents, self.encoders.vae, scaled=True, batch_size=self.cfg.sample.decode_batch
        )
        return vae.images_to_uint8(images)

    def run(
        self, spec: str, out_dir: str | Path, frames: np.ndarray | None = None, info: dict | None = None
    ) -> dict:
        """Sample novel views of one input and write everything into `out_dir`; returns the summary."""
        from model.novel_cameras import CameraSet, intrinsics_matrix
        from model.video_output import grid_frames, grid_image, write_mp4, write_png
        from shards.generated_schema import GeneratedSample, encode_generated_sample
        from shards.writer import ShardWriter, atomic_write_bytes

        s = self.cfg.sample
        out_dir = Path(out_dir)
        t0 = time.perf_counter()
        prep = prepare_input(s, spec, frames, info)
        cams: CameraSet = self.cameras()
        init = None
        if s.start_step > 0:
            init = self._init_images(s.init_images, len(prep.rgba), len(cams))
        lat = self.generate_latents(
            prep.rgba, cams, init_images=init, start_step=s.start_step, desc=f"sample {prep.key}"
        )
        windows = window_schedule(len(prep.rgba), s.frames_per_pass)
        groups = view_groups(len(cams), s.views_per_pass, s.group_anchors)
        passes = len(windows) * len(groups)
        t_sample = time.perf_counter() - t0
        images = self.decode(lat.permute(1, 0, 2, 3, 4))  # (Nv, N, R, R, 3)
        inp_rgb = prep.rgba[..., :3]
        all_views = np.concatenate([inp_rgb[None], images], axis=0)
        fps = s.fps or float(prep.info.get("fps") or 10.0)
        write_mp4(out_dir / "input.mp4", inp_rgb, fps)
        for v in range(images.shape[0]):
            write_mp4(out_dir / f"view_{v + 1:02d}.mp4", images[v], fps)
        write_mp4(out_dir / "grid.mp4", grid_frames(all_views), fps)
        write_png(out_dir / "grid.png", grid_image(all_views, thumb=min(s.resolution, 128)))
        c2w, angles = cams.poses(s.input_elevation_deg, s.radius)

        meta = {
            "checkpoint": self.net_info["checkpoint"],
            "network": self.net_info,
            "seed": s.seed,
            "num_steps": s.num_steps,
            "start_step": s.start_step,
            "init_images": s.init_images,
            "guidance": s.guidance,
            "cfg_min": s.cfg_min,
            "cfg_max": s.cfg_max,
            "sigma_min": s.sigma_min,
            "sigma_max": s.sigma_max,
            "rho": s.rho,
            "cond_aug": s.cond_aug,
            "fov_deg": s.fov_deg,
            "input_view": 0,
            "input": prep.info,
            "crop_mode": s.crop,
            "foreground": prep.info["foreground"],
            "windows": [[w.frames[0], w.frames[-1], w.ref_frame] for w in windows],
            "view_groups": [list(g.slots) for g in groups],
            "group_anchors": s.group_anchors,
            "fps": fps,
            "dtype": s.dtype,
            "device": str(self.device),
        }
        rgba_views = np.concatenate(
            [prep.rgba[None], np.concatenate([images, np.full_like(images[..., :1], 255)], -1)], axis=0
        )
        sample = GeneratedSample(
            key=prep.key,
            images=rgba_views,
            c2w=c2w,
            angles=angles,
            intrinsics=intrinsics_matrix(s.fov_deg, s.resolution),
            crop_boxes=prep.boxes.astype(np.float32),
            source_frames=prep.positions.astype(np.float32),
            meta=meta,
        )
        with ShardWriter(out_dir / "generated.tar") as w:
            w.write(encode_generated_sample(sample))
        cam_json = {
            "input_elevation_deg": s.input_elevation_deg,
            "views": angles.tolist(),
            "c2w": c2w.tolist(),
        }
        atomic_write_bytes(out_dir / "cameras.json", json.dumps(cam_json, indent=1).encode())
        from model.eval_predictions import sample_predictions

        try:  # a render sample: its ground-truth cameras too
            evaluated = sample_predictions(self, prep)
        except ValueError as exc:  # cameras or frames the evaluation asks for that this sample lacks
            log.warning("%s: no evaluation predictions: %s", prep.key, exc)
            evaluated = {"reason": str(exc)}
        summary = {
            "key": prep.key,
            "input": str(spec),
            "frames": int(len(prep.rgba)),
            "views": int(len(cams)),
            "passes": passes,
            "seconds_sampling": round(t_sample, 3),
            "seconds_total": round(time.perf_counter() - t0, 3),
            "eval_predictions": None
            if evaluated is None
            else {
                k: evaluated[k]
                for k in ("orbit", "views", "frames", "missing_frames", "reason")
                if k in evaluated
            },
            "outputs": sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) + [DONE_FILE],
        }
        atomic_write_bytes(out_dir / DONE_FILE, json.dumps(summary, indent=1).encode())
        log.info(
            "wrote %s: %d views x %d frames in %.1f s",
            out_dir,
            len(cams),
            len(prep.rgba),
            summary["seconds_total"],
        )
        return summary

    def _init_images(self, path: str, num_frames: int, num_views: int) -> np.ndarray:
        """Start-from-image: views 1..N of a generated sample, uint8 (Nv, N, R, R, 4)."""
        from shards.generated_schema import read_generated

        g = read_generated(path)
        imgs = g.images[1:]
        if imgs.shape[:2] != (num_views, num_frames) or imgs.shape[2] != self.cfg.sample.resolution:
            raise ValueError(
                f"sample.init_images {path}: {imgs.shape[0]} views x {imgs.shape[1]} frames of "
                f"{imgs.shape[2]} px, "
                f"expected {num_views} x {num_frames} of {self.cfg.sample.resolution}"
            )
        return imgs

    def _encode_views(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (Nv, N, R, R, 3|4) -> scaled VAE mean latents (N, Nv, C, h, w)."""
        if images.shape[-1] == 3:
            images = np.concatenate([images, np.full_like(images[..., :1], 255)], -1)
        flat = np.ascontiguousarray(images.reshape(-1, *images.shape[2:]))
        mean = torch.from_numpy(self.encoders.encode(flat).mean) * self.encoders.scaling_factor
        return mean.reshape(*images.shape[:2], *mean.shape[1:]).transpose(0, 1).contiguous()
