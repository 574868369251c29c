"""Quality gates (paper §A.3): each gate on its own, then all of them through `run_gates`."""

from __future__ import annotations

import json

import pytest

from training.distill.gates import (
    FORBIDDEN_TERMS,
    GATES,
    PATHOLOGY_TERMS,
    TeacherOutput,
    check_leakage,
    check_pathology,
    check_patient_space,
    check_steps,
    normalize_output,
    parse_output,
    run_gates,
    sentence,
)
from vital_core.qtypes import REASONING_DEPTH


def out(answer: str = "The liver is in the left part of the image.", *steps: str) -> TeacherOutput:
    return TeacherOutput(answer, steps or ("A large homogeneous organ fills the left part of the image.",))


def reply(answer: str, steps: list[str], **extra) -> str:
    return json.dumps({"final_answer": answer, "reasoning_chain": steps, **extra})


# -- gate 1: schema -------------------------------------------------------------------------------


def test_schema_accepts_strict_json_and_collapses_spaces():
    parsed, errors = parse_output('  {"final_answer": "Yes.", "reasoning_chain": ["A  round organ."]}\n')
    assert errors == [] and parsed == TeacherOutput("Yes.", ("A round organ.",))


@pytest.mark.parametrize(
    "text,needle",
    [
        ('```json\n{"final_answer": "Yes.", "reasoning_chain": ["x"]}\n```', "code fence"),
        ('Sure! {"final_answer": "Yes.", "reasoning_chain": ["x"]}', "not valid JSON"),
        ('{"final_answer": "Yes.", "reasoning_chain": ["x"]} Hope this helps', "not valid JSON"),
        ('["Yes.", ["x"]]', "JSON object"),
        (
            '{"final_answer": "Yes.", "reasoning_chain": ["x"], "confidence": 0.9}',
            "unexpected key(s) confidence",
        ),
        ('{"final_answer": "", "reasoning_chain": ["x"]}', "final_answer must be"),
        ('{"final_answer": "Yes.", "reasoning_chain": "x"}', "reasoning_chain must be"),
        ('{"final_answer": "Yes.", "reasoning_chain": ["x", " "]}', "reasoning_chain must be"),
        ('{"final_answer": "Yes."}', "reasoning_chain must be"),
    ],
)
def test_schema_rejects(text, needle):
    parsed, errors = parse_output(text)
    assert parsed is None and errors and all(e.gate == "schema" for e in errors)
    assert any(needle in e.detail for e in errors)


# -- gate 2: leakage ------------------------------------------------------------------------------


def test_forbidden_list_is_in_one_place_and_about_thirty_terms():
    assert 30 <= len(FORBIDDEN_TERMS) <= 40
    for term in (
        "mask",
        "overlay",
        "annotation",
        "highlighted",
        "segmentation",
        "ROI",
        "label",
        "ground truth",
    ):
        assert term in FORBIDDEN_TERMS


@pytest.mark.parametrize(
    "text",
    [
        "The highlighted region is the liver.",
        "The MASKED area is bright.",
        "Masks show the organ.",
        "The red region lies in the left part of the image.",
        "A yellow line surrounds it.",
        "Based on the ground-truth, this is the liver.",
        "The roi is homogeneous.",
        "The structure is outlined at its border.",
        "The labelled organ is the spleen.",
        "Per the segmentation, it is large.",
        "The annotations indicate a tumor.",
        "The contoured area is dark.",
    ],
)
def test_leakage_catches_terms_in_answer_and_steps(text):
    assert check_leakage(out(text))[0].gate == "leakage"
    assert check_leakage(out("Yes.", "A smooth organ.", text))


@pytest.mark.parametrize(
    "text",
    [
        "The liver has a smooth margin and a homogeneous texture.",
        "It lies in the upper left part of the image, near the landmark of the spine.",
        "Its markedly bright signal stands out.",  # word boundary: 'markedly' is not 'marked'
        "The unlabeled image shows a round organ.",
        "A shadowing artefact lies below it.",
    ],
)
def test_leakage_respects_word_boundaries(text):
    assert check_leakage(out(text)) == []


# -- gate 3: pathology (organ only) --------------------------------------------------------------


def test_pathology_flags_organ_targets_only():
    text = out("The liver shows a small lesion and a calcified mass.")
    (v,) = check_pathology(text, "organ")
    assert (
        v.gate == "pathology"
        and "'lesion'" in v.detail
        and "'mass'" in v.detail
        and "'calcified'" in v.detail
    )
    for ttype in ("tumor", "lesion", "cell", "vessel"):
        assert check_pathology(text, ttype) == []
    assert check_pathology(out("The liver is large and homogeneous."), "organ") == []
    assert "calcification" in PATHOLOGY_TERMS and "inflammation" in PATHOLOGY_TERMS


def test_pathology_allows_terms_the_question_uses():
    answer = out("No.", "No tumor is seen; the smooth organ in the left part of the image is the liver.")
    assert check_pathology(answer, "organ", question="Is there a liver tumor in this CT scan?") == []
    assert check_pathology(answer, "organ", question="Is the spleen visible?")


