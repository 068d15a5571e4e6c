"""Regional compilation of the SV4D 2.0 UNet: ``torch.compile`` per block instead of per network.

Compiling the whole UNet traces one huge graph (it did not finish in 9 minutes on the H100 box). Here each
repeated region is compiled on its own:

- every :class:`~model.blocks.ResBlock` (its ``forward``: spatial ResBlock, temporal ResBlock, blend);
- each step of every :class:`~model.blocks.SpatioTemporalTransformer` (``_spatial_step``, ``_camera_step``,
  ``_frame_step``: norm / projection, attention, GEGLU feed-forwards, the blend).

All instances of a class share one code object, and Dynamo treats module parameters as graph inputs
(``inline_inbuilt_nn_modules``), so Inductor compiles one graph per distinct (block type, input shape) and
reuses it for every instance of that shape; the recompile limit is raised so that the ~14 ResBlock shapes of
the full-size network all get compiled graphs instead of falling back to eager after the default 8.

Activation checkpointing composes unchanged: the network calls ``checkpoint(compiled_region, ...)``
(non-reentrant), which runs the compiled forward, drops what it saved, and in backward calls the same compiled
forward again (a cache hit) before the compiled backward. Selective checkpointing (the network's
``checkpoint_policy`` "selective" / "attention") instead goes through each region's ``selective_checkpoint``:
a second compiled graph per shape with the checkpoint inside it, so the AOT partitioner keeps the policy's
op outputs and recomputes the rest within the compiled backward. The glue between regions (skip
concatenations, down/upsampling convolutions, embeddings, ``proj_out``) stays eager.

Opt-in only (``compile_blocks(net)``); nothing in the network depends on it, and the state dict is unchanged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import ResBlock, SpatioTemporalTransformer, checkpoint_context, run_checkpointed

log = logging.getLogger(__name__)

TRANSFORMER_STEPS = ("_spatial_step", "_camera_step", "_frame_step")
_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def raise_recompile_limit(limit: int = 64) -> None:
    """Allow ``limit`` compiled graphs per code object (default 8; renamed across torch versions)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), limit))
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(int(getattr(cfg, name)), 4 * limit))


def _tokens_per_image(x: torch.Tensor) -> int:
    """H*W of an image tensor (N, C, H, W) or L of a token tensor (N, L, C)."""
    return x.shape[1] if x.ndim == 3 else x.shape[-2] * x.shape[-1]


def _checkpointed_method(module: nn.Module, name: str, policy: str, *args: Any) -> Any:
    """``module.name(*args)`` under selective activation checkpointing; compiled as a whole, so Dynamo
    traces the checkpoint as a higher-order op and the AOT partitioner saves the policy's ops' outputs and
    recomputes the rest inside the compiled backward (module passed as an argument: one graph per shape,
    shared by all instances, as for the plain regions)."""
    return checkpoint(
        getattr(type(module), name),
        module,
        *args,
        use_reentrant=False,
        context_fn=checkpoint_context(policy),
    )


def _region(
    name: str,
    eager: Callable,
    compiled: Callable,
    arg: int,
    min_tokens: int,
    compiled_selective: Callable | None = None,
) -> Callable:
    """Call ``compiled`` when the region's main tensor (positional ``arg``) has at least ``min_tokens``
    tokens per image, else ``eager``. Logs (INFO) the first call of every new compiled shape/stride, which is
    when Dynamo/Inductor compile, so a long compile can be followed in the log."""
    seen: set = set()

    def call(*args: Any, **kwargs: Any) -> Any:
        x = args[arg]
        if _tokens_per_image(x) < min_tokens:
            return eager(*args, **kwargs)
        key = (tuple(x.shape), x.stride(), torch.is_grad_enabled())
        if key not in seen:
            seen.add(key)
            log.info("region %s: first call with %s stride %s grad %s", name, *key)
        return compiled(*args, **kwargs)

    def selective(policy: str, *args: Any) -> Any:
        x = args[arg]
        if compiled_selective is None or _tokens_per_image(x) < min_tokens:
            return run_checkpointed(eager, *args, policy=policy)
        key = (policy, tuple(x.shape), x.stride())
        if key not in seen:
            seen.add(key)
            log.info("region %s: first %s-checkpoint call with %s stride %s", name, *key)
        return compiled_selective(policy, *args)

    call.__wrapped__ = eager  # type: ignore[attr-defined]
    call.selective_checkpoint = selective  # type: ignore[attr-defined]  # used by blocks.run_checkpointed
    return call


def compile_blocks(
    model: nn.Module,
    mode: str | None = None,
    dynamic: bool | None = False,
    fullgraph: bool = False,
    min_tokens: int = 0,
    recompile_limit: int = 64,
    backend: str = "inductor",
    **options: Any,
) -> int:
    """Compile every ResBlock's forward and every transformer step of ``model`` in place.

    model: an :class:`~model.unet.SV4D2UNet` (or any module holding ResBlocks / SpatioTemporalTransformers).
    mode, fullgraph, options: passed to ``torch.compile``; dynamic=False (default) specialises every graph
    to its shapes, which is what keeps Inductor's kernels fast and the graph count small for a fixed batch.
    min_tokens: regions whose input has fewer tokens per image (H*W) stay eager: at the coarsest UNet level
    (9x9 latents in the full-size network) the elementwise work is negligible, so compiling it only costs
    compile time (one graph per distinct shape).
    backend: torch.compile backend (tests use "aot_eager": same graphs and autograd split, no Inductor).
    Returns the number of regions wrapped (not graphs: those are made lazily, one per distinct shape).
    Idempotent: regions already wrapped are left alone.
    """
    if mode is not None and mode not in _MODES:
        raise ValueError(f"unknown torch.compile mode {mode!r}; known: {_MODES}")
    if min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    raise_recompile_limit(recompile_limit)
    kw: dict[str, Any] = {"dynamic": dynamic, "fullgraph": fullgraph, "backend": backend}
    if mode is not None:
        kw["mode"] = mode
    if options:
        kw["options"] = options
    n = 0
    for m in model.modules():
        if isinstance(m, ResBlock):
            names, arg = ("forward",), 0  # forward(x, ctx)
        elif isinstance(m, SpatioTemporalTransformer):
            names, arg = TRANSFORMER_STEPS, 1  # step(i, h, ...)
        else:
            continue
        for name in names:
            if name in m.__dict__:  # already an instance-level (compiled) override
                continue
            eager = getattr(m, name)
            label = f"{type(m).__name__}.{name}"
            # An instance attribute shadows the class method: nn.Module.__call__ and the transformer's
            # ``self._ckpt(self._spatial_step, ...)`` pick the compiled callable up without code changes.
            sac = torch.compile(functools.partial(_checkpointed_method, m, name), **kw)
            m.__dict__[name] = _region(label, eager, torch.compile(eager, **kw), arg, min_tokens, sac)
            n += 1
    log.info(
        "compile_blocks: %d regions wrapped (mode=%s, dynamic=%s, min_tokens=%d)",
        n,
        mode,
        dynamic,
        min_tokens,
    )
    return n


def uncompile_blocks(model: nn.Module) -> int:
    """Undo :func:`compile_blocks` (drop the instance-level compiled callables). Returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, ResBlock | SpatioTemporalTransformer):
            for name in ("forward", *TRANSFORMER_STEPS):
                if name in m.__dict__:
                    del m.__dict__[name]
                    n += 1
    return n
