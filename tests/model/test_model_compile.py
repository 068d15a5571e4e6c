"""Regional compilation (model/compile.py) on the tiny config, CPU: same function, checkpointing composes.

Uses the ``aot_eager`` backend (Dynamo capture plus the AOT autograd forward/backward split, the part that
interacts with activation checkpointing, without Inductor's slow CPU code generation); the Inductor path was
checked the same way by hand (relative error 6e-7 in the output, 1.5e-7 in the gradients).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from model.blocks import ResBlock, SpatioTemporalTransformer
from model.compile import TRANSFORMER_STEPS, compile_blocks, uncompile_blocks
from tests.model.test_model_network import inputs, random_model


def loss_and_grads(model, kw, checkpointing: bool):
    model.gradient_checkpointing = checkpointing
    model.zero_grad(set_to_none=True)
    out = model(**kw)
    (out**2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def eager_and_compiled(**cfg_changes) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """A fresh Dynamo state, a random tiny network in train mode, and a copy of it with ``compile_blocks``
    (``aot_eager``) applied; returns (eager, compiled copy, regions wrapped)."""
    torch._dynamo.reset()
    counters.clear()
    ref = random_model(**cfg_changes).train()
    net = copy.deepcopy(ref)
    return ref, net, compile_blocks(net, backend="aot_eager")


@pytest.mark.slow
def test_regional_compile_matches_eager_with_checkpointing():
    ref, net, n = eager_and_compiled()
    n_res = sum(isinstance(m, ResBlock) for m in net.modules())
    n_tf = sum(isinstance(m, SpatioTemporalTransformer) for m in net.modules())
    assert n == n_res + len(TRANSFORMER_STEPS) * n_tf
    assert compile_blocks(net, backend="aot_eager") == 0  # idempotent
    assert net.state_dict().keys() == ref.state_dict().keys()
    kw = inputs(2, 3, 4, 8)
    for ckpt in (True, False):
        o_ref, g_ref = loss_and_grads(ref, kw, ckpt)
        o, g = loss_and_grads(net, kw, ckpt)
        assert rel(o, o_ref) < 1e-5
        assert g.keys() == g_ref.keys() and len(g) == sum(1 for _ in net.parameters())
        flat, flat_ref = (torch.cat([d[k].flatten() for k in sorted(d)]) for d in (g, g_ref))
        assert rel(flat, flat_ref) < 1e-5
        for name in g:  # absolute floor: single-token cross-attention queries have mathematically zero grads
            assert (g[name] - g_ref[name]).norm() <= 1e-4 * g_ref[name].norm() + 1e-9, name
    # One graph per distinct (region, shape): tiny has 7 ResBlock shapes and 2 transformer resolutions x 3
    # steps; blocks of equal shape share a graph, checkpointing on/off reuses it, nothing breaks the graphs.
    assert counters["stats"]["unique_graphs"] == 7 + 2 * 3
    assert sum(counters["graph_break"].values()) == 0
    assert uncompile_blocks(net) == n
    assert all(name not in m.__dict__ for m in net.modules() for name in ("forward", *TRANSFORMER_STEPS))


def test_min_tokens_keeps_small_regions_eager():
    torch._dynamo.reset()
    counters.clear()
    net = random_model().train()
    compile_blocks(net, backend="aot_eager", min_tokens=64)  # only the 8x8 level (64 tokens) is compiled
    with torch.no_grad():
        net(**inputs(1, 2, 2, 8))
    # 8x8: ResBlocks 32->32, 96->32, 64->32 and the 3 steps of the 32-channel transformers.
    assert counters["stats"]["unique_graphs"] == 3 + 3


def test_bad_arguments():
    net = random_model()
    with pytest.raises(ValueError, match="mode"):
        compile_blocks(net, mode="fastest")
    with pytest.raises(ValueError, match="min_tokens"):
        compile_blocks(net, min_tokens=-1)


@pytest.mark.slow
def test_regional_compile_in_the_released_camera_layout():
    """The snapshot layout's token regrouping compiles without graph breaks; same function as eager."""
    ref, net, _ = eager_and_compiled(camera_attention="snapshot")
    kw = inputs(1, 2, 4, 8)
    o_ref, g_ref = loss_and_grads(ref, kw, True)
    o, g = loss_and_grads(net, kw, True)
    assert rel(o, o_ref) < 1e-5 and sum(counters["graph_break"].values()) == 0
    flat, flat_ref = (torch.cat([d[k].flatten() for k in sorted(d)]) for d in (g, g_ref))
    assert rel(flat, flat_ref) < 1e-5
