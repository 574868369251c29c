"""Question builder: templates classify to their own type, placeholders, distractors, splits by case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.manifest import load_manifest
from training.sources import SourceRecord
from training.sources.questions import (
    GROUPS,
    MODALITY_PHRASES,
    PLACEHOLDER_ANSWER,
    TEMPLATES,
    TYPE_NOUNS,
    build_question_set,
    make_questions,
    read_meta,
    render,
)
from vital_core.config import QUESTION_TYPES
from vital_core.qtypes import REASONING_DEPTH, classify_question

TARGETS = [
    ("liver", "organ"),
    ("left atrium", "organ"),
    ("prostate transition zone", "organ"),
    ("hepatic vessel", "vessel"),
    ("optic disc", "retinal structure"),
    ("liver tumor", "tumor"),
    ("polyp", "lesion"),
    ("mass", "lesion"),
    ("neoplastic cells", "cell"),
    ("glandular structure", "tissue"),
]


@pytest.mark.parametrize("qtype", QUESTION_TYPES)
def test_every_template_classifies_as_its_own_type(qtype):
    keys = [qtype] + (["identify_region"] if qtype == "identify" else [])
    for key in keys:
        for templates in TEMPLATES[key].values():
            for template in templates:
                for target, ttype in TARGETS:
                    for region in ("upper left", "central", "lower"):
                        q = template.format(
                            t=target, a="a", mod="CT scan", noun=TYPE_NOUNS[ttype], region=region
                        )
                        assert classify_question(q) == qtype, q


def test_render_is_modality_and_target_type_aware():
    rng = np.random.default_rng(0)
    qs = {render("identify", "polyp", "lesion", "Endoscopy", rng) for _ in range(20)}
    assert all("abnormal" in q and "endoscop" in q for q in qs)
    q = render("identify", "liver", "organ", "CT", rng, region="upper left")
    assert "organ" in q and "upper left" in q and "CT" in q
    cells = render("yesno", "neoplastic cells", "cell", "Pathology", rng)
    assert cells.startswith(("Are there neoplastic cells", "Does this")) and "neoplastic cells" in cells
    assert set(GROUPS.values()) == {"anatomy", "finding", "cell"} and "MRI" in MODALITY_PHRASES


def _records(tmp_path: Path, n_cases: int = 6) -> list[SourceRecord]:
    """Written records: per case one image with a liver and a spleen mask; tumors annotated in case 0 only."""
    recs = []
    for c in range(n_cases):
        img = tmp_path / f"img{c}.png"
        Image.fromarray(np.full((16, 16), 40, np.uint8)).save(img)
        targets = [("liver", "organ", (0, 8, 0, 8)), ("spleen", "organ", (8, 16, 8, 16))]
        if c == 0:
            targets.append(("liver tumor", "tumor", (2, 5, 2, 5)))
        present = tuple(sorted(t for t, _, _ in targets))
        for target, ttype, (y0, y1, x0, x1) in targets:
            mask = np.zeros((16, 16), np.uint8)
            mask[y0:y1, x0:x1] = 255
            path = tmp_path / f"m{c}-{target}.png"
            Image.fromarray(mask).save(path)
            recs.append(
                SourceRecord(
                    id=f"r{c}-{target.replace(' ', '-')}",
                    image=img,
                    mask=path,
                    modality="CT",
                    target=target,
                    target_type=ttype,
                    source="msd",
                    subset="Task03_Liver",
                    case=f"case{c}",
                    image_key=f"img{c}",
                    present=present,
                    split="test" if c == n_cases - 1 else "",
                )
            )
    return recs


def test_make_questions(tmp_path):
    recs = _records(tmp_path)
    qs = make_questions(recs, per_record=6, seed=3)
    assert len(qs) == 6 * len(recs) and len({q.sample.id for q in qs}) == len(qs)
    counts = {t: sum(q.sample.question_type == t for q in qs) for t in QUESTION_TYPES}
    assert set(counts.values()) == {len(recs)}  # types dealt in turn
    for q in qs:
        s = q.sample
        assert s.answer == PLACEHOLDER_ANSWER and s.k == REASONING_DEPTH[s.question_type][0]
        assert classify_question(s.question) == s.question_type
        assert s.roi_key == s.id  # what `vital extract-roi` keys features by
    by_case = {}
    for q in qs:
        by_case.setdefault(q.meta["case"], set()).add(q.sample.split)
    assert all(len(v) == 1 for v in by_case.values()) and by_case["case5"] == {"test"}
    yesno = [q for q in qs if q.sample.question_type == "yesno"]
    nos = [q for q in yesno if q.meta["expected_answer"] == "no"]
    assert nos and any(q.meta["expected_answer"] == "yes" for q in yesno)
    for q in nos:  # distractor: annotated in the subset, absent from this image
        assert q.meta["asked_target"] == "liver tumor" and q.meta["case"] != "case0"
        assert "tumor" in q.sample.question and q.sample.target in ("liver", "spleen")
    for q in (q for q in yesno if q.meta["expected_answer"] == "yes"):
        assert q.meta["asked_target"] == q.sample.target
    # deterministic
    again = make_questions(recs, per_record=6, seed=3)
    assert [q.sample.question for q in again] == [q.sample.question for q in qs]


def test_identify_names_a_region_when_several_targets_are_present(tmp_path):
    recs = [r for r in _records(tmp_path, 2)]
    qs = make_questions(recs, types=["identify"])
    spleen = next(q for q in qs if q.sample.target == "spleen")
    assert "lower right" in spleen.sample.question


def test_source_questions_keep_their_text_and_get_a_type(tmp_path):
    rec = _records(tmp_path, 1)[0]
    from dataclasses import replace

    mine = [
        replace(
            rec,
            id="a",
            question="Where is the liver in this scan?",
            answer="The liver is in the upper left part of the image.",
        ),
        replace(rec, id="b", question="Tell me about it", question_type="describe"),
    ]
    a, b = make_questions(mine)
    assert a.sample.question_type == "location" and a.meta["expected_answer"].startswith("The liver")
    assert a.meta["origin"] == "source" and b.sample.question_type == "describe" and b.sample.k == 2


def test_build_question_set_writes_a_loadable_manifest(tmp_path):
    recs = _records(tmp_path / "src", 3) if (tmp_path / "src").mkdir() is None else []
    path = build_question_set(recs, tmp_path / "out", per_record=2)
    samples = load_manifest(path)
    assert len(samples) == 2 * len(recs)
    meta = read_meta(tmp_path / "out" / "questions.meta.jsonl")
    assert set(meta) == {s.id for s in samples}
    summary = json.loads((tmp_path / "out" / "questions.json").read_text())
    assert summary["questions"] == len(samples) and sum(summary["by_split"].values()) == len(samples)
    assert all(s.image.parent == tmp_path / "out" / "images" for s in samples)
