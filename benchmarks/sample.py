"""Novel-view sampling benchmark: one window of the full-size network (random weights), VAE decoding included.

    python benchmarks/sample.py                                  # 576x576, V=4 x T=12, 50 steps, guidance
    python benchmarks/sample.py --unet tiny --size 64 --steps 4 --device cpu --modes eager   # a CPU dry run

What one window costs is measured through the code users run: `model.novel_views.sample_views` (one window,
one view group) calling `model.sampler.sample_latents` (Euler EDM, 50 steps, guidance ramp 1 -> 2, bf16
weights), then `model.vae.decode_latents` on the 48 latents (the SD2.1 decoder architecture, random weights).

Stages, each written to sample_bench.json as soon as it is measured (a run cut short keeps what it has):
  flops       FLOPs of one guidance-batched forward (model.flops, meta device) and the floor of a window:
              steps x forward FLOPs / the bf16 matmul rate measured here on an 8192^3 product
  eager       seconds per step of sample_latents (as shipped: a conditional and an unconditional forward)
              and of one guidance-batched forward (both branches in one batch of 96 latents), eager bf16
  window      the full window (sampling + decode) per mode in --modes (eager and/or regional compile),
              seconds and peak GPU memory (torch.cuda.max_memory_allocated)
  trade       --trade-steps (fewer Euler steps): seconds, and the difference of its decoded frames to the
              50-step result on the same seed (RMS over pixels in [0, 1]); with random weights this says how
              far the trajectories part, not how good either is
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import get_config  # noqa: E402
from model.flops import count_flops  # noqa: E402
from model.novel_views import sample_views  # noqa: E402
from model.sampler import sample_latents  # noqa: E402
from model.unet import build_unet  # noqa: E402

H200_BF16_DENSE = 989.4e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    """Measured bf16 matmul FLOP/s (the practical ceiling of this device)."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    _sync(device)
    return 2 * n**3 * iters / (time.perf_counter() - t)


def build_vae(device: torch.device, tiny: bool, dtype: torch.dtype) -> torch.nn.Module:
    from model.official_encoders import build_vae as skeleton

    config = None
    if tiny:
        from model.vae import TINY_VAE_CONFIG

        config = dict(TINY_VAE_CONFIG)
    torch.manual_seed(0)
    vae = skeleton(config, device="cpu").to(device=device, dtype=dtype).eval().requires_grad_(False)
    return vae


