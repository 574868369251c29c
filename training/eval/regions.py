"""Regions against the phantom's step masks: mask IoU / Dice, box IoU and Acc@0.5, two saliency floors and
the threshold sweep that chose `index_builder.regions.DEFAULT_FRACTION`.

Every number is on the original image's pixels. A step's region is `region_from_grid` of its /explain
heatmap; its truth is the step's mask (`training.analysis.step_mask_paths`). Floors, scored the same way,
so a number is read against something the model did not contribute:

- `deviant_patch`: the box of the one encoder-grid cell whose patch feature deviates most from the image's
  mean patch feature (lowest cosine with it) — image saliency without the question or the latent steps;
- `centred_box`: a box of the median target size (median width and height of the evaluated step masks'
  tight boxes, as fractions of the image) centred on the image — where a target usually is, and how big.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from index_builder.regions import DEFAULT_FRACTION, cell_box, region_from_grid, tight_box

FLOORS = ("deviant_patch", "centred_box")


def box_mask(box: Sequence[int], height: int, width: int) -> np.ndarray:
    """bool [H, W] filled inside box (x0, y0, x1, y1), end exclusive."""
    m = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def mask_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU and Dice of two bool masks [H, W]; box IoU of their tight boxes and whether it is >= 0.5."""
    inter, union = float((pred & truth).sum()), float((pred | truth).sum())
    total = float(pred.sum() + truth.sum())
    out = {"iou": inter / union if union else 0.0, "dice": 2 * inter / total if total else 0.0}
    if pred.any() and truth.any():
        h, w = truth.shape
        b = box_iou(tight_box(pred), tight_box(truth), h, w)
    else:
        b = 0.0
    out.update(box_iou=b, acc50=float(b >= 0.5))
    return out


def box_iou(a: Sequence[int], b: Sequence[int], height: int, width: int) -> float:
    """IoU of two (x0, y0, x1, y1) boxes in pixels."""
    ma, mb = box_mask(a, height, width), box_mask(b, height, width)
    union = float((ma | mb).sum())
    return float((ma & mb).sum()) / union if union else 0.0


