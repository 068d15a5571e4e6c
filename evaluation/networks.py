"""The three feature extractors that need weights (LPIPS, CLIP, I3D): loaders from local files and their use.

Nothing is downloaded. Each loader takes a configured path and stops with a one-line `WeightsError` naming
the missing file and the `evaluation.*` setting to change. An empty path means "not available": the runner
then skips that metric (a '-' in the table), as the paper does for baselines it could not run.

- LPIPS (``evaluation.lpips_vgg_path`` / ``lpips_alex_path``): torchmetrics' LPIPS network
  (``_NoTrainLpips``, the PerceptualSimilarity v0.1 model) with its bundled linear heads (shipped inside
  torchmetrics: ``lpips_models/{vgg,alex}.pth``, no download) and the ImageNet backbone read from a
  torchvision checkpoint file: ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth`` (the files torchvision
  would download), or any state dict whose ``features.*`` keys match (a features-only file works).
  torchmetrics' own metric classes would download the backbone, hence the private class.
- CLIP (``evaluation.clip_model``, ``clip_pretrained``, ``clip_model_config``): open_clip, ViT-B-32 by
  default as the Consistent4D protocol; ``clip_pretrained`` is an open_clip checkpoint file (for ViT-B/32
  the OpenAI weights as ``open_clip_pytorch_model.bin`` of ``timm/vit_base_patch32_clip_224.openai``). Only
  the image tower is kept. Input: the whole image squash-resized to the tower's size (bicubic, antialiased),
  OpenAI mean/std. CLIP-S is the cosine similarity of the prediction's and the ground truth's embeddings.
- I3D (``evaluation.i3d_path``): the TorchScript I3D of the StyleGAN-V / fvd-comparison FVD
  (``i3d_torchscript.pt``), called as ``i3d(x, rescale=False, resize=False, return_features=True)`` on
  (B, 3, T, 224, 224) in [-1, 1]; it returns the 400 logits used as FVD features.

`make_tiny_networks` saves small random stand-ins (a TorchScript I3D-like net with the same call signature,
a tiny open_clip config and checkpoint, random LPIPS backbones) so the demo and the tests load them through
exactly these loaders.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

LpipsNet = Literal["vgg", "alex"]
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
I3D_RESOLUTION = 224
_TV_ARCH = {"vgg": "vgg16", "alex": "alexnet"}
_BACKBONE_FILE = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}

TINY_CLIP_NAME = "sv4d2-eval-tiny-clip"
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}


class WeightsError(FileNotFoundError):
    """A configured weight file is missing or unreadable; the message names it and the setting."""


def _existing(path: str, setting: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(
            f"no {what} at {p}: set evaluation.{setting} to a local copy (nothing is downloaded)"
        )
    return p


# ----------------------------------------------------------------------------------------------------------
# LPIPS


def load_lpips(net: LpipsNet, backbone_path: str) -> nn.Module:
    """torchmetrics' LPIPS (v0.1 linear heads bundled with torchmetrics) with the backbone from a file.

    Call the result as ``lpips(pred, gt, normalize=True)`` on (N, 3, H, W) in [0, 1]; it returns (N, 1, 1, 1).
    """
    if net not in _TV_ARCH:
        raise ValueError(f"LPIPS backbone must be one of {list(_TV_ARCH)}, got {net!r}")
    path = _existing(backbone_path, f"lpips_{net}_path", f"{_TV_ARCH[net]} backbone ({_BACKBONE_FILE[net]})")
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise WeightsError(f"cannot read the LPIPS {net} backbone {path}: {exc}") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a torchvision state dict, got {type(state).__name__}")
    # pretrained=True loads the bundled linear heads; pnet_rand=True builds the backbone without a download.
    model = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)
    target: dict[str, torch.Tensor] = {}
    for slice_name, piece in model.net.named_children():  # slices keep the torchvision feature indices
        for index, layer in piece.named_children():
            for param_name, _ in layer.named_parameters():
                key = f"features.{index}.{param_name}"
                if key not in state:
                    raise WeightsError(f"{path}: no {key!r}; is it a torchvision {_TV_ARCH[net]} checkpoint?")
                target[f"{slice_name}.{index}.{param_name}"] = state[key]
    try:
        model.net.load_state_dict(target, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not fit torchvision {_TV_ARCH[net]}: {exc}") from exc
    return model.eval().requires_grad_(False)


@torch.no_grad()
def lpips_distance(
    model: nn.Module, pred: torch.Tensor, gt: torch.Tensor, batch_size: int = 16
) -> torch.Tensor:
    """Per-image LPIPS (N,) of images in [0, 1] (N, 3, H, W), batched."""
    device = next(model.parameters()).device
    out = [
        model(
            pred[i : i + batch_size].to(device), gt[i : i + batch_size].to(device), normalize=True
        ).flatten()
        for i in range(0, pred.shape[0], batch_size)
    ]
    return torch.cat(out).float().cpu()


# ----------------------------------------------------------------------------------------------------------
# CLIP


def load_clip(model_name: str, pretrained: str, model_config: str = "") -> nn.Module:
    """The open_clip image tower (``model.visual``) from a local checkpoint file; ``model_config`` is an
    optional open_clip model-config json (file name = model name) for architectures open_clip lacks."""
    ckpt = _existing(pretrained, "clip_pretrained", f"open_clip {model_name} checkpoint")
    import open_clip

    if model_config:
        open_clip.add_model_config(_existing(model_config, "clip_model_config", "open_clip model config"))
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r} (set evaluation.clip_model_config for new ones)"
        )
    try:
        model = open_clip.create_model(model_name, pretrained=str(ckpt), device="cpu")
    except Exception as exc:  # open_clip raises RuntimeError/KeyError/... for a checkpoint that does not fit
        raise WeightsError(f"cannot load {ckpt} into open_clip {model_name}: {exc}") from exc
    visual = model.visual
    del model  # the text tower is not needed
    return visual.eval().requires_grad_(False)


def clip_image_size(visual: nn.Module) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


@torch.no_grad()
def clip_embeddings(visual: nn.Module, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """L2-normalized CLIP image embeddings (N, D) of images in [0, 1] (N, 3, H, W)."""
    device = next(visual.parameters()).device
    size = clip_image_size(visual)
    mean = torch.tensor(OPENAI_CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, device=device).view(1, 3, 1, 1)
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = images[i : i + batch_size].to(device).float()
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        emb = visual((x.clamp(0, 1) - mean) / std)
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------
# I3D


def load_i3d(path: str, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D (``i3d_torchscript.pt``)."""
    p = _existing(path, "i3d_path", "TorchScript I3D (i3d_torchscript.pt of the StyleGAN-V FVD)")
    try:
        with warnings.catch_warnings():  # the published I3D is TorchScript, deprecated or not
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(p), map_location=device).eval()
    except Exception as exc:  # torch.jit raises RuntimeError and others for a foreign file
        raise WeightsError(f"{p}: not a TorchScript I3D ({exc}); set evaluation.i3d_path") from exc


