"""FLOPs of the SV4D 2.0 UNet: counted with PyTorch's FlopCounterMode on the meta device (no memory, no
compute), with an analytic split of the attention cores (softmax(QK^T)V, 4 * L * S * C FLOPs per sequence).

Conventions: a multiply-add is 2 FLOPs; only matmuls and convolutions are counted (norms, activations and
softmax are not), as FlopCounterMode does. A training step is forward + backward; ``train_flops`` counts the
backward as FlopCounterMode sees it (about 2x the forward) and never counts activation recomputation.

The camera ("3D") attention follows ``config.camera_attention``: ``paper`` attends over all V*H*W tokens of a
frame (B*F sequences), ``snapshot`` and ``views`` over V tokens (B*F*H*W sequences; same core FLOPs, other
groupings). ``snapshot_equivalent`` is what the released code computes for the same batch: the forward with
the snapshot's V-token camera attention, plus the cross-attention work that the one-key shortcut
(model.attention.attend_single_key) skips and the release executes; it reproduces the ~206 TFLOP measured
for one guidance-batched official forward (96 latents, 72x72) in every mode.

CLI: ``python -m model.flops --batch 2 --frames 12 --views 4 --size 576``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import UNetConfig, get_config
from .unet import SV4D2UNet

LATENT_FACTOR = 8  # VAE downsampling: 576x576 images -> 72x72 latents


@dataclass
class FlopReport:
    batch: int
    frames: int
    views: int
    latent_hw: tuple[int, int]
    forward: float  # total forward FLOPs
    attention_spatial: float  # cores of the per-image self-attention
    attention_3d: float  # cores of the camera attention in the config's mode
    attention_frame: float  # cores of the per-pixel attention over F frames
    cross_skipped: float  # what the one-key cross-attentions would cost through SDPA, not executed here
    snapshot_equivalent: float  # what the released code computes (snapshot grouping, SDPA cross-attention)
    train: float | None = None  # forward + backward, when requested
    camera_attention: str = "paper"  # the mode counted
    attention_saved: float = 0.0  # cores of the attentions the "attention" checkpoint policy keeps

    def to_dict(self) -> dict:
        return asdict(self)


def attention_core_flops(
    config: UNetConfig,
    batch: int,
    frames: int,
    views: int,
    height: int,
    width: int,
    frame_attention: bool = True,
    camera_attention: str | None = None,
) -> dict[str, float]:
    """Analytic FLOPs of the attention cores (QK^T and AV) of every transformer, by kind.

    ``3d`` counts the camera attention in ``camera_attention`` (default: the config's mode); ``snapshot_3d``
    and ``snapshot_cross_skipped`` the same for the released snapshot grouping; ``saved`` the cores whose
    outputs the "attention" checkpoint policy keeps (self-attentions with >= LONG_ATTENTION_KEYS keys).
    """
    from .blocks import LONG_ATTENTION_KEYS

    b, f, v = batch, frames, views
    mode = config.camera_attention if camera_attention is None else camera_attention
    keys = ("spatial", "3d", "frame", "cross_skipped", "snapshot_3d", "snapshot_cross_skipped", "saved")
    out = dict.fromkeys(keys, 0.0)

    def skipped(tokens: int, sequences: int, ch: int) -> float:
        # to_q over every query, the core (4 * L * 1 * C), to_out per query instead of once per sequence
        return 2.0 * tokens * ch * ch + 4.0 * tokens * ch + 2.0 * (tokens - sequences) * ch * ch

    def camera(layout: str, hw: int) -> tuple[int, int]:
        """(sequences, tokens per sequence) of the camera attention."""
        return (b * f, v * hw) if layout == "paper" else (b * f * hw, v)

    levels = len(config.channel_mult)

    def add(ch: int, ds: int) -> None:
        hw = (height // ds) * (width // ds)
        n = b * f * v
        d = config.transformer_depth
        seqs, length = camera(mode, hw)
        snap_seqs, snap_length = camera("snapshot", hw)
        spatial = d * 4.0 * n * hw * hw * ch
        cam = d * 4.0 * seqs * length**2 * ch
        out["spatial"] += spatial
        out["3d"] += cam
        out["saved"] += (spatial if hw >= LONG_ATTENTION_KEYS else 0.0) + (
            cam if length >= LONG_ATTENTION_KEYS else 0.0
        )
        out["snapshot_3d"] += d * 4.0 * snap_seqs * snap_length**2 * ch
        out["cross_skipped"] += d * (skipped(n * hw, n, ch) + skipped(n * hw, seqs, ch))  # spatial, camera
        out["snapshot_cross_skipped"] += d * (skipped(n * hw, n, ch) + skipped(n * hw, snap_seqs, ch))
        if frame_attention:
            out["frame"] += d * 4.0 * (b * v * hw) * f * f * ch
            frame_skipped = d * skipped(b * v * hw * f, b * v * hw, ch)
            out["cross_skipped"] += frame_skipped
            out["snapshot_cross_skipped"] += frame_skipped

    ds = 1
    for level, mult in enumerate(config.channel_mult):
        if ds in config.attention_resolutions:
            for _ in range(config.num_res_blocks):  # encoder
                add(mult * config.model_channels, ds)
            for _ in range(config.num_res_blocks + 1):  # decoder
                add(mult * config.model_channels, ds)
        if level != levels - 1:
            ds *= 2
    add(config.channel_mult[-1] * config.model_channels, ds)  # middle block
    return out


def _meta_inputs(config: UNetConfig, b: int, f: int, v: int, h: int, w: int, requires_grad: bool) -> dict:
    dev = "meta"
    c = config.out_channels
    return dict(
        x=torch.empty(b, f, v, c, h, w, device=dev, requires_grad=requires_grad),
        timesteps=torch.empty(b, device=dev),
        cond_latent=torch.empty(b, f, config.in_channels - c, h, w, device=dev),
        clip_emb=torch.empty(b, f, config.context_dim, device=dev),
        polar_rad=torch.empty(b, f, v, device=dev),
        azimuth_rad=torch.empty(b, f, v, device=dev),
        ref_latents=torch.empty(b, v, config.motion_context_dim, h, w, device=dev),
    )


def _forward_flops(cfg: UNetConfig, b: int, f: int, v: int, h: int, w: int, frame_attention: bool) -> float:
    with torch.device("meta"):
        model = SV4D2UNet(cfg)
    model.set_frame_attention(frame_attention)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**_meta_inputs(cfg, b, f, v, h, w, False))
    return float(fc.get_total_flops())


def count_flops(
    config: UNetConfig | str = "sv4d2",
    batch: int = 1,
    frames: int = 12,
    views: int = 4,
    latent_hw: tuple[int, int] = (72, 72),
    frame_attention: bool = True,
    train: bool = False,
    camera_attention: str | None = None,
) -> FlopReport:
    """Forward (and optionally forward + backward) FLOPs of the UNet for one batch of B*F*V latents, with the
    camera attention in ``camera_attention`` (default: the config's mode)."""
    cfg = get_config(config) if isinstance(config, str) else config
    if camera_attention is not None:
        cfg = cfg.replace(camera_attention=camera_attention)
    h, w = latent_hw
    with torch.device("meta"):
        model = SV4D2UNet(cfg)
    model.set_frame_attention(frame_attention)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**_meta_inputs(cfg, batch, frames, views, h, w, False))
    forward = float(fc.get_total_flops())
    snapshot_forward = forward
    if cfg.camera_attention != "snapshot":
        snap = cfg.replace(camera_attention="snapshot")
        snapshot_forward = _forward_flops(snap, batch, frames, views, h, w, frame_attention)
    train_flops = None
    if train:
        with FlopCounterMode(display=False) as fc:
            model(**_meta_inputs(cfg, batch, frames, views, h, w, False)).sum().backward()
        train_flops = float(fc.get_total_flops())
    core = attention_core_flops(cfg, batch, frames, views, h, w, frame_attention)
    return FlopReport(
        batch=batch,
        frames=frames,
        views=views,
        latent_hw=(h, w),
        forward=forward,
        attention_spatial=core["spatial"],
        attention_3d=core["3d"],
        attention_frame=core["frame"],
        cross_skipped=core["cross_skipped"],
        snapshot_equivalent=snapshot_forward + core["snapshot_cross_skipped"],
        train=train_flops,
        camera_attention=cfg.camera_attention,
        attention_saved=core["saved"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.flops",
        description="Count UNet FLOPs on the meta device (no GPU, no memory) and print them as JSON (TFLOP).",
    )
    parser.add_argument("--config", default="sv4d2", help="UNet config name")
    parser.add_argument("--batch", type=int, default=1, help="samples per batch (each has F*V latents)")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--size", type=int, default=576, help="image size in pixels (latents are size/8)")
    parser.add_argument("--no-frame-attention", action="store_true", help="alpha_f = 0 (3D stage)")
    parser.add_argument("--train", action="store_true", help="also count forward + backward")
    parser.add_argument(
        "--camera-attention",
        choices=["paper", "snapshot", "views"],
        default=None,
        help="camera-attention layout to count (default: the config's, paper)",
    )
    args = parser.parse_args(argv)
    if args.size % LATENT_FACTOR:
        parser.error(f"--size {args.size} is not a multiple of {LATENT_FACTOR}")
    hw = args.size // LATENT_FACTOR
    rep = count_flops(
        args.config,
        args.batch,
        args.frames,
        args.views,
        (hw, hw),
        not args.no_frame_attention,
        args.train,
        camera_attention=args.camera_attention,
    )
    d = {k: (v / 1e12 if isinstance(v, float) else v) for k, v in rep.to_dict().items()}
    print(json.dumps(d, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
