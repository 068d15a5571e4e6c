"""EDM trainer of SV4D 2.0 with progressive 3D-to-4D stages.

    python -m model.train --profile demo                      # every stage of train.stages, in order
    python -m model.train --profile demo --stage 3d           # one stage
    python -m model.train --profile demo --stage 4d --init-from outputs/demo/checkpoints/3d/step_0000010
    python -m model.train --profile demo --stage 4d --resume  # continue from the stage's latest checkpoint
    torchrun --nproc_per_node 8 -m model.train --profile sv4d2 --stage 3d

Stage `3d` bypasses the frame attention (alpha_f = 0 through `SV4D2UNet.set_frame_attention(False)`) and
freezes its parameters; stage `4d` enables and trains them, starting from the 3d stage's checkpoint.
Everything else (optimizer, EDM, data) is shared. See model/edm.py for the EDM math, model/data.py for
the examples and their determinism, model/checkpoint.py for the checkpoint layout.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from model.checkpoint import (
    is_official_file,
    latest_checkpoint,
    load_train_state,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from model.config import get_config, save_config
from model.convert import resolve_camera_attention
from model.data import expand_urls, make_loader, spec_from_config
from model.edm import append_dims, denoise, drop_conditions, edm_loss, vscaling_edm
from model.ema import EMA
from model.unet import SV4D2UNet, build_unet

log = logging.getLogger("model.train")


# ---------------------------------------------------------------------------------------------------------
# The loss of one batch


def training_loss(
    net: nn.Module,
    batch: dict[str, Any],
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and per-sample EDM loss of a collated batch (model/data.py) through `net` (SV4D2UNet or DDP).

    Noisy input x = x0 + sigma * n; the network sees c_in * x and c_noise; the conditioning latents are
    noise-augmented with cond_aug (which also feeds the 256-d sigma embedding). Condition dropout zeroes the
    conditioning latents, the CLIP embeddings, the reference views and the sigma embedding of a sample
    jointly (`model.edm.drop_conditions`, the release's unconditional branch); reference masking zeroes only
    the reference views.
    """
    x0 = batch["latents"].to(device, torch.float32)
    sigma = batch["sigma"].to(device, torch.float32)
    noise = batch["noise"].to(device, torch.float32)
    x_noisy = x0 + append_dims(sigma, x0.ndim) * noise
    _, _, c_in, c_noise = vscaling_edm(sigma)
    keep = (~batch["drop_cond"].to(device)).float()
    cond_aug = batch["cond_aug"].to(device, torch.float32)
    cond = batch["cond_latents"].to(device, torch.float32)
    cond = cond + append_dims(cond_aug, cond.ndim) * batch["cond_noise"].to(device)
    ref_keep = (~batch["ref_drop"].to(device)).float()
    conds = drop_conditions(keep, cond, batch["clip"].to(device, torch.float32), ref_keep)
    ctx = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    with ctx:
        out = net(
            append_dims(c_in, x_noisy.ndim) * x_noisy,
            c_noise,
            polar_rad=batch["polar"].to(device),
            azimuth_rad=batch["azimuth"].to(device),
            cond_sigma=cond_aug,
            ref_latents=batch["ref_latents"].to(device, torch.float32),
            **conds,
        )
    per_sample = edm_loss(denoise(out.float(), x_noisy, sigma), x0, sigma)
    return per_sample.mean(), per_sample


# ---------------------------------------------------------------------------------------------------------
# Distributed setup


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Read torchrun's env:// variables; init NCCL (GPU) or gloo (CPU) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_pref == "cuda" or (device_pref == "auto" and torch.cuda.is_available())
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://")
    return DistInfo(rank, world, local_rank, device)


# ---------------------------------------------------------------------------------------------------------
# RNG state (exact resume)


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------------------
# Stage setup


