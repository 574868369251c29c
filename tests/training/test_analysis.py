"""Modality collapse matrix and per-step grounding: definitions on hand-made inputs, then the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.analysis import collapse_png, collapse_summary, mask_cells, step_grounding, step_similarity


def test_step_similarity_is_the_mean_cosine_over_samples():
    a = torch.tensor([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0]])  # h0 ignored; h1 ⟂ h2
    b = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])  # h1 ∥ h2
    m = step_similarity([a, b])
    np.testing.assert_allclose(m, [[1.0, 0.5], [0.5, 1.0]], atol=1e-6)
    s = collapse_summary(m, 2)
    assert s["mean_offdiag"] == 0.5 and s["adjacent"] == [0.5] and s["k"] == 2
    with pytest.raises(ValueError):
        step_similarity([a, b[:2]])


def test_collapse_png(tmp_path):
    p = collapse_png(np.eye(4) * 0.5 + 0.5, tmp_path / "c.png", "t")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mask_cells_follow_the_encoders_square_padding():
    mask = np.zeros((40, 80), dtype=bool)  # wide image: padded with 20 rows above and below
    mask[:, :20] = True  # left quarter of the image
    cells = mask_cells(mask, 4)  # 80x80 square → 20 px cells
    expect = np.zeros((4, 4), dtype=bool)
    expect[1:3, 0] = True  # only the two content rows, first column
    np.testing.assert_array_equal(cells, expect)
    tiny = np.zeros((80, 80), dtype=bool)
    tiny[0, 0] = True  # far below 30% of a cell: falls back to the cell of maximal coverage
    assert mask_cells(tiny, 4).sum() == 1 and mask_cells(tiny, 4)[0, 0]


def test_step_grounding_pointing_and_iou():
    cells = np.zeros((4, 4), dtype=bool)
    cells[0, :2] = True
    cos = np.zeros((4, 4), dtype=np.float32)
    cos[0, 0], cos[0, 1] = 1.0, 0.9  # the two mask cells are the only hot ones
    g = step_grounding(cos, cells)
    assert g == {"pointing": 1.0, "iou": 1.0, "iou_top": 1.0, "active_fraction": 2 / 16}
    cos2 = np.zeros((4, 4), dtype=np.float32)
    cos2[3, 3], cos2[0, 0] = 1.0, 0.5
    g2 = step_grounding(cos2, cells)
    assert g2["pointing"] == 0.0 and g2["iou_top"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> Path:
    from vital_core.bundle import save_bundle
    from vital_core.model import build_model
    from vital_core.presets import tiny

    path = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(build_model(tiny(), lora=True, scaffold=True), path)
    return path


def test_collapse_and_grounding_commands(random_bundle, phantom_dir, tmp_path):
    from vital_core.cli import main

    common = [
        "--bundle",
        str(random_bundle),
        "--manifest",
        str(phantom_dir / "manifest.jsonl"),
        "--limit",
        "6",
    ]
    assert main(["eval", "collapse", *common, "--out", str(tmp_path / "c")]) == 0
    c = json.loads((tmp_path / "c" / "collapse.json").read_text())
    assert c["n"] == 6 and len(c["matrix"]) == 4 and all(abs(c["matrix"][i][i] - 1) < 1e-4 for i in range(4))
    assert (tmp_path / "c" / "collapse.png").stat().st_size > 0 and (tmp_path / "c" / "collapse.md").is_file()
    assert (
        main(
            ["eval", "grounding", *common, "--k", "3", "--out", str(tmp_path / "g"), "--examples", "1"]
            + ["--fractions", "0.3,0.7"]
        )
        == 0
    )
    g = json.loads((tmp_path / "g" / "grounding.json").read_text())
    assert g["n"] == 6 and [r["step"] for r in g["per_step"]] == [1, 2, 3]
    assert all(0 <= r["pointing"] <= 1 and 0 <= r["iou"] <= 1 for r in g["per_step"])
    assert 0 < g["chance_pointing"] < 1 and len(list((tmp_path / "g" / "examples").glob("*.png"))) == 3
    regions = g["regions"]
    assert [r["step"] for r in regions["per_step"]] == [1, 2, 3] and set(regions["floors"]) == {
        "deviant_patch",
        "centred_box",
    }
    assert all(0 <= r["iou"] <= r["dice"] <= 1 for r in regions["per_step"])
    assert len(regions["sweep"]) == 3 and sum(s["best"] for s in regions["sweep"]) == 1
    assert "deviant-patch IoU" in (tmp_path / "g" / "grounding.md").read_text()
    assert main(["eval", "grounding", *common, "--fractions", "0.5,1.5"]) == 2
    assert main(["eval", "collapse", *common, "--k", "1"]) == 2


def test_multihop_accuracy_counts_only_multihop_samples_per_depth():
    from training.analysis import multihop_accuracy
    from training.data.manifest import Sample
    from training.eval.evaluate import Prediction

    def pred(answer, truth, qtype, k):
        s = Sample(
            id=f"x{answer}{truth}{k}",
            image="i.png",
            mask="m.png",
            question="q",
            answer=truth,
            reasoning=["s."] * k,
            question_type=qtype,
            modality="CT",
            target="liver",
            target_type="organ",
            split="test",
        )
        return Prediction(item=None, answer=answer, k=k, sample=s)

    preds = [
        pred("yes", "Yes.", "reasoning", 3),
        pred("No.", "Yes.", "reasoning", 3),
        pred("Two.", "Two.", "reasoning", 4),
        pred("Yes.", "Yes.", "yesno", 1),  # one-hop: not counted
        pred("The liver is large.", "The liver is a large organ.", "reasoning", 3),  # open: not counted
    ]
    out = multihop_accuracy(preds)
    assert out["n"] == 3 and out["closed_accuracy"] == round(2 / 3, 4)
    assert out["by_hops"] == {"3": {"n": 2, "closed_accuracy": 0.5}, "4": {"n": 1, "closed_accuracy": 1.0}}
