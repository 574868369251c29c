"""Answer metrics: closed-ended accuracy by kind and open-ended token-F1 (paper §B.4).

Tokens (`tokens`): lower-case, split on whitespace, strip punctuation from each token's two ends only
(so "1.2" and "lower-lobe" stay whole, "Yes." becomes "yes", a lone "-" disappears); `normalize` joins them.
Token-F1: P and G are the bags (multisets) of tokens; precision = |P ∩ G| / |P|, recall = |P ∩ G| / |G|,
F1 = 2PR / (P + R), 0 when either is empty or nothing overlaps.
Closed-ended accuracy, by the item's kind (training.eval.items.KINDS):
  yesno           — the first clause that says yes or no decides; a clause with both ("Yes and no.") is wrong;
  choice          — the prediction is mapped to one option letter (`choice_letter`) and must be the gold one;
  multi_choice    — the set of letters named (`choice_letters`) must equal the gold set;
  location_choice — the sets of image-region words (left, right, center, upper, lower, ...) must agree;
  exact           — the normalised strings must be equal.
docs/evaluation.md has worked examples.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from training.eval.items import LETTERS, BenchItem

__all__ = [
    "tokens",
    "normalize",
    "token_f1",
    "choice_letter",
    "choice_letters",
    "closed_correct",
    "item_correct",
    "item_score",
    "polarity",
]

REGION_WORDS = {"left", "right", "center", "centre", "central", "middle", "upper", "lower", "top", "bottom"}
_EDGE = string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014\u2026"
_CLAUSE = re.compile(r"[.,;:!?\n]+")
_LETTER_LEAD = re.compile(r"^\s*(?:option\s+|answer\s*:?\s*)?\(?([a-h])\s*(?:[:.)]|$|\s)", re.IGNORECASE)
_LETTER_PHRASE = re.compile(
    r"\b(?i:answer|option|choice)(?i:\s+is|\s+would\s+be|\s*:)?\s*(?i:option\s+)?\(?"
    r"([A-H]|[a-h](?=\)?\s*(?:$|[.,;:!?])))\)?(?![\w-])"
)
_LONE_LETTER = re.compile(r"(?<![\w-])\(?([A-H])\)?(?![\w-])")


def tokens(text: str) -> list[str]:
    """Lower-cased whitespace tokens with punctuation stripped at each token's edges (empty ones dropped)."""
    return [t for t in (w.strip(_EDGE) for w in str(text).lower().split()) if t]


def normalize(text: str) -> str:
    """The tokens joined by single spaces."""
    return " ".join(tokens(text))


def token_f1(pred: str, gold: str) -> float:
    """Bag-of-tokens F1 between prediction and reference."""
    p, g = Counter(tokens(pred)), Counter(tokens(gold))
    common = sum((p & g).values())
    if not p or not g or not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def polarity(text: str) -> str | None:
    """yes / no from the first clause that contains either word; None when none does or it has both."""
    for clause in _CLAUSE.split(str(text).lower()):
        words = set(tokens(clause)) & {"yes", "no"}
        if words:
            return next(iter(words)) if len(words) == 1 else None
    return None


def _options(choices: Sequence[str]) -> list[tuple[str, str]]:
    """(letter, normalised text) of every non-blank option; with no options, letters A-D."""
    if not choices:
        return [(x, "") for x in LETTERS[:4]]
    return [(LETTERS[i], normalize(c)) for i, c in enumerate(choices) if c.strip()]


def choice_letter(pred: str, choices: Sequence[str]) -> str | None:
    """The one option a prediction names, or None. Tried in order:

    1. the normalised prediction equals one option's text;
    2. it starts with an option letter alone or followed by `:` `.` `)` or a space ("B", "b) CT", "(C)",
       "Option D", "A: MRI"; a leading article "a" followed by more words does not count);
    3. a phrase "answer is X", "answer: X", "option X", "choice X" anywhere ("The answer is B.");
    4. exactly one option's text appears in it as whole words;
    5. exactly one distinct capital option letter stands alone in it ("I would pick C").
    """
    opts = _options(choices)
    letters = [x for x, _ in opts]
    p = normalize(pred)
    exact = [x for x, t in opts if t and t == p]
    if len(exact) == 1:
        return exact[0]
    m = _LETTER_LEAD.match(pred)
    if m and m.group(1).upper() in letters:
        rest = pred[m.end() :].strip()
        article = m.group(1).lower() == "a" and rest and not re.match(r"^\s*\(?a\s*[:.)]", pred, re.I)
        if not article:
            return m.group(1).upper()
    named = {x.upper() for x in _LETTER_PHRASE.findall(pred)} & set(letters)
    if len(named) == 1:
        return named.pop()
    contained = [x for x, t in opts if t and f" {t} " in f" {p} "]
    if len(contained) == 1:
        return contained[0]
    lone = {x for x in _LONE_LETTER.findall(_drop_article(pred))} & set(letters)
    return lone.pop() if len(lone) == 1 else None


def _drop_article(text: str) -> str:
    """Remove capital "A" used as an article ("A mass is seen") so it is not read as option A."""
    return re.sub(r"(?:^|(?<=[.!?]\s))\s*A\s+(?=[a-z])", " ", text)


def choice_letters(pred: str, choices: Sequence[str]) -> set[str]:
    """Every option a multi-choice prediction names: capital letters standing alone ("A, B and D", "A/C"),
    else lower-case ones in a pure letter list ("a, b, d"), else the options whose text it contains."""
    letters = {x for x, _ in _options(choices)}
    found = set(_LONE_LETTER.findall(_drop_article(pred))) & letters
    if found:
        return found
    toks = re.split(r"[\s,;/&]+|\band\b", pred.strip().lower())
    toks = [t.strip("().:") for t in toks if t.strip("().:")]
    if toks and all(len(t) == 1 and t.upper() in letters for t in toks):
        return {t.upper() for t in toks}
    p = f" {normalize(pred)} "
    return {x for x, t in _options(choices) if t and f" {t} " in p}


def closed_correct(pred: str, gold: str, question_type: str) -> bool:
    """Closed-ended match for a five-tuple question type (yesno, location_choice, identify → exact)."""
    kind = {"yesno": "yesno", "location_choice": "location_choice"}.get(question_type, "exact")
    return _closed(pred, gold, kind)


def _closed(pred: str, gold: str, kind: str) -> bool:
    if kind == "yesno":
        g = polarity(gold)
        return g is not None and polarity(pred) == g
    if kind == "location_choice":
        return bool(_regions(tokens(gold))) and _regions(tokens(pred)) == _regions(tokens(gold))
    return normalize(pred) == normalize(gold)


def item_correct(pred: str, item: BenchItem) -> bool:
    """Closed-ended correctness of a prediction for one benchmark item (False for open items)."""
    if item.kind == "open":
        return False
    if item.kind == "choice":
        return item.label is not None and choice_letter(pred, item.choices) == item.label
    if item.kind == "multi_choice":
        return bool(item.labels) and choice_letters(pred, item.choices) == set(item.labels)
    return _closed(pred, item.answer, item.kind)


def item_score(pred: str, item: BenchItem) -> dict[str, float | bool | None]:
    """What one prediction scores: `correct` (closed items, else None) and `f1` (token-F1 vs the gold text)."""
    return {
        "correct": None if item.kind == "open" else item_correct(pred, item),
        "f1": token_f1(pred, item.answer),
    }


def _regions(toks: list[str]) -> set[str]:
    return {"center" if t in ("centre", "middle", "central") else t for t in toks if t in REGION_WORDS}
