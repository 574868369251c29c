"""Tiny benchmark folders built in each published layout (with the awkward cases real files have)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from eval_layouts import GEMEX_IMAGE, GEMEX_ROWS, hf_parquet, pmc_csv, png


@pytest.fixture(scope="session")
def vqa_rad(tmp_path_factory) -> Path:
    """The OSF release: one JSON list + `VQA_RAD Image Folder/`."""
    root = tmp_path_factory.mktemp("vqarad")
    rows = [
        {
            "qid": 1,
            "image_name": "synpic1.jpg",
            "image_organ": "CHEST",
            "question": "Is there a mass?",
            "answer": "Yes",
            "answer_type": "CLOSED",
            "question_type": "PRES",
            "phrase_type": "test_freeform",
        },
        {
            "qid": 2,
            "image_name": "synpic1.jpg",
            "image_organ": "CHEST",
            "question": "Where is the mass?",
            "answer": "left lung",
            "answer_type": "OPEN",
            "question_type": "POS",
            "phrase_type": "test_para",
        },
        {
            "qid": 3,
            "image_name": "synpic2.jpg",
            "image_organ": "HEAD",
            "question": "Is this a CT or MRI?",
            "answer": "CT",
            "answer_type": "CLOSED ",
            "question_type": "MODALITY",
            "phrase_type": "freeform",
        },
        {
            "qid": 4,
            "image_name": "synpic2.jpg",
            "image_organ": "HEAD",
            "question": "How many lesions?",
            "answer": 2,
            "answer_type": "OPEN",
            "question_type": "COUNT",
            "phrase_type": "test_freeform",
        },
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    for i, name in enumerate(("synpic1.jpg", "synpic2.jpg")):
        png(root / "VQA_RAD Image Folder" / name, i)
    return root


@pytest.fixture(scope="session")
def vqa_rad_hf(tmp_path_factory) -> Path:
    """flaviagiammarino/vqa-rad: `data/{train,test}-*.parquet`, no answer type."""
    root = tmp_path_factory.mktemp("vqarad-hf")
    hf_parquet(
        root / "data" / "test-00000-of-00001-8a6c.parquet",
        ["Is there a mass?", "Is this a CT?", "Where is the lesion?"],
        ["yes", "No", "left"],
    )
    hf_parquet(root / "data" / "train-00000-of-00001-1f2e.parquet", ["Is it normal?"], ["yes"])
    return root


@pytest.fixture(scope="session")
def slake(tmp_path_factory) -> Path:
    """SLAKE 1.0: `{train,validate,test}.json` + `imgs/`, English and Chinese questions mixed."""
    root = tmp_path_factory.mktemp("slake")
    rows = [
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "Does the picture contain liver?",
            "answer": "Yes",
            "q_lang": "en",
            "answer_type": "CLOSED",
            "modality": "CT",
            "content_type": "Organ",
            "qid": 10,
        },
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "图片中包含肝脏吗?",
            "answer": "是",
            "q_lang": "zh",
            "answer_type": "CLOSED",
            "modality": "CT",
            "content_type": "Organ",
            "qid": 11,
        },
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "Which organ is abnormal?",
            "answer": "Liver",
            "q_lang": "en",
            "answer_type": "OPEN",
            "modality": "CT",
            "content_type": "Abnormality",
            "qid": 12,
        },
    ]
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False))
    (root / "validate.json").write_text(json.dumps(rows[:1]))
    png(root / "imgs" / "xmlab1" / "source.jpg")
    return root


@pytest.fixture(scope="session")
def pathvqa(tmp_path_factory) -> Path:
    """The original release: `qas/{split}_vqa.pkl`, `qas/{split}/{split}_qa.pkl`, `images/{split}/*.jpg`."""
    root = tmp_path_factory.mktemp("pvqa")
    vqa = [
        {
            "answer_type": "yes/no",
            "img_id": "test_0001",
            "label": {"no": 1},
            "question_id": 100,
            "question_type": "is",
            "sent": "Is this tissue necrotic?",
        },
        {
            "answer_type": "other",
            "img_id": "test_0002",
            "label": {"granuloma": 1},
            "question_id": 101,
            "question_type": "what",
            "sent": "What is present?",
        },
    ]
    qa = [
        {"image": "test_0001", "question": "Is this tissue necrotic?", "answer": "no"},
        {"image": "test_0002", "question": "What is present?", "answer": "granuloma"},
    ]
    (root / "qas" / "test").mkdir(parents=True)
    (root / "qas" / "test_vqa.pkl").write_bytes(pickle.dumps(vqa))
    (root / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps(qa))
    for r in qa:
        png(root / "images" / "test" / f"{r['image']}.jpg")
    return root


@pytest.fixture(scope="session")
def pmc_vqa(tmp_path_factory) -> Path:
    """PMC-VQA v1 (`test.csv`, gold in `Answer_label`, images in `images/`)."""
    root = tmp_path_factory.mktemp("pmcvqa")
    head = [
        "index",
        "Figure_path",
        "Question",
        "Answer",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer_label",
    ]
    pmc_csv(
        root / "test.csv",
        head,
        [
            [0, "PMC1_Fig1.jpg", "What imaging was used?", "MRI", "A:CT ", " B:MRI", "C:PET", "D:X-ray", "B"],
            [
                1,
                "PMC2_Fig3.jpg",
                "Which organ is shown?",
                "Liver",
                "A:Liver",
                "B:Lung",
                "C:Heart",
                "D:Brain",
                "A",
            ],
        ],
    )
    for name in ("PMC1_Fig1.jpg", "PMC2_Fig3.jpg"):
        png(root / "images" / name)
    return root


@pytest.fixture(scope="session")
def pmc_vqa_v2(tmp_path_factory) -> Path:
    """PMC-VQA v2: `test_2.csv` with a BOM, the letter in `Answer`, a blank middle option, `figures/`."""
    root = tmp_path_factory.mktemp("pmcvqa2")
    head = [
        "index",
        "Figure_path",
        "Caption",
        "Question",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer",
        "split",
    ]
    pmc_csv(
        root / "test_2.csv",
        head,
        [
            [0, "PMC9_F1.jpg", "Axial CT.", "Which modality?", "A:CT", "B:MRI", "C:PET", "D:US", "A", "test"],
            [1, "PMC9_F2.jpg", "", "Where is the lesion?", "A:Left", "", "C:Right", "D:Both", "C", "test"],
        ],
        encoding="utf-8-sig",
    )
    for name in ("PMC9_F1.jpg", "PMC9_F2.jpg"):
        png(root / "figures" / name)
    return root


@pytest.fixture(scope="session")
def gemex_v1(tmp_path_factory) -> Path:
    """GEMeX v1: `test/*_question.jsonl` (no newline at the end, as published) + MIMIC-style `files/`."""
    root = tmp_path_factory.mktemp("gemex")
    (root / "test").mkdir()
    for qtype, rows in GEMEX_ROWS.items():
        lines = [
            json.dumps({**r, "image_path": GEMEX_IMAGE, "reason": "...", "ori_report": "..."}) for r in rows
        ]
        (root / "test" / f"{qtype}_question.jsonl").write_text("\n".join(lines))
    png(root / "files" / GEMEX_IMAGE, size=(64, 48))
    return root


@pytest.fixture(scope="session")
def gemex_thinkvg(tmp_path_factory) -> Path:
    """GEMeX-ThinkVG: `data/train-*.parquet` with the answer and boxes inside `response`."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("thinkvg")
    (root / "data").mkdir()
    rows = {
        "question": [
            "Is there a pneumothorax?",
            "Where is the granuloma?\nA: Left lung\nB: Right hemidiaphragm",
        ],
        "question_type": ["closed_ended_questions", "single_choice_questions"],
        "image_path": ["/" + GEMEX_IMAGE, GEMEX_IMAGE],
        "response": [
            "<think>The pleural lines (bilateral lung [8, 19, 168, 142]) are intact.</think>"
            "<answer>No.</answer>",
            "<think>A dense focus (right hemidiaphragm [43, 126, 129, 150]).</think><answer>B</answer>",
        ],
    }
    pq.write_table(pa.table(rows), root / "data" / "train-00000-of-00001.parquet")
    png(root / "files" / GEMEX_IMAGE, size=(64, 48))
    return root
