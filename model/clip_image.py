"""The OpenCLIP ViT-H-14 image tower: load from a local open_clip checkpoint, preprocess as the official
conditioner, embed.

Loading: ``open_clip.create_model_and_transforms(clip_model, pretrained=<checkpoint file>)``; the checkpoint
is ``open_clip_pytorch_model.bin`` (or .safetensors) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``. Only the
image tower (``model.visual``) is kept. A tag such as ``laion2b_s32b_b79k`` is refused: open_clip would try to
download it. From an official SV4D 2.0 / SV3D_p checkpoint: model/official_encoders.py.

Input: as the official conditioner (sgm ``FrozenOpenCLIPImageEmbedder.preprocess``): the WHOLE image (RGB in
[0, 1], composited on white) is squash-resized to the tower's size (224 for ViT-H-14) with kornia's
antialiased resize (a Gaussian blur of sigma (factor - 1) / 2 with reflect padding, only when downscaling,
then bicubic with align_corners=True), and normalized with the OpenAI CLIP mean/std. No centre crop.
(open_clip's own ViT-H-14 eval transform is PIL bicubic resize of the short side plus centre crop: the same
geometry on square renders, a slightly different antialiasing filter; we follow the conditioner the model was
trained with.) The embedding is ``visual(x)``: the projected pooled token, NOT L2-normalized (1024-d for
ViT-H-14, 32-d for the tiny model).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.dtypes import torch_dtype
from model.vae import EncoderWeightsError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_PREPROCESS = (
    "squash-resize to tower size, kornia antialiased bicubic align_corners=True, OpenAI mean/std"
)

TINY_CLIP_NAME = "sv4d2-tiny-clip"
TINY_CLIP_DIM = 32
"""Embedding size of the tiny CLIP (the real ViT-H-14 gives 1024)."""
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": TINY_CLIP_DIM,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_CKPT = "open_clip_pytorch_model.bin"


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def resize_antialias(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """kornia.geometry.resize(x, size, 'bicubic', align_corners=True, antialias=True), in plain torch.

    x: (N, C, H, W) float. Downscaling first blurs with a Gaussian of sigma (factor - 1) / 2 and kernel
    size max(4 sigma, 3) rounded up to odd, reflect padding (kornia's rule, which the official embedder uses).
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:
        sigmas = (max((factors[0] - 1.0) / 2.0, 0.001), max((factors[1] - 1.0) / 2.0, 0.001))
        ks = [int(max(4.0 * s, 3)) for s in sigmas]
        ks = [k + 1 if k % 2 == 0 else k for k in ks]
        c = x.shape[1]
        ky = _gaussian_kernel1d(ks[0], sigmas[0], x.dtype, x.device).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        kx = _gaussian_kernel1d(ks[1], sigmas[1], x.dtype, x.device).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        px, py = ks[1] // 2, ks[0] // 2
        x = F.conv2d(F.pad(x, (px, px, 0, 0), mode="reflect"), kx, groups=c)
        x = F.conv2d(F.pad(x, (0, 0, py, py), mode="reflect"), ky, groups=c)
    return F.interpolate(x, size=tuple(size), mode="bicubic", align_corners=True)


def clip_preprocess(rgb: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """RGB in [0, 1] (N, 3, H, W) -> CLIP tower input (N, 3, S, S): squash-resize, OpenAI normalization."""
    x = resize_antialias(rgb, (image_size, image_size))
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def tower_size(visual: torch.nn.Module) -> int:
    """The square input size of an open_clip image tower (224 for ViT-H-14)."""
    size = visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


def embed_images(
    visual: torch.nn.Module, rgb: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """RGB in [0, 1] (N, 3, H, W) -> float32 embeddings (N, D): :func:`clip_preprocess` then the tower.

    ``dtype``: the tower's compute dtype (default: that of its parameters)."""
    dtype = dtype or next(visual.parameters()).dtype
    return visual(clip_preprocess(rgb, tower_size(visual)).to(dtype)).float()


def clip_checkpoint(pretrained: str) -> Path:
    if not pretrained:
        raise EncoderWeightsError(
            "encode.clip_pretrained is empty: set it to the open_clip checkpoint of ViT-H-14 "
            "laion2b_s32b_b79k "
            "(open_clip_pytorch_model.bin of laion/CLIP-ViT-H-14-laion2B-s32B-b79K), e.g. "
            "--set encode.clip_pretrained=/models/clip-vit-h-14/open_clip_pytorch_model.bin, "
            "or use --set encode.tiny=true for the demo"
        )
    ckpt = Path(pretrained).expanduser()
    if not ckpt.is_file():
        raise EncoderWeightsError(
            f"no CLIP checkpoint file at {ckpt}: encode.clip_pretrained must be a local file (a tag such as "
            "laion2b_s32b_b79k would need a download); fetch open_clip_pytorch_model.bin of "
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K elsewhere and point encode.clip_pretrained at it"
        )
    return ckpt


def load_clip(
    model_name: str, pretrained: str, model_config: str = "", device: str = "cpu", dtype: str = "float32"
) -> torch.nn.Module:
    """The open_clip image tower (``model.visual``) from a local checkpoint file.

    ``model_config``: optional open_clip model-config json (file name = model name), registered with
    ``open_clip.add_model_config`` first; empty for built-in architectures such as ViT-H-14.
    """
    ckpt = clip_checkpoint(pretrained)
    import open_clip

    if model_config:
        cfg_path = Path(model_config).expanduser()
        if not cfg_path.is_file():
            raise EncoderWeightsError(f"no open_clip model config at {cfg_path} (encode.clip_model_config)")
        open_clip.add_model_config(cfg_path)
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r} (give encode.clip_model_config for new ones)"
        )
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(ckpt), device="cpu")
    visual = model.visual
    del model  # the text tower is not needed
    return visual.to(device=device, dtype=torch_dtype(dtype)).eval().requires_grad_(False)
