"""Official checkpoint conversion: ``sv4d2.safetensors`` and ``sv3d_p.safetensors`` into SV4D2UNet.

Key layouts are in ``../shared/reference/*_checkpoint_keys.tsv`` (the full DiffusionEngine state dict).

UNet (``model.diffusion_model.*``)
    Our module names equal the official ``SpatialUNetModelWithTime`` names, so for ``sv4d2`` the
    mapping is the prefix strip alone. ``sv3d_p`` (``VideoUNet``) differs by the renames in
    :data:`SV3D_P_RENAMES` (``time_stack`` -> ``time_mix_blocks`` in ResBlocks and transformers,
    ``time_pos_embed`` -> ``time_mix_time_embed``) and by 10 reshaped camera-MLP weights
    ``time_mix_time_embed.0.weight``: sv3d_p fed that MLP the C-d sinusoidal embedding of the view
    index (weight 4C x C); SV4D 2.0 feeds it the UNet's 1280-d embedding
    ``emb = time_embed(timestep_embedding(c_noise)) + label_emb(vector)`` taken at frame 0 of each view
    (weight 4C x 1280; the release declares it ``adm_in_channels`` wide, which equals 4 x 320), so the
    camera term also depends on the diffusion time. At C = 320 and 640 we place the old 4C x C weight in
    the first C input columns and zero the other columns: the same rule as at C = 1280, where the shape
    is unchanged and the weight is used as it is. The input's meaning changed either way (view index ->
    UNet embedding), so no mapping preserves the sv3d_p function of this MLP; this one keeps every old
    weight and adds nothing.

Camera-attention mode (``UNetConfig.camera_attention``, see model/config.py)
    The released files hold no trace of it (``sv4d2_8views`` is byte-identical in layout to ``sv4d2``),
    so it comes from the file name unless set: :func:`default_camera_attention` picks ``views`` for a
    name containing ``8views`` (``sv4d2_8views.safetensors``), ``snapshot`` for other sv4d2 files (the
    grouping of the released code), and the config's own mode (``paper`` by default) for sv3d_p inits,
    which start our training. ``camera_attention`` (CLI ``--camera-attention``, ``model.camera_attention``
    in pipelines.yaml) overrides it; the report names the mode used and it is saved in ``config.json``.
    Layers that sv3d_p lacks (per transformer ``motion_blocks.*``, ``time_mix_motion_embed.*``,
    ``time_mixer_motion.mix_factor``) are initialised so the frame branch is the identity (zero
    residual outputs and zero frame-embedding output, see
    ``SpatioTemporalTransformer.init_frame_layers_as_identity_``) with
    ``time_mixer_motion.mix_factor = config.motion_merge_factor_init`` (5.0, i.e. alpha_f =
    1 - sigmoid(5) = 0.0067). The converted network therefore computes exactly what it computes with
    the frame attention bypassed.

Conditioner and VAE (returned by :func:`split_encoder_weights`, prefixes stripped)
    ``clip``: ``conditioner.embedders.0.open_clip.model.`` -> open_clip ViT-H-14 ``CLIP`` keys
    (``visual.*`` plus the leftover text-side ``positional_embedding``, ``text_projection``,
    ``logit_scale``, ``token_embedding.weight``, ``ln_final.*``).
    ``vae_encoder``: ``conditioner.embedders.1.encoder.`` -> sgm ``AutoencoderKLModeOnly`` keys
    (``encoder.*``, ``quant_conv.*``, and ``decoder.*`` / ``post_quant_conv.*`` where the file has
    them). Embedders 4 (``cond_view``) and 5 (``cond_motion``) hold the same layout; they are counted
    as duplicates, not returned.
    ``vae_decoder``: ``first_stage_model.`` -> ``decoder.*`` (sgm ``Decoder`` keys).

CLI: ``python -m model.convert --checkpoint sv4d2.safetensors --out DIR`` writes
``DIR/model.safetensors`` (our keys), ``DIR/config.json`` and ``DIR/conversion_report.json``. Files
are read tensor by tensor with ``safetensors.safe_open`` (the official file is ~10 GB).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import CAMERA_ATTENTION_MODES, SV4D2, UNetConfig, get_config, save_config
from .unet import SV4D2UNet

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model."
VAE_ENCODER_PREFIX = "conditioner.embedders.1.encoder."
VAE_ENCODER_DUPLICATE_PREFIXES = ("conditioner.embedders.4.encoder.", "conditioner.embedders.5.encoder.")
VAE_DECODER_PREFIX = "first_stage_model."
ENCODER_GROUPS = {"clip": CLIP_PREFIX, "vae_encoder": VAE_ENCODER_PREFIX, "vae_decoder": VAE_DECODER_PREFIX}

SOURCES = ("sv4d2", "sv3d_p")
# (official sv3d_p substring, our substring), applied to keys with the UNet prefix stripped.
SV3D_P_RENAMES: tuple[tuple[str, str], ...] = (
    (".time_stack.", ".time_mix_blocks."),
    (".time_pos_embed.", ".time_mix_time_embed."),
)
# The only keys whose shape may differ between sv3d_p and our network.
CAMERA_MLP_IN = re.compile(r"\.time_mix_time_embed\.0\.weight$")

MODEL_FILE = "model.safetensors"
REPORT_FILE = "conversion_report.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ConversionReport:
    """What a conversion consumed, changed and left out (written as JSON by the CLI)."""

    source: str
    loaded: int = 0
    # Official UNet keys that no parameter of ours took (must be empty for a clean conversion).
    unused: list[str] = field(default_factory=list)
    # Our parameters that the file did not provide (sv3d_p: the frame-attention layers, initialised new).
    missing: list[str] = field(default_factory=list)
    initialized_new: list[str] = field(default_factory=list)
    # key -> [official shape, our shape] for tensors adapted (zero-padded camera-MLP inputs).
    reshaped: dict[str, list[list[int]]] = field(default_factory=dict)
    # Non-UNet key counts per group (clip, vae_encoder, vae_encoder_duplicates, vae_decoder, other).
    other_groups: dict[str, int] = field(default_factory=dict)
    # Camera-attention mode of the converted network (paper | snapshot | views) and why it was chosen.
    camera_attention: str = ""
    camera_attention_reason: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def official_to_ours(key: str, source: str = "sv4d2") -> str | None:
    """Our parameter name for an official key, or None when the key is not a UNet key."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if not key.startswith(UNET_PREFIX):
        return None
    k = key[len(UNET_PREFIX) :]
    if source == "sv3d_p":
        for old, new in SV3D_P_RENAMES:
            k = k.replace(old, new)
    return k