@torch.no_grad()
def i3d_features(
    i3d: Callable[..., torch.Tensor], videos: list[torch.Tensor], device: str | torch.device
) -> torch.Tensor:
    """I3D features (N, D) of videos, each (T, 3, H, W) in [0, 1]; frames are resized to 224x224
    (bilinear, antialiased) and mapped to [-1, 1]. Videos of one length are batched together."""
    feats: list[torch.Tensor | None] = [None] * len(videos)
    by_length: dict[int, list[int]] = {}
    for i, v in enumerate(videos):
        by_length.setdefault(v.shape[0], []).append(i)
    for idx in by_length.values():
        clips = []
        for i in idx:
            x = videos[i].to(device).float()
            if x.shape[-2:] != (I3D_RESOLUTION, I3D_RESOLUTION):
                x = F.interpolate(x, size=(I3D_RESOLUTION, I3D_RESOLUTION), mode="bilinear", antialias=True)
            clips.append(x.clamp(0, 1) * 2.0 - 1.0)
        batch = torch.stack(clips).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, H, W)
        out = i3d(batch, rescale=False, resize=False, return_features=True).float().cpu()
        for j, i in enumerate(idx):
            feats[i] = out[j]
    return torch.stack([f for f in feats if f is not None])


# ----------------------------------------------------------------------------------------------------------
# Everything the runner needs


