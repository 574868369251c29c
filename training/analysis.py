"""What the latent states hold: modality collapse (paper §C.6) and visual grounding per step (§C.7).

Collapse: S[i, j] = mean over test samples of cos(h_i, h_j), i, j = 1..K (h_0, the prefix state, is left
out, as in eq. 9). A collapsed loop has every off-diagonal entry near 1.

Grounding: the /explain heatmap of step k — the contrast cosine of normalize(VP(h_k)) with each cell of the
frozen encoder's patch grid of the query image (index_builder.heatmap.heatmap_grid: the image's mean patch
feature removed from both) — against that step's mask (the sample's `step_masks`, e.g. the two structures
a multi-hop question compares, then its target; the sample's mask for every step without them),
downsampled to the same grid (index_builder.roi.grid_coverage, i.e. the encoder's square padding; a cell
is in the mask when >= 30% of its area is mask, else the cells of maximal coverage, exactly as for the ROI
targets). Per step: pointing accuracy (the heatmap's peak cell is a mask cell), IoU of the thresholded
heatmap (cells above mean + std of the grid) with the mask cells, IoU of the top-|M| cells (as many cells
as the mask has), and the active fraction (share of cells above mean + std; smaller = more focused); also
pointing of the plain cosine map (`cosine_grid`, the paper's) and each map's correlation with the
previous step's (do the steps look at different places?). Regions (`training.eval.regions`): each step's
/explain region (`index_builder.regions`: mask and box on the original image) against its step mask — IoU,
Dice, box IoU, Acc@0.5 — beside two saliency floors, and optionally a sweep of the region threshold.
docs/evaluation.md has the details.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.eval.evaluate import Prediction

MASK_THRESHOLD = 0.3
"""A grid cell is in the mask when at least this fraction of its area is mask (same as ROI extraction)."""


def step_similarity(latents: Sequence[torch.Tensor]) -> np.ndarray:
    """Mean inter-step cosine matrix [K, K] over samples; each entry of `latents` is (K+1, H): h_0..h_K."""
    if not latents:
        raise ValueError("no latents to compare")
    k = latents[0].shape[0] - 1
    if k < 1 or any(t.shape[0] != k + 1 for t in latents):
        raise ValueError("every sample needs the same K >= 1")
    h = F.normalize(torch.stack([t[1:].float() for t in latents]), dim=-1)  # (N, K, H)
    return (h @ h.transpose(1, 2)).mean(0).numpy()  # (K, K)


def collapse_summary(matrix: np.ndarray, n: int) -> dict[str, Any]:
    """The matrix plus its mean off-diagonal entry and the adjacent-step similarities s(k, k+1)."""
    k = matrix.shape[0]
    off = matrix[~np.eye(k, dtype=bool)]
    return {
        "k": k,
        "n": n,
        "matrix": [[round(float(v), 5) for v in row] for row in matrix],
        "mean_offdiag": round(float(off.mean()), 5) if off.size else None,
        "max_offdiag": round(float(off.max()), 5) if off.size else None,
        "adjacent": [round(float(matrix[i, i + 1]), 5) for i in range(k - 1)],
    }


def collapse_png(matrix: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save the inter-step similarity matrix as an annotated heatmap (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = matrix.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 * k + 1.6, 1.2 * k + 1.0))
    im = ax.imshow(matrix, vmin=min(0.0, float(matrix.min())), vmax=1.0, cmap="viridis")
    labels = [f"h{i + 1}" for i in range(k)]
    ax.set_xticks(range(k), labels)
    ax.set_yticks(range(k), labels)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.3f}",
                ha="center",
                va="center",
                color="w" if matrix[i, j] < 0.7 else "k",
            )
    ax.set_title(title or "inter-step cosine similarity")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mask_cells(mask: np.ndarray, grid: int, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """bool [G, G]: encoder-grid cells inside a binary mask [H, W] (square padding as the encoder does)."""
    from index_builder.roi import grid_coverage

    cov, _ = grid_coverage(mask.astype(bool), grid)  # (G, G) fraction of each cell that is mask
    cells = cov >= threshold
    if not cells.any() and cov.max() > 0:
        cells = cov >= cov.max() - 1e-12
    return cells


def step_grounding(cos: np.ndarray, cells: np.ndarray) -> dict[str, float]:
    """Pointing hit, IoU (mean+std threshold), IoU (top-|M| cells) and active fraction of one heatmap."""
    flat = cos.ravel()
    peak = int(np.argmax(flat))
    m = cells.ravel()
    active = flat > flat.mean() + flat.std()
    n = int(m.sum())
    top = np.zeros_like(m)
    top[np.argsort(-flat, kind="stable")[:n]] = True
    iou = lambda a, b: float((a & b).sum() / max(1, (a | b).sum()))  # noqa: E731
    return {
        "pointing": float(m[peak]),
        "iou": iou(active, m),
        "iou_top": iou(top, m),
        "active_fraction": float(active.mean()),
    }


def grounding_from_predictions(
    preds: Sequence[Prediction],
    vp: torch.nn.Module,
    encoder: Any,
    examples: int = 0,
    out: Path | None = None,
    scaffold: Any = None,
    tokenizer: Any = None,
    fractions: Sequence[float] | None = None,
    region_fraction: float | None = None,
) -> dict[str, Any]:
    """Per-step grounding over predictions of five-tuple samples that kept their latents (same K for all).

    With the `scaffold` and `tokenizer`, each step's latent is also read back as a sentence (the /explain
    decoder) and scored on whether it names the structure its reference sentence names (`names_hop`).
    `report["regions"]` scores the steps' regions at `region_fraction` (default: /explain's) against the
    step masks beside the floors; with `fractions` it also sweeps those thresholds and flags the best."""
    from index_builder.heatmap import cosine_grid, heatmap, heatmap_grid, visual_queries
    from index_builder.regions import DEFAULT_FRACTION, check_fraction
    from training.eval.regions import RegionScorer, mark_best

    preds = [p for p in preds if p.latents is not None and p.sample is not None and p.k >= 1]
    if not preds:
        raise ValueError("grounding needs predictions with latents of five-tuple samples and K >= 1")
    k = preds[0].k
    fraction = check_fraction(DEFAULT_FRACTION if region_fraction is None else region_fraction)
    scorer = RegionScorer(k, [*(fractions or ()), fraction])
    rows: list[list[dict[str, float]]] = []
    chance = []
    pairs: dict[str, list[float]] = {"differ": [], "same": []}
    device = next(vp.parameters()).device
    for start in range(0, len(preds), 16):
        chunk = preds[start : start + 16]
        images = [p.item.load_image() for p in chunk]
        grids = encoder.encode(images)  # (b, G, G, D)
        lat = torch.stack([p.latents[1 : k + 1] for p in chunk]).to(device)  # (b, K, H)
        queries = visual_queries(vp, lat)  # (b, K, D)
        said = _decode(scaffold, tokenizer, lat) if scaffold is not None else None  # b lists of K sentences
        for i, p in enumerate(chunk):
            masks = [_mask(m, images[i].size) for m in step_mask_paths(p.sample, k)]
            cells = [mask_cells(m, encoder.grid) for m in masks]
            chance.append(float(cells[-1].mean()))
            maps = [heatmap_grid(q, grids[i]) for q in queries[i]]
            scorer.add(maps, np.asarray(grids[i]), masks)
            raw = [cosine_grid(q, grids[i]) for q in queries[i]]
            row = []
            for s, (cos, rc) in enumerate(zip(maps, raw)):
                g = step_grounding(cos, cells[s])
                g["pointing_raw"] = step_grounding(rc, cells[s])["pointing"]
                g["prev_cosine"] = _map_cosine(cos, maps[s - 1]) if s else float("nan")
                if s:
                    pairs["same" if np.array_equal(masks[s], masks[s - 1]) else "differ"].append(
                        g["prev_cosine"]
                    )
                if said is not None:
                    g["names_hop"] = _names_hop(said[i][s], p.sample, s)
                row.append(g)
            rows.append(row)
            if out is not None and start + i < examples:
                for s, q in enumerate(queries[i]):
                    (out / f"{p.item.id}-step{s + 1}.png").write_bytes(heatmap(q, grids[i], images[i]).png)
    per_step = [{"step": s + 1, **{m: _mean([r[s][m] for r in rows]) for m in rows[0][0]}} for s in range(k)]
    regions = scorer.report(fraction)
    if fractions:
        mark_best(regions)
    return {
        "k": k,
        "n": len(rows),
        "chance_pointing": round(float(np.mean(chance)), 4),
        "per_step": per_step,
        # map correlation of consecutive steps whose masks differ / are the same structure
        "prev_cosine_differing_masks": {"n": len(pairs["differ"]), "mean": _mean(pairs["differ"])},
        "prev_cosine_same_mask": {"n": len(pairs["same"]), "mean": _mean(pairs["same"])},
        "regions": regions,
    }


def _decode(scaffold: Any, tokenizer: Any, lat: torch.Tensor) -> list[list[str]]:
    """Each latent of a (b, K, H) batch read back as a sentence by the auxiliary decoder."""
    b, k, _ = lat.shape
    flat = scaffold.decode(lat.reshape(b * k, -1), tokenizer)
    return [flat[i * k : (i + 1) * k] for i in range(b)]


def structure_names() -> list[str]:
    """Every structure name the phantom uses (compositional atlas and legacy modalities), longest first."""
    from training.phantom.atlas import ATLAS
    from training.phantom.modalities import MODALITIES

    names = {n for a in ATLAS.values() for n in (*a.hosts, *a.lesions)}
    names |= {n for m in MODALITIES for n, _ in m.targets}
    return sorted(names, key=len, reverse=True)


def hop_structure(sentence: str, names: Sequence[str] | None = None) -> str | None:
    """The structure a reasoning sentence is about: the longest known name it contains (None if none)."""
    low = sentence.lower()
    for n in names or structure_names():
        if re.search(rf"\b{re.escape(n)}\b", low):
            return n
    return None


def _names_hop(said: str, sample: Any, step: int) -> float:
    """1.0 when a decoded sentence names the structure of the sample's reference sentence `step`."""
    ref = sample.reasoning[min(step, len(sample.reasoning) - 1)]
    name = hop_structure(ref)
    return float(name is not None and re.search(rf"\b{re.escape(name)}\b", said.lower()) is not None)


