"""The teacher prompts (paper §A.2): one system prompt of six components, a per-sample user prompt with
the question-type guidance block, and the strict-rules block appended on a retry."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from training.distill.gates import Violation
from vital_core.qtypes import REASONING_DEPTH

SYSTEM_PROMPT = """\
You are a teacher that writes supervision data for training a medical visual reasoning model. For each \
image and question you write a concise final answer and a short chain of reasoning steps.

Teacher-only information. You receive an image in which the target structure is shaded in semi-transparent \
red with a yellow boundary, and you are told the target's identity. Use both only internally, to find the \
target and to be correct. Write everything as if you were a student model that sees only the original, \
unannotated image and was told nothing beforehand.

Leakage prevention. Never mention or imply hidden guidance, special markings, colours added to the image, \
annotations, masks, overlays, highlighted or shaded areas, outlines or contours, segmentation, ROI or \
regions of interest, labels, ground truth, metadata or any extra visual cue. Never suggest that the \
target's identity was given to you. Describe boundaries as margins or borders of the structure itself.

Image-grounded reasoning. Base the answer and every step on visible image evidence: location, shape, \
boundary, extent, size, density or signal intensity, colour or staining where the modality has it, \
texture, and relationships to nearby structures. For lesion or finding targets you may name the target \
itself, but do not add a diagnosis, malignancy or benignity, severity, prognosis, treatment or other \
clinical claim unless the image directly shows it. For normal anatomical structures, do not describe \
any pathology.

Spatial convention. Use image-space wording only: the left, right, center, upper and lower parts of the \
image. Never use patient-space or radiological-convention wording such as patient-left, patient's right, \
anatomical left or anatomical right.

Output format. Return strict JSON with exactly two fields: "final_answer" (a string) and \
"reasoning_chain" (a list of strings, one sentence per reasoning step). No markdown, no code fences, no \
other fields and no text before or after the JSON."""
"""The system prompt: role, teacher-only information, leakage prevention, image-grounded reasoning,
spatial convention, output format (paper §A.2, components 1-6)."""


@dataclass(frozen=True)
class Guidance:
    """Per-question-type guidance: what the type asks for and an in-context JSON example."""

    instruction: str
    example: dict[str, object]


GUIDANCE: dict[str, Guidance] = {
    "yesno": Guidance(
        "Answer with Yes or No, then give one step of direct visual evidence for that answer.",
        {
            "final_answer": "Yes.",
            "reasoning_chain": [
                "A smooth, homogeneous soft-tissue structure with the typical shape of the "
                "spleen lies in the right part of the image."
            ],
        },
    ),
    "identify": Guidance(
        "Name the structure in a complete sentence, then give one step justifying it from its visible "
        "appearance and anatomical context.",
        {
            "final_answer": "The organ shown is the liver.",
            "reasoning_chain": [
                "The large, homogeneous organ filling the left part of the image with a "
                "smooth border has the typical appearance of the liver."
            ],
        },
    ),
    "location_choice": Guidance(
        "Choose among the offered image regions and answer in a complete sentence, never a bare word such "
        "as 'left', 'right' or 'center'; give one step.",
        {
            "final_answer": "The kidney is in the right part of the image.",
            "reasoning_chain": [
                "The oval kidney lies beside the spine in the right third of the image width."
            ],
        },
    ),
    "location": Guidance(
        "Give the image-space position in a complete sentence. Step 1 identifies the target region; step 2 "
        "describes its position in the image relative to surrounding structures.",
        {
            "final_answer": "The pancreas is in the central part of the image.",
            "reasoning_chain": [
                "An elongated, lobulated soft-tissue structure with the typical appearance of the pancreas "
                "is identified.",
                "It lies in the central part of the image, just above the large vessels and below the "
                "stomach.",
            ],
        },
    ),
    "describe": Guidance(
        "Describe the target's visible characteristics in one or two sentences. The steps cover its "
        "appearance, shape, boundary, extent and other visible characteristics.",
        {
            "final_answer": "The polyp is a small, rounded, smooth-surfaced protrusion with a pinkish colour.",
            "reasoning_chain": [
                "A small rounded protrusion rises from the mucosal surface in the lower left part of the image.",
                "Its surface is smooth with a well-defined border against the surrounding mucosa.",
                "Its colour is slightly paler pink than the adjacent mucosa.",
            ],
        },
    ),
    "reasoning": Guidance(
        "Give a fuller analysis: the steps cover the target's location, morphology, visual contrast and "
        "relationship to nearby structures, and the answer summarises what they show.",
        {
            "final_answer": "The liver tumor is a well-defined hypodense area in the upper left part of the "
            "liver, distinct from the surrounding parenchyma.",
            "reasoning_chain": [
                "A rounded area is found within the liver in the upper left part of the image.",
                "It is darker than the surrounding liver parenchyma, indicating lower attenuation.",
                "Its border is well defined and its internal texture is mildly heterogeneous.",
                "It displaces no adjacent vessels and stays within the margins of the liver.",
            ],
        },
    ),
}
"""Guidance blocks by question type (paper §A.2, question-type-aware prompting)."""


def steps_text(question_type: str) -> str:
    """`exactly 1` / `2 to 3`: the step range of a question type in words."""
    lo, hi = REASONING_DEPTH[question_type]
    return f"exactly {lo}" if lo == hi else f"{lo} to {hi}"


def user_prompt(
    *,
    question: str,
    question_type: str,
    target: str,
    target_type: str,
    modality: str,
    asked_target: str = "",
    expected_answer: str = "",
) -> str:
    """The per-sample user prompt: hidden target facts, the student question and the type guidance."""
    g = GUIDANCE[question_type]
    lines = [
        "Teacher-only information (use internally, never reveal):",
        f"- Target shown by the red shading: {target} (target type: {target_type}).",
        f"- Imaging modality: {modality}.",
    ]
    if asked_target and asked_target != target:
        lines.append(
            f"- The question asks about {asked_target}, which is not present in this image; the shaded "
            f"structure is the {target}. Reason from what is visible."
        )
    if expected_answer:
        lines.append(
            f"- The correct final answer is: {expected_answer} Your final_answer must agree with it."
        )
    lines += [
        "",
        f"Student-visible question: {question}",
        "",
        f"Question type: {question_type}",
        f"Reasoning steps required: {steps_text(question_type)}.",
        f"Guidance: {g.instruction}",
        "Example of the required JSON output (style only; describe this image, not the example):",
        json.dumps(g.example, ensure_ascii=False),
    ]
    return "\n".join(lines)


def retry_block(violations: Sequence[Violation], question_type: str) -> str:
    """The strict-rules block appended after failed attempts: lists every violation so far."""
    listed = "\n".join(f"- [{v.gate}] {v.detail}" for v in violations)
    return (
        "STRICT RULES - your previous reply was rejected and discarded. Regenerate from scratch.\n"
        f"Violations:\n{listed}\n"
        "Return only a bare JSON object with exactly the keys final_answer and reasoning_chain, "
        f"with {steps_text(question_type)} reasoning step(s). Do not mention any marking, shading, colour "
        "cue, outline, mask, annotation or label, and use image-space directions only."
    )


def build_messages(system: str, user: str, image_data_url: str, retry: str = "") -> list[dict[str, object]]:
    """OpenAI chat-completions messages: system text, then the user's image part and text part(s)."""
    content: list[dict[str, object]] = [
        {"type": "image_url", "image_url": {"url": image_data_url}},
        {"type": "text", "text": user},
    ]
    if retry:
        content.append({"type": "text", "text": retry})
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]
