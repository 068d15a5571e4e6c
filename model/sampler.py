"""Sampling a trained SV4D 2.0 UNet with the release's Euler EDM sampler and CFG ramp (model/edm.py).

The conditional branch sees the noise-augmented conditioning latents, the CLIP embeddings and the reference
views; the unconditional branch zeroes all three (the release's unconditional conditioning). Cameras and the
cond_aug sigma are shared by both branches.
"""

from __future__ import annotations

import torch
from torch import nn

from model.edm import append_dims, denoise, euler_edm_sample, vscaling_edm


@torch.no_grad()
def sample_latents(
    net: nn.Module,
    cond_latents: torch.Tensor,
    clip: torch.Tensor,
    polar: torch.Tensor,
    azimuth: torch.Tensor,
    ref_latents: torch.Tensor | None = None,
    *,
    cond_aug: float = 1e-5,
    num_steps: int = 50,
    cfg_lo: float = 1.0,
    cfg_hi: float = 2.0,
    latent_channels: int = 4,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    x_init: torch.Tensor | None = None,
    start_step: int = 0,
) -> torch.Tensor:
    """Scaled latents (B, F, V, C, h, w) of V novel views x F frames.

    cond_latents (B, F, C, h, w): unscaled VAE latents of the input video; clip (B, F, D); polar, azimuth
    (B, V) radians relative to the input view; ref_latents (B, V, C, h, w) or None (no reference views).
    cond_aug: the conditioning-noise sigma (the release samples with 1e-5). Divide by 0.18215 to decode.
    sigma_min/sigma_max/rho: the discretization; x_init/start_step: start-from-image (`edm.noise_to_step`).
    """
    b, f = cond_latents.shape[:2]
    v = polar.shape[1]
    h, w = cond_latents.shape[-2:]
    device = cond_latents.device
    sigma_c = torch.full((b,), float(cond_aug), device=device)
    noise = torch.randn(cond_latents.shape, generator=generator, device="cpu").to(device)
    cond = cond_latents.float() + cond_aug * noise
    has_ref = torch.ones(b, device=device) if ref_latents is not None else torch.zeros(b, device=device)
    ref = ref_latents if ref_latents is not None else torch.zeros(b, v, cond.shape[2], h, w, device=device)

    def denoise_fn(x: torch.Tensor, sigma: torch.Tensor, conditional: bool) -> torch.Tensor:
        _, _, c_in, c_noise = vscaling_edm(sigma)
        keep = 1.0 if conditional else 0.0
        ctx = (
            torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else torch.autocast(device_type=device.type, enabled=False)
        )
        with ctx:
            out = net(
                append_dims(c_in, x.ndim) * x,
                c_noise,
                cond * keep,
                clip.float() * keep,
                polar,
                azimuth,
                cond_sigma=sigma_c,
                ref_latents=ref,
                ref_mask=has_ref * keep,
            )
        return denoise(out.float(), x, sigma)

    return euler_edm_sample(
        denoise_fn,
        (b, f, v, latent_channels, h, w),
        num_steps=num_steps,
        cfg_lo=cfg_lo,
        cfg_hi=cfg_hi,
        generator=generator,
        device=device,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
        x_init=x_init,
        start_step=start_step,
    )


# ----------------------------------------------------------------------------------------------------------
# The command: python -m model.sample INPUT (model/novel_views.py does the work)
