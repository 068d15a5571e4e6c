"""Training-step benchmark of the full-size SV4D 2.0 UNet (not part of the test suite; needs a CUDA GPU).

    python benchmarks/train_step.py --batch 1 2 --checkpointing on        # 576x576: 72x72 latents, V=4, F=12
    python benchmarks/train_step.py --batch 2 --checkpointing on off --compile

One step is exactly the trainer's (model/train.py): EDM loss through `training_loss` under bf16 autocast
(fp32 master weights), backward, global-norm clipping, fused AdamW, EMA update. Reported per configuration:
median step time, peak GPU memory (torch.cuda.max_memory_allocated), achieved TFLOP/s and MFU.

FLOPs: `model.flops.count_flops(train=True)` (PyTorch FlopCounterMode on the meta device: matmuls and
convolutions of forward + backward, a multiply-add = 2 FLOPs). MFU counts these model FLOPs only; the
recomputation of activation checkpointing (one more forward) is reported separately as HFU. Peak: H100 SXM
dense bf16, 989.4 TFLOP/s (NVIDIA's datasheet figure without sparsity); `--peak` changes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import get_config  # noqa: E402
from model.ema import EMA  # noqa: E402
from model.flops import count_flops  # noqa: E402
from model.train import configure_stage, param_groups, training_loss  # noqa: E402
from model.unet import build_unet  # noqa: E402

H100_BF16_DENSE = 989.4e12


def synthetic_batch(b: int, f: int, v: int, hw: int, clip_dim: int, device: torch.device) -> dict:
    """A collated batch with the shapes of model/data.py (random content: speed does not depend on it)."""
    g = torch.Generator(device=device).manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, device=device)

    return {
        "latents": r(b, f, v, 4, hw, hw),
        "noise": r(b, f, v, 4, hw, hw),
        "sigma": (1.0 + 1.6 * r(b)).exp(),
        "cond_latents": r(b, f, 4, hw, hw),
        "cond_noise": r(b, f, 4, hw, hw),
        "cond_aug": (-3.0 + 0.5 * r(b)).exp(),
        "clip": r(b, f, clip_dim),
        "polar": torch.rand(b, v, generator=g, device=device) * 3.14,
        "azimuth": torch.rand(b, v, generator=g, device=device) * 6.28,
        "ref_latents": r(b, v, 4, hw, hw),
        "drop_cond": torch.zeros(b, dtype=torch.bool, device=device),
        "ref_drop": torch.zeros(b, dtype=torch.bool, device=device),
    }


def bench(net, ema, opt, batch, steps: int, warmup: int, device, fwd) -> list[float]:
    times = []
    trainable = [p for p in net.parameters() if p.requires_grad]
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss, _ = training_loss(fwd, batch, device, torch.bfloat16)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet", default="sv4d2")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=576, help="image size (latents are size/8)")
    p.add_argument("--checkpointing", nargs="+", choices=["on", "off"], default=["on"])
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak", type=float, default=H100_BF16_DENSE, help="peak FLOP/s for MFU")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for train_step.json")
    args = p.parse_args(argv)

    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/train_step.py needs a CUDA GPU")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    hw = args.size // 8
    cfg = get_config(args.unet)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)

    torch.manual_seed(0)
    net = build_unet(cfg, device=device)
    configure_stage(net, "4d")
    n_params = sum(p.numel() for p in net.parameters())
    ema = EMA(net, 0.9999)
    opt = torch.optim.AdamW(param_groups(net, 0.01), lr=1e-5, fused=True)
    fwd = torch.compile(net) if args.compile else net
    print(f"params {n_params:,}; weights+EMA+Adam allocated {torch.cuda.memory_allocated() / 2**30:.1f} GiB")

    results = []
    for ckpt in args.checkpointing:
        net.gradient_checkpointing = ckpt == "on"
        for b in args.batch:
            flops = count_flops(
                cfg, batch=b, frames=args.frames, views=args.views, latent_hw=(hw, hw), train=True
            )
            batch = synthetic_batch(b, args.frames, args.views, hw, cfg.context_dim, device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            row = {"batch": b, "checkpointing": ckpt, "compile": args.compile, "train_flops": flops.train}
            try:
                times = bench(net, ema, opt, batch, args.steps, args.warmup, device, fwd)
            except torch.OutOfMemoryError:
                opt.zero_grad(set_to_none=True)
                row["oom"] = True
                print(f"batch {b}, checkpointing {ckpt}: out of memory", flush=True)
                results.append(row)
                continue
            t = statistics.median(times)
            achieved = flops.train / t
            hw_flops = flops.train + (flops.forward if ckpt == "on" else 0.0)
            row.update(
                step_s=t,
                step_times=times,
                peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
                reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                tflops=achieved / 1e12,
                mfu=achieved / args.peak,
                hfu=hw_flops / t / args.peak,
            )
            print(
                f"batch {b}, checkpointing {ckpt}, compile {args.compile}: step {t:.3f} s, "
                f"peak {row['peak_mem_gib']:.1f} GiB, {row['tflops']:.0f} TFLOP/s, MFU {row['mfu']:.1%}, "
                f"HFU {row['hfu']:.1%}",
                flush=True,
            )
            results.append(row)
            del batch
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "unet": args.unet,
        "params": n_params,
        "frames": args.frames,
        "views": args.views,
        "latent_hw": hw,
        "peak_flops": args.peak,
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_step.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
