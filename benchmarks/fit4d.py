"""4D optimizer benchmark: quality against ground truth and speed (issue 16).

    python benchmarks/fit4d.py SHARD.tar [SHARD.tar ...] --json out.json [--set fit4d.x=y ...]

Per render sample (24-view static orbit rendered by curation.render, e.g. 256x256):
  dense:  16 training views (indices not = 2 mod 3) over all frames; 8 held-out views; PSNR/SSIM on the
          held-out views at every frame (composited on white).
          Also --dense-set (default: 3000 stage-1 iterations, 48^2-ray patches: the 32 dB setting).
  paper:  the input view plus the orthogonal views (azimuth +90/180/270: indices 0, 6, 12, 18 of 24); the
          same 8 held-out views.
  Both fit ground truth: --gt-set applies to them (default: no visibility weighting, which discounts the
  grazing pixels of generated views and only slows a fit to exact ones).
  speed:  the fit4d profile's stage1_iters + stage2_iters at --speed-resolution (targets upsampled). With
          --random-weights full, stage 2 denoises its renders with the real sampler (fit4d/refine.py
          `sampler_refiner`) on the full-size network and encoders with random weights, built and saved first
          under --weights-dir (benchmarks/random_weights.py; ~6 GB); `tiny`: the same path, a CPU dry run.
          Reported per part: stage 1, stage-2 renders, stage-2 denoising (sampler passes, images), stage 2,
          total, peak memory; loading the sampler (once per process) apart.
Prints a table; --json writes every number; --png-dir writes held-out predictions over ground truth.
--budget-s skips what would not fit in the wall-clock budget.
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

from benchmarks.random_weights import save_random_sampler_weights  # noqa: E402
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


def samples_per_iter(stages: dict) -> dict[str, float]:
    """Mean samples the field ran on per iteration, per stage (what an iteration's cost grows with)."""
    return {k: float(np.mean([r["samples"] for r in v["losses"]])) for k, v in stages.items()}


def evaluate(fitter, views: list[int]) -> dict:
    fitter.model.eval()
    r = fitter.render_all(views=np.array(views))
    pred = r["rgb"].reshape(-1, fitter.height, fitter.width, 3)
    gt = fitter.rgb_gt[views].reshape(-1, fitter.height, fitter.width, 3)
    mask_iou = ((r["opacity"] > 0.5) & (fitter.alpha[views] > 0.5)).sum() / (
        (r["opacity"] > 0.5) | (fitter.alpha[views] > 0.5)
    ).sum().clamp(min=1)
    frames = [psnr(r["rgb"][:, f], fitter.rgb_gt[views][:, f]) for f in range(fitter.num_frames)]
    return {
        "psnr": psnr(pred, gt),
        "ssim": ssim(pred, gt),
        "mask_iou": float(mask_iou),
        "psnr_per_frame": [round(p, 2) for p in frames],
    }


def write_comparison(fitter, views: list[int], path: Path) -> None:
    """PNG: for each of `views` (columns), frame 0 and the last frame: prediction row over ground-truth row,
    then 4x the absolute error (the benchmark's held-out images, to look at)."""
    from PIL import Image

    fitter.model.eval()
    r = fitter.render_all(views=np.array(views))
    last = fitter.num_frames - 1
    rows = []
    for f in sorted({0, last}):
        pred = r["rgb"][:, f].clamp(0, 1)
        gt = fitter.rgb_gt[views][:, f]
        err = ((pred - gt).abs() * 4).clamp(0, 1)
        for img in (pred, gt, err):
            rows.append(torch.cat(list(img), dim=1))
    grid = (torch.cat(rows, dim=0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def run_setting(sample, base_overrides, name, train_views, held_out, args) -> dict:
    cfg = load_profile(args.profile, [*base_overrides, f"fit4d.train_views={train_views}"]).fit4d
    data = fit_input_from_render_sample(
        sample, cfg.orbit, cfg.input_view, cfg.render.background, cfg.resolution
    )
    gt = torch.from_numpy(data.rgb)
    after_stage: dict = {}

    def on_stage(stage: str, fitter) -> None:
        # held-out PSNR after each stage (stage 1's render time is counted in fit_s)
        fitter.rgb_gt = gt.to(fitter.device)
        after_stage[stage] = evaluate(fitter, held_out)["psnr"]
        print(f"{sample.key} {name} after {stage}: held-out PSNR {after_stage[stage]:.2f}", flush=True)
        fitter.model.train()

    t0 = time.perf_counter()
    fitter, report = fit(data, cfg, on_stage=on_stage)
    seconds = time.perf_counter() - t0
    res = {
        "setting": name,
        "key": sample.key,
        "resolution": fitter.height,
        "train_views": train_views,
        "held_out": held_out,
        "fit_s": seconds,
        "stage_s": {k: v["seconds"] for k, v in report["stages"].items()},
        "samples_per_iter": samples_per_iter(report["stages"]),
        "final_train_psnr": report["stages"][list(report["stages"])[-1]]["losses"][-1]["psnr"],
        "occupied": float(fitter.occupancy.grid.float().mean()),
        "heldout_psnr_after": after_stage,
    }
    res.update({f"heldout_{k}": v for k, v in evaluate(fitter, held_out).items()})
    res.update({f"train_{k}": v for k, v in evaluate(fitter, train_views[:4]).items()})
    if args.png_dir:
        write_comparison(fitter, held_out[:4], Path(args.png_dir) / f"{sample.key}_{name}.png")
    print(json.dumps(res), flush=True)
    return res


def run_speed(s, args) -> dict:
    """The paper's iterations at --speed-resolution; stage 2 with the sampler on random weights (if asked)."""
    from fit4d.refine import sampler_refiner
    from model.windows import view_groups, window_schedule

    ov = [*args.overrides, f"fit4d.resolution={args.speed_resolution}", *args.speed_set]
    run: dict = {"setting": "speed", "key": s.key, "resolution": args.speed_resolution}
    refiner = None
    denoise: dict = {}
    if args.random_weights != "none":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.perf_counter()
        ov += save_random_sampler_weights(args.weights_dir, args.random_weights, dev)
        run["weights_build_s"] = time.perf_counter() - t0
        pcfg = load_profile(args.profile, ov)
        t0 = time.perf_counter()
        sampler = sampler_refiner(pcfg)
        run["sampler_load_s"] = time.perf_counter() - t0
        sc = pcfg.sample

        def refiner(request):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = sampler(request)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            nv, nf = len(request.target_views()), request.rgb.shape[1]
            windows = window_schedule(max(nf, sc.frames_per_pass), sc.frames_per_pass)
            groups = view_groups(nv, sc.views_per_pass, sc.group_anchors)
            denoise.update(
                seconds=time.perf_counter() - t,
                target_views=nv,
                frames=nf,
                images=nv * nf,
                passes=len(windows) * len(groups),
                latents_per_pass=[len(w.frames) * len(g.slots) for w in windows for g in groups],
                steps=request.num_steps - request.start_step,
                num_steps=request.num_steps,
                sample_resolution=sc.resolution,
                dtype=sc.dtype,
                unet=pcfg.model.unet,
            )
            # random weights denoise into noise: fitting that fills the occupancy grid and times a stage 2
            # no real run has; --keep-stage1-targets times the denoising and keeps the renders as targets
            return request.rgb if args.keep_stage1_targets else out

        refiner.__name__ = "sampler"
    cfg = load_profile(args.profile, ov).fit4d
    data = fit_input_from_render_sample(s, cfg.orbit, cfg.input_view, cfg.render.background, cfg.resolution)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fitter, report = fit(data, cfg, refiner=refiner)
    total = time.perf_counter() - t0
    st = report["stages"]
    s2 = st.get("stage2", {})
    setup = s2.get("refine_seconds", 0.0)
    run.update(
        total_s=total,
        stage1_s=st["stage1"]["seconds"],
        stage1_iters=st["stage1"]["iterations"],
        stage2_s=s2.get("seconds", 0.0),
        stage2_iters=s2.get("iterations", 0),
        samples_per_iter=samples_per_iter(st),
        stage2_setup_s=setup,
        stage2_renders_s=setup - denoise.get("seconds", 0.0),
        stage2_denoise_s=denoise.get("seconds", 0.0),
        denoise=denoise or "none (no --random-weights: stage 2 refits the stage-1 targets)",
        train_views=cfg.train_views,
        frames=int(data.num_frames),
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        refiner=s2.get("refiner", "none"),
        stage2_targets="stage-1 renders (denoised images discarded)"
        if args.keep_stage1_targets and denoise
        else "refined",
    )
    print(json.dumps(run), flush=True)
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+")
    p.add_argument("--profile", default="sv4d2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--settings", default="dense,paper,speed")
    p.add_argument(
        "--gt-set",
        nargs="*",
        default=["fit4d.loss.visibility_weighting=false"],
        help="overrides for the ground-truth fits (dense, paper); give none to clear",
    )
    p.add_argument(
        "--dense-set",
        nargs="*",
        default=["fit4d.stage1_iters=3000", "fit4d.patch_size=48"],
        help="overrides for the dense fit only (after --set and --gt-set); give none to clear",
    )
    p.add_argument("--speed-resolution", type=int, default=576)
    p.add_argument("--speed-set", action="append", default=[], help="extra overrides for the speed run only")
    p.add_argument(
        "--random-weights",
        choices=["none", "full", "tiny"],
        default="none",
        help="speed: stage 2 denoises with the sampler on random weights of this size (none: no denoising)",
    )
    p.add_argument("--weights-dir", default="/tmp/sv4d2_random_weights")
    p.add_argument(
        "--keep-stage1-targets",
        action="store_true",
        help="speed: run and time the denoising, but keep the stage-1 renders as stage-2 targets",
    )
    p.add_argument("--png-dir", default="", help="write held-out prediction / ground truth PNGs here")
    p.add_argument("--budget-s", type=float, default=1e9)
    p.add_argument("--json", default="")
    args = p.parse_args()
    start = time.perf_counter()
    results: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "overrides": args.overrides,
        "gt_set": args.gt_set,
        "dense_set": args.dense_set,
        "runs": [],
    }

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))

    samples = [s for path in args.shards for s in iter_render_samples(path)]
    settings = args.settings.split(",")
    if "speed" in settings and samples:
        results["runs"].append(run_speed(samples[0], args))
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
            extra = [*args.gt_set, *(args.dense_set if name == "dense" else [])]
            results["runs"].append(run_setting(s, [*args.overrides, *extra], name, train, held, args))
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
                f"(stage1 {r['stage1_s']:.1f} s, renders {r['stage2_renders_s']:.1f} s, "
                f"denoising {r['stage2_denoise_s']:.1f} s, stage2 {r['stage2_s']:.1f} s, "
                f"peak {r['peak_mem_gib']:.1f} GiB)"
            )
    save()


if __name__ == "__main__":
    main()
