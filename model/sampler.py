"""Sampling a trained SV4D 2.0 UNet with the release's Euler EDM sampler and CFG schedules (model/edm.py).

As the release (scripts/demo/sv4d_helpers.py at 0ad7de9): the conditional branch sees the noise-augmented
conditioning latents, the CLIP embeddings, the reference views and the conditioning-sigma embedding; the
unconditional branch zeroes all four (`model.edm.drop_conditions`) and keeps the cameras. The cameras of
frame 0 serve every frame. The network runs under fp16 autocast by default (the release casts the UNet to
half and samples under ``torch.autocast``); ``dtype`` (`autocast_dtype`) picks another.
"""

from __future__ import annotations

import torch
from torch import nn

from model.dtypes import torch_dtype
from model.edm import append_dims, denoise, drop_conditions, euler_edm_sample, vscaling_edm


def autocast_dtype(name: str) -> torch.dtype | None:
    """The autocast dtype of a ``sample.dtype`` name (``float32``: None, no autocast)."""
    return None if name == "float32" else torch_dtype(name)


def frame0_cameras(angle: torch.Tensor, name: str) -> torch.Tensor:
    """(B, V) angles of frame 0: the release gives every frame of a window the cameras of its first frame."""
    if angle.ndim == 3:
        return angle[:, 0]
    if angle.ndim != 2:
        raise ValueError(f"{name} must be (B, V) or (B, F, V), got shape {tuple(angle.shape)}")
    return angle


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
    guidance: str = "linear",
    latent_channels: int = 4,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = torch.float16,
    noise: torch.Tensor | None = None,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    x_init: torch.Tensor | None = None,
    start_step: int = 0,
) -> torch.Tensor:
    """Latents (B, F, V, C, h, w) of V novel views x F frames, in the diffusion space: VAE-scaled (the VAE
    mean times 0.18215); divide by 0.18215 before decoding.

    The inputs are unscaled, as the release's conditioner encodes them: cond_latents (B, F, C, h, w), the
    VAE latents of the input video; ref_latents (B, V, C, h, w), the reference views (e.g. the previous
    window's outputs at this window's first frame: divide sampled latents by 0.18215 before passing them
    here), or None (no reference views: the first window). clip (B, F, D); polar, azimuth (B, V) radians
    relative to the input view, or (B, F, V), of which frame 0 serves every frame (as the release).
    cond_aug: the conditioning-noise sigma (the release samples with 1e-5; its noise is drawn from
    ``generator`` first). guidance / cfg_lo / cfg_hi: ``linear`` 1 -> 2 (the 4-view release) or
    ``spatiotemporal`` 1.5 -> 2.5 (the 8-view release), see `model.edm.cfg_scales`. autocast_dtype: the
    network's autocast dtype (default float16, as the release; None runs float32). noise: the N(0, 1) initial
    noise (B, F, V, C, h, w); default: drawn from ``generator`` after the conditioning noise.
    sigma_min / sigma_max / rho: the discretization; x_init / start_step: start-from-image, the state at step
    start_step of the schedule (`model.edm.noise_to_step`).
    """
    b, f = cond_latents.shape[:2]
    polar, azimuth = frame0_cameras(polar, "polar"), frame0_cameras(azimuth, "azimuth")
    v = polar.shape[1]
    h, w = cond_latents.shape[-2:]
    device = cond_latents.device
    sigma_c = torch.full((b,), float(cond_aug), device=device)
    aug_noise = torch.randn(cond_latents.shape, generator=generator, device="cpu").to(device)
    cond = cond_latents.float() + cond_aug * aug_noise
    has_ref = torch.ones(b, device=device) if ref_latents is not None else torch.zeros(b, device=device)
    ref = ref_latents if ref_latents is not None else torch.zeros(b, v, cond.shape[2], h, w, device=device)
    branches = {
        keep: drop_conditions(torch.full((b,), float(keep), device=device), cond, clip.float(), has_ref)
        for keep in (True, False)
    }

    def denoise_fn(x: torch.Tensor, sigma: torch.Tensor, conditional: bool) -> torch.Tensor:
        _, _, c_in, c_noise = vscaling_edm(sigma)
        ctx = (
            torch.autocast(device_type=device.type, dtype=autocast_dtype)
            if autocast_dtype is not None
            else torch.autocast(device_type=device.type, enabled=False)
        )
        with ctx:
            out = net(
                append_dims(c_in, x.ndim) * x,
                c_noise,
                polar_rad=polar,
                azimuth_rad=azimuth,
                cond_sigma=sigma_c,
                ref_latents=ref,
                **branches[conditional],
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
        guidance=guidance,
        noise=noise,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
        x_init=x_init,
        start_step=start_step,
    )


def sample_options(cfg) -> dict:
    """:func:`sample_latents` keyword arguments of a ``sample`` config section (``SampleConfig``)."""
    return dict(
        num_steps=cfg.num_steps,
        guidance=cfg.guidance,
        cfg_lo=cfg.cfg_min,
        cfg_hi=cfg.cfg_max,
        cond_aug=cfg.cond_aug,
        autocast_dtype=autocast_dtype(cfg.dtype),
        sigma_min=cfg.sigma_min,
        sigma_max=cfg.sigma_max,
        rho=cfg.rho,
    )
