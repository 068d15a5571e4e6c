"""Training-step benchmark of the full-size SV4D 2.0 UNet (not part of the test suite; needs a CUDA GPU).

    python benchmarks/train_step.py --batch 1 2 --checkpointing on        # 576x576: 72x72 latents, V=4, F=12
    python benchmarks/train_step.py --batch 2 --checkpointing on off --compile          # whole-UNet compile
    python benchmarks/train_step.py --runs regional:2 none:2 regional:1 --min-compile-tokens 324
    python benchmarks/train_step.py --runs regional:2 --checkpoint-policy selective   # keep matmul outputs

``--compile`` takes one or more of ``none`` (eager), ``full`` (torch.compile of the whole UNet) and
``regional`` (model.compile.compile_blocks: one compiled graph per ResBlock / transformer-step shape,
activation checkpointing unchanged); ``--runs`` lists configurations explicitly as COMPILE:BATCH[:CKPT]
in the order to run them. Results are printed and written to train_step.json after every configuration, so a
run cut off by a time limit keeps what it measured; ``--deadline`` skips configurations that would not finish
in time (estimated from the ones already run).

One step is the trainer's own `model.train_step.train_step`: EDM loss under bf16 autocast (fp32 master
weights), backward, global-norm clipping, fused AdamW, EMA update (the NaN guard reads the loss and the norm,
as in training). Reported per configuration:
median step time, peak GPU memory (torch.cuda.max_memory_allocated), achieved TFLOP/s and MFU.

FLOPs: `model.flops.count_flops(train=True)` (PyTorch FlopCounterMode on the meta device: matmuls and
convolutions of forward + backward, a multiply-add = 2 FLOPs). MFU counts these model FLOPs only; the
recomputation of activation checkpointing (one more forward) is reported separately as HFU;
``--checkpoint-policy selective`` keeps the matmul / SDPA / convolution outputs (model.blocks), so its
recompute has no matmul FLOPs and HFU = MFU. Peak: H100 SXM
dense bf16, 989.4 TFLOP/s (NVIDIA's datasheet figure without sparsity); `--peak` changes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.compile import compile_blocks, uncompile_blocks  # noqa: E402
from model.config import get_config  # noqa: E402
from model.ema import EMA  # noqa: E402
from model.flops import count_flops  # noqa: E402
from model.train import configure_stage, param_groups  # noqa: E402
from model.train_step import train_step  # noqa: E402
from model.unet import build_unet  # noqa: E402

H100_BF16_DENSE = 989.4e12
COMPILE_MODES = ("none", "full", "regional")


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(net, ema, opt, batch, steps: int, warmup: int, device, fwd, label: str = "", t0: float = 0.0):
    """Run warmup + steps training steps; returns (warmup steps' seconds, timed steps' seconds), each
    printed as it finishes."""
    warm, times = [], []
    for i in range(warmup + steps):
        _sync(device)
        t = time.perf_counter()
        result = train_step(fwd, net, opt, ema, [batch], device, autocast_dtype=torch.bfloat16, grad_clip=1.0)
        _sync(device)
        dt = time.perf_counter() - t
        kind = "warmup" if i < warmup else "step"
        print(
            f"  [{time.perf_counter() - t0:6.1f} s] {label} {kind} {i}: {dt:.3f} s (loss {result.loss:.4f})",
            flush=True,
        )
        (times if i >= warmup else warm).append(dt)
    return warm, times


# Kernel-name patterns, checked in this order (first match wins); everything else is "other".
KERNEL_CATEGORIES = (
    ("Triton (compiled regions)", ("triton",)),
    ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn_generated_fort_native")),
    ("optimizer/EMA", ("multi_tensor", "adam", "foreach")),
    ("matmul/conv", ("gemm", "xmma", "cutlass", "nvjet", "conv", "fprop", "dgrad", "wgrad", "cublas")),
    ("eager norm", ("norm",)),
    ("eager elementwise/reduce", ("elementwise", "reduce", "unrolled", "vectorized", "index")),
    ("copies/cat/memset", ("copy", "cat", "memcpy", "memset", "fill")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    for cat, keys in KERNEL_CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other"


def profile_step(net, ema, opt, batch, device, fwd, top: int = 25) -> tuple[str, dict[str, float]]:
    """One training step under torch.profiler: (printable table, {category: CUDA ms})."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        bench(net, ema, opt, batch, 1, 0, device, fwd, "[profiled]")
    kernels: dict[str, tuple[float, int]] = {}
    for evt in prof.key_averages():
        # Only kernels have self device time (operators' device time is their kernels'); the name of the
        # attribute changed across torch versions.
        us = getattr(evt, "self_device_time_total", None)
        us = evt.self_cuda_time_total if us is None else us
        if us > 0:
            kernels[evt.key] = (us / 1e3, evt.count)
    total = sum(t for t, _ in kernels.values()) or 1e-9
    cats: dict[str, float] = {}
    for name, (t, _) in kernels.items():
        cats[kernel_category(name)] = cats.get(kernel_category(name), 0.0) + t
    lines = [f"CUDA kernel time of one step: {total:.0f} ms", "| category | ms | share |", "|---|---|---|"]
    for cat, t in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {cat} | {t:.0f} | {t / total:.1%} |")
    lines += [
        "",
        f"top {top} kernels:",
        "| kernel | category | calls | ms | share |",
        "|---|---|---|---|---|",
    ]
    for name, (t, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {name[:90]} | {kernel_category(name)} | {n} | {t:.1f} | {t / total:.1%} |")
    triton = [(k, v) for k, v in kernels.items() if kernel_category(k) == "Triton (compiled regions)"]
    lines += [
        "",
        f"top {top} Triton kernels (names say what Inductor fused):",
        "| kernel | calls | ms |",
        "|---|---|---|",
    ]
    for name, (t, n) in sorted(triton, key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {name[:120]} | {n} | {t:.1f} |")
    return "\n".join(lines), cats


def parse_runs(runs: list[str], default_ckpt: list[str]) -> list[tuple[str, int, str]]:
    """COMPILE:BATCH[:CKPT] items -> (compile, batch, checkpointing)."""
    out = []
    for item in runs:
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[0] not in COMPILE_MODES or not parts[1].isdigit():
            raise SystemExit(
                f"--runs item {item!r} is not COMPILE:BATCH[:on|off] with COMPILE in {COMPILE_MODES}"
            )
        ckpts = [parts[2]] if len(parts) == 3 else default_ckpt
        for c in ckpts:
            if c not in ("on", "off"):
                raise SystemExit(f"--runs item {item!r}: checkpointing must be on or off")
            out.append((parts[0], int(parts[1]), c))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet", default="sv4d2")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=576, help="image size (latents are size/8)")
    p.add_argument("--checkpointing", nargs="+", choices=["on", "off"], default=["on"])
    p.add_argument(
        "--compile",
        nargs="*",
        choices=COMPILE_MODES,
        default=["none"],
        help="none (eager), full (torch.compile of the whole UNet), regional (per block); "
        "a bare --compile means full",
    )
    p.add_argument(
        "--runs",
        nargs="+",
        default=None,
        help="explicit configurations COMPILE:BATCH[:on|off], run in this order (overrides --compile, "
        "--batch and, where given, --checkpointing)",
    )
    p.add_argument(
        "--min-compile-tokens",
        type=int,
        default=0,
        help="regional: regions with fewer tokens per image (H*W) stay eager (324 skips the 9x9 level)",
    )
    p.add_argument(
        "--checkpoint-policy",
        choices=["full", "selective", "attention"],
        default="full",
        help="what checkpointing recomputes: full (everything), selective (keeps matmul/SDPA/conv outputs) "
        "or attention (keeps the long self-attentions' outputs)",
    )
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (default: Inductor default)")
    p.add_argument(
        "--sdpa",
        choices=["default", "cudnn", "flash", "efficient"],
        default="default",
        help="SDPA backend tried first (the others stay as fallbacks, in PyTorch's order); default: "
        "PyTorch's own priority (flash first on Hopper)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps of each configuration, profile one more step and print CUDA kernel time "
        "by category (matmul/conv, attention, Triton, eager elementwise/norm, optimizer, copies)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds since start: skip a configuration whose estimated time would end past it",
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak", type=float, default=H100_BF16_DENSE, help="peak FLOP/s for MFU")
    p.add_argument("--device", default="cuda", help="cuda (the benchmark); cpu only for smoke tests")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for train_step.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="  [%(relativeCreated)7.0f ms] %(name)s: %(message)s"
    )
    logging.getLogger("model.compile").setLevel(logging.INFO)

    compile_modes = args.compile or ["full"]
    if args.runs:
        runs = parse_runs(args.runs, args.checkpointing)
    else:
        runs = [(c, b, k) for c in compile_modes for k in args.checkpointing for b in args.batch]

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/train_step.py needs a CUDA GPU")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name()
    else:
        device_name = device.type
    hw = args.size // 8
    cfg = get_config(args.unet)
    if args.sdpa != "default":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        first = {
            "cudnn": SDPBackend.CUDNN_ATTENTION,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
        }[args.sdpa]
        order = [first] + [
            b
            for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
            if b != first
        ]
        # Entered for the whole run (the priority is process-wide state that compiled graphs also read).
        sdpa_kernel(order, set_priority=True).__enter__()
    print(f"device: {device_name}, torch {torch.__version__}", flush=True)
    print(f"configurations: {runs}", flush=True)

    torch.manual_seed(0)
    net = build_unet(cfg, device=device)
    configure_stage(net, "4d")
    n_params = sum(p.numel() for p in net.parameters())
    ema = EMA(net, 0.9999)
    opt = torch.optim.AdamW(param_groups(net, 0.01), lr=1e-5, fused=True)
    full_compiled = None
    if device.type == "cuda":
        print(
            f"params {n_params:,}; weights+EMA+Adam allocated {torch.cuda.memory_allocated() / 2**30:.1f} GiB"
        )

    summary = {
        "device": device_name,
        "torch": torch.__version__,
        "unet": args.unet,
        "params": n_params,
        "frames": args.frames,
        "views": args.views,
        "latent_hw": hw,
        "peak_flops": args.peak,
        "min_compile_tokens": args.min_compile_tokens,
        "compile_mode": args.compile_mode,
        "checkpoint_policy": args.checkpoint_policy,
        "sdpa": args.sdpa,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "results": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = summary["results"]
    flops_cache: dict[int, object] = {}
    # For --deadline: measured steady step time per (compile, batch) and compile overhead per compile kind.
    step_est: dict[tuple[str, int], float] = {}
    compile_est: dict[str, float] = {}
    compiled_batches: set[tuple[str, int, str]] = set()

    for mode, b, ckpt in runs:
        label = f"[{mode} b{b} ckpt {ckpt}{'/' + args.checkpoint_policy if ckpt == 'on' else ''}]"
        row: dict = {"batch": b, "checkpointing": ckpt, "compile": mode}
        if args.deadline is not None:
            # Seconds per step: measured for this configuration, else the same compile kind at another
            # batch (scaled), else any measured one scaled with a margin (eager is slower than compiled).
            same = [v * b / bb for (m, bb), v in step_est.items() if m == mode]
            other = [1.5 * v * b / bb for (m, bb), v in step_est.items()]
            per_step = step_est.get((mode, b)) or max(same or other or [0.0])
            need = (args.warmup + args.steps) * per_step
            if mode != "none" and (mode, b, ckpt) not in compiled_batches:
                need += compile_est.get(mode, 0.0)
            elapsed = time.perf_counter() - t0
            if elapsed + need > args.deadline:
                row["skipped"] = (
                    f"deadline: {elapsed:.0f} s elapsed + ~{need:.0f} s estimated > {args.deadline:.0f} s"
                )
                print(f"{label} skipped ({row['skipped']})", flush=True)
                results.append(row)
                continue
        if mode == "regional":
            n = compile_blocks(net, mode=args.compile_mode, min_tokens=args.min_compile_tokens)
            fwd = net
            print(f"{label} regional compile: {n} new regions wrapped", flush=True)
        else:
            uncompile_blocks(net)
            if mode == "full":
                if full_compiled is None:
                    kw = {"mode": args.compile_mode} if args.compile_mode else {}
                    full_compiled = torch.compile(net, **kw)
                fwd = full_compiled
            else:
                fwd = net
        net.gradient_checkpointing = ckpt == "on"
        net.checkpoint_policy = args.checkpoint_policy
        if b not in flops_cache:
            flops_cache[b] = count_flops(
                cfg, batch=b, frames=args.frames, views=args.views, latent_hw=(hw, hw), train=True
            )
        flops = flops_cache[b]
        row["train_flops"] = flops.train
        batch = synthetic_batch(b, args.frames, args.views, hw, cfg.context_dim, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        graphs0 = counters["stats"]["unique_graphs"]
        print(f"[{time.perf_counter() - t0:6.1f} s] {label} start", flush=True)
        warm: list[float] = []
        times: list[float] = []
        try:
            warm, times = bench(net, ema, opt, batch, args.steps, args.warmup, device, fwd, label, t0)
        except Exception as e:  # OOM, compile failure: record and go on with the next configuration
            opt.zero_grad(set_to_none=True)
            msg = str(e).strip().splitlines()
            row["error"] = f"{type(e).__name__}: {msg[0] if msg else ''}"[:500]
            row["oom"] = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e)
            print(f"{label} FAILED: {row['error']}", flush=True)
        row["new_graphs"] = counters["stats"]["unique_graphs"] - graphs0
        row["graph_breaks"] = sum(counters["graph_break"].values())
        if times:
            t = statistics.median(times)
            achieved = flops.train / t
            # Recomputed matmul FLOPs: the whole forward ("full"), none ("selective"), all but the cores of
            # the spatial and 3D self-attentions, whose outputs are kept ("attention").
            recompute = 0.0
            if ckpt == "on" and args.checkpoint_policy == "full":
                recompute = flops.forward
            elif ckpt == "on" and args.checkpoint_policy == "attention":
                recompute = flops.forward - flops.attention_spatial - flops.attention_3d
            hw_flops = flops.train + recompute
            row.update(step_s=t, step_times=times, tflops=achieved / 1e12, mfu=achieved / args.peak)
            row["hfu"] = hw_flops / t / args.peak
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                row["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
            step_est[(mode, b)] = t
            compiled_batches.add((mode, b, ckpt))
            # The first warmup step is compile + one step (+ cudnn autotuning, also in eager).
            row["warmup_times"] = warm
            if warm:
                row["first_step_s"] = warm[0]
                if mode != "none":
                    compile_est[mode] = max(compile_est.get(mode, 0.0), warm[0] - t)
            print(
                f"{label} step {t:.3f} s, peak {row.get('peak_mem_gib', 0):.1f} GiB allocated "
                f"({row.get('reserved_gib', 0):.1f} reserved), {row['tflops']:.0f} TFLOP/s, "
                f"MFU {row['mfu']:.1%}, HFU {row['hfu']:.1%}, {row['new_graphs']} new graphs, "
                f"{row['graph_breaks']} graph breaks",
                flush=True,
            )
        if args.profile and times and device.type == "cuda":
            table, categories = profile_step(net, ema, opt, batch, device, fwd)
            row["profile_ms"] = categories
            print(table, flush=True)
            (out / f"profile_{mode}_b{b}.txt").write_text(table)
        results.append(row)
        (out / "train_step.json").write_text(json.dumps(summary, indent=2))
        del batch

    print(
        "\n| compile | batch | ckpt | step time | peak alloc | reserved | TFLOP/s | MFU | HFU |", flush=True
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "step_s" in r:
            print(
                f"| {r['compile']} | {r['batch']} | {r['checkpointing']} | {r['step_s']:.3f} s | "
                f"{r.get('peak_mem_gib', 0):.1f} GiB | {r.get('reserved_gib', 0):.1f} GiB | "
                f"{r['tflops']:.0f} | "
                f"{r['mfu']:.1%} | {r['hfu']:.1%} |"
            )
        else:
            print(
                f"| {r['compile']} | {r['batch']} | {r['checkpointing']} | "
                f"{r.get('error') or r.get('skipped')} |"
            )
    (out / "train_step.json").write_text(json.dumps(summary, indent=2))
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
