"""Answer metrics: tokens and token-F1 (the docs' worked examples), yes/no polarity, choice letters."""

from __future__ import annotations

import pytest

from training.eval.items import BenchItem
from training.eval.metrics import (
    choice_letter,
    choice_letters,
    closed_correct,
    item_correct,
    normalize,
    polarity,
    token_f1,
    tokens,
)


def test_tokens_strip_punctuation_at_token_edges_only():
    assert normalize("  The LEFT   lower-lobe,\tnodule. ") == "the left lower-lobe nodule"
    assert normalize("Yes.") == "yes"
    assert tokens("1.2 cm") == ["1.2", "cm"]  # the decimal point is inside the token
    assert tokens("XR - Plain Film") == ["xr", "plain", "film"]  # a lone dash is no token
    assert tokens("(C)") == ["c"] and tokens("T2-weighted, MRI.") == ["t2-weighted", "mri"]


def test_token_f1_worked_examples_from_the_docs():
    # P = {the, liver, is, enlarged}, G = {liver, enlarged, liver}: |P ∩ G| = 2 (liver once, enlarged)
    # precision 2/4, recall 2/3, F1 = 2·0.5·0.667 / (0.5 + 0.667) = 4/7
    assert token_f1("The liver is enlarged.", "liver enlarged liver") == pytest.approx(4 / 7)
    assert token_f1("XR - Plain Film", "xr plain film") == 1.0  # was 0.857 with inner-punctuation splits
    assert token_f1("1.2 cm", "1.2 cm.") == 1.0
    assert token_f1("about 1.2 cm", "1 2 cm") == pytest.approx(2 * (1 / 3) * (1 / 3) / (2 / 3))
    assert token_f1("cat", "dog") == 0.0 and token_f1("", "dog") == 0.0
    assert token_f1("Left kidney", "left  KIDNEY") == 1.0


@pytest.mark.parametrize(
    ("text", "pol"),
    [
        ("Yes.", "yes"),
        ("No, there is no mass.", "no"),
        ("Yes, there is no fracture.", "yes"),
        ("Yes and no.", None),
        ("yes or no", None),
        ("The answer is yes", "yes"),
        ("maybe", None),
        ("There is no mass, yes", "no"),
    ],
)
def test_polarity(text, pol):
    assert polarity(text) == pol


def test_closed_kinds():
    assert closed_correct("Yes, there is a mass.", "yes", "yesno")
    assert not closed_correct("No.", "Yes.", "yesno")
    assert not closed_correct("Yes and no.", "yes", "yesno")
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
        ("The answer is B.", "B"),  # a letter named anywhere in an answer phrase
        ("I think the answer is (d).", "D"),
        ("I would pick C", "C"),  # one capital option letter standing alone
        ("mri", "B"),  # equals option B's text
        ("It is an MRI scan", "B"),  # contains exactly one option's text
        ("a ct scan", "A"),  # article "a", then contained text "ct scan"
        ("the answer is a scan", None),  # "a" is an article here, not option A
        ("A mass is seen", None),  # sentence-initial article
        ("a scan", None),
        ("E", None),  # not an option letter
        ("ct scan or mri", None),  # two options contained
    ],
)
def test_choice_letter(pred, letter):
    assert choice_letter(pred, ["CT scan", "MRI", "Ultrasound", "X-ray"]) == letter


def test_choice_letter_keeps_letters_of_blank_options():
    choices = ("Left", "", "Right", "Both")
    assert choice_letter("C", choices) == "C" and choice_letter("right", choices) == "C"
    assert choice_letter("B", choices) is None  # B is blank: not an option


def test_multi_choice_letters():
    opts = ["No consolidation", "No effusion", "Low lung volume", "No edema"]
    assert choice_letters("A, B and D", opts) == {"A", "B", "D"}
    assert choice_letters("a, b, d", opts) == {"A", "B", "D"}
    assert choice_letters("The answers are A/D.", opts) == {"A", "D"}
    assert choice_letters("low lung volume and no edema", opts) == {"C", "D"}
    item = BenchItem("m", "q", "", "multi_choice", choices=tuple(opts), label="A,B,D")
    assert (
        item_correct("A, B, D", item) and not item_correct("A, B", item) and not item_correct("A B C D", item)
    )


def test_item_correct_by_kind():
    choice = BenchItem("q", "question?", "MRI", "choice", choices=("CT", "MRI"), label="B")
    assert item_correct("B", choice) and item_correct("mri", choice) and not item_correct("A", choice)
    assert item_correct("The answer is B.", choice)
    assert not item_correct("left lung", BenchItem("o", "q", "left lung", "open"))  # open: never "correct"
