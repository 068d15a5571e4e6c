"""EDM training math of SV4D 2.0, as pure torch functions (no model, no I/O).

The release (Stability-AI/generative-models, `sgm.modules.diffusionmodules`) trains and samples with:

* **Denoiser scaling** `VScalingWithEDMcNoise`: v-prediction written in the EDM (VE) parameterization
  ``x_noisy = x0 + sigma * n`` with sigma_data = 1::

      c_skip = 1 / (sigma^2 + 1)      c_out = -sigma / sqrt(sigma^2 + 1)
      c_in   = 1 / sqrt(sigma^2 + 1)  c_noise = 0.25 * ln(sigma)
      D(x_noisy, sigma) = c_skip * x_noisy + c_out * F(c_in * x_noisy, c_noise)

  The network's ideal output is ``F* = (n - sigma * x0) / sqrt(sigma^2 + 1)`` (the v-target in this
  parameterization, see `v_target`): with it the denoiser returns x0 exactly; tests check that identity.
* **Loss weighting** `VWeighting` = `EDMWeighting(sigma_data=1)`: ``lambda = (sigma^2 + 1) / sigma^2``
  applied to the L2 error of the *denoised* output (`StandardDiffusionLoss`). Since
  ``D - x0 = c_out * (F - F*)``, ``lambda * c_out^2 = 1``: this is exactly the unweighted L2 loss on the
  v-prediction, so every sigma contributes on the same scale.
* **Sigma sampling** `EDMSampling`: ``ln sigma ~ N(P_mean, P_std^2)``, one sigma per training sample,
  shared by all its (frame, view) latents.

  Default P_mean = 1.0, P_std = 1.6. Why: SVD's high-resolution finetuning shifted the EDM training
  distribution toward more noise (the EDM image default -1.2 / 1.2 under-noises 576px latents, whose
  neighbouring pixels are strongly correlated), and the SV3D training configs inherit it. Evidence found
  with the code search: mindspore-lab/mindone `examples/sv3d/configs/sv3d_u_train.yaml` (a port of SV3D
  finetuning from SVD) sets `EDMSampling` p_mean 1.0, p_std 1.6 with `StandardDiffusionLoss`; the
  Stability-AI release itself publishes no training config for SV3D/SV4D, and the SV4D 2.0 paper only
  says "the EDM scheme with L2 loss". Both values are configurable (`train.p_mean`, `train.p_std`).

* **Sampler** `EulerEDMSampler` with `EDMDiscretization(sigma_min=0.002, sigma_max=700, rho=7)`, no churn,
  the initial noise multiplied by ``sqrt(1 + sigma_0^2)``, and classifier-free guidance whose scale rises
  linearly from 1.0 to 2.0 over the (frame, view) latents in frame-major, view-minor order
  (`LinearPredictionGuider`; the 8-view release uses `SpatiotemporalPredictionGuider` from 1.5 to 2.5, see
  `spatiotemporal_cfg_scale`). The unconditional branch (`drop_conditions`, also training's condition
  dropout) zeroes the conditioning frames, their CLIP embeddings, the reference views and the
  conditioning-sigma part of the vector (the release's `force_uc_zero_embeddings` names `cond_frames`, whose
  embedder also returns the sigma embedding); polar and azimuth are kept.

Tensor layout used throughout the trainer: latents ``(B, F, V, C, h, w)`` (frame-major, view-minor), sigmas
``(B,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

#: SD 2.1 VAE latent scale of the diffusion targets (the concatenated conditioning latents stay unscaled,
#: as in the release's `VideoPredictionEmbedderWithEncoder`, which encodes with the mode and no scale).
VAE_SCALE = 0.18215


def append_dims(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with `ndim` dimensions in total."""
    if x.ndim > ndim:
        raise ValueError(f"cannot append dims to a {x.ndim}-d tensor to reach {ndim} dims")
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def vscaling_edm(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The release's `VScalingWithEDMcNoise`: (c_skip, c_out, c_in, c_noise), each shaped like `sigma`.

    Example: sigma = 1 gives c_skip = 0.5, c_out = -0.7071, c_in = 0.7071, c_noise = 0.
    """
    s2 = sigma.square()
    c_skip = 1.0 / (s2 + 1.0)
    c_out = -sigma / (s2 + 1.0).sqrt()
    c_in = 1.0 / (s2 + 1.0).sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The network output F* for which `denoise` returns x0 exactly: (n - sigma * x0) / sqrt(sigma^2 + 1).

    Shapes: x0, noise (B, ...); sigma (B,). With x_noisy = x0 + sigma * n:
    c_skip * x_noisy + c_out * F* = [x0 + sigma n - sigma (n - sigma x0)] / (sigma^2 + 1) = x0.
    """
    s = append_dims(sigma, x0.ndim)
    return (noise - s * x0) / (s.square() + 1.0).sqrt()


def denoise(net_out: torch.Tensor, x_noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D = c_skip * x_noisy + c_out * F. Shapes: net_out, x_noisy (B, ...); sigma (B,)."""
    c_skip, c_out, _, _ = vscaling_edm(sigma)
    return append_dims(c_skip, x_noisy.ndim) * x_noisy + append_dims(c_out, x_noisy.ndim) * net_out


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """`VWeighting`: lambda(sigma) = (sigma^2 + 1) / sigma^2 (EDM weighting with sigma_data = 1)."""
    return (sigma.square() + 1.0) / sigma.square()


def edm_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted L2 loss in denoised space, shape (B,): mean over all but the batch dim of
    lambda(sigma) * (D - x0)^2 (`StandardDiffusionLoss` with type l2)."""
    w = append_dims(loss_weight(sigma), x0.ndim)
    return (w * (denoised.float() - x0.float()).square()).reshape(x0.shape[0], -1).mean(1)


def sample_lognormal(
    n: int, p_mean: float, p_std: float, generator: torch.Generator | None = None, device: str = "cpu"
) -> torch.Tensor:
    """(n,) samples with ln(sigma) ~ N(p_mean, p_std^2) (`EDMSampling`)."""
    if p_std < 0:
        raise ValueError(f"p_std must be non-negative, got {p_std}")
    z = torch.randn(n, generator=generator, device=device)
    return (p_mean + p_std * z).exp()


def sample_cond_aug(
    n: int,
    kind: str,
    p_mean: float,
    p_std: float,
    low: float,
    high: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Noise level of the conditioning latents, (n,): `lognormal` (p_mean, p_std) or `uniform` [low, high]."""
    if kind == "lognormal":
        return sample_lognormal(n, p_mean, p_std, generator)
    if kind == "uniform":
        if not 0.0 <= low <= high:
            raise ValueError(f"uniform cond_aug needs 0 <= low <= high, got {low}, {high}")
        return low + (high - low) * torch.rand(n, generator=generator)
    if kind == "fixed":
        return torch.full((n,), float(low))
    raise ValueError(f"cond_aug kind {kind!r} is not one of lognormal, uniform, fixed")


def bernoulli(n: int, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) bool, True with probability p (condition dropout, reference-view masking)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must lie in [0, 1], got {p}")
    return torch.rand(n, generator=generator) < p


def karras_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
) -> torch.Tensor:
    """`EDMDiscretization` with a trailing zero: (num_steps + 1,) descending from sigma_max to 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def cfg_scale_ramp(num_frames: int, num_views: int, lo: float = 1.0, hi: float = 2.0) -> torch.Tensor:
    """(F, V) guidance scales rising linearly from lo to hi over the F*V latents, frame-major view-minor."""
    n = num_frames * num_views
    return torch.linspace(lo, hi, n).reshape(num_frames, num_views) if n > 1 else torch.full((1, 1), lo)


def spatiotemporal_cfg_scale(
    num_frames: int, num_views: int, lo: float = 1.5, hi: float = 2.5
) -> torch.Tensor:
    """(F, V) guidance scales of the 8-view release (`SpatiotemporalPredictionGuider`):
    ``lo + (hi - lo) * (0.5 * t + 0.5 * tri(u))`` with t = linspace(0, 1, F) over frames,
    u = linspace(0, 1, V) over views and the triangle wave tri(u) = 2 |u - round(u)|, which peaks at the
    middle views.

    Example (F = 5, V = 8, 1.5 -> 2.5): frame 0 is [1.5, 1.643, 1.786, 1.929, 1.929, 1.786, 1.643, 1.5] and
    every later frame adds 0.125.
    """
    t = torch.linspace(0, 1, num_frames)[:, None] * 0.5
    u = torch.linspace(0, 1, num_views)
    tri = 2 * (u - torch.floor(u + 0.5)).abs()
    scale = torch.zeros(num_frames, num_views) + t + tri[None, :] * 0.5
    return scale * (hi - lo) + lo


GUIDANCE = ("linear", "spatiotemporal")


def cfg_scales(guidance: str, num_frames: int, num_views: int, lo: float, hi: float) -> torch.Tensor:
    """(F, V) guidance scales of a named schedule: ``linear`` (`cfg_scale_ramp`, the 4-view release: 1 -> 2)
    or ``spatiotemporal`` (`spatiotemporal_cfg_scale`, the 8-view release: 1.5 -> 2.5)."""
    if guidance == "linear":
        return cfg_scale_ramp(num_frames, num_views, lo, hi)
    if guidance == "spatiotemporal":
        return spatiotemporal_cfg_scale(num_frames, num_views, lo, hi)
    raise ValueError(f"guidance must be one of {GUIDANCE}, got {guidance!r}")


def drop_conditions(
    keep: torch.Tensor,
    cond_latent: torch.Tensor,
    clip_emb: torch.Tensor,
    ref_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The release's unconditional branch, per sample: the network's conditioning keyword arguments where
    ``keep`` (B,) is 1, and where it is 0 zeroed conditioning latents, CLIP embeddings, reference views
    (``ref_mask``) and conditioning-sigma embedding (``cond_sigma_mask``); the cameras are kept.

    Used for classifier-free guidance (`model.sample`) and for training's condition dropout, so the network
    learns the same unconditional input it is sampled with. cond_latent: (B, ...); clip_emb: (B, F, D);
    ref_mask: (B,) or (B, V) (1 keeps a reference view), None = all present. Returns ``cond_latent``,
    ``clip_emb``, ``ref_mask`` and ``cond_sigma_mask`` for ``SV4D2UNet.forward``.
    """
    keep = keep.to(cond_latent.device, torch.float32)
    if keep.ndim != 1 or keep.shape[0] != cond_latent.shape[0]:
        raise ValueError(f"keep must be (B,) = ({cond_latent.shape[0]},), got {tuple(keep.shape)}")
    ref = torch.ones_like(keep) if ref_mask is None else ref_mask.to(keep.device, torch.float32)
    return {
        "cond_latent": cond_latent * append_dims(keep, cond_latent.ndim).to(cond_latent.dtype),
        "clip_emb": clip_emb * append_dims(keep, clip_emb.ndim).to(clip_emb.dtype),
        "ref_mask": ref * append_dims(keep, ref.ndim),
        "cond_sigma_mask": keep,
    }


#: A denoiser closure: (x_noisy (B, F, V, C, h, w), sigma (B,), conditional: bool) -> denoised, same shape.
DenoiseFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


@torch.no_grad()
def euler_edm_sample(
    denoise_fn: DenoiseFn,
    shape: tuple[int, ...],
    num_steps: int = 50,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    cfg_lo: float = 1.0,
    cfg_hi: float = 2.0,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    guidance: str = "linear",
    noise: torch.Tensor | None = None,
    x_init: torch.Tensor | None = None,
    start_step: int = 0,
) -> torch.Tensor:
    """The release's Euler EDM sampler (no churn) with its CFG schedule; returns latents in the diffusion
    (VAE-scaled) space.

    `shape` is (B, F, V, C, h, w). Guidance: D = D_u + s * (D_c - D_u) with s from `cfg_scales(guidance, ...)`
    (``linear``: cfg_lo -> cfg_hi, ``spatiotemporal``: the 8-view schedule); when every s is 1 the
    unconditional branch is skipped. noise: the N(0, 1) initial noise of `shape` (default: drawn from
    `generator`), multiplied by sqrt(1 + sigma_0^2) as the release.
    Start-from-image: `x_init` is the state at step `start_step` of the schedule (see `noise_to_step`); the
    loop then runs steps start_step .. num_steps - 1 only.
    """
    if len(shape) != 6:
        raise ValueError(f"shape must be (B, F, V, C, h, w), got {shape}")
    sigmas = karras_sigmas(num_steps, sigma_min, sigma_max, rho).to(device)
    if not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must lie in [0, {num_steps}), got {start_step}")
    if (x_init is None) != (start_step == 0):
        raise ValueError("x_init and start_step > 0 go together (start-from-image)")
    if x_init is not None:
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init shape {tuple(x_init.shape)} != sample shape {tuple(shape)}")
        x = x_init.to(device=device, dtype=torch.float32)
    else:
        if noise is None:
            x = torch.randn(shape, generator=generator, device="cpu").to(device)
        elif tuple(noise.shape) != tuple(shape):
            raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
        else:
            x = noise.to(device, torch.float32)
        x = x * math.sqrt(1.0 + float(sigmas[0]) ** 2)
    scale = cfg_scales(guidance, shape[1], shape[2], cfg_lo, cfg_hi).to(device)
    guided = not bool((scale == 1.0).all())
    scale = scale[None, :, :, None, None, None]
    for i in range(start_step, num_steps):
        s, s_next = sigmas[i], sigmas[i + 1]
        sb = s.expand(shape[0])
        d_c = denoise_fn(x, sb, True)
        d = d_c if not guided else (lambda d_u: d_u + scale * (d_c - d_u))(denoise_fn(x, sb, False))
        x = x + (x - d) / s * (s_next - s)
    return x


def noise_to_step(
    x0: torch.Tensor,
    start_step: int,
    num_steps: int = 50,
    sigma_min: float = 0.002,
    sigma_max: float = 700.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Start-from-image: clean scaled latents x0 -> x0 + sigma_k * n, the sampler's state at step k.

    sigma_k is entry `start_step` of the same `karras_sigmas(num_steps, ...)` schedule the sampler walks, so
    `euler_edm_sample(..., x_init=this, start_step=k)` continues exactly where a full trajectory would be at
    step k (the paper's 4D stage 2 uses k = 25 of 50). Noise is drawn on the CPU (reproducible per seed).
    """
    if not 0 < start_step < num_steps:
        raise ValueError(f"start_step must lie in (0, {num_steps}), got {start_step}")
    sigma = float(karras_sigmas(num_steps, sigma_min, sigma_max, rho)[start_step])
    noise = torch.randn(x0.shape, generator=generator, device="cpu").to(x0.device)
    return x0.float() + sigma * noise
