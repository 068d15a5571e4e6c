"""The encoder pair of the latent stage: the SD2.1 VAE (model/vae.py) and the OpenCLIP image tower
(model/clip_image.py), loaded together and run on uint8 RGBA renders.

Sources (:class:`EncoderSpec`, resolved from the ``encode`` config by :func:`resolve_spec`):
- a diffusers VAE folder plus an open_clip checkpoint file (local files only);
- an official checkpoint (``encode.official_checkpoint``): both come from one ``sv4d2.safetensors`` /
  ``sv3d_p.safetensors`` (model/official_encoders.py; read key by key);
- tiny mode (demo, tests): a small randomly initialized VAE (``save_pretrained``) and a small CLIP (open_clip
  state dict plus a model-config json) are SAVED to disk first and then loaded through the same functions.
The pixel rules (model/vae.py, model/clip_image.py) are the same for every source.

Per image the pair gives the VAE posterior mean and std UNSCALED and the CLIP embedding (not normalized);
:func:`describe_encoders` is the record that latent shards store in their meta.
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

from model.clip_image import (
    CLIP_PREPROCESS,
    TINY_CLIP_CKPT,
    TINY_CLIP_CONFIG,
    TINY_CLIP_NAME,
    clip_checkpoint,
    embed_images,
    load_clip,
    tower_size,
)
from model.dtypes import torch_dtype
from model.vae import (
    BACKGROUND,
    TINY_VAE_CONFIG,
    VAE_SCALING_FACTOR,
    EncoderWeightsError,
    composite_on_white,
    load_vae,
    posterior_moments,
    use_matmul_attention,
    vae_input,
    vae_source,
)

log = logging.getLogger(__name__)


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
    """AutoencoderKL config json for the official path; empty: SD2.1 (official_encoders.SD21_VAE_CONFIG)."""

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
        from model.official_encoders import check_official_checkpoint

        check_official_checkpoint(
            spec.official_checkpoint,
            spec.official_vae_config or None,
            spec.clip_model,
            spec.clip_model_config,
        )
        return
    vae_source(spec.vae_path, spec.vae_subfolder)
    clip_checkpoint(spec.clip_pretrained)
    if spec.clip_model_config and not Path(spec.clip_model_config).expanduser().is_file():
        raise EncoderWeightsError(f"no open_clip model config at {spec.clip_model_config}")


def describe_encoders(spec: EncoderSpec) -> dict[str, Any]:
    """The encoder record stored in every latent sample's meta, read from the configs (no weights loaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import open_clip
    from diffusers import AutoencoderKL

    check_weights(spec)
    if spec.official_checkpoint:
        from model.official_encoders import vae_config

        vae_cfg = vae_config(spec.official_vae_config or None)
    else:
        vae_cfg = AutoencoderKL.load_config(
            vae_source(spec.vae_path, spec.vae_subfolder),
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
        self.dtype = torch_dtype(spec.dtype)
        self._deferred_bias = False
        self.load_reports: dict[str, Any] = {}
        """Official path only: {"vae", "clip"} -> official_encoders.LoadReport (keys read, unused keys)."""
        if spec.official_checkpoint:
            from model.official_encoders import load_official_clip, load_official_vae

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
        self.clip_size = tower_size(self.clip)
        self.clip_dim = int(self.clip.output_dim)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        if spec.channels_last:
            self.vae = self.vae.to(memory_format=torch.channels_last)
        if spec.device == "cuda":
            use_matmul_attention(self.vae)
            if spec.channels_last:  # Triton GroupNorm statistics: faster compiled (benchmarks/RESULTS.md)
                from model.kernels.groupnorm import use_channels_last_group_norm
                from model.kernels.vae_encoder import supports_deferred_bias

                use_channels_last_group_norm(self.vae.encoder)
                # biases deferred into the GroupNorm statistics: no extra pass per conv -> norm (faster
                # compiled, RESULTS.md); eager, the residual's bias add would be a pass of its own
                self._deferred_bias = spec.compile and supports_deferred_bias(self.vae.encoder)
        self._moments = self._vae_moments
        if spec.compile:  # the VAE only: the compiled CLIP tower ran slower than eager (RESULTS.md)
            mode = None if spec.compile_mode == "default" else spec.compile_mode
            self._moments = torch.compile(self._vae_moments, mode=mode, dynamic=False)

    def _vae_moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._deferred_bias:
            from model.kernels.vae_encoder import encoder_forward

            return posterior_moments(self.vae, x, encoder_forward)
        return posterior_moments(self.vae, x)

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
        emb = embed_images(self.clip, rgb, self.dtype)
        return EncodedImages(mean=mean.cpu().numpy(), std=std.cpu().numpy(), clip=emb.cpu().numpy())


# ----------------------------------------------------------------------------------------------------------