def configure_stage(net: SV4D2UNet, stage: str) -> list[str]:
    """Stage 3d: frame attention bypassed (alpha_f = 0) and its parameters frozen; 4d: enabled and trained.

    Returns the names of the frame-attention parameters."""
    if stage not in ("3d", "4d"):
        raise ValueError(f"stage {stage!r} is not one of 3d, 4d")
    enabled = stage == "4d"
    net.set_frame_attention(enabled)
    for p in net.parameters():
        p.requires_grad_(True)
    for p in net.frame_attention_parameters():
        p.requires_grad_(enabled)
    return net.frame_attention_parameter_names()


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters; no weight decay on biases, norms and the scalar mix factors (ndim < 2)."""
    decay = [p for p in net.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.ndim < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def load_init_weights(net: SV4D2UNet, path: Path, which: str) -> None:
    """Initialize `net` from one of our checkpoints, a safetensors file of our keys, or an official sv4d2 /
    sv3d_p file (converted by `model.convert`; sv3d_p's missing frame layers start as identity with
    alpha_f near zero, so the network initially equals the 3D model)."""
    if is_official_file(path):
        from safetensors.torch import load_file

        from model import convert

        reports: list[Any] = []
        sd = convert.convert_state_dict(load_file(str(path)), config=net.config, report=reports)
        rep = convert.apply_to_model(net, sd, source=reports[0].source)
        log.info(
            "initialized from official %s checkpoint %s: %d loaded, %d reshaped, %d new",
            rep.source,
            path,
            rep.loaded,
            len(reports[0].reshaped),
            len(rep.initialized_new),
        )
        return
    sd = load_weights(path, which)
    own = net.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if unexpected or bad_shape or missing:
        raise ValueError(
            f"init weights {path} do not fit the network: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), shape mismatches {bad_shape[:3]}"
        )
    net.load_state_dict(sd)
    log.info("initialized from %s (%s weights)", path, which)


# ---------------------------------------------------------------------------------------------------------
# One stage


@dataclass
class StageResult:
    stage: str
    start_step: int
    final_step: int
    losses: list[float]
    bad_steps: int
    checkpoint: Path | None
    init_source: str | None = None
    """Where the stage's weights came from: a checkpoint/file path, `resume:<path>`, or None (random)."""


def _autocast_dtype(model_cfg: Any, device: torch.device) -> torch.dtype | None:
    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": None}[model_cfg.dtype]
    if device.type == "cpu" and not model_cfg.cpu_autocast:
        return None
    return dt


