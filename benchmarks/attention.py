"""Attention-kernel benchmark for the SV4D 2.0 UNet's training step (needs a CUDA GPU; not a test).

    python benchmarks/attention.py --batch 2                  # every SDPA shape of the full-size network
    python benchmarks/attention.py --batch 2 --backends flash cudnn
    python benchmarks/attention.py --camera-attention snapshot   # the released sv4d2 layout (V-token camera)
    python benchmarks/attention.py --camera-attention views --frames 5 --views 8   # sv4d2_8views

The shapes are recorded, not written down: the full-size UNet runs once on the meta device with
``model.attention.sdpa`` patched to log every call's (q, k) shapes, so the table always matches the network
(spatial, 3D and frame self-attention, the cross-attentions to the CLIP token and to the reference views).
Each distinct shape is then timed on the GPU in bf16, forward and forward + backward, with each SDPA backend
(through ``torch.nn.attention.sdpa_kernel``), chunked exactly as the network's ``sdpa``.

The camera ("3D") attention's shapes follow ``--camera-attention`` (model/config.py): ``paper`` attends over
V*H*W tokens per frame, ``snapshot`` / ``views`` over V tokens per (frame, pixel group).

The step estimate per backend: sum over calls of forward + backward, plus one more forward for the calls
that activation checkpointing recomputes (``attention`` policy: all but the self-attentions of >=
``model.blocks.LONG_ATTENTION_KEYS`` keys, so in the snapshot / views modes the camera attention too).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import model.attention as attention  # noqa: E402
from model.blocks import LONG_ATTENTION_KEYS  # noqa: E402
from model.config import CAMERA_ATTENTION_MODES, get_config  # noqa: E402
from model.flops import _meta_inputs  # noqa: E402
from model.unet import SV4D2UNet  # noqa: E402

BACKENDS = ("flash", "cudnn", "efficient", "math")


def saved_by_attention_policy(q_shape: tuple[int, ...], k_shape: tuple[int, ...]) -> bool:
    """Whether the "attention" checkpoint policy keeps this SDPA call's output (model.blocks)."""
    return k_shape == q_shape and k_shape[2] >= LONG_ATTENTION_KEYS


def record_calls(
    unet: str, batch: int, frames: int, views: int, hw: int, camera_attention: str = "paper"
) -> Counter:
    """(q shape, k shape) -> number of SDPA calls in one forward of the network (meta device)."""
    calls: Counter = Counter()
    real = attention.sdpa

    def spy(q, k, v):
        calls[(tuple(q.shape), tuple(k.shape))] += 1
        return real(q, k, v)

    cfg = get_config(unet).replace(camera_attention=camera_attention)
    with torch.device("meta"):
        net = SV4D2UNet(cfg)
    attention.sdpa = spy
    try:
        with torch.no_grad():
            net(**_meta_inputs(cfg, batch, frames, views, hw, hw, False))
    finally:
        attention.sdpa = real
    return calls


def _backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def time_ms(fn, iters: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def bench_shape(q_shape, k_shape, backend: str, iters: int) -> dict:
    """Forward and forward+backward milliseconds of one SDPA call of these shapes with one backend."""
    from torch.nn.attention import sdpa_kernel

    n, h, lq, d = q_shape
    lk = k_shape[2]
    g = torch.Generator(device="cuda").manual_seed(0)

    def make(length):  # the network's layout: (N, L, heads, d) viewed as (N, heads, L, d)
        t = torch.randn(n, length, h, d, device="cuda", dtype=torch.bfloat16, generator=g)
        return t.transpose(1, 2).requires_grad_(True)

    q, k, v = make(lq), make(lk), make(lk)
    grad = torch.randn(n, h, lq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = 4.0 * n * h * lq * lk * d
    try:
        with sdpa_kernel([_backend(backend)]):

            def fwd():
                with torch.no_grad():
                    attention.sdpa(q, k, v)

            def fwd_bwd():
                out = attention.sdpa(q, k, v)
                torch.autograd.grad(out, (q, k, v), grad)

            f = time_ms(fwd, iters)
            fb = time_ms(fwd_bwd, iters)
    except (RuntimeError, torch.OutOfMemoryError) as e:
        torch.cuda.empty_cache()
        return {"error": str(e).strip().splitlines()[0][:160]}
    return {
        "fwd_ms": f,
        "fwd_bwd_ms": fb,
        "fwd_tflops": flops / f / 1e9,
        "fwd_bwd_tflops": 3.5 * flops / fb / 1e9,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unet", default="sv4d2")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--size", type=int, default=576)
    p.add_argument("--camera-attention", choices=CAMERA_ATTENTION_MODES, default="paper")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=["flash", "cudnn", "efficient"])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU")
    calls = record_calls(
        args.unet, args.batch, args.frames, args.views, args.size // 8, args.camera_attention
    )
    print(
        f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {args.batch}, "
        f"camera attention {args.camera_attention}"
    )
    print(f"{sum(calls.values())} SDPA calls per forward, {len(calls)} distinct shapes\n")
    rows = []
    totals = {b: 0.0 for b in args.backends}
    best_total = 0.0
    for (qs, ks), count in sorted(calls.items(), key=lambda kv: -kv[0][0][0] * kv[0][0][2] * kv[0][1][2]):
        recomputed = not saved_by_attention_policy(qs, ks)
        row = {"q": qs, "k": ks, "calls": count, "recomputed": recomputed}
        for b in args.backends:
            row[b] = bench_shape(qs, ks, b, args.iters)
        per_step = {
            b: count * (row[b]["fwd_bwd_ms"] + (row[b]["fwd_ms"] if recomputed else 0.0))
            for b in args.backends
            if "fwd_ms" in row[b]
        }
        for b in args.backends:
            totals[b] += per_step.get(b, float("nan"))
        best_total += min(per_step.values()) if per_step else float("nan")
        row["per_step_ms"] = per_step
        rows.append(row)
        cells = " | ".join(
            f"{row[b]['fwd_ms']:.2f} / {row[b]['fwd_bwd_ms']:.2f} ({row[b]['fwd_tflops']:.0f}/"
            f"{row[b]['fwd_bwd_tflops']:.0f})"
            if "fwd_ms" in row[b]
            else "n/a"
            for b in args.backends
        )
        print(f"| q {qs} k {ks[2]} | {count} | {'yes' if recomputed else 'no'} | {cells} |", flush=True)
    print("\ncolumns per backend: fwd ms / fwd+bwd ms (fwd TFLOP/s / fwd+bwd TFLOP/s, bwd = 2.5x fwd FLOPs)")
    for b in args.backends:
        print(f"attention per training step, {b}: {totals[b] / 1e3:.3f} s")
    print(f"attention per training step, best backend per shape: {best_total / 1e3:.3f} s")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "attention.json").write_text(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
                "batch": args.batch,
                "camera_attention": args.camera_attention,
                "rows": rows,
                "totals_ms": totals,
                "best_total_ms": best_total,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
