"""Properties of the SV4D 2.0 UNet on the tiny config (CPU)."""

from __future__ import annotations

import math

import pytest
import torch

from model.blocks import ResBlock, SpatioTemporalTransformer
from model.config import TINY, UNetConfig, load_config, save_config
from model.embeddings import relative_polar_azimuth, timestep_embedding
from model.unet import SV4D2UNet, build_unet

BIG = 1.0e4  # a mix logit whose sigmoid is exactly 1.0 in float32: the mixed branch gets weight 0


def random_model(seed: int = 0, **cfg_changes) -> SV4D2UNet:
    """Tiny model with every parameter random (the default init zeroes output layers, which would hide
    dependencies) and all mix logits 0 (alpha = 0.5)."""
    torch.manual_seed(seed)
    model = build_unet(TINY.replace(**cfg_changes))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mix_factor"):
                p.zero_()
            elif p.ndim >= 2:
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.normal_(1.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    return model.eval()


def inputs(b: int = 1, f: int = 3, v: int = 4, hw: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(b, f, v, 4, hw, hw, generator=g),
        timesteps=torch.randn(b, generator=g),
        cond_latent=torch.randn(b, f, 4, hw, hw, generator=g),
        clip_emb=torch.randn(b, f, TINY.context_dim, generator=g),
        polar_rad=torch.rand(b, f, v, generator=g) * 3,
        azimuth_rad=torch.rand(b, f, v, generator=g) * 6,
        cond_sigma=torch.rand(b, generator=g),
        ref_latents=torch.randn(b, v, 4, hw, hw, generator=g),
    )


def set_mix(
    model: SV4D2UNet, resblock: float | None = None, cam: float | None = None, frame: float | None = None
):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ResBlock) and resblock is not None:
                m.time_mixer.mix_factor.fill_(resblock)
            if isinstance(m, SpatioTemporalTransformer):
                if cam is not None:
                    m.time_mixer.mix_factor.fill_(cam)
                if frame is not None:
                    m.time_mixer_motion.mix_factor.fill_(frame)


@torch.no_grad()
def run(model: SV4D2UNet, **kw) -> torch.Tensor:
    return model(**kw)


@pytest.mark.parametrize("b,f,v,hw", [(1, 3, 4, 8), (2, 2, 2, 16)])
def test_output_shape_and_finite(b, f, v, hw):
    model = random_model()
    out = run(model, **inputs(b, f, v, hw))
    assert out.shape == (b, f, v, 4, hw, hw)
    assert torch.isfinite(out).all() and out.abs().max() > 0


def test_cond_latent_per_view_equals_repeated():
    model = random_model()
    kw = inputs()
    a = run(model, **kw)
    kw["cond_latent"] = kw["cond_latent"][:, :, None].expand(-1, -1, 4, -1, -1, -1)
    assert torch.equal(a, run(model, **kw))


def test_config_json_round_trip(tmp_path):
    path = save_config(TINY, tmp_path)
    assert path.name == "config.json"
    assert load_config(tmp_path) == TINY
    with pytest.raises(ValueError, match="adm_in_channels"):
        UNetConfig(adm_in_channels=100)
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({"bogus": 1})


def test_bad_inputs_raise():
    model = random_model()
    kw = inputs()
    with pytest.raises(ValueError, match="x must be"):
        model(**{**kw, "x": kw["x"][0]})
    with pytest.raises(ValueError, match="clip_emb"):
        model(**{**kw, "clip_emb": kw["clip_emb"][:, :2]})
    with pytest.raises(ValueError, match="not divisible"):
        model(**{**inputs(hw=9)})


def test_frame_bypass_ignores_frame_weights_and_equals_alpha_f_zero():
    model = random_model()
    kw = inputs()
    off = run(model, **kw, frame_attention=False)
    on = run(model, **kw, frame_attention=True)
    assert not torch.allclose(off, on, atol=1e-4)  # the frame attention does something when enabled
    with torch.no_grad():
        for p in model.frame_attention_parameters():
            p.add_(torch.randn_like(p))
    assert torch.equal(off, run(model, **kw, frame_attention=False))
    model.set_frame_attention(False)
    assert torch.equal(off, run(model, **kw))
    model.set_frame_attention(True)
    set_mix(model, frame=BIG)  # alpha_f = 1 - sigmoid(BIG) = 0 exactly
    assert torch.equal(off, run(model, **kw))


