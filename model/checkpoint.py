"""Training checkpoints: weights as safetensors, trainer state as a torch file, written atomically.

Layout of one checkpoint (``<out_dir>/checkpoints/<stage>/step_NNNNNNN/``)::

    model.safetensors   the network's parameters (float32), keys = SV4D2UNet.state_dict() keys
                        (= official keys without ``model.diffusion_model.``)
    ema.safetensors     the EMA shadow weights, same keys
    config.json         the UNetConfig (model.config.save_config)
    train_state.pt      optimizer, LR scheduler, step, EMA update count, NaN-guard counters, data position,
                        RNG states (python, numpy, torch CPU, torch CUDA), world size, configs as dicts
    meta.json           stage, step, profile, wall time, last loss (human-readable summary)

``<out_dir>/checkpoints/<stage>/latest`` holds the name of the newest complete checkpoint. A checkpoint is
written into ``step_NNNNNNN.partial`` and renamed when complete, so a folder under its final name is whole.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "train_state.pt"
META_FILE = "meta.json"
LATEST = "latest"


class CheckpointError(ValueError):
    """A checkpoint that must not or cannot be loaded (the message names its file)."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}


def save_checkpoint(
    stage_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    ema_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    meta: dict[str, Any],
    config_writer: Any = None,
    keep: int = 0,
) -> Path:
    """Write a checkpoint atomically and point `latest` at it; prune to the newest `keep` (0: keep all).

    `config_writer(directory)` writes config.json (model.config.save_config bound to the config).
    """
    from safetensors.torch import save_file

    stage_dir = Path(stage_dir)
    final = stage_dir / step_dir_name(step)
    tmp = stage_dir / (final.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_contiguous(model_state), str(tmp / MODEL_FILE))
    save_file(_contiguous(ema_state), str(tmp / EMA_FILE))
    torch.save(train_state, tmp / STATE_FILE)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    if config_writer is not None:
        config_writer(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = stage_dir / (LATEST + ".partial")
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, stage_dir / LATEST)
    if keep > 0:
        for old in list_checkpoints(stage_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return final


def list_checkpoints(stage_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a stage, oldest first."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    dirs = [p for p in stage_dir.iterdir() if p.is_dir() and p.name.startswith("step_") and "." not in p.name]
    return sorted(d for d in dirs if (d / STATE_FILE).is_file())


def claim_stage_dir(stage_dir: str | Path, overwrite: bool, remove: bool = True) -> None:
    """Before a fresh (not resumed) run of a stage: refuse a folder holding another run's checkpoints, or with
    ``overwrite`` remove them (only checkpoints and the `latest` pointer). Left in place they would outrank
    the new run's checkpoints: pruning would delete the new ones and `--resume` would pick the old run.
    ``remove=False``: check only (the ranks of a distributed run other than the one that removes)."""
    stage_dir = Path(stage_dir)
    old = list_checkpoints(stage_dir)
    if not old:
        return
    if not overwrite:
        raise FileExistsError(
            f"{stage_dir} holds checkpoints of another run (up to {old[-1].name}): pass --resume to continue "
            "it or --overwrite to replace it"
        )
    if not remove:
        return
    for path in [*old, *stage_dir.glob("step_*.partial")]:
        shutil.rmtree(path)
    (stage_dir / LATEST).unlink(missing_ok=True)
    log.warning("--overwrite: removed %d checkpoints of an earlier run from %s", len(old), stage_dir)


def latest_checkpoint(stage_dir: str | Path) -> Path | None:
    """The checkpoint named by `latest` (or the newest complete one), None if the stage has none."""
    stage_dir = Path(stage_dir)
    pointer = stage_dir / LATEST
    if pointer.is_file():
        cand = stage_dir / pointer.read_text().strip()
        if (cand / STATE_FILE).is_file():
            return cand
    ckpts = list_checkpoints(stage_dir)
    return ckpts[-1] if ckpts else None


def _numpy_globals() -> list[Any]:
    """What the numpy RNG state in train_state.pt pickles as (an array of uint32 and numpy scalars): the only
    classes besides torch's own and plain containers that the restricted unpickler may build."""
    import numpy as np

    multiarray = np.core.multiarray  # numpy 1.x path of the reconstructors (bpy pins numpy 1.26)
    names = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    names += [type(np.dtype(t)) for t in (np.uint32, np.float64, np.int64, np.float32, np.bool_)]
    return names


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def load_train_state(ckpt: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint, loaded with ``weights_only=True``: unpickling builds tensors,
    plain containers and the allow-listed numpy types only, so a crafted file cannot run code."""
    path = Path(ckpt) / STATE_FILE
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load, it holds more than tensors and plain data ({_first_line(exc)})"
        ) from exc
    except (RuntimeError, EOFError) as exc:  # not a torch file, or a damaged one
        raise CheckpointError(f"{path}: unreadable ({_first_line(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of trainer state, got {type(state).__name__}")
    return state


def is_official_file(path: str | Path) -> bool:
    """True for a .safetensors file in the official layout (keys ``model.diffusion_model.*``)."""
    path = Path(path)
    if not path.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return any(k.startswith("model.diffusion_model.") for k in f.keys())


def load_weights(path: str | Path, which: str = "model") -> dict[str, torch.Tensor]:
    """Network weights (our keys) from one of our checkpoint folders (`which`: model | ema) or from a
    .safetensors file of our keys. Official files go through `model.convert` (see `train.load_init_weights`).
    """
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        name = {"model": MODEL_FILE, "ema": EMA_FILE}.get(which)
        if name is None:
            raise ValueError(f"which must be model or ema, got {which!r}")
        if not (path / name).is_file():
            raise FileNotFoundError(f"no {name} in checkpoint {path}")
        return load_file(str(path / name))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if is_official_file(path):
        raise ValueError(f"{path} is an official checkpoint: convert it with model.convert")
    return load_file(str(path))


def resolve_checkpoint(spec: str, checkpoints_root: str | Path) -> Path:
    """`spec` is a checkpoint folder, a .safetensors file, or a stage name (its latest checkpoint)."""
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir() and not (p / MODEL_FILE).is_file():
            latest = latest_checkpoint(p)
            if latest is None:
                raise FileNotFoundError(f"{p} holds no checkpoint")
            return latest
        return p
    stage_dir = Path(checkpoints_root) / spec
    latest = latest_checkpoint(stage_dir)
    if latest is None:
        raise FileNotFoundError(
            f"init checkpoint {spec!r} is neither a path nor a stage with checkpoints "
            f"under {checkpoints_root}"
        )
    return latest