def _mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """bool [H, W] of a mask file; with `size` (W, H) resized (nearest) to its image's size."""
    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None and im.size != tuple(size):
            im = im.resize(size, Image.Resampling.NEAREST)
        return np.asarray(im) > 127


def step_mask_paths(sample: Any, k: int) -> list[Path]:
    """The mask each of k latent steps is scored against: the sample's `step_masks` where it has them
    (a sample run at a K beyond its own depth repeats its last step's mask), else its mask for every step."""
    masks = list(getattr(sample, "step_masks", ()) or ()) or [sample.mask]
    return [masks[min(j, len(masks) - 1)] for j in range(k)]


def _map_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two heatmaps after removing each map's mean (Pearson correlation of the cells): 1 = the
    same picture. Without the mean removal every map of one image scores ~1: the cosine of any query with
    patches that share a common component is dominated by the image, not by the query."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def _mean(values: list[float]) -> float | None:
    v = [x for x in values if not np.isnan(x)]
    return round(float(np.mean(v)), 4) if v else None


def grounding_table(report: dict[str, Any], title: str = "") -> str:
    """Per-step grounding as a markdown table."""
    lines = [f"### {title}", ""] if title else []
    lines += [
        f"n = {report['n']}, K = {report['k']}, chance pointing (mean mask share of the grid) = "
        f"{100 * report['chance_pointing']:.1f}%",
        "",
        "| step | pointing acc. | pointing (plain cosine) | IoU (> mean+std) | IoU (top-\\|M\\|) | "
        "active fraction | heatmap cos. with previous step | sentence names its hop's structure |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    for r in report["per_step"]:
        prev = r.get("prev_cosine")
        lines.append(
            f"| h{r['step']} | {pct(r['pointing'])} | {pct(r.get('pointing_raw'))} | {pct(r['iou'])} | "
            f"{pct(r['iou_top'])} | {pct(r['active_fraction'])} | {'–' if prev is None else f'{prev:.3f}'} | "
            f"{pct(r.get('names_hop'))} |"
        )
    d, same = report.get("prev_cosine_differing_masks"), report.get("prev_cosine_same_mask")
    if d and d["n"]:
        lines += [
            "",
            f"Heatmap correlation of consecutive steps whose masks differ: {d['mean']:.3f} (n = {d['n']} pairs); "
            f"same mask: {same['mean'] if same['mean'] is not None else '–'} (n = {same['n']}).",
        ]
    if report.get("regions"):
        from training.eval.regions import regions_table

        lines += ["", regions_table(report["regions"]).rstrip("\n")]
    return "\n".join(lines) + "\n"


def collapse_table(summary: dict[str, Any], title: str = "") -> str:
    """The inter-step similarity matrix as a markdown table."""
    k = summary["k"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| | " + " | ".join(f"h{j + 1}" for j in range(k)) + " |", "|---" * (k + 1) + "|"]
    for i, row in enumerate(summary["matrix"]):
        lines.append(f"| h{i + 1} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    lines += ["", f"n = {summary['n']}, mean off-diagonal = {summary['mean_offdiag']}"]
    return "\n".join(lines) + "\n"


def encoder_for(config: Any, bundle: str | Path | None = None, device: str = "cpu") -> Any:
    """The frozen patch encoder /explain would use: BUNDLE/encoder when present, else the config's."""
    from index_builder.encoder import load_bundle_encoder

    return load_bundle_encoder(config, bundle, device=device)


def multihop_accuracy(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """Closed exact-match accuracy on the phantom's multi-hop questions, overall and per depth (hops)."""
    from training.data.manifest import normalize_answer
    from training.phantom.multihop import is_multihop

    by_depth: dict[int, list[bool]] = {}
    for p in predictions:
        s = p.sample
        if s is None or not is_multihop(s.question_type, s.answer, s.question):
            continue
        by_depth.setdefault(s.k, []).append(normalize_answer(p.answer) == normalize_answer(s.answer))
    hits = [h for v in by_depth.values() for h in v]
    from training.eval.stats import accuracy

    return {
        "n": len(hits),
        "closed_accuracy": round(sum(hits) / len(hits), 4) if hits else None,
        "interval": accuracy(hits) if hits else None,
        "by_hops": {
            str(d): {"n": len(v), "closed_accuracy": round(sum(v) / len(v), 4)}
            for d, v in sorted(by_depth.items())
        },
    }
