"""Seconds per object of the evaluation at paper scale: 8 views x 21 frames x 576x576, one system.

    python benchmarks/evaluate.py --out benchmarks/results/evaluate_h200.json     # GPU: paper scale
    python benchmarks/evaluate.py --smoke                                          # this CPU: tiny sizes

Times `evaluation.evaluate.prepare_ground_truth` + `evaluate_object` (the runner's per-object work) with
random-weight networks of the real architectures, loaded through the real loaders: LPIPS with torchvision
VGG16 and AlexNet backbones saved as checkpoint files (`load_lpips`), open_clip ViT-B-32 saved as a checkpoint
(`load_clip`), and an Inception-I3D (Carreira & Zisserman; the layer sizes of the FVD I3D, 400 logits)
written here, scripted and saved as TorchScript (`load_i3d`), called with the published I3D's signature.
Random weights change no shape and no FLOP, so the time is the real one. Also times the parts (image
metrics, each LPIPS, CLIP, I3D) and, on the host, decoding one object's 168 prediction PNGs
(`read_prediction`) and the set-level Frechet distance of 400-d features (scipy sqrtm).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation import networks as N  # noqa: E402
from evaluation.evaluate import Settings, evaluate_object, prepare_ground_truth  # noqa: E402
from evaluation.fvd import clip_indices, fvd_from_features  # noqa: E402
from evaluation.inputs import read_prediction, write_prediction  # noqa: E402
from evaluation.metrics import composite_on_white, image_metrics  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# Inception-I3D (the FVD network's architecture; random weights)


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, k: tuple[int, int, int] = (1, 1, 1), s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, k, s, padding=tuple(x // 2 for x in k), bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Mixed(nn.Module):
    """Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1, concatenated."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1 = nn.Sequential(Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3)))
        self.b2 = nn.Sequential(Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3)))
        self.b3 = nn.Sequential(nn.MaxPool3d(3, 1, 1), Unit3D(cin, c[5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x)], dim=1)


