"""The dynamic NeRF Psi(x, t) -> (sigma, c): a canonical hash-grid NeRF and a deformation MLP (paper sec. 4)
of frequency-encoded (x, t) or of a 4D hash encoding of (x, t) (fit4d/field_components/deformation.py).

Coordinates: world points inside the box [-bound, bound]^3; t = frame / (F - 1) in [0, 1]. A world point
x at time t is looked up in canonical space at x + MLP_t(x / bound, t) * bound. Colour has no view
dependence: the targets are diffuse renders (or generated views of them) under near-ambient light.
"""

from __future__ import annotations

import torch
from torch import nn

from fit4d.field_components import hash_kernels
from fit4d.field_components.deformation import DeformationMLP, HashDeformation
from fit4d.field_components.hash_grid import HashGrid
from fit4d.field_components.mlp import MLP
from profiles.schema import Fit4DFieldConfig


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp with its argument clamped at 15: densities up to ~3e6 without inf in early steps."""
    return torch.exp(x.clamp(max=15.0))


def resolve_hash_kernel(kernel: str, allow_triton: bool = True) -> str:
    """`fit4d.nerf.hash_kernel` as the encodings take it: auto becomes triton when the package imports and the
    fit allows it (`allow_triton`: no second derivative of the field, no torch.compile), else torch."""
    if kernel != "auto":
        return kernel
    return "triton" if allow_triton and hash_kernels.triton is not None else "torch"


class DynamicNeRF(nn.Module):
    def __init__(self, cfg: Fit4DFieldConfig, allow_triton: bool = True) -> None:
        super().__init__()
        self.bound = cfg.bound
        kernel = resolve_hash_kernel(cfg.hash_kernel, allow_triton)
        self.encoding = HashGrid(
            cfg.num_levels,
            cfg.features_per_level,
            cfg.log2_hashmap_size,
            cfg.base_resolution,
            cfg.max_resolution,
            kernel=kernel,
        )
        self.geo_feat_dim = cfg.geo_feat_dim
        self.density_mlp = MLP(self.encoding.output_dim, cfg.hidden_dim, 1 + cfg.geo_feat_dim)
        self.color_mlp = MLP(cfg.geo_feat_dim, cfg.hidden_dim, 3, num_hidden=2)
        self.deformation: nn.Module
        if cfg.deform_encoding == "hash":
            self.deformation = HashDeformation(
                cfg.deform_num_levels,
                cfg.features_per_level,
                cfg.deform_log2_hashmap_size,
                cfg.deform_base_resolution,
                cfg.deform_max_resolution,
                cfg.deform_time_resolution,
                cfg.deform_hidden_dim,
                cfg.deform_layers,
                kernel=kernel,
            )
        else:
            self.deformation = DeformationMLP(
                cfg.deform_hidden_dim, cfg.deform_layers, cfg.deform_pos_freqs, cfg.deform_time_freqs
            )
        self.dynamic = True
        """False: the deformation is skipped (the static part of stage 1)."""

    def canonical(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """World points (N, 3) at times t (N, 1) -> canonical points (N, 3)."""
        if not self.dynamic:
            return x
        return x + self.deformation(x / self.bound, t) * self.bound

    def canonical_features(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical points (N, 3) -> (sigma (N,), geometry features (N, geo_feat_dim))."""
        unit = (xc / self.bound + 1.0) * 0.5
        h = self.density_mlp(self.encoding(unit))
        inside = ((unit >= 0) & (unit <= 1)).all(-1)
        sigma = trunc_exp(h[:, 0] - 1.0) * inside  # outside the box the object is empty
        return sigma, h[:, 1:]

    def density(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """sigma (N,) at world points x (N, 3), times t (N, 1)."""
        return self.canonical_features(self.canonical(x, t))[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma (N,), rgb (N, 3) in [0, 1]) at world points x (N, 3), times t (N, 1)."""
        sigma, geo = self.canonical_features(self.canonical(x, t))
        return sigma, torch.sigmoid(self.color_mlp(geo))

    def canonical_color(self, xc: torch.Tensor) -> torch.Tensor:
        """rgb (N, 3) at canonical points (the colour the fixed-topology mesh carries)."""
        return torch.sigmoid(self.color_mlp(self.canonical_features(xc)[1]))
