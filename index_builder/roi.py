"""Adaptive ROI feature extraction (paper §3.4, §A.5.2): the visual supervision target of each sample.

mask ratio >= tau  -> full-image pathway: encode the whole (square-padded) image, downsample the mask
                      to the patch grid by exact area interpolation, binarise at 0.3, mean those patches.
mask ratio <  tau  -> tight-crop pathway: crop the mask's bounding box widened by `margin` of its size
                      on each side, zero-pad the crop to a square, re-encode, and mean the *valid*
                      (non-padding) patches of the crop, as the paper says ("pool over valid patches").
The pooled feature is L2-normalised; the top-k pooled patches by cosine with it are kept, with their
positions on the *full image's* patch grid (crop cells are mapped back), for visualisation.

Planning (`plan_roi`) is pure numpy geometry and is separated from encoding so that a batch of samples
can be encoded in one call (`extract_rois`) and tests can check the geometry without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image

from index_builder.encoder import PatchEncoderLike, SquarePad
from index_builder.roi_params import ROIParams

MIN_SIDE = 4
"""Images (and masks) smaller than this many pixels on a side are rejected."""


class ROIError(ValueError):
    """A sample whose ROI feature cannot be computed (bad mask, tiny image, ...); the message says why."""


@dataclass
class ROIPlan:
    """What to encode for one sample and which grid cells to pool (all grids are [G, G])."""

    pathway: Literal["full", "crop"]
    image: Image.Image
    """The image to encode (the full image or the crop), before square padding."""
    pool: np.ndarray
    """bool [G, G]: cells averaged into the ROI feature."""
    valid: np.ndarray
    """bool [G, G]: cells that are real content (not padding) in the encoded image."""
    mask_cells: np.ndarray
    """bool [G, G]: cells of the encoded image that the binarised mask covers (metrics)."""
    full_pos: np.ndarray
    """int [G, G, 2]: (row, col) on the full image's grid of each encoded cell's centre."""
    mask_ratio: float
    box: tuple[int, int, int, int] | None = None
    """(y0, y1, x0, x1) crop box in source pixels (crop pathway only)."""
    fallback: bool = False
    """True when no cell passed the threshold and the max-coverage cell(s) were used instead."""


@dataclass
class ROIResult:
    """An ROI feature and where its strongest patches are."""

    feature: np.ndarray
    """float32 [D], unit L2 norm."""
    top_pos: np.ndarray
    """int16 [k, 2]: (row, col) on the full image's patch grid, best first."""
    top_scores: np.ndarray
    """float32 [k]: cosine of each top patch with the ROI feature."""
    pathway: str
    mask_ratio: float
    n_pooled: int
    fallback: bool = False
    extra: dict = field(default_factory=dict)