@dataclass
class Networks:
    """Loaded extractors; a missing one is None / absent, with the reason in `skipped`."""

    lpips: dict[str, nn.Module] = field(default_factory=dict)
    clip: nn.Module | None = None
    i3d: Callable[..., torch.Tensor] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    random_weights: bool = False
    """True for the tiny random stand-ins: the numbers test the plumbing, not the model."""


def load_networks(
    lpips_paths: dict[str, str],
    clip_model: str,
    clip_pretrained: str,
    clip_model_config: str,
    i3d_path: str,
    device: str | torch.device = "cpu",
    random_weights: bool = False,
) -> Networks:
    """Load every configured extractor onto `device`; an empty path skips that metric (recorded)."""
    nets = Networks(random_weights=random_weights)
    for net, path in lpips_paths.items():
        if path:
            nets.lpips[net] = load_lpips(net, path).to(device)  # type: ignore[arg-type]
        else:
            nets.skipped[f"lpips_{net}"] = f"evaluation.lpips_{net}_path is empty"
    if clip_pretrained:
        nets.clip = load_clip(clip_model, clip_pretrained, clip_model_config).to(device)
    else:
        nets.skipped["clip_s"] = "evaluation.clip_pretrained is empty"
    if i3d_path:
        nets.i3d = load_i3d(i3d_path, device)
    else:
        nets.skipped["fvd"] = "evaluation.i3d_path is empty"
    return nets


# ----------------------------------------------------------------------------------------------------------
# Tiny random stand-ins


class TinyI3D(nn.Module):
    """A small random video network with the TorchScript I3D's call signature and its minimum clip length."""

    def __init__(self, features: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 8, kernel_size=3, stride=2, padding=1)
        self.conv2 = nn.Conv3d(8, 16, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(16, features)

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.shape[2] < 9:  # the real I3D's last temporal pooling fails below 9 frames
            raise RuntimeError("I3D needs at least 9 frames")
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        # max, not mean: a mean of random filters averages noise away; x100: logits of the real I3D's scale
        out = 100.0 * self.head(h.amax(dim=(2, 3, 4)))
        return out if return_features else out.softmax(dim=-1)


def make_tiny_networks(
    directory: str | Path, seed: int = 0, lpips_nets: tuple[str, ...] = ("vgg", "alex")
) -> dict[str, Any]:
    """Save random stand-ins under `directory` (once; atomic) and return the paths to configure:
    {"lpips_vgg_path", "lpips_alex_path", "clip_model", "clip_pretrained", "clip_model_config", "i3d_path"}.
    The LPIPS backbones keep their real architecture (the linear heads fix the channel counts)."""
    import open_clip
    import torchvision

    directory = Path(directory).expanduser()
    paths: dict[str, Any] = {
        "clip_model": TINY_CLIP_NAME,
        "clip_pretrained": str(directory / "clip.pt"),
        "clip_model_config": str(directory / f"{TINY_CLIP_NAME}.json"),
        "i3d_path": str(directory / "i3d_torchscript.pt"),
    }
    for net in ("vgg", "alex"):
        paths[f"lpips_{net}_path"] = (
            str(directory / f"{_TV_ARCH[net]}_features.pth") if net in lpips_nets else ""
        )
    done = directory / "COMPLETE"
    if done.is_file() and json.loads(done.read_text()).get("lpips_nets", []) == sorted(lpips_nets):
        return paths
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        torch.manual_seed(seed)
        for net in sorted(lpips_nets):
            feats = getattr(torchvision.models, _TV_ARCH[net])(weights=None).features
            torch.save(
                {f"features.{k}": v for k, v in feats.state_dict().items()},
                tmp / Path(paths[f"lpips_{net}_path"]).name,
            )
        cfg_file = tmp / f"{TINY_CLIP_NAME}.json"
        cfg_file.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
        open_clip.add_model_config(cfg_file)
        torch.save(open_clip.create_model(TINY_CLIP_NAME, pretrained=None).state_dict(), tmp / "clip.pt")
        with warnings.catch_warnings():  # TorchScript, like the real I3D file
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(TinyI3D().eval()).save(str(tmp / "i3d_torchscript.pt"))
        (tmp / "COMPLETE").write_text(json.dumps({"seed": seed, "lpips_nets": sorted(lpips_nets)}))
        tmp.chmod(0o755)  # mkdtemp makes it private
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("saved tiny random evaluation networks under %s", directory)
    return paths
