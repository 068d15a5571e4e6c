"""The deformation MLP has its own learning rate (fit4d.deform_lr): at the field's 0.01 its ReLU units died
on the H200 benchmark (the deformation stayed ~0, every frame rendered the clip's average shape). Adam's
first step moves every parameter with a nonzero gradient by exactly its group's rate, which pins the rates
down without a long fit."""

from __future__ import annotations

import math

import pytest
import torch

from fit4d.fields import resolve_hash_kernel
from fit4d.loop import Fitter
from tests.fit4d.test_fit4d_fit import moving_sphere_video, tiny_cfg


@pytest.fixture(scope="module")
def video():
    return moving_sphere_video()


def first_step_changes(fitter: Fitter) -> tuple[torch.Tensor, torch.Tensor]:
    table0 = fitter.model.encoding.table.detach().clone()
    last0 = fitter.model.deformation.net[-1].weight.detach().clone()
    views, frames = fitter.sample_batch(0, 10, static=False)
    fitter.step(views, frames, static=False)
    table = (fitter.model.encoding.table.detach() - table0).abs()
    last = (fitter.model.deformation.net[-1].weight.detach() - last0).abs()
    return table, last


def test_the_deformation_steps_at_deform_lr_and_the_field_at_lr(video):
    fitter = Fitter(video, tiny_cfg(lr=0.01, deform_lr=0.001))
    table, last = first_step_changes(fitter)
    assert last.max().item() == pytest.approx(0.001, rel=1e-3)  # the deformation moved (and only so far)
    assert table.max().item() == pytest.approx(0.01, rel=1e-3)


def test_both_rates_decay_alike_over_a_stage(video):
    fitter = Fitter(video, tiny_cfg(lr=0.02, deform_lr=0.004, lr_final_frac=0.1))
    fitter.set_lr(50, 100)
    rates = sorted(g["lr"] for g in fitter.optimizer.param_groups)
    assert rates == pytest.approx([0.004 * math.sqrt(0.1), 0.02 * math.sqrt(0.1)])
    n_deform = sum(p.numel() for p in fitter.model.deformation.parameters())
    group = min(fitter.optimizer.param_groups, key=lambda g: g["lr"])
    assert sum(p.numel() for p in group["params"]) == n_deform


def test_a_non_positive_deform_lr_is_rejected():
    with pytest.raises(ValueError, match="deform_lr"):
        tiny_cfg(deform_lr=0)


def test_a_hash_deformation_steps_its_table_at_lr_and_its_mlp_at_deform_lr(video):
    """The 4D hash table is a table like the canonical one (lr); only the MLP on it needs deform_lr. The
    zero last layer passes zero gradients to the table and the first layer on the first step; Adam's
    second step after a zero gradient moves a parameter by rate * sqrt(1 + beta2) / (1 + beta1)."""
    cfg = tiny_cfg(
        lr=0.01, deform_lr=0.001, **{"nerf.deform_encoding": "hash", "nerf.deform_max_resolution": 16}
    )
    fitter = Fitter(video, cfg)
    deform = fitter.model.deformation
    table0 = deform.encoding.table.detach().clone()
    first0 = deform.net[0].weight.detach().clone()
    for _ in range(2):
        views, frames = fitter.sample_batch(0, 10, static=False)
        fitter.step(views, frames, static=False)
    table = (deform.encoding.table.detach() - table0).abs().max().item()
    first = (deform.net[0].weight.detach() - first0).abs().max().item()
    factor = math.sqrt(1 + 0.999) / (1 + 0.9)
    assert table == pytest.approx(0.01 * factor, rel=1e-3)
    assert first == pytest.approx(0.001 * factor, rel=1e-3)


def test_triton_kernels_with_the_normal_losses_or_compile_are_rejected():
    with pytest.raises(ValueError, match="hash_kernel=triton cannot train the normal losses"):
        tiny_cfg(**{"nerf.hash_kernel": "triton", "loss.normal_smoothness": 0.1})
    with pytest.raises(ValueError, match="two ways to fuse the field"):
        tiny_cfg(compile="true", **{"nerf.hash_kernel": "triton"})


def test_auto_takes_the_triton_kernels_only_where_the_fit_allows_them(video, monkeypatch):
    """hash_kernel=auto (the default): triton when the package imports, but torch for a fit that
    differentiates the field twice (the normal losses) or compiles it, where an explicit triton is an
    error."""
    from fit4d.field_components import hash_kernels

    monkeypatch.setattr(hash_kernels, "triton", object())  # installed or not here, the choice is the same
    assert resolve_hash_kernel("auto") == "triton"
    assert resolve_hash_kernel("auto", allow_triton=False) == "torch"
    assert resolve_hash_kernel("torch") == "torch"
    assert Fitter(video, tiny_cfg()).model.encoding.kernel == "triton"
    assert Fitter(video, tiny_cfg(**{"loss.normal_smoothness": 0.1})).model.encoding.kernel == "torch"
    assert Fitter(video, tiny_cfg(compile="true")).model.encoding.kernel == "torch"
    monkeypatch.setattr(hash_kernels, "triton", None)
    assert resolve_hash_kernel("auto") == "torch"
    assert Fitter(video, tiny_cfg()).model.encoding.kernel == "torch"


def test_compile_with_the_normal_losses_is_rejected():
    with pytest.raises(ValueError, match="fit4d.compile cannot train the normal losses"):
        tiny_cfg(compile="true", **{"loss.normal_smoothness": 0.1})
