"""Quality gates for teacher outputs (paper §A.3), each a pure function returning its violations.

Order: schema (strict JSON) -> leakage (forbidden annotation terms) -> pathology (organ targets only)
-> patient_space (patient-space wording) -> steps (count in the type's range) -> answer (normalisation
and consistency with facts known by construction). `run_gates` runs them all and returns the
normalised output with every violation, so a retry prompt can name each one.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from vital_core.qtypes import REASONING_DEPTH

GATES: tuple[str, ...] = ("schema", "leakage", "pathology", "patient_space", "steps", "answer")
"""Gate names, in the order they run (the report counts failures per gate)."""

FORBIDDEN_TERMS: tuple[str, ...] = (
    "mask",
    "overlay",
    "overlaid",
    "annotation",
    "annotated",
    "highlight",
    "highlighted",
    "segmentation",
    "segmented",
    "ROI",
    "region of interest",
    "label",
    "labeled",
    "labelled",
    "ground truth",
    "contour",
    "outline",
    "outlined",
    "marked",
    "marking",
    "marker",
    "bounding box",
    "red region",
    "red area",
    "red overlay",
    "red shading",
    "yellow line",
    "yellow border",
    "yellow contour",
    "colored overlay",
    "colour overlay",
    "shaded region",
    "tinted",
    "metadata",
    "teacher",
    "hint",
    "pre-identified",
)
"""Annotation-leakage terms (case-insensitive, whole words, plural/-ed/-ing forms and `-`/space variants
included). Checked in the final answer and every reasoning step; any hit rejects the attempt."""

PATHOLOGY_TERMS: tuple[str, ...] = (
    "lesion",
    "mass",
    "tumor",
    "tumour",
    "cancer",
    "carcinoma",
    "malignant",
    "malignancy",
    "benign",
    "metastasis",
    "metastases",
    "metastatic",
    "nodule",
    "cyst",
    "calcification",
    "calcified",
    "inflammation",
    "inflammatory",
    "abscess",
    "necrosis",
    "necrotic",
    "hemorrhage",
    "haemorrhage",
    "infarct",
    "neoplasm",
    "neoplastic",
    "fibrosis",
    "cirrhosis",
    "steatosis",
    "edema",
    "oedema",
    "effusion",
    "thrombus",
    "abnormality",
)
"""Pathology-style terms forbidden for normal-anatomy (`organ`) targets, unless the student-visible
question itself uses the term (a "no" question about an absent tumor may say "no tumor")."""

PATIENT_SPACE_PATTERNS: tuple[str, ...] = (
    r"\bpatient(?:'s|’s|s'|s)?[\s-]+(?:left|right)\b",
    r"\b(?:left|right)[\s-]+of[\s-]+the[\s-]+patient\b",
    r"\b(?:anatomical|anatomic|anatomically|radiological|radiologic|radiologically)[\s-]+(?:left|right)\b",
    r"\b(?:his|her|their)[\s-]+(?:left|right)\b",
    r"\bradiological[\s-]+convention\b",
)
"""Patient-space spatial wording; the convention is image-space only (left/right/upper/lower of the image)."""

_SUFFIX = r"(?:s|es|ed|d|ing)?"


def _term_regex(terms: tuple[str, ...]) -> re.Pattern[str]:
    alts = sorted((r"[\s-]+".join(map(re.escape, t.lower().split())) for t in terms), key=len, reverse=True)
    return re.compile(rf"\b(?:{'|'.join(alts)}){_SUFFIX}\b", re.IGNORECASE)


_FORBIDDEN_RE = _term_regex(FORBIDDEN_TERMS)
_PATHOLOGY_RE = _term_regex(PATHOLOGY_TERMS)
_PATIENT_RE = re.compile("|".join(PATIENT_SPACE_PATTERNS), re.IGNORECASE)


@dataclass(frozen=True)
class Violation:
    """One failed check: the gate and a message the retry prompt shows the teacher."""

    gate: str
    detail: str


@dataclass(frozen=True)
class TeacherOutput:
    """The two fields the teacher must return."""

    final_answer: str
    reasoning_chain: tuple[str, ...]

    def texts(self) -> tuple[str, ...]:
        """The answer and every reasoning step (the text the term filters scan)."""
        return (self.final_answer, *self.reasoning_chain)


@dataclass(frozen=True)
class GateResult:
    """Outcome of all gates for one attempt: the normalised output (None if unparsable) and violations."""

    output: TeacherOutput | None
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        """True when every gate passed."""
        return self.output is not None and not self.violations


def parse_output(text: str) -> tuple[TeacherOutput | None, list[Violation]]:
    """Gate 1: strict JSON object with exactly `final_answer` (string) and `reasoning_chain` (strings).

    Markdown code fences are rejected, not stripped: the prompt forbids them and the retry names them.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        return None, [Violation("schema", "the reply is wrapped in a markdown code fence; return bare JSON")]
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        return None, [Violation("schema", f"the reply is not valid JSON ({exc.msg} at character {exc.pos})")]
    if not isinstance(data, dict):
        return None, [Violation("schema", f"the reply must be a JSON object, got {type(data).__name__}")]
    errors: list[Violation] = []
    extra = sorted(set(data) - {"final_answer", "reasoning_chain"})
    if extra:
        errors.append(
            Violation(
                "schema", f"unexpected key(s) {', '.join(extra)}; only final_answer and reasoning_chain"
            )
        )
    answer, chain = data.get("final_answer"), data.get("reasoning_chain")
    if not isinstance(answer, str) or not answer.strip():
        errors.append(Violation("schema", "final_answer must be a non-empty string"))
    if not isinstance(chain, list) or not chain or not all(isinstance(s, str) and s.strip() for s in chain):
        errors.append(Violation("schema", "reasoning_chain must be a non-empty list of non-empty strings"))
    if errors:
        return None, errors
    return TeacherOutput(" ".join(answer.split()), tuple(" ".join(s.split()) for s in chain)), []


