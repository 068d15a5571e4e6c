"""Data-parallel scaling of the real trainer (`python -m model.train` under torchrun) on one host.

    python benchmarks/train_scaling.py --gpus 1 8 --steps 10            # full size, synthetic latent shards
    python benchmarks/train_scaling.py --gpus 1 --steps 6 --compile none --resume-check

For each GPU count N: `torchrun --standalone --nproc_per_node=N -m model.train` with the `sv4d2`
profile (full-size network, 576x576 latents, V=4, F=12, bf16, activation checkpointing, DDP) on synthetic
latent shards in the shard contract (`shards.synthetic`, 24 views x 24 frames per object, written first),
stage 4d. Step times come from the trainer's own `logs/train_4d/metrics.jsonl`: median over the steps after
`--skip` (compilation and cuDNN autotuning happen in the first ones). Scaling efficiency at N = per-GPU
examples/s at N / per-GPU examples/s of the first run (the smallest N).

`--resume-check`: the largest run's final checkpoint (written by N GPUs) is resumed for one more step on N
GPUs, and the checkpoint that resume writes (also by N GPUs) for one more on 1 GPU; each must continue at the
next step with a finite loss. Every resume writes a
new checkpoint before the old one is pruned, so this needs free disk for a second checkpoint (~32 GB at full
size: fp32 weights, EMA and AdamW moments); it is skipped, saying so, when the disk is short.

NCCL_NVLS_ENABLE=0 is set for every run (NVLink multicast off). Results: printed table and
<out>/train_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.checkpoint import latest_checkpoint, load_train_state  # noqa: E402
from shards.layout import LATENTS, SHARD_GLOB  # noqa: E402
from shards.synthetic import write_latent_shards  # noqa: E402


def write_profile(path: Path, out_dir: Path, data: str, args: argparse.Namespace) -> None:
    """A pipelines file = the repository's plus a `scaling` profile inheriting `sv4d2`."""
    profiles = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    profiles["scaling"] = {
        "inherits": "sv4d2",
        "out_dir": str(out_dir),
        "model": {"init_checkpoint": ""},
        "train": {
            "batch_size": args.batch,
            "num_workers": args.workers,
            "compile": args.compile,
            "compile_min_tokens": args.min_compile_tokens,
            "log_every": 1,
            "ckpt_every": 10**9,  # the final step only
            "keep_checkpoints": 1,
            "progress": False,
            "stages": [
                {
                    "name": "4d",
                    "steps": args.steps,
                    "data": [data],
                    "lr": 5.0e-5,
                    "num_views": 4,
                    "num_frames": 12,
                    "ref_mask_prob": 0.5,
                }
            ],
        },
    }
    path.write_text(yaml.safe_dump(profiles, sort_keys=False))


