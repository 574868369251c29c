"""The evaluator: answer benchmark items with a bundle, score them, and keep every answer for audit.

`predict` runs the model (the same `VitalModel.answer` latent loop as serving); `score` aggregates the
per-item metrics of training.eval.metrics overall and per answer type / question type / modality;
`write_predictions` saves one JSON line per item beside the report, and `rescore` rebuilds the report
from that file alone (no model, no images). Definitions: docs/evaluation.md.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from training.data.manifest import Sample
from training.eval.items import CLOSED_TYPES, BenchItem, BenchmarkError, from_sample
from training.eval.metrics import choice_letter, closed_correct, item_correct, item_score, normalize, token_f1

__all__ = [
    "CLOSED_TYPES",
    "normalize",
    "token_f1",
    "closed_correct",
    "choice_letter",
    "item_correct",
    "Prediction",
    "predict",
    "score",
    "markdown_table",
    "write_predictions",
    "read_predictions",
    "rescore",
    "predictions_path",
]


@dataclass
class Prediction:
    """One answered item (latents h_0..h_k kept only when asked for)."""

    item: BenchItem
    answer: str
    k: int
    latents: torch.Tensor | None = None  # (k+1, H)
    sample: Sample | None = None
    grounding: list[dict] | None = None
    """Per-step grounding of items with reference boxes (GEMeX), when computed."""
    tokens: int = 0
    """Tokens the model generated (a written chain of thought included)."""
    written: str = ""
    """The chain the model wrote before its answer (explicit chain of thought), empty when none."""


def predict(
    model: Any,
    samples: Sequence[Sample | BenchItem],
    *,
    k: int | str = "auto",
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    keep_latents: bool = False,
    progress: bool = False,
) -> list[Prediction]:
    """Greedy answers; k = int, "auto" (question classifier) or "sample" (a five-tuple sample's depth)."""
    from vital_core.qtypes import auto_k

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

    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch")
    with torch.inference_mode():
        for start in starts:
            chunk = list(samples[start : start + batch_size])
            items = [from_sample(s) if isinstance(s, Sample) else s for s in chunk]
            images = [it.load_image() for it in items]
            ks = [k_of(s) for s in chunk]
            answers = model.answer(images, [it.prompt for it in items], k=ks, max_new_tokens=max_new_tokens)
            for s, it, a, kk in zip(chunk, items, answers, ks):
                lat = a.latents if keep_latents else None
                sample = s if isinstance(s, Sample) else None
                out.append(Prediction(it, a.text, kk, lat, sample, tokens=len(a.tokens), written=a.written))
    return out


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _agg(rows: list[tuple[Prediction, dict]]) -> dict:
    closed = [s for p, s in rows if p.item.kind != "open"]
    opened = [s for p, s in rows if p.item.kind == "open"]
    return {
        "n": len(rows),
        "closed_n": len(closed),
        "closed_accuracy": _mean([float(s["correct"]) for s in closed]),
        "open_n": len(opened),
        "open_token_f1": _mean([s["f1"] for s in opened]),
        "token_f1": _mean([s["f1"] for _, s in rows]),
    }


def score(preds: Sequence[Prediction]) -> dict:
    """Overall and per answer type / question type / modality: closed accuracy, open and all token-F1."""
    rows = [(p, item_score(p.answer, p.item)) for p in preds]
    groups: dict[str, dict[str, list]] = {
        "by_answer_type": defaultdict(list),
        "by_question_type": defaultdict(list),
        "by_modality": defaultdict(list),
    }
    for p, s in rows:
        groups["by_answer_type"][p.item.answer_type].append((p, s))
        groups["by_question_type"][p.item.question_type].append((p, s))
        groups["by_modality"][p.item.modality].append((p, s))
    report: dict = {"overall": _agg(rows)}
    for name, g in groups.items():
        report[name] = {key: _agg(v) for key, v in sorted(g.items())}
    from training.eval.gemex import grounding_summary

    grounding = grounding_summary([p.grounding for p in preds])
    if grounding is not None:
        report["grounding"] = grounding
    return report


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown_table(report: dict, title: str = "") -> str:
    """Per-question-type and per-modality tables (closed acc., open token-F1, all token-F1) as markdown."""
    lines = [f"### {title}", ""] if title else []
    for key, label in (("by_question_type", "question type"), ("by_modality", "modality")):
        lines += [
            f"| {label} | n | closed n | closed acc. | open n | open token-F1 | token-F1 (all) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in [*report.get(key, {}).items(), ("**overall**", report["overall"])]:
            lines.append(
                f"| {name} | {r['n']} | {r['closed_n']} | {_pct(r['closed_accuracy'])} | {r['open_n']} | "
                f"{_pct(r['open_token_f1'])} | {_pct(r['token_f1'])} |"
            )
        lines.append("")
    if "grounding" in report:
        g = report["grounding"]
        lines += [
            f"grounding against the reference boxes (n = {g['n']}):",
            "",
            "| step | n | pointing | heatmap-box IoU | region-box IoU | region Acc@0.5 |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| h{r['step']} | {r['n']} | {_pct(r['pointing'])} | {_pct(r['box_iou'])} | "
            f"{_pct(r.get('region_box_iou'))} | {_pct(r.get('region_acc50'))} |"
            for r in g["per_step"]
        ]
        lines.append("")
    return "\n".join(lines)


# ---- per-item predictions ------------------------------------------------------------------------------


def predictions_path(report: str | Path) -> Path:
    """Where the per-item predictions of a report go: FILE.json -> FILE.predictions.jsonl."""
    report = Path(report)
    return report.with_name(report.stem + ".predictions.jsonl")


def _row(p: Prediction) -> dict[str, Any]:
    it, s = p.item, item_score(p.answer, p.item)
    row = {
        "id": it.id,
        "question": it.question,
        "gold": it.answer,
        "prediction": p.answer,
        "k": p.k,
        "correct": s["correct"],
        "f1": round(s["f1"], 6),
        "type": it.answer_type,
        "kind": it.kind,
        "question_type": it.question_type,
        "modality": it.modality,
        "benchmark": it.benchmark,
        "generated_tokens": p.tokens,
    }
    if p.written:
        row["written"] = p.written
    if it.choices:
        row.update(choices=list(it.choices), label=it.label)
    if it.boxes:
        row.update(boxes=[list(b) for b in it.boxes], box_frame=list(it.box_frame) if it.box_frame else None)
    if p.grounding is not None:
        row["grounding"] = p.grounding
    return row


def write_predictions(preds: Sequence[Prediction], path: str | Path) -> Path:
    """One JSON object per item: id, question, gold, prediction, k, correct, f1, type, modality, ..."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in preds:
            f.write(json.dumps(_row(p), ensure_ascii=False) + "\n")
    return path


def read_predictions(path: str | Path) -> list[Prediction]:
    """Predictions back from a file written by `write_predictions` (items without images)."""
    from training.eval.files import need as need_fields
    from training.eval.files import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{path}: not found")
    preds = []
    for n, r in enumerate(read_jsonl(path), 1):
        need_fields(r, ("id", "question", "gold", "prediction", "k", "kind"), f"{path} line {n}")
        try:
            item = BenchItem(
                id=str(r["id"]),
                question=str(r["question"]),
                answer=str(r["gold"]),
                kind=str(r["kind"]),
                choices=tuple(r.get("choices") or ()),
                label=r.get("label"),
                question_type=str(r.get("question_type", "unknown")),
                modality=str(r.get("modality", "unknown")),
                benchmark=str(r.get("benchmark", "")),
                boxes=tuple(tuple(b) for b in r.get("boxes") or ()),
                box_frame=tuple(r["box_frame"]) if r.get("box_frame") else None,
            )
            preds.append(Prediction(item, str(r["prediction"]), int(r["k"]), grounding=r.get("grounding")))
        except (TypeError, ValueError) as exc:
            raise BenchmarkError(f"{path} line {n}: bad field ({exc})") from exc
    if not preds:
        raise BenchmarkError(f"{path}: no predictions")
    return preds


def rescore(path: str | Path) -> dict:
    """The report of a predictions file, recomputed with the current metrics (no model, no images)."""
    report = score(read_predictions(path))
    report["predictions"] = str(path)
    return report