def find_terms(pattern: re.Pattern[str], texts: tuple[str, ...]) -> list[str]:
    """Distinct matches of `pattern` in `texts`, lower-cased, in order of appearance."""
    found: list[str] = []
    for text in texts:
        for m in pattern.finditer(text):
            word = m.group(0).lower()
            if word not in found:
                found.append(word)
    return found


def check_leakage(output: TeacherOutput) -> list[Violation]:
    """Gate 2: no annotation-leakage term (`FORBIDDEN_TERMS`) anywhere in the answer or the steps."""
    hits = find_terms(_FORBIDDEN_RE, output.texts())
    if not hits:
        return []
    return [Violation("leakage", f"forbidden annotation wording: {', '.join(repr(h) for h in hits)}")]


def check_pathology(output: TeacherOutput, target_type: str, question: str = "") -> list[Violation]:
    """Gate 3 (organ targets only): no pathology term the student-visible question does not use itself."""
    if target_type != "organ":
        return []
    allowed = {w.rstrip("s") for w in find_terms(_PATHOLOGY_RE, (question,))}
    hits = [h for h in find_terms(_PATHOLOGY_RE, output.texts()) if h.rstrip("s") not in allowed]
    if not hits:
        return []
    return [
        Violation(
            "pathology",
            f"pathology wording for a normal anatomical structure: {', '.join(repr(h) for h in hits)}",
        )
    ]


def check_patient_space(output: TeacherOutput) -> list[Violation]:
    """Gate 4: no patient-space or anatomical left/right wording (image-space only)."""
    hits = find_terms(_PATIENT_RE, output.texts())
    if not hits:
        return []
    return [Violation("patient_space", f"patient-space wording: {', '.join(repr(h) for h in hits)}")]


def check_steps(output: TeacherOutput, question_type: str) -> list[Violation]:
    """Gate 5: the number of reasoning steps lies in the question type's range (paper Table 4)."""
    lo, hi = REASONING_DEPTH[question_type]
    n = len(output.reasoning_chain)
    if lo <= n <= hi:
        return []
    want = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
    return [Violation("steps", f"reasoning_chain has {n} step(s); a {question_type} question needs {want}")]


def run_gates(
    text: str,
    *,
    question_type: str,
    target: str,
    target_type: str,
    question: str = "",
    expected_answer: str = "",
) -> GateResult:
    """All gates on one raw teacher reply; the output is normalised (gate 6) when it parses."""
    output, violations = parse_output(text)
    if output is None:
        return GateResult(None, tuple(violations))
    violations += check_leakage(output)
    violations += check_pathology(output, target_type, question)
    violations += check_patient_space(output)
    violations += check_steps(output, question_type)
    output, answer_violations = normalize_output(output, question_type, target, target_type, expected_answer)
    return GateResult(output, tuple(violations + answer_violations))