def as_mask(mask: np.ndarray | Image.Image | torch.Tensor) -> np.ndarray:
    """Any 2-D mask (bool, labels, probabilities, PIL L/1) -> bool [H, W] (foreground = value > 0)."""
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    elif isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ROIError(f"mask must be 2-D (H, W), got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ROIError("mask contains NaN or infinite values")
    return arr > 0


def area_weights(n_cells: int, length: int, offset: int, side: int) -> np.ndarray:
    """[n_cells, length] fraction of each grid cell (along one axis) covered by each content pixel.

    The content occupies padded coordinates [offset, offset + length) of a square of `side` pixels split
    into `n_cells` equal cells; this is exact area (box) interpolation, valid for any side/cell ratio.
    """
    cell = side / n_cells
    lo = (np.arange(n_cells) * cell)[:, None]  # (G, 1)
    hi = lo + cell  # (G, 1)
    p = (offset + np.arange(length, dtype=np.float64))[None, :]  # (1, L)
    overlap = np.clip(np.minimum(p + 1, hi) - np.maximum(p, lo), 0.0, None)  # (G, L)
    return overlap / cell


def grid_coverage(mask: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask coverage, content coverage) of each cell of the square-padded image's grid, both [G, G]."""
    h, w = mask.shape
    pad = SquarePad.of(h, w)
    wr = area_weights(grid, h, pad.top, pad.side)  # (G, H)
    wc = area_weights(grid, w, pad.left, pad.side)  # (G, W)
    cov = wr @ mask.astype(np.float64) @ wc.T  # (G, G)
    content = np.outer(wr.sum(1), wc.sum(1))  # (G, G)
    return cov, content


def _threshold_or_max(cov: np.ndarray, threshold: float, allowed: np.ndarray) -> tuple[np.ndarray, bool]:
    """Cells with cov >= threshold among `allowed`; if none, the allowed cell(s) of maximum coverage."""
    cells = (cov >= threshold) & allowed
    if cells.any():
        return cells, False
    masked = np.where(allowed, cov, -1.0)
    return masked >= masked.max() - 1e-12, True


def _crop_box(mask: np.ndarray, margin: float, min_px: int) -> tuple[int, int, int, int]:
    """Bounding box of the mask widened by `margin` of its size per side, min size, clamped to the image."""
    h, w = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = []
    for lo, hi, size in ((rows[0], rows[-1] + 1, h), (cols[0], cols[-1] + 1, w)):
        ext = hi - lo
        grow = int(round(margin * ext))
        lo, hi = lo - grow, hi + grow
        short = min(min_px, size) - (hi - lo)
        if short > 0:  # widen tiny boxes around their centre
            lo -= short // 2
            hi += short - short // 2
        shift = max(0, -lo) - max(0, hi - size)  # slide back inside the image, then clamp
        lo, hi = max(0, lo + shift), min(size, hi + shift)
        box += [int(lo), int(hi)]
    return box[0], box[1], box[2], box[3]


def _cell_centres_to_full(grid: int, crop: SquarePad, y0: int, x0: int, full: SquarePad) -> np.ndarray:
    """int [G, G, 2]: the full-image grid cell under the centre of each crop-grid cell."""
    centre = (np.arange(grid) + 0.5) * crop.side / grid  # (G,) padded-crop coordinates
    ys = centre - crop.top + y0 + full.top  # (G,) full padded coordinates
    xs = centre - crop.left + x0 + full.left  # (G,)
    rows = np.clip(np.floor(ys * grid / full.side), 0, grid - 1).astype(np.int64)
    cols = np.clip(np.floor(xs * grid / full.side), 0, grid - 1).astype(np.int64)
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), axis=-1)  # (G, G, 2)


