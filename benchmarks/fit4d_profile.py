"""Where a fit4d training iteration's time goes: ms per iteration in each phase of stage 1, then the
torch profiler's top operators over a few iterations with normals.

    python benchmarks/fit4d_profile.py outputs/benchdata/fox.tar [--set fit4d.compile=true ...]

The first render sample of the shard, the dense split (16 training views of 24), the profile's fit4d
section; runs the static part (frame 0), then iterations with the visibility weights' normals, then
profiles --profile-iters more. Prints ms/it and occupied fraction per phase and two tables (by CUDA time,
by CPU time). One fit per process (the GPU's time is what it measures).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit4d.data import fit_input_from_render_sample  # noqa: E402
from fit4d.loop import Fitter  # noqa: E402
from profiles.load import load_profile  # noqa: E402
from shards.reader import iter_render_samples  # noqa: E402


def run_phase(fitter: Fitter, iters: range, static: bool, dynamic_iters: int, label: str) -> None:
    """Iterations as `Fitter.run_stage` runs them (occupancy updates included), timed as a whole."""
    rc = fitter.cfg.render
    fitter.sync()
    t0 = time.perf_counter()
    samples = []
    for it in iters:
        fitter.iteration = it
        d_it = max(it - fitter.cfg.static_iters, 0)
        if it >= rc.occupancy_warmup and it % rc.occupancy_update_every == 0:
            fitter.model.dynamic = not static
            fitter.update_occupancy(np.zeros(1, np.int64) if static else np.arange(fitter.num_frames))
        views, frames = fitter.sample_batch(d_it, dynamic_iters, static)
        samples.append(fitter.step(views, frames, static=static)["samples"])
    fitter.sync()
    ms = (time.perf_counter() - t0) / len(iters) * 1e3
    occupied = float(fitter.occupancy.grid.float().mean())
    print(f"{label}: {ms:.1f} ms/it, {np.mean(samples):.0f} field samples/it, occupied {occupied:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shard")
    p.add_argument("--profile", default="sv4d2")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--dynamic-iters", type=int, default=100, help="timed iterations with normals")
    p.add_argument("--profile-iters", type=int, default=20)
    args = p.parse_args()
    from torch.profiler import ProfilerActivity, profile

    sample = next(iter(iter_render_samples(args.shard)))
    train = [v for v in range(24) if v % 3 != 2]
    cfg = load_profile(args.profile, [f"fit4d.train_views={train}", *args.overrides]).fit4d
    data = fit_input_from_render_sample(
        sample, cfg.orbit, cfg.input_view, cfg.render.background, cfg.resolution
    )
    fitter = Fitter(data, cfg)
    fitter.stage = "stage1"
    s0, total = cfg.static_iters, cfg.stage1_iters - cfg.static_iters
    run_phase(fitter, range(0, s0), True, total, f"static, iterations 0-{s0}")
    s1 = s0 + args.dynamic_iters
    run_phase(fitter, range(s0, s1), False, total, f"dynamic with normals, iterations {s0}-{s1}")
    s2 = s1 + args.profile_iters
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_phase(fitter, range(s1, s2), False, total, f"profiled, iterations {s1}-{s2}")
    averages = prof.key_averages()
    print(averages.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    print(averages.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60))


if __name__ == "__main__":
    main()
