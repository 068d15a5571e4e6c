"""`python -m model.sample`: novel-view videos of a video, a frame folder or a render sample (see --help).

The sampler itself is `model.sampler.sample_latents`; the pipeline around it is `model.novel_views`.
"""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    from profiles.load import add_profile_args

    p = argparse.ArgumentParser(
        prog="python -m model.sample",
        description="Novel-view video synthesis: videos of an object from new viewpoints, from a monocular "
        "video of it. Writes input.mp4, view_NN.mp4 (one per novel view), grid.mp4, grid.png, cameras.json "
        "and generated.tar (the sample fit4d and the evaluation read) into the output folder; for a "
        "render-shard input also <out_dir>/predictions/sample/<key>/, views sampled at the ground-truth "
        "cameras that `python -m evaluation.run` compares (sample.predictions; empty: off). Every knob is "
        "in the `sample` section of pipelines.yaml (--set sample.cameras=orbit --set sample.orbit_views=8).",
    )
    p.add_argument(
        "input",
        help="a video (mp4, webm, mov, gif), a folder of frames, or a render shard (x.tar, x.tar#KEY); with "
        "--batch: a folder of such inputs or a shard whose every sample is one input",
    )
    p.add_argument("--out", default="", help="output folder (default: <out_dir>/samples[/<key>])")
    p.add_argument(
        "--batch", action="store_true", help="one Ray task per group of inputs (model/sample_batch.py)"
    )
    p.add_argument("--address", default=None, help="batch: Ray cluster to join (default: a local one)")
    p.add_argument(
        "--inputs-per-task", type=int, default=4, help="batch: inputs per Ray task (one model load)"
    )
    p.add_argument("--force", action="store_true", help="sample again even where summary.json exists")
    add_profile_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    import json
    import logging
    from pathlib import Path

    from profiles.load import profile_from_args

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    cfg = profile_from_args(args)
    out_root = Path(args.out) if args.out else Path(cfg.out_dir) / "samples"
    if args.batch:
        from model.sample_batch import run_batch

        rows = run_batch(cfg, args.input, out_root, args.address, args.inputs_per_task, args.force)
        failed = [r for r in rows if r["status"] == "failed"]
        print(f"{len(rows)} inputs: {len(rows) - len(failed)} done or skipped, {len(failed)} failed")
        return 1 if failed else 0

    from model.novel_views import DONE_FILE, NovelViewSampler, input_key, resolve_input

    try:
        spec = resolve_input(args.input)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    out_dir = Path(args.out) if args.out else out_root / input_key(spec)
    if (out_dir / DONE_FILE).is_file() and not args.force:
        print(f"{out_dir} is complete ({DONE_FILE} exists); --force samples again")
        return 0
    try:
        summary = NovelViewSampler(cfg).run(spec, out_dir)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}")
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
