"""Template questions for real source records (paper §A.1): six types, target-type- and modality-aware.

Questions only: answers and reasoning are placeholders that `vital distill` replaces with the teacher's.
The number of placeholder steps is the type's minimum depth (paper Table 4), so the question manifest
already loads with `training.data.manifest.load_manifest`. Hidden facts the teacher needs and the student must
not see (the target a "no" question asks about, a reference answer) go to a sidecar
`questions.meta.jsonl`. Questions that come with a source keep their text; their type is classified
by `vital_core.qtypes.classify_question` when the source gives none.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data.manifest import SPLITS, Sample, assign_splits, write_manifest
from training.phantom.facts import mask_facts
from training.sources.record import SourceRecord, infer_target_type, write_pairs
from vital_core.config import QUESTION_TYPES
from vital_core.qtypes import REASONING_DEPTH, classify_question

PLACEHOLDER_ANSWER = "PENDING: to be written by the teacher."
PLACEHOLDER_STEP = "PENDING: to be written by the teacher."

MODALITY_PHRASES: dict[str, tuple[str, ...]] = {
    "CT": ("CT scan", "CT image", "CT slice"),
    "MRI": ("MRI scan", "MR image", "MRI slice"),
    "X-ray": ("X-ray", "radiograph", "X-ray image"),
    "Ultrasound": ("ultrasound image", "ultrasound scan"),
    "Endoscopy": ("endoscopic image", "endoscopy frame"),
    "Dermoscopy": ("dermoscopic image", "dermoscopy image"),
    "Fundus": ("fundus photograph", "fundus image"),
    "OCT": ("OCT scan", "OCT image"),
    "Pathology": ("histopathology image", "pathology slide"),
}
"""How a question names each modality; unknown modalities are called "image"."""

GROUPS: dict[str, str] = {
    "organ": "anatomy",
    "vessel": "anatomy",
    "tissue": "anatomy",
    "retinal structure": "anatomy",
    "lesion": "finding",
    "tumor": "finding",
    "cell": "cell",
}
"""Target type -> template group; unknown types use the `finding` templates."""

TYPE_NOUNS: dict[str, str] = {
    "organ": "organ",
    "vessel": "vascular structure",
    "tissue": "tissue",
    "retinal structure": "retinal structure",
    "lesion": "abnormality",
    "tumor": "abnormality",
    "cell": "type of cells",
}
"""The noun an identify question asks for, by target type."""

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "yesno": {
        "anatomy": (
            "Is the {t} visible in this {mod}?",
            "Does this {mod} show the {t}?",
            "Can the {t} be seen in this {mod}?",
        ),
        "finding": (
            "Is there {a} {t} in this {mod}?",
            "Does this {mod} show {a} {t}?",
            "Is {a} {t} visible in this {mod}?",
        ),
        "cell": ("Are there {t} in this {mod}?", "Does this {mod} contain {t}?"),
    },
    "identify": {
        "anatomy": ("What {noun} is shown in this {mod}?", "Which {noun} is seen in this {mod}?"),
        "finding": (
            "What abnormality is visible in this {mod}?",
            "Identify the abnormal finding in this {mod}.",
        ),
        "cell": ("What type of cells are shown in this {mod}?", "Identify the cells visible in this {mod}."),
    },
    "identify_region": {
        "anatomy": (
            "Which {noun} is seen in the {region} part of this {mod}?",
            "What {noun} appears in the {region} part of the image?",
        ),
        "finding": ("What abnormality is seen in the {region} part of this {mod}?",),
        "cell": ("What type of cells are seen in the {region} part of this {mod}?",),
    },
    "location_choice": {
        "any": (
            "Is the {t} in the left, right, or center of the image?",
            "Is the {t} located on the left side, the right side, or in the center of this {mod}?",
            "Is the {t} in the upper, middle, or lower part of the image?",
            "Does the {t} appear in the top, middle, or bottom of this {mod}?",
        ),
    },
    "location": {
        "any": (
            "Where is the {t} located in this {mod}?",
            "In which part of the image is the {t}?",
            "What is the position of the {t} in this {mod}?",
        ),
    },
    "describe": {
        "anatomy": (
            "Describe the appearance of the {t} in this {mod}.",
            "Describe the shape and boundary of the {t} in this {mod}.",
            "Characterize the {t} seen in this {mod}.",
        ),
        "finding": (
            "Describe the size, shape and margins of the {t} in this {mod}.",
            "Describe the appearance of the {t} in this {mod}.",
            "Characterize the {t} seen in this {mod}.",
        ),
        "cell": ("Describe the appearance of the {t} in this {mod}.", "Characterize the {t} in this {mod}."),
    },
    "reasoning": {
        "anatomy": (
            "Analyze the visual features that identify the {t} in this {mod}.",
            "Explain how the {t} can be recognized in this {mod}.",
            "Interpret the appearance of the {t} in relation to the neighbouring structures in this {mod}.",
        ),
        "finding": (
            "Analyze the visual findings of the {t} in this {mod}.",
            "What can be inferred about the {t} from its appearance in this {mod}?",
            "Explain which visual features distinguish the {t} from the surrounding tissue in this {mod}.",
        ),
        "cell": (
            "Analyze the morphology of the {t} in this {mod}.",
            "Explain how the {t} can be recognized in this {mod}.",
        ),
    },
}
"""Question templates by type and target group ({t} target, {a} article, {mod} modality phrase,
{noun} identify noun, {region} nine-way image-space region of the mask)."""


@dataclass(frozen=True)
class Question:
    """A question sample (placeholder answer) and the hidden facts the teacher gets with it."""

    sample: Sample
    meta: dict[str, Any]


def render(
    qtype: str,
    target: str,
    target_type: str,
    modality: str,
    rng: np.random.Generator,
    region: str = "",
) -> str:
    """A question of type `qtype` about `target` (the asked target: for a "no" question, the absent one)."""
    key = "identify_region" if qtype == "identify" and region else qtype
    by_group = TEMPLATES[key]
    group = GROUPS.get(target_type, "finding")
    options = by_group.get(group) or by_group["any"]
    phrases = MODALITY_PHRASES.get(modality, ("image",))
    template = options[int(rng.integers(len(options)))]
    return template.format(
        t=target,
        a="an" if target[:1].lower() in "aeiou" else "a",
        mod=phrases[int(rng.integers(len(phrases)))],
        noun=TYPE_NOUNS.get(target_type, "structure"),
        region=region,
    )


def make_questions(
    records: Sequence[SourceRecord],
    *,
    per_record: int = 1,
    seed: int = 0,
    types: Sequence[str] = QUESTION_TYPES,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> list[Question]:
    """Questions for written records (image and mask are paths): types dealt in turn, splits by case.

    A yes/no question is a "no" question half of the time when a distractor is known to be absent: a
    target annotated elsewhere in the same sub-set that has no mask in this image (never an unannotated
    structure, which might be visible). Records that carry their own question keep it.
    """
    bad = [t for t in types if t not in QUESTION_TYPES]
    if bad or per_record < 1:
        raise ValueError(f"unknown question types {bad}" if bad else "per_record must be at least 1")
    annotated: dict[str, dict[str, str]] = defaultdict(dict)
    for rec in records:
        annotated[rec.subset][rec.target] = rec.target_type
    splits = case_splits(records, fractions, seed)
    out: list[Question] = []
    turn = 0
    for rec in records:
        rng = np.random.default_rng([seed, *rec.id.encode()])
        if rec.question:
            out.append(_source_question(rec, splits[rec.case]))
            continue
        for j in range(per_record):
            qtype = types[turn % len(types)]
            turn += 1
            distractors = sorted(set(annotated[rec.subset]) - set(rec.present) - {rec.target})
            out.append(_template_question(rec, f"{rec.id}-q{j}", qtype, distractors, annotated, splits, rng))
    return out


def _template_question(
    rec: SourceRecord,
    sid: str,
    qtype: str,
    distractors: list[str],
    annotated: dict[str, dict[str, str]],
    splits: dict[str, str],
    rng: np.random.Generator,
) -> Question:
    asked, asked_type, expected = rec.target, rec.target_type, ""
    region = ""
    if qtype == "yesno":
        expected = "yes"
        if distractors and rng.random() < 0.5:
            asked = distractors[int(rng.integers(len(distractors)))]
            asked_type, expected = annotated[rec.subset][asked], "no"
    elif qtype == "identify" and len(rec.present) > 1:
        region = mask_facts(_read_mask(Path(rec.mask))).region
    question = render(qtype, asked, asked_type, rec.modality, rng, region)
    meta = _meta(rec, sid, asked, asked_type, expected, "template")
    return Question(_sample(rec, sid, question, qtype, splits[rec.case]), meta)


def _source_question(rec: SourceRecord, split: str) -> Question:
    qtype = rec.question_type if rec.question_type in QUESTION_TYPES else classify_question(rec.question)
    sid = f"{rec.id}-q0"
    meta = _meta(rec, sid, rec.target, rec.target_type, rec.answer, "source")
    return Question(_sample(rec, sid, rec.question, qtype, split), meta)


def _meta(
    rec: SourceRecord, sid: str, asked: str, asked_type: str, expected: str, origin: str
) -> dict[str, Any]:
    return {
        "id": sid,
        "source": rec.source,
        "subset": rec.subset,
        "case": rec.case,
        "site": rec.extra.get("site", ""),
        "asked_target": asked,
        "asked_target_type": asked_type or infer_target_type(asked),
        "expected_answer": expected,
        "origin": origin,
    }


def _sample(rec: SourceRecord, sid: str, question: str, qtype: str, split: str) -> Sample:
    return Sample(
        id=sid,
        image=Path(rec.image),
        mask=Path(rec.mask),
        question=question,
        answer=PLACEHOLDER_ANSWER,
        reasoning=(PLACEHOLDER_STEP,) * REASONING_DEPTH[qtype][0],
        question_type=qtype,
        modality=rec.modality,
        target=rec.target,
        target_type=rec.target_type,
        split=split,
        # roi_key stays the sample id: `vital extract-roi` keys features by row id. Questions about one
        # mask could share rec.id once the extractor honours roi_key.
    )


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im)
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def case_splits(records: Sequence[SourceRecord], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Split per case (volume / patient), stratified by source x modality; source split hints are kept.

    Cases hinted `test` or `val` keep that split; cases hinted `train` are divided between train and val
    in the ratio of `fractions`; unhinted cases get all three splits.
    """
    first: dict[str, SourceRecord] = {}
    for rec in records:
        first.setdefault(rec.case, rec)
    out: dict[str, str] = {c: r.split for c, r in first.items() if r.split in ("val", "test")}
    kept = fractions[0] + fractions[1]
    train_val = (fractions[0] / kept, fractions[1] / kept, 0.0) if kept > 0 else (1.0, 0.0, 0.0)
    for hint, fr in (("train", train_val), ("", tuple(fractions))):
        cases = sorted(
            c for c, r in first.items() if r.split == hint or (hint == "" and r.split not in SPLITS)
        )
        keys = [f"{first[c].source}|{first[c].modality}" for c in cases]
        out.update(zip(cases, assign_splits(keys, fr, seed)))
    return out


