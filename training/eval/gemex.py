"""GEMeX (chest X-ray VQA with visual grounding): readers for v1 and the ThinkVG/RMCoT release, box grounding.

Layouts (sources and fields in docs/evaluation.md):
- v1 (github.com/Awenbocc/GEMeX-Project `data-v1-subset/test/`, HF `BoKelvin/GEMeX-VQA`):
  `{closed_ended,open_ended,single_choice,multi_choice}_question.jsonl`, one object per line with `question`,
  `answer` ("No." / "B" / ["A", "B", "D"]), `choices` (["A: ...", ...]), `visual_locations` ([[x1, y1, x2,
  y2], ...] on the 224 x 224 resized image), `image_path` (relative to MIMIC-CXR-JPG `files/`).
- ThinkVG / RMCoT (HF `BoKelvin/GEMeX-ThinkVG`, `data/train-*.parquet`): `question`, `question_type`
  (`open_ended_questions`, ...), `image_path` (may start with '/'), `response` with `<answer>...</answer>`
  after a reasoning text whose regions are written `[x1, y1, x2, y2]`.

Grounding (per latent step k): the /explain heatmap of h_k against the item's boxes — pointing (the peak
cell's centre lies in a box) and the IoU of the thresholded heatmap's bounding box (cells > mean + std)
with the best-matching box, on the encoder's square-padded grid.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.eval.files import need, parquet_files, read_jsonl, read_parquet, split_names
from training.eval.items import LETTERS, BenchItem, BenchmarkError, Box

QUESTION_FILES = {
    "closed_ended": "closed_ended_question.jsonl",
    "open_ended": "open_ended_question.jsonl",
    "single_choice": "single_choice_question.jsonl",
    "multi_choice": "multi_choice_question.jsonl",
}
BOX_FRAME = (224, 224)
"""(width, height) GEMeX boxes refer to: the images resized to 224 x 224 (all v1 coordinates are <= 224)."""
_BOX = re.compile(
    r"\[\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\]"
)
_OPTION = re.compile(r"^\s*\(?([A-H])\s*[:.)]\s*(.*)$")


def _kind(qtype: str, answer: str) -> str:
    if qtype == "closed_ended":
        return "yesno" if answer.strip().lower().rstrip(".") in ("yes", "no") else "exact"
    return {"open_ended": "open", "single_choice": "choice", "multi_choice": "multi_choice"}[qtype]


def _choices(raw: Any) -> tuple[str, ...]:
    """["A: text", "B: text", ...] -> texts in letter order (a missing letter keeps its slot empty)."""
    if not raw:
        return ()
    out: dict[int, str] = {}
    for i, c in enumerate(raw):
        m = _OPTION.match(str(c))
        out[LETTERS.index(m.group(1)) if m else i] = (m.group(2) if m else str(c)).strip()
    return tuple(out.get(i, "") for i in range(max(out) + 1))


def _letters(answer: Any) -> list[str]:
    """Gold letters of a choice answer: "B", ["A", "B"], "['A', 'B']" or "A, B, D"."""
    if isinstance(answer, str) and answer.strip().startswith("["):
        with contextlib.suppress(ValueError, SyntaxError):
            answer = ast.literal_eval(answer.strip())
    parts = answer if isinstance(answer, list | tuple) else re.findall(r"\b([A-H])\b", str(answer))
    return sorted({str(p).strip().upper()[:1] for p in parts if str(p).strip()})


def _boxes(raw: Any, where: str) -> tuple[Box, ...]:
    try:
        boxes = tuple(tuple(float(v) for v in b) for b in (raw or []))
    except (TypeError, ValueError) as exc:
        raise BenchmarkError(f"{where}: visual_locations must be [[x1, y1, x2, y2], ...]") from exc
    if any(len(b) != 4 or b[2] <= b[0] or b[3] <= b[1] for b in boxes):
        raise BenchmarkError(f"{where}: a box is not [x1, y1, x2, y2] with x2 > x1 and y2 > y1: {raw}")
    return boxes  # type: ignore[return-value]


def make_item(
    id_: str,
    qtype: str,
    question: str,
    answer: Any,
    choices: tuple[str, ...],
    boxes: tuple[Box, ...],
    image: Path,
    where: str,
) -> BenchItem:
    """One GEMeX question as a BenchItem (choice answers become letters; their text is the gold text)."""
    label = None
    if qtype in ("single_choice", "multi_choice"):
        letters = _letters(answer)
        n = max(len(choices), 4)
        if not letters or any(
            x not in LETTERS[:n] or (choices and not choices[LETTERS.index(x)]) for x in letters
        ):
            raise BenchmarkError(f"{where}: answer {answer!r} is not a letter of the options")
        if qtype == "single_choice" and len(letters) != 1:
            raise BenchmarkError(f"{where}: a single-choice answer has {len(letters)} letters")
        label = ",".join(letters)
        text = "; ".join(choices[LETTERS.index(x)] for x in letters) if choices else label
    else:
        text = str(answer).strip()
    return BenchItem(
        id=id_,
        question=question.strip(),
        answer=text,
        kind=_kind(qtype, text),
        image=image,
        choices=choices,
        label=label,
        question_type=qtype,
        modality="CXR",
        benchmark="gemex",
        boxes=boxes,
        box_frame=BOX_FRAME,
    )


def _image_root(cands: list[Path], first: str) -> Path:
    return next((c for c in cands if (c / first).is_file()), next((c for c in cands if c.is_dir()), cands[0]))


def _v1_files(path: Path, split: str) -> list[tuple[str, Path]]:
    if path.is_file():
        qtype = next((q for q, f in QUESTION_FILES.items() if path.name == f), None)
        if qtype is None:
            raise BenchmarkError(f"{path}: a GEMeX v1 file is one of {', '.join(QUESTION_FILES.values())}")
        return [(qtype, path)]
    for folder in [*(path / s for s in split_names(split)), path]:
        found = [(q, folder / f) for q, f in QUESTION_FILES.items() if (folder / f).is_file()]
        if found:
            return found
    raise BenchmarkError(f"{path}: no GEMeX *_question.jsonl files under {split}/ or at the top")


def load_v1(path: Path, split: str = "test", image_dir: Path | None = None) -> list[BenchItem]:
    """GEMeX v1: the four `*_question.jsonl` files of a split folder (or one of them)."""
    items: list[BenchItem] = []
    root = None
    for qtype, f in _v1_files(path, split):
        rows = read_jsonl(f)
        if rows and root is None:
            need(rows[0], ("image_path",), f"{f} line 1")
            base = path if path.is_dir() else path.parent
            cands = (
                [image_dir] if image_dir else [base / "files", base / "images", base.parent / "files", base]
            )
            root = _image_root(cands, str(rows[0]["image_path"]).lstrip("/"))
        for n, r in enumerate(rows, 1):
            where = f"{f} line {n}"
            need(r, ("question", "answer", "image_path", "visual_locations"), where)
            id_ = f"{qtype}-{r.get('row_id', '')}-{r.get('q_id', n)}"
            items.append(
                make_item(
                    id_,
                    qtype,
                    str(r["question"]),
                    r["answer"],
                    _choices(r.get("choices")),
                    _boxes(r["visual_locations"], where),
                    root / str(r["image_path"]).lstrip("/"),
                    where,
                )
            )
    return items


def parse_response(response: str) -> tuple[str, tuple[Box, ...]]:
    """(answer, boxes) of a ThinkVG `response`: the `<answer>` text and every [x1, y1, x2, y2] before it."""
    m = re.search(r"<answer>(.*?)(?:</answer>|$)", response, re.S)
    answer = m.group(1).strip() if m else ""
    reasoning = response[: m.start()] if m else response
    boxes = tuple(tuple(float(v) for v in b) for b in _BOX.findall(reasoning))
    return answer, tuple(b for b in boxes if b[2] > b[0] and b[3] > b[1])  # type: ignore[misc]


def _question_options(question: str) -> tuple[str, tuple[str, ...]]:
    """Split "question\\nA: x\\nB: y" into the question and its options (ThinkVG keeps them in the text)."""
    lines, opts = question.splitlines(), {}
    keep = []
    for line in lines:
        m = _OPTION.match(line)
        if m and line.strip()[:1] == m.group(1):
            opts[LETTERS.index(m.group(1))] = m.group(2).strip()
        else:
            keep.append(line)
    choices = tuple(opts.get(i, "") for i in range(max(opts) + 1)) if opts else ()
    return "\n".join(keep).strip(), choices


def load_thinkvg(path: Path, split: str = "train", image_dir: Path | None = None) -> list[BenchItem]:
    """GEMeX-ThinkVG (the paper's RMCoT release): parquet rows with the answer and boxes inside `response`."""
    items: list[BenchItem] = []
    root = None
    for f in parquet_files(path, split):
        for i, r in enumerate(read_parquet(f, ("question", "question_type", "image_path", "response"))):
            where = f"{f} row {i}"
            qtype = str(r["question_type"]).replace("_questions", "").replace("_question", "")
            if qtype not in QUESTION_FILES:
                raise BenchmarkError(f"{where}: unknown question_type {r['question_type']!r}")
            answer, boxes = parse_response(str(r["response"]))
            if not answer:
                raise BenchmarkError(f"{where}: no <answer>...</answer> in the response")
            question, choices = _question_options(str(r["question"]))
            rel = str(r["image_path"]).lstrip("/")
            if root is None:
                base = path if path.is_dir() else path.parent
                cands = [image_dir] if image_dir else [base / "files", base / "images", base]
                root = _image_root(cands, rel)
            items.append(
                make_item(
                    f"{f.stem.split('-')[0]}-{i}", qtype, question, answer, choices, boxes, root / rel, where
                )
            )
    return items


# ---- grounding ---------------------------------------------------------------------------------------


def boxes_on_image(boxes: Sequence[Box], frame: tuple[int, int] | None, size: tuple[int, int]) -> np.ndarray:
    """Boxes in `frame` pixels -> [N, 4] (x1, y1, x2, y2) in pixels of the image of `size` (W, H)."""
    w, h = size
    fw, fh = frame or size
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (N, 4)
    return np.clip(b, 0, [fw, fh, fw, fh]) * [w / fw, h / fh, w / fw, h / fh]  # (N, 4) image pixels


def boxes_on_grid(
    boxes: Sequence[Box], frame: tuple[int, int] | None, size: tuple[int, int], grid: int
) -> np.ndarray:
    """Boxes in `frame` pixels -> [N, 4] (x1, y1, x2, y2) in cell units of the encoder's square-padded G x G grid."""
    w, h = size
    side = max(w, h)
    left, top = (side - w) // 2, (side - h) // 2
    b = boxes_on_image(boxes, frame, size)  # (N, 4) image pixels
    return (b + [left, top, left, top]) * (grid / side)  # (N, 4) grid units


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x1, y1, x2, y2) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def heatmap_box(cos: np.ndarray) -> np.ndarray:
    """Bounding box (x1, y1, x2, y2, grid units) of the cells above mean + std (the peak cell if none)."""
    active = cos > cos.mean() + cos.std()
    if not active.any():
        active = cos >= cos.max()
    rows, cols = np.nonzero(active)
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)


