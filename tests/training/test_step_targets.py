"""Per-step visual targets: the phantom's step masks, the manifest field, the ROI keys the trainer gathers,
the projector's output scale, and the grounding analysis that scores each step against its own mask."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from index_builder.samples import read_step_masks, step_key
from training.data.manifest import ManifestError, Sample, load_manifest, write_manifest
from training.phantom import make_sample
from training.phantom.multihop import is_multihop

SEED, SIZE = 0, 128  # as in conftest.PHANTOM


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 127


def test_phantom_step_masks_are_the_structures_each_step_names(phantom_samples: list) -> None:
    """Every sample has one mask per step; a multi-hop step's mask is the mask of the structure it is
    about (regenerated from the scene, not read back from the generator's bookkeeping)."""
    n_other = 0
    for s in phantom_samples:
        assert len(s.step_masks) == s.k
        regen = make_sample(int(s.id.rsplit("-", 1)[1]), SEED, SIZE)
        objs = regen.qa.step_objects()
        for k, (path, obj) in enumerate(zip(s.step_masks, objs)):
            assert np.array_equal(_mask(path), obj.mask), (s.id, k)
            if path != s.mask:
                n_other += 1
                assert obj is not regen.qa.target and obj.name in s.reasoning[k], (s.id, s.reasoning[k])
        if not is_multihop(s.question_type, s.answer, s.question):
            assert set(s.step_masks) == {s.mask}, s.id  # one-structure questions: every step is the target
        else:
            assert s.step_masks[-1] == s.mask  # the conclusion is about the question's target
    assert n_other >= 5  # comparisons and containment name a second structure


def test_step_roi_keys_and_read_step_masks_agree(phantom_dir: Path, phantom_samples: list) -> None:
    refs = read_step_masks(phantom_dir / "manifest.jsonl")
    by_key = {r.id: r for r in refs}
    want = {k for s in phantom_samples for k in s.step_roi_keys() if k != s.roi_key}
    assert set(by_key) == want and want
    s = next(s for s in phantom_samples if len(set(s.step_roi_keys())) > 1)
    for k, (key, path) in enumerate(zip(s.step_roi_keys(), s.step_masks), 1):
        assert (key == s.roi_key) == (path == s.mask)
        if key != s.roi_key:
            assert key == step_key(s.id, k) and by_key[key].mask == path and by_key[key].image == s.image


def _row(tmp_path: Path, **extra) -> Path:
    for name in ("a.png", "m.png", "m2.png"):
        Image.new("L", (8, 8)).save(tmp_path / name)
    row = {
        "id": "x1",
        "image": "a.png",
        "mask": "m.png",
        "question": "Compare?",
        "answer": "Yes.",
        "reasoning": ["one.", "two.", "three."],
        "question_type": "reasoning",
        "modality": "CT",
        "target": "liver",
        "target_type": "organ",
        "split": "train",
        **extra,
    }
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return path


def test_manifest_step_masks_round_trip(tmp_path: Path) -> None:
    path = _row(tmp_path, step_masks=["m.png", "m2.png", "m.png"])
    (s,) = load_manifest(path)
    assert s.step_masks == (tmp_path / "m.png", tmp_path / "m2.png", tmp_path / "m.png")
    assert s.step_roi_keys() == ("x1", "x1#s2", "x1")
    write_manifest([s], tmp_path / "out.jsonl")
    assert json.loads((tmp_path / "out.jsonl").read_text())["step_masks"] == ["m.png", "m2.png", "m.png"]
    (plain,) = load_manifest(_row(tmp_path))
    assert plain.step_masks == () and plain.step_roi_keys() == ("x1",) * 3
    write_manifest([plain], tmp_path / "plain.jsonl")
    assert "step_masks" not in json.loads((tmp_path / "plain.jsonl").read_text())


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["m.png", "m2.png"], "expected 3 masks (one per reasoning sentence), got 2"),
        (["m.png", "m2.png", "gone.png"], "file not found"),
        ("m.png", "expected a list of non-empty mask paths"),
        (["m.png", "", "m.png"], "expected a list of non-empty mask paths"),
    ],
)
def test_manifest_step_masks_errors_name_the_field(tmp_path: Path, value, message: str) -> None:
    with pytest.raises(ManifestError) as err:
        load_manifest(_row(tmp_path, step_masks=value))
    assert "field 'step_masks'" in str(err.value) and message in str(err.value)


def _three_step_sample(sid: str, image: Path, mask: Path, step_masks: tuple[Path, ...]) -> Sample:
    """A reasoning sample of three steps whose step masks are given."""
    return Sample(
        id=sid,
        image=image,
        mask=mask,
        question="q",
        answer="Yes.",
        reasoning=("1", "2", "3"),
        question_type="reasoning",
        modality="CT",
        target="t",
        target_type="organ",
        split="test",
        step_masks=step_masks,
    )


