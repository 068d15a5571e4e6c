"""The two frozen encoders of the latent stage: the SD2.1 VAE and the OpenCLIP ViT-H-14 image tower.

Loading. Both load from local files only (no hub download can start, so nothing hangs offline):
- VAE: ``diffusers.AutoencoderKL.from_pretrained(vae_path, subfolder="vae", local_files_only=True)``;
  ``vae_path`` is a local copy of ``stabilityai/stable-diffusion-2-1`` (``vae/config.json`` plus
  ``vae/diffusion_pytorch_model.safetensors``) or a hub id already in the local Hugging Face cache.
- CLIP: ``open_clip.create_model_and_transforms(clip_model, pretrained=<checkpoint file>)``; the checkpoint is
  ``open_clip_pytorch_model.bin`` (or .safetensors) of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``. Only the
  image tower (``model.visual``) is kept. A tag such as ``laion2b_s32b_b79k`` is refused: open_clip would try
  to download it.
- Official checkpoint (``encode.official_checkpoint``): both come from one ``sv4d2.safetensors`` /
  ``sv3d_p.safetensors``: the conditioner's VAE encoder and the first stage's decoder as one diffusers
  AutoencoderKL, the conditioner's ViT-H-14 image tower (curation/official_weights.py; read key by key).
  The pixel rules below are the same for every source.
Tiny mode (demo, tests) first SAVES a small randomly initialized VAE (``save_pretrained``) and a small CLIP
(open_clip state dict plus a model-config json) to disk and then loads them through the same two functions.

Pixels. Renders are RGBA with straight (unassociated) alpha, as Blender writes PNGs; they are composited on
white in float32 (``rgb * a + (1 - a)``, no rounding back to 8 bits) because SV3D/SV4D inputs are on white.
- VAE input: the composite at the render resolution (a multiple of 8), mapped to [-1, 1].
- CLIP input: as the official conditioner (sgm ``FrozenOpenCLIPImageEmbedder.preprocess``): the WHOLE
  image is squash-resized to the tower's size (224 for ViT-H-14) with kornia's antialiased resize (a Gaussian
  blur of sigma (factor - 1) / 2 with reflect padding, only when downscaling, then bicubic with
  align_corners=True), and normalized with the OpenAI CLIP mean/std. No centre crop. (open_clip's own
  ViT-H-14 eval transform is PIL bicubic resize of the short side plus centre crop: the same geometry on
  square renders, a slightly different antialiasing filter; we follow the conditioner the model was trained
  with.) The embedding is ``model.visual(x)``: the projected pooled token, NOT L2-normalized (1024-d for
  ViT-H-14, 32-d for the tiny model).

Latents. Per image we keep the VAE posterior mean and std UNSCALED (the AutoencoderKL's own latent space);
training draws ``z = (mean + std * eps) * scaling_factor`` with ``scaling_factor`` = 0.18215 for SD2.1
(stored in the latent sample's meta). ``decode_latents`` takes SCALED latents, as the diffusion model
produces them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

VAE_SCALING_FACTOR = 0.18215
"""SD2.1 VAE latent scale (``vae.config.scaling_factor``)."""
VAE_DOWNSAMPLE = 8
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKGROUND = (1.0, 1.0, 1.0)
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
TINY_CLIP_CKPT = "open_clip_pytorch_model.bin"


class EncoderWeightsError(FileNotFoundError):
    """Encoder weights are missing; the message names the path and how to supply it."""


# ----------------------------------------------------------------------------------------------------------
# Pixels


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


# ----------------------------------------------------------------------------------------------------------
# Loading


def _torch_dtype(name: str) -> torch.dtype:
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of float32, bfloat16, float16") from None


def _vae_source(path: str, subfolder: str) -> str:
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


def _clip_checkpoint(pretrained: str) -> Path:
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


def load_vae(
    path: str, subfolder: str = "vae", device: str = "cpu", dtype: str = "float32"
) -> torch.nn.Module:
    """The AutoencoderKL from a local folder (``<path>/<subfolder>/config.json``) or a cached hub id."""
    source = _vae_source(path, subfolder)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(
            source, subfolder=subfolder, local_files_only=True, torch_dtype=_torch_dtype(dtype)
        )
    except OSError as exc:
        raise EncoderWeightsError(
            f"cannot load the VAE from {path!r} (subfolder {subfolder!r}) without a download: {exc}. "
            "Put the model in the local Hugging Face cache or set encode.vae_path to a local folder"
        ) from exc
    return vae.to(device=device).eval().requires_grad_(False)


def load_clip(
    model_name: str, pretrained: str, model_config: str = "", device: str = "cpu", dtype: str = "float32"
) -> torch.nn.Module:
    """The open_clip image tower (``model.visual``) from a local checkpoint file.

    ``model_config``: optional open_clip model-config json (file name = model name), registered with
    ``open_clip.add_model_config`` first; empty for built-in architectures such as ViT-H-14.
    """
    ckpt = _clip_checkpoint(pretrained)
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
    return visual.to(device=device, dtype=_torch_dtype(dtype)).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# Tiny encoders


def make_tiny_encoders(directory: str | Path, seed: int = 0) -> dict[str, str]:
    """Save a tiny random VAE and CLIP under ``directory`` (once; atomic) and return their load paths.

    Returns {"vae_path", "vae_subfolder", "clip_model", "clip_pretrained", "clip_model_config"}, to be given
    to `load_vae` / `load_clip` exactly as real weights would be. Same seed, same weights.
    """
    directory = Path(directory).expanduser()
    paths = {
        "vae_path": str(directory),
        "vae_subfolder": "vae",
        "clip_model": TINY_CLIP_NAME,
        "clip_pretrained": str(directory / "clip" / TINY_CLIP_CKPT),
        "clip_model_config": str(directory / "clip" / f"{TINY_CLIP_NAME}.json"),
    }
    if (directory / "COMPLETE").is_file():
        return paths
    import open_clip
    from diffusers import AutoencoderKL

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        torch.manual_seed(seed)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "clip").mkdir()
        cfg_file = tmp / "clip" / f"{TINY_CLIP_NAME}.json"
        cfg_file.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
        open_clip.add_model_config(cfg_file)
        torch.manual_seed(seed + 1)
        model = open_clip.create_model(TINY_CLIP_NAME, pretrained=None)
        torch.save(model.state_dict(), tmp / "clip" / TINY_CLIP_CKPT)
        (tmp / "COMPLETE").write_text(json.dumps({"seed": seed}))
        tmp.chmod(0o755)  # mkdtemp makes it private
        try:
            os.replace(tmp, directory)
        except OSError:  # another process finished first (the directory exists): theirs is as good
            if not (directory / "COMPLETE").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved tiny random encoders under %s", directory)
    return paths


# ----------------------------------------------------------------------------------------------------------
# Resolved spec and the encoder pair


@dataclass(frozen=True)
class EncoderSpec:
    """Everything an encoder process needs to load the pair (plain strings: picklable, loggable)."""

    vae_path: str
    vae_subfolder: str
    clip_model: str
    clip_pretrained: str
    clip_model_config: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    tiny: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    static_batch: int = 0
    """> 0: the VAE always sees batches of exactly this many images (larger ones are split, the last part is
    padded), so a compiled VAE is compiled once: a new batch size would recompile it (minutes with
    max-autotune) and PyTorch's automatic dynamic shapes would then make every later batch take a slower
    dynamic-shape graph. Set from encode.batch_size when compiling. Applies per call of ``encode`` (the
    actor calls it once per image resolution in a batch), so mixed resolutions in one batch pad each group."""
    official_checkpoint: str = ""
    """When set: VAE and CLIP weights from this official .safetensors (vae_path/clip_pretrained unused)."""
    official_vae_config: str = ""
    """AutoencoderKL config json for the official path; empty: SD2.1 (official_weights.SD21_VAE_CONFIG)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_spec(cfg: Any, out_dir: str | Path, device: str) -> EncoderSpec:
    """EncodeConfig + output folder + concrete device ("cpu" | "cuda") -> EncoderSpec.

    In tiny mode the tiny weights are created first (under ``cfg.tiny_dir`` or ``<out_dir>/encoders/tiny``).
    With ``cfg.official_checkpoint`` both encoders come from that file (``clip_model``/``clip_model_config``
    still name the CLIP architecture).
    """
    official = getattr(cfg, "official_checkpoint", "")
    if official and cfg.tiny:
        raise ValueError("encode.official_checkpoint and encode.tiny exclude each other: set one of them")
    if official:
        paths = {
            "vae_path": "",
            "vae_subfolder": cfg.vae_subfolder,
            "clip_model": cfg.clip_model,
            "clip_pretrained": "",
            "clip_model_config": cfg.clip_model_config,
            "official_checkpoint": official,
            "official_vae_config": getattr(cfg, "official_vae_config", ""),
        }
    elif cfg.tiny:
        tiny_dir = Path(cfg.tiny_dir).expanduser() if cfg.tiny_dir else Path(out_dir) / "encoders" / "tiny"
        paths = make_tiny_encoders(tiny_dir)
    else:
        paths = {
            "vae_path": cfg.vae_path,
            "vae_subfolder": cfg.vae_subfolder,
            "clip_model": cfg.clip_model,
            "clip_pretrained": cfg.clip_pretrained,
            "clip_model_config": cfg.clip_model_config,
        }
    dtype = cfg.dtype if device == "cuda" else "float32"  # bf16/fp16 convolutions on CPU are slow and inexact
    return EncoderSpec(
        **paths,
        device=device,
        dtype=dtype,
        tiny=cfg.tiny,
        channels_last=cfg.channels_last,
        compile=cfg.compile and device == "cuda",
        compile_mode=cfg.compile_mode,
        static_batch=cfg.batch_size if cfg.compile and device == "cuda" else 0,
    )


