"""The encoders' weights taken from an official SV4D 2.0 / SV3D_p checkpoint (``sv4d2.safetensors``).

The official file carries the whole sgm ``DiffusionEngine``; besides the UNet it holds
- ``conditioner.embedders.0.open_clip.model.*``: the OpenCLIP ViT-H-14 of the image conditioner, open_clip
  naming (``visual.*`` plus text-side leftovers that the image embedder never uses: ``positional_embedding``,
  ``text_projection``, ``logit_scale``, ``token_embedding.weight``, ``ln_final.*``);
- ``conditioner.embedders.1.encoder.*``: sgm ``AutoencoderKLModeOnly`` (the SD2.1 VAE, LDM naming) that
  encodes the conditioning frames: ``encoder.*``, ``quant_conv.*`` (and an unused ``decoder.*`` and
  ``post_quant_conv.*`` where the file has them; embedders 4 and 5 of sv4d2 repeat the same weights);
- ``first_stage_model.*``: sgm ``AutoencodingEngine`` whose encoder is ``Identity``: only ``decoder.*``.

What we build from it (:func:`load_official_vae`, :func:`load_official_clip`)
- ONE diffusers ``AutoencoderKL`` (SD2.1 architecture, :data:`SD21_VAE_CONFIG`) that encodes with the
  conditioner's encoder + ``quant_conv`` and decodes with ``first_stage_model.decoder``, exactly the two paths
  the official sampler uses. ``AutoencodingEngine.decode(z)`` is ``decoder(z)`` with NO ``post_quant_conv``
  (the class has none; the reference TSV lists no ``first_stage_model.post_quant_conv``), so the model is
  built with ``use_post_quant_conv=False``: ``vae.decode`` computes what the official first stage computes.
  LDM names become diffusers names through diffusers' own
  ``diffusers.loaders.single_file_utils.convert_ldm_vae_checkpoint`` (bare LDM keys in, no prefix; it also
  turns the attention's 1x1-conv weights (C, C, 1, 1) into linear (C, C)). :func:`diffusers_to_ldm_vae` is its
  exact inverse (tested as such), used to derive the expected official layout from the diffusers model and to
  write checkpoints in the official layout.
- The open_clip image tower (``model.visual`` of ``open_clip.create_model(name, pretrained=None)``) loaded
  strictly from the ``visual.*`` keys; the text-side leftovers are reported as unused.

Reading is streamed: the layout is derived from the models built on the meta device, the file's header is
checked against it (every missing key and every shape mismatch is named), and only the needed tensors are
read with ``safetensors.safe_open``; the models are filled with ``load_state_dict(assign=True)``, so no
random initialisation is ever computed. The file's dtype is kept until the final ``.to(dtype)``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from model.convert import CLIP_PREFIX, VAE_DECODER_PREFIX, VAE_ENCODER_PREFIX
from model.dtypes import torch_dtype
from model.vae import EncoderWeightsError

log = logging.getLogger(__name__)

SD21_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "scaling_factor": 0.18215,
}
"""``stabilityai/stable-diffusion-2-1`` ``vae/config.json`` (architecture and scale)."""

VISUAL_PREFIX = CLIP_PREFIX + "visual."
"""Official prefix of the CLIP image tower's keys."""

_MAX_NAMED = 20


class OfficialCheckpointError(ValueError):
    """The official checkpoint lacks keys we need or holds them with other shapes; the message names them."""


@dataclass
class LoadReport:
    """What a load read from the official file (official key names)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    """Keys under the same prefixes that this model does not use (e.g. CLIP text leftovers)."""
    dtypes: dict[str, int] = field(default_factory=dict)
    """Stored dtype -> number of loaded tensors."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{len(self.loaded)} tensors loaded from {Path(self.path).name} (dtypes {self.dtypes}), "
            f"{len(self.unused)} unused under the same prefixes"
        )


# ----------------------------------------------------------------------------------------------------------
# LDM <-> diffusers names of the VAE


