"""Answer metrics: normalisation, token-F1 (the docs' worked example), closed-ended kinds, choice letters."""

from __future__ import annotations

import pytest

from training.eval.evaluate import (
    Prediction,
    choice_letter,
    closed_correct,
    item_correct,
    markdown_table,
    normalize,
    score,
    token_f1,
)
from training.eval.vqa_datasets import BenchItem


def test_normalize_lowercases_strips_punctuation_and_collapses_space():
    assert normalize("  The LEFT   lower-lobe,\tnodule. ") == "the left lower-lobe nodule"
    assert normalize("Yes.") == "yes"


def test_token_f1_worked_example_from_the_docs():
    # P = {the, liver, is, enlarged}, G = {liver, enlarged, liver}: |P ∩ G| = 2 (liver once, enlarged)
    # precision 2/4, recall 2/3, F1 = 2·0.5·0.667 / (0.5 + 0.667) = 4/7
    assert token_f1("The liver is enlarged.", "liver enlarged liver") == pytest.approx(4 / 7)
    assert token_f1("cat", "dog") == 0.0
    assert token_f1("", "dog") == 0.0
    assert token_f1("Left kidney", "left  KIDNEY") == 1.0


def test_closed_kinds():
    assert closed_correct("Yes, there is a mass.", "yes", "yesno")
    assert not closed_correct("No.", "Yes.", "yesno")
    assert not closed_correct("maybe", "yes", "yesno")
    assert closed_correct("In the upper left.", "It lies in the left upper part.", "location_choice")
    assert closed_correct("centre", "middle", "location_choice")
    assert not closed_correct("left", "upper left", "location_choice")
    assert closed_correct("The Liver", "the liver.", "identify")
    assert not closed_correct("liver", "the liver", "identify")


@pytest.mark.parametrize(
    ("pred", "letter"),
    [
        ("B", "B"),
        ("b) MRI", "B"),
        ("(C)", "C"),
        ("Option D", "D"),
        ("A: CT", "A"),
        ("answer: c", "C"),
        ("mri", "B"),  # equals option B's text
        ("It is an MRI scan", "B"),  # contains exactly one option's text
        ("a ct scan", "A"),  # article "a", then contained text "ct scan"
        ("a scan", None),  # article, no option text
        ("E", None),  # not an option letter
        ("ct scan or mri", None),  # two options contained
    ],
)
def test_choice_letter(pred, letter):
    assert choice_letter(pred, ["CT scan", "MRI", "Ultrasound", "X-ray"]) == letter


def _item(kind: str, answer: str, **kw) -> BenchItem:
    return BenchItem("q", "question?", answer, kind, **kw)


def test_item_correct_and_score_breakdowns():
    choice = _item(
        "choice", "MRI", choices=("CT", "MRI"), label="B", question_type="choice", modality="figure"
    )
    preds = [
        Prediction(_item("yesno", "yes", question_type="PRES", modality="CHEST"), "Yes.", 1),
        Prediction(_item("exact", "ct", question_type="MODALITY", modality="HEAD"), "mri", 1),
        Prediction(choice, "b", 1),
        Prediction(_item("open", "left lung", question_type="POS", modality="CHEST"), "the left lung", 2),
    ]
    assert item_correct("B", choice) and item_correct("mri", choice) and not item_correct("A", choice)
    assert not item_correct("left lung", preds[3].item)  # open items are never "correct"
    r = score(preds)
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