def check_weights(spec: EncoderSpec) -> None:
    """Fail fast (in the driver, before any worker starts) when a weight file is missing.

    For an official checkpoint the file's header is checked too: every needed key, with its shape.
    """
    if spec.official_checkpoint:
        from curation.official_weights import check_official_checkpoint

        check_official_checkpoint(
            spec.official_checkpoint,
            spec.official_vae_config or None,
            spec.clip_model,
            spec.clip_model_config,
        )
        return
    _vae_source(spec.vae_path, spec.vae_subfolder)
    _clip_checkpoint(spec.clip_pretrained)
    if spec.clip_model_config and not Path(spec.clip_model_config).expanduser().is_file():
        raise EncoderWeightsError(f"no open_clip model config at {spec.clip_model_config}")


def describe_encoders(spec: EncoderSpec) -> dict[str, Any]:
    """The encoder record stored in every latent sample's meta, read from the configs (no weights loaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    from diffusers import AutoencoderKL

    check_weights(spec)
    if spec.official_checkpoint:
        from curation.official_weights import vae_config

        vae_cfg = vae_config(spec.official_vae_config or None)
    else:
        vae_cfg = AutoencoderKL.load_config(
            _vae_source(spec.vae_path, spec.vae_subfolder),
            subfolder=spec.vae_subfolder,
            local_files_only=True,
        )
    if spec.clip_model_config:
        open_clip.add_model_config(Path(spec.clip_model_config).expanduser())
    clip_cfg = open_clip.get_model_config(spec.clip_model)
    if clip_cfg is None:
        raise ValueError(f"unknown open_clip model {spec.clip_model!r}")
    size = clip_cfg["vision_cfg"].get("image_size", 224)
    vae_name, clip_name = spec.vae_path, Path(spec.clip_pretrained).name
    if spec.tiny:
        vae_name = clip_name = "tiny-random"
    elif spec.official_checkpoint:
        vae_name = clip_name = f"official:{Path(spec.official_checkpoint).name}"
    return {
        "vae": vae_name,
        "vae_subfolder": spec.vae_subfolder,
        "vae_scaling_factor": float(vae_cfg.get("scaling_factor", VAE_SCALING_FACTOR)),
        "latent_channels": int(vae_cfg.get("latent_channels", 4)),
        "downsample": 2 ** (len(vae_cfg.get("block_out_channels", [0] * 4)) - 1),
        "latents": "unscaled posterior mean and std; z = (mean + std * eps) * vae_scaling_factor",
        "clip_model": spec.clip_model,
        "clip_pretrained": clip_name,
        "clip_dim": int(clip_cfg["embed_dim"]),
        "clip_image_size": int(size[0] if isinstance(size, list | tuple) else size),
        "clip_preprocess": CLIP_PREPROCESS,
        "clip_normalized": False,
        "background": list(BACKGROUND),
        "compute_dtype": spec.dtype,
        "tiny": spec.tiny,
    }


class MatmulAttnProcessor:
    """The VAE mid-block self-attention with explicit matmuls and an fp32 softmax.

    Same function as diffusers' AttnProcessor2_0 for this block (no mask, no cross-attention); used on GPU
    because SDPA has no fast kernel for its single head of dim 512 (flash attention stops at 256; the
    memory-efficient fallback ran at ~120 TFLOP/s on an H100, see benchmarks/RESULTS.md).
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


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