def ldm_to_diffusers_vae(
    ldm: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Bare LDM/sgm VAE keys (``encoder.down.0.block.0.norm1.weight``...) -> diffusers AutoencoderKL keys.

    diffusers' own converter. It strips ``first_stage_model.`` / ``vae.`` when any key carries one, so the
    input must be bare keys of one autoencoder (never a mix of prefixes).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(ldm), dict(config))


_RESNET_RENAMES = (("conv_shortcut.", "nin_shortcut."),)
_ATTN_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_TOP_RENAMES = {"conv_norm_out": "norm_out"}


def _ldm_resnet_param(name: str) -> str:
    """A diffusers ResnetBlock2D parameter name as LDM names it (conv_shortcut -> nin_shortcut...)."""
    for old, new in _RESNET_RENAMES:
        name = name.replace(old, new)
    return name


def _ldm_vae_key(key: str, num_up: int) -> str:
    m = re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.{_TOP_RENAMES.get(m[2], m[2])}.{m[3]}"
    if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", key):
        return key
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        rest = _ldm_resnet_param(m[3])
        return f"encoder.down.{m[1]}.block.{m[2]}.{rest}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        rest = _ldm_resnet_param(m[3])
        return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{rest}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", key)
    if m:
        return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        rest = _ldm_resnet_param(m[3])
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{rest}"
    m = re.fullmatch(
        r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key
    )
    if m:
        return f"{m[1]}.mid.attn_1.{_ATTN_RENAMES[m[2]]}.{m[3]}"
    raise ValueError(f"no LDM name for diffusers VAE key {key!r}")


def diffusers_to_ldm_vae(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL state dict -> bare LDM/sgm keys; the inverse of :func:`ldm_to_diffusers_vae`.

    Attention q/k/v/proj_out weights go from linear (C, C) back to the LDM 1x1 conv (C, C, 1, 1). Works on
    meta tensors (layout checks). Unknown keys raise ValueError.
    """
    ups = {int(m[1]) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    num_up = max(ups) + 1 if ups else 0
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        new = _ldm_vae_key(key, num_up)
        if ".mid.attn_1." in new and new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            if t.ndim == 2:
                t = t[:, :, None, None]
        out[new] = t
    return out


# ----------------------------------------------------------------------------------------------------------
# Model skeletons and expected layouts


def vae_config(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """AutoencoderKL config of the official VAE: SD2.1 (None/""), a dict or json file; no post_quant_conv."""
    if config is None or config == "":
        cfg = dict(SD21_VAE_CONFIG)
    elif isinstance(config, Mapping):
        cfg = dict(config)
    else:
        p = Path(config).expanduser()
        if not p.is_file():
            raise EncoderWeightsError(f"no VAE config json at {p} (encode.official_vae_config)")
        cfg = {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}
    # the official first stage (sgm AutoencodingEngine) decodes with decoder(z) alone: see the module doc
    cfg["use_post_quant_conv"] = False
    cfg.setdefault("use_quant_conv", True)
    return cfg


def build_vae(
    config: Mapping[str, Any] | None = None, device: str | torch.device = "meta"
) -> torch.nn.Module:
    """The diffusers AutoencoderKL skeleton (meta by default: no memory, no random init)."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**vae_config(config))


def _register_clip_config(model_config: str) -> None:
    if not model_config:
        return
    import open_clip

    p = Path(model_config).expanduser()
    if not p.is_file():
        raise EncoderWeightsError(f"no open_clip model config at {p} (encode.clip_model_config)")
    open_clip.add_model_config(p)


def build_clip_visual(model_name: str = "ViT-H-14", model_config: str = "") -> torch.nn.Module:
    """The open_clip image tower of ``model_name`` on the meta device (the text tower is dropped)."""
    import open_clip

    _register_clip_config(model_config)
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r} (give encode.clip_model_config for new ones)"
        )
    # the meta context matters: create_model(device="meta") alone would initialise on the CPU first (~20 s)
    with torch.device("meta"):
        model = open_clip.create_model(model_name, pretrained=None, device="meta")
    return model.visual


