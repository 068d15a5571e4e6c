"""The two-stage optimization (paper sec. 4): stage 1 fits the canonical NeRF to frame 0, then unfreezes the
deformation and samples near-orthogonal views and a widening frame window; stage 2 renders every view and
frame, replaces the targets by refined ones (fit4d/refine.py) and fits further.

`Fitter.step` is one iteration (also what the benchmark times); `fit` runs both stages and returns the
losses and timings per stage.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from fit4d.cameras import image_rays, pixel_rays, spherical
from fit4d.data import FitInput
from fit4d.fields import DynamicNeRF
from fit4d.losses import (
    LPIPSLoss,
    bilateral_normal_smoothness,
    mask_loss,
    normal_loss,
    smooth_depth_loss,
    visibility_weights,
    weighted_mse,
)
from fit4d.normal_estimators import NormalEstimator, describe, omnidata_estimator, video_normal_targets
from fit4d.occupancy import OccupancyGrid
from fit4d.refine import Refiner, RefineRequest, check_refined
from fit4d.rendering import render_rays
from fit4d.sampling import (
    orthogonal_views,
    random_frames,
    random_views,
    strided_patch,
    window_frames,
    window_size,
)
from profiles.schema import Fit4DConfig

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("fit4d.device is 'cuda' but no CUDA device is available (set fit4d.device=auto)")
    return torch.device(name)


def frame_time(frame: int | np.ndarray, num_frames: int) -> np.ndarray:
    """Frame index -> t in [0, 1] (a single frame is t = 0)."""
    return np.asarray(frame, np.float32) / max(num_frames - 1, 1)


def compile_field(model: torch.nn.Module, backend: str = "inductor") -> Callable:
    """torch.compile of the field (dynamic shapes: the occupied sample count changes every iteration).

    The analytic normals take d sigma / dx with retain_graph=True before the loss's backward, which
    AOTAutograd's donated buffers refuse ("compiled with non-empty donated buffers"), so they are switched
    off; it is a process-wide setting of torch._functorch and costs only the buffer reuse.
    """
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    # a fit compiles a handful of graphs (static / dynamic part, with and without grad, with normals);
    # past the default limit of 8 dynamo silently falls back to eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(model, dynamic=True, backend=backend)


@dataclass
class StageLog:
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    iterations: int = 0


class Fitter:
    """Owns the NeRF, its occupancy grid, the optimizer and the targets of one fit."""

    def __init__(
        self,
        data: FitInput,
        cfg: Fit4DConfig,
        device: torch.device | str | None = None,
        normal_estimator: NormalEstimator | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        dev = self.device
        self.rgb = torch.from_numpy(data.rgb).to(dev)  # (V, F, H, W, 3)
        self.alpha = torch.from_numpy(data.alpha).to(dev)
        self.c2w = torch.from_numpy(data.c2w).float().to(dev)
        self.K = torch.from_numpy(data.K).float().to(dev)
        self.num_views, self.num_frames = data.num_views, data.num_frames
        self.height, self.width = data.resolution
        if cfg.patch_size > min(self.height, self.width):
            raise ValueError(
                f"fit4d.patch_size {cfg.patch_size} exceeds the {self.height}x{self.width} images"
            )
        self.angles = spherical(data.c2w)
        views = np.array(cfg.train_views or range(self.num_views), np.int64)
        if views.size == 0 or views.min() < 0 or views.max() >= self.num_views:
            raise ValueError(f"fit4d.train_views {cfg.train_views} must index the {self.num_views} views")
        self.train_views = views
        allow_triton = not (cfg.loss.differentiates_normals or cfg.compile)
        self.model = DynamicNeRF(cfg.nerf, allow_triton=allow_triton).to(dev)
        self.field_fn = self.model
        if cfg.compile and dev.type == "cuda":
            self.field_fn = compile_field(self.model)
        self.occupancy = OccupancyGrid(
            cfg.render.occupancy_resolution, cfg.nerf.bound, cfg.render.occupancy_threshold, dev
        )
        # the deformation MLP's weights train at deform_lr; hash tables (also a 4D one) at lr
        deform = [p for n, p in self.model.deformation.named_parameters() if not n.startswith("encoding.")]
        ids = {id(p) for p in deform}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        self.optimizer = torch.optim.Adam(
            [
                {"params": rest, "lr": cfg.lr, "base_lr": cfg.lr},
                {"params": deform, "lr": cfg.deform_lr, "base_lr": cfg.deform_lr},
            ],
            eps=1e-15,
        )
        self.lpips = LPIPSLoss(cfg.loss.lpips_backbone_path).to(dev) if cfg.loss.lpips > 0 else None
        # stage-2 normal targets: an estimator on the refined images, else the stage-1 NeRF's normals
        if normal_estimator is None and cfg.loss.normal_estimator == "omnidata":
            normal_estimator = omnidata_estimator(cfg.loss, dev)
        self.normal_estimator = normal_estimator
        self.normal_targets: torch.Tensor | None = None  # (V, F, H, W, 3) world normals, stage 2
        self.stage = "stage1"
        self.iteration = 0
        self.logs: dict[str, StageLog] = {}

    # ---- one iteration -------------------------------------------------------------------------
    def sample_batch(self, it: int, dynamic_iters: int, static: bool) -> tuple[np.ndarray, np.ndarray]:
        """(views, frames) pairs of this iteration as two equal-length index arrays."""
        cfg = self.cfg
        if cfg.view_sampling == "orthogonal":
            views = orthogonal_views(
                self.angles[:, 1], self.train_views, self.data.input_view, cfg.view_jitter_deg, self.rng
            )
        else:
            views = random_views(self.train_views, cfg.views_per_iter, self.rng)
        if static:
            frames = np.zeros(cfg.frames_per_iter, np.int64)
        elif cfg.frame_sampling == "progressive" and self.stage == "stage1":
            w = window_size(it, dynamic_iters, self.num_frames, cfg.window_start, cfg.window_grow_frac)
            frames = window_frames(w, cfg.frames_per_iter, self.rng)
        else:
            frames = random_frames(self.num_frames, cfg.frames_per_iter, self.rng)
        vv, ff = np.meshgrid(views, frames, indexing="ij")
        return vv.reshape(-1), ff.reshape(-1)

    def needs_normals(self, static: bool) -> tuple[bool, bool]:
        """(render normals, keep them differentiable) for this iteration's losses."""
        lc = self.cfg.loss
        grad_losses = lc.normal_smoothness > 0 or (lc.normal > 0 and self.normal_targets is not None)
        vis = lc.visibility_weighting and lc.mse > 0
        vis_now = vis and self.stage == "stage1" and self.iteration >= lc.visibility_start
        return grad_losses or vis_now, grad_losses

    def step(self, views: np.ndarray, frames: np.ndarray, static: bool = False) -> dict[str, float]:
        cfg, lc, dev = self.cfg, self.cfg.loss, self.device
        p = cfg.patch_size
        rows, cols = zip(
            *(strided_patch(self.height, self.width, p, cfg.max_patch_stride, self.rng) for _ in views),
            strict=True,
        )
        rows_t = torch.from_numpy(np.stack(rows)).to(dev)  # (B, P, P)
        cols_t = torch.from_numpy(np.stack(cols)).to(dev)
        v_t = torch.from_numpy(views).to(dev)[:, None, None].expand_as(rows_t)
        f_t = torch.from_numpy(frames).to(dev)[:, None, None].expand_as(rows_t)
        origins, dirs = pixel_rays(self.c2w[v_t.reshape(-1)], self.K, rows_t.reshape(-1), cols_t.reshape(-1))
        times = torch.from_numpy(frame_time(frames, self.num_frames)).to(dev)[:, None, None].expand_as(rows_t)
        with_normals, create_graph = self.needs_normals(static)
        self.model.dynamic = not static
        out = render_rays(
            self.field_fn,
            origins,
            dirs,
            times.reshape(-1),
            cfg.nerf.bound,
            cfg.render.num_samples,
            occupied=self.occupancy,
            with_normals=with_normals,
            create_graph=create_graph,
            perturb=True,
            background=cfg.render.background,
            early_stop_eps=cfg.render.early_stop_eps,
        )
        shape = rows_t.shape
        target = self.rgb[v_t, f_t, rows_t, cols_t]  # (B, P, P, 3)
        alpha = self.alpha[v_t, f_t, rows_t, cols_t]
        pred = out["rgb"].reshape(*shape, 3)
        fg = alpha > 0.5
        losses: dict[str, torch.Tensor] = {}
        weights = None
        if (
            lc.visibility_weighting
            and with_normals
            or (lc.visibility_weighting and self.normal_targets is not None)
        ):
            normals = (
                self.normal_targets[v_t, f_t, rows_t, cols_t]
                if self.normal_targets is not None
                else out["normal"].detach().reshape(*shape, 3)
            )
            vis = visibility_weights(dirs.reshape(*shape, 3), normals)
            weights = torch.where(fg, vis, torch.ones_like(vis))
        if lc.mse > 0:
            losses["mse"] = lc.mse * weighted_mse(pred, target, weights)
        if lc.mask > 0:
            losses["mask"] = lc.mask * mask_loss(out["opacity"].reshape(shape), alpha)
        if self.lpips is not None:
            losses["lpips"] = lc.lpips * self.lpips(pred, target)
        if lc.smooth_depth > 0:
            losses["smooth_depth"] = lc.smooth_depth * smooth_depth_loss(out["depth"].reshape(shape), fg)
        if create_graph:
            normal = out["normal"].reshape(*shape, 3)
            if lc.normal_smoothness > 0:
                losses["normal_smoothness"] = lc.normal_smoothness * bilateral_normal_smoothness(
                    normal, target, lc.bilateral_sigma
                )
            if lc.normal > 0 and self.normal_targets is not None:
                losses["normal"] = lc.normal * normal_loss(
                    normal, self.normal_targets[v_t, f_t, rows_t, cols_t], fg
                )
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        with torch.no_grad():
            psnr = -10.0 * torch.log10(((pred - target) ** 2).mean().clamp(min=1e-10))
        # one device-to-host copy for the whole record (each float() would wait for the GPU)
        names = [*losses, "total", "psnr"]
        values = torch.stack([*(v.detach() for v in losses.values()), total.detach(), psnr]).tolist()
        record = dict(zip(names, values, strict=True))
        # what an iteration costs grows with this (the occupied samples the field ran on with gradients)
        record["samples"] = int(out["field_samples"])
        return record

    def set_lr(self, it: int, total: int) -> None:
        """Exponential decay of each group's rate (lr; deform_lr for the deformation) to lr_final_frac of
        it over a stage."""
        decay = math.exp(math.log(self.cfg.lr_final_frac) * it / max(total, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * decay

    def update_occupancy(self, frames: np.ndarray) -> None:
        times = frame_time(np.unique(frames), self.num_frames).tolist()
        self.occupancy.update(self.model.density, times)

    # ---- stages --------------------------------------------------------------------------------
    def run_stage(self, name: str, iters: int, static_iters: int = 0) -> StageLog:
        cfg = self.cfg
        self.stage = name
        stage_log = self.logs.setdefault(name, StageLog())
        dynamic_iters = max(iters - static_iters, 1)
        self.sync()
        start = time.perf_counter()
        bar = tqdm(range(iters), desc=f"fit4d {name}", disable=not cfg.progress, leave=False)
        for it in bar:
            self.iteration = it
            static = it < static_iters or self.num_frames == 1
            self.set_lr(it, iters)
            d_it = max(it - static_iters, 0)
            views, frames = self.sample_batch(d_it, dynamic_iters, static)
            rc = cfg.render
            if it >= rc.occupancy_warmup and it % rc.occupancy_update_every == 0:
                if static:
                    window = np.zeros(1, np.int64)
                elif name == "stage1" and cfg.frame_sampling == "progressive":
                    w = window_size(
                        d_it, dynamic_iters, self.num_frames, cfg.window_start, cfg.window_grow_frac
                    )
                    window = np.arange(w)
                else:
                    window = np.arange(self.num_frames)
                self.model.dynamic = not static
                self.update_occupancy(window)
            record = self.step(views, frames, static=static)
            if not math.isfinite(record["total"]):
                raise FloatingPointError(f"fit4d {name}: non-finite loss at iteration {it}: {record}")
            record["iteration"] = it
            stage_log.losses.append(record)
            if it % 10 == 0:
                bar.set_postfix(loss=f"{record['total']:.4f}", psnr=f"{record['psnr']:.1f}")
        self.sync()
        stage_log.seconds += time.perf_counter() - start
        stage_log.iterations += iters
        self.model.dynamic = self.num_frames > 1
        return stage_log

    def refine_targets(self, refiner: Refiner | None) -> float:
        """Stage-2 setup: render every training view and frame; with a refiner, its output replaces the
        targets of the training views but the input view. The visibility/normal targets become the normal
        estimator's on the new targets, or without one the stage-1 NeRF's normals. Returns seconds."""
        self.sync()
        start = time.perf_counter()
        self.model.dynamic = self.num_frames > 1
        # only the training views are ever sampled, so only they need new targets and normals
        train = self.train_views
        partial = self.render_all(with_normals=self.normal_estimator is None, views=train)
        renders = {}
        for k, val in partial.items():
            full = torch.zeros(self.num_views, *val.shape[1:], device=val.device, dtype=val.dtype)
            full[torch.from_numpy(train).to(val.device)] = val
            renders[k] = full
        self.normal_targets = renders.get("normal")
        if refiner is not None:
            angles = self.angles
            request = RefineRequest(
                rgb=renders["rgb"].cpu().numpy(),
                alpha=renders["opacity"].cpu().numpy(),
                c2w=self.data.c2w,
                K=self.data.K,
                elevation_deg=angles[:, 0] - angles[self.data.input_view, 0],
                azimuth_deg=(angles[:, 1] - angles[self.data.input_view, 1]) % 360.0,
                input_view=self.data.input_view,
                input_rgb=self.data.rgb[self.data.input_view],
                background=self.cfg.render.background,
                start_step=self.cfg.refine_step,
                num_steps=self.cfg.refine_num_steps,
                input_alpha=self.data.alpha[self.data.input_view],
                views=train,
            )
            refined = torch.from_numpy(check_refined(request, refiner(request))).to(self.device)
            keep = torch.ones(self.num_views, dtype=torch.bool, device=self.device)
            keep[torch.from_numpy(train).to(self.device)] = False
            keep[self.data.input_view] = True
            self.rgb = torch.where(keep[:, None, None, None, None], self.rgb, refined)
        if self.normal_estimator is not None:
            self.normal_targets = video_normal_targets(
                self.normal_estimator, self.rgb, self.alpha, self.c2w, train
            )
        self.sync()
        return time.perf_counter() - start

    # ---- rendering whole images ----------------------------------------------------------------
    @torch.no_grad()
    def render_image(
        self,
        c2w: torch.Tensor,
        t: float,
        height: int,
        width: int,
        K: torch.Tensor,
        with_normals: bool = False,
        chunk: int = 2**16,
    ) -> dict[str, torch.Tensor]:
        """rgb (H, W, 3), opacity (H, W), depth (H, W)[, normal (H, W, 3) unit] of one camera at time t."""
        origins, dirs = image_rays(c2w, K, height, width)
        parts: dict[str, list[torch.Tensor]] = {}
        for s in range(0, origins.shape[0], chunk):
            o, d = origins[s : s + chunk], dirs[s : s + chunk]
            out = render_rays(
                self.field_fn,
                o,
                d,
                torch.full((o.shape[0],), float(t), device=o.device),
                self.cfg.nerf.bound,
                self.cfg.render.num_samples,
                occupied=self.occupancy,
                with_normals=with_normals,
                background=self.cfg.render.background,
                # a pruning pass can only pay where normals make the second pass dear
                early_stop_eps=self.cfg.render.early_stop_eps if with_normals else 0.0,
            )
            for k in ("rgb", "opacity", "depth", "normal"):
                if k in out:
                    parts.setdefault(k, []).append(out[k].detach())
        res = {k: torch.cat(v).reshape(height, width, -1).squeeze(-1) for k, v in parts.items()}
        if "normal" in res:
            res["normal"] = res["normal"] / res["normal"].norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return res

    def render_all(
        self, with_normals: bool = False, views: np.ndarray | None = None
    ) -> dict[str, torch.Tensor]:
        """Every (view, frame) of the input cameras: rgb (V, F, H, W, 3), opacity (V, F, H, W)[, normal]."""
        views = np.arange(self.num_views) if views is None else views
        out: dict[str, list[torch.Tensor]] = {}
        for v in views:
            for f in range(self.num_frames):
                r = self.render_image(
                    self.c2w[v],
                    float(frame_time(f, self.num_frames)),
                    self.height,
                    self.width,
                    self.K,
                    with_normals,
                )
                for k, val in r.items():
                    out.setdefault(k, []).append(val)
        return {k: torch.stack(v).reshape(len(views), self.num_frames, *v[0].shape) for k, v in out.items()}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def fit(
    data: FitInput,
    cfg: Fit4DConfig,
    refiner: Refiner | None = None,
    device: torch.device | str | None = None,
    on_stage: Callable[[str, Fitter], None] | None = None,
    normal_estimator: NormalEstimator | None = None,
) -> tuple[Fitter, dict]:
    """Both stages; returns the fitter (model, occupancy grid) and a report of losses and timings.
    `normal_estimator` overrides `fit4d.loss.normal_estimator` for the stage-2 normal targets."""
    fitter = Fitter(data, cfg, device, normal_estimator)
    report: dict = {"key": data.key, "device": str(fitter.device), "stages": {}}
    s1 = fitter.run_stage("stage1", cfg.stage1_iters, cfg.static_iters)
    report["stages"]["stage1"] = {"seconds": s1.seconds, "iterations": s1.iterations, "losses": s1.losses}
    if on_stage is not None:
        on_stage("stage1", fitter)
    if cfg.stage2_iters > 0:
        refine_s = fitter.refine_targets(refiner)
        s2 = fitter.run_stage("stage2", cfg.stage2_iters)
        report["stages"]["stage2"] = {
            "seconds": s2.seconds,
            "iterations": s2.iterations,
            "refine_seconds": refine_s,
            "refiner": "none" if refiner is None else getattr(refiner, "__name__", type(refiner).__name__),
            "losses": s2.losses,
        }
        if on_stage is not None:
            on_stage("stage2", fitter)
    est = fitter.normal_estimator
    stage2 = "stage-1 NeRF normals" if est is None else f"{describe(est)} on the stage-2 targets"
    report["normal_source"] = f"{stage2} (stage 2); current NeRF (stage 1)"
    return fitter, report