@dataclass
class EncodedImages:
    """Per-image encodings, float32 numpy: mean/std (N, 4, H/8, W/8) unscaled, clip (N, D)."""

    mean: np.ndarray
    std: np.ndarray
    clip: np.ndarray


class Encoders:
    """The loaded VAE + CLIP image tower; `encode` maps uint8 RGBA renders to latents and embeddings."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        self.device = torch.device(spec.device)
        self.dtype = _torch_dtype(spec.dtype)
        self._deferred_bias = False
        self.load_reports: dict[str, Any] = {}
        """Official path only: {"vae", "clip"} -> official_weights.LoadReport (keys read, unused keys)."""
        if spec.official_checkpoint:
            from curation.official_weights import load_official_clip, load_official_vae

            self.vae, vae_report = load_official_vae(
                spec.official_checkpoint, spec.official_vae_config or None, spec.device, spec.dtype
            )
            self.clip, clip_report = load_official_clip(
                spec.official_checkpoint, spec.clip_model, spec.clip_model_config, spec.device, spec.dtype
            )
            self.load_reports = {"vae": vae_report, "clip": clip_report}
        else:
            self.vae = load_vae(spec.vae_path, spec.vae_subfolder, spec.device, spec.dtype)
            self.clip = load_clip(
                spec.clip_model, spec.clip_pretrained, spec.clip_model_config, spec.device, spec.dtype
            )
        size = self.clip.image_size
        self.clip_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.clip_dim = int(self.clip.output_dim)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        if spec.channels_last:
            self.vae = self.vae.to(memory_format=torch.channels_last)
        if spec.device == "cuda":
            use_matmul_attention(self.vae)
            if spec.channels_last:  # Triton GroupNorm statistics: 233 -> 272 img/s compiled (RESULTS.md)
                from curation.groupnorm import use_channels_last_group_norm
                from curation.vae_encoder import supports_deferred_bias

                use_channels_last_group_norm(self.vae.encoder)
                # biases deferred into the GroupNorm statistics: no extra pass per conv -> norm, 267 -> 293
                # img/s compiled; eager, the residual's bias add would be a pass of its own (not measured)
                self._deferred_bias = spec.compile and supports_deferred_bias(self.vae.encoder)
        self._moments = self._vae_moments
        if spec.compile:  # the VAE only: the compiled CLIP tower ran slower than eager (RESULTS.md)
            mode = None if spec.compile_mode == "default" else spec.compile_mode
            self._moments = torch.compile(self._vae_moments, mode=mode, dynamic=False)

    def _vae_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What ``vae.encode(x).latent_dist`` holds: posterior mean and clamped log-variance."""
        if self._deferred_bias:
            from curation.vae_encoder import encoder_forward

            h = encoder_forward(self.vae.encoder, x)
        else:
            h = self.vae.encoder(x)
        if self.vae.quant_conv is not None:
            h = self.vae.quant_conv(h)
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def _static_batches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_moments`` over batches of exactly ``spec.static_batch`` images (padded with copies of the last
        image, whose results are dropped); all of ``x`` at once when ``static_batch`` is 0."""
        size, n = self.spec.static_batch, x.shape[0]
        if size <= 0 or n == size:
            return self._moments(x)
        means, logvars = [], []
        for start in range(0, n, size):
            part = x[start : start + size]
            if part.shape[0] < size:
                pad = part[-1:].expand(size - part.shape[0], *part.shape[1:])
                part = torch.cat([part, pad]).contiguous(memory_format=_memory_format(x))
            mean, logvar = self._moments(part)
            means.append(mean)
            logvars.append(logvar)
        return torch.cat(means)[:n], torch.cat(logvars)[:n]

    def info(self) -> dict[str, Any]:
        """What the latent meta records about the encoders (`describe_encoders` of the spec)."""
        return describe_encoders(self.spec)

    @torch.inference_mode()
    def encode(self, rgba: np.ndarray | torch.Tensor) -> EncodedImages:
        """uint8 RGBA (N, H, W, 4) -> EncodedImages (float32); N >= 1, H and W multiples of 8."""
        if len(rgba) == 0:
            raise ValueError("Encoders.encode needs at least one image")
        rgb = composite_on_white(torch.as_tensor(rgba).to(self.device))  # uint8 over the bus, not float
        x = vae_input(rgb).to(self.dtype)
        if self.spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mean, logvar = self._static_batches(x)
        mean = mean.float()
        # std from the clamped logvar in float32: exp in bf16 would lose precision for nothing
        std = torch.exp(0.5 * logvar.float())
        emb = self.clip(clip_preprocess(rgb, self.clip_size).to(self.dtype)).float()
        return EncodedImages(mean=mean.cpu().numpy(), std=std.cpu().numpy(), clip=emb.cpu().numpy())


# ----------------------------------------------------------------------------------------------------------
# Decoder side


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