def official_vae_layout(vae: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Official keys and shapes that fill ``vae``: encoder + quant_conv from the conditioner, decoder from the
    first stage."""
    layout: dict[str, tuple[int, ...]] = {}
    for k, t in diffusers_to_ldm_vae(vae.state_dict()).items():
        prefix = VAE_DECODER_PREFIX if k.startswith(("decoder.", "post_quant_conv.")) else VAE_ENCODER_PREFIX
        layout[prefix + k] = tuple(t.shape)
    return layout


def official_clip_layout(visual: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Official keys and shapes of the open_clip image tower."""
    return {VISUAL_PREFIX + k: tuple(t.shape) for k, t in visual.state_dict().items()}


def to_official_state_dict(
    vae: torch.nn.Module | None = None, visual: torch.nn.Module | None = None
) -> dict[str, torch.Tensor]:
    """diffusers VAE and/or open_clip image tower -> tensors under the official keys (what the loaders read).

    The VAE's encoder + quant_conv go under the conditioner's prefix, its decoder under
    ``first_stage_model.``; a ``post_quant_conv`` (absent from the official layout) is refused.
    """
    out: dict[str, torch.Tensor] = {}
    if vae is not None:
        ldm = diffusers_to_ldm_vae(vae.state_dict())
        if any(k.startswith("post_quant_conv.") for k in ldm):
            raise ValueError(
                "the official layout has no first_stage_model.post_quant_conv: build the VAE with "
                "use_post_quant_conv=False"
            )
        for k, t in ldm.items():
            prefix = VAE_DECODER_PREFIX if k.startswith("decoder.") else VAE_ENCODER_PREFIX
            out[prefix + k] = t.detach().contiguous()
    if visual is not None:
        out.update({VISUAL_PREFIX + k: t.detach().contiguous() for k, t in visual.state_dict().items()})
    return out


# ----------------------------------------------------------------------------------------------------------
# Streaming reads


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f", ... and {len(keys) - _MAX_NAMED} more" if len(keys) > _MAX_NAMED else "")


def _check_file(path: str | Path) -> Path:
    if not path:
        raise EncoderWeightsError("encode.official_checkpoint is empty")
    p = Path(path).expanduser()
    if not p.is_file():
        raise EncoderWeightsError(
            f"no official checkpoint at {p}: encode.official_checkpoint must be a local sv4d2.safetensors or "
            "sv3d_p.safetensors (the VAE and CLIP weights are taken from its conditioner and first stage)"
        )
    return p


def check_layout(path: str | Path, layout: Mapping[str, tuple[int, ...]]) -> None:
    """Header-only check (no tensor read): every key of ``layout`` is in the file with its shape."""
    from safetensors import safe_open

    with safe_open(str(_check_file(path)), framework="pt", device="cpu") as f:
        _check_against(f, layout, path)


def _check_against(f: Any, layout: Mapping[str, tuple[int, ...]], path: str | Path) -> None:
    present = set(f.keys())
    missing = sorted(k for k in layout if k not in present)
    if missing:
        raise OfficialCheckpointError(f"{path}: {len(missing)} keys missing: {_named(missing)}")
    wrong = [
        f"{k} {tuple(f.get_slice(k).get_shape())} (expected {layout[k]})"
        for k in layout
        if tuple(f.get_slice(k).get_shape()) != tuple(layout[k])
    ]
    if wrong:
        raise OfficialCheckpointError(f"{path}: {len(wrong)} keys with other shapes: {_named(wrong)}")


