"""Render benchmark: seconds per image and quality of the demo and sv4d2 profiles' Cycles settings.

    .venv/bin/python benchmarks/render.py [--asset ../shared/assets/Fox.glb] [--views 2] [--frames 2]
        [--profiles demo sv4d2] [--set render.samples=48 ...] [--ref-samples 1024] [--work outputs/bench]

For each profile it builds the job the orchestrator builds (curation.asset_task.base_job), keeping the
profile's render settings (resolution, samples, denoiser, bounces, adaptive threshold, threads; `threads: 0`
means all cores) but forcing the CPU device, the static orbit only, and `--views` x `--frames` images of the
asset, and runs `blender_scripts.render_asset` in a subprocess, as the pipeline does.

Quality: PSNR over object pixels (alpha > 0 in either image), both images composited on white, pooled over all
images, against a render of the same views and frames with `--ref-samples` samples, no denoising, no adaptive
sampling, at least 8 bounces and a different seed (so its noise is independent). References are cached
under `--work`, keyed by their job.

Time: `wall s/img` is render time per image (the first image's scene setup amortized, import excluded);
`cpu s/img` is the process CPU time per image divided by the threads used, i.e. the wall time the render
would take on that many otherwise idle cores (the number to trust on a shared machine). `slowest` is
the slowest single image: side views, where the object covers more pixels, cost 2-3x the front views,
while the one-time setup (kernels, shaders, first BVH) adds only ~0.1 s to the first image.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.image_checks import image_stats  # noqa: E402


def run_job(job: dict, work: Path) -> dict:
    out = Path(job["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    job_path = out / "job.json"
    job_path.write_text(json.dumps(job, indent=1))
    proc = subprocess.run(
        [sys.executable, "-m", "blender_scripts.render_asset", "--job", str(job_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
    if proc.returncode != 0 or result.get("status") != "ok":
        raise RuntimeError(f"render failed (rc {proc.returncode}): {result}\n{proc.stderr[-2000:]}")
    return result


def composite_on_white(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rgba = np.asarray(Image.open(path), dtype=np.float64) / 255.0
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha), alpha[..., 0]


def object_psnr(test_dir: Path, ref_dir: Path, names: list[str]) -> tuple[float, float]:
    """(pooled PSNR, worst per-image PSNR) in dB over object pixels, images composited on white."""
    se_total = n_total = 0.0
    worst = np.inf
    for name in names:
        t, at = composite_on_white(test_dir / name)
        r, ar = composite_on_white(ref_dir / name)
        mask = (at > 0) | (ar > 0)
        se = float(((t - r)[mask] ** 2).sum())
        n = float(mask.sum() * 3)
        se_total, n_total = se_total + se, n_total + n
        worst = min(worst, 10 * np.log10(n / max(se, 1e-12)))
    return 10 * np.log10(n_total / max(se_total, 1e-12)), worst


def bench_job(profile: str, overrides: list[str], asset: Path, out: Path, views: int, frames: int) -> dict:
    from curation.asset_task import base_job
    from profiles import load_profile

    cfg = load_profile(profile, overrides)
    job = base_job(cfg, asset.stem, asset, out)
    job["render"].update(device="CPU", orbits=["static"], num_frames=frames, mode="4d")
    job["render"]["orbit"]["num_views"] = views
    return job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--asset", type=Path, default=ROOT.parent / "shared" / "assets" / "Fox.glb")
    parser.add_argument("--profiles", nargs="+", default=["demo", "sv4d2"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile overrides")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--ref-samples", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench")
    parser.add_argument("--no-reference", action="store_true", help="timings only")
    args = parser.parse_args(argv)

    rows = []
    for profile in args.profiles:
        out = args.work / profile
        job = bench_job(profile, args.set, args.asset.resolve(), out, args.views, args.frames)
        res = run_job(job, args.work)
        t = res["timings"]
        r = job["render"]
        threads = r["threads"] or os.cpu_count()
        stats = image_stats(out, res)
        names = [p.relative_to(out).as_posix() for p in sorted(out.glob("static/*.png"))]
        psnr = worst = float("nan")
        if not args.no_reference:
            ref_render = dict(r, samples=args.ref_samples, denoiser="none", adaptive_threshold=0.0)
            ref_render["max_bounces"] = max(8, int(r["max_bounces"]))
            ref = dict(job, render=ref_render, seed=int(job["seed"]) + 1)
            key = hashlib.sha1(
                json.dumps({k: v for k, v in ref.items() if k != "out_dir"}, sort_keys=True).encode()
            )
            ref_dir = args.work / "reference" / key.hexdigest()[:12]
            ref["out_dir"] = str(ref_dir)
            if not all((ref_dir / n).is_file() for n in names) or not (ref_dir / "result.json").is_file():
                print(f"rendering the {args.ref_samples}-sample reference for {profile} ...", flush=True)
                run_job(ref, args.work)
            psnr, worst = object_psnr(out, ref_dir, names)
        rows.append(
            {
                "profile": profile,
                "res": r["resolution"],
                "spp": r["samples"],
                "adaptive": r["adaptive_threshold"],
                "bounces": r["max_bounces"],
                "denoiser": r["denoiser"],
                "threads": threads,
                "images": t["images"],
                "wall_s_per_image": t["render_s"] / t["images"],
                "cpu_s_per_image": t["render_cpu_s"] / t["images"] / threads,
                "wall_s_max": float(max(t["image_s"])),
                "psnr_db": psnr,
                "worst_psnr_db": worst,
                "scale": res["normalization"]["scale"],
                "border_images": stats["border_images"],
                "coverage_min": stats["min_coverage"],
                "coverage_max": stats["max_coverage"],
            }
        )
    header = (
        "| profile | res | spp | adaptive | bounces | denoiser | threads | images "
        "| wall s/img | cpu s/img | slowest s | PSNR dB | worst dB | border imgs | coverage min-max |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        print(
            f"| {r['profile']} | {r['res']} | {r['spp']} | {r['adaptive']} | {r['bounces']} "
            f"| {r['denoiser']} | {r['threads']} | {r['images']} "
            f"| {r['wall_s_per_image']:.2f} | {r['cpu_s_per_image']:.2f} "
            f"| {r['wall_s_max']:.2f} "
            f"| {r['psnr_db']:.2f} | {r['worst_psnr_db']:.2f} "
            f"| {r['border_images']} | {r['coverage_min']:.3f}-{r['coverage_max']:.3f} |"
        )
    (args.work / "bench.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