def lr_lambda(warmup_steps: int):
    def f(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return f


def run_stage(
    cfg: Any,
    stage_name: str,
    *,
    init_from: str | None = None,
    resume: bool = False,
    steps: int | None = None,
    nan_steps: Iterable[int] = (),
    dist_info: DistInfo | None = None,
) -> StageResult:
    """Train one stage of `cfg.train.stages` (a `profiles.schema.PipelineConfig`) and checkpoint it.

    init_from: checkpoint folder, safetensors file or stage name overriding the stage's init. resume: continue
    from the stage's latest checkpoint. steps: override the stage's step count. nan_steps: steps whose loss
    is replaced by NaN (tests of the NaN guard).
    """
    tcfg, mcfg = cfg.train, cfg.model
    stage = tcfg.stage(stage_name)
    total_steps = stage.steps if steps is None else steps
    di = dist_info or init_distributed(tcfg.device)
    device = di.device
    out_dir = Path(cfg.out_dir)
    ckpt_root = out_dir / "checkpoints"
    stage_dir = ckpt_root / stage.name
    nan_steps = set(nan_steps)

    # Model: identical init on every rank (seeded), then the stage's init weights.
    unet_cfg = get_config(mcfg.unet).replace(
        gradient_checkpointing=mcfg.activation_checkpointing,
        camera_attention=resolve_camera_attention(mcfg.camera_attention, mcfg.init_checkpoint),
    )
    torch.manual_seed(tcfg.seed)
    net = build_unet(unet_cfg).to(device)
    net.checkpoint_policy = mcfg.checkpoint_policy  # before any compile: regions are built per policy
    frame_names = configure_stage(net, stage.name)

    init_source: str | None = None
    resume_ckpt = latest_checkpoint(stage_dir) if resume else None
    if resume and resume_ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting the stage from its init", stage_dir)
    if resume_ckpt is None:
        init = init_from or stage.init_from
        which = stage.init_weights
        if not init:
            idx = [s.name for s in tcfg.stages].index(stage.name)
            if idx > 0:
                init = tcfg.stages[idx - 1].name
                if latest_checkpoint(ckpt_root / init) is None:
                    raise FileNotFoundError(
                        f"stage {stage.name} starts from stage {init}, which has no checkpoint under "
                        f"{ckpt_root / init}: run --stage {init} first or pass --init-from"
                    )
            elif mcfg.init_checkpoint:
                init, which = mcfg.init_checkpoint, "model"
        if init:
            init_path = resolve_checkpoint(init, ckpt_root)
            load_init_weights(net, init_path, which)
            init_source = str(init_path)
    else:
        load_init_weights(net, resume_ckpt, "model")
        init_source = f"resume:{resume_ckpt}"

    ema = EMA(net, tcfg.ema_decay)
    opt = torch.optim.AdamW(
        param_groups(net, tcfg.weight_decay), lr=stage.lr, betas=tuple(tcfg.betas), eps=tcfg.adam_eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps))
    step, bad_total, bad_run = 0, 0, 0
    if resume_ckpt is not None:
        state = load_train_state(resume_ckpt)
        if state["stage"] != stage.name:
            raise ValueError(f"checkpoint {resume_ckpt} is of stage {state['stage']}, not {stage.name}")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        ema.load(load_weights(resume_ckpt, "ema"), state["ema_updates"])
        step, bad_total, bad_run = state["step"], state["bad_steps_total"], state["bad_steps_consecutive"]
        rng = state["rng"]
        if len(rng) == di.world_size:
            set_rng_state(rng[di.rank], device)
        if state["world_size"] != di.world_size:
            log.warning(
                "resuming on %d processes a run checkpointed on %d: the examples of each step are the same, "
                "the per-rank RNG streams are reseeded",
                di.world_size,
                state["world_size"],
            )
        log.info("resumed stage %s at step %d from %s", stage.name, step, resume_ckpt)

    if tcfg.compile == "regional" and device.type == "cuda":
        from model.compile import compile_blocks

        log.info("regional compile: %d blocks", compile_blocks(net, min_tokens=tcfg.compile_min_tokens))
    model: nn.Module = net
    if di.distributed:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    fwd = torch.compile(model) if (tcfg.compile == "full" and device.type == "cuda") else model

    spec = spec_from_config(tcfg, stage)
    urls = expand_urls(stage.data, out_dir) if stage.data else []
    if not urls:
        raise ValueError(f"stage {stage.name} has no data: set train.stages[].data to latent shards")
    loader = make_loader(
        urls,
        spec,
        seed=tcfg.seed + 1000 * [s.name for s in tcfg.stages].index(stage.name),
        batch_size=tcfg.batch_size,
        rank=di.rank,
        world_size=di.world_size,
        start_micro_step=step * tcfg.grad_accum,
        mode=tcfg.data_mode,
        num_workers=tcfg.num_workers,
        shuffle_buffer=tcfg.shuffle_buffer,
    )
    autocast_dtype = _autocast_dtype(mcfg, device)
    trainable = [p for p in net.parameters() if p.requires_grad]
    writer = None
    # The same numbers as one JSON line per logged step (appended across resumes): easy to read from
    # scripts such as benchmarks/train_scaling.py. Opened per write, so no handle outlives an error.
    metrics_path = out_dir / "logs" / f"train_{stage.name}" / "metrics.jsonl"
    if di.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "logs" / f"train_{stage.name}"))
        log.info(
            "stage %s: %d steps from %d, %d trainable / %d parameters (%d frame-attention tensors %s), "
            "global batch %d, %d shards, device %s",
            stage.name,
            total_steps,
            step,
            sum(p.numel() for p in trainable),
            sum(p.numel() for p in net.parameters()),
            len(frame_names),
            "frozen" if stage.name == "3d" else "trained",
            tcfg.batch_size * tcfg.grad_accum * di.world_size,
            len(urls),
            device,
        )
    progress = None
    if di.is_main and tcfg.progress:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=f"train {stage.name}", dynamic_ncols=True)

    def checkpoint(last_loss: float) -> Path | None:
        rngs = [rng_state(device)]
        if di.distributed:
            rngs = [None] * di.world_size
            dist.all_gather_object(rngs, rng_state(device))
        path = None
        if di.is_main:
            from profiles.loader import to_dict

            state = {
                "stage": stage.name,
                "step": step,
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "ema_updates": ema.num_updates,
                "bad_steps_total": bad_total,
                "bad_steps_consecutive": bad_run,
                "data": {
                    "mode": tcfg.data_mode,
                    "micro_step": step * tcfg.grad_accum,
                    "examples_seen": step * tcfg.grad_accum * tcfg.batch_size * di.world_size,
                    "urls": urls,
                },
                "rng": rngs,
                "world_size": di.world_size,
                "train_config": to_dict(tcfg),
                "model_config": to_dict(mcfg),
                "unet_config": unet_cfg.to_dict(),
            }
            meta = {
                "stage": stage.name,
                "step": step,
                "profile": cfg.name,
                "loss": last_loss,
                "bad_steps_total": bad_total,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            path = save_checkpoint(
                stage_dir,
                step,
                net.state_dict(),
                ema.state_dict(),
                state,
                meta,
                config_writer=lambda d: save_config(unet_cfg, d),
                keep=tcfg.keep_checkpoints,
            )
        if di.distributed:
            dist.barrier()
        return path

    losses: list[float] = []
    start_step = step
    last_ckpt: Path | None = None
    data_iter = iter(loader)
    net.train()
    t_last, last_logged = time.perf_counter(), step
    while step < total_steps:
        loss_sum = torch.zeros((), device=device)
        for micro in range(tcfg.grad_accum):
            batch = next(data_iter)
            sync = nullcontext()
            if di.distributed and micro < tcfg.grad_accum - 1:
                sync = model.no_sync()  # type: ignore[operator]
            with sync:
                loss, _ = training_loss(fwd, batch, device, autocast_dtype)
                if step in nan_steps and micro == 0:
                    loss = loss * float("nan")
                (loss / tcfg.grad_accum).backward()
            loss_sum += loss.detach() / tcfg.grad_accum
        if di.distributed:
            dist.all_reduce(loss_sum)
            loss_sum /= di.world_size
        max_norm = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        loss_val, norm_val = float(loss_sum), float(grad_norm)
        lr_now = sched.get_last_lr()[0]
        if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
            opt.zero_grad(set_to_none=True)
            bad_total += 1
            bad_run += 1
            log.warning(
                "step %d: non-finite loss %s or grad norm %s, step skipped (%d consecutive, %d total)",
                step,
                loss_val,
                norm_val,
                bad_run,
                bad_total,
            )
            if bad_run >= tcfg.max_bad_steps:
                raise RuntimeError(
                    f"{bad_run} consecutive non-finite steps (train.max_bad_steps={tcfg.max_bad_steps}), "
                    f"aborting at step {step}"
                )
        else:
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(net)
            bad_run = 0
        sched.step()
        step += 1
        losses.append(loss_val)
        if writer is not None and (step % tcfg.log_every == 0 or step == total_steps):
            now = time.perf_counter()
            writer.add_scalar("train/loss", loss_val, step)
            writer.add_scalar("train/grad_norm", norm_val, step)
            writer.add_scalar("train/lr", lr_now, step)
            writer.add_scalar("train/bad_steps", bad_total, step)
            writer.add_scalar("train/ema_decay", ema.current_decay(), step)
            step_time = (now - t_last) / (step - last_logged)  # the last log may close a short interval
            writer.add_scalar("perf/step_time_s", step_time, step)
            row = {
                "step": step,
                "loss": loss_val,
                "grad_norm": norm_val,
                "lr": lr_now,
                "bad_steps": bad_total,
                "step_time_s": step_time,
                "examples_per_s": tcfg.batch_size * tcfg.grad_accum * di.world_size / step_time,
                "world_size": di.world_size,
            }
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            alphas = net.mix_alphas()
            if alphas:
                writer.add_scalar("mix/alpha_f_mean", float(np.mean([a[1] for a in alphas.values()])), step)
                writer.add_scalar("mix/alpha_3d_mean", float(np.mean([a[0] for a in alphas.values()])), step)
            t_last, last_logged = now, step
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_val:.4f}", bad=bad_total)
        if step % tcfg.ckpt_every == 0 or step == total_steps:
            last_ckpt = checkpoint(loss_val)
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()
    if step == start_step and di.is_main:
        last_ckpt = latest_checkpoint(stage_dir)
    return StageResult(stage.name, start_step, step, losses, bad_total, last_ckpt, init_source)