def ours_to_official(key: str, source: str = "sv4d2") -> str:
    """Inverse of :func:`official_to_ours` (for sv3d_p only defined on keys sv3d_p has)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    k = key
    if source == "sv3d_p":
        for old, new in SV3D_P_RENAMES:
            k = k.replace(new, old)
    return UNET_PREFIX + k


def detect_source(keys: Iterable[str]) -> str:
    """``sv4d2`` when the UNet has frame attention (``motion_blocks``), ``sv3d_p`` when it has
    ``time_stack``."""
    has_time_stack = False
    for k in keys:
        if not k.startswith(UNET_PREFIX):
            continue
        if ".motion_blocks." in k:
            return "sv4d2"
        has_time_stack = has_time_stack or ".time_stack." in k
    if has_time_stack:
        return "sv3d_p"
    raise ValueError("not an official SV4D 2.0 / SV3D checkpoint: no model.diffusion_model.* UNet keys found")


def default_camera_attention(path: str | Path, source: str, config_mode: str = "paper") -> tuple[str, str]:
    """(mode, reason) for an official file: ``views`` for ``*8views*`` sv4d2 files, ``snapshot`` for other
    sv4d2 files, ``config_mode`` for sv3d_p (its camera block is new, trained by us)."""
    if source == "sv3d_p":
        return config_mode, f"sv3d_p init: the config's mode ({config_mode})"
    if "8views" in Path(path).name.lower():
        return "views", "sv4d2_8views release (use_3d_attention: False): attention over the views per pixel"
    return "snapshot", "sv4d2 release (use_3d_attention: True): the released grouping of V adjacent pixels"


def resolve_camera_attention(setting: str, checkpoint: str | Path = "") -> str:
    """The camera-attention mode for a ``model.camera_attention`` setting and an init checkpoint.

    ``paper`` / ``snapshot`` / ``views`` are taken as they are. ``auto``: an official sv4d2 file gets the
    release's mode (:func:`default_camera_attention`), one of our checkpoint folders the mode of its
    ``config.json``, anything else (no checkpoint, sv3d_p, a file of our keys) ``paper``.
    """
    from .config import CAMERA_ATTENTION_MODES, CONFIG_FILENAME, load_config

    if setting in CAMERA_ATTENTION_MODES:
        return setting
    if setting != "auto":
        raise ValueError(f"camera_attention must be auto or one of {CAMERA_ATTENTION_MODES}, got {setting!r}")
    path = Path(checkpoint) if checkpoint else None
    if path is None or not path.exists():
        return "paper"
    if path.is_dir():
        cfg = next((p for p in (path, *path.parents) if (p / CONFIG_FILENAME).is_file()), None)
        return load_config(cfg).camera_attention if cfg is not None else "paper"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return "paper"
    return default_camera_attention(path, detect_source(keys))[0]


def adapt_tensor(key: str, tensor: torch.Tensor, target_shape: tuple[int, ...]) -> torch.Tensor:
    """Fit an sv3d_p tensor to our shape: only the camera-MLP input weight may differ (4C x C -> 4C x adm);
    the old weight fills the first C columns and the rest is zero."""
    if tuple(tensor.shape) == tuple(target_shape):
        return tensor
    if (
        CAMERA_MLP_IN.search(key)
        and tensor.ndim == 2
        and len(target_shape) == 2
        and tensor.shape[0] == target_shape[0]
        and tensor.shape[1] < target_shape[1]
    ):
        out = tensor.new_zeros(target_shape)
        out[:, : tensor.shape[1]] = tensor
        return out
    raise ValueError(f"{key}: official shape {tuple(tensor.shape)} cannot be mapped to {tuple(target_shape)}")


def _convert(
    keys: Iterable[str],
    get: Callable[[str], torch.Tensor],
    target_shapes: Mapping[str, tuple[int, ...]],
    source: str,
    dtype: torch.dtype | None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    report = ConversionReport(source=source)
    out: dict[str, torch.Tensor] = {}
    groups: dict[str, int] = {}
    for k in keys:
        ours = official_to_ours(k, source)
        if ours is None:
            group = next((g for g, p in ENCODER_GROUPS.items() if k.startswith(p)), None)
            if group is None and k.startswith(VAE_ENCODER_DUPLICATE_PREFIXES):
                group = "vae_encoder_duplicates"
            groups[group or "other"] = groups.get(group or "other", 0) + 1
            continue
        if ours not in target_shapes:
            report.unused.append(k)
            continue
        t = get(k)
        shape = tuple(target_shapes[ours])
        if tuple(t.shape) != shape:
            if source != "sv3d_p":
                raise ValueError(f"{k}: shape {tuple(t.shape)} != our {ours} shape {shape}")
            report.reshaped[ours] = [list(t.shape), list(shape)]
            t = adapt_tensor(ours, t, shape)
        out[ours] = t.to(dtype) if dtype is not None else t
    report.loaded = len(out)
    report.missing = sorted(set(target_shapes) - set(out))
    report.unused.sort()
    report.other_groups = dict(sorted(groups.items()))
    return out, report


def target_shapes_for(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter shapes for ``config`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = SV4D2UNet(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: UNetConfig = SV4D2,
    source: str | None = None,
    dtype: torch.dtype | None = None,
    report: list[ConversionReport] | None = None,
) -> dict[str, torch.Tensor]:
    """Official state dict (in memory) -> our UNet keys. Non-UNet keys are skipped.

    For sv3d_p the frame-attention keys are absent from the result; load it with :func:`apply_to_model`, which
    initialises them. Pass a list as ``report`` to receive the :class:`ConversionReport`.
    """
    source = source or detect_source(state_dict.keys())
    out, rep = _convert(state_dict.keys(), state_dict.__getitem__, target_shapes_for(config), source, dtype)
    rep.camera_attention, rep.camera_attention_reason = config.camera_attention, "the target config's mode"
    if report is not None:
        report.append(rep)
    return out


def frame_attention_keys(model: SV4D2UNet) -> set[str]:
    return set(model.frame_attention_parameter_names())


def _check_complete(report: ConversionReport, frame_keys: set[str]) -> None:
    if report.unused:
        raise ValueError(f"{len(report.unused)} official UNet keys unused, e.g. {report.unused[:5]}")
    allowed_missing = frame_keys if report.source == "sv3d_p" else set()
    bad = sorted(set(report.missing) - allowed_missing)
    if bad:
        raise ValueError(f"{len(bad)} parameters missing from the {report.source} checkpoint, e.g. {bad[:5]}")


@torch.no_grad()
def apply_to_model(
    model: SV4D2UNet, state_dict: Mapping[str, torch.Tensor], source: str = "sv4d2"
) -> ConversionReport:
    """Load an already converted (our-key) state dict into ``model``; frame-attention parameters absent
    from it (sv3d_p) are re-initialised as identity with alpha_f = 1 - sigmoid(motion_merge_factor_init)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unexpected = sorted(set(state_dict) - set(shapes))
    if unexpected:
        raise ValueError(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    report = ConversionReport(
        source=source, loaded=len(state_dict), missing=sorted(set(shapes) - set(state_dict))
    )
    _check_complete(report, frame_attention_keys(model))
    model.load_state_dict(state_dict, strict=False)
    if report.missing:
        _init_frame_layers(model, materialize=False)
        report.initialized_new = report.missing
    return report


def _init_frame_layers(model: SV4D2UNet, materialize: bool, device: str | torch.device = "cpu") -> None:
    """Fresh frame-attention layers: default init, then identity outputs and the configured mix logit."""
    for t in model.transformers():
        for m in t.frame_modules():
            if materialize:
                m.to_empty(device=device, recurse=True)
            for sub in m.modules():
                if isinstance(sub, nn.Linear | nn.LayerNorm):
                    sub.reset_parameters()
        t.init_frame_layers_as_identity_(motion_merge_factor=model.config.motion_merge_factor_init)


def load_unet_from_official(
    path: str | Path,
    config: UNetConfig = SV4D2,
    source: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    camera_attention: str | None = None,
) -> tuple[SV4D2UNet, ConversionReport]:
    """Build our UNet from an official ``.safetensors`` file, streaming one tensor at a time.

    source: ``sv4d2``, ``sv3d_p`` or None (detected from the keys). dtype: cast every tensor (None keeps the
    file's dtype). camera_attention: the network's camera-attention mode; None (or ``auto``) picks the
    release's (:func:`default_camera_attention`: ``snapshot`` for sv4d2, ``views`` for sv4d2_8views); the
    returned network's config and the report carry it. Every sv4d2 UNet key must be consumed and every
    parameter provided (sv3d_p: all but the frame-attention layers, which are initialised new); otherwise
    ValueError. The model is built on the meta
    device and the loaded tensors are assigned, so peak memory is about one copy of the UNet.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        keys = list(f.keys())
        source = source or detect_source(keys)
        if camera_attention in (None, "auto"):
            mode, reason = default_camera_attention(path, source, config.camera_attention)
        else:
            mode, reason = camera_attention, "set by the caller (camera_attention)"
        config = config.replace(camera_attention=mode)
        with torch.device("meta"):
            model = SV4D2UNet(config)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        sd, report = _convert(keys, f.get_tensor, shapes, source, dtype)
    report.camera_attention, report.camera_attention_reason = mode, reason
    _check_complete(report, frame_attention_keys(model))
    model.load_state_dict(sd, strict=False, assign=True)
    if report.missing:
        _init_frame_layers(model, materialize=True, device=device)
        report.initialized_new = report.missing
        if dtype is not None:
            for t in model.transformers():
                for m in t.frame_modules():
                    m.to(dtype)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise RuntimeError(f"parameters left on the meta device: {leftover[:5]}")
    log.info(
        "converted %s (%s): %d tensors loaded, %d reshaped, %d new; camera attention %s (%s)",
        path,
        source,
        report.loaded,
        len(report.reshaped),
        len(report.initialized_new),
        mode,
        reason,
    )
    return model, report


def split_encoder_weights(
    path: str | Path,
    groups: Iterable[str] = tuple(ENCODER_GROUPS),
    dtype: torch.dtype | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """The conditioner's CLIP and VAE weights and the first-stage VAE decoder, prefixes stripped.

    Returns ``{group: {stripped key: tensor}}`` for the requested groups among ``clip``
    (``conditioner.embedders.0.open_clip.model.``), ``vae_encoder`` (``conditioner.embedders.1.encoder.``) and
    ``vae_decoder`` (``first_stage_model.``). Key naming stays sgm/open_clip; conversion to other libraries'
    names is the encoders' job.
    """
    from safetensors import safe_open

    groups = list(groups)
    unknown = sorted(set(groups) - set(ENCODER_GROUPS))
    if unknown:
        raise ValueError(f"unknown encoder groups {unknown}; known: {sorted(ENCODER_GROUPS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official checkpoint not found: {path}")
    out: dict[str, dict[str, torch.Tensor]] = {g: {} for g in groups}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for k in f.keys():
            for g in groups:
                prefix = ENCODER_GROUPS[g]
                if k.startswith(prefix):
                    t = f.get_tensor(k)
                    out[g][k[len(prefix) :]] = t.to(dtype) if dtype is not None else t
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m model.convert",
        description=(
            "Convert an official SV4D 2.0 checkpoint (sv4d2.safetensors) into this project's UNet weights, "
            "or initialise the SV4D 2.0 UNet from SV3D_p (sv3d_p.safetensors) for the 3D training stage. "
            f"Writes OUT/{MODEL_FILE} (our parameter names), OUT/config.json and OUT/{REPORT_FILE} "
            "(loaded, unused, missing, reshaped and newly initialised keys)."
        ),
    )
    parser.add_argument(
        "--checkpoint", required=True, help="official .safetensors file (sv4d2 or sv3d_p layout)"
    )
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument(
        "--init-from-sv3d",
        action="store_true",
        help="the checkpoint is sv3d_p: rename time_stack/time_pos_embed, zero-pad the 10 camera-MLP input "
        "weights, initialise the frame attention as identity (default: expect the sv4d2 layout)",
    )
    parser.add_argument("--config", default="sv4d2", help="UNet config name (default sv4d2)")
    parser.add_argument(
        "--camera-attention",
        choices=["auto", *CAMERA_ATTENTION_MODES],
        default="auto",
        help="camera-attention layout of the converted network (saved in config.json). auto: the release's "
        "for an sv4d2 file (snapshot; views for *8views* files), the config's (paper) for sv3d_p",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of the written weights"
    )
    parser.add_argument(
        "--save-encoders",
        action="store_true",
        help="also write clip.safetensors, vae_encoder.safetensors and vae_decoder.safetensors "
        "(prefixes stripped)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from safetensors.torch import save_file

    ckpt = Path(args.checkpoint)
    if not ckpt.is_file():
        parser.error(f"--checkpoint {ckpt} does not exist")
    config = get_config(args.config)
    dtype = DTYPES[args.dtype]
    source = "sv3d_p" if args.init_from_sv3d else "sv4d2"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, report = load_unet_from_official(
        ckpt, config, source=source, dtype=dtype, camera_attention=args.camera_attention
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / MODEL_FILE))
    save_config(model.config, out)
    (out / REPORT_FILE).write_text(report.to_json() + "\n")
    if args.save_encoders:
        for group, sd in split_encoder_weights(ckpt, dtype=dtype).items():
            if sd:
                save_file({k: v.contiguous() for k, v in sd.items()}, str(out / f"{group}.safetensors"))
    log.info(
        "wrote %s (camera attention: %s, %s)", out, report.camera_attention, report.camera_attention_reason
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
