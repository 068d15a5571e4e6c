"""Architecture knobs of the SV4D 2.0 UNet (no torch import, so profiles and CLIs can read it cheaply).

Two named configs:

- ``sv4d2``: the official geometry (Stability-AI ``scripts/sampling/configs/sv4d2.yaml``): 320 model channels,
  channel multipliers (1, 2, 4, 4), 2 res blocks per level, attention at the three finest levels, 64 channels
  per head, depth 1, CLIP context 1024, 8 input channels (noisy latent + conditioning latent), 4 output
  channels, a 1280-d conditioning vector (256-d sigma + 512-d polar + 512-d azimuth embeddings), 4-d motion
  context (the reference-view VAE latent). Exactly 2,010,961,338 parameters.
- ``tiny``: the same code path at toy size, for CPU tests.

``camera_attention`` picks how the camera ("3D") block arranges its tokens (:data:`CAMERA_ATTENTION_MODES`):

- ``paper`` (default, our own models): for each frame, attention over all V*H*W tokens of that frame, with the
  frame's CLIP token as context (paper eq. 2).
- ``snapshot``: the released ``sv4d2.safetensors`` code (Stability-AI/generative-models 0ad7de9,
  ``use_3d_attention: True``). Tokens are laid out (batch, view, pixel) x frame and cut into sequences of V
  consecutive rows: V horizontally adjacent pixels of one view at one frame. The CLIP context of sequence
  j = g*F + s (g: group within the batch element, s: frame) is that of frame floor(j / (H*W)), not frame s.
- ``views``: the released ``sv4d2_8views.safetensors`` code (``use_3d_attention: False``): attention over
  the V views at each (frame, pixel), with that frame's CLIP token.

All three modes have the same parameters, so a checkpoint loads into any of them.

A config is saved beside the weights as ``config.json`` (like diffusers) with :func:`save_config` and read
back with :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FILENAME = "config.json"
CAMERA_ATTENTION_MODES = ("paper", "snapshot", "views")


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`model.unet.SV4D2UNet`.

    Channel counts must be divisible by ``norm_groups`` and by ``num_head_channels`` where attention is used.
    ``adm_in_channels`` must equal ``sigma_emb_dim + 2 * angle_emb_dim`` (the conditioning vector is the
    concatenation [sigma embedding, polar embedding, azimuth embedding], as in the official conditioner).
    The camera MLPs read the UNet embedding (``time_embed_dim`` = 4 * model_channels wide), as the release,
    whose layer is declared ``adm_in_channels`` wide (equal at full size: 1280 = 4 x 320).
    """

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Downsampling factors (1 = full latent resolution) at which transformers sit.
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    # Channels of the reference-view latent that the frame attention cross-attends to.
    motion_context_dim: int = 4
    sigma_emb_dim: int = 256
    angle_emb_dim: int = 512
    adm_in_channels: int = 1280
    temporal_kernel_size: int = 3
    norm_groups: int = 32
    dropout: float = 0.0
    max_period: int = 10000
    # Initial logit of time_mixer (ResBlocks and camera block); sigmoid(0) = 0.5 as in the official config.
    merge_factor_init: float = 0.0
    # Initial logit of time_mixer_motion. The frame block's weight is alpha_f = 1 - sigmoid(logit); 5.0 gives
    # alpha_f = 0.0067 ("near zero", paper sec. 3.2). Only used for freshly initialised frame layers.
    motion_merge_factor_init: float = 5.0
    gradient_checkpointing: bool = False
    # How the camera ("3D") block groups tokens: paper | snapshot | views (module docstring).
    camera_attention: str = "paper"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.adm_in_channels != self.sigma_emb_dim + 2 * self.angle_emb_dim:
            raise ValueError(
                f"adm_in_channels={self.adm_in_channels} must equal sigma_emb_dim + 2 * angle_emb_dim "
                f"= {self.sigma_emb_dim + 2 * self.angle_emb_dim}"
            )
        if self.sigma_emb_dim % 2 or self.angle_emb_dim % 2:
            raise ValueError(f"embedding dims must be even, got {self.sigma_emb_dim}, {self.angle_emb_dim}")
        if not self.channel_mult:
            raise ValueError("channel_mult must not be empty")
        for mult in self.channel_mult:
            ch = mult * self.model_channels
            if ch % self.norm_groups:
                raise ValueError(f"channels {ch} not divisible by norm_groups={self.norm_groups}")
            if ch % self.num_head_channels:
                raise ValueError(f"channels {ch} not divisible by num_head_channels={self.num_head_channels}")
        if self.camera_attention not in CAMERA_ATTENTION_MODES:
            raise ValueError(
                f"camera_attention must be one of {CAMERA_ATTENTION_MODES}, got {self.camera_attention!r}"
            )
        if self.temporal_kernel_size % 2 != 1:
            raise ValueError(f"temporal_kernel_size must be odd, got {self.temporal_kernel_size}")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig keys: {unknown}")
        d = dict(d)
        for k in ("channel_mult", "attention_resolutions"):
            if k in d:
                d[k] = tuple(int(v) for v in d[k])
        return cls(**d)

    def replace(self, **changes: Any) -> UNetConfig:
        return dataclasses.replace(self, **changes)


SV4D2 = UNetConfig(name="sv4d2")

TINY = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(1, 2),
    num_head_channels=16,
    context_dim=32,
    sigma_emb_dim=16,
    angle_emb_dim=32,
    adm_in_channels=80,
    norm_groups=8,
    name="tiny",
)

CONFIGS: dict[str, UNetConfig] = {"sv4d2": SV4D2, "tiny": TINY}


def get_config(name: str) -> UNetConfig:
    """Named config (``sv4d2`` or ``tiny``)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown UNet config {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name]


def save_config(config: UNetConfig, directory: str | Path) -> Path:
    """Write ``config.json`` into ``directory`` (created if missing) and return its path."""
    path = Path(directory) / CONFIG_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def load_config(path: str | Path) -> UNetConfig:
    """Read a config from ``config.json`` or from a directory holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_FILENAME
    if not p.is_file():
        raise FileNotFoundError(f"no UNet config at {p}")
    return UNetConfig.from_dict(json.loads(p.read_text()))
