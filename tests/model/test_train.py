"""The EDM trainer on the tiny UNet (CPU): overfitting, exact resume, DDP, 3d freezing, NaN guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import train_step
from model.checkpoint import latest_checkpoint, load_train_state
from model.data import build_example, collate, draw_noise, to_tensors
from model.train import configure_stage, run_stage
from model.train_step import training_loss
from model.unet import build_unet
from profiles import load_profile
from profiles.schema import StageConfig, TrainConfig
from shards.synthetic import synthetic_latent_sample

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def stage_list(shard_glob: str, name: str = "4d", steps: int = 4) -> list[dict]:
    return [
        {
            "name": name,
            "steps": steps,
            "data": [shard_glob],
            "lr": 1e-3,
            "num_views": 2,
            "num_frames": 2 if name == "4d" else 1,
            "ref_mask_prob": 0.5,
        }
    ]


def train_overrides(out_dir: Path, shard_glob: str, name: str = "4d", steps: int = 4, **extra) -> list[str]:
    sets = {
        "out_dir": str(out_dir),
        "train.stages": json.dumps(stage_list(shard_glob, name, steps)),
        "train.progress": False,
        "train.device": "cpu",
        "train.batch_size": 2,
        "train.ema_decay": 0.9,
        "train.warmup_steps": 2,
        "train.cond_drop_prob": 0.3,
        **extra,
    }
    return [f"{k}={v if not isinstance(v, bool) else str(v).lower()}" for k, v in sets.items()]


def make_cfg(out_dir: Path, shard_glob: str, name: str = "4d", steps: int = 4, **extra):
    return load_profile("demo", train_overrides(out_dir, shard_glob, name, steps, **extra))


def weights(ckpt: Path, which: str = "model") -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / f"{which}.safetensors"))


def test_tiny_model_overfits_one_sample():
    torch.manual_seed(0)
    net = build_unet("tiny")
    configure_stage(net, "4d")
    train, stage = TrainConfig(cond_drop_prob=0.0), StageConfig(num_views=2, num_frames=2, ref_mask_prob=0.0)
    ex = build_example(synthetic_latent_sample("one", clip_dim=32), train, stage, np.random.default_rng(0))
    gen = torch.Generator().manual_seed(0)
    noise = draw_noise(ex["latents"].shape, ex["cond_latents"].shape, train, stage, gen)
    noise["sigma"] = torch.tensor(2.0)
    batch = collate([to_tensors(ex, noise)])
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = training_loss(net, batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, losses[::10]


def test_condition_dropout_is_the_release_unconditional_branch():
    """A dropped example sees what the sampler's unconditional branch sees (model.edm.drop_conditions):
    no conditioning latents, CLIP, reference views or conditioning-sigma embedding, the cameras kept. So its
    loss cannot depend on any of them, cond_aug included (its sigma embedding is zeroed too)."""
    torch.manual_seed(0)
    net = build_unet("tiny").eval()
    with torch.no_grad():
        for p in net.parameters():  # every parameter random: the default init's zeros would hide inputs
            p.normal_(0.0, 0.2)
    train, stage = TrainConfig(cond_drop_prob=0.0), StageConfig(num_views=2, num_frames=2, ref_mask_prob=0.0)
    examples = []
    for i in range(2):
        ex = build_example(
            synthetic_latent_sample(f"s{i}", clip_dim=32), train, stage, np.random.default_rng(i)
        )
        noise = draw_noise(
            ex["latents"].shape, ex["cond_latents"].shape, train, stage, torch.Generator().manual_seed(i)
        )
        examples.append(to_tensors(ex, noise))
    batch = collate(examples)
    batch["drop_cond"] = torch.tensor([False, True])
    cpu = torch.device("cpu")
    with torch.no_grad():
        _, per_sample = training_loss(net, batch, cpu)
        changed = dict(batch)
        for key in ("cond_latents", "clip", "ref_latents", "cond_noise"):
            changed[key] = batch[key] + torch.randn_like(batch[key])
        changed["cond_aug"] = batch["cond_aug"] + 0.7
        _, per_sample2 = training_loss(net, changed, cpu)
        assert per_sample2[1] == per_sample[1]  # dropped: none of the conditions reach the network
        assert per_sample2[0] != per_sample[0]  # kept: they do
        polar = dict(batch, polar=batch["polar"] + 0.3)
        assert training_loss(net, polar, cpu)[1][1] != per_sample[1]  # the cameras stay in

    seen = {}

    class Recorder(torch.nn.Module):
        def forward(self, x, c_noise, **kw):
            seen.update(kw)
            return torch.zeros_like(x)

    training_loss(Recorder(), batch, cpu)
    assert seen["cond_sigma_mask"].tolist() == [1.0, 0.0]
    assert seen["ref_mask"].tolist() == [1.0, 0.0]
    assert not seen["cond_latent"][1].any() and not seen["clip_emb"][1].any()
    assert seen["cond_latent"][0].any() and seen["clip_emb"][0].any()


def test_n_steps_equal_half_resume_half(tmp_path, shard_glob):
    full = run_stage(make_cfg(tmp_path / "full", shard_glob, steps=4), "4d")
    assert full.final_step == 4 and len(full.losses) == 4
    first = run_stage(make_cfg(tmp_path / "split", shard_glob, steps=4), "4d", steps=2)
    assert first.final_step == 2
    second = run_stage(make_cfg(tmp_path / "split", shard_glob, steps=4), "4d", resume=True)
    assert (second.start_step, second.final_step) == (2, 4)
    assert first.losses + second.losses == full.losses
    a, b = (
        latest_checkpoint(tmp_path / "full/checkpoints/4d"),
        latest_checkpoint(tmp_path / "split/checkpoints/4d"),
    )
    for which in ("model", "ema"):
        wa, wb = weights(a, which), weights(b, which)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), which
    sa, sb = load_train_state(a), load_train_state(b)
    assert sa["step"] == sb["step"] == 4 and sa["ema_updates"] == sb["ema_updates"] == 4
    for k, v in sa["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], sb["optimizer"]["state"][k]["exp_avg_sq"])
    assert sa["data"]["examples_seen"] == 8
    assert (a / "config.json").is_file() and (a / "meta.json").is_file()
    # metrics.jsonl: one row per logged step, appended across the resume, losses as trained
    rows = [json.loads(x) for x in (tmp_path / "split/logs/train_4d/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx(full.losses)
    assert all(r["step_time_s"] > 0 and r["examples_per_s"] > 0 and r["world_size"] == 1 for r in rows)


def test_stage_3d_freezes_the_frame_attention(tmp_path, shard_glob):
    res = run_stage(make_cfg(tmp_path, shard_glob, name="3d", steps=2), "3d")
    trained = weights(res.checkpoint)
    torch.manual_seed(0)  # the trainer seeds its init with train.seed = 0
    init = build_unet("tiny")
    frame = set(init.frame_attention_parameter_names())
    assert frame and any("time_mixer_motion" in n for n in frame) and any("motion_blocks" in n for n in frame)
    ref = init.state_dict()
    assert all(torch.equal(trained[n], ref[n]) for n in frame)
    changed = [n for n in ref if n not in frame and not torch.equal(trained[n], ref[n])]
    assert len(changed) > 10
    ema = weights(res.checkpoint, "ema")
    assert all(torch.equal(ema[n], ref[n]) for n in frame)


def test_stage_4d_starts_from_the_3d_checkpoint(tmp_path, shard_glob):
    stages = stage_list(shard_glob, "3d", 1) + stage_list(shard_glob, "4d", 1)
    cfg = load_profile("demo", [*train_overrides(tmp_path, shard_glob), f"train.stages={json.dumps(stages)}"])
    with pytest.raises(FileNotFoundError, match="run --stage 3d first"):
        run_stage(cfg, "4d")
    r3 = run_stage(cfg, "3d")
    assert r3.init_source is None  # first stage, no model.init_checkpoint: random init
    w3 = weights(r3.checkpoint, "ema")
    mix = [k for k in w3 if k.endswith("time_mixer_motion.mix_factor")]
    # alpha_f = 1 - sigmoid(mix_factor) starts near zero and stays there through the frozen 3d stage.
    assert mix and all(1 - torch.sigmoid(w3[k]).item() < 0.01 for k in mix)
    r4 = run_stage(cfg, "4d")
    assert r4.init_source == str(r3.checkpoint)
    w4 = weights(r4.checkpoint)
    frame = build_unet("tiny").frame_attention_parameter_names()
    assert any(not torch.equal(w4[k], w3[k]) for k in frame)  # the frame attention trains in 4d


def nan_losses_at(monkeypatch, steps: set[int]) -> None:
    """The loss of the first micro-batch of each step in ``steps`` becomes NaN (grad_accum 1: call = step)."""
    real, calls = train_step.training_loss, iter(range(1 << 30))

    def loss(*args, **kwargs):
        mean, per_sample = real(*args, **kwargs)
        return (mean * float("nan"), per_sample) if next(calls) in steps else (mean, per_sample)

    monkeypatch.setattr(train_step, "training_loss", loss)


def test_nan_guard_skips_and_counts_bad_steps(tmp_path, shard_glob, monkeypatch):
    clean = run_stage(make_cfg(tmp_path / "clean", shard_glob, steps=1), "4d")
    nan_losses_at(monkeypatch, {1})
    bad = run_stage(make_cfg(tmp_path / "bad", shard_glob, steps=2), "4d")
    assert bad.bad_steps == 1 and np.isnan(bad.losses[1]) and bad.losses[0] == clean.losses[0]
    wc, wb = weights(clean.checkpoint), weights(bad.checkpoint)
    assert all(torch.equal(wc[k], wb[k]) for k in wc)  # the bad step changed nothing
    assert load_train_state(bad.checkpoint)["bad_steps_total"] == 1
    nan_losses_at(monkeypatch, {1, 2})
    with pytest.raises(RuntimeError, match="2 consecutive non-finite steps"):
        run_stage(make_cfg(tmp_path / "abort", shard_glob, steps=4, **{"train.max_bad_steps": 2}), "4d")


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, shard_glob):
    """torchrun, 2 gloo processes x batch 1 == 1 process x batch 2 (same examples, averaged gradients)."""
    single = run_stage(make_cfg(tmp_path / "single", shard_glob, steps=3), "4d")
    cfg_sets = train_overrides(tmp_path / "ddp", shard_glob, steps=3, **{"train.batch_size": 1})
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "model.train",
        "--profile",
        "demo",
        "--stage",
        "4d",
    ]
    for s in cfg_sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_ckpt = latest_checkpoint(tmp_path / "ddp/checkpoints/4d")
    assert load_train_state(ddp_ckpt)["world_size"] == 2
    ws, wd = weights(single.checkpoint), weights(ddp_ckpt)
    worst = max((ws[k] - wd[k]).abs().max().item() for k in ws)
    print(f"max |single - ddp| weight difference: {worst:.3g}")
    assert worst < 1e-4, worst


def test_init_from_an_official_sv3d_p_file(tmp_path):
    """sv3d_p layout (renamed keys, no frame attention) -> our UNet; new frame layers get alpha_f ~ 0."""
    from safetensors.torch import save_file

    from model.convert import ours_to_official
    from model.train import load_init_weights

    torch.manual_seed(1)
    src = build_unet("tiny")
    frame = set(src.frame_attention_parameter_names())
    official = {ours_to_official(k, "sv3d_p"): v for k, v in src.state_dict().items() if k not in frame}
    assert any(".time_stack." in k for k in official)
    save_file(official, str(tmp_path / "sv3d_p.safetensors"))
    torch.manual_seed(2)
    net = build_unet("tiny")
    load_init_weights(net, tmp_path / "sv3d_p.safetensors", "model")
    got = net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in src.state_dict().items() if k not in frame)
    alphas_f = [a_f for _, a_f in net.mix_alphas().values()]
    assert alphas_f and max(alphas_f) < 0.01
