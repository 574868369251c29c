"""Answer-quality metrics: closed-ended accuracy and open-ended token-F1 (paper §B.4), with breakdowns.

Both answers are first normalised: lower-case, every character that is not a letter, digit, `_`,
`-` or whitespace becomes a space, whitespace runs collapse to one space (`normalize`).
Closed-ended accuracy, by the item's kind (training.eval.vqa_datasets.KINDS):
  yesno           — the first "yes"/"no" token of each answer must agree;
  choice          — the prediction is mapped to an option letter (`choice_letter`) and must equal the gold
                    letter;
  location_choice — the sets of image-region words (left, right, center, upper, lower, ...) must agree;
  exact           — the normalised strings must be equal.
Token-F1 (open-ended): P and G are the multisets of normalised whitespace tokens; precision = |P ∩ G| / |P|,
recall = |P ∩ G| / |G|, F1 = 2PR / (P + R), and 0 when either is empty or nothing overlaps.
docs/evaluation.md has a worked example.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from training.dataset import Sample
from training.eval.vqa_datasets import CLOSED_TYPES, LETTERS, BenchItem, from_sample
from vital_core.model import VitalModel
from vital_core.qtypes import auto_k

__all__ = ["CLOSED_TYPES", "normalize", "token_f1", "closed_correct", "choice_letter", "item_correct",
           "Prediction", "predict", "score", "markdown_table"]  # fmt: skip

REGION_WORDS = {"left", "right", "center", "centre", "central", "middle", "upper", "lower", "top", "bottom"}
_PUNCT = re.compile(r"[^\w\s-]")
_LETTER_LEAD = re.compile(r"^\s*(?:option\s+|answer\s*:?\s*)?\(?([a-h])\s*(?:[:.)]|$|\s)", re.IGNORECASE)


def normalize(text: str) -> str:
    """Lower-case, strip punctuation (keeping hyphens), collapse whitespace."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def token_f1(pred: str, gold: str) -> float:
    """Bag-of-tokens F1 between normalised prediction and reference."""
    p, g = Counter(normalize(pred).split()), Counter(normalize(gold).split())
    common = sum((p & g).values())
    if not p or not g or not common:
        return 0.0
    precision, recall = common / sum(p.values()), common / sum(g.values())
    return 2 * precision * recall / (precision + recall)


def choice_letter(pred: str, choices: Sequence[str]) -> str | None:
    """The option a prediction names: equal to an option's text, else a leading letter, else one contained text.

    1. normalised prediction equals the normalised text of exactly one option → that option;
    2. the raw prediction starts with a letter of the options, alone or followed by `:`, `.`, `)` or a space
       ("B", "b) CT", "(C)", "Option D", "A: MRI") → that letter; a lone article "a" followed by more words
       counts only when it is followed by `:`/`.`/`)`;
    3. exactly one option's normalised text appears in the normalised prediction as whole words → that option.
    Otherwise None (scored wrong).
    """
    letters = LETTERS[: len(choices)]
    p = normalize(pred)
    texts = [normalize(c) for c in choices]
    exact = [i for i, t in enumerate(texts) if t and t == p]
    if len(exact) == 1:
        return letters[exact[0]]
    m = _LETTER_LEAD.match(pred)
    if m and m.group(1).upper() in letters:
        rest = pred[m.end() :].strip()
        article = m.group(1).lower() == "a" and rest and not re.match(r"^\s*\(?a\s*[:.)]", pred, re.I)
        if not article:
            return m.group(1).upper()
    contained = [i for i, t in enumerate(texts) if t and f" {t} " in f" {p} "]
    return letters[contained[0]] if len(contained) == 1 else None


def closed_correct(pred: str, gold: str, question_type: str) -> bool:
    """Closed-ended match for a five-tuple question type (yesno, location_choice, identify → exact)."""
    kind = {"yesno": "yesno", "location_choice": "location_choice"}.get(question_type, "exact")
    return _closed(pred, gold, kind)


def _closed(pred: str, gold: str, kind: str) -> bool:
    p, g = normalize(pred).split(), normalize(gold).split()
    if kind == "yesno":
        return _polarity(g) is not None and _polarity(p) == _polarity(g)
    if kind == "location_choice":
        return bool(_regions(g)) and _regions(p) == _regions(g)
    return " ".join(p) == " ".join(g)


