"""Question types: the rule-based classifier and reasoning depth (paper Table 4)."""

from __future__ import annotations

import pytest

from vital_core.qtypes import REASONING_DEPTH, auto_k, classify_question, depth_for


@pytest.mark.parametrize(
    "question,qtype",
    [
        ("Is the liver visible in this CT image?", "yesno"),
        ("Are there any nodules?", "yesno"),
        ("What organ is shown in the image?", "identify"),
        ("Which structure is highlighted?", "identify"),
        ("Is the lesion in the left, right, or center of the image?", "location_choice"),
        ("Is the tumor on the left or the right side?", "location_choice"),
        ("Where is the kidney located?", "location"),
        ("Which part of the image contains the spleen?", "location"),
        ("Describe the appearance of the polyp.", "describe"),
        ("Analyze the visual findings of the nodule.", "reasoning"),
        ("What can be inferred about the mass?", "reasoning"),
    ],
)
def test_classifier(question, qtype):
    assert classify_question(question) == qtype


def test_depths_match_the_paper():
    assert REASONING_DEPTH == {
        "yesno": (1, 1),
        "identify": (1, 1),
        "location_choice": (1, 1),
        "location": (2, 2),
        "describe": (2, 3),
        "reasoning": (3, 4),
    }
    assert depth_for("describe", "min") == 2 and depth_for("reasoning") == 4
    assert auto_k("Analyze the findings.", k_max=2) == 2
    with pytest.raises(ValueError, match="unknown question type"):
        depth_for("essay")


def test_parse_k_is_the_one_k_argument_parser():
    from vital_core.qtypes import parse_k

    assert parse_k("3") == 3 and parse_k(2) == 2 and parse_k(" 0 ") == 0
    assert parse_k("auto") == "auto" and parse_k("sample") == "sample"
    assert parse_k("auto", words=("auto",)) == "auto"
    for bad in ("-1", "four", "", "2.5"):
        with pytest.raises(ValueError, match="k must be"):
            parse_k(bad)
    with pytest.raises(ValueError):
        parse_k("sample", words=("auto",))
