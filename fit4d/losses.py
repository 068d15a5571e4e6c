"""The fitting losses (paper sec. 4 and supplement 7.3) as pure functions of rendered and target patches.

Patches are (B, P, P, C) tensors: each sampled (view, frame) image contributes one square patch, so the
smoothness losses can take finite differences inside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def visibility_weights(ray_dirs: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Soft visibility W = clip(v . n, 0, 1) with v = -ray direction (surface toward the camera) and n the
    unit surface normal: 1 facing the camera, 0 at grazing or back-facing. (..., 3) -> (...)."""
    n = normals / normals.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    return (-(ray_dirs * n).sum(-1)).clamp(0.0, 1.0)


def weighted_mse(
    pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """mean(W^2 |M - M_hat|^2) over pixels and channels: the paper's ||W (M - M_hat)||^2, as a mean."""
    err = (pred - target) ** 2
    if weights is not None:
        err = err * (weights**2)[..., None]
    return err.mean()


def mask_loss(opacity: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """||S - S_hat||^2 (mean) between rendered opacity and target silhouette."""
    return ((opacity - alpha) ** 2).mean()


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over foreground pixels of 1 - n . n_hat (both normalized); (..., 3), mask (...)."""
    p = pred / pred.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    q = target / target.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    m = mask.float()
    return ((1.0 - (p * q).sum(-1)) * m).sum() / m.sum().clamp(min=1.0)


def _diffs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences of a (B, P, P, ...) patch along rows and columns."""
    return x[:, 1:, :-1] - x[:, :-1, :-1], x[:, :-1, 1:] - x[:, :-1, :-1]


def smooth_depth_loss(depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Total variation of depth (B, P, P) between neighbouring foreground pixels (mask (B, P, P))."""
    dr, dc = _diffs(depth)
    mr, mc = _diffs(mask.float())
    m = mask[:, :-1, :-1].float() * (mr == 0) * (mc == 0)  # both neighbours inside the silhouette too
    return ((dr.abs() + dc.abs()) * m).sum() / m.sum().clamp(min=1.0)


def bilateral_normal_smoothness(normal: torch.Tensor, image: torch.Tensor, sigma: float) -> torch.Tensor:
    """mean |grad n| exp(-|grad I| / sigma): normals vary only where the target image has edges.
    normal (B, P, P, 3), image (B, P, P, 3)."""
    nr, nc = _diffs(normal)
    ir, ic = _diffs(image)
    wr = torch.exp(-ir.abs().mean(-1) / sigma)
    wc = torch.exp(-ic.abs().mean(-1) / sigma)
    return (nr.abs().sum(-1) * wr + nc.abs().sum(-1) * wc).mean()


class LPIPSLoss(nn.Module):
    """LPIPS (VGG) with torchmetrics' linear heads and a torchvision vgg16 backbone from a local file."""

    def __init__(self, backbone_path: str) -> None:
        super().__init__()
        path = Path(backbone_path).expanduser()
        if not backbone_path or not path.is_file():
            raise FileNotFoundError(
                f"LPIPS backbone weights not found at {str(path)!r}: set fit4d.loss.lpips_backbone_path to a "
                "torchvision vgg16 state dict (vgg16-397923af.pth) or set fit4d.loss.lpips=0"
            )
        from torchmetrics.functional.image.lpips import _LPIPS

        self.model = _LPIPS(pretrained=True, net="vgg", pnet_rand=True)  # no download: backbone loaded below
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_vgg_features(self.model.net, state)
        self.model.eval().requires_grad_(False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, P, P, 3) in [0, 1] -> mean LPIPS."""
        a = pred.permute(0, 3, 1, 2) * 2 - 1
        b = target.permute(0, 3, 1, 2) * 2 - 1
        return self.model(a, b).mean()


def load_vgg_features(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy torchvision `features.N.*` weights into LPIPS's sliced vgg16 (slices keep the layer numbers)."""
    targets = {}
    for slice_name, sl in net.named_children():
        for idx, _ in sl.named_children():
            targets[idx] = slice_name
    own = net.state_dict()
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "features" and parts[1] in targets:
            mapped[f"{targets[parts[1]]}.{parts[1]}.{parts[2]}"] = value
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise ValueError(f"LPIPS backbone state dict lacks {missing[:3]}: not a torchvision vgg16 state dict")
    net.load_state_dict(mapped)
