"""Throughput of the latent stage's encoder as an actor runs it: `model.encoders.Encoders` end to end.

    python benchmarks/encode_actor.py --work /dev/shm/encode_actor            # GPU: full size, bf16
    python benchmarks/encode_actor.py --smoke                                  # this CPU: tiny models

`benchmarks/encode.py` times the models; this times the production class on the same kind of input the
actor gets (uint8 RGBA numpy batches) through the real loading path: a full-size random SD2.1 VAE saved with
`save_pretrained` and a random ViT-H-14 saved as an open_clip checkpoint, loaded by `Encoders` (bf16,
channels_last, compiled VAE with the Triton GroupNorm statistics and deferred convolution biases, matmul
mid-block attention, static batch). Each timed call includes the upload, both encoders and the float32
numpy results on the host. A partial batch checks that the compiled VAE does not recompile (Dynamo's graph
count), and the first images are compared with float32 models loaded from the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encode import time_calls  # noqa: E402
from model.clip_image import clip_preprocess, load_clip  # noqa: E402
from model.encoders import Encoders, EncoderSpec, make_tiny_encoders  # noqa: E402
from model.official_encoders import SD21_VAE_CONFIG  # noqa: E402
from model.vae import composite_on_white, load_vae, vae_input  # noqa: E402


def save_full_size(work: Path) -> dict[str, str]:
    """Random full-size VAE and ViT-H-14 written where `Encoders` loads real weights from."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if not (work / "vae" / "config.json").is_file():
        AutoencoderKL(**SD21_VAE_CONFIG).save_pretrained(work / "vae", safe_serialization=True)
    ckpt = work / "open_clip_pytorch_model.bin"
    if not ckpt.is_file():
        torch.save(open_clip.create_model("ViT-H-14", pretrained=None).state_dict(), ckpt)
    return {
        "vae_path": str(work),
        "vae_subfolder": "vae",
        "clip_model": "ViT-H-14",
        "clip_pretrained": str(ckpt),
    }


def breakdown(enc: Encoders, batches: list[np.ndarray], iters: int) -> dict[str, float]:
    """Median ms per batch of the pieces of ``enc.encode``: the upload from pageable numpy memory (host
    clock), and on the GPU (CUDA events) the VAE, the CLIP tower, and both back to back."""
    dev = enc.device

    def events(fn) -> float:
        return 1e3 * statistics.median(time_calls(lambda _: fn(), [None], iters, warmup=1, cuda=True))

    def upload() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        torch.as_tensor(batches[0]).to(dev)
        torch.cuda.synchronize()
        return 1e3 * (time.perf_counter() - t)

    with torch.inference_mode():
        rgb = composite_on_white(torch.as_tensor(batches[0]).to(dev))
        x = vae_input(rgb).to(enc.dtype).contiguous(memory_format=torch.channels_last)
        clip_in = clip_preprocess(rgb, enc.clip_size).to(enc.dtype)
        return {
            "upload": statistics.median(upload() for _ in range(iters)),
            "vae": events(lambda: enc._static_batches(x)),
            "clip": events(lambda: enc.clip(clip_in)),
            "vae+clip": events(lambda: (enc._static_batches(x), enc.clip(clip_in))),
        }


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="", help="where the random weights are saved (default: a temp dir)")
    parser.add_argument("--batch", type=int, default=32, help="images per call (encode.batch_size)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument(
        "--compile-mode", default="default", choices=["default", "max-autotune-no-cudagraphs"]
    )
    parser.add_argument("--out", default="", help="write the numbers as JSON here")
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU (checks the script)")
    args = parser.parse_args()

    t0 = time.monotonic()
    work = Path(args.work or tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    res = 64 if args.smoke else 576
    paths = make_tiny_encoders(work / "tiny") if args.smoke else save_full_size(work)
    spec = EncoderSpec(
        **paths,
        device=device,
        dtype="float32" if args.smoke else "bfloat16",
        tiny=args.smoke,
        channels_last=True,
        compile=not args.smoke,
        compile_mode=args.compile_mode,
        static_batch=args.batch,
    )
    torch.backends.cudnn.benchmark = True
    enc = Encoders(spec)
    print(f"loaded in {time.monotonic() - t0:.0f} s; deferred conv biases: {enc._deferred_bias}", flush=True)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (args.batch, res, res, 4), dtype=np.uint8) for _ in range(2)]

    t1 = time.monotonic()
    first = enc.encode(batches[0])  # compiles
    warm_s = time.monotonic() - t1
    enc.encode(batches[1])
    times = []
    for i in range(args.iters):
        t = time.perf_counter()
        enc.encode(batches[i % 2])
        times.append(time.perf_counter() - t)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    t = time.perf_counter()
    enc.encode(batches[0][: args.batch // 2 + 1])  # a partial batch: padded, so no new graph
    partial_s = time.perf_counter() - t
    recompiled = counters["stats"]["unique_graphs"] != graphs

    parts = breakdown(enc, batches, args.iters) if device == "cuda" else {}
    print(f"parts (ms per batch): {parts}", flush=True)

    # float32 models from the same files, on the first images
    n = 2
    vae32 = load_vae(paths["vae_path"], "vae", device, "float32")
    clip32 = load_clip(paths["clip_model"], paths["clip_pretrained"], "", device, "float32")
    with torch.inference_mode():
        rgb = composite_on_white(torch.as_tensor(batches[0][:n]).to(device))
        ref_mean = vae32.encode(vae_input(rgb)).latent_dist.mean.float().cpu().numpy()
        ref_clip = clip32(clip_preprocess(rgb, enc.clip_size)).float().cpu().numpy()
    row = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "batch": args.batch,
        "compile_mode": args.compile_mode,
        "img_s": args.batch / statistics.median(times),
        "ms_per_batch": 1e3 * statistics.median(times),
        "first_call_s": round(warm_s, 1),
        "partial_batch_s": round(partial_s, 3),
        "partial_batch_recompiled": recompiled,
        "parts_ms": parts,
        "rel_err_mean": rel_err(first.mean[:n], ref_mean),
        "rel_err_clip": rel_err(first.clip[:n], ref_clip),
        "deferred_bias": enc._deferred_bias,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    if device == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=1))
    print(
        f"\n{'batch':>5s} {'img/s':>8s} {'ms/batch':>9s} {'first call s':>12s} {'partial s':>9s} "
        f"{'rel err':>8s}"
    )
    print(
        f"{args.batch:5d} {row['img_s']:8.1f} {row['ms_per_batch']:9.1f} {row['first_call_s']:12.1f} "
        f"{row['partial_batch_s']:9.3f} {row['rel_err_mean']:8.1e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
