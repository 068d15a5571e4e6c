"""EDM trainer of SV4D 2.0 with progressive 3D-to-4D stages.

    python -m model.train --profile demo                      # every stage of train.stages, in order
    python -m model.train --profile demo --stage 3d           # one stage
    python -m model.train --profile demo --stage 4d --init-from outputs/demo/checkpoints/3d/step_0000010
    python -m model.train --profile demo --stage 4d --resume  # continue from the stage's latest checkpoint
    torchrun --nproc_per_node 8 -m model.train --profile sv4d2 --stage 3d

Stage `3d` bypasses the frame attention (alpha_f = 0 through `SV4D2UNet.set_frame_attention(False)`) and
freezes its parameters; stage `4d` enables and trains them, starting from the 3d stage's checkpoint.
Everything else (optimizer, EDM, data) is shared. This module is the stage loop and its set-up; the step
is model/train_step.py, the training state and its checkpoints model/train_state.py (layout in
model/checkpoint.py), logging model/train_log.py. See model/edm.py for the EDM math, model/data.py for the
examples and their determinism.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.checkpoint import (
    CheckpointError,
    claim_stage_dir,
    is_official_file,
    latest_checkpoint,
    load_train_state,
    load_weights,
    resolve_checkpoint,
)
from model.config import UNetConfig, get_config, save_config
from model.convert import resolve_camera_attention
from model.data import DataError, SkipRecord, expand_urls, make_loader
from model.distributed import DistInfo, init_distributed
from model.dtypes import torch_dtype
from model.ema import EMA
from model.train_log import TrainLogger
from model.train_state import StageCheckpointer, TrainState, restore_state
from model.train_step import StepResult, train_step
from model.unet import SV4D2UNet, build_unet
from profiles.loader import to_dict

log = logging.getLogger("model.train")


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


def autocast_dtype_for(mcfg: Any, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``model.dtype`` (None: float32, or the CPU without ``model.cpu_autocast``)."""
    if mcfg.dtype == "float32" or (device.type == "cpu" and not mcfg.cpu_autocast):
        return None
    return torch_dtype(mcfg.dtype)


