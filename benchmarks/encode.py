"""Throughput of the latent stage's encoders at paper scale (not part of the test suite).

    python benchmarks/encode.py --device cpu --images 2          # this CPU, fp32, a handful of images
    python benchmarks/encode.py --device cuda --out results.json # GPU variants in bf16 (eager, compiled, ...)

Models: the full-size SD2.1 VAE (diffusers AutoencoderKL: block_out_channels 128/256/512/512, 2 layers per
block, 4 latent channels; random weights; only the encoder + quant_conv run) at 576x576, and the OpenCLIP
ViT-H-14 image tower (random weights) at 224x224. FLOPs per image are counted with torch.utils.flop_counter
(a multiply-add is 2 FLOPs); the FLOP floor is peak / (VAE + CLIP FLOPs per image), with peak both the
nominal 800 TFLOP/s and a bf16 8192^3 matmul measured on the device.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.clip_attention import use_sdpa_attention  # noqa: E402
from model.clip_image import clip_preprocess  # noqa: E402
from model.kernels.groupnorm import replace_group_norms  # noqa: E402
from model.kernels.vae_encoder import encoder_forward  # noqa: E402
from model.official_encoders import SD21_VAE_CONFIG  # noqa: E402
from model.vae import composite_on_white, vae_input  # noqa: E402

RES = 576
NOMINAL_PEAK = 800e12


def build_models(smoke: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Full-size random VAE and ViT-H-14 tower; `smoke`: tiny stand-ins to check the script on a CPU."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if smoke:
        import tempfile

        from model.clip_image import TINY_CLIP_CONFIG, TINY_CLIP_NAME
        from model.vae import TINY_VAE_CONFIG

        cfg = Path(tempfile.mkdtemp()) / f"{TINY_CLIP_NAME}.json"
        cfg.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(cfg)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        vae.decoder = None
        return vae.eval().requires_grad_(False), open_clip.create_model(TINY_CLIP_NAME).visual.eval()
    vae = AutoencoderKL(**SD21_VAE_CONFIG)
    vae.decoder = None  # never run here; saves memory
    vae.post_quant_conv = None
    clip = open_clip.create_model("ViT-H-14", pretrained=None).visual
    return vae.eval().requires_grad_(False), clip.eval().requires_grad_(False)


def vae_moments(vae: torch.nn.Module) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """x in [-1, 1] -> (posterior mean, std): what AutoencoderKL.encode(x).latent_dist gives."""

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = vae.quant_conv(vae.encoder(x)).chunk(2, dim=1)
        return mean, torch.exp(0.5 * logvar.float().clamp(-30.0, 20.0))

    return fn


class TwoStageGroupNorm(torch.nn.Module):
    """GroupNorm (+ the same affine) for channels_last activations, written so Inductor can fuse it well.

    Experimental (benchmark only): statistics in fp32 from 64 row chunks of the (B, H*W, C) view (a
    coalesced reduction over rows), combined with Chan's formula; other inputs use F.group_norm.
    """

    def __init__(self, gn: torch.nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups, self.eps, self.weight, self.bias = gn.num_groups, gn.eps, gn.weight, gn.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape if x.ndim == 4 else (0, 0, 0, 0)
        if x.ndim != 4 or not x.is_contiguous(memory_format=torch.channels_last) or (H * W) % 64:
            return torch.nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        G, S = self.num_groups, 64
        xv = x.permute(0, 2, 3, 1).reshape(B, S, H * W // S, G, C // G).float()
        mean_c = xv.mean(dim=(2, 4))  # (B, S, G)
        m2_c = ((xv - mean_c[:, :, None, :, None]) ** 2).sum(dim=(2, 4))
        count = (H * W // S) * (C // G)
        mean = mean_c.mean(1)
        var = (m2_c.sum(1) + count * ((mean_c - mean[:, None]) ** 2).sum(1)) / (count * S)
        y = (xv - mean[:, None, None, :, None]) * torch.rsqrt(var + self.eps)[:, None, None, :, None]
        y = y.reshape(B, H, W, C) * self.weight + self.bias
        return y.to(x.dtype).permute(0, 3, 1, 2)


def use_two_stage_group_norm(module: torch.nn.Module) -> int:
    return replace_group_norms(module, TwoStageGroupNorm)


def count_flops(fn: Callable, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops()


def flops_per_image(vae: torch.nn.Module, clip: torch.nn.Module) -> dict[str, float]:
    """Counted on meta copies: shapes only, no arithmetic."""
    vae_m, clip_m = copy.deepcopy(vae).to("meta"), copy.deepcopy(clip).to("meta")
    vae_f = count_flops(vae_moments(vae_m), torch.empty(1, 3, RES, RES, device="meta"))
    clip_f = count_flops(clip_m, torch.empty(1, 3, 224, 224, device="meta"))
    return {"vae_gflop": vae_f / 1e9, "clip_gflop": clip_f / 1e9}


def time_calls(fn: Callable, inputs: list, iters: int, warmup: int, cuda: bool) -> list[float]:
    """Seconds per call; CUDA events on the GPU, perf_counter on the CPU."""
    with torch.inference_mode():
        for i in range(warmup):
            fn(inputs[i % len(inputs)])
        if cuda:
            torch.cuda.synchronize()
        times = []
        for i in range(iters):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(inputs[i % len(inputs)])
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn(inputs[i % len(inputs)])
                times.append(time.perf_counter() - t0)
    return times


def cuda_graphed(fn: Callable, shape: tuple[int, ...], dtype: torch.dtype) -> Callable:
    """``fn`` captured once in a CUDA graph for inputs of one shape: a call copies the input into the
    graph's buffer and replays every kernel without Python or launch overhead between them."""
    static_in = torch.zeros(shape, device="cuda", dtype=dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the capture (cuBLAS workspaces, lazy inits)
            fn(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = fn(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    run.captured = fn  # the graph reads fn's weights in place: they must outlive it
    return run


def kernel_profile(fn: Callable, x: torch.Tensor, rows: int = 14) -> str:
    """Where one call's GPU time goes (top kernels by self time)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(x)
            torch.cuda.synchronize()
        averages = prof.key_averages()
        for key in ("self_device_time_total", "self_cuda_time_total"):
            try:
                return averages.table(sort_by=key, row_limit=rows, max_name_column_width=60)
            except Exception:  # the key's name changed across torch versions
                continue
        return "(profiler: no sort key)"
    except Exception as exc:  # the profiler is a nicety here
        return f"(profiler failed: {exc})"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def matmul_peak(device: str) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    t = statistics.median(time_calls(lambda _: a @ b, [None], iters=10, warmup=3, cuda=True))
    return 2 * 8192**3 / t


def run_cpu(args: argparse.Namespace, vae, clip, flops) -> list[dict]:
    torch.manual_seed(1)
    x = torch.rand(args.images, 3, RES, RES) * 2 - 1
    xc = torch.randn(args.images, 3, 224, 224)
    rows = []
    t = time_calls(vae_moments(vae), [x], iters=1, warmup=0, cuda=False)[0]
    rows.append({"variant": "vae fp32 eager", "batch": args.images, "img_s": args.images / t})
    t = time_calls(clip, [xc], iters=1, warmup=0, cuda=False)[0]
    rows.append({"variant": "clip fp32 eager", "batch": args.images, "img_s": args.images / t})
    both = 1.0 / (1.0 / rows[0]["img_s"] + 1.0 / rows[1]["img_s"])
    rows.append({"variant": "vae+clip fp32 (sum of times)", "batch": args.images, "img_s": both})
    for r in rows:
        r["tflop_s"] = r["img_s"] * _gflop(r["variant"], flops) / 1e3
    return rows


def _gflop(variant: str, flops: dict[str, float]) -> float:
    if variant.startswith("vae+clip") or variant.startswith("pipeline"):
        return flops["vae_gflop"] + flops["clip_gflop"]
    return flops["vae_gflop"] if variant.startswith("vae") else flops["clip_gflop"]


def run_cuda(args: argparse.Namespace, vae, clip, flops) -> tuple[list[dict], dict]:
    dev = "cpu" if args.smoke else "cuda"
    cuda = dev == "cuda"
    torch.backends.cudnn.benchmark = True
    t_start = time.monotonic()
    extra: dict = {}
    if cuda:
        extra = {"matmul_peak_tflop_s": matmul_peak(dev) / 1e12, "gpu": torch.cuda.get_device_name()}
        print(f"bf16 matmul peak {extra['matmul_peak_tflop_s']:.0f} TFLOP/s on {extra['gpu']}", flush=True)
    # fp32 references for the numerical checks, TF32 off (bf16/fp16 variants are unaffected by these flags)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rows: list[dict] = []
    vae32 = copy.deepcopy(vae).to(dev)
    clip32 = copy.deepcopy(clip).to(dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def over_budget(name: str, need_s: float = 0.0) -> bool:
        if time.monotonic() - t_start + need_s > args.budget_s:
            print(f"skip {name}: time budget", flush=True)
            return True
        return False

    def record(variant: str, batch: int, times: list[float], **more) -> None:
        t = statistics.median(times)
        row = {"variant": variant, "batch": batch, "img_s": batch / t, "ms_per_batch": t * 1e3, **more}
        row["tflop_s"] = row["img_s"] * _gflop(variant, flops) / 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:  # progressive: a run stopped at its time limit keeps what it measured
            Path(args.out).write_text(json.dumps({"rows": rows, **extra}, indent=1))

    def vae_variant(name, dtype, cl, compile_mode, batch, profile=False, need_s=0.0, prepare=None):
        if over_budget(name, need_s):
            return None
        model = copy.deepcopy(vae32).to(dtype)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        if prepare is not None:
            prepare(model)
        fn = vae_moments(model)
        t0 = time.monotonic()
        if compile_mode is not None:
            # static shapes: a later variant at another batch size would otherwise turn this graph dynamic
            fn = torch.compile(fn, mode=compile_mode or None, dynamic=False)
        xs = [torch.rand(batch, 3, RES, RES, device=dev, generator=g) * 2 - 1 for _ in range(2)]
        xs = [
            x.to(dtype).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            for x in xs
        ]
        times = time_calls(fn, xs, iters=args.iters, warmup=3, cuda=cuda)
        with torch.inference_mode():  # the timed batch shape: a compiled fn does not recompile
            m, s = fn(xs[0])
            ref_m, ref_s = vae_moments(vae32)(xs[0][:2].float().contiguous())
        record(
            name,
            batch,
            times,
            warm_s=round(time.monotonic() - t0, 1),
            rel_err_mean=rel_err(m[:2].float(), ref_m),
            rel_err_std=rel_err(s[:2].float(), ref_s),
        )
        if profile and cuda:
            print(kernel_profile(fn, xs[0]), flush=True)
        return fn

    def clip_variant(name, compile_mode, batch, sdpa=False):
        if over_budget(name):
            return None
        model = copy.deepcopy(clip32).to(torch.bfloat16)
        if sdpa:
            use_sdpa_attention(model)
        if compile_mode == "cuda-graph":  # --smoke on the CPU: eager
            fn = cuda_graphed(model, (batch, 3, 224, 224), torch.bfloat16) if cuda else model
        elif compile_mode is not None:
            fn = torch.compile(model, mode=compile_mode or None, dynamic=False)
        else:
            fn = model
        t0 = time.monotonic()
        xs = [torch.randn(batch, 3, 224, 224, device=dev, generator=g).to(torch.bfloat16) for _ in range(2)]
        times = time_calls(fn, xs, iters=args.iters, warmup=3, cuda=cuda)
        with torch.inference_mode():
            e = fn(xs[0])[:2]
            ref = clip32(xs[0][:2].float())
        record(name, batch, times, warm_s=round(time.monotonic() - t0, 1), rel_err=rel_err(e.float(), ref))
        return fn

    bf16, fp16 = torch.bfloat16, torch.float16
    if args.variants == "fixes":
        from model.vae import use_matmul_attention

        def both(m):
            use_matmul_attention(m)
            use_two_stage_group_norm(m.encoder)

        clip_eager = clip_variant("clip bf16 eager", None, 32)
        vae_variant("vae bf16 compiled channels_last", bf16, True, "", 32)
        att = vae_variant(
            "vae bf16 compiled cl + matmul attention", bf16, True, "", 32, True, 0, use_matmul_attention
        )
        gn = vae_variant("vae bf16 compiled cl + matmul attn + 2-stage GN", bf16, True, "", 32, True, 0, both)
        speeds = {r["variant"]: r["img_s"] for r in rows}
        best = (
            gn
            if speeds.get("vae bf16 compiled cl + matmul attn + 2-stage GN", 0)
            > speeds.get("vae bf16 compiled cl + matmul attention", 0)
            else att
        )
        pairs = [(best, clip_eager, "pipeline bf16 compiled VAE (best) + eager CLIP")]
        dtype = bf16
    elif args.variants == "gn":
        from model.kernels.groupnorm import use_channels_last_group_norm
        from model.vae import use_matmul_attention

        def attn_gn(m):
            use_matmul_attention(m)
            use_channels_last_group_norm(m.encoder)

        clip_eager = clip_variant("clip bf16 eager", None, 32)
        att = vae_variant(
            "vae bf16 compiled cl + matmul attention", bf16, True, "", 32, False, 0, use_matmul_attention
        )
        gn = vae_variant(
            "vae bf16 compiled cl + matmul attn + Triton GN stats", bf16, True, "", 32, True, 0, attn_gn
        )
        pairs = [
            (gn, clip_eager, "pipeline bf16 compiled VAE + Triton GN, eager CLIP"),
            (gn, clip_eager, "pipeline bf16 compiled VAE + Triton GN, eager CLIP on a side stream"),
            (att, clip_eager, "pipeline bf16 compiled VAE (no Triton GN), eager CLIP on a side stream"),
        ]
        dtype = bf16
    elif args.variants in ("deferred", "deferred-autotune", "deferred-streams", "clip-graphs"):
        from model.kernels.groupnorm import use_channels_last_group_norm
        from model.vae import use_matmul_attention

        def attn_gn(m):
            use_matmul_attention(m)
            use_channels_last_group_norm(m.encoder)

        def deferred(m):
            attn_gn(m)
            m.encoder.forward = functools.partial(encoder_forward, m.encoder)

        clips = {"clip bf16 eager": clip_variant("clip bf16 eager", None, 32)}
        if args.variants == "clip-graphs":
            clips["clip bf16 eager, CUDA graph"] = clip_variant(
                "clip bf16 eager, CUDA graph", "cuda-graph", 32
            )
            clip_variant("clip bf16 eager, CUDA graph, batch 64", "cuda-graph", 64)
            if cuda:
                model = copy.deepcopy(clip32).to(torch.bfloat16)
                x = torch.randn(32, 3, 224, 224, device=dev, generator=g).to(torch.bfloat16)
                print(kernel_profile(model, x, rows=12), flush=True)
        if args.variants == "deferred":
            clips["clip bf16 SDPA eager"] = clip_variant("clip bf16 SDPA eager", None, 32, sdpa=True)
            clips["clip bf16 SDPA compiled"] = clip_variant("clip bf16 SDPA compiled", "", 32, sdpa=True)
            clips["clip bf16 SDPA max-autotune"] = clip_variant(
                "clip bf16 SDPA max-autotune", "max-autotune-no-cudagraphs", 32, sdpa=True
            )
        if args.variants == "deferred-autotune":  # larger batches: fewer partial waves of GEMM tiles
            for b in (64, 128):
                clip_variant(f"clip bf16 eager, batch {b}", None, b)
        speeds = {r["variant"]: r["img_s"] for r in rows}
        best_clip = max((k for k in clips if clips[k] is not None), key=lambda k: speeds.get(k, 0))
        print(f"fastest CLIP: {best_clip}", flush=True)
        autotune = args.variants == "deferred-autotune"
        mode = "max-autotune-no-cudagraphs" if autotune else ""
        tag = "max-autotune" if autotune else "compiled"
        need = args.autotune_s if autotune else 0.0
        if args.variants == "deferred":
            vae_variant(
                f"vae bf16 {tag} cl + matmul attn + Triton GN stats", bf16, True, mode, 32, False, 0, attn_gn
            )
        dvae = vae_variant(
            f"vae bf16 {tag} cl + matmul attn + Triton GN + deferred bias",
            bf16,
            True,
            mode,
            32,
            True,
            need,
            deferred,
        )
        pairs = [(dvae, clips[best_clip], f"pipeline bf16 {tag} VAE + deferred bias, {best_clip}")]
        if args.variants == "deferred-streams":
            ce = clips["clip bf16 eager"]
            pairs += [
                (dvae, ce, f"pipeline {tag} deferred, CLIP on a side stream", {"streams": "side"}),
                (
                    dvae,
                    ce,
                    f"pipeline {tag} deferred, CLIP on a high-priority stream",
                    {"streams": "clip-high"},
                ),
                (
                    dvae,
                    ce,
                    f"pipeline {tag} deferred, VAE on a high-priority stream",
                    {"streams": "vae-high"},
                ),
            ]
            d64 = vae_variant(
                f"vae bf16 {tag} deferred bias, batch 64", bf16, True, mode, 64, False, 0, deferred
            )
            pairs.append((d64, ce, f"pipeline {tag} deferred, batch 64", {"batch": 64}))
        elif args.variants == "clip-graphs":
            pairs += [
                (dvae, clips["clip bf16 eager, CUDA graph"], f"pipeline {tag} deferred, CLIP CUDA graph"),
                (
                    dvae,
                    clips["clip bf16 eager"],
                    f"pipeline {tag} deferred, CLIP high priority",
                    {"streams": "clip-high"},
                ),
            ]
        elif best_clip != "clip bf16 eager":
            pairs.append(
                (dvae, clips["clip bf16 eager"], f"pipeline bf16 {tag} VAE + deferred bias, clip bf16 eager")
            )
        dtype = bf16
    else:
        pairs = None
    if pairs is None:
        vae_variant("vae bf16 eager NCHW", bf16, False, None, 16)
        vae_variant("vae bf16 eager channels_last", bf16, True, None, 16, profile=True)
        vae_variant("vae fp16 eager channels_last", fp16, True, None, 16)
        vae_variant("vae bf16 eager channels_last", bf16, True, None, 32)
        clip_eager = clip_variant("clip bf16 eager", None, 32)
        # compile in the faster of the two 16-bit formats (fp16 may get other cuDNN kernels)
        eager = {r["variant"]: r["img_s"] for r in rows if r["batch"] == 16}
        dtype = (
            fp16
            if eager.get("vae fp16 eager channels_last", 0) > eager.get("vae bf16 eager channels_last", 0)
            else bf16
        )
        tag = "fp16" if dtype == fp16 else "bf16"
        vae_comp = vae_variant(f"vae {tag} compiled channels_last", dtype, True, "", 32, profile=True)
        clip_comp = clip_variant("clip bf16 compiled", "", 32)  # the pipeline's batch: no recompile

    # the whole per-image work of an encoder actor: uint8 RGBA on the host -> fp16 mean/std/clip on the host
    if pairs is None:
        eager_vae = vae_moments(copy.deepcopy(vae32).to(dtype).to(memory_format=torch.channels_last))
        pairs = [
            (vae_comp, clip_comp, f"pipeline {tag} compiled (H2D uint8 -> fp16 D2H)"),
            (eager_vae, clip_eager, f"pipeline {tag} eager channels_last (H2D uint8 -> fp16 D2H)"),
        ]

    def run_pairs(pairs: list) -> None:
        """Each entry: (vae_fn, clip_fn, label[, {"batch": B, "streams": S}]); S is None (one stream),
        "side" (CLIP on a second stream), "clip-high" (that stream at high priority) or "vae-high" (the VAE
        on a high-priority stream, CLIP on a normal one)."""
        for vae_fn, clip_fn, label, *more in pairs:
            opts = more[0] if more else {}
            if vae_fn is None or clip_fn is None or over_budget(label):
                continue
            batch = opts.get("batch", 32)
            host = [torch.randint(0, 256, (batch, RES, RES, 4), dtype=torch.uint8) for _ in range(2)]
            host = [h.pin_memory() for h in host] if cuda else host
            streams = opts.get("streams", "side" if "side stream" in label else None)
            clip_stream = vae_stream = None
            if cuda and streams is not None:
                high = -10  # clamped by PyTorch to the device's highest priority
                clip_stream = torch.cuda.Stream(priority=high if streams == "clip-high" else 0)
                vae_stream = torch.cuda.Stream(priority=high) if streams == "vae-high" else None

            def pipeline(rgba_host, vae_fn=vae_fn, clip_fn=clip_fn, cs=clip_stream, vs=vae_stream) -> None:
                rgb = composite_on_white(rgba_host.to(dev, non_blocking=True))
                x = vae_input(rgb).to(dtype).contiguous(memory_format=torch.channels_last)
                clip_in = clip_preprocess(rgb, 224).to(bf16)
                if cs is None:
                    mean, std = vae_fn(x)
                    emb = clip_fn(clip_in)
                else:  # CLIP's matmuls may overlap the VAE's memory-bound GroupNorm/SiLU kernels
                    main = torch.cuda.current_stream()
                    cs.wait_stream(main)
                    with torch.cuda.stream(cs):
                        emb = clip_fn(clip_in)
                    if vs is None:
                        mean, std = vae_fn(x)
                    else:
                        vs.wait_stream(main)
                        with torch.cuda.stream(vs):
                            mean, std = vae_fn(x)
                        main.wait_stream(vs)
                    main.wait_stream(cs)
                for t in (mean, std, emb):
                    t.to(torch.float16).to("cpu", non_blocking=True)

            record(label, batch, time_calls(pipeline, host, iters=args.iters, warmup=2, cuda=cuda))

    run_pairs(pairs)

    # last and optional: Inductor's autotuning (long compile), only with time to spare
    if args.variants == "gn":
        auto = vae_variant(
            "vae bf16 max-autotune cl + matmul attn + Triton GN stats",
            bf16,
            True,
            "max-autotune-no-cudagraphs",
            32,
            need_s=args.autotune_s,
            prepare=attn_gn,
        )
        for label in ("pipeline bf16 max-autotune VAE + Triton GN, eager CLIP on a side stream",):
            if auto is not None and not over_budget(label):
                pairs = [(auto, clip_eager, label)]
                run_pairs(pairs)
    if args.variants == "all":
        vae_variant(
            f"vae {tag} max-autotune channels_last",
            dtype,
            True,
            "max-autotune-no-cudagraphs",
            32,
            need_s=args.autotune_s,
        )
    if cuda:
        extra["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return rows, extra


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", type=int, default=2, help="CPU: images per timed call")
    parser.add_argument("--iters", type=int, default=10, help="GPU: timed calls per variant (median)")
    parser.add_argument(
        "--budget-s", type=float, default=420, help="GPU: skip variants after this many seconds"
    )
    parser.add_argument(
        "--autotune-s", type=float, default=240, help="GPU: time a max-autotune compile needs"
    )
    parser.add_argument("--out", default="", help="write all numbers as JSON here")
    parser.add_argument(
        "--variants",
        choices=["all", "fixes", "gn", "deferred", "deferred-autotune", "deferred-streams", "clip-graphs"],
        default="all",
        help="GPU: which variant set (deferred: CLIP through SDPA and the VAE with deferred conv biases, "
        "compiled in the default mode; deferred-autotune: the same VAE with max-autotune; deferred-streams: "
        "CLIP and VAE on concurrent streams with priorities, and batch 64; clip-graphs: CLIP replayed from a "
        "CUDA graph)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="run the GPU code path on the CPU with tiny models"
    )
    args = parser.parse_args()

    t0 = time.monotonic()
    global RES
    if args.smoke:
        RES = 64
    vae, clip = build_models(args.smoke)
    flops = flops_per_image(vae, clip)
    print(
        f"FLOPs per image: VAE encoder {flops['vae_gflop']:.0f} GFLOP at {RES}x{RES}, "
        f"ViT-H-14 {flops['clip_gflop']:.0f} GFLOP at 224x224",
        flush=True,
    )
    if args.device == "cpu" and not args.smoke:
        torch.manual_seed(0)
        rows, extra = (
            run_cpu(args, vae, clip, flops),
            {"cpu": platform.processor(), "threads": torch.get_num_threads()},
        )
    else:
        rows, extra = run_cuda(args, vae, clip, flops)
    total = flops["vae_gflop"] + flops["clip_gflop"]
    floor = {"nominal_800": NOMINAL_PEAK / (total * 1e9)}
    if "matmul_peak_tflop_s" in extra:
        floor["measured_matmul"] = extra["matmul_peak_tflop_s"] * 1e12 / (total * 1e9)
    result = {
        "device": args.device,
        "torch": torch.__version__,
        "flops": flops,
        "floor_img_s": floor,
        "rows": rows,
        **extra,
        "wall_s": round(time.monotonic() - t0, 1),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(
        f"\nFLOP floor (VAE + CLIP, {total:.0f} GFLOP/img): "
        + ", ".join(f"{k} {v:.0f} img/s" for k, v in floor.items())
    )
    print(f"{'variant':58s} {'batch':>5s} {'img/s':>8s} {'TFLOP/s':>8s} {'of 800':>7s}")
    for r in rows:  # TFLOP/s over the nominal 800 is also the share of the FLOP floor reached
        share = f"{100 * r['tflop_s'] / (NOMINAL_PEAK / 1e12):.1f}%"
        print(f"{r['variant']:58s} {r['batch']:5d} {r['img_s']:8.3g} {r['tflop_s']:8.3g} {share:>7s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
