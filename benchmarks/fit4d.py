"""4D optimizer benchmark: quality against ground truth and speed (issue 16).

    python benchmarks/fit4d.py SHARD.tar [SHARD.tar ...] --json out.json [--set fit4d.x=y ...]

Per render sample (24-view static orbit rendered by curation.render, e.g. 256x256):
  dense:  16 training views (indices not = 2 mod 3) over all frames; 8 held-out views; PSNR/SSIM on the
          held-out views at every frame (composited on white).
  paper:  the input view plus the orthogonal views (azimuth +90/180/270: indices 0, 6, 12, 18 of 24); the
          same 8 held-out views.
  speed:  the fit4d profile's stage1_iters + stage2_iters at --speed-resolution (targets upsampled), without
          the stage-2 denoising (the sampler's start-from-image mode does not exist yet).
Prints a table; --json writes every number. --budget-s skips what would not fit in the wall-clock budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit4d.data import fit_input_from_render_sample  # noqa: E402
from fit4d.loop import fit  # noqa: E402
from profiles.load import load_profile  # noqa: E402
from shards.reader import iter_render_samples  # noqa: E402


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp(min=1e-12)))


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of (N, H, W, 3) images (Gaussian window 11, sigma 1.5, as Wang et al.)."""
    x, y = a.permute(0, 3, 1, 2).double(), b.permute(0, 3, 1, 2).double()
    g = torch.exp(-((torch.arange(11, dtype=torch.float64, device=x.device) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum())[:, None] * (g / g.sum())[None, :]
    w = g.expand(3, 1, 11, 11)

    def f(t):
        return torch.nn.functional.conv2d(t, w, groups=3)

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def evaluate(fitter, views: list[int]) -> dict:
    fitter.model.eval()
    r = fitter.render_all(views=np.array(views))
    pred = r["rgb"].reshape(-1, fitter.height, fitter.width, 3)
    gt = fitter.rgb_gt[views].reshape(-1, fitter.height, fitter.width, 3)
    mask_iou = ((r["opacity"] > 0.5) & (fitter.alpha[views] > 0.5)).sum() / (
        (r["opacity"] > 0.5) | (fitter.alpha[views] > 0.5)
    ).sum().clamp(min=1)
    return {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt), "mask_iou": float(mask_iou)}


def run_setting(sample, base_overrides, name, train_views, held_out, args) -> dict:
    cfg = load_profile(args.profile, [*base_overrides, f"fit4d.train_views={train_views}"]).fit4d
    data = fit_input_from_render_sample(
        sample, cfg.orbit, cfg.input_view, cfg.render.background, cfg.resolution
    )
    t0 = time.perf_counter()
    fitter, report = fit(data, cfg)
    seconds = time.perf_counter() - t0
    fitter.rgb_gt = torch.from_numpy(data.rgb).to(fitter.device)
    res = {
        "setting": name,
        "key": sample.key,
        "resolution": fitter.height,
        "train_views": train_views,
        "held_out": held_out,
        "fit_s": seconds,
        "stage_s": {k: v["seconds"] for k, v in report["stages"].items()},
        "final_train_psnr": report["stages"][list(report["stages"])[-1]]["losses"][-1]["psnr"],
        "occupied": float(fitter.occupancy.grid.float().mean()),
    }
    res.update({f"heldout_{k}": v for k, v in evaluate(fitter, held_out).items()})
    res.update({f"train_{k}": v for k, v in evaluate(fitter, train_views[:4]).items()})
    print(json.dumps(res), flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+")
    p.add_argument("--profile", default="sv4d2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--settings", default="dense,paper,speed")
    p.add_argument("--speed-resolution", type=int, default=576)
    p.add_argument("--speed-set", action="append", default=[], help="extra overrides for the speed run only")
    p.add_argument("--budget-s", type=float, default=1e9)
    p.add_argument("--json", default="")
    args = p.parse_args()
    start = time.perf_counter()
    results: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "overrides": args.overrides,
        "runs": [],
    }

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    samples = [s for path in args.shards for s in iter_render_samples(path)]
    settings = args.settings.split(",")
    if "speed" in settings and samples:
        s = samples[0]
        ov = [*args.overrides, f"fit4d.resolution={args.speed_resolution}", *args.speed_set]
        cfg = load_profile(args.profile, ov).fit4d
        data = fit_input_from_render_sample(
            s, cfg.orbit, cfg.input_view, cfg.render.background, cfg.resolution
        )
        t0 = time.perf_counter()
        fitter, report = fit(data, cfg)
        total = time.perf_counter() - t0
        st = report["stages"]
        run = {
            "setting": "speed",
            "key": s.key,
            "resolution": args.speed_resolution,
            "total_s": total,
            "stage1_s": st["stage1"]["seconds"],
            "stage1_iters": st["stage1"]["iterations"],
            "stage2_s": st.get("stage2", {}).get("seconds", 0.0),
            "stage2_iters": st.get("stage2", {}).get("iterations", 0),
            "stage2_render_all_s": st.get("stage2", {}).get("refine_seconds", 0.0),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
            "note": "stage-2 denoising not included (no sampler start-from-image mode yet)",
        }
        results["runs"].append(run)
        print(json.dumps(run), flush=True)
        save()
    n = None
    for s in samples:
        n = int(s.meta["num_views"])
        held = [v for v in range(n) if v % 3 == 2]
        dense = [v for v in range(n) if v % 3 != 2]
        paper = [0, n // 4, n // 2, 3 * n // 4]
        for name, train in (("dense", dense), ("paper", paper)):
            if name not in settings:
                continue
            if time.perf_counter() - start > args.budget_s:
                results["runs"].append({"setting": name, "key": s.key, "skipped": "budget"})
                continue
            results["runs"].append(run_setting(s, args.overrides, name, train, held, args))
            save()
    print(f"{'setting':8} {'key':14} {'res':>4} {'fit s':>7} {'PSNR':>6} {'SSIM':>6} {'IoU':>5}")
    for r in results["runs"]:
        if "heldout_psnr" in r:
            print(
                f"{r['setting']:8} {r['key']:14} {r['resolution']:4d} {r['fit_s']:7.1f} "
                f"{r['heldout_psnr']:6.2f} {r['heldout_ssim']:6.3f} {r['heldout_mask_iou']:5.3f}"
            )
        elif r.get("setting") == "speed":
            print(
                f"speed    {r['key']:14} {r['resolution']:4d} {r['total_s']:7.1f}  "
                f"(stage1 {r['stage1_s']:.1f} s, stage2 {r['stage2_s']:.1f} s)"
            )
    save()


if __name__ == "__main__":
    main()