def inputs(args, clip_dim: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    hw = args.size // 8
    f, v = args.frames, args.views
    return {
        "cond": torch.randn(f, 4, hw, hw, generator=g).to(device),
        "clip": torch.randn(f, clip_dim, generator=g).to(device),
        "polar": torch.full((v,), 1.5708),
        "azimuth": torch.deg2rad(torch.tensor([60.0, 120.0, 180.0, 240.0][:v] + [300.0] * max(0, v - 4))),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet", default="sv4d2")
    p.add_argument("--size", type=int, default=576)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--trade-steps", type=int, nargs="*", default=[25])
    p.add_argument("--modes", nargs="+", default=["regional"], choices=["eager", "regional"])
    p.add_argument("--decode-batch", type=int, default=8)
    p.add_argument("--device", default="cuda")
    p.add_argument("--deadline", type=float, default=520.0, help="skip stages that would end after this (s)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.perf_counter()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = torch.bfloat16 if device.type == "cuda" else None
    out_path = Path(args.out) / "sample_bench.json"
    res: dict = {
        "args": vars(args),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }
    res["torch"] = torch.__version__

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1), flush=True)

    def left() -> float:
        return args.deadline - (time.perf_counter() - t_start)

    config = get_config(args.unet)
    hw = args.size // 8
    fl = count_flops(config, batch=2, frames=args.frames, views=args.views, latent_hw=(hw, hw))
    rate = matmul_rate(device)
    res["flops"] = {
        "forward_guidance_batched_tflop": fl.forward / 1e12,
        "attention_3d_tflop": fl.attention_3d / 1e12,
        "snapshot_layout_forward_tflop": fl.snapshot_equivalent / 1e12,
        "matmul_tflops_measured": rate / 1e12,
        "floor_window_s_measured_rate": args.steps * fl.forward / rate,
        "floor_window_s_datasheet": args.steps * fl.forward / H200_BF16_DENSE,
    }
    save()

    torch.manual_seed(0)
    net = build_unet(config, device=device).to(dtype).eval().requires_grad_(False)
    vae = build_vae(device, args.unet == "tiny", dtype)
    x = inputs(args, config.context_dim, device)
    res["setup_s"] = time.perf_counter() - t_start

    def sampler(steps: int, seed: int = 23):
        gen = torch.Generator().manual_seed(seed)

        def run(cond, clip, polar, azimuth, ref, x_init):
            return sample_latents(
                net,
                cond,
                clip,
                polar.to(device),
                azimuth.to(device),
                ref,
                num_steps=steps,
                generator=gen,
                autocast_dtype=autocast,
                latent_channels=config.out_channels,
            )

        return run

    def window(steps: int) -> tuple[dict, torch.Tensor]:
        from model.vae import decode_latents

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t0 = time.perf_counter()
        lat = sample_views(
            sampler(steps),
            x["cond"],
            x["clip"],
            x["polar"],
            x["azimuth"],
            frames_per_pass=args.frames,
            views_per_pass=args.views,
        )
        _sync(device)
        t1 = time.perf_counter()
        images = decode_latents(
            lat.reshape(-1, *lat.shape[2:]), vae, scaled=True, batch_size=args.decode_batch
        )
        _sync(device)
        t2 = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        return {
            "steps": steps,
            "sampling_s": t1 - t0,
            "decode_s": t2 - t1,
            "window_s": t2 - t0,
            "per_step_s": (t1 - t0) / steps,
            "peak_gib": peak,
        }, images

    def per_step(steps: int = 3) -> float:
        run = sampler(1)
        run(
            x["cond"][None], x["clip"][None], x["polar"][None], x["azimuth"][None], None, None
        )  # warm / compile
        _sync(device)
        run = sampler(steps)
        t0 = time.perf_counter()
        run(x["cond"][None], x["clip"][None], x["polar"][None], x["azimuth"][None], None, None)
        _sync(device)
        return (time.perf_counter() - t0) / steps

    def batched_forward(iters: int = 3) -> float:
        f, v = args.frames, args.views
        xb = torch.randn(2, f, v, 4, hw, hw, device=device)
        cond = torch.cat([x["cond"][None], torch.zeros_like(x["cond"][None])])
        clip = torch.cat([x["clip"][None], torch.zeros_like(x["clip"][None])])
        pol = x["polar"][None].expand(2, v).to(device)
        az = x["azimuth"][None].expand(2, v).to(device)
        args_ = (xb, torch.zeros(2, device=device), cond, clip, pol, az)
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            net(*args_, cond_sigma=1e-5)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                net(*args_, cond_sigma=1e-5)
            _sync(device)
        return (time.perf_counter() - t0) / iters

    res["eager"] = {"sample_latents_step_s": per_step()}
    save()
    res["eager"]["guidance_batched_forward_s"] = batched_forward()
    res["eager"]["window_estimate_s"] = args.steps * res["eager"]["sample_latents_step_s"]
    save()

    reference = None
    for mode in args.modes:
        if mode == "regional":
            from model.compile import compile_blocks

            t0 = time.perf_counter()
            compile_blocks(net)
            step = per_step()
            res["regional"] = {
                "compile_and_first_step_s": time.perf_counter() - t0,
                "sample_latents_step_s": step,
            }
            save()
        est = args.steps * res.get(mode, res["eager"])["sample_latents_step_s"] + 5
        if left() < est:
            res[f"window_{mode}"] = f"skipped: {left():.0f} s left, about {est:.0f} s needed"
            save()
            continue
        stats, reference = window(args.steps)
        res[f"window_{mode}"] = stats
        save()

    if reference is not None:
        for k in args.trade_steps:
            est = k * res["window_" + args.modes[-1]]["per_step_s"] + 5
            if left() < est:
                res[f"trade_{k}_steps"] = f"skipped: {left():.0f} s left"
                continue
            stats, images = window(k)
            stats["rms_vs_full_steps"] = float((images - reference).square().mean().sqrt())
            stats["max_abs_vs_full_steps"] = float((images - reference).abs().max())
            res[f"trade_{k}_steps"] = stats
            save()
    res["total_s"] = time.perf_counter() - t_start
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