def lr_lambda(warmup_steps: int):
    def f(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return f


def build_network(mcfg: Any, seed: int, stage: str, device: torch.device) -> tuple[UNetConfig, SV4D2UNet]:
    """The stage's network, identically initialized on every rank (seeded), configured for ``stage``."""
    unet_cfg = get_config(mcfg.unet).replace(
        gradient_checkpointing=mcfg.activation_checkpointing,
        camera_attention=resolve_camera_attention(mcfg.camera_attention, mcfg.init_checkpoint),
    )
    torch.manual_seed(seed)
    net = build_unet(unet_cfg).to(device)
    net.checkpoint_policy = mcfg.checkpoint_policy  # before any compile: regions are built per policy
    configure_stage(net, stage)
    return unet_cfg, net


def init_stage_weights(
    net: SV4D2UNet, cfg: Any, stage: Any, ckpt_root: Path, init_from: str | None, resume_ckpt: Path | None
) -> str | None:
    """Load the stage's starting weights; returns where they came from (None: the random init).

    Order: the checkpoint being resumed; else ``init_from`` or the stage's ``init_from``; else the previous
    stage's latest checkpoint; else (first stage) ``model.init_checkpoint``."""
    if resume_ckpt is not None:
        load_init_weights(net, resume_ckpt, "model")
        return f"resume:{resume_ckpt}"
    tcfg = cfg.train
    init, which = init_from or stage.init_from, stage.init_weights
    if not init:
        idx = [s.name for s in tcfg.stages].index(stage.name)
        if idx > 0:
            init = tcfg.stages[idx - 1].name
            if latest_checkpoint(ckpt_root / init) is None:
                raise FileNotFoundError(
                    f"stage {stage.name} starts from stage {init}, which has no checkpoint under "
                    f"{ckpt_root / init}: run --stage {init} first or pass --init-from"
                )
        elif cfg.model.init_checkpoint:
            init, which = cfg.model.init_checkpoint, "model"
    if not init:
        return None
    init_path = resolve_checkpoint(init, ckpt_root)
    load_init_weights(net, init_path, which)
    return str(init_path)


def wrap_for_training(
    net: SV4D2UNet, tcfg: Any, di: DistInfo
) -> tuple[nn.Module, nn.parallel.DistributedDataParallel | None]:
    """(what the forward runs through, the DDP wrapper or None): regional or full compile on CUDA, DDP."""
    device = di.device
    if tcfg.compile == "regional" and device.type == "cuda":
        from model.compile import compile_blocks

        log.info("regional compile: %d blocks", compile_blocks(net, min_tokens=tcfg.compile_min_tokens))
    ddp = None
    model: nn.Module = net
    if di.distributed:
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
        model = ddp
    fwd = torch.compile(model) if (tcfg.compile == "full" and device.type == "cuda") else model
    return fwd, ddp


def stage_loader(cfg: Any, stage: Any, di: DistInfo, start_step: int) -> tuple[list[str], Any]:
    """(latent shard paths, the rank's infinite loader positioned at ``start_step``)."""
    tcfg = cfg.train
    urls = expand_urls(stage.data, cfg.out_dir) if stage.data else []
    if not urls:
        raise ValueError(f"stage {stage.name} has no data: set train.stages[].data to latent shards")
    # one record per run: a fresh stage starts it anew, a resume adds to it; rank 0 writes it
    record = skip_record_path(cfg, stage.name) if di.is_main else None
    skips = SkipRecord(record, reset=start_step == 0)
    loader = make_loader(
        urls,
        tcfg,
        stage,
        seed=tcfg.seed + 1000 * [s.name for s in tcfg.stages].index(stage.name),
        batch_size=tcfg.batch_size,
        rank=di.rank,
        world_size=di.world_size,
        start_micro_step=start_step * tcfg.grad_accum,
        mode=tcfg.data_mode,
        num_workers=tcfg.num_workers,
        shuffle_buffer=tcfg.shuffle_buffer,
        skips=skips,
    )
    return urls, loader


def skip_record_path(cfg: Any, stage: str) -> Path:
    """The run's list of the latent samples it left out (model.data.SkipRecord), beside its metrics."""
    return Path(cfg.out_dir) / "logs" / f"train_{stage}" / "skipped_samples.jsonl"


def guard_step(state: TrainState, result: StepResult, max_bad_steps: int) -> None:
    """NaN guard: count a skipped step; abort after ``max_bad_steps`` in a row."""
    if result.finite:
        state.bad_run = 0
        return
    state.bad_total += 1
    state.bad_run += 1
    log.warning(
        "step %d: non-finite loss %s or grad norm %s, step skipped (%d consecutive, %d total)",
        state.step,
        result.loss,
        result.grad_norm,
        state.bad_run,
        state.bad_total,
    )
    if state.bad_run >= max_bad_steps:
        raise RuntimeError(
            f"{state.bad_run} consecutive non-finite steps (train.max_bad_steps={max_bad_steps}), "
            f"aborting at step {state.step}"
        )


def run_stage(
    cfg: Any,
    stage_name: str,
    *,
    init_from: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    steps: int | None = None,
    dist_info: DistInfo | None = None,
) -> StageResult:
    """Train one stage of `cfg.train.stages` (a `profiles.schema.PipelineConfig`) and checkpoint it.

    init_from: checkpoint folder, safetensors file or stage name overriding the stage's init. resume: continue
    from the stage's latest checkpoint. overwrite: a fresh run may replace the checkpoints of an earlier run
    (without it, or resume, a stage folder holding checkpoints is refused). steps: override the stage's step
    count.
    """
    tcfg, stage = cfg.train, cfg.train.stage(stage_name)
    total_steps = stage.steps if steps is None else steps
    di = dist_info or init_distributed(tcfg.device)
    ckpt_root = Path(cfg.out_dir) / "checkpoints"
    if not resume:  # every rank refuses alike; rank 0 alone removes
        claim_stage_dir(ckpt_root / stage.name, overwrite, remove=di.is_main)
        if di.distributed:
            dist.barrier()
    unet_cfg, net = build_network(cfg.model, tcfg.seed, stage.name, di.device)
    resume_ckpt = latest_checkpoint(ckpt_root / stage.name) if resume else None
    if resume and resume_ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting the stage from its init", ckpt_root / stage.name)
    init_source = init_stage_weights(net, cfg, stage, ckpt_root, init_from, resume_ckpt)
    ema = EMA(net, tcfg.ema_decay)
    opt = torch.optim.AdamW(
        param_groups(net, tcfg.weight_decay), lr=stage.lr, betas=tuple(tcfg.betas), eps=tcfg.adam_eps
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tcfg.warmup_steps))
    state = TrainState()
    if resume_ckpt is not None:
        state = restore_state(resume_ckpt, stage.name, opt, sched, ema, di)
    fwd, ddp = wrap_for_training(net, tcfg, di)
    urls, loader = stage_loader(cfg, stage, di, state.step)
    checkpointer = StageCheckpointer(
        ckpt_root / stage.name, stage.name, cfg.name, di, net, ema, opt, sched,
        configs=stage_configs(cfg, unet_cfg), config_writer=lambda d: save_config(unet_cfg, d),
        keep=tcfg.keep_checkpoints,
    )  # fmt: skip
    logger = stage_logger(cfg, stage.name, di, total_steps, state.step)
    if di.is_main:
        log_stage_start(net, stage.name, total_steps, state.step, logger.examples_per_step, len(urls), di)
    autocast_dtype = autocast_dtype_for(cfg.model, di.device)
    losses: list[float] = []
    start_step, last_ckpt = state.step, None
    data_iter = iter(loader)
    net.train()
    while state.step < total_steps:
        batches = [next(data_iter) for _ in range(tcfg.grad_accum)]
        result = train_step(
            fwd, net, opt, ema, batches, di.device,
            autocast_dtype=autocast_dtype, grad_clip=tcfg.grad_clip, sched=sched, ddp=ddp,
        )  # fmt: skip
        guard_step(state, result, tcfg.max_bad_steps)
        state.step += 1
        losses.append(result.loss)
        logger.step(state.step, result, state.bad_total, ema.current_decay(), net)
        if state.step % tcfg.ckpt_every == 0 or state.step == total_steps:
            last_ckpt = checkpointer.save(state, data_position(tcfg, state.step, di, urls), result.loss)
    logger.close()
    if state.step == start_step and di.is_main:
        last_ckpt = latest_checkpoint(ckpt_root / stage.name)
    return StageResult(stage.name, start_step, state.step, losses, state.bad_total, last_ckpt, init_source)


