"""The SD2.1 VAE (``diffusers.AutoencoderKL``): load from a diffusers folder, pixels in, latents out and back.

Loading: ``AutoencoderKL.from_pretrained(vae_path, subfolder="vae", local_files_only=True)``; ``vae_path`` is
a local copy of ``stabilityai/stable-diffusion-2-1`` (``vae/config.json`` plus
``vae/diffusion_pytorch_model.safetensors``) or a hub id already in the local Hugging Face cache (no
download can start, so nothing hangs offline). From an official SV4D 2.0 / SV3D_p checkpoint:
model/official_encoders.py.

Pixels: renders are RGBA with straight (unassociated) alpha, as Blender writes PNGs; they are composited on
white in float32 (``rgb * a + (1 - a)``, no rounding back to 8 bits) because SV3D/SV4D inputs are on white.
The VAE input is the composite at the render resolution (a multiple of 8), mapped to [-1, 1].

Latents: encoders keep the posterior mean and std UNSCALED (the AutoencoderKL's own latent space); training
draws ``z = (mean + std * eps) * scaling_factor`` with ``scaling_factor`` = 0.18215 for SD2.1.
:func:`decode_latents` takes SCALED latents, as the diffusion model produces them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.dtypes import torch_dtype

VAE_SCALING_FACTOR = 0.18215
"""SD2.1 VAE latent scale (``vae.config.scaling_factor``)."""
VAE_DOWNSAMPLE = 8
"""Pixels per latent cell (SD2.1: three 2x downsamplings)."""
BACKGROUND = (1.0, 1.0, 1.0)
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,  # 4 blocks = 3 downsamplings = 8x, as SD2.1
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": VAE_SCALING_FACTOR,
}


class EncoderWeightsError(FileNotFoundError):
    """Encoder weights are missing; the message names the path and how to supply it."""


def composite_on_white(rgba: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGBA (N, H, W, 4), straight alpha -> float32 RGB (N, 3, H, W) in [0, 1] over white."""
    x = torch.as_tensor(rgba)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 4:
        raise ValueError(f"expected uint8 RGBA images (N, H, W, 4), got {x.dtype} {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float() / 255.0
    rgb, alpha = x[:, :3], x[:, 3:4]
    return rgb * alpha + (1.0 - alpha)


def vae_input(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (N, 3, H, W), H and W multiples of 8 -> VAE input in [-1, 1]."""
    h, w = rgb.shape[-2:]
    if h % VAE_DOWNSAMPLE or w % VAE_DOWNSAMPLE:
        raise ValueError(f"image size {h}x{w} is not a multiple of {VAE_DOWNSAMPLE} (VAE downsampling)")
    return rgb * 2.0 - 1.0


def vae_source(path: str, subfolder: str) -> str:
    """Where `from_pretrained` reads: a local folder (checked here) or a hub id (the local cache only)."""
    if not path:
        raise EncoderWeightsError(
            "encode.vae_path is empty: set it to a local copy of stabilityai/stable-diffusion-2-1 "
            "(a folder holding vae/config.json and vae/diffusion_pytorch_model.safetensors), e.g. "
            "--set encode.vae_path=/models/stable-diffusion-2-1, or use --set encode.tiny=true for the demo"
        )
    local = Path(path).expanduser()
    hub_id = not local.exists() and not path.startswith((".", "/", "~")) and path.count("/") == 1
    if hub_id:
        return path
    if not (local / subfolder / "config.json").is_file():
        raise EncoderWeightsError(
            f"no VAE at {local / subfolder}: expected {local / subfolder / 'config.json'} and its weights; "
            "copy the 'vae/' folder of stabilityai/stable-diffusion-2-1 there or set encode.vae_path"
        )
    return str(local)


def load_vae(
    path: str, subfolder: str = "vae", device: str = "cpu", dtype: str = "float32"
) -> torch.nn.Module:
    """The AutoencoderKL from a local folder (``<path>/<subfolder>/config.json``) or a cached hub id."""
    source = vae_source(path, subfolder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(
            source, subfolder=subfolder, local_files_only=True, torch_dtype=torch_dtype(dtype)
        )
    except OSError as exc:
        raise EncoderWeightsError(
            f"cannot load the VAE from {path!r} (subfolder {subfolder!r}) without a download: {exc}. "
            "Put the model in the local Hugging Face cache or set encode.vae_path to a local folder"
        ) from exc
    return vae.to(device=device).eval().requires_grad_(False)


class MatmulAttnProcessor:
    """The VAE mid-block self-attention with explicit matmuls and an fp32 softmax.

    Same function as diffusers' AttnProcessor2_0 for this block (no mask, no cross-attention); used on GPU
    because SDPA has no fast kernel for its single head of dim 512 (flash attention stops at 256; the
    memory-efficient fallback is far slower, see benchmarks/RESULTS.md).
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        if encoder_hidden_states is not None or attention_mask is not None or attn.spatial_norm is not None:
            raise ValueError("MatmulAttnProcessor handles plain self-attention only")
        residual = hidden_states
        b, c, h, w = hidden_states.shape
        x = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        heads = attn.heads
        d = q.shape[-1] // heads
        q, k, v = (t.view(b, -1, heads, d).transpose(1, 2).reshape(b * heads, -1, d) for t in (q, k, v))
        scores = torch.bmm(q, k.transpose(1, 2))
        probs = (scores.float() * d**-0.5).softmax(dim=-1).to(q.dtype)
        out = torch.bmm(probs, v).view(b, heads, -1, d).transpose(1, 2).reshape(b, -1, heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def use_matmul_attention(vae: torch.nn.Module) -> int:
    """Switch every attention of the VAE to MatmulAttnProcessor; returns how many were switched."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for module in vae.modules():
        if isinstance(module, Attention):
            module.set_processor(MatmulAttnProcessor())
            count += 1
    return count


def posterior_moments(
    vae: torch.nn.Module, x: torch.Tensor, encoder_forward: Callable[..., torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE input (N, 3, H, W) in [-1, 1] -> what ``vae.encode(x).latent_dist`` holds: the posterior mean and
    log-variance clamped to [-30, 20], each (N, C, H/8, W/8), unscaled. ``std = exp(logvar / 2)``.

    ``encoder_forward(encoder, x)``: replaces ``vae.encoder(x)`` (model.kernels.vae_encoder's deferred-bias
    forward); the rest is diffusers' own ``quant_conv`` and split.
    """
    h = encoder_forward(vae.encoder, x) if encoder_forward is not None else vae.encoder(x)
    if vae.quant_conv is not None:
        h = vae.quant_conv(h)
    mean, logvar = h.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)


@torch.inference_mode()
def decode_latents(
    latents: np.ndarray | torch.Tensor, vae: torch.nn.Module, scaled: bool = True, batch_size: int = 16
) -> torch.Tensor:
    """Latents (..., 4, h, w) -> float32 RGB images (..., 3, 8h, 8w) in [0, 1], on the CPU.

    ``scaled``: the latents are in the diffusion model's space (multiplied by ``vae.config.scaling_factor``,
    as sampled); False for raw posterior means as stored in latent shards.
    """
    param = next(vae.parameters())
    z = torch.as_tensor(np.asarray(latents) if not isinstance(latents, torch.Tensor) else latents)
    if z.ndim < 3:
        raise ValueError(f"latents must be (..., C, h, w), got shape {tuple(z.shape)}")
    lead = z.shape[:-3]
    z = z.reshape(-1, *z.shape[-3:]).to(device=param.device, dtype=param.dtype)
    if scaled:
        z = z / vae.config.scaling_factor
    out = [vae.decode(z[i : i + batch_size]).sample.float().cpu() for i in range(0, z.shape[0], batch_size)]
    images = ((torch.cat(out) + 1.0) / 2.0).clamp(0.0, 1.0)
    return images.reshape(*lead, *images.shape[1:])


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float RGB (..., 3, H, W) in [0, 1] -> uint8 (..., H, W, 3)."""
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).movedim(-3, -1).numpy()