def build_question_set(
    records: Iterable[SourceRecord],
    out: str | Path,
    *,
    per_record: int = 1,
    seed: int = 0,
    types: Sequence[str] = QUESTION_TYPES,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> Path:
    """Write PNG pairs, OUT/questions.jsonl (five-tuple, placeholder answers), the meta sidecar and a summary."""
    out = Path(out)
    written = list(write_pairs(records, out))
    questions = make_questions(written, per_record=per_record, seed=seed, types=types, fractions=fractions)
    path = write_manifest([q.sample for q in questions], out / "questions.jsonl")
    with (out / "questions.meta.jsonl").open("w", encoding="utf-8") as f:
        for q in questions:
            f.write(json.dumps(q.meta, ensure_ascii=False) + "\n")
    summary = {
        "records": len(written),
        "questions": len(questions),
        "by_source": dict(Counter(q.meta["source"] for q in questions)),
        "by_modality": dict(Counter(q.sample.modality for q in questions)),
        "by_question_type": dict(Counter(q.sample.question_type for q in questions)),
        "by_split": dict(Counter(q.sample.split for q in questions)),
        "seed": seed,
        "per_record": per_record,
    }
    (out / "questions.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return path


def read_meta(path: str | Path) -> dict[str, dict[str, Any]]:
    """The sidecar `questions.meta.jsonl` as id -> hidden facts (empty when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["id"]: row for row in rows}
