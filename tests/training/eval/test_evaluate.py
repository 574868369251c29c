"""Scoring breakdowns, the per-item predictions file and re-scoring it without the model."""

from __future__ import annotations

import json

import pytest

from training.eval.evaluate import (
    Prediction,
    markdown_table,
    predictions_path,
    read_predictions,
    rescore,
    score,
    write_predictions,
)
from training.eval.items import BenchItem, BenchmarkError


def _item(kind: str, answer: str, **kw) -> BenchItem:
    return BenchItem(kw.pop("id", "q"), "question?", answer, kind, **kw)


def _preds() -> list[Prediction]:
    choice = _item(
        "choice", "MRI", choices=("CT", "", "MRI"), label="C", question_type="choice", modality="figure"
    )
    return [
        Prediction(_item("yesno", "yes", id="1", question_type="PRES", modality="CHEST"), "Yes.", 1),
        Prediction(_item("exact", "ct", id="2", question_type="MODALITY", modality="HEAD"), "mri", 1),
        Prediction(choice, "The answer is C.", 1),
        Prediction(
            _item("open", "left lung", id="4", question_type="POS", modality="CHEST"), "the left lung", 2
        ),
    ]


def test_score_breakdowns():
    r = score(_preds())
    assert r["overall"]["closed_n"] == 3 and r["overall"]["closed_accuracy"] == pytest.approx(2 / 3)
    assert r["overall"]["open_n"] == 1 and r["overall"]["open_token_f1"] == pytest.approx(0.8)
    assert r["by_answer_type"]["open"]["n"] == 1 and r["by_answer_type"]["closed"]["n"] == 3
    assert (
        r["by_modality"]["CHEST"]["closed_accuracy"] == 1.0
        and r["by_modality"]["HEAD"]["closed_accuracy"] == 0
    )
    assert r["by_question_type"]["POS"]["closed_accuracy"] is None
    md = markdown_table(r, "t")
    assert "| PRES | 1 | 1 | 100.0 |" in md and "| **overall** | 4 | 3 | 66.7 | 1 | 80.0 |" in md


def test_predictions_file_round_trips_and_rescores_to_the_same_report(tmp_path):
    preds = _preds()
    preds[0].grounding = [{"step": 1, "pointing": 1.0, "box_iou": 0.5}]
    preds[0].item = _item(
        "yesno",
        "yes",
        id="1",
        question_type="PRES",
        modality="CHEST",
        boxes=((1.0, 2.0, 30.0, 40.0),),
        box_frame=(224, 224),
    )
    path = write_predictions(preds, predictions_path(tmp_path / "rep.json"))
    assert path.name == "rep.predictions.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(rows[0]) >= {"id", "question", "gold", "prediction", "k", "correct", "f1", "type", "modality"}
    assert [r["correct"] for r in rows] == [True, False, True, None] and rows[3]["f1"] == pytest.approx(0.8)
    assert rows[2]["choices"] == ["CT", "", "MRI"] and rows[2]["label"] == "C"
    back = read_predictions(path)
    assert back[0].item.boxes == ((1.0, 2.0, 30.0, 40.0),) and back[0].item.box_frame == (224, 224)
    again = rescore(path)
    original = score(preds)
    assert {k: again[k] for k in original} == original and again["grounding"]["per_step"][0]["box_iou"] == 0.5


def test_rescore_uses_the_current_metrics(tmp_path):
    """An edited prediction (as after a metrics fix) changes the re-scored report."""
    path = write_predictions(_preds(), tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["prediction"] = "CT."
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert rescore(path)["overall"]["closed_accuracy"] == 1.0


def test_bad_predictions_files(tmp_path):
    with pytest.raises(BenchmarkError, match="not found"):
        rescore(tmp_path / "none.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(BenchmarkError, match="missing field"):
        rescore(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text("not json\n")
    with pytest.raises(BenchmarkError, match="line 1: not valid JSON"):
        rescore(tmp_path / "bad2.jsonl")
