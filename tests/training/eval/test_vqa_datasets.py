"""Benchmark readers on tiny files in each published layout: detection, split aliases, encodings, checks."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from eval_layouts import hf_parquet, pmc_csv, png

from training.eval.vqa_datasets import BenchmarkError, detect_format, load_benchmark


def test_vqa_rad_osf_json(vqa_rad):
    test = load_benchmark("vqa-rad", vqa_rad)
    assert [it.id for it in test] == ["1", "2", "4"]
    assert [it.kind for it in test] == ["yesno", "open", "open"] and test[2].answer == "2"
    assert test[0].modality == "CHEST" and test[0].question_type == "PRES"
    assert test[0].load_image().size == (48, 40)
    train = load_benchmark("vqa-rad", vqa_rad / "VQA_RAD Dataset Public.json", "train")
    assert [(it.id, it.kind, it.answer_type) for it in train] == [("3", "exact", "closed")]


def test_vqa_rad_hf_parquet_folder_and_file(vqa_rad_hf):
    assert detect_format("vqa-rad", vqa_rad_hf) == "hf-parquet"
    items = load_benchmark("vqa-rad", vqa_rad_hf)
    # no answer type in this layout: yes/no answers are closed, everything else ("left") open
    assert [(it.kind, it.answer) for it in items] == [("yesno", "yes"), ("yesno", "No"), ("open", "left")]
    assert items[0].load_image().size == (40, 40) and items[0].id == "test-0"
    one = next((vqa_rad_hf / "data").glob("train-*.parquet"))
    assert [it.question for it in load_benchmark("vqa-rad", one)] == ["Is it normal?"]


def test_slake_english_only_and_val_alias(slake):
    items = load_benchmark("slake", slake)
    assert [it.id for it in items] == ["10", "12"]
    assert [it.kind for it in items] == ["yesno", "open"] and items[0].modality == "CT"
    assert items[0].image == slake / "imgs" / "xmlab1" / "source.jpg" and items[0].load_image().mode == "RGB"
    assert (
        len(load_benchmark("slake", slake, "val")) == len(load_benchmark("slake", slake, "validation")) == 1
    )


def test_pathvqa_original_pickles_resolve_images_at_the_root(pathvqa):
    assert detect_format("pathvqa", pathvqa) == "vqa-pkl"
    vqa = load_benchmark("pathvqa", pathvqa)
    assert [(it.id, it.question, it.answer, it.kind) for it in vqa] == [
        ("100", "Is this tissue necrotic?", "no", "yesno"),
        ("101", "What is present?", "granuloma", "open"),
    ]
    assert vqa[0].image == pathvqa / "images" / "test" / "test_0001.jpg"
    qa = load_benchmark("pathvqa", pathvqa / "qas" / "test" / "test_qa.pkl")
    assert [it.image for it in qa] == [it.image for it in vqa]  # not under qas/
    forced = load_benchmark("pathvqa", pathvqa, fmt="qa-pkl")
    assert [it.answer for it in forced] == ["no", "granuloma"]


def test_pathvqa_hf_parquet_validation_is_val(tmp_path):
    hf_parquet(
        tmp_path / "data" / "validation-00000-of-00001.parquet", ["Is this benign?", "What?"], ["yes", "x"]
    )
    items = load_benchmark("pathvqa", tmp_path, "val")
    assert [it.kind for it in items] == ["yesno", "open"] and items[1].image_bytes
    with pytest.raises(BenchmarkError, match=r"no test-\*\.parquet files \(splits here: validation\)"):
        load_benchmark("pathvqa", tmp_path, "test")


def test_pmc_vqa_v1_and_prompt(pmc_vqa):
    items = load_benchmark("pmc-vqa", pmc_vqa)
    assert (
        items[0].choices == ("CT", "MRI", "PET", "X-ray")
        and items[0].label == "B"
        and items[0].answer == "MRI"
    )
    assert "A: CT\nB: MRI\nC: PET\nD: X-ray" in items[0].prompt and items[0].kind == "choice"
    assert items[1].image == pmc_vqa / "images" / "PMC2_Fig3.jpg"


def test_pmc_vqa_v2_bom_letter_answer_blank_middle_option(pmc_vqa_v2):
    items = load_benchmark("pmc-vqa", pmc_vqa_v2)  # the folder: test_2.csv is found, images in figures/
    assert [it.label for it in items] == ["A", "C"] and items[1].answer == "Right"
    assert items[1].choices == ("Left", "", "Right", "Both")  # C stays C although B is blank
    assert "A: Left\nC: Right\nD: Both" in items[1].prompt and "B:" not in items[1].prompt
    assert items[0].image == pmc_vqa_v2 / "figures" / "PMC9_F1.jpg"


def test_pmc_vqa_latin1_csv(tmp_path):
    head = ["Figure_path", "Question", "Choice A", "Choice B", "Answer_label"]
    pmc_csv(
        tmp_path / "test.csv", head, [["f.jpg", "Lésion bénigne?", "A:Oui", "B:Non", "A"]], encoding="latin-1"
    )
    png(tmp_path / "images" / "f.jpg")
    assert load_benchmark("pmc-vqa", tmp_path / "test.csv")[0].question == "Lésion bénigne?"


def test_every_bad_input_is_a_benchmark_error_before_any_model(tmp_path, vqa_rad, pmc_vqa):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(BenchmarkError, match="image_name"):
        load_benchmark("vqa-rad", bad / "x.json", image_dir=bad)
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("medqa", tmp_path)
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark("slake", tmp_path / "nope")
    with pytest.raises(BenchmarkError, match="pass --format"):
        load_benchmark("pathvqa", bad)
    with pytest.raises(BenchmarkError, match="unknown --format 'csv'"):
        load_benchmark("pathvqa", bad, fmt="csv")
    (bad / "junk.parquet").write_bytes(b"\xff\xfe not parquet")  # was a UnicodeDecodeError traceback
    with pytest.raises(BenchmarkError, match="not a readable parquet"):
        load_benchmark("vqa-rad", bad / "junk.parquet")
    (bad / "test_vqa.pkl").write_bytes(b"\x80\x04junk")
    with pytest.raises(BenchmarkError, match="cannot read the pickle"):
        load_benchmark("pathvqa", bad / "test_vqa.pkl")
    (bad / "test_qa.pkl").write_bytes(pickle.dumps([{"image": "i", "question": "q"}]))
    with pytest.raises(BenchmarkError, match="missing field"):
        load_benchmark("pathvqa", bad / "test_qa.pkl")
    # a missing image is reported with the count and the first path, not a traceback after model load
    copy = tmp_path / "pmc"
    shutil.copytree(pmc_vqa, copy)
    (copy / "images" / "PMC2_Fig3.jpg").unlink()
    with pytest.raises(BenchmarkError, match=r"1 of 2 images missing, first .*PMC2_Fig3.jpg"):
        load_benchmark("pmc-vqa", copy)
    pmc_csv(bad / "test.csv", ["Figure_path", "Question", "Choice A", "Choice B"], [["f", "q", "A:x", "B:y"]])
    with pytest.raises(BenchmarkError, match="Answer_label \\(v1\\) or Answer \\(v2\\)"):
        load_benchmark("pmc-vqa", bad / "test.csv")


def test_five_tuple_manifest_as_benchmark(phantom_dir: Path):
    items = load_benchmark("five-tuple", phantom_dir / "manifest.jsonl")
    assert items and {it.benchmark for it in items} == {"five-tuple"}
    assert {it.kind for it in items} <= {"yesno", "location_choice", "exact", "open"}
