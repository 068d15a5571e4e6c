"""UNet building blocks of SV4D 2.0: ResBlocks with temporal mixing, resampling, spatio-temporal transformer.

Internally every image-level tensor is (N, C, H, W) with N = B * F * V flattened in (batch, frame, view)
order, frame-major and view-minor, as the official release orders its 48 latents. :class:`BlockContext`
carries the layout and the conditioning tensors that the blocks need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from .attention import BasicTransformerBlock, TimeMixBlock
from .embeddings import timestep_embedding

CHECKPOINT_POLICIES = ("full", "selective", "attention")

# Selective activation checkpointing: outputs of these (compute-bound) ops are kept from the forward pass;
# everything else in a checkpointed region (norms, activations, adds, reshapes) is recomputed in backward.
_aten = torch.ops.aten
_SDPA_OPS = {
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}
_SAVE_OPS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.convolution.default, *_SDPA_OPS}
# "attention" keeps only attentions with at least this many keys: the spatial self-attentions (but at the
# coarsest levels) and, in the ``paper`` camera mode, the camera self-attention over V*H*W tokens; the
# ``snapshot`` / ``views`` camera attentions (V keys) and the frame attentions (F keys) are recomputed. Their
# outputs are one (tokens, C) tensor each, but they are most of the recomputed FLOPs.
LONG_ATTENTION_KEYS = 256


def _save_compute_ops(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _save_long_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    if op in _SDPA_OPS and args[1].shape[-2] >= LONG_ATTENTION_KEYS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_save_compute_ops)


def _attention_context():
    return create_selective_checkpoint_contexts(_save_long_attention)


def checkpoint_context(policy: str):
    """``context_fn`` for ``checkpoint`` under a non-"full" policy: "selective" saves the outputs of matmuls,
    SDPA and convolutions; "attention" saves only those of SDPA calls with >= LONG_ATTENTION_KEYS keys; the
    rest of the region is recomputed in backward."""
    if policy == "selective":
        return _selective_context
    if policy == "attention":
        return _attention_context
    raise ValueError(f"no selective checkpoint context for policy {policy!r}; known: {CHECKPOINT_POLICIES}")


def run_checkpointed(fn, *args, policy: str = "full"):
    """Non-reentrant activation checkpointing of ``fn(*args)`` under ``policy``.

    "full" recomputes the whole region in backward; "selective" keeps the matmul / SDPA / convolution outputs
    and recomputes only the cheap ops; "attention" keeps only the long attentions' outputs. A region compiled
    by :mod:`model.compile` carries its own ``selective_checkpoint(policy, *args)`` (the checkpoint traced
    inside the compiled graph, where the partitioner honours the policy); an eager region uses
    ``torch.utils.checkpoint``'s dispatch-mode implementation.
    """
    if policy == "full":
        return checkpoint(fn, *args, use_reentrant=False)
    own = getattr(fn, "selective_checkpoint", None)
    if own is not None:
        return own(policy, *args)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=checkpoint_context(policy))


@dataclass
class BlockContext:
    """Per-forward inputs shared by all blocks.

    emb: (N, E) diffusion-time embedding plus label embedding of the camera vector.
    camera_emb: (B, V, E) the input of the camera MLPs: ``emb`` at frame 0 of each view, as the release
        (``cam.view(b, t, v, -1)[:, 0]``), so the camera term depends on the diffusion time and the cameras
        of frame 0 serve every frame.
    clip: (B, F, context_dim) CLIP image embedding of the input frame at each time index.
    ref: (B, V, C_lat, H0, W0) reference-view latents (already masked) or None (treated as zeros).
    frame_index: (B, F) float frame indices for the frame-index embedding.
    """

    batch: int
    frames: int
    views: int
    emb: torch.Tensor
    camera_emb: torch.Tensor
    clip: torch.Tensor
    ref: torch.Tensor | None
    frame_index: torch.Tensor
    frame_attention: bool = True
    _ref_cache: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def motion_context(self, h: int, w: int, channels: int, dtype: torch.dtype) -> torch.Tensor:
        """Reference latents resized (bilinear) to (h, w), a token per (batch, view, pixel): (BVhw, 1, c)."""
        key = (h, w)
        if key not in self._ref_cache:
            b, v = self.batch, self.views
            if self.ref is None:
                ctx = torch.zeros(b * v * h * w, 1, channels, device=self.emb.device, dtype=dtype)
            else:
                ref = self.ref.reshape(b * v, *self.ref.shape[2:])
                if ref.shape[-2:] != (h, w):
                    ref = F.interpolate(ref.float(), size=(h, w), mode="bilinear")
                ctx = ref.to(dtype).permute(0, 2, 3, 1).reshape(b * v * h * w, 1, channels)
            self._ref_cache[key] = ctx
        return self._ref_cache[key]


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (stable under bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


class MixFactor(nn.Module):
    """Learned blend ``alpha * skip + (1 - alpha) * mixed`` with ``alpha = sigmoid(mix_factor)``.

    This is the official AlphaBlender ("learned_with_images" with image_only_indicator = 0, i.e. "learned"):
    ``alpha`` weighs the skip (spatial) input, so the paper's blending weight of the attended result
    (alpha_3D, alpha_f) is ``1 - sigmoid(mix_factor)``.
    """

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([float(init)]))

    def alpha(self) -> torch.Tensor:
        return torch.sigmoid(self.mix_factor)

    def forward(self, skip: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        a = self.alpha().to(skip.dtype)
        return a * skip + (1.0 - a) * mixed


class TemporalResBlock(nn.Module):
    """ResBlock on (B, C, S, H, W) with a (k, 1, 1) kernel: it convolves along the sequence axis S only.

    The GroupNorms normalise over (C/groups, S, H, W), i.e. across the whole sequence, as the official 3D
    ResBlock.
    The embedding is per sequence element: (B, S, E).
    """

    def __init__(self, channels: int, emb_channels: int, kernel: int, groups: int, dropout: float = 0.0):
        super().__init__()
        ks, pad = (kernel, 1, 1), (kernel // 2, 0, 0)
        self.in_layers = nn.Sequential(
            GroupNorm32(groups, channels), nn.SiLU(), nn.Conv3d(channels, channels, ks, padding=pad)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(groups, channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv3d(channels, channels, ks, padding=pad),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C, S, H, W); emb: (B, S, E). Returns (B, C, S, H, W)."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).transpose(1, 2)[..., None, None].to(h.dtype)
        return x + self.out_layers(h)


class ResBlock(nn.Module):
    """Spatial ResBlock (per image) followed by a temporal ResBlock along the (frame, view) sequence, blended.

    Official semantics (PostHocResBlockWithTime with num_video_frames = F * V): the temporal (3, 1, 1)
    convolution slides along the F * V latents of each sample in frame-major, view-minor order, zero-padded at
    the ends; output = alpha * spatial + (1 - alpha) * temporal with alpha = sigmoid(time_mixer.mix_factor).
    """

    def __init__(self, channels: int, out_channels: int, cfg) -> None:
        super().__init__()
        emb_channels = cfg.time_embed_dim
        g = cfg.norm_groups
        self.in_layers = nn.Sequential(
            GroupNorm32(g, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(g, out_channels),
            nn.SiLU(),
            nn.Dropout(cfg.dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )
        self.time_mix_blocks = TemporalResBlock(
            out_channels, emb_channels, cfg.temporal_kernel_size, g, cfg.dropout
        )
        self.time_mixer = MixFactor(cfg.merge_factor_init)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """x: (N, C_in, H, W) -> (N, C_out, H, W)."""
        h = self.in_layers(x)
        h = h + self.emb_layers(ctx.emb)[..., None, None].to(h.dtype)
        h = self.skip_connection(x) + self.out_layers(h)
        n, c, hh, ww = h.shape
        b, s = ctx.batch, ctx.frames * ctx.views
        seq = h.view(b, s, c, hh, ww).transpose(1, 2)
        temporal = self.time_mix_blocks(seq, ctx.emb.view(b, s, -1))
        out = self.time_mixer(seq, temporal)
        return out.transpose(1, 2).reshape(n, c, hh, ww)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class SpatioTemporalTransformer(nn.Module):
    """Spatial attention per image, camera ("3D") attention across views, frame attention per pixel.

    For each depth index:
      1. ``transformer_blocks``: self-attention over the H*W tokens of each image, cross-attention to the CLIP
         embedding of that image's input frame.
      2. ``time_mix_blocks`` (3D / camera block): the camera MLP ``time_mix_time_embed`` (4*mc -> 4C -> C) of
         the UNet embedding ``emb`` at frame 0 of each view is added to that view's tokens; then attention
         along the sequences of ``config.camera_attention`` (:func:`camera_sequences`: ``paper``, all V*H*W
         tokens of each frame, eq. 2; ``snapshot`` / ``views``, the released layouts), cross-attention to a
         CLIP token; blended with ``time_mixer``.
      3. ``motion_blocks`` (frame block): the frame-index MLP ``time_mix_motion_embed`` (C -> 4C -> C) of the
         sinusoidal frame-index embedding is added, then attention over the F frames at each (view, pixel),
         cross-attention to the reference-view latent at that (view, pixel); blended with
         ``time_mixer_motion``.
         Skipped entirely (alpha_f = 0) when the context says ``frame_attention=False``.
    """

    def __init__(self, channels: int, cfg) -> None:
        super().__init__()
        heads = channels // cfg.num_head_channels
        d = cfg.num_head_channels
        depth = cfg.transformer_depth
        self.channels = channels
        self.max_period = cfg.max_period
        self.gradient_checkpointing = False  # set through SV4D2UNet.gradient_checkpointing
        self.checkpoint_policy = "full"  # set through SV4D2UNet.checkpoint_policy
        self.motion_context_dim = cfg.motion_context_dim
        self.norm = GroupNorm32(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, d, cfg.context_dim, cfg.dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        self.time_mix_blocks = nn.ModuleList(
            [TimeMixBlock(channels, heads, d, cfg.context_dim, cfg.dropout) for _ in range(depth)]
        )
        self.motion_blocks = nn.ModuleList(
            [TimeMixBlock(channels, heads, d, cfg.motion_context_dim, cfg.dropout) for _ in range(depth)]
        )
        self.camera_attention = cfg.camera_attention
        # The release feeds this MLP the UNet embedding (its layer is declared adm_in_channels wide, which
        # only works because 1280 = 4 * 320): sized by what it reads.
        self.time_mix_time_embed = nn.Sequential(
            nn.Linear(cfg.time_embed_dim, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels)
        )
        self.time_mix_motion_embed = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.SiLU(), nn.Linear(4 * channels, channels)
        )
        self.time_mixer = MixFactor(cfg.merge_factor_init)
        self.time_mixer_motion = MixFactor(cfg.motion_merge_factor_init)
        self.init_frame_layers_as_identity_()

    def frame_modules(self) -> list[nn.Module]:
        """The frame-attention layers (new in SV4D 2.0 relative to SV3D)."""
        return [self.motion_blocks, self.time_mix_motion_embed, self.time_mixer_motion]

    @torch.no_grad()
    def init_frame_layers_as_identity_(self, motion_merge_factor: float | None = None) -> None:
        """Zero the frame block's residual outputs and its embedding output, so the frame branch returns its
        input and the network equals the 3D model whatever alpha_f is; optionally reset the mix logit."""
        for blk in self.motion_blocks:
            blk.zero_residual_outputs_()
        nn.init.zeros_(self.time_mix_motion_embed[2].weight)
        nn.init.zeros_(self.time_mix_motion_embed[2].bias)
        if motion_merge_factor is not None:
            self.time_mixer_motion.mix_factor.fill_(motion_merge_factor)

    def forward(self, x: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        """x: (N, C, H, W) with N = B*F*V in (b, f, v) order. Returns (N, C, H, W).

        With ``gradient_checkpointing`` each step (spatial, 3D, frame) is checkpointed on its own, so the
        backward pass holds the activations of one step at a time rather than of the whole transformer.
        """
        n, c, hh, ww = x.shape
        b, f, v = ctx.batch, ctx.frames, ctx.views
        clip = ctx.clip
        clip_per_image = clip[:, :, None, :].expand(b, f, v, clip.shape[-1]).reshape(n, 1, clip.shape[-1])
        cam = self.time_mix_time_embed(ctx.camera_emb)  # (B, V, C)
        if ctx.frame_attention:
            femb = timestep_embedding(ctx.frame_index, c, self.max_period).to(cam.dtype)
            femb = self.time_mix_motion_embed(femb)[:, :, None, :]  # (B, F, 1, C)
            motion_ctx = ctx.motion_context(hh, ww, self.motion_context_dim, cam.dtype)
        h = x
        for i in range(len(self.transformer_blocks)):
            h = self._ckpt(self._spatial_step, i, h, clip_per_image)
            h = self._ckpt(self._camera_step, i, h, cam, clip, b, f, v)
            if ctx.frame_attention:
                h = self._ckpt(self._frame_step, i, h, femb, motion_ctx, b, f, v)
        h = self.proj_out(h)
        # x first: the sum takes x's (contiguous NCHW) layout instead of the permuted tokens' channels-last
        # one, so the next ResBlock's GroupNorm / convolutions see the same layout at every block (no
        # layout copies in eager, one compiled graph per shape under model.compile). Same values.
        return x + h.view(n, hh, ww, c).permute(0, 3, 1, 2)

    def _ckpt(self, fn, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return run_checkpointed(fn, *args, policy=self.checkpoint_policy)
        return fn(*args)

    def _spatial_step(self, i: int, h: torch.Tensor, clip_per_image: torch.Tensor) -> torch.Tensor:
        if i == 0:  # h is the block input (N, C, H, W): normalise and project into tokens (N, HW, C)
            n, c, hh, ww = h.shape
            h = self.proj_in(self.norm(h).permute(0, 2, 3, 1).reshape(n, hh * ww, c))
        return self.transformer_blocks[i](h, clip_per_image)

    def _camera_step(
        self, i: int, h: torch.Tensor, cam: torch.Tensor, clip: torch.Tensor, b: int, f: int, v: int
    ) -> torch.Tensor:
        """h: (N, HW, C) tokens; cam: (B, V, C) camera embedding; clip: (B, F, D). Returns (N, HW, C)."""
        n, hw, c = h.shape
        mixed = h.view(b, f, v, hw, c) + cam.to(h.dtype)[:, None, :, None, :]
        seqs, context = camera_sequences(mixed, clip, self.camera_attention)
        mixed = camera_tokens(self.time_mix_blocks[i](seqs, context), b, f, v, hw, self.camera_attention)
        return self.time_mixer(h, mixed)

    def _frame_step(
        self, i: int, h: torch.Tensor, femb: torch.Tensor, motion_ctx: torch.Tensor, b: int, f: int, v: int
    ) -> torch.Tensor:
        n, hw, c = h.shape
        mixed = h.view(b, f, v * hw, c) + femb.to(h.dtype)
        mixed = mixed.transpose(1, 2).reshape(b * v * hw, f, c)
        mixed = self.motion_blocks[i](mixed, motion_ctx)
        mixed = mixed.view(b, v * hw, f, c).transpose(1, 2).reshape(n, hw, c)
        return self.time_mixer_motion(h, mixed)


def camera_sequences(
    tokens: torch.Tensor, clip: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of the camera block and their one-token CLIP contexts, for ``mode`` (see model/config.py).

    tokens: (B, F, V, HW, C); clip: (B, F, D). Returns (sequences (S, L, C), context (S, 1, D)):

    - ``paper``: S = B*F sequences of L = V*HW tokens (every token of a frame), the frame's CLIP.
    - ``views``: S = B*F*HW sequences of the L = V views at one (frame, pixel), the frame's CLIP.
    - ``snapshot``: the release's grouping. Rows (b, view, pixel) x frame, cut into groups of V consecutive
      rows (g = (view * HW + pixel) // V within the batch element; a group straddles two views where HW is
      not a multiple of V, as in the release); sequence j = (b*HW + g)*F + s holds the V rows of group g at
      frame s, and its CLIP is row j of the (b, frame, pixel)-ordered repetition of the CLIP tokens, i.e.
      frame floor((g*F + s) / HW), not frame s.

    Example (snapshot, B = 1, F = 2, V = 2, HW = 2): groups g = 0 (view 0, pixels 0-1), g = 1 (view 1);
    sequences j = 0..3 are (g, s) = (0, 0), (0, 1), (1, 0), (1, 1) with CLIP frames 0, 0, 1, 1.
    :func:`camera_tokens` is the inverse of the token rearrangement.
    """
    b, f, v, hw, c = tokens.shape
    d = clip.shape[-1]
    if mode == "paper":
        return tokens.reshape(b * f, v * hw, c), clip.reshape(b * f, 1, d)
    per_pixel = clip[:, :, None, :].expand(b, f, hw, d).reshape(b * f * hw, 1, d)
    if mode == "views":
        return tokens.permute(0, 1, 3, 2, 4).reshape(b * f * hw, v, c), per_pixel
    if mode == "snapshot":
        rows = tokens.permute(0, 2, 3, 1, 4).reshape(b, hw, v, f, c)  # (b, group, member, frame, c)
        return rows.permute(0, 1, 3, 2, 4).reshape(b * hw * f, v, c), per_pixel
    raise ValueError(f"unknown camera_attention mode {mode!r}")


def camera_tokens(seqs: torch.Tensor, b: int, f: int, v: int, hw: int, mode: str) -> torch.Tensor:
    """Inverse of :func:`camera_sequences`' token rearrangement: sequences -> (B*F*V, HW, C) image tokens."""
    c = seqs.shape[-1]
    if mode == "paper":
        return seqs.reshape(b * f * v, hw, c)
    if mode == "views":
        return seqs.view(b, f, hw, v, c).permute(0, 1, 3, 2, 4).reshape(b * f * v, hw, c)
    if mode == "snapshot":
        rows = seqs.view(b, hw, f, v, c).permute(0, 1, 3, 2, 4).reshape(b, v, hw, f, c)
        return rows.permute(0, 3, 1, 2, 4).reshape(b * f * v, hw, c)
    raise ValueError(f"unknown camera_attention mode {mode!r}")