def step_box_grounding(cos: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Pointing hit and heatmap-box IoU (best over the reference boxes) of one heatmap [G, G]."""
    r, c = np.unravel_index(int(np.argmax(cos)), cos.shape)
    px, py = c + 0.5, r + 0.5
    hit = any(b[0] <= px <= b[2] and b[1] <= py <= b[3] for b in gt)
    hb = heatmap_box(cos)
    return {"pointing": float(hit), "box_iou": max((box_iou(hb, b) for b in gt), default=0.0)}


def region_box_grounding(cos: np.ndarray, gt: np.ndarray, size: tuple[int, int]) -> dict[str, float]:
    """IoU (best over the reference boxes, image pixels [N, 4]) of /explain's region box for a heatmap
    [G, G] on an image of `size` (W, H) (`index_builder.regions` at its default threshold), and Acc@0.5."""
    from index_builder.regions import region_from_grid

    w, h = size
    rb = np.asarray(region_from_grid(cos, h, w).box, dtype=np.float64)
    iou = max((box_iou(rb, b) for b in gt), default=0.0)
    return {"region_box_iou": iou, "region_acc50": float(iou >= 0.5)}


def grounding_per_item(
    preds: Sequence[Any], vp: Any, encoder: Any, batch: int = 16
) -> list[list[dict] | None]:
    """Per prediction with boxes and latents: per step k = 1..K {step, pointing, box_iou, region_box_iou,
    region_acc50}; None otherwise."""
    import torch
    import torch.nn.functional as F

    from index_builder.heatmap import heatmap_grid

    out: list[list[dict] | None] = [None] * len(preds)
    todo = [i for i, p in enumerate(preds) if p.item.boxes and p.latents is not None and p.k >= 1]
    device = next(vp.parameters()).device
    for start in range(0, len(todo), batch):
        idx = todo[start : start + batch]
        images = [preds[i].item.load_image() for i in idx]
        grids = encoder.encode(images)  # (b, G, G, D)
        for j, i in enumerate(idx):
            p = preds[i]
            with torch.inference_mode():
                q = F.normalize(vp(p.latents[1 : p.k + 1].to(device)).float(), dim=-1).cpu()  # (K, D)
            gt = boxes_on_grid(p.item.boxes, p.item.box_frame, images[j].size, encoder.grid)
            px = boxes_on_image(p.item.boxes, p.item.box_frame, images[j].size)
            maps = [heatmap_grid(qs, grids[j]) for qs in q]
            out[i] = [
                {
                    "step": s + 1,
                    **step_box_grounding(cos, gt),
                    **region_box_grounding(cos, px, images[j].size),
                }
                for s, cos in enumerate(maps)
            ]
    return out


def grounding_summary(per_item: Sequence[list[dict] | None]) -> dict[str, Any] | None:
    """Mean pointing, box IoU and (where scored) region box IoU and Acc@0.5 per step over the items that
    have grounding (None when none have)."""
    rows = [r for r in per_item if r]
    if not rows:
        return None
    k = max(len(r) for r in rows)
    steps = []
    for s in range(k):
        vals = [r[s] for r in rows if len(r) > s]
        steps.append(
            {
                "step": s + 1,
                "n": len(vals),
                **{
                    m: round(float(np.mean([v[m] for v in vals])), 4)
                    for m in ("pointing", "box_iou", "region_box_iou", "region_acc50")
                    if all(m in v for v in vals)
                },
            }
        )
    return {"n": len(rows), "per_step": steps}
