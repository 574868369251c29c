"""Benchmark loaders on tiny fixture files in each published layout, and `vital eval` on them."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from training.eval.vqa_datasets import (
    BenchmarkError,
    load_benchmark,
    load_pathvqa,
    load_pmc_vqa,
    load_slake,
    load_vqa_rad,
)


def _png(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), (seed * 40 % 255, 90, 160)).save(path)


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (seed * 50 % 255, 20, 80)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def vqa_rad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vqarad")
    rows = [
        {"qid": 1, "image_name": "synpic1.jpg", "image_organ": "CHEST", "question": "Is there a mass?",
         "answer": "Yes", "answer_type": "CLOSED", "question_type": "PRES", "phrase_type": "test_freeform"},
        {"qid": 2, "image_name": "synpic1.jpg", "image_organ": "CHEST", "question": "Where is the mass?",
         "answer": "left lung", "answer_type": "OPEN", "question_type": "POS", "phrase_type": "test_para"},
        {"qid": 3, "image_name": "synpic2.jpg", "image_organ": "HEAD", "question": "Is this a CT or MRI?",
         "answer": "CT", "answer_type": "CLOSED ", "question_type": "MODALITY", "phrase_type": "freeform"},
        {"qid": 4, "image_name": "synpic2.jpg", "image_organ": "HEAD", "question": "How many lesions?",
         "answer": 2, "answer_type": "OPEN", "question_type": "COUNT", "phrase_type": "test_freeform"},
    ]  # fmt: skip
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(rows))
    for i, name in enumerate(("synpic1.jpg", "synpic2.jpg")):
        _png(root / "VQA_RAD Image Folder" / name, i)
    return root


@pytest.fixture(scope="module")
def slake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slake")
    rows = [
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Does the picture contain liver?",
         "answer": "Yes", "q_lang": "en", "answer_type": "CLOSED", "modality": "CT", "content_type": "Organ",
         "qid": 10},
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "图片中包含肝脏吗?", "answer": "是",
         "q_lang": "zh", "answer_type": "CLOSED", "modality": "CT", "content_type": "Organ", "qid": 11},
        {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ is abnormal?",
         "answer": "Liver", "q_lang": "en", "answer_type": "OPEN", "modality": "CT", "content_type": "Abnormality",
         "qid": 12},
    ]  # fmt: skip
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False))
    (root / "validate.json").write_text(json.dumps(rows[:1]))
    _png(root / "imgs" / "xmlab1" / "source.jpg")
    return root


@pytest.fixture(scope="module")
def pathvqa_pickle(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pathvqa")
    rows = [{"image": "test_0001", "question": "Is this tissue necrotic?", "answer": "no"},
            {"image": "test_0002", "question": "What is present?", "answer": "granuloma"}]  # fmt: skip
    (root / "qas").mkdir()
    with open(root / "qas" / "test_vqa.pkl", "wb") as f:
        pickle.dump(rows, f)
    for r in rows:
        _png(root / "images" / "test" / f"{r['image']}.jpg")
    return root


@pytest.fixture(scope="module")
def pmc_vqa(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pmcvqa")
    with open(root / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C",
                    "Choice D", "Answer_label"])  # fmt: skip
        w.writerow(
            [0, "PMC1_Fig1.jpg", "What imaging was used?", "MRI", "A:CT ", " B:MRI", "C:PET", "D:X-ray", "B"]
        )
        w.writerow([1, "PMC2_Fig3.jpg", "Which organ is shown?", "Liver", "A:Liver", "B:Lung", "C:Heart", "D:Brain",
                    "A"])  # fmt: skip
    for name in ("PMC1_Fig1.jpg", "PMC2_Fig3.jpg"):
        _png(root / "images" / name)
    return root


def test_vqa_rad(vqa_rad):
    test = load_vqa_rad(vqa_rad)
    assert [it.id for it in test] == ["1", "2", "4"]
    assert [it.kind for it in test] == ["yesno", "open", "open"] and test[2].answer == "2"
    assert (
        test[0].modality == "CHEST"
        and test[0].question_type == "PRES"
        and test[0].load_image().size == (48, 40)
    )
    train = load_vqa_rad(vqa_rad / "VQA_RAD Dataset Public.json", split="train")
    assert [(it.id, it.kind, it.answer_type) for it in train] == [("3", "exact", "closed")]


def test_slake_english_only(slake):
    items = load_slake(slake)
    assert [it.id for it in items] == ["10", "12"]
    assert [it.kind for it in items] == ["yesno", "open"] and items[0].modality == "CT"
    assert items[0].image == slake / "imgs" / "xmlab1" / "source.jpg" and items[0].load_image().mode == "RGB"
    assert len(load_slake(slake, split="val")) == 1


def test_pathvqa_pickle_and_parquet(pathvqa_pickle, tmp_path):
    items = load_pathvqa(pathvqa_pickle)
    assert [it.kind for it in items] == ["yesno", "open"] and items[1].load_image().size == (48, 40)
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({
        "image": [{"bytes": _jpeg_bytes(i), "path": None} for i in range(3)],
        "question": ["Is this benign?", "What is shown?", "Is there fibrosis?"],
        "answer": ["yes", "adenoma", "no"],
    })  # fmt: skip
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    items = load_pathvqa(tmp_path)
    assert [it.kind for it in items] == ["yesno", "open", "yesno"]
    assert items[0].image_bytes and items[0].load_image().size == (40, 40)


def test_pmc_vqa_choices_and_prompt(pmc_vqa):
    items = load_pmc_vqa(pmc_vqa)
    assert (
        items[0].choices == ("CT", "MRI", "PET", "X-ray")
        and items[0].label == "B"
        and items[0].answer == "MRI"
    )
    assert "A: CT\nB: MRI\nC: PET\nD: X-ray" in items[0].prompt and items[0].kind == "choice"
    assert items[1].image == pmc_vqa / "images" / "PMC2_Fig3.jpg"


def test_errors_are_clear(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(BenchmarkError, match="image_name"):
        load_vqa_rad(tmp_path / "bad.json", image_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("medqa", tmp_path)
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark("slake", tmp_path / "nope")


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory) -> Path:
    from vital_core.bundle import save_bundle
    from vital_core.model import build_model
    from vital_core.presets import tiny

    path = tmp_path_factory.mktemp("bundle") / "b"
    save_bundle(build_model(tiny(), lora=True, scaffold=True), path)
    return path


def test_vital_eval_on_benchmarks_and_five_tuple(
    random_bundle, vqa_rad, pmc_vqa, phantom_dir, tmp_path, capsys
):
    from vital_core.cli import main

    out = tmp_path / "rad.json"
    args = ["eval", "--bundle", str(random_bundle), "--max-new-tokens", "3"]
    assert main([*args, "--benchmark", "vqa-rad", "--data", str(vqa_rad), "--out", str(out), "--k", "1"]) == 0
    rep = json.loads(out.read_text())
    assert (
        rep["overall"]["n"] == 3
        and rep["overall"]["closed_n"] == 1
        and set(rep["by_modality"]) == {"CHEST", "HEAD"}
    )
    assert out.with_suffix(".md").read_text().startswith("### b on vqa-rad test")
    assert main([*args, "--benchmark", "pmc-vqa", "--data", str(pmc_vqa / "test.csv")]) == 0
    assert "| choice | 2 | 2 |" in capsys.readouterr().out
    man = str(phantom_dir / "manifest.jsonl")
    assert (
        main([*args, "--manifest", man, "--limit", "4", "--k", "sample", "--out", str(tmp_path / "ft.json")])
        == 0
    )
    assert json.loads((tmp_path / "ft.json").read_text())["overall"]["n"] == 4
    assert main([*args, "--benchmark", "slake", "--data", str(tmp_path / "missing")]) == 2
    assert main([*args, "--benchmark", "slake"]) == 2