def read_official(
    path: str | Path, layout: Mapping[str, tuple[int, ...]], unused_prefixes: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read exactly the keys of ``layout`` from the official file (after checking them all in its header)."""
    from safetensors import safe_open

    p = _check_file(path)
    report = LoadReport(path=str(p))
    out: dict[str, torch.Tensor] = {}
    with safe_open(str(p), framework="pt", device="cpu") as f:
        _check_against(f, layout, p)
        for k in layout:
            t = f.get_tensor(k)
            out[k] = t
            name = str(t.dtype).removeprefix("torch.")
            report.dtypes[name] = report.dtypes.get(name, 0) + 1
        report.unused = sorted(k for k in f.keys() if k.startswith(unused_prefixes) and k not in layout)
    report.loaded = sorted(out)
    return out, report


def _finish(module: torch.nn.Module, device: str, dtype: str) -> torch.nn.Module:
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:  # assign=True replaced every state-dict entry; anything still on meta was never filled
        raise RuntimeError(f"tensors left uninitialised on the meta device: {_named(left)}")
    # plain nn.Module.to: diffusers' override warns about fp32-kept modules, which AutoencoderKL has none of
    module = torch.nn.Module.to(module, device=device, dtype=torch_dtype(dtype))
    return module.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# Loaders


def load_official_vae(
    path: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    device: str = "cpu",
    dtype: str = "float32",
) -> tuple[torch.nn.Module, LoadReport]:
    """The diffusers AutoencoderKL filled from an official checkpoint; see the module doc for which weights.

    ``config``: the architecture (default SD2.1; a dict or json path for tests). Returns (vae, report); the
    report's ``unused`` lists the conditioner VAE's own decoder/post_quant_conv and any other key under the
    two prefixes that this model does not take.
    """
    cfg = vae_config(config)
    skeleton = build_vae(cfg)
    layout = official_vae_layout(skeleton)
    official, report = read_official(path, layout, unused_prefixes=(VAE_ENCODER_PREFIX, VAE_DECODER_PREFIX))
    ldm = {
        k.removeprefix(VAE_ENCODER_PREFIX).removeprefix(VAE_DECODER_PREFIX): t for k, t in official.items()
    }
    sd = ldm_to_diffusers_vae(ldm, cfg)
    expected = set(skeleton.state_dict())
    if set(sd) != expected:  # the converter dropped or invented keys: a diffusers change we must hear about
        raise OfficialCheckpointError(
            f"diffusers' converter gave a different key set: missing {_named(sorted(expected - set(sd)))}; "
            f"unexpected {_named(sorted(set(sd) - expected))}"
        )
    skeleton.load_state_dict(sd, strict=True, assign=True)
    log.info("official VAE: %s", report.summary())
    return _finish(skeleton, device, dtype), report


def load_official_clip(
    path: str | Path,
    model_name: str = "ViT-H-14",
    model_config: str = "",
    device: str = "cpu",
    dtype: str = "float32",
) -> tuple[torch.nn.Module, LoadReport]:
    """The open_clip image tower filled (strictly) from the official ``...open_clip.model.visual.*`` keys.

    Returns (visual, report); the report's ``unused`` lists the text-side leftovers.
    """
    visual = build_clip_visual(model_name, model_config)
    layout = official_clip_layout(visual)
    official, report = read_official(path, layout, unused_prefixes=(CLIP_PREFIX,))
    visual.load_state_dict(
        {k.removeprefix(VISUAL_PREFIX): t for k, t in official.items()}, strict=True, assign=True
    )
    log.info("official CLIP: %s", report.summary())
    return _finish(visual, device, dtype), report


def check_official_checkpoint(
    path: str | Path,
    vae: str | Path | Mapping[str, Any] | None = None,
    clip_model: str = "ViT-H-14",
    clip_model_config: str = "",
) -> None:
    """Fail fast (header only, no tensor read): the file has every VAE and CLIP key we need, shapes right."""
    layout = official_vae_layout(build_vae(vae_config(vae)))
    layout.update(official_clip_layout(build_clip_visual(clip_model, clip_model_config)))
    check_layout(path, layout)