def test_roi_targets_per_hop_gathers_each_steps_feature() -> None:
    from training.data.batches import RoiTargets, roi_keys

    s = _three_step_sample("a", Path("i.png"), Path("m.png"), (Path("m.png"), Path("o.png"), Path("m.png")))
    assert roi_keys([s]) == ["a"] and roi_keys([s], per_hop=True) == ["a", "a#s2"]
    targets = RoiTargets.__new__(RoiTargets)  # the store is read elsewhere; here only the gathering
    targets.features = {"a": torch.tensor([1.0, 0.0]), "a#s2": torch.tensor([0.0, 1.0])}
    out = targets.per_hop([s], 3)
    assert out.shape == (1, 3, 2) and out[0].tolist() == [[1, 0], [0, 1], [1, 0]]
    assert targets.per_hop([s], 4)[0, 3].tolist() == [1, 0]  # a forced deeper K repeats the last step
    assert targets.per_hop([s], 1)[0].tolist() == [[1, 0]]


@pytest.mark.parametrize("variant", ["res_mlp_ln", "mlp_ln", "transformer"])
def test_projector_output_starts_on_the_targets_sphere(variant: str) -> None:
    """The output LayerNorm's gain starts at 1/sqrt(D): outputs of norm ~1 like the L2-normalised ROI
    targets (a gain of 1 gives norm sqrt(D) = 34 at MedSigLIP's 1152, which the L1 loss must first undo)."""
    from vital_core.heads import build_projector

    torch.manual_seed(0)
    vp = build_projector(96, 1152, 0.0, variant).eval()
    with torch.no_grad():
        norms = vp(torch.randn(64, 96) * 30).norm(dim=-1)
    assert float(norms.min()) > 0.8 and float(norms.max()) < 1.2


def test_grounding_scores_each_step_against_its_own_mask(tmp_path: Path) -> None:
    """A projector whose steps point at two different structures scores 100% against the step masks and
    0% against the single sample mask; the heatmap cosine between the steps is low."""
    from index_builder.heatmap import contrast_grid
    from index_builder.regions import DEFAULT_FRACTION
    from training.analysis import grounding_from_predictions, step_mask_paths
    from training.eval.evaluate import Prediction
    from training.eval.items import BenchItem

    g, d = 4, 32
    grid = torch.nn.functional.normalize(
        torch.randn(g, g, d, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    grid[..., 1:3] = 0.0  # background: varied, nothing of A's or B's direction
    grid[0, 0] = torch.eye(d)[1]  # structure A in the top-left cell
    grid[3, 3] = torch.eye(d)[2]  # structure B in the bottom-right cell
    a, b = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
    a[:4, :4], b[12:, 12:] = True, True
    for name, m in (("a.png", a), ("b.png", b)):
        Image.fromarray(m.astype(np.uint8) * 255).save(tmp_path / name)
    Image.new("RGB", (16, 16)).save(tmp_path / "img.png")
    a_png, b_png = tmp_path / "a.png", tmp_path / "b.png"
    sample = _three_step_sample("s", tmp_path / "img.png", a_png, (a_png, b_png, a_png))
    assert step_mask_paths(sample, 4) == [tmp_path / n for n in ("a.png", "b.png", "a.png", "a.png")]

    class Encoder:
        grid = g

        def encode(self, images):
            return grid.expand(len(images), -1, -1, -1)

    vp = torch.nn.Identity()
    vp.register_parameter("w", torch.nn.Parameter(torch.zeros(1)))  # device lookup
    lat = torch.stack([torch.zeros(d), torch.eye(d)[1], torch.eye(d)[2], torch.eye(d)[1]])  # h0..h3
    item = BenchItem(id="s", question="q", answer="Yes.", kind="closed", image=tmp_path / "img.png")
    pred = Prediction(item=item, answer="Yes.", k=3, latents=lat, sample=sample)
    report = grounding_from_predictions([pred], vp, Encoder())
    steps = report["per_step"]
    assert [r["pointing"] for r in steps] == [1.0, 1.0, 1.0]
    assert steps[0]["prev_cosine"] is None and steps[1]["prev_cosine"] < 0.5
    no_steps = Prediction(item=item, answer="Yes.", k=3, latents=lat, sample=replace(sample, step_masks=()))
    assert grounding_from_predictions([no_steps], vp, Encoder())["per_step"][1]["pointing"] == 0.0
    cc = contrast_grid(torch.eye(d)[2], grid)
    assert np.unravel_index(np.argmax(cc), cc.shape) == (3, 3)
    # regions: each step's mask lands on its own structure, well above both saliency floors
    regions = report["regions"]
    assert regions["fraction"] == DEFAULT_FRACTION and regions["n"] == 1
    floors = regions["floors"]
    assert floors["centred_box"]["median_size"] == [0.25, 0.25]  # the 4 x 4 structures of a 16 x 16 image
    for r, dev, cen in zip(
        regions["per_step"], floors["deviant_patch"]["per_step"], floors["centred_box"]["per_step"]
    ):
        assert r["iou"] > 0.3 and r["dice"] > 0.45 and r["box_iou"] > 0.3
        assert r["iou"] > dev["iou"] and r["iou"] > cen["iou"] == 0.0
    swept = grounding_from_predictions([pred], vp, Encoder(), fractions=[0.2, 0.9])["regions"]
    assert [s["fraction"] for s in swept["sweep"]] == sorted([0.2, DEFAULT_FRACTION, 0.9])
    assert sum(s["best"] for s in swept["sweep"]) == 1