def stage_configs(cfg: Any, unet_cfg: UNetConfig) -> dict[str, Any]:
    """The configs a checkpoint stores, as plain dicts."""
    return {
        "train_config": to_dict(cfg.train),
        "model_config": to_dict(cfg.model),
        "unet_config": unet_cfg.to_dict(),
    }


def data_position(tcfg: Any, step: int, di: DistInfo, urls: list[str]) -> dict[str, Any]:
    """Where the data stream stands after ``step`` steps (stored in the checkpoint)."""
    micro = step * tcfg.grad_accum
    return {
        "mode": tcfg.data_mode,
        "micro_step": micro,
        "examples_seen": micro * tcfg.batch_size * di.world_size,
        "urls": urls,
    }


def stage_logger(cfg: Any, stage: str, di: DistInfo, total_steps: int, start_step: int) -> TrainLogger:
    tcfg = cfg.train
    return TrainLogger(
        Path(cfg.out_dir) / "logs" / f"train_{stage}",
        enabled=di.is_main,
        progress=tcfg.progress,
        desc=f"train {stage}",
        total_steps=total_steps,
        start_step=start_step,
        log_every=tcfg.log_every,
        examples_per_step=tcfg.batch_size * tcfg.grad_accum * di.world_size,
        world_size=di.world_size,
    )


def log_stage_start(
    net: SV4D2UNet, stage: str, total: int, step: int, global_batch: int, shards: int, di: DistInfo
) -> None:
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    log.info(
        "stage %s: %d steps from %d, %d trainable / %d parameters (%d frame-attention tensors %s), "
        "global batch %d, %d shards, device %s",
        stage,
        total,
        step,
        trainable,
        sum(p.numel() for p in net.parameters()),
        len(net.frame_attention_parameter_names()),
        "frozen" if stage == "3d" else "trained",
        global_batch,
        shards,
        di.device,
    )


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
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start the stage(s) afresh, removing an earlier run's checkpoints (without it or --resume, a "
        "stage folder holding checkpoints is refused)",
    )
    p.add_argument("--steps", type=int, default=None, help="override the step count of the stage(s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    from profiles.load import profile_from_args
    from profiles.loader import ConfigError

    args = build_parser().parse_args(argv)
    try:
        cfg = profile_from_args(args)
    except ConfigError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
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
                overwrite=args.overwrite,
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
    except (ConfigError, DataError, CheckpointError, FileExistsError, FileNotFoundError) as exc:
        # the user's data, settings or folders: one line naming the thing to fix, no traceback
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