def test_identity_initialised_frame_layers_leave_the_3d_model_unchanged():
    model = random_model()
    for t in model.transformers():
        t.init_frame_layers_as_identity_(motion_merge_factor=0.0)  # alpha_f = 0.5, still identity
    kw = inputs()
    torch.testing.assert_close(
        run(model, **kw, frame_attention=True), run(model, **kw, frame_attention=False)
    )
    fresh = build_unet(TINY)
    assert all(abs(a_f - (1 - 1 / (1 + math.exp(-5.0)))) < 1e-6 for _, a_f in fresh.mix_alphas().values())


def test_frame_attention_parameters_and_freezing():
    model = random_model()
    names = model.frame_attention_parameter_names()
    assert names and all(
        any(s in n for s in ("motion_blocks", "time_mix_motion_embed", "time_mixer_motion")) for n in names
    )
    n_transformers = sum(1 for _ in model.transformers())
    assert sum(n.endswith("time_mixer_motion.mix_factor") for n in names) == n_transformers
    model.set_frame_attention(False)
    model(**inputs()).square().mean().backward()
    frame_ids = {id(p) for p in model.frame_attention_parameters()}
    for p in model.parameters():
        if id(p) in frame_ids:
            assert p.grad is None
    assert all(p.grad is not None for p in model.parameters() if id(p) not in frame_ids)


