"""One EDM training step of SV4D 2.0: the loss of a batch and the optimizer step over micro-batches.

The trainer (model/train.py) and the speed benchmark (benchmarks/train_step.py) both call :func:`train_step`,
so the benchmark measures exactly what training runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.edm import append_dims, denoise, drop_conditions, edm_loss, vscaling_edm
from model.ema import EMA


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


@dataclass(frozen=True)
class StepResult:
    loss: float
    """Mean loss over the micro-batches (and over the processes when distributed)."""
    grad_norm: float
    """Global gradient norm before clipping."""
    lr: float
    """Learning rate the step used."""

    @property
    def finite(self) -> bool:
        """False: the NaN guard skipped the update (weights, optimizer and EMA unchanged)."""
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def train_step(
    fwd: nn.Module,
    net: nn.Module,
    opt: torch.optim.Optimizer,
    ema: EMA,
    batches: Sequence[dict[str, Any]],
    device: torch.device,
    *,
    autocast_dtype: torch.dtype | None = None,
    grad_clip: float = 0.0,
    sched: torch.optim.lr_scheduler.LRScheduler | None = None,
    ddp: nn.parallel.DistributedDataParallel | None = None,
) -> StepResult:
    """One optimizer step over ``batches`` (gradient accumulation: each micro-batch's loss is divided by
    their number): backward, global-norm clipping (``grad_clip`` <= 0: none), AdamW, EMA update, LR schedule.

    ``fwd`` runs the forward (``net`` itself, its DDP wrapper or a compiled module); ``net`` owns the
    parameters and is the EMA's source. With ``ddp`` the gradients are all-reduced on the last micro-batch
    only (``no_sync`` before) and the reported loss is averaged over the processes. A non-finite loss or
    gradient norm skips the update (gradients dropped; the schedule still advances) and is reported through
    :attr:`StepResult.finite`.
    """
    n = len(batches)
    loss_sum = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        sync = ddp.no_sync() if ddp is not None and i < n - 1 else nullcontext()
        with sync:
            loss, _ = training_loss(fwd, batch, device, autocast_dtype)
            (loss / n).backward()
        loss_sum += loss.detach() / n
    if ddp is not None:
        dist.all_reduce(loss_sum)
        loss_sum /= dist.get_world_size()
    trainable = [p for p in net.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip if grad_clip > 0 else float("inf"))
    lr = sched.get_last_lr()[0] if sched is not None else opt.param_groups[0]["lr"]
    result = StepResult(float(loss_sum), float(grad_norm), lr)
    if result.finite:
        opt.step()
    opt.zero_grad(set_to_none=True)
    if result.finite:
        ema.update(net)
    if sched is not None:
        sched.step()
    return result
