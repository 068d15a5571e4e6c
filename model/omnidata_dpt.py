"""Omnidata v2's monocular surface-normal network (Eftekhar et al. 2021; EPFL-VILAB/omnidata): DPT-Hybrid,
i.e. a ViT-B/16 on the features of a ResNet-50 stem (timm's `vit_base_r50_s16_384`, which the official code
calls `vit_base_resnet50_384`), DPT's reassemble and fusion decoder and a 3-channel head.

The parameter names are the official ones, so `omnidata_dpt_normal_v2.ckpt` loads strictly
(`load_omnidata_dpt`: its Lightning `state_dict` with the `model.` prefix stripped, as the official demo
does). The network maps an RGB image in [0, 1] at 384x384 (no mean/std normalization: the official normal
transform is `ToTensor` alone) to a 3-channel image in [0, 1]; `fit4d/normal_estimators.py` decodes it into
camera-space normals. Built on timm's current modules, it reproduced the official DPTDepthModel (run with
timm 0.4.12, the checkpoint's) from the same randomized weights within 9e-6 (outputs of mean 0.34).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OmnidataDPTConfig:
    """The defaults are the official DPT-Hybrid normal network; tests build tiny ones of the same class."""

    image_size: int = 384
    """Input side; the position embedding holds (image_size / 16)^2 tokens + the class token."""
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    num_classes: int = 1000
    """The unused ImageNet head of the timm ViT (it is in the checkpoint, so the model keeps it)."""
    resnet_layers: tuple[int, ...] = (3, 4, 9)
    resnet_channels: tuple[int, ...] = (256, 512, 1024)
    stem_channels: int = 64
    norm_groups: int = 32
    hooks: tuple[int, int] = (8, 11)
    """ViT blocks whose outputs become the decoder's layers 3 and 4 (1 and 2 are ResNet stages 0 and 1)."""
    features: int = 256
    head_channels: int = 32
    out_channels: int = 3

    def __post_init__(self) -> None:
        if len(self.resnet_layers) != 3 or len(self.resnet_channels) != 3:
            raise ValueError("OmnidataDPTConfig: the hybrid backbone has 3 ResNet stages (stride 16)")
        if not 0 <= self.hooks[0] < self.hooks[1] < self.depth:
            raise ValueError(f"OmnidataDPTConfig: hooks {self.hooks} must increase and be < {self.depth}")
        if self.image_size % 32:
            raise ValueError(f"OmnidataDPTConfig: image_size {self.image_size} must be a multiple of 32")


def tiny_omnidata_config() -> OmnidataDPTConfig:
    """A few-thousand-parameter network of the same structure (tests)."""
    return OmnidataDPTConfig(
        image_size=64,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        resnet_layers=(1, 1, 1),
        resnet_channels=(32, 64, 128),
        stem_channels=16,
        norm_groups=4,
        hooks=(0, 1),
        features=16,
        head_channels=8,
    )


def _hybrid_vit(cfg: OmnidataDPTConfig) -> nn.Module:
    """timm's R50+ViT hybrid (same module tree, hence parameter names, as timm 0.4.12's
    vit_base_resnet50_384 that the checkpoint was trained with)."""
    from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    backbone = ResNetV2(
        layers=cfg.resnet_layers,
        channels=cfg.resnet_channels,
        num_classes=0,
        global_pool="",
        preact=False,
        stem_chs=cfg.stem_channels,
        stem_type="same",
        conv_layer=partial(StdConv2dSame, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=cfg.norm_groups),
    )
    return VisionTransformer(
        img_size=cfg.image_size,
        patch_size=1,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        num_classes=cfg.num_classes,
        # HybridEmbed sizes its grid by a probing pass through the ResNet (free on the meta device)
        embed_layer=partial(HybridEmbed, backbone=backbone),
    )


class ProjectReadout(nn.Module):
    """DPT's `project` readout: each patch token concatenated with the class token, linear + GELU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, D) -> (B, N, D)."""
        readout = tokens[:, :1].expand_as(tokens[:, 1:])
        return self.project(torch.cat([tokens[:, 1:], readout], -1))


