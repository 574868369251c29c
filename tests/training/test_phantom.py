"""The phantom generator: determinism, coverage, depth, splits, answers checked against the saved masks."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.manifest import SPLITS, load_manifest
from training.phantom import MODALITIES, generate, make_sample
from training.phantom.facts import shape_class
from vital_core.config import QUESTION_TYPES
from vital_core.qtypes import REASONING_DEPTH, classify_question

PHANTOM_N, PHANTOM_SEED, PHANTOM_SIZE = 216, 0, 128  # as in conftest.PHANTOM (checked below)
_REGION_RE = re.compile(r"in the ([a-z ]+?) part of the image")
_SIZE_WORDS = {"small": "small", "medium": "medium-sized", "large": "large"}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mask_truth(path: Path) -> dict:
    """Facts recomputed independently from a saved mask PNG."""
    m = np.asarray(Image.open(path))
    assert m.dtype == np.uint8 and m.ndim == 2 and set(np.unique(m)) <= {0, 255}
    ys, xs = np.nonzero(m)
    assert len(ys) > 0, f"{path} is empty"
    h, w = m.shape
    cy, cx = (ys.mean() + 0.5) / h, (xs.mean() + 0.5) / w
    horiz = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    vert = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    if vert == "middle":
        region = "central" if horiz == "center" else horiz
    else:
        region = vert if horiz == "center" else f"{vert} {horiz}"
    area = len(ys) / (h * w)
    size = "small" if area < 0.02 else "medium" if area < 0.08 else "large"
    return {
        "cx": cx,
        "cy": cy,
        "h": horiz,
        "v": vert,
        "region": region,
        "area": area,
        "size": size,
        "shape": m.shape,
    }


def test_same_seed_is_byte_identical_whatever_the_workers(
    phantom_dir: Path, phantom_params: dict, tmp_path: Path
) -> None:
    assert phantom_params == {"n": PHANTOM_N, "seed": PHANTOM_SEED, "size": PHANTOM_SIZE}
    generate(tmp_path, PHANTOM_N, PHANTOM_SEED, PHANTOM_SIZE, workers=1, progress=False)
    a, b = _files(phantom_dir), _files(tmp_path)
    assert a.keys() == b.keys()
    assert len([k for k in a if k.startswith("images/")]) == PHANTOM_N
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]


def test_different_seed_differs(phantom_dir: Path, tmp_path: Path) -> None:
    generate(tmp_path, 18, PHANTOM_SEED + 1, PHANTOM_SIZE, workers=1, progress=False)
    mine = (tmp_path / "manifest.jsonl").read_text().splitlines()
    ref = (phantom_dir / "manifest.jsonl").read_text().splitlines()[:18]
    assert mine != ref
    same_images = sum(
        (tmp_path / "images" / p.name).read_bytes() == p.read_bytes()
        for p in sorted((phantom_dir / "images").glob("*.png"))[:18]
        if (tmp_path / "images" / p.name).exists()
    )
    assert same_images == 0


def test_coverage_of_types_modalities_and_targets(phantom_samples: list) -> None:
    assert len(phantom_samples) == PHANTOM_N
    assert {s.question_type for s in phantom_samples} == set(QUESTION_TYPES)
    modalities = {s.modality for s in phantom_samples}
    assert len(modalities) >= 6 and modalities == {m.name for m in MODALITIES}
    assert len({s.target_type for s in phantom_samples}) >= 6
    assert len({s.target for s in phantom_samples}) >= 25
    answers = Counter(s.answer for s in phantom_samples if s.question_type == "yesno")
    assert set(answers) == {"Yes.", "No."}
    assert len({s.question for s in phantom_samples}) > 0.8 * PHANTOM_N


def test_reasoning_depth_in_range_for_every_sample(phantom_samples: list) -> None:
    depths: dict[str, set[int]] = {}
    for s in phantom_samples:
        lo, hi = REASONING_DEPTH[s.question_type]
        assert lo <= s.k <= hi, s
        depths.setdefault(s.question_type, set()).add(s.k)
    assert depths["describe"] == {2, 3} and depths["reasoning"] == {3, 4}


def test_templates_classify_as_their_type(phantom_samples: list) -> None:
    wrong = [
        (s.question, s.question_type)
        for s in phantom_samples
        if classify_question(s.question) != s.question_type
    ]
    assert not wrong


def test_splits_are_stratified(phantom_dir: Path, phantom_samples: list) -> None:
    counts = Counter(s.split for s in phantom_samples)
    for name, frac in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(counts[name] - frac * PHANTOM_N) <= 1
        part = load_manifest(phantom_dir / f"{name}.jsonl")
        assert [s.id for s in part] == [s.id for s in phantom_samples if s.split == name]
    for qtype in QUESTION_TYPES:  # each stratum (36 samples) is split close to 80/10/10
        c = Counter(s.split for s in phantom_samples if s.question_type == qtype)
        assert c["train"] >= 26 and c["val"] >= 2 and c["test"] >= 2
    info = json.loads((phantom_dir / "phantom.json").read_text())
    assert info["n"] == PHANTOM_N and info["seed"] == PHANTOM_SEED and info["size"] == PHANTOM_SIZE
    assert info["counts"]["split"] == dict(sorted(counts.items()))


def test_answers_match_the_saved_masks(phantom_samples: list) -> None:
    for s in phantom_samples:
        truth = _mask_truth(s.mask)
        image = Image.open(s.image)
        assert image.size == (PHANTOM_SIZE, PHANTOM_SIZE) == truth["shape"]
        text = " ".join([s.question, s.answer, *s.reasoning])
        if s.question_type != "location_choice":  # a one-axis answer, checked below
            # every nine-way region named anywhere in the sample is the region of its mask
            assert set(_REGION_RE.findall(text)) <= {truth["region"]}, (s.id, text, truth)
        assert not re.search(r"patient|anatomical (left|right)", text)
        if s.question_type == "location":
            assert s.answer == f"The {s.target} is in the {truth['region']} part of the image."
        elif s.question_type == "location_choice":
            word = {"left": "left", "center": "central", "right": "right"}[truth["h"]]
            if any(f"{w} part" in s.answer for w in ("upper", "middle", "lower")):
                word = truth["v"]
            assert s.answer == f"The {s.target} is in the {word} part of the image."
        elif s.question_type in ("describe", "reasoning"):
            words = re.findall(r"\b(small|medium-sized|large)\b", s.answer)
            assert words == [_SIZE_WORDS[truth["size"]]], (s.id, s.answer, truth)
            shape = shape_class(np.asarray(Image.open(s.mask)) > 0)
            assert re.findall(r"\b(round|oval|elongated|irregular)\b", s.answer) == [shape], (s.id, s.answer)
            pct = truth["area"] * 100
            assert ("under 1%" if pct < 1 else f"about {pct:.0f}%") in " ".join(s.reasoning)
        elif s.question_type == "identify":
            assert s.answer.endswith(f"shown is the {s.target}.")


def test_yes_no_presence_matches_the_scene(phantom_samples: list) -> None:
    seen = set()
    for s in phantom_samples:
        if s.question_type != "yesno":
            continue
        index = int(s.id.rsplit("-", 1)[1])
        sample = make_sample(index, PHANTOM_SEED, PHANTOM_SIZE)
        present = {o.name for o in sample.scene.objects}
        asked = sample.qa.asked
        assert asked in s.question and s.target in present
        assert asked in {name for name, _ in sample.modality.targets}
        assert (asked in present) == (s.answer == "Yes.")
        if s.answer == "Yes.":
            assert asked == s.target
        else:
            assert s.reasoning[0].startswith(f"No {asked} is seen") and s.target in s.reasoning[0]
        seen.add(s.answer)
    assert seen == {"Yes.", "No."}


def test_neighbour_relations_match_the_scene(phantom_samples: list) -> None:
    checked = 0
    pattern = re.compile(r"lies (to the left of|to the right of|above|below|within) the ([a-z ]+)")
    for s in phantom_samples:
        if s.question_type not in ("location", "reasoning"):
            continue
        sample = make_sample(int(s.id.rsplit("-", 1)[1]), PHANTOM_SEED, PHANTOM_SIZE)
        for rel, other_name in pattern.findall(" ".join(s.reasoning)):
            me, other = sample.qa.target.mask, sample.scene.get(other_name).mask
            (my, mx), (oy, ox) = (np.argwhere(m).mean(0) for m in (me, other))
            ok = {
                "to the left of": mx < ox,
                "to the right of": mx > ox,
                "above": my < oy,
                "below": my > oy,
                "within": (me & other).sum() >= 0.9 * me.sum(),
            }[rel]
            assert ok, (s.id, rel, other_name)
            checked += 1
    assert checked > 20


def test_generate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, 0, 0, 128, 1, progress=False)
    with pytest.raises(ValueError):
        generate(tmp_path, 5, 0, 16, 1, progress=False)