_REGION_WORDS = {
    "left": "left",
    "right": "right",
    "center": "central",
    "centre": "central",
    "central": "central",
    "middle": "middle",
    "upper": "upper",
    "top": "upper",
    "lower": "lower",
    "bottom": "lower",
}
_BARE_REGION = re.compile(
    r"^(?:(?:in|on|at)\s+)?(?:the\s+)?((?:(?:upper|lower|top|bottom|middle|central|center|centre|left|right)[\s-]*){1,2})"
    r"(?:\s+(?:part|side|half|quadrant|region|portion|third|corner|area))?(?:\s+of\s+the\s+image)?\.?$",
    re.IGNORECASE,
)
_REGION_NOUN = re.compile(
    r"\b((?:upper|lower|top|bottom|middle|central|center|centre|left|right)(?:[\s-]+(?:upper|lower|left|right))?"
    r"[\s-]+(?:part|side|half|quadrant|region|portion|third|corner|area))\b(?!\s+of\s+the\s+(?:image|picture|scan|frame))",
    re.IGNORECASE,
)
_YES_NO = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def sentence(text: str) -> str:
    """Collapse spaces, capitalise the first letter, end with a period (trailing `,;:` dropped)."""
    text = " ".join(text.split()).rstrip(",;: ")
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def region_phrase(words: str) -> str:
    """`top left` -> `upper left`, `center` -> `central`: the canonical nine-way region wording."""
    parts = [_REGION_WORDS[w.lower()] for w in re.split(r"[\s-]+", words.strip()) if w]
    if len(parts) == 2 and parts[0] in ("middle", "central") and parts[1] in ("left", "right"):
        parts = parts[1:]
    if len(parts) == 2 and parts[1] in ("middle", "central"):
        parts = parts[:1]
    return " ".join(parts)


def normalize_output(
    output: TeacherOutput, question_type: str, target: str, target_type: str, expected_answer: str = ""
) -> tuple[TeacherOutput, list[Violation]]:
    """Gate 6: canonical answer form per type, plus checks against facts known by construction.

    yesno -> exactly `Yes.`/`No.` (and must match a known expected answer); identify answers under 4
    words -> `The {type} shown is the {answer}.` and must name the target; location(_choice) bare
    regions -> `The {target} is in the {region} part of the image.`, region nouns without
    `of the image` get it appended, and the answer must say where in the image; every answer and step
    ends with a period.
    """
    answer = " ".join(output.final_answer.split())
    steps = tuple(sentence(s) for s in output.reasoning_chain)
    errors: list[Violation] = []
    if question_type == "yesno":
        m = _YES_NO.match(answer)
        if m is None:
            errors.append(
                Violation("answer", "a yes/no question needs a final_answer starting with Yes or No")
            )
        else:
            answer = m.group(1).capitalize() + "."
            want = expected_answer.strip().lower().rstrip(".")
            if want in ("yes", "no") and answer.lower().rstrip(".") != want:
                errors.append(
                    Violation("answer", f"the correct answer to this question is {want.capitalize()}")
                )
    elif question_type == "identify":
        core = answer.rstrip(".").strip()
        if len(core.split()) < 4:
            core = re.sub(r"^(?:the|a|an)\s+", "", core, flags=re.IGNORECASE)
            core = core[:1].lower() + core[1:]
            answer = (
                f"The cells shown are {core}."
                if target_type == "cell"
                else f"The {target_type} shown is the {core}."
            )
        if not _mentions(answer, target):
            errors.append(Violation("answer", f"the final_answer must name the {target}"))
    elif question_type in ("location", "location_choice"):
        bare = _BARE_REGION.match(answer)
        if bare:
            answer = f"The {target} is in the {region_phrase(bare.group(1))} part of the image."
        else:
            answer = _REGION_NOUN.sub(lambda m: f"{m.group(1)} of the image", answer)
        if not re.search(r"\bof the (?:image|picture|scan|frame)\b", answer, re.IGNORECASE):
            errors.append(
                Violation(
                    "answer",
                    "the final_answer must say where in the image, e.g. 'in the upper left part of the image'",
                )
            )
    return TeacherOutput(sentence(answer), steps), errors


def _mentions(text: str, target: str) -> bool:
    norm = lambda s: " ".join(re.sub(r"[^a-z0-9]+", " ", s.lower()).split())  # noqa: E731
    return f" {norm(target)} " in f" {norm(text)} "