def _changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(F, V) bool: which output latents differ."""
    return (a - b).abs().flatten(3).amax(-1)[0] > 1e-6


def test_3d_attention_mixes_views_within_a_frame_only():
    model = random_model()
    # Temporal ResBlocks and frame attention off: only the 3D attention can couple latents.
    set_mix(model, resblock=BIG, cam=BIG)
    model.set_frame_attention(False)
    kw = inputs()
    base = run(model, **kw)
    kw2 = {**kw, "x": kw["x"].clone()}
    kw2["x"][0, 1, 0, :, :2, :2] += 1.0  # frame 1, view 0, one corner
    changed = _changed(base, run(model, **kw2))
    assert changed.tolist() == [[False] * 4, [True, False, False, False], [False] * 4]
    set_mix(model, cam=0.0)  # alpha_3D = 0.5
    base = run(model, **kw)
    changed = _changed(base, run(model, **kw2))
    assert changed[1].all()  # every view of frame 1 sees the change
    assert not changed[0].any() and not changed[2].any()  # other frames do not: one attention per frame


def test_frame_attention_mixes_frames_within_a_view_only():
    model = random_model()
    set_mix(model, resblock=BIG, cam=BIG, frame=0.0)
    kw = inputs()
    base = run(model, **kw)
    kw2 = {**kw, "x": kw["x"].clone()}
    kw2["x"][0, 0, 1] += 1.0  # frame 0, view 1
    changed = _changed(base, run(model, **kw2))
    assert changed[:, 1].all()
    assert not changed[:, [0, 2, 3]].any()


def test_temporal_resblocks_mix_along_the_frame_view_sequence():
    model = random_model()
    set_mix(model, resblock=0.0, cam=BIG)
    model.set_frame_attention(False)
    kw = inputs()
    kw2 = {**kw, "x": kw["x"].clone()}
    kw2["x"][0, 2, 3] += 1.0
    changed = _changed(run(model, **kw), run(model, **kw2))
    assert changed.all()  # group norms over the whole (F*V) sequence couple every latent


def test_camera_embedding_changes_output():
    model = random_model()
    kw = inputs()
    base = run(model, **kw)
    kw2 = {**kw, "azimuth_rad": kw["azimuth_rad"].clone()}
    kw2["azimuth_rad"][0, :, 2] += 0.5
    assert not torch.allclose(base, run(model, **kw2), atol=1e-5)
    t = next(iter(model.transformers()))
    with torch.no_grad():
        t.time_mix_time_embed[2].bias.add_(1.0)
    assert not torch.allclose(base, run(model, **kw), atol=1e-5)


def test_reference_masking():
    model = random_model()
    kw = inputs(b=2)
    none = run(model, **{**kw, "ref_latents": None})
    masked = run(model, **kw, ref_mask=torch.zeros(2))
    torch.testing.assert_close(masked, none, rtol=0, atol=1e-6)
    unmasked = run(model, **kw, ref_mask=torch.ones(2))
    assert torch.equal(unmasked, run(model, **kw))
    assert not torch.allclose(unmasked, none, atol=1e-4)
    # Per-sample mask: sample 0 keeps its references, sample 1 drops them.
    mixed = run(model, **kw, ref_mask=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(mixed[1], none[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[0], unmasked[0], rtol=0, atol=1e-6)
    # Per-view mask equals zeroing that view's latent; references at another resolution are resized.
    per_view = run(model, **kw, ref_mask=torch.tensor([[1.0, 0.0, 1.0, 1.0]] * 2))
    ref0 = kw["ref_latents"].clone()
    ref0[:, 1] = 0
    torch.testing.assert_close(per_view, run(model, **{**kw, "ref_latents": ref0}), rtol=0, atol=1e-6)
    big = torch.nn.functional.interpolate(kw["ref_latents"].flatten(0, 1), scale_factor=2, mode="nearest")
    out_big = run(model, **{**kw, "ref_latents": big.view(2, 4, 4, 16, 16)})
    assert torch.isfinite(out_big).all()


def test_bf16_autocast_runs_and_is_close():
    model = random_model()
    kw = inputs()
    ref = run(model, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**kw)
        out.float().square().mean().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    half = model.to(torch.bfloat16)  # bf16 weights (inference): fp32 inputs are cast, fp32 output returned
    out_half = run(half, **kw)
    assert out_half.dtype == torch.float32 and (out_half - ref).abs().max() < 0.1 * ref.abs().max()


def test_checkpointing_gives_same_gradients():
    kw = inputs(f=2, v=2)
    grads = []
    for ckpt in (False, True):
        model = random_model(gradient_checkpointing=ckpt).train()
        out = model(**kw)
        out.square().mean().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=0, atol=0)
    for name, g in grads[0][1].items():
        torch.testing.assert_close(grads[1][1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_embeddings_known_values():
    e = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    # freqs = [1, 10000^-0.5]; layout [cos, cos, sin, sin]
    torch.testing.assert_close(e[0], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(e[1], torch.tensor([math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]))
    polar, azim = relative_polar_azimuth(torch.tensor([0.0, 0.3]), torch.tensor([1.0, 0.5]), 0.0, 1.0)
    torch.testing.assert_close(polar, torch.tensor([math.pi / 2, math.pi / 2 - 0.3]))
    torch.testing.assert_close(azim, torch.tensor([0.0, 2 * math.pi - 0.5]))


@pytest.mark.parametrize("mode", ["paper", "snapshot", "views"])
def test_flop_count_attention_split_follows_the_camera_mode(mode):
    from torch.utils.flop_counter import FlopCounterMode

    from model.flops import _meta_inputs, attention_core_flops

    cfg = TINY.replace(camera_attention=mode)
    with torch.device("meta"):
        model = SV4D2UNet(cfg)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(**_meta_inputs(cfg, 2, 3, 4, 8, 8, False))
    core = attention_core_flops(cfg, 2, 3, 4, 8, 8)
    # On the meta device SDPA runs as two bmm per attention: the analytic cores must account for all of them
    # (the one-key cross-attentions run no attention core).
    bmm = fc.get_flop_counts()["Global"][torch.ops.aten.bmm]
    assert bmm == core["spatial"] + core["3d"] + core["frame"]
    # The camera cores: B*F sequences of V*HW tokens (paper) or B*F*HW sequences of V tokens.
    hw_tokens = [64, 64, 64, 16, 16, 16, 16]  # tiny: 2 + 3 transformers at 8x8 (level 0), 2 at 4x4 (level 1)
    chans = [32, 32, 32, 64, 64, 64, 64]
    seq = [(6, 4 * hw) if mode == "paper" else (6 * hw, 4) for hw in hw_tokens]
    assert core["3d"] == sum(4.0 * s * n * n * c for (s, n), c in zip(seq, chans, strict=True))


def test_flop_count_official_anchor_in_every_mode():
    from model.flops import count_flops

    # Full size, one guidance-batched window (96 latents at 72x72): ~206 TFLOP with the snapshot's grouping.
    reps = {m: count_flops("sv4d2", 2, 12, 4, (72, 72), camera_attention=m) for m in ("paper", "snapshot")}
    snap, paper = reps["snapshot"], reps["paper"]
    assert abs(snap.snapshot_equivalent / 206e12 - 1) < 0.03
    assert snap.snapshot_equivalent == snap.forward + snap.cross_skipped
    assert paper.snapshot_equivalent == snap.snapshot_equivalent
    assert paper.camera_attention == "paper" and paper.forward > snap.forward + 0.9 * paper.attention_3d
    # The "attention" checkpoint policy keeps the long attentions: the paper camera attention (V*HW keys)
    # and the spatial ones at 72x72 / 36x36 / 18x18, never the snapshot's V-key camera attention.
    assert paper.attention_saved == pytest.approx(paper.attention_spatial + paper.attention_3d, rel=1e-3)
    assert snap.attention_saved == pytest.approx(snap.attention_spatial, rel=1e-3)


@pytest.mark.parametrize("block_cls", ["BasicTransformerBlock", "TimeMixBlock"])
def test_one_token_cross_attention_shortcut_equals_sdpa(block_cls):
    """Blocks attend to one-token contexts by broadcasting the projected token (attend_single_key): same
    output and gradients as norm2 -> to_q/to_k/to_v -> SDPA -> to_out, and zero gradient where SDPA gives
    ~0."""
    import model.attention as A

    torch.manual_seed(0)
    block = getattr(A, block_cls)(16, heads=2, dim_head=8, context_dim=12).double()
    for p in block.parameters():  # move the LayerNorms away from the identity
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(3, 1, 12, dtype=torch.float64, requires_grad=True)
    out = block(x, ctx)
    original = A.cross_attention_residual
    A.cross_attention_residual = lambda attn, norm, x, context: attn(norm(x), context) + x  # the SDPA path
    try:
        ref = block(x, ctx)
    finally:
        A.cross_attention_residual = original
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    names = ["x", "ctx"] + [n for n, _ in block.named_parameters()]
    params = [x, ctx, *block.parameters()]
    mine = dict(zip(names, torch.autograd.grad(out, params, g), strict=True))
    theirs = dict(zip(names, torch.autograd.grad(ref, params, g), strict=True))
    for name in names:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-10, msg=name)
    for name in ("attn2.to_q.weight", "attn2.to_k.weight", "norm2.weight", "norm2.bias"):
        assert mine[name].abs().max() == 0 and theirs[name].abs().max() < 1e-12, name


def test_one_token_shortcut_is_not_taken_while_output_dropout_is_active():
    """SDPA drops per query, the broadcast would drop per sequence: training with dropout keeps SDPA."""
    import model.attention as A

    attn, norm = A.CrossAttention(16, 2, 8, context_dim=12, dropout=0.5), torch.nn.LayerNorm(16)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 1, 12)

    def refuse(*_a, **_k):
        raise AssertionError("shortcut taken")

    attn.attend_single_key = refuse
    attn.train()
    A.cross_attention_residual(attn, norm, x, ctx)  # SDPA path: no error
    attn.eval()
    with pytest.raises(AssertionError, match="shortcut taken"):
        A.cross_attention_residual(attn, norm, x, ctx)


def test_camera_mlp_reads_the_unet_embedding_at_frame_0_of_each_view():
    """The release feeds time_mix_time_embed emb = time_embed(t_emb(c_noise)) + label_emb(vector) at frame 0
    of each view: (B, V, 4*mc), time dependent; cameras of later frames do not reach it."""
    from model.embeddings import camera_vector

    model = random_model()
    kw = inputs(b=2, f=3, v=4)
    seen = []
    t = next(iter(model.transformers()))
    hook = t.time_mix_time_embed.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        run(model, **kw)
        b, f, v = 2, 3, 4
        vec = camera_vector(
            kw["polar_rad"], kw["azimuth_rad"], kw["cond_sigma"][:, None, None], 16, 32
        )  # TINY: sigma 16, angles 32
        t_emb = timestep_embedding(kw["timesteps"][:, None, None].expand(b, f, v), TINY.model_channels)
        with torch.no_grad():
            emb = model.time_embed(t_emb) + model.label_emb(vec)
        assert seen[0].shape == (b, v, TINY.time_embed_dim)
        torch.testing.assert_close(seen[0], emb[:, 0], rtol=1e-5, atol=1e-6)
        # Later frames' cameras change the label embedding of their latents, not the camera MLP's input.
        kw2 = {**kw, "polar_rad": kw["polar_rad"].clone()}
        kw2["polar_rad"][:, 1:] += 0.3
        run(model, **kw2)
        assert torch.equal(seen[-1], seen[0])
        run(model, **{**kw, "timesteps": kw["timesteps"] + 1.0})  # the diffusion time reaches it
        assert not torch.allclose(seen[-1], seen[0])
    finally:
        hook.remove()


def test_cond_sigma_mask_zeroes_the_sigma_embedding_only():
    model = random_model()
    kw = inputs(b=2)
    base = run(model, **kw)
    assert torch.equal(run(model, **kw, cond_sigma_mask=torch.ones(2)), base)
    dropped = run(model, **kw, cond_sigma_mask=torch.tensor([1.0, 0.0]))
    assert torch.equal(dropped[0], base[0]) and not torch.allclose(dropped[1], base[1], atol=1e-4)
    # Masked, cond_sigma no longer matters; the cameras still do.
    other = run(model, **{**kw, "cond_sigma": kw["cond_sigma"] + 3.0}, cond_sigma_mask=torch.zeros(2))
    torch.testing.assert_close(other, run(model, **kw, cond_sigma_mask=torch.zeros(2)), rtol=0, atol=0)
    moved = run(model, **{**kw, "azimuth_rad": kw["azimuth_rad"] + 0.5}, cond_sigma_mask=torch.zeros(2))
    assert not torch.allclose(moved, other, atol=1e-4)
    with pytest.raises(ValueError, match="cond_sigma_mask"):
        model(**kw, cond_sigma_mask=torch.ones(3))


def test_camera_sequences_known_layout_and_inverse():
    """Tokens labelled by (b, f, v, pixel): each mode's sequences hold the documented tokens, each with the
    documented CLIP frame, and camera_tokens undoes the rearrangement exactly."""
    from model.blocks import camera_sequences, camera_tokens

    b, f, v, hw = 2, 3, 2, 4
    grid = torch.stack(
        torch.meshgrid(*(torch.arange(n) for n in (b, f, v, hw)), indexing="ij"), dim=-1
    ).float()  # (b, f, v, hw, 4): channel = (b, f, v, pixel)
    clip = torch.stack(
        torch.meshgrid(torch.arange(b), torch.arange(f), indexing="ij"), -1
    ).float()  # (b, f, 2)
    for mode in ("paper", "views", "snapshot"):
        seqs, ctx = camera_sequences(grid, clip, mode)
        assert torch.equal(camera_tokens(seqs, b, f, v, hw, mode), grid.reshape(b * f * v, hw, 4))
        assert seqs.shape[0] == ctx.shape[0] and ctx.shape[1] == 1
        for s in range(seqs.shape[0]):
            tok, (cb, cf) = seqs[s], ctx[s, 0]
            assert (tok[:, 0] == cb).all()  # never across batch elements
            if mode == "paper":  # every view and pixel of one frame, that frame's CLIP
                assert seqs.shape[1] == v * hw and (tok[:, 1] == cf).all()
            elif mode == "views":  # the V views of one (frame, pixel), that frame's CLIP
                assert tok[:, 2].tolist() == list(range(v)) and (tok[:, 1] == cf).all()
                assert (tok[:, 3] == tok[0, 3]).all()
            else:  # V consecutive (view, pixel) rows at one frame; CLIP frame floor((g*F + s) / HW)
                g, frame = (s % (hw * f)) // f, s % f
                rows = [(int(t[2]) * hw + int(t[3])) for t in tok]
                assert rows == list(range(g * v, g * v + v)) and (tok[:, 1] == frame).all()
                assert cf == (g * f + frame) // hw
    with pytest.raises(ValueError, match="camera_attention"):
        camera_sequences(grid, clip, "bogus")


@pytest.mark.parametrize("mode", ["snapshot", "views"])
def test_released_camera_modes_run_and_differ_from_paper(mode):
    paper = random_model()
    other = random_model(camera_attention=mode)
    assert other.config.camera_attention == mode
    other.load_state_dict(paper.state_dict())  # same parameters in every mode
    kw = inputs()
    out = run(other, **kw)
    assert out.shape == (1, 3, 4, 4, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out, run(paper, **kw), atol=1e-4)


def test_camera_attention_is_validated_and_saved(tmp_path):
    cfg = TINY.replace(camera_attention="views")
    save_config(cfg, tmp_path)
    assert load_config(tmp_path).camera_attention == "views"
    with pytest.raises(ValueError, match="camera_attention"):
        TINY.replace(camera_attention="3d")
