"""The tiny MedSigLIP trainer: reports and masks from the phantom, losses that learn, HF SiglipModel output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from training import encoder_train as et
from training.phantom import make_sample
from training.phantom.facts import mask_facts


def test_cell_fractions_are_mask_area_per_patch_cell() -> None:
    mask = np.zeros((128, 128), dtype=bool)
    mask[0:8, 0:4] = True  # half of cell (0, 0)
    mask[120:128, 120:128] = True  # all of the last cell
    g = et.cell_fractions(mask, 16)
    assert g.shape == (256,) and g[0] == 0.5 and g[255] == 1.0 and g[1:255].sum() == 0
    assert np.isclose(g.mean(), mask.mean())
    with pytest.raises(ValueError):
        et.cell_fractions(np.zeros((100, 100), dtype=bool), 16)


def test_report_states_every_objects_own_facts() -> None:
    s = make_sample(0, 0)
    text = et.report(s.scene)
    for o in s.scene.objects:
        f = mask_facts(o.mask)
        assert (
            f"{o.name}: {f.size} {f.shape} {'bright' if o.brighter else 'dark'} {o.target_type}, {f.region}."
            in text
        )


def test_pairs_regenerate_the_manifest_scenes(phantom_dir: Path) -> None:
    from PIL import Image

    data = et.load_pairs(phantom_dir / "manifest.jsonl", "test", 0, 16, limit=4)
    rows = [
        r
        for r in __import__("training.data.manifest", fromlist=["x"]).load_manifest(
            phantom_dir / "test.jsonl"
        )
    ][:4]
    for i, r in enumerate(rows):
        saved = np.asarray(Image.open(r.image).convert("RGB"))
        assert np.array_equal(saved, data.pixels[i].numpy())  # the very image the manifest points to
        j = data.names[i].index(r.target)
        mask = np.asarray(Image.open(r.mask)) > 0
        assert np.allclose(data.grids[i][j], et.cell_fractions(mask, 16))


def test_training_lowers_the_losses_and_saves_a_loadable_siglip(
    phantom_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from transformers import SiglipModel

    from index_builder.encoder import load_encoder
    from vital_core.presets import tiny
    from vital_core.tokenizer import train_bpe_tokenizer

    data = et.load_pairs(phantom_dir / "manifest.jsonl", "train", 0, 16, limit=12)
    tok = train_bpe_tokenizer(data.reports + [et.phrase(n) for ns in data.names for n in ns], vocab_size=300)
    model, head = et.build_model(len(tok), 0), et.RegionHead()
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-3)
    idx = list(range(12))
    first = {k: float(v.detach()) for k, v in et.losses(model, head, tok, data, idx).items()}
    for _ in range(12):
        parts = et.losses(model, head, tok, data, idx)
        opt.zero_grad()
        parts["total"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in et.losses(model, head, tok, data, idx).items()}
    assert last["total"] < 0.8 * first["total"], (first, last)
    assert last["region"] < first["region"] and last["patch"] < first["patch"], (first, last)
    # saved as an HF SiglipModel with its tokenizer; the patch encoder loads its vision tower unchanged
    model.eval().save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    assert isinstance(SiglipModel.from_pretrained(tmp_path / "enc"), SiglipModel)
    capfd.readouterr()
    enc = load_encoder(dataclasses.replace(tiny().encoder, path=str(tmp_path / "enc")), device="cpu")
    loaded = capfd.readouterr()
    assert "UNEXPECTED" not in loaded.out + loaded.err  # the text tower's keys are expected in this file
    from PIL import Image

    grid = enc.encode([Image.fromarray(data.pixels[0].numpy())])  # (1, 16, 16, D)
    with torch.no_grad():
        ref = model.vision_model(pixel_values=et._pixels(data.pixels[:1])).last_hidden_state
    assert torch.allclose(grid.reshape(1, 256, -1), torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)
    scores = et.evaluate_encoder(*et.load_trained(tmp_path / "enc"), data)
    assert (
        scores["n_images"] == 12 and 0 <= scores["pointing_target"] <= 1 and 0 <= scores["retrieval_r1"] <= 1
    )


def test_cli_rejects_bad_arguments_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vital_core.cli import main

    assert (
        main(["train-encoder", "--manifest", str(tmp_path / "no.jsonl"), "--out", str(tmp_path / "e")]) == 2
    )
    assert "not found" in capsys.readouterr().err
    (tmp_path / "m.jsonl").write_text("")
    assert main(["train-encoder", "--manifest", str(tmp_path / "m.jsonl"), "--steps", "0"]) == 2
    assert (
        main(
            ["train-encoder", "--manifest", str(tmp_path / "m.jsonl"), "--out", str(tmp_path), "--eval-only"]
        )
        == 2
    )
