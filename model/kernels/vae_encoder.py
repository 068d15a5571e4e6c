"""The SD VAE encoder's forward with each convolution's bias deferred to the ops that read its output.

Why: on CUDA, Inductor peels a convolution's bias off into a pointwise add (cuDNN is faster without it) and
fuses that add into the output's consumers. One consumer, the Triton GroupNorm statistics
(:mod:`model.kernels.groupnorm`), is an opaque op that needs a written-out input, so every convolution that
feeds a GroupNorm cost one more read and write of its whole output: 2 x 2.7 GB per batch of 32 at 576x576 for
each of the level-0 ones. Here those convolutions run without their bias and the bias goes with the tensor
instead: the statistics kernel adds it on load, the normalisation folds it into its shift, the residual sum
adds it, and a 1x1 shortcut convolution gets ``W @ b`` (linearity). Same function as ``diffusers``'
``Encoder.forward`` up to float rounding (tests/test_vae_encoder.py).

Covers the SD/SDXL-style encoder (``DownEncoderBlock2D`` + ``UNetMidBlock2D``, ResnetBlock2D without time
embedding); :func:`supports_deferred_bias` says whether a given encoder is one, and callers fall back to the
encoder's own forward otherwise. Inference only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.kernels.groupnorm import ChannelsLastGroupNorm, group_norm

Bias = torch.Tensor | None


def _plain_conv(conv: object) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.padding_mode == "zeros" and conv.groups == 1


def _plain_norm(norm: object) -> bool:
    return isinstance(norm, nn.GroupNorm | ChannelsLastGroupNorm) and norm.weight is not None


def _plain_resnet(block: object) -> bool:
    from diffusers.models.resnet import ResnetBlock2D

    if type(block) is not ResnetBlock2D:  # exact type: a subclass may have its own forward
        return False
    shortcut = block.conv_shortcut
    return (
        block.time_emb_proj is None
        and block.upsample is None
        and block.downsample is None
        and block.time_embedding_norm == "default"
        and _plain_norm(block.norm1)
        and _plain_norm(block.norm2)
        and _plain_conv(block.conv1)
        and _plain_conv(block.conv2)
        and (
            shortcut is None
            or (  # conv(x + b) = conv(x) + W @ b holds for a 1x1, unpadded, stride-1 convolution only
                _plain_conv(shortcut)
                and tuple(shortcut.kernel_size) == (1, 1)
                and tuple(shortcut.padding) == (0, 0)
                and tuple(shortcut.stride) == (1, 1)
            )
        )
    )


def supports_deferred_bias(encoder: nn.Module) -> bool:
    """Whether :func:`encoder_forward` computes ``encoder(x)`` for this ``diffusers`` VAE ``Encoder``: the
    stock encoder of ``DownEncoderBlock2D`` blocks (no attention) and a ``UNetMidBlock2D``, with plain
    zero-padded convolutions and GroupNorms (else callers use the encoder's own forward)."""
    try:
        from diffusers.models.autoencoders.vae import Encoder
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.unets.unet_2d_blocks import DownEncoderBlock2D, UNetMidBlock2D
    except ImportError:  # pragma: no cover - diffusers is a dependency of the latent stage
        return False
    try:
        if not isinstance(encoder, Encoder) or type(encoder).forward is not Encoder.forward:
            return False
        mid = encoder.mid_block
        if type(mid) is not UNetMidBlock2D or len(mid.attentions) != len(mid.resnets) - 1:
            return False
        if not (_plain_conv(encoder.conv_in) and _plain_conv(encoder.conv_out)):
            return False
        if not (_plain_norm(encoder.conv_norm_out) and isinstance(encoder.conv_act, nn.SiLU)):
            return False
        for block in encoder.down_blocks:
            if type(block) is not DownEncoderBlock2D or not all(_plain_resnet(r) for r in block.resnets):
                return False
            for down in block.downsamplers or []:
                if type(down) is not Downsample2D or not down.use_conv or down.norm is not None:
                    return False
                if not _plain_conv(down.conv):
                    return False
        return all(_plain_resnet(r) for r in mid.resnets)
    except AttributeError:  # not the diffusers layout this was written against
        return False


def _conv(conv: nn.Conv2d, x: torch.Tensor, with_bias: bool) -> torch.Tensor:
    bias = conv.bias if with_bias else None
    return F.conv2d(x, conv.weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _norm(norm: nn.Module, x: torch.Tensor, pre_bias: Bias) -> torch.Tensor:
    return group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, pre_bias)


def _add_bias(x: torch.Tensor, bias: Bias) -> torch.Tensor:
    return x if bias is None else x + bias.to(x.dtype)[None, :, None, None]


def _resnet(block: nn.Module, x: torch.Tensor, x_bias: Bias) -> torch.Tensor:
    """ResnetBlock2D(x + x_bias) with conv1's bias deferred into norm2; the output is complete."""
    h = block.nonlinearity(_norm(block.norm1, x, x_bias))
    h = _conv(block.conv1, h, with_bias=False)
    h = block.nonlinearity(_norm(block.norm2, h, block.conv1.bias))
    h = block.dropout(h)
    h = _conv(block.conv2, h, with_bias=True)  # peeled by Inductor into the residual sum below
    if block.conv_shortcut is not None:
        shortcut = block.conv_shortcut
        residual = _conv(shortcut, x, with_bias=True)
        if x_bias is not None:  # 1x1 convolution of (x + b) = conv(x) + W @ b
            residual = _add_bias(residual, shortcut.weight[:, :, 0, 0].float() @ x_bias.float())
    else:
        residual = _add_bias(x, x_bias)
    return (residual + h) / block.output_scale_factor


@torch.no_grad()
def encoder_forward(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``encoder(x)`` for an encoder that :func:`supports_deferred_bias`, without writing out any
    convolution output before its bias is added."""
    if encoder.training:
        raise ValueError("encoder_forward is inference-only: call encoder.eval() first")
    h, h_bias = _conv(encoder.conv_in, x, with_bias=False), encoder.conv_in.bias
    for block in encoder.down_blocks:
        for resnet in block.resnets:
            h, h_bias = _resnet(resnet, h, h_bias), None
        for down in block.downsamplers or []:
            h = _add_bias(h, h_bias)
            if down.padding == 0:  # diffusers' asymmetric padding of the stride-2 convolution
                h = F.pad(h, (0, 1, 0, 1))
            h, h_bias = _conv(down.conv, h, with_bias=False), down.conv.bias
    mid = encoder.mid_block
    h = _resnet(mid.resnets[0], h, h_bias)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        if attn is not None:
            h = attn(h)
        h = _resnet(resnet, h, None)
    h = encoder.conv_act(_norm(encoder.conv_norm_out, h, None))
    return _conv(encoder.conv_out, h, with_bias=True)