def plan_roi(
    image: Image.Image,
    mask: np.ndarray | Image.Image,
    grid: int,
    params: ROIParams,
    force: Literal["full", "crop"] | None = None,
) -> ROIPlan:
    """Decide the pathway and the cells to pool for one sample (geometry only, no encoder).

    `force` picks a pathway regardless of tau (the grid search evaluates both for every sample).
    """
    m = as_mask(mask)
    if m.shape != (image.height, image.width):
        raise ROIError(f"mask shape {m.shape} != image shape {(image.height, image.width)} (H, W)")
    if min(m.shape) < MIN_SIDE:
        raise ROIError(f"image {image.width}x{image.height} is too small (min side {MIN_SIDE} px)")
    n_fg = int(m.sum())
    if n_fg == 0:
        raise ROIError("mask is empty (no foreground pixel)")
    ratio = n_fg / m.size
    full = SquarePad.of(*m.shape)
    if force == "full" or (force is None and ratio >= params.tau):
        cov, content = grid_coverage(m, grid)
        valid = content >= params.valid_min
        pool, fallback = _threshold_or_max(cov, params.bin_threshold, np.ones_like(valid))
        idx = np.stack(np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij"), axis=-1)  # (G, G, 2)
        return ROIPlan("full", image, pool, valid, pool.copy(), idx, ratio, None, fallback)
    y0, y1, x0, x1 = _crop_box(m, params.margin, params.min_crop_px)
    crop_mask = m[y0:y1, x0:x1]
    cov, content = grid_coverage(crop_mask, grid)
    valid, _ = _threshold_or_max(content, params.valid_min, np.ones(content.shape, dtype=bool))
    mask_cells, fb_mask = _threshold_or_max(cov, params.bin_threshold, valid)
    pool, fallback = (valid, False) if params.crop_pool == "valid" else (mask_cells, fb_mask)
    pos = _cell_centres_to_full(grid, SquarePad.of(y1 - y0, x1 - x0), y0, x0, full)
    crop = image.crop((x0, y0, x1, y1))
    return ROIPlan("crop", crop, pool, valid, mask_cells, pos, ratio, (y0, y1, x0, x1), fallback)


def pool_roi(plan: ROIPlan, patches: torch.Tensor | np.ndarray, top_k: int = 5) -> ROIResult:
    """Mean the planned cells of an encoded patch grid [G, G, D] -> unit ROI feature and top-k patches."""
    grid = torch.as_tensor(np.asarray(patches), dtype=torch.float32)  # (G, G, D)
    g = grid.shape[0]
    if plan.pool.shape != (g, g):
        raise ROIError(f"plan grid {plan.pool.shape} does not match encoded grid {(g, g)}")
    flat = grid.reshape(g * g, -1)  # (G*G, D)
    pool_idx = torch.from_numpy(np.flatnonzero(plan.pool))  # (P,)
    mean = flat[pool_idx].mean(0)  # (D,)
    norm = float(mean.norm())
    if not np.isfinite(norm) or norm < 1e-12:
        raise ROIError("pooled ROI feature has zero or non-finite norm")
    feature = mean / norm  # (D,)
    cos = torch.nn.functional.normalize(flat, dim=-1) @ feature  # (G*G,)
    order = pool_idx[torch.argsort(cos[pool_idx], descending=True)]  # pooled cells, best first
    if len(order) < top_k:  # too few pooled cells: continue with the other valid cells by cosine
        rest = torch.from_numpy(np.flatnonzero(plan.valid & ~plan.pool))
        rest = rest[torch.argsort(cos[rest], descending=True)]
        order = torch.cat([order, rest])
    order = order[:top_k]
    pos = plan.full_pos.reshape(g * g, 2)[order.numpy()]  # (k, 2)
    k_found = len(order)
    top_pos = np.full((top_k, 2), -1, dtype=np.int16)
    top_scores = np.full(top_k, -1.0, dtype=np.float32)  # -1 / (-1, -1) only if the grid has < k cells
    top_pos[:k_found] = pos
    top_scores[:k_found] = cos[order].numpy()
    return ROIResult(
        feature=feature.numpy().astype(np.float32),
        top_pos=top_pos,
        top_scores=top_scores,
        pathway=plan.pathway,
        mask_ratio=plan.mask_ratio,
        n_pooled=int(plan.pool.sum()),
        fallback=plan.fallback,
    )


def extract_rois(encoder: PatchEncoderLike, plans: Sequence[ROIPlan], top_k: int = 5) -> list[ROIResult]:
    """Encode the planned images in one batch and pool each -> one ROIResult per plan."""
    if not plans:
        return []
    grids = encoder.encode([p.image for p in plans])  # (B, G, G, D)
    return [pool_roi(plan, grids[i], top_k) for i, plan in enumerate(plans)]


def extract_roi(
    encoder: PatchEncoderLike,
    image: Image.Image,
    mask: np.ndarray | Image.Image,
    params: ROIParams | None = None,
) -> ROIResult:
    """Adaptive ROI feature of one (image, mask) pair; raises ROIError for a bad sample."""
    params = params or ROIParams()
    plan = plan_roi(image, mask, encoder.grid, params)
    return extract_rois(encoder, [plan], params.top_k)[0]
