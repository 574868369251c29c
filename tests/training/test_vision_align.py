"""Vision alignment: the patch order matches Qwen's processor, and distillation raises the cosine."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from training.vision_align import align_vision, qwen_patch_cells


def _tiny_p8():
    from vital_core.model import build_model
    from vital_core.presets import tiny

    cfg = tiny()
    cfg.backbone.arch["vision_config"].update(patch_size=8, num_position_embeddings=256)
    return build_model(cfg)


def test_patch_cells_follow_the_processors_order() -> None:
    model = _tiny_p8()
    img = np.zeros((128, 128, 3), dtype=np.uint8)
    img[40:48, 88:96] = 255  # one 8-pixel cell: row 5, column 11 of the 16 x 16 grid
    vis = model.processor([Image.fromarray(img)], return_tensors="pt")
    bright = int(vis["pixel_values"].mean(-1).argmax())
    assert qwen_patch_cells(16, 16, 2)[bright] == 5 * 16 + 11
    assert sorted(qwen_patch_cells(16, 16, 2)) == list(range(256))


def test_alignment_raises_the_cosine_to_the_encoder(phantom_dir) -> None:
    from index_builder.encoder import load_encoder

    model = _tiny_p8()
    enc = load_encoder(dataclasses.replace(model.config.encoder), device="cpu", seed=1)
    images = sorted(str(p) for p in (phantom_dir / "images").glob("*.png"))[:40]
    before = {k: v.clone() for k, v in model.core.model.visual.state_dict().items()}
    r = align_vision(model, enc, images, steps=30, batch_size=8, lr=3e-3, progress=False)
    assert r["cosine_last"] > r["cosine_first"] + 0.1, r
    after = model.core.model.visual.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
