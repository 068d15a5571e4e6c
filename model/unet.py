"""The SV4D 2.0 multi-view video UNet.

Tensor layout: latents are (B, F, V, C, H, W) -- batch, frames (time), views, latent channels, latent height,
latent width. Internally the (B, F, V) axes are flattened to N = B*F*V images in frame-major, view-minor order
for the convolutions and the spatial attention (the order of the official release's 48 latents).

Parameter names follow the official ``SpatialUNetModelWithTime`` state dict one to one (``input_blocks``,
``middle_block``, ``output_blocks``, ``time_embed``, ``label_emb``, ``out``; in ResBlocks ``time_mix_blocks``
and ``time_mixer``; in transformers ``time_mix_blocks`` (3D block), ``motion_blocks`` (frame block),
``time_mix_time_embed`` (camera MLP), ``time_mix_motion_embed`` (frame-index MLP), ``time_mixer`` and
``time_mixer_motion``), so ``state_dict()`` keys equal the official keys without ``model.diffusion_model.``.

``config.camera_attention`` selects the camera block's token layout (``paper`` for our models; ``snapshot``
and ``views`` reproduce the released sv4d2 / sv4d2_8views code, see model/config.py); the golden outputs of
the release (``../shared/reference/golden``) are matched in all three (tests/test_golden_equivalence.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .blocks import (
    CHECKPOINT_POLICIES,
    BlockContext,
    Downsample,
    GroupNorm32,
    ResBlock,
    SpatioTemporalTransformer,
    Upsample,
    run_checkpointed,
)
from .config import UNetConfig
from .embeddings import camera_vector, timestep_embedding


class UNetBlock(nn.Sequential):
    """One entry of input_blocks / middle_block / output_blocks (the official TimestepEmbedSequential)."""

    def forward(self, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock | SpatioTemporalTransformer):
                h = layer(h, ctx)
            else:
                h = layer(h)
        return h


class SV4D2UNet(nn.Module):
    """Multi-view video diffusion UNet of SV4D 2.0 (see module docstring for the layout)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        cfg = config
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        self.frame_attention_enabled = True

        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        self.label_emb = nn.Sequential(
            nn.Sequential(nn.Linear(cfg.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
        )

        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(cfg.in_channels, mc, 3, padding=1))])
        chans = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * mc, cfg)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(SpatioTemporalTransformer(ch, cfg))
                self.input_blocks.append(UNetBlock(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(UNetBlock(Downsample(ch)))
                chans.append(ch)
                ds *= 2

        self.middle_block = UNetBlock(
            ResBlock(ch, ch, cfg), SpatioTemporalTransformer(ch, cfg), ResBlock(ch, ch, cfg)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, mc * mult, cfg)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(SpatioTemporalTransformer(ch, cfg))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetBlock(*layers))

        self.out = nn.Sequential(
            GroupNorm32(cfg.norm_groups, ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)
        self.downsample_factor = 2 ** (len(cfg.channel_mult) - 1)
        self.gradient_checkpointing = cfg.gradient_checkpointing

    @property
    def gradient_checkpointing(self) -> bool:
        """Activation checkpointing (recompute in backward, ``use_reentrant=False``) of every ResBlock and of
        each step (spatial, 3D, frame) of every transformer; only active while gradients are enabled."""
        return self._gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enabled: bool) -> None:
        self._gradient_checkpointing = bool(enabled)
        for t in self.transformers():
            t.gradient_checkpointing = bool(enabled)

    @property
    def checkpoint_policy(self) -> str:
        """What activation checkpointing recomputes: "full" (everything, the default) or "selective" (keeps
        the matmul / SDPA / convolution outputs, recomputes norms and pointwise ops; more memory, less
        recompute). Same function and gradients either way."""
        return getattr(self, "_checkpoint_policy", "full")

    @checkpoint_policy.setter
    def checkpoint_policy(self, policy: str) -> None:
        if policy not in CHECKPOINT_POLICIES:
            raise ValueError(f"unknown checkpoint policy {policy!r}; known: {CHECKPOINT_POLICIES}")
        self._checkpoint_policy = policy
        for t in self.transformers():
            t.checkpoint_policy = policy

    # ------------------------------------------------------------------------------------------------------
    # Frame attention (alpha_f) control for progressive 3D-to-4D training.

    def transformers(self) -> Iterator[SpatioTemporalTransformer]:
        for m in self.modules():
            if isinstance(m, SpatioTemporalTransformer):
                yield m

    def set_frame_attention(self, enabled: bool) -> None:
        """``False`` forces alpha_f = 0: every frame block is skipped (output identical to a bypass), as in
        the paper's 3D stage. The frame layers' weights then have no influence and receive no gradient."""
        self.frame_attention_enabled = bool(enabled)

    def frame_attention_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the frame attention (``motion_blocks``, ``time_mix_motion_embed``,
        ``time_mixer_motion``) in all transformers: freeze them for stage 3d, unfreeze for stage 4d."""
        for t in self.transformers():
            for m in t.frame_modules():
                yield from m.parameters()

    def frame_attention_parameter_names(self) -> list[str]:
        ids = {id(p) for p in self.frame_attention_parameters()}
        return [n for n, p in self.named_parameters() if id(p) in ids]

    @torch.no_grad()
    def mix_alphas(self) -> dict[str, tuple[float, float]]:
        """Per transformer: (alpha_3D, alpha_f), the paper's weights of the attended results
        (``1 - sigmoid(mix_factor)``)."""
        out = {}
        for name, m in self.named_modules():
            if isinstance(m, SpatioTemporalTransformer):
                out[name] = (1.0 - float(m.time_mixer.alpha()), 1.0 - float(m.time_mixer_motion.alpha()))
        return out

    # ------------------------------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        cond_latent: torch.Tensor,
        clip_emb: torch.Tensor,
        polar_rad: torch.Tensor,
        azimuth_rad: torch.Tensor,
        cond_sigma: torch.Tensor | float = 0.0,
        ref_latents: torch.Tensor | None = None,
        ref_mask: torch.Tensor | None = None,
        frame_index: torch.Tensor | None = None,
        frame_attention: bool | None = None,
        cond_sigma_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Denoiser network output (the official ``network(input * c_in, c_noise, cond)``).

        x: (B, F, V, C, H, W) noisy latents, already multiplied by c_in.
        timesteps: (B,) or (B, F, V) noise conditioning (official: c_noise = 0.25 * ln(sigma)).
        cond_latent: (B, F, C, H, W) VAE latents of the input-view frames (repeated across views here), or
            (B, F, V, C, H, W); concatenated to x on the channel axis (noisy latent first).
        clip_emb: (B, F, context_dim) CLIP image embedding of each input frame.
        polar_rad, azimuth_rad: (B, F, V) or (B, V) relative camera angles in the official convention
            (see :func:`model.embeddings.relative_polar_azimuth`). They enter the label embedding of every
            latent; the camera MLPs read the embedding of frame 0 of each view (as the release).
        cond_sigma: scalar, (B,) or (B, F, V): the noise-augmentation sigma of cond_latent (embedded 256-d).
        cond_sigma_mask: (B,) 1 keeps, 0 zeroes the sigma part of the conditioning vector (the release's
            unconditional branch zeroes it with the conditioning latents; see
            :func:`model.edm.unconditional_inputs`). None keeps it.
        ref_latents: (B, V, C, h, w) reference multi-view latents (target views at the window's first frame),
            or None (= zeros). Resized bilinearly to each transformer's resolution.
        ref_mask: (B,) or (B, V): 1 keeps, 0 drops a sample's / view's reference (dropped = zeros = absent).
        frame_index: (F,) or (B, F) frame indices for the frame-index embedding (default 0..F-1).
        frame_attention: override of :meth:`set_frame_attention` for this call (False forces alpha_f = 0).
        Returns (B, F, V, out_channels, H, W) in x's dtype.
        """
        if x.ndim != 6:
            raise ValueError(f"x must be (B, F, V, C, H, W), got shape {tuple(x.shape)}")
        b, f, v, c, hh, ww = x.shape
        if hh % self.downsample_factor or ww % self.downsample_factor:
            raise ValueError(f"latent size {(hh, ww)} not divisible by {self.downsample_factor}")
        n = b * f * v
        device = x.device
        dtype = self.input_blocks[0][0].weight.dtype
        cfg = self.config

        if cond_latent.ndim == 5:
            cond_latent = cond_latent[:, :, None].expand(b, f, v, *cond_latent.shape[2:])
        if cond_latent.shape[:3] != (b, f, v) or cond_latent.shape[-2:] != (hh, ww):
            raise ValueError(
                f"cond_latent shape {tuple(cond_latent.shape)} does not match x {tuple(x.shape)}"
            )
        if c + cond_latent.shape[3] != cfg.in_channels:
            raise ValueError(f"{c} + {cond_latent.shape[3]} latent channels != in_channels={cfg.in_channels}")
        if clip_emb.shape != (b, f, cfg.context_dim):
            raise ValueError(f"clip_emb must be {(b, f, cfg.context_dim)}, got {tuple(clip_emb.shape)}")

        def per_latent(t: torch.Tensor | float, name: str) -> torch.Tensor:
            t = torch.as_tensor(t, dtype=torch.float32, device=device)
            if t.ndim == 1 and t.shape[0] == b:
                t = t[:, None, None]
            elif t.ndim == 2 and t.shape == (b, v):
                t = t[:, None, :]
            elif t.ndim not in (0, 3):
                raise ValueError(f"{name} must be scalar, (B,), (B, V) or (B, F, V); got {tuple(t.shape)}")
            return t.expand(b, f, v).reshape(n)

        t_flat = per_latent(timesteps, "timesteps")
        if cond_sigma_mask is not None and tuple(torch.as_tensor(cond_sigma_mask).shape) != (b,):
            raise ValueError(
                f"cond_sigma_mask must be (B,) = ({b},), got {tuple(torch.as_tensor(cond_sigma_mask).shape)}"
            )
        vector = camera_vector(
            per_latent(polar_rad, "polar_rad"),
            per_latent(azimuth_rad, "azimuth_rad"),
            per_latent(cond_sigma, "cond_sigma"),
            cfg.sigma_emb_dim,
            cfg.angle_emb_dim,
            cfg.max_period,
            sigma_mask=None if cond_sigma_mask is None else per_latent(cond_sigma_mask, "cond_sigma_mask"),
        ).to(dtype)
        emb = self.time_embed(timestep_embedding(t_flat, cfg.model_channels, cfg.max_period).to(dtype))
        emb = emb + self.label_emb(vector)

        if ref_latents is not None:
            if ref_latents.ndim != 5 or ref_latents.shape[:2] != (b, v):
                raise ValueError(
                    f"ref_latents must be (B, V, C, h, w) = ({b}, {v}, ...), got {tuple(ref_latents.shape)}"
                )
            if ref_mask is not None:
                m = torch.as_tensor(ref_mask, device=device).to(ref_latents.dtype)
                if m.shape == (b,):
                    m = m[:, None].expand(b, v)
                if m.shape != (b, v):
                    raise ValueError(f"ref_mask must be (B,) or (B, V), got {tuple(m.shape)}")
                ref_latents = ref_latents * m[:, :, None, None, None]

        if frame_index is None:
            frame_index = torch.arange(f, device=device)
        frame_index = torch.as_tensor(frame_index, device=device).float()
        if frame_index.ndim == 1:
            frame_index = frame_index[None].expand(b, f)
        if frame_index.shape != (b, f):
            raise ValueError(f"frame_index must be (F,) or (B, F), got {tuple(frame_index.shape)}")

        ctx = BlockContext(
            batch=b,
            frames=f,
            views=v,
            emb=emb,
            camera_emb=emb.view(b, f, v, -1)[:, 0],
            clip=clip_emb.to(dtype),
            ref=ref_latents,
            frame_index=frame_index,
            frame_attention=self.frame_attention_enabled
            if frame_attention is None
            else bool(frame_attention),
        )

        if ctx.frame_attention:
            # Resize the reference latents once per resolution, outside any checkpointed region.
            for k in range(len(cfg.channel_mult)):
                if 2**k in cfg.attention_resolutions or k == len(cfg.channel_mult) - 1:
                    ctx.motion_context(hh >> k, ww >> k, cfg.motion_context_dim, dtype)

        h = torch.cat([x, cond_latent.to(x.dtype)], dim=3).reshape(n, cfg.in_channels, hh, ww).to(dtype)
        hs = []
        for block in self.input_blocks:
            h = self._run(block, h, ctx)
            hs.append(h)
        h = self._run(self.middle_block, h, ctx)
        for block in self.output_blocks:
            h = self._run(block, torch.cat([h, hs.pop()], dim=1), ctx)
        out = self.out(h)
        return out.reshape(b, f, v, cfg.out_channels, hh, ww).to(x.dtype)

    def _run(self, block: UNetBlock, h: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        ckpt = self._gradient_checkpointing and torch.is_grad_enabled()
        for layer in block:
            if isinstance(layer, ResBlock):
                if ckpt:  # layer.forward: a compiled region's own selective checkpoint hangs on it
                    h = run_checkpointed(layer.forward, h, ctx, policy=self.checkpoint_policy)
                else:
                    h = layer(h, ctx)
            elif isinstance(layer, SpatioTemporalTransformer):
                h = layer(h, ctx)  # checkpoints its own steps
            else:
                h = layer(h)
        return h


def build_unet(config: UNetConfig | str, device: torch.device | str | None = None) -> SV4D2UNet:
    """Build the UNet from a config or a config name; ``device='meta'`` builds it without memory."""
    from .config import get_config

    cfg = get_config(config) if isinstance(config, str) else config
    if device is None:
        return SV4D2UNet(cfg)
    with torch.device(device):
        return SV4D2UNet(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