def deviant_patch_box(grid: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Box of the in-image cell of a patch grid [G, G, D] least like the image's mean patch feature."""
    g = np.asarray(grid, dtype=np.float32)
    g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), 1e-12)  # (G, G, D)
    mu = g.reshape(-1, g.shape[-1]).mean(0)  # (D,)
    cos = g @ (mu / max(float(np.linalg.norm(mu)), 1e-12))  # (G, G)
    n = g.shape[0]
    for flat in np.argsort(cos, axis=None, kind="stable"):  # most deviant first; skip padding cells
        box = cell_box(int(flat) // n, int(flat) % n, n, height, width)
        if box[2] > box[0] and box[3] > box[1]:
            return box
    return 0, 0, width, height


def centred_box(rel_size: tuple[float, float], height: int, width: int) -> tuple[int, int, int, int]:
    """A box of (relative width, relative height) of the image, centred on it."""
    bw = max(1, round(rel_size[0] * width))
    bh = max(1, round(rel_size[1] * height))
    x0, y0 = (width - bw) // 2, (height - bh) // 2
    return x0, y0, x0 + bw, y0 + bh


def median_size(masks: Sequence[np.ndarray]) -> tuple[float, float]:
    """Median (width, height) of the masks' tight boxes as fractions of their images."""
    sizes = []
    for m in masks:
        if m.any():
            x0, y0, x1, y1 = tight_box(m)
            sizes.append(((x1 - x0) / m.shape[1], (y1 - y0) / m.shape[0]))
    if not sizes:
        return 0.0, 0.0
    arr = np.asarray(sizes)
    return float(np.median(arr[:, 0])), float(np.median(arr[:, 1]))


class RegionScorer:
    """Accumulates per-step region scores (at each swept fraction) and the floors over samples."""

    def __init__(self, k: int, fractions: Sequence[float] | None = None):
        self.k = k
        self.fractions = sorted({*(fractions or ()), DEFAULT_FRACTION})
        self.rows: dict[float, list[list[dict[str, float]]]] = {f: [] for f in self.fractions}
        self.deviant: list[list[dict[str, float]]] = []
        self.truths: list[list[np.ndarray]] = []

    def add(self, maps: Sequence[np.ndarray], grid: np.ndarray, masks: Sequence[np.ndarray]) -> None:
        """One sample: its K heatmap grids [G, G], its patch grid [G, G, D], its K step masks [H, W]."""
        h, w = masks[0].shape
        for f in self.fractions:
            self.rows[f].append(
                [mask_scores(region_from_grid(c, h, w, f).mask, m) for c, m in zip(maps, masks)]
            )
        dev = box_mask(deviant_patch_box(grid, h, w), h, w)
        self.deviant.append([mask_scores(dev, m) for m in masks])
        self.truths.append(list(masks))

    def report(self, fraction: float = DEFAULT_FRACTION) -> dict[str, Any]:
        """Per-step means at `fraction`, the floors, and the sweep (mean IoU / Dice over all steps)."""
        rel = median_size([m for ms in self.truths for m in ms])
        centred = [
            [mask_scores(box_mask(centred_box(rel, *m.shape), *m.shape), m) for m in ms] for ms in self.truths
        ]
        return {
            "fraction": fraction,
            "n": len(self.truths),
            "per_step": _per_step(self.rows[fraction], self.k),
            "floors": {
                "deviant_patch": {"per_step": _per_step(self.deviant, self.k)},
                "centred_box": {
                    "median_size": [round(rel[0], 4), round(rel[1], 4)],
                    "per_step": _per_step(centred, self.k),
                },
            },
            "sweep": [{"fraction": f, **_overall(self.rows[f]), "best": False} for f in self.fractions],
        }


def _per_step(rows: list[list[dict[str, float]]], k: int) -> list[dict[str, float]]:
    if not rows:
        return []
    keys = rows[0][0].keys()
    return [
        {"step": s + 1, **{m: round(float(np.mean([r[s][m] for r in rows])), 4) for m in keys}}
        for s in range(k)
    ]


def _overall(rows: list[list[dict[str, float]]]) -> dict[str, float]:
    cells = [c for r in rows for c in r]
    return {m: round(float(np.mean([c[m] for c in cells])), 4) for m in ("iou", "dice", "box_iou", "acc50")}


def mark_best(report: dict[str, Any]) -> float:
    """Flag the sweep's best fraction by mean IoU over all steps (ties: the smaller); returns it."""
    best = max(report["sweep"], key=lambda r: (r["iou"], -r["fraction"]))
    best["best"] = True
    return best["fraction"]


def regions_table(report: dict[str, Any]) -> str:
    """Per-step region scores beside the two floors, then the sweep, as markdown."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    fl = report["floors"]
    lines = [
        f"Regions at fraction {report['fraction']} (n = {report['n']}); floors: deviant patch, centred box of "
        f"the median target size ({fl['centred_box']['median_size'][0]:.2f} x "
        f"{fl['centred_box']['median_size'][1]:.2f} of the image).",
        "",
        "| step | mask IoU | Dice | box IoU | Acc@0.5 | deviant-patch IoU / Dice | centred-box IoU / Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    for r, d, c in zip(report["per_step"], fl["deviant_patch"]["per_step"], fl["centred_box"]["per_step"]):
        lines.append(
            f"| h{r['step']} | {pct(r['iou'])} | {pct(r['dice'])} | {pct(r['box_iou'])} | {pct(r['acc50'])} | "
            f"{pct(d['iou'])} / {pct(d['dice'])} | {pct(c['iou'])} / {pct(c['dice'])} |"
        )
    if len(report["sweep"]) > 1:
        lines += ["", "| fraction | mean IoU | Dice | box IoU | Acc@0.5 |", "|---|---|---|---|---|"]
        for s in report["sweep"]:
            mark = " **(best)**" if s.get("best") else ""
            lines.append(
                f"| {s['fraction']}{mark} | {pct(s['iou'])} | {pct(s['dice'])} | {pct(s['box_iou'])} | "
                f"{pct(s['acc50'])} |"
            )
    return "\n".join(lines) + "\n"
