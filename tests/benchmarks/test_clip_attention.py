"""benchmarks.clip_attention: the image tower's attention through SDPA gives the same embeddings."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.clip_attention import SdpaSelfAttention, use_sdpa_attention
from model.clip_image import load_clip
from model.encoders import make_tiny_encoders


def test_same_embeddings_and_state_dict_as_open_clip(tmp_path):
    paths = make_tiny_encoders(tmp_path)
    tower = load_clip(paths["clip_model"], paths["clip_pretrained"], paths["clip_model_config"])
    swapped = copy.deepcopy(tower)
    layers = len(tower.transformer.resblocks)
    assert use_sdpa_attention(swapped) == layers == 2
    assert all(isinstance(b.attn, SdpaSelfAttention) for b in swapped.transformer.resblocks)
    assert list(swapped.state_dict()) == list(tower.state_dict())  # same keys, shared parameters
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = tower(x), swapped(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert use_sdpa_attention(swapped) == 0  # idempotent


def test_refuses_what_it_does_not_compute():
    attn = SdpaSelfAttention(torch.nn.MultiheadAttention(16, 2, batch_first=True))
    x, y = torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="self-attention only"):
        attn(x, y, y)
    with pytest.raises(ValueError, match="self-attention only"):
        attn(x, x, x, attn_mask=torch.zeros(4, 4))
    with pytest.raises(ValueError, match="batch_first"):
        SdpaSelfAttention(torch.nn.MultiheadAttention(16, 2))
