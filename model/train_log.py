"""What the trainer reports: TensorBoard scalars, the same numbers as JSON lines, and a progress bar.

``<out>/logs/train_<stage>/`` holds the TensorBoard events and ``metrics.jsonl`` (one line per logged step,
appended across resumes; easy to read from scripts such as benchmarks/train_scaling.py). Only rank 0 logs.
A run that starts at step s (a resume, or 0 for a fresh run) first drops what an earlier run logged after s:
the steps it replays from the checkpoint appear once, with the replayed values, in both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.train_step import StepResult
from shards.writer import atomic_write_bytes


def drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of a metrics.jsonl up to ``step`` (rewritten atomically; a torn last line goes too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_bytes(path, "".join(kept).encode())


class TrainLogger:
    """Logs every ``log_every`` steps (and the last one); a no-op where ``enabled`` is False (ranks > 0)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        enabled: bool,
        progress: bool,
        desc: str,
        total_steps: int,
        start_step: int,
        log_every: int,
        examples_per_step: int,
        world_size: int,
    ) -> None:
        self.enabled, self.total_steps, self.log_every = enabled, total_steps, log_every
        self.examples_per_step, self.world_size = examples_per_step, world_size
        # opened per write, so that no handle outlives an error
        self.metrics_path = log_dir / "metrics.jsonl"
        self.writer = None
        self.bar = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            drop_rows_after(self.metrics_path, start_step)
            # TensorBoard's own mechanism: readers discard the earlier events at steps >= purge_step
            self.writer = SummaryWriter(str(log_dir), purge_step=start_step + 1)
            if progress:
                from tqdm import tqdm

                self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True)
        self.t_last, self.last_logged = time.perf_counter(), start_step

    def step(self, step: int, result: StepResult, bad_total: int, ema_decay: float, net: Any) -> None:
        """After step number ``step`` (1-based count of steps done) with its result."""
        if self.writer is not None and (step % self.log_every == 0 or step == self.total_steps):
            self._write(step, result, bad_total, ema_decay, net)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{result.loss:.4f}", bad=bad_total)

    def _write(self, step: int, result: StepResult, bad_total: int, ema_decay: float, net: Any) -> None:
        now = time.perf_counter()
        w = self.writer
        w.add_scalar("train/loss", result.loss, step)
        w.add_scalar("train/grad_norm", result.grad_norm, step)
        w.add_scalar("train/lr", result.lr, step)
        w.add_scalar("train/bad_steps", bad_total, step)
        w.add_scalar("train/ema_decay", ema_decay, step)
        step_time = (now - self.t_last) / (step - self.last_logged)  # the last log may close a short interval
        w.add_scalar("perf/step_time_s", step_time, step)
        row = {
            "step": step,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "lr": result.lr,
            "bad_steps": bad_total,
            "step_time_s": step_time,
            "examples_per_s": self.examples_per_step / step_time,
            "world_size": self.world_size,
        }
        device = next(net.parameters()).device
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        alphas = net.mix_alphas()
        if alphas:
            w.add_scalar("mix/alpha_f_mean", float(np.mean([a[1] for a in alphas.values()])), step)
            w.add_scalar("mix/alpha_3d_mean", float(np.mean([a[0] for a in alphas.values()])), step)
        self.t_last, self.last_logged = now, step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
