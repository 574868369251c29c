"""Answer-quality metrics on a five-tuple split: closed-ended accuracy and open-ended token-F1.

Closed-ended accuracy (yes/no and choice questions): both answers are lower-cased, punctuation
removed, whitespace collapsed; yes/no compares the polarity word (first "yes"/"no" token); a
location choice compares the set of image-space region words (left, right, center, upper, lower);
anything else must match exactly after normalisation.
Token-F1 (every question): the bags of normalised whitespace tokens of prediction P and reference G;
precision = |P ∩ G| / |P|, recall = |P ∩ G| / |G| (multiset intersection), F1 = 2PR / (P + R), 0 when
either bag is empty.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from training.dataset import Sample
from vital_core.model import VitalModel
from vital_core.qtypes import auto_k

CLOSED_TYPES = ("yesno", "location_choice", "identify")
REGION_WORDS = {"left", "right", "center", "centre", "central", "middle", "upper", "lower", "top", "bottom"}
_PUNCT = re.compile(r"[^\w\s-]")


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


def closed_correct(pred: str, gold: str, question_type: str) -> bool:
    """Closed-ended match for yes/no, location choice and identification answers."""
    p, g = normalize(pred).split(), normalize(gold).split()
    if question_type == "yesno":
        return _polarity(g) is not None and _polarity(p) == _polarity(g)
    if question_type == "location_choice":
        return bool(_regions(g)) and _regions(p) == _regions(g)
    return " ".join(p) == " ".join(g)


def _polarity(tokens: list[str]) -> str | None:
    return next((t for t in tokens if t in ("yes", "no")), None)


def _regions(tokens: list[str]) -> set[str]:
    return {"center" if t in ("centre", "middle", "central") else t for t in tokens if t in REGION_WORDS}


@dataclass
class Prediction:
    sample: Sample
    answer: str
    k: int


def predict(
    model: VitalModel,
    samples: Sequence[Sample],
    *,
    k: int | str = "auto",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
) -> list[Prediction]:
    """Greedy answers for every sample; k = int, "auto" (question classifier) or "sample" (its depth)."""
    model.eval()
    out: list[Prediction] = []

    def k_of(s: Sample) -> int:
        if k == "auto":
            return auto_k(s.question, model.config.latent.k_max)
        if k == "sample":
            return len(s.reasoning)
        return int(k)

    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = list(samples[start : start + batch_size])
            images = []
            for s in chunk:
                with Image.open(s.image) as im:
                    images.append(im.convert("RGB"))
            ks = [k_of(s) for s in chunk]
            answers = model.answer(images, [s.question for s in chunk], k=ks, max_new_tokens=max_new_tokens)
            out += [Prediction(s, a.text, kk) for s, a, kk in zip(chunk, answers, ks)]
    return out


def score(preds: Sequence[Prediction]) -> dict:
    """Overall, per-question-type and per-modality closed-ended accuracy and token-F1."""

    def agg(items: list[Prediction]) -> dict:
        closed = [p for p in items if p.sample.question_type in CLOSED_TYPES]
        acc = sum(closed_correct(p.answer, p.sample.answer, p.sample.question_type) for p in closed)
        return {
            "n": len(items),
            "closed_n": len(closed),
            "closed_accuracy": acc / len(closed) if closed else None,
            "token_f1": sum(token_f1(p.answer, p.sample.answer) for p in items) / len(items)
            if items
            else None,
        }

    by_type, by_mod = defaultdict(list), defaultdict(list)
    for p in preds:
        by_type[p.sample.question_type].append(p)
        by_mod[p.sample.modality].append(p)
    return {
        "overall": agg(list(preds)),
        "by_question_type": {t: agg(v) for t, v in sorted(by_type.items())},
        "by_modality": {m: agg(v) for m, v in sorted(by_mod.items())},
    }


def markdown_table(report: dict, title: str = "") -> str:
    """The per-question-type table as markdown."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| question type | n | closed acc. | token-F1 |", "|---|---|---|---|"]
    rows = [*report["by_question_type"].items(), ("**overall**", report["overall"])]
    for name, r in rows:
        acc = f"{100 * r['closed_accuracy']:.1f}" if r["closed_accuracy"] is not None else "–"
        lines.append(f"| {name} | {r['n']} | {acc} | {100 * r['token_f1']:.1f} |")
    return "\n".join(lines) + "\n"