# -- gate 4: patient-space wording ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "The liver lies on the patient's right.",
        "It is in the patient-left abdomen.",
        "It is in the patient’s left upper quadrant.",
        "It sits anatomically left of the spine.",
        "It lies to the anatomical right.",
        "Following radiological convention, it is on her right.",
        "It is to the right of the patient.",
    ],
)
def test_patient_space_is_flagged(text):
    assert check_patient_space(out(text))[0].gate == "patient_space"


def test_image_space_and_anatomical_names_pass():
    ok = out("The left atrium is in the upper right part of the image, left of the right ventricle.")
    assert check_patient_space(ok) == []


# -- gate 5: step count ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", list(REASONING_DEPTH))
def test_step_count_per_type(qtype):
    lo, hi = REASONING_DEPTH[qtype]
    for n in range(1, 6):
        result = check_steps(out("x", *[f"Step {i}." for i in range(n)]), qtype)
        assert (result == []) == (lo <= n <= hi)
    (v,) = check_steps(out("x", *["s."] * (hi + 1)), qtype)
    assert v.gate == "steps" and qtype in v.detail


# -- gate 6: answer normalisation ------------------------------------------------------------------


def test_sentence():
    assert sentence("  the liver  is large;") == "The liver is large."
    assert sentence("Is it?") == "Is it?"


@pytest.mark.parametrize(
    "qtype,answer,target,ttype,expected,want",
    [
        ("yesno", "yes, the liver is visible", "liver", "organ", "", "Yes."),
        ("yesno", "No", "liver", "organ", "no", "No."),
        ("identify", "pancreas", "pancreas", "organ", "", "The organ shown is the pancreas."),
        ("identify", "The pancreas", "pancreas", "organ", "", "The organ shown is the pancreas."),
        (
            "identify",
            "neoplastic cells",
            "neoplastic cells",
            "cell",
            "",
            "The cells shown are neoplastic cells.",
        ),
        (
            "identify",
            "This is the liver, filling most of the image",
            "liver",
            "organ",
            "",
            "This is the liver, filling most of the image.",
        ),
        ("location_choice", "left", "kidney", "organ", "", "The kidney is in the left part of the image."),
        (
            "location_choice",
            "Center.",
            "polyp",
            "lesion",
            "",
            "The polyp is in the central part of the image.",
        ),
        (
            "location",
            "upper left",
            "spleen",
            "organ",
            "",
            "The spleen is in the upper left part of the image.",
        ),
        (
            "location",
            "in the top right quadrant",
            "spleen",
            "organ",
            "",
            "The spleen is in the upper right part of the image.",
        ),
        (
            "location",
            "The spleen lies in the upper right part, behind the stomach",
            "spleen",
            "organ",
            "",
            "The spleen lies in the upper right part of the image, behind the stomach.",
        ),
        (
            "describe",
            "the polyp is small and round",
            "polyp",
            "lesion",
            "",
            "The polyp is small and round.",
        ),
    ],
)
def test_normalisation(qtype, answer, target, ttype, expected, want):
    normalized, errors = normalize_output(out(answer, "a step"), qtype, target, ttype, expected)
    assert errors == [] and normalized.final_answer == want
    assert normalized.reasoning_chain == ("A step.",)


@pytest.mark.parametrize(
    "qtype,answer,target,expected,needle",
    [
        ("yesno", "Maybe.", "liver", "", "starting with Yes or No"),
        ("yesno", "Yes.", "liver", "no", "correct answer to this question is No"),
        ("identify", "spleen", "liver", "", "must name the liver"),
        ("location", "It is near the stomach.", "spleen", "", "where in the image"),
    ],
)
def test_answer_gate_failures(qtype, answer, target, expected, needle):
    _, errors = normalize_output(out(answer, "a step"), qtype, target, "organ", expected)
    assert errors and errors[0].gate == "answer" and needle in errors[0].detail


# -- all gates --------------------------------------------------------------------------------------


def test_run_gates_reports_every_violation_and_normalises():
    good = run_gates(
        reply("upper left", ["A smooth organ is identified.", "It lies in the upper left part of the image"]),
        question_type="location",
        target="spleen",
        target_type="organ",
    )
    assert good.ok and good.output.final_answer == "The spleen is in the upper left part of the image."
    bad = run_gates(
        reply("The highlighted lesion is on the patient's right.", ["One.", "Two.", "Three."]),
        question_type="location",
        target="liver",
        target_type="organ",
    )
    assert not bad.ok and {v.gate for v in bad.violations} == {
        "leakage",
        "pathology",
        "patient_space",
        "steps",
        "answer",
    }
    unparsable = run_gates("nope", question_type="yesno", target="liver", target_type="organ")
    assert unparsable.output is None and [v.gate for v in unparsable.violations] == ["schema"]
    assert GATES == ("schema", "leakage", "pathology", "patient_space", "steps", "answer")
