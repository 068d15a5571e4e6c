"""Selective activation checkpointing (``SV4D2UNet.checkpoint_policy = "selective"``) on the tiny config, CPU:
same outputs and gradients as full checkpointing, and no matmul / convolution recomputed in backward; also
through the regional compile (model/compile.py, ``aot_eager`` backend)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from model.blocks import LONG_ATTENTION_KEYS
from tests.model.test_model_compile import eager_and_compiled
from tests.model.test_model_network import inputs, random_model


class CountAttention(TorchDispatchMode):
    """Counts forward SDPA calls (the CPU kernel) by key length; inside backward they are recomputes."""

    def __init__(self):
        super().__init__()
        self.keys: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default:
            self.keys.append(args[1].shape[-2])
        return func(*args, **(kwargs or {}))


def run(model, kw, policy: str):
    """Output, per-parameter grads and the matmul/conv FLOPs counted during backward under ``policy``."""
    model.gradient_checkpointing = True
    model.checkpoint_policy = policy
    model.zero_grad(set_to_none=True)
    out = model(**kw)
    loss = (out**2).mean()
    with FlopCounterMode(display=False) as fc:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, fc.get_total_flops()


def assert_same_grads(g: dict, g_ref: dict, tol: float) -> None:
    assert g.keys() == g_ref.keys() and len(g) > 0
    for name in g:
        assert (g[name] - g_ref[name]).abs().max() <= tol * (1.0 + g_ref[name].abs().max()), name


def test_policy_knob_validates_and_propagates():
    net = random_model()
    assert net.checkpoint_policy == "full"
    net.checkpoint_policy = "selective"
    assert {t.checkpoint_policy for t in net.transformers()} == {"selective"}
    with pytest.raises(ValueError, match="bogus"):
        net.checkpoint_policy = "bogus"


def test_selective_equals_full_and_skips_matmul_recompute():
    net = random_model().train()
    kw = inputs(2, 3, 4, 8)
    o_full, g_full, bwd_full = run(net, kw, "full")
    o_sel, g_sel, bwd_sel = run(net, kw, "selective")
    torch.testing.assert_close(o_sel, o_full, rtol=0, atol=0)
    assert_same_grads(g_sel, g_full, 1e-6)
    # Backward FLOPs (matmuls + convolutions): full checkpointing recomputes the checkpointed forward inside
    # backward; selective reuses the saved outputs, so its backward counts exactly the FLOPs of a backward
    # without any checkpointing.
    net.gradient_checkpointing = False
    net.zero_grad(set_to_none=True)
    out = net(**kw)
    with FlopCounterMode(display=False) as fc:
        (out**2).mean().backward()
    assert bwd_sel == fc.get_total_flops()
    assert bwd_full > 1.4 * bwd_sel

    # "attention" keeps only the long (here: the 3D attention's 256 keys) attentions' outputs: in backward it
    # recomputes every attention but those (FlopCounterMode does not count the CPU attention kernel).
    recomputed = {}
    for policy in ("full", "attention"):
        net.gradient_checkpointing = True
        net.checkpoint_policy = policy
        net.zero_grad(set_to_none=True)
        out = net(**kw)
        with CountAttention() as count:
            (out**2).mean().backward()
        recomputed[policy] = sorted(count.keys)
        grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        torch.testing.assert_close(out.detach(), o_full, rtol=0, atol=0)
        assert_same_grads(grads, g_full, 1e-6)
    long_ = [k for k in recomputed["full"] if k >= LONG_ATTENTION_KEYS]
    assert long_ and recomputed["attention"] == [k for k in recomputed["full"] if k < LONG_ATTENTION_KEYS]


@pytest.mark.slow
def test_selective_composes_with_regional_compile():
    ref, net, _ = eager_and_compiled()
    kw = inputs(2, 3, 4, 8)
    o_ref, g_ref, _ = run(ref, kw, "full")
    for policy in ("selective", "attention"):
        o, g, _ = run(net, kw, policy)
        assert float((o - o_ref).norm() / o_ref.norm()) < 1e-5
        assert_same_grads(g, g_ref, 1e-5)
    assert sum(counters["graph_break"].values()) == 0
    # One graph per (policy, region, shape), shared by all blocks of that shape (as for full checkpointing):
    # tiny has 7 ResBlock shapes and 2 transformer resolutions x 3 steps.
    assert counters["stats"]["unique_graphs"] == 2 * (7 + 2 * 3)


@pytest.mark.parametrize("mode", ["snapshot", "views"])
def test_attention_policy_follows_the_camera_mode(mode):
    """In the released layouts the camera attention has V keys: the "attention" policy recomputes it and
    keeps only the long spatial self-attentions (16x16 = 256 keys here); same outputs and gradients."""
    net = random_model(camera_attention=mode).train()
    kw = inputs(1, 1, 4, 16)
    o_full, g_full, _ = run(net, kw, "full")
    net.checkpoint_policy = "attention"
    net.zero_grad(set_to_none=True)
    out = net(**kw)
    with CountAttention() as count:
        (out**2).mean().backward()
    torch.testing.assert_close(out.detach(), o_full, rtol=0, atol=0)
    assert_same_grads({n: p.grad for n, p in net.named_parameters() if p.grad is not None}, g_full, 1e-6)
    assert 4 in count.keys  # the camera attention (V = 4 keys) is recomputed
    assert max(count.keys) < LONG_ATTENTION_KEYS  # the 256-key spatial attentions are kept
