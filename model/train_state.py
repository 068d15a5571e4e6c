"""The training state of one stage (step, NaN-guard counters, RNG streams) and its checkpoints.

A checkpoint (model/checkpoint.py has the layout) holds the weights, the EMA, the optimizer and scheduler,
this state, every rank's RNG state and where the data stream stands; :func:`restore_state` puts all of it
back so that a resumed stage continues bit for bit.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from model.checkpoint import load_train_state, load_weights, save_checkpoint
from model.distributed import DistInfo
from model.ema import EMA

log = logging.getLogger("model.train")


@dataclass
class TrainState:
    """What a stage carries from step to step besides the weights and the optimizer."""

    step: int = 0
    bad_total: int = 0
    """Steps skipped by the NaN guard, in all."""
    bad_run: int = 0
    """Steps skipped by the NaN guard in a row (the stage aborts at train.max_bad_steps)."""


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


def restore_state(
    ckpt: Path,
    stage: str,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    ema: EMA,
    di: DistInfo,
) -> TrainState:
    """Load the optimizer, scheduler, EMA and this rank's RNG state of ``ckpt``; returns its TrainState.

    The model weights are loaded by the caller (they also serve as a plain init)."""
    state = load_train_state(ckpt)
    if state["stage"] != stage:
        raise ValueError(f"checkpoint {ckpt} is of stage {state['stage']}, not {stage}")
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    ema.load(load_weights(ckpt, "ema"), state["ema_updates"])
    rng = state["rng"]
    if len(rng) == di.world_size:
        set_rng_state(rng[di.rank], di.device)
    if state["world_size"] != di.world_size:
        log.warning(
            "resuming on %d processes a run checkpointed on %d: the examples of each step are the same, "
            "the per-rank RNG streams are reseeded",
            di.world_size,
            state["world_size"],
        )
    log.info("resumed stage %s at step %d from %s", stage, state["step"], ckpt)
    return TrainState(state["step"], state["bad_steps_total"], state["bad_steps_consecutive"])


@dataclass
class StageCheckpointer:
    """Writes the checkpoints of one stage: every rank gathers its RNG state, rank 0 writes."""

    stage_dir: Path
    stage: str
    profile: str
    di: DistInfo
    net: torch.nn.Module
    ema: EMA
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    configs: dict[str, Any]
    """train_config, model_config, unet_config as plain dicts (stored in train_state.pt)."""
    config_writer: Any
    """config_writer(directory) writes config.json (model.config.save_config bound to the UNet config)."""
    keep: int = 0

    def save(self, state: TrainState, data: dict[str, Any], last_loss: float) -> Path | None:
        """Write the checkpoint of ``state.step`` (collective: every rank calls it); rank 0 gets the path."""
        rngs = [rng_state(self.di.device)]
        if self.di.distributed:
            rngs = [None] * self.di.world_size
            dist.all_gather_object(rngs, rng_state(self.di.device))
        path = None
        if self.di.is_main:
            train_state = {
                "stage": self.stage,
                "step": state.step,
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "ema_updates": self.ema.num_updates,
                "bad_steps_total": state.bad_total,
                "bad_steps_consecutive": state.bad_run,
                "data": data,
                "rng": rngs,
                "world_size": self.di.world_size,
                **self.configs,
            }
            meta = {
                "stage": self.stage,
                "step": state.step,
                "profile": self.profile,
                "loss": last_loss,
                "bad_steps_total": state.bad_total,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            path = save_checkpoint(
                self.stage_dir,
                state.step,
                self.net.state_dict(),
                self.ema.state_dict(),
                train_state,
                meta,
                config_writer=self.config_writer,
                keep=self.keep,
            )
        if self.di.distributed:
            dist.barrier()
        return path