def run_trainer(pipelines: Path, gpus: int, log: Path, extra: list[str]) -> float:
    """torchrun the trainer; returns wall seconds; raises with the log's tail on failure."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "model.train",
        "--pipelines",
        str(pipelines),
        "--profile",
        "scaling",
        "--stage",
        "4d",
        *extra,
    ]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": str(ROOT)}
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"trainer on {gpus} GPU(s) failed (exit {proc.returncode}):\n{tail}")
    return wall


def read_metrics(out_dir: Path) -> list[dict]:
    path = out_dir / "logs" / "train_4d" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", type=int, nargs="+", default=[1], help="GPU counts to run, in order")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--skip", type=int, default=2, help="first steps left out of the step-time median")
    p.add_argument("--batch", type=int, default=2, help="examples per GPU per step")
    p.add_argument("--objects", type=int, default=8, help="synthetic objects (~95 MB each at full size)")
    p.add_argument("--latent-hw", type=int, default=72)
    p.add_argument("--clip-dim", type=int, default=1024, help="CLIP embedding size (ViT-H-14: 1024)")
    p.add_argument("--workers", type=int, default=4, help="data-loader workers per GPU")
    p.add_argument("--compile", choices=["none", "regional"], default="regional")
    p.add_argument("--min-compile-tokens", type=int, default=0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed on to the trainer (e.g. model.unet=tiny train.device=cpu for a CPU smoke run)",
    )
    p.add_argument("--resume-check", action="store_true", help="resume the last run on 1 GPU, then on N")
    p.add_argument("--out", default=os.environ.get("OUT", "scaling_out"))
    p.add_argument("--work", default="/tmp/sv4d2_scaling", help="shards and run folders (large)")
    args = p.parse_args(argv)

    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    latents = work / LATENTS
    if not list(latents.glob(SHARD_GLOB)):
        write_latent_shards(
            latents,
            num_shards=args.objects,
            per_shard=1,
            views=24,
            frames=24,
            h=args.latent_hw,
            clip_dim=args.clip_dim,
        )
    print(f"[{time.perf_counter() - t0:5.0f} s] {args.objects} synthetic objects in {latents}", flush=True)

    summary: dict = {"args": vars(args), "runs": []}
    base_rate = None
    gpu_counts = sorted(set(args.gpus))  # the smallest count is the efficiency baseline
    for n in gpu_counts:
        run_dir = work / f"run_{n}gpu"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        pipelines = run_dir / "pipelines.yaml"
        write_profile(pipelines, run_dir, str(latents / SHARD_GLOB), args)
        sets = [x for kv in args.set for x in ("--set", kv)]
        wall = run_trainer(pipelines, n, out / f"train_{n}gpu.log", sets)
        rows = read_metrics(run_dir)
        timed = [r for r in rows if r["step"] > args.skip]
        step_s = statistics.median(r["step_time_s"] for r in timed) if timed else float("nan")
        # the trainer's own examples/s: global batch (per-GPU batch x accumulation x world size) / step time
        rate = statistics.median(r["examples_per_s"] for r in timed) if timed else float("nan")
        if base_rate is None:
            base_rate = rate / n
        res = {
            "gpus": n,
            "steps": len(rows),
            "step_s": step_s,
            "step_times": [r["step_time_s"] for r in rows],
            "examples_per_s": rate,
            "examples_per_s_per_gpu": rate / n,
            "peak_mem_gib": max((r.get("peak_mem_gib", 0.0) for r in rows), default=0.0),
            "losses": [r["loss"] for r in rows],
            "wall_s": wall,
        }
        res["scaling_efficiency"] = (rate / n) / base_rate
        summary["runs"].append(res)
        print(
            f"[{time.perf_counter() - t0:5.0f} s] {n} GPU(s): step {step_s:.3f} s, {rate:.2f} examples/s "
            f"({rate / n:.2f} per GPU), peak {res['peak_mem_gib']:.1f} GiB, "
            f"efficiency {res['scaling_efficiency']:.1%}, run {wall:.0f} s",
            flush=True,
        )
        (out / "train_scaling.json").write_text(json.dumps(summary, indent=1))

    if args.resume_check and summary["runs"]:
        n = gpu_counts[-1]
        run_dir = work / f"run_{n}gpu"
        ckpt = run_dir / "checkpoints" / "4d"
        size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
        free = shutil.disk_usage(run_dir).free
        checks = []
        if free < 1.1 * size:
            msg = f"skipped: {free / 2**30:.0f} GiB free < one more checkpoint of {size / 2**30:.0f} GiB"
            checks.append({"resume": msg})
            print(f"resume check {msg}", flush=True)
        else:
            # N GPUs first, then 1 (once when N = 1): each resume prunes the checkpoint it loaded, so this
            # order makes both load a checkpoint written by N GPUs (the run's, then the N-GPU resume's).
            for k, gpus in enumerate(dict.fromkeys((n, 1))):
                latest_dir = latest_checkpoint(ckpt)
                latest = latest_dir.name
                written_by = load_train_state(latest_dir)["world_size"]
                before = len(read_metrics(run_dir))
                wall = run_trainer(
                    run_dir / "pipelines.yaml",
                    gpus,
                    out / f"resume_{gpus}gpu.log",
                    ["--resume", "--steps", str(args.steps + k + 1), *sets],
                )
                new = read_metrics(run_dir)[before:]
                ok = [r["step"] for r in new] == [args.steps + k + 1] and all(
                    r["loss"] == r["loss"] for r in new
                )
                checks.append(
                    {
                        "checkpoint": latest,
                        "written_by_gpus": written_by,
                        "resumed_on_gpus": gpus,
                        "rows": new,
                        "ok": ok,
                        "wall_s": wall,
                    }
                )
                print(
                    f"resume of {latest} (written by {written_by} GPU(s)) on {gpus} GPU(s): "
                    f"{'OK' if ok else 'FAILED'} {new}, {wall:.0f} s",
                    flush=True,
                )
        summary["resume_checks"] = checks
        summary["checkpoint_gib"] = size / 2**30
        (out / "train_scaling.json").write_text(json.dumps(summary, indent=1))

    print("\n| GPUs | step time | examples/s | per GPU | efficiency | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in summary["runs"]:
        print(
            f"| {r['gpus']} | {r['step_s']:.3f} s | {r['examples_per_s']:.2f} | "
            f"{r['examples_per_s_per_gpu']:.2f} | {r['scaling_efficiency']:.1%} | {r['peak_mem_gib']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
