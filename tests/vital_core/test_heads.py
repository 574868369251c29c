"""Scaffolding heads: projector structure, both auxiliary losses, decoding latents back to text."""

from __future__ import annotations

import pytest
import torch

from vital_core.heads import VisualProjector, encode_steps


def test_visual_projector_structure_and_scale():
    vp = VisualProjector(32, 16, dropout=0.1).eval()
    assert [type(m).__name__ for m in vp.children()] == [
        "LayerNorm",
        "Linear",
        "GELU",
        "Dropout",
        "Linear",
        "LayerNorm",
    ]
    h = torch.randn(5, 32) * 1000  # huge LLM norms are normalised at the input
    y = vp(h)
    assert y.shape == (5, 16) and torch.isfinite(y).all()
    torch.testing.assert_close(y.mean(-1), torch.zeros(5), atol=1e-5, rtol=0)


def test_semantic_loss_ignores_invalid_steps(tiny_model):
    sc, tok = tiny_model.scaffold, tiny_model.tokenizer
    steps = [["The liver is bright.", "It lies upper left."], ["A round lesion."]]
    ids, mask, has = encode_steps(steps, tok, k_max=3, max_tokens=16)
    assert has.tolist() == [[True, True, False], [True, False, False]]
    lat = torch.randn(2, 3, tiny_model.hidden_size)
    loss = sc.semantic_loss(lat, ids, mask, has)
    assert torch.isfinite(loss) and loss > 0
    lat2 = lat.clone()
    lat2[0, 2] = 99.0  # a step without a sentence must not matter
    lat2[1, 1:] = -7.0
    torch.testing.assert_close(sc.semantic_loss(lat2, ids, mask, has), loss)
    none = torch.zeros_like(has)
    assert sc.semantic_loss(lat, ids, mask, none).item() == 0.0


def test_visual_loss_shared_and_per_step_targets(tiny_model):
    sc = tiny_model.scaffold.eval()
    d = sc.vp.w2.out_features
    lat = torch.randn(2, 3, tiny_model.hidden_size)
    valid = torch.tensor([[True, True, True], [True, False, False]])
    target = torch.randn(2, d)
    shared = sc.visual_loss(lat, target, valid)
    per_step = sc.visual_loss(lat, target[:, None].expand(-1, 3, -1) * 5.0, valid)  # scale: normalised away
    torch.testing.assert_close(shared, per_step)
    pred = sc.vp(lat)  # (2, 3, d)
    tgt = torch.nn.functional.normalize(target, dim=-1)
    expect = torch.stack(
        [(pred[0, i] - tgt[0]).abs().mean() for i in range(3)] + [(pred[1, 0] - tgt[1]).abs().mean()]
    )
    torch.testing.assert_close(shared, expect.mean())


def test_semantic_loss_trains_the_decoder_to_read_a_latent(tiny_model):
    """A few steps on one (latent, sentence) pair drive its loss well down: the path is wired right."""
    import copy

    sc = copy.deepcopy(tiny_model.scaffold).train()
    tok = tiny_model.tokenizer
    ids, mask, has = encode_steps([["The liver is bright."]], tok, k_max=1, max_tokens=16)
    lat = torch.randn(1, 1, tiny_model.hidden_size)
    opt = torch.optim.AdamW(sc.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        loss = sc.semantic_loss(lat, ids, mask, has)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first
    assert sc.eval().decode(lat[:, 0], tok, max_tokens=12) == ["The liver is bright."]


def test_projector_variants_of_the_ablation():
    """§C.2: the default is exactly the paper's projector; every variant maps (..., H) → (..., D)."""
    from vital_core.config import VP_VARIANTS, ConfigError, HeadsConfig
    from vital_core.heads import AblationProjector, build_projector

    assert HeadsConfig().vp_variant == "res_mlp_ln"
    assert type(build_projector(32, 16)) is VisualProjector
    with pytest.raises(ConfigError, match="vp_variant"):
        HeadsConfig(vp_variant="conv")
    h = torch.randn(2, 3, 32) * 100
    sizes = {}
    for v in VP_VARIANTS:
        vp = build_projector(32, 16, 0.1, v).eval()
        y = vp(h)
        assert y.shape == (2, 3, 16) and torch.isfinite(y).all(), v
        assert vp.w2.out_features == 16 and isinstance(vp.drop, torch.nn.Dropout)
        sizes[v] = sum(p.numel() for p in vp.parameters())
    assert sizes["linear"] < sizes["mlp"] < sizes["mlp_ln"] == sizes["res_mlp_ln"] < sizes["transformer"]
    lin = AblationProjector(32, 16, variant="linear")
    torch.testing.assert_close(lin(h), lin.w2(h))