def item_correct(pred: str, item: BenchItem) -> bool:
    """Closed-ended correctness of a prediction for one benchmark item (False for open items)."""
    if item.kind == "open":
        return False
    if item.kind == "choice":
        return item.label is not None and choice_letter(pred, item.choices) == item.label
    return _closed(pred, item.answer, item.kind)


def _polarity(tokens: list[str]) -> str | None:
    return next((t for t in tokens if t in ("yes", "no")), None)


def _regions(tokens: list[str]) -> set[str]:
    return {"center" if t in ("centre", "middle", "central") else t for t in tokens if t in REGION_WORDS}


@dataclass
class Prediction:
    """One answered item (latents h_0..h_k kept only when asked for)."""

    item: BenchItem
    answer: str
    k: int
    latents: torch.Tensor | None = None  # (k+1, H)
    sample: Sample | None = None


def predict(
    model: VitalModel,
    samples: Sequence[Sample | BenchItem],
    *,
    k: int | str = "auto",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    keep_latents: bool = False,
) -> list[Prediction]:
    """Greedy answers; k = int, "auto" (question classifier) or "sample" (a five-tuple sample's depth)."""
    model.eval()
    out: list[Prediction] = []

    def k_of(s: Sample | BenchItem) -> int:
        if k == "auto":
            return auto_k(s.question, model.config.latent.k_max)
        if k == "sample":
            if not isinstance(s, Sample):
                raise ValueError('k="sample" needs five-tuple samples (their reasoning depth)')
            return len(s.reasoning)
        return int(k)

    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = list(samples[start : start + batch_size])
            items = [from_sample(s) if isinstance(s, Sample) else s for s in chunk]
            images = [it.load_image() for it in items]
            ks = [k_of(s) for s in chunk]
            answers = model.answer(images, [it.prompt for it in items], k=ks, max_new_tokens=max_new_tokens)
            for s, it, a, kk in zip(chunk, items, answers, ks):
                lat = a.latents if keep_latents else None
                out.append(Prediction(it, a.text, kk, lat, s if isinstance(s, Sample) else None))
    return out


def _agg(items: list[Prediction]) -> dict:
    closed = [p for p in items if p.item.kind != "open"]
    opened = [p for p in items if p.item.kind == "open"]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "n": len(items),
        "closed_n": len(closed),
        "closed_accuracy": mean([float(item_correct(p.answer, p.item)) for p in closed]),
        "open_n": len(opened),
        "open_token_f1": mean([token_f1(p.answer, p.item.answer) for p in opened]),
        "token_f1": mean([token_f1(p.answer, p.item.answer) for p in items]),
    }


def score(preds: Sequence[Prediction]) -> dict:
    """Overall and per answer type / question type / modality: closed accuracy, open and all token-F1."""
    groups: dict[str, dict[str, list[Prediction]]] = {
        "by_answer_type": defaultdict(list),
        "by_question_type": defaultdict(list),
        "by_modality": defaultdict(list),
    }
    for p in preds:
        groups["by_answer_type"][p.item.answer_type].append(p)
        groups["by_question_type"][p.item.question_type].append(p)
        groups["by_modality"][p.item.modality].append(p)
    report: dict = {"overall": _agg(list(preds))}
    for name, g in groups.items():
        report[name] = {key: _agg(v) for key, v in sorted(g.items())}
    return report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(report: dict, title: str = "") -> str:
    """Per-question-type and per-modality tables (closed acc., open token-F1, all token-F1) as markdown."""
    lines = [f"### {title}", ""] if title else []
    for key, label in (("by_question_type", "question type"), ("by_modality", "modality")):
        lines += [f"| {label} | n | closed n | closed acc. | open n | open token-F1 | token-F1 (all) |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in [*report.get(key, {}).items(), ("**overall**", report["overall"])]:
            lines.append(
                f"| {name} | {r['n']} | {r['closed_n']} | {_pct(r['closed_accuracy'])} | {r['open_n']} | "
                f"{_pct(r['open_token_f1'])} | {_pct(r['token_f1'])} |"
            )
        lines.append("")
    return "\n".join(lines)
