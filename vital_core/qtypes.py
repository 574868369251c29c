"""Question types, their reasoning depth (paper Table 4), and the rule-based classifier (§A.2).

One definition shared by `k="auto"` in the server and by the data pipelines.
"""

from __future__ import annotations

import re

from vital_core.config import QUESTION_TYPES

# (min, max) reasoning steps per type, paper Table 4 / §A.2.
REASONING_DEPTH: dict[str, tuple[int, int]] = {
    "yesno": (1, 1),
    "identify": (1, 1),
    "location_choice": (1, 1),
    "location": (2, 2),
    "describe": (2, 3),
    "reasoning": (3, 4),
}
assert tuple(REASONING_DEPTH) == QUESTION_TYPES

_REGION = r"(left|right|center|centre|middle|upper|lower|top|bottom)"
# Checked in order; the first match wins. Patterns are matched on the lower-cased question.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "reasoning",
        re.compile(
            r"\b(analy[sz]e|reason|why|explain|infer|interpret|what (can|could|might) (be )?(inferred|concluded|suggested)"
            r"|what does .* (suggest|indicate)|implication|differential|compare|relationship)\b"
        ),
    ),
    ("describe", re.compile(r"\b(describe|description|characteri[sz]e|appearance|what does .* look like)\b")),
    (
        "location_choice",
        re.compile(
            rf"\b(is|are|does|do|which side|which part|which region)\b.*\b{_REGION}\b.*\bor\b.*\b{_REGION}\b"
        ),
    ),
    ("location", re.compile(r"\b(where|locat(e|ed|ion)|position|which (side|part|region|quadrant))\b")),
    (
        "yesno",
        re.compile(r"^(is|are|does|do|did|can|could|was|were|has|have|should|will)\b"),
    ),
    ("identify", re.compile(r"\b(what|which|identify|name|recogni[sz]e)\b")),
)


def classify_question(question: str) -> str:
    """Rule-based question type for a question that comes without one; `describe` when nothing matches."""
    q = " ".join(question.lower().split())
    for qtype, pattern in _RULES:
        if pattern.search(q):
            return qtype
    return "describe"


def depth_for(question_type: str, prefer: str = "max") -> int:
    """Reasoning depth K for a question type (`prefer` = "min" or "max" of the type's range)."""
    if question_type not in REASONING_DEPTH:
        raise ValueError(f"unknown question type {question_type!r}; one of {', '.join(QUESTION_TYPES)}")
    lo, hi = REASONING_DEPTH[question_type]
    return hi if prefer == "max" else lo


K_WORDS = ("auto", "sample")
"""What a K argument may be besides an integer: "auto" (from the question) or "sample" (the sample's depth)."""


def parse_k(value: int | str, words: tuple[str, ...] = K_WORDS) -> int | str:
    """A K argument (CLI, recipe, ablation spec) -> an int >= 0 or one of `words`; ValueError otherwise."""
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    if text in words:
        return text
    raise ValueError(f"k must be an integer >= 0 or one of {', '.join(map(repr, words))}, not {value!r}")


def auto_k(question: str, k_max: int) -> int:
    """K for `k="auto"`: the classified type's maximum depth, capped at k_max."""
    return min(depth_for(classify_question(question)), k_max)