# ---------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from profiles.load import add_profile_args

    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description=(
            "Train the SV4D 2.0 UNet with EDM on latent shards, progressively: stage 3d (static data, frame "
            "attention bypassed and frozen), then stage 4d (frame attention trained, initialized from the 3d "
            "checkpoint). Settings come from the profile's `model:` and `train:` sections. Checkpoints go to "
            "<out_dir>/checkpoints/<stage>/step_NNNNNNN/, TensorBoard logs to <out_dir>/logs/. Multi-GPU: "
            "launch with torchrun."
        ),
    )
    add_profile_args(p)
    p.add_argument(
        "--stage",
        choices=["3d", "4d"],
        default=None,
        help="run only this stage of train.stages (default: every stage in order)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        help="checkpoint folder, .safetensors (ours or official sv4d2/sv3d_p) or stage name to start from "
        "(overrides the stage's init_from; ignored when --resume finds a checkpoint)",
    )
    p.add_argument("--resume", action="store_true", help="continue each stage from its latest checkpoint")
    p.add_argument("--steps", type=int, default=None, help="override the step count of the stage(s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    from profiles.load import profile_from_args

    args = build_parser().parse_args(argv)
    cfg = profile_from_args(args)
    di = init_distributed(cfg.train.device)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.INFO if di.is_main else logging.WARNING),
        format=f"%(asctime)s [rank {di.rank}] %(name)s %(levelname)s: %(message)s",
    )
    names = [args.stage] if args.stage else [s.name for s in cfg.train.stages]
    try:
        for name in names:
            stage = cfg.train.stage(name)
            total = stage.steps if args.steps is None else args.steps
            if args.resume:
                ck = latest_checkpoint(Path(cfg.out_dir) / "checkpoints" / name)
                if ck is not None and load_train_state(ck)["step"] >= total:
                    log.info("stage %s already complete (%s)", name, ck)
                    continue
            res = run_stage(
                cfg,
                name,
                init_from=args.init_from if (args.stage or name == names[0]) else None,
                resume=args.resume,
                steps=args.steps,
                dist_info=di,
            )
            if di.is_main:
                tail = ", ".join(f"{v:.4f}" for v in res.losses[-3:])
                log.info(
                    "stage %s: steps %d -> %d, last losses [%s], %d bad steps, checkpoint %s",
                    name,
                    res.start_step,
                    res.final_step,
                    tail,
                    res.bad_steps,
                    res.checkpoint,
                )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
