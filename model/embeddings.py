"""Sinusoidal embeddings and the 1280-d camera/noise conditioning vector of SV4D 2.0.

The official conditioner builds the ``vector`` input of the UNet by concatenating, in embedder order,
``[sigma_emb(cond_aug, 256), emb(polar_rad, 512), emb(azimuth_rad, 512)]``, each a plain sinusoidal
timestep embedding (cos half first, then sin half, max period 10000) of the raw value.
"""

from __future__ import annotations

import math

import torch

TWO_PI = 2.0 * math.pi


def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = max_period^(-i / (dim/2))``.

    t: any shape (...); returns (..., dim) in float32. Odd ``dim`` gets a trailing zero column.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


def camera_vector(
    polar_rad: torch.Tensor,
    azimuth_rad: torch.Tensor,
    cond_sigma: torch.Tensor,
    sigma_dim: int = 256,
    angle_dim: int = 512,
    max_period: int = 10000,
    sigma_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The conditioning vector ``[emb(cond_sigma), emb(polar), emb(azimuth)]`` (official order).

    polar_rad, azimuth_rad: same shape S (e.g. (B, F, V)); cond_sigma: broadcastable to S (e.g. (B, 1, 1)).
    sigma_mask: broadcastable to S, 1 keeps and 0 zeroes the sigma embedding (the release's unconditional
    branch). Returns (*S, sigma_dim + 2 * angle_dim) float32.
    """
    polar_rad, azimuth_rad, cond_sigma = torch.broadcast_tensors(polar_rad, azimuth_rad, cond_sigma)
    sigma_emb = timestep_embedding(cond_sigma, sigma_dim, max_period)
    if sigma_mask is not None:
        sigma_emb = sigma_emb * torch.as_tensor(sigma_mask, device=sigma_emb.device).float()[..., None]
    return torch.cat(
        [
            sigma_emb,
            timestep_embedding(polar_rad, angle_dim, max_period),
            timestep_embedding(azimuth_rad, angle_dim, max_period),
        ],
        dim=-1,
    )


def relative_polar_azimuth(
    elevation_rad: torch.Tensor,
    azimuth_rad: torch.Tensor,
    input_elevation_rad: torch.Tensor | float,
    input_azimuth_rad: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles as the official sampler feeds them: relative to the input view, polar shifted to pi/2.

    Official: ``polar = (polar_v - polar_in + pi/2) mod 2pi`` with ``polar = pi/2 - elevation``, and
    ``azimuth = (azimuth_v - azimuth_in) mod 2pi``. So the input view itself gets (pi/2, 0).
    Returns (polar_rad, azimuth_rad) with the shape of the broadcast inputs.
    """
    elevation_rad = torch.as_tensor(elevation_rad, dtype=torch.float32)
    azimuth_rad = torch.as_tensor(azimuth_rad, dtype=torch.float32)
    polar = torch.remainder(
        torch.as_tensor(input_elevation_rad, dtype=torch.float32) - elevation_rad + math.pi / 2, TWO_PI
    )
    azim = torch.remainder(azimuth_rad - torch.as_tensor(input_azimuth_rad, dtype=torch.float32), TWO_PI)
    return polar, azim