def _reassemble(dim: int, out: int, downsample: bool) -> nn.Sequential:
    """Readout, token grid -> image, 1x1 conv (+ stride-2 3x3 conv). Indices 1 and 2 stand for the official
    Transpose/Unflatten (done in `OmnidataDPT.tokens_to_image`) so the convolutions keep their names."""
    layers: list[nn.Module] = [ProjectReadout(dim), nn.Identity(), nn.Identity(), nn.Conv2d(dim, out, 1)]
    if downsample:
        layers.append(nn.Conv2d(out, out, 3, stride=2, padding=1))
    return nn.Sequential(*layers)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convolutions with bias (DPT, no batch norm)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """out_conv(up2(unit2(x + unit1(skip)))): bilinear x2 with align_corners=True, 1x1 out_conv."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)  # noqa: N815 (official name)
        self.resConfUnit2 = ResidualConvUnit(features)  # noqa: N815

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Upsample2(nn.Module):
    """Bilinear x2 (align_corners=True), the head's parameter-free index 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class OmnidataDPT(nn.Module):
    """DPT-Hybrid with the official module tree: `pretrained.model` (the timm hybrid ViT),
    `pretrained.act_postprocess{3,4}` (reassemble), `scratch.layer{1..4}_rn`, `scratch.refinenet{1..4}`,
    `scratch.output_conv` (head, ending in ReLU as the official `non_negative=True`)."""

    def __init__(self, config: OmnidataDPTConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or OmnidataDPTConfig()
        d, feats = cfg.embed_dim, cfg.features
        self.pretrained = nn.Module()
        self.pretrained.model = _hybrid_vit(cfg)
        self.pretrained.act_postprocess3 = _reassemble(d, d, downsample=False)
        self.pretrained.act_postprocess4 = _reassemble(d, d, downsample=True)
        self.scratch = nn.Module()
        in_channels = (cfg.resnet_channels[0], cfg.resnet_channels[1], d, d)
        for i, c in enumerate(in_channels, 1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(c, feats, 3, padding=1, bias=False))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FeatureFusionBlock(feats))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(feats, feats // 2, 3, padding=1),
            Upsample2(),
            nn.Conv2d(feats // 2, cfg.head_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.head_channels, cfg.out_channels, 1),
            nn.ReLU(),
            nn.Identity(),
        )

    @staticmethod
    def tokens_to_image(tokens: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        """(B, N, D) -> (B, D, grid_h, grid_w)."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid_h, grid_w)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four decoder inputs at strides 4, 8, 16, 32."""
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            # the official code resizes the position embedding for other sizes; its normals are trained at 384
            raise ValueError(f"OmnidataDPT takes {size}x{size} images, got {tuple(x.shape[-2:])}")
        vit = self.pretrained.model
        backbone = vit.patch_embed.backbone
        h = backbone.stem(x)
        layer1 = backbone.stages[0](h)
        layer2 = backbone.stages[1](layer1)
        h = vit.patch_embed.proj(backbone.stages[2](layer2))
        gh, gw = h.shape[-2:]
        tokens = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), h.flatten(2).transpose(1, 2)], 1)
        tokens = vit.pos_drop(tokens + vit.pos_embed)
        hooked = []
        for i, block in enumerate(vit.blocks[: self.config.hooks[1] + 1]):
            tokens = block(tokens)
            if i in self.config.hooks:
                hooked.append(tokens)
        outs = []
        for post, t in zip((self.pretrained.act_postprocess3, self.pretrained.act_postprocess4), hooked):
            outs.append(post[3:](self.tokens_to_image(post[0](t), gh, gw)))
        return layer1, layer2, outs[0], outs[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) RGB in [0, 1], S = config.image_size -> (B, out_channels, S, S) >= 0 (normals:
        the encoded image, in [0, 1] after the official clamp)."""
        s = self.scratch
        l1, l2, l3, l4 = self.encode(x)
        path = s.refinenet4(s.layer4_rn(l4))
        path = s.refinenet3(path, s.layer3_rn(l3))
        path = s.refinenet2(path, s.layer2_rn(l2))
        path = s.refinenet1(path, s.layer1_rn(l1))
        return s.output_conv(path)


class OmnidataCheckpointError(ValueError):
    """The file is not an Omnidata DPT-Hybrid checkpoint of the expected layout."""


def omnidata_state_dict(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The network's weights from a loaded checkpoint: a Lightning dict whose `state_dict` keys carry the
    `model.` prefix (the official file; the prefix is stripped as the official demo does), or a bare state
    dict."""
    if not isinstance(checkpoint, dict):
        raise OmnidataCheckpointError(f"expected a dict, got {type(checkpoint).__name__}")
    sd = checkpoint.get("state_dict", checkpoint)
    if "state_dict" in checkpoint:
        sd = {k.removeprefix("model."): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _load_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Lightning checkpoints can pickle hyper-parameter objects that the safe loader refuses
        log.warning("%s holds pickled objects besides tensors; loading it fully (trust this file)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_omnidata_dpt(
    path: str | Path, config: OmnidataDPTConfig | None = None, device: torch.device | str = "cpu"
) -> OmnidataDPT:
    """The network in eval mode, float32, on `device`, from `path` (strict: every key and shape must match
    the layout of `config`, the official one by default)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Omnidata checkpoint not found: {path}")
    config = config or OmnidataDPTConfig()
    try:
        sd = omnidata_state_dict(_load_file(path))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise OmnidataCheckpointError(f"{path} cannot be read as a torch checkpoint: {exc}") from exc
    with torch.device("meta"):
        model = OmnidataDPT(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or unexpected or wrong:
        raise OmnidataCheckpointError(
            f"{path} is not an Omnidata DPT-Hybrid checkpoint of this layout: {len(missing)} missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another shape "
            + str([(k, got[k], want[k]) for k in wrong[:2]])
        )
    model.load_state_dict({k: v.float() for k, v in sd.items()}, assign=True)
    return model.to(device).eval().requires_grad_(False)