class InceptionI3D(nn.Module):
    def __init__(self, classes: int = 400) -> None:
        super().__init__()
        pool_hw = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.features = nn.Sequential(
            Unit3D(3, 64, (7, 7, 7), 2),
            pool_hw,
            Unit3D(64, 64),
            Unit3D(64, 192, (3, 3, 3)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            Mixed(192, (64, 96, 128, 16, 32, 32)),
            Mixed(256, (128, 128, 192, 32, 96, 64)),
            nn.MaxPool3d(3, 2, 1),
            Mixed(480, (192, 96, 208, 16, 48, 64)),
            Mixed(512, (160, 112, 224, 24, 64, 64)),
            Mixed(512, (128, 128, 256, 24, 64, 64)),
            Mixed(512, (112, 144, 288, 32, 64, 64)),
            Mixed(528, (256, 160, 320, 32, 128, 128)),
            nn.MaxPool3d(2, 2, 0),
            Mixed(832, (256, 160, 320, 32, 128, 128)),
            Mixed(832, (384, 192, 384, 48, 128, 128)),
        )
        self.logits = nn.Conv3d(1024, classes, 1)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        h = F.avg_pool3d(self.features(x), (2, 7, 7), 1)
        out = self.logits(h).mean(dim=(2, 3, 4))
        return out if return_features else out.softmax(dim=-1)


# ----------------------------------------------------------------------------------------------------------


def save_networks(work: Path, tiny: bool) -> dict[str, str]:
    """Random networks written where the loaders read real weights from."""
    if tiny:
        return N.make_tiny_networks(work / "tiny", lpips_nets=("vgg", "alex"))
    import open_clip
    import torchvision

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    paths = {}
    for net, arch in (("vgg", "vgg16"), ("alex", "alexnet")):
        paths[f"lpips_{net}_path"] = str(work / f"{arch}.pth")
        feats = getattr(torchvision.models, arch)(weights=None).features  # what LPIPS reads of the file
        torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, paths[f"lpips_{net}_path"])
    paths["clip_model"], paths["clip_model_config"] = "ViT-B-32", ""
    paths["clip_pretrained"] = str(work / "open_clip_vit_b_32.bin")
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), paths["clip_pretrained"])
    paths["i3d_path"] = str(work / "i3d_torchscript.pt")
    torch.jit.script(InceptionI3D().eval()).save(paths["i3d_path"])
    return paths


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def make_object(views: int, frames: int, res: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth RGBA (an opaque textured square moving on transparency) and a noisy RGB prediction."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((views, frames, res, res, 4), np.uint8)
    s = res // 2
    for v in range(views):
        for f in range(frames):
            y, x = res // 8 + f * res // (4 * frames), res // 8 + v * res // (4 * views)
            gt[v, f, y : y + s, x : x + s] = rng.integers(0, 256, (s, s, 4), dtype=np.uint8)
            gt[v, f, y : y + s, x : x + s, 3] = 255
    rgb = gt[..., :3].astype(np.float32) * (gt[..., 3:] / 255.0) + 255.0 * (1.0 - gt[..., 3:] / 255.0)
    pred = np.clip(rgb + rng.normal(0, 12.0, rgb.shape), 0, 255).astype(np.uint8)
    return gt, pred


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and tiny networks, on the CPU")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--frames", type=int, default=21)
    parser.add_argument("--res", type=int, default=576)
    parser.add_argument("--objects", type=int, default=3, help="timed objects after one warm-up object")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default="", help="folder for the random weight files (default: a temp dir)")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.views, args.frames, args.res, args.objects = 2, 3, 64, 1
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_eval_"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    paths = save_networks(work, tiny=args.smoke)
    nets = N.load_networks(
        {"vgg": paths["lpips_vgg_path"], "alex": paths["lpips_alex_path"]},
        paths["clip_model"],
        paths["clip_pretrained"],
        paths["clip_model_config"],
        paths["i3d_path"],
        device=device,
    )
    load_s = time.perf_counter() - t0
    settings = Settings(batch_size=args.batch_size, device=device)
    objs = [make_object(args.views, args.frames, args.res, seed) for seed in range(args.objects + 1)]

    def one(i: int) -> dict:
        gt, pred = objs[i]
        prep = prepare_ground_truth(gt, nets, settings)
        metrics, _, _ = evaluate_object(pred, prep, nets, settings)
        return metrics

    warm = timed(lambda: one(0), device, 1)[0]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    per_object = [timed(lambda i=i: one(i), device, 1)[0] for i in range(1, args.objects + 1)]
    metrics = one(1)

    # the parts, on object 1 (each also runs inside the timings above)
    gt, pred = objs[1]
    g_rgb, g_a = composite_on_white(torch.from_numpy(gt).to(device).flatten(0, 1))
    p_rgb, _ = composite_on_white(torch.from_numpy(pred).to(device).flatten(0, 1))
    bs = args.batch_size
    small = F.interpolate(g_rgb, size=(224, 224), mode="bilinear", antialias=True)
    fv4d_clip = small[clip_indices(len(small), settings.fvd_min_frames)]
    parts = {
        "image_metrics": lambda: [
            image_metrics(p_rgb[i : i + bs], g_rgb[i : i + bs], g_a[i : i + bs])
            for i in range(0, len(p_rgb), bs)
        ],
        "lpips_vgg": lambda: N.lpips_distance(nets.lpips["vgg"], p_rgb, g_rgb, bs),
        "lpips_alex": lambda: N.lpips_distance(nets.lpips["alex"], p_rgb, g_rgb, bs),
        "clip_2_sides": lambda: (
            N.clip_embeddings(nets.clip, p_rgb, bs),
            N.clip_embeddings(nets.clip, g_rgb, bs),
        ),
        "i3d_fv4d_1_side": lambda: N.i3d_features(nets.i3d, [fv4d_clip], device),
    }
    part_s = {name: statistics.median(timed(fn, device, 3)) for name, fn in parts.items()}

    # host side: decoding one object's prediction PNGs, set-level Frechet distance of 400-d features
    with tempfile.TemporaryDirectory() as tmp:
        v_idx, f_idx = list(range(args.views)), list(range(args.frames))
        write_prediction(Path(tmp) / "obj", pred, v_idx, f_idx)
        png_s = statistics.median(
            timed(lambda: read_prediction(Path(tmp) / "obj", v_idx, f_idx, (args.res, args.res)), "cpu", 3)
        )
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 800, 400))
    frechet_s = timed(lambda: fvd_from_features(feats[0], feats[1]), "cpu", 1)[0]

    result = {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "shape": {"views": args.views, "frames": args.frames, "res": args.res},
        "batch_size": args.batch_size,
        "networks": "random LPIPS VGG16 + AlexNet, open_clip ViT-B-32, Inception-I3D (TorchScript)"
        if not args.smoke
        else "tiny",
        "load_s": round(load_s, 2),
        "warmup_object_s": round(warm, 3),
        "seconds_per_object": [round(s, 3) for s in per_object],
        "median_seconds_per_object": round(statistics.median(per_object), 3),
        "parts_s": {k: round(v, 4) for k, v in part_s.items()},
        "png_decode_one_object_s": round(png_s, 3),
        "frechet_400d_800_videos_s": round(frechet_s, 3),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "metrics_of_object_1": {k: (round(v, 4) if v is not None else None) for k, v in metrics.items()},
    }
    print(json.dumps(result, indent=2))
    print(
        f"\n| shape | device | s/object (median of {args.objects}) | image metrics | LPIPS VGG | "
        "LPIPS Alex | CLIP (2 sides) | I3D FV4D (1 side) | PNG decode | Frechet 400-d |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    p, r = result["parts_s"], result
    print(
        f"| {args.views}x{args.frames}x{args.res}^2 | {r['device']} | {r['median_seconds_per_object']} | "
        f"{p['image_metrics']} | {p['lpips_vgg']} | {p['lpips_alex']} | {p['clip_2_sides']} | "
        f"{p['i3d_fv4d_1_side']} | {r['png_decode_one_object_s']} | {r['frechet_400d_800_videos_s']} |"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
