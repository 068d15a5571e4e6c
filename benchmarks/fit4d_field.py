"""Where a fit4d iteration's field time goes: the canonical field and each deformation, eager and compiled.

    python benchmarks/fit4d_field.py                      # GPU: 1M points, sv4d2 profile's field
    python benchmarks/fit4d_field.py --points 20000 --no-compile    # CPU dry run

Times, per call on --points random points in the box at random times (the order of one iteration's occupied
samples: 32,768 rays x tens of samples), forward and forward + backward (the table and MLP gradients, as the
training step), and forward + d sigma / dx + backward (the iterations with analytic normals):
  canonical   the 3D hash grid + density/colour MLPs, no deformation (stage 1's static part)
  frequency   the same with D-NeRF's deformation MLP (128 x 3 on sin/cos octaves)
  hash        the same with the 4D hash deformation (MLP 64 x 2), the sv4d2 profile's
  hash_triton the hash field with both encodings in the fused Triton kernels (CUDA only; eager)
the first three through the PyTorch encoding (hash_kernel=torch); each eager and, on CUDA unless
--no-compile, through fit4d.loop.compile_field. Prints a table; --json saves it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit4d.field_components import hash_kernels  # noqa: E402
from fit4d.fields import DynamicNeRF  # noqa: E402
from fit4d.loop import compile_field  # noqa: E402
from profiles.load import load_profile  # noqa: E402

VARIANTS = {
    "canonical": ["fit4d.nerf.hash_kernel=torch"],
    "frequency": [
        "fit4d.nerf.deform_encoding=frequency",
        "fit4d.nerf.deform_hidden_dim=128",
        "fit4d.nerf.deform_layers=3",
        "fit4d.nerf.hash_kernel=torch",
    ],
    "hash": ["fit4d.nerf.hash_kernel=torch"],
    # the same field through the fused Triton kernels (fit4d/field_components/hash_kernels.py), eager only
    "hash_triton": ["fit4d.nerf.hash_kernel=triton"],
}


def timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats * 1e3


def measure(name: str, field, model: DynamicNeRF, x: torch.Tensor, t: torch.Tensor, dev, repeats) -> dict:
    def forward():
        with torch.no_grad():
            field(x, t)

    def train():
        sigma, rgb = field(x, t)
        (sigma.sum() + rgb.sum()).backward()

    def train_normals():
        xr = x.detach().requires_grad_(True)
        sigma, rgb = field(xr, t)
        (grad,) = torch.autograd.grad(sigma.sum(), xr, retain_graph=True)
        (sigma.sum() + rgb.sum()).backward()

    return {
        "variant": name,
        "forward_ms": timed(forward, dev, repeats),
        "train_ms": timed(train, dev, repeats),
        "train_normals_ms": timed(train_normals, dev, repeats),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="sv4d2")
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    rows = []
    for name, sets in VARIANTS.items():
        if name == "hash_triton" and not hash_kernels.available(dev):
            print("hash_triton: skipped (needs CUDA and the triton package)")
            continue
        cfg = load_profile(args.profile, sets).fit4d.nerf
        model = DynamicNeRF(cfg).to(dev)
        model.dynamic = name != "canonical"
        x = (torch.rand(args.points, 3, device=dev) * 2 - 1) * cfg.bound * 0.9
        t = torch.rand(args.points, 1, device=dev)
        rows.append({**measure(name, model, model, x, t, dev, args.repeats), "compiled": False})
        if dev.type == "cuda" and not args.no_compile and name != "hash_triton":
            rows.append(
                {**measure(name, compile_field(model), model, x, t, dev, args.repeats), "compiled": True}
            )
    where = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
    print(f"{args.points} points on {where}, ms per call")
    print(f"{'variant':10} {'compiled':8} {'forward':>8} {'fwd+bwd':>8} {'+normals':>9}")
    for r in rows:
        print(
            f"{r['variant']:10} {str(r['compiled']):8} {r['forward_ms']:8.2f} {r['train_ms']:8.2f} "
            f"{r['train_normals_ms']:9.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"points": args.points, "device": str(dev), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
