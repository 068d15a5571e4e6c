"""model.kernels.vae_encoder: the VAE encoder's forward with deferred convolution biases."""

from __future__ import annotations

import copy

import pytest
import torch

from model.encoders import make_tiny_encoders
from model.kernels.groupnorm import use_channels_last_group_norm
from model.kernels.vae_encoder import encoder_forward, supports_deferred_bias
from model.official_encoders import SD21_VAE_CONFIG
from model.vae import load_vae


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory):
    vae = load_vae(make_tiny_encoders(tmp_path_factory.mktemp("tiny"))["vae_path"]).eval()
    # random biases that matter: the saved tiny model's are whatever diffusers initialised
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in vae.encoder.modules():
            if isinstance(m, torch.nn.Conv2d | torch.nn.GroupNorm) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return vae


def test_same_function_as_the_diffusers_encoder(tiny_vae):
    enc = tiny_vae.encoder
    assert supports_deferred_bias(enc)
    # the tiny config has 1x1 shortcuts (8 -> 16 -> 32 channels): the W @ b path is exercised
    assert any(r.conv_shortcut is not None for b in enc.down_blocks for r in b.resnets)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = enc(x)
    out = encoder_forward(enc, x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # channels_last with the GroupNorm replacement (CPU: its native fallback adds the deferred bias)
    cl = copy.deepcopy(enc).to(memory_format=torch.channels_last)
    use_channels_last_group_norm(cl)
    out_cl = encoder_forward(cl, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-5)


def test_output_scale_factor_is_applied(tiny_vae):
    enc = copy.deepcopy(tiny_vae.encoder)
    enc.down_blocks[1].resnets[0].output_scale_factor = 2.0
    enc.mid_block.resnets[1].output_scale_factor = 0.5
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        ref = enc(x)
    torch.testing.assert_close(encoder_forward(enc, x), ref, rtol=1e-5, atol=1e-5)


def test_full_size_sd21_encoder_is_supported_on_the_meta_device():
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**SD21_VAE_CONFIG).eval()
    assert supports_deferred_bias(vae.encoder)
    out = encoder_forward(vae.encoder, torch.empty(1, 3, 576, 576, device="meta"))
    assert tuple(out.shape) == (1, 8, 72, 72)


def test_unsupported_encoders_are_refused(tiny_vae):
    enc = copy.deepcopy(tiny_vae.encoder)
    enc.conv_act = torch.nn.GELU()
    assert not supports_deferred_bias(enc)
    enc = copy.deepcopy(tiny_vae.encoder)
    enc.down_blocks[0].resnets[0].time_emb_proj = torch.nn.Linear(4, 8)
    assert not supports_deferred_bias(enc)
    enc = copy.deepcopy(tiny_vae.encoder)
    shortcut = next(
        r.conv_shortcut for b in enc.down_blocks for r in b.resnets if r.conv_shortcut is not None
    )
    shortcut.padding = (1, 1)  # conv(x + b) = conv(x) + W @ b no longer holds at the border
    assert not supports_deferred_bias(enc)
    enc = copy.deepcopy(tiny_vae.encoder)
    enc.conv_out.padding_mode = "reflect"
    assert not supports_deferred_bias(enc)
    assert not supports_deferred_bias(torch.nn.Conv2d(3, 3, 1))  # not an Encoder at all
    # attention inside the down blocks (AttnDownEncoderBlock2D): a valid diffusers VAE this does not compute
    from diffusers.models.autoencoders.vae import Encoder

    attn_enc = Encoder(
        3,
        4,
        down_block_types=("AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
        block_out_channels=(16, 32),
        norm_num_groups=8,
    ).eval()
    assert not supports_deferred_bias(attn_enc)
    enc = copy.deepcopy(tiny_vae.encoder).train()
    with pytest.raises(ValueError, match="inference-only"):
        encoder_forward(enc, torch.zeros(1, 3, 64, 64))
