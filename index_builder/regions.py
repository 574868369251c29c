"""Where a latent step looks, as a region: a binary mask and its tight box on the image the user sent.

The rule, applied to a step's heatmap grid (`index_builder.heatmap.heatmap_grid`, the contrast cosine):

1. min-max normalise the grid to [0, 1] (as the PNG overlay does);
2. upsample it bilinearly to the encoder's square-padded view of the image (`SquarePad`: the content sits
   centred in a `side` x `side` square; each of the G x G cells covers `side / G` pixels of it) — the same
   PIL resize the overlay uses — and keep only the original image's pixels (the padding is cut away, so
   the region never lies outside the image);
3. threshold at `fraction` of the range: a pixel is in when its normalised value >= `fraction`;
4. keep the connected component (8-neighbour) that holds the highest value inside the image.

The mask is returned at the original image's [H, W]; its box is [x0, y0, x1, y1] in pixel edges of the
original image (x0 <= x < x1, y0 <= y < y1: a one-pixel mask at (x, y) has box [x, y, x + 1, y + 1]).
A constant grid (nothing stands out) gives the whole image.

`DEFAULT_FRACTION` was chosen on the phantom validation split by mean IoU of the step masks against the
phantom's step masks (`vital eval grounding --fractions`, bench/results/regions-threshold.md).
Connectivity is a geodesic dilation from the peak (a vectorised breadth-first search) at a working
resolution of at most `MAX_WORK_SIDE` pixels per side of the padded square, mapped back to the original
pixels by nearest neighbour, so the threshold and connectivity of a very large image cost what a 256-pixel one does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from index_builder.encoder import SquarePad

DEFAULT_FRACTION = 0.75
"""Default threshold: a pixel belongs to the region when its normalised heatmap value is >= this."""
MAX_WORK_SIDE = 256
"""Side of the padded square the threshold and connectivity run at (at most; smaller images run at theirs)."""


class RegionError(ValueError):
    """A grid or image size the region rule cannot take."""


@dataclass
class Region:
    """One step's region on the original image."""

    mask: np.ndarray
    """bool [H, W]: the region on the image as the user sent it."""
    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1): tight box of `mask` in pixel edges (x1, y1 exclusive)."""
    peak: tuple[int, int]
    """(x, y): the original pixel of the highest heatmap value inside the image (the region holds it)."""
    fraction: float
    """The threshold used (fraction of the heatmap's range)."""


def check_fraction(fraction: float) -> float:
    """`fraction` as a float in (0, 1]; RegionError otherwise."""
    f = float(fraction)
    if not 0.0 < f <= 1.0:
        raise RegionError(f"region fraction must be in (0, 1], got {fraction}")
    return f


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a non-empty bool mask [H, W], end exclusive."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        raise RegionError("empty mask has no box")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def component(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """bool [h, w]: the 8-connected component of `mask` holding `seed` (row, col), by geodesic dilation."""
    out = np.zeros_like(mask, dtype=bool)
    if not mask[seed]:
        return out
    out[seed] = True
    while True:
        grown = out.copy()  # (h, w): out dilated by one 3 x 3 step
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        grown &= mask
        if np.array_equal(grown, out):
            return out
        out = grown


def _content_map(norm: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(up [work, work], rows [H], cols [W]): the normalised grid [G, G] upsampled onto the padded square at
    the working resolution, and the working-resolution row / column of each original row / column."""
    pad = SquarePad.of(height, width)
    work = min(pad.side, MAX_WORK_SIDE)
    up = Image.fromarray(norm.astype(np.float32)).resize((work, work), Image.Resampling.BILINEAR)
    up = np.asarray(up)  # (work, work) over the padded square
    scale = work / pad.side
    rows = np.minimum(((pad.top + np.arange(height) + 0.5) * scale).astype(np.int64), work - 1)  # (H,)
    cols = np.minimum(((pad.left + np.arange(width) + 0.5) * scale).astype(np.int64), work - 1)  # (W,)
    return up, rows, cols


def region_from_grid(grid: np.ndarray, height: int, width: int, fraction: float = DEFAULT_FRACTION) -> Region:
    """The region of a heatmap grid [G, G] on an original image of `height` x `width` pixels."""
    g = np.asarray(grid, dtype=np.float32)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] < 1:
        raise RegionError(f"heatmap grid must be square [G, G], got shape {g.shape}")
    if not np.isfinite(g).all():
        raise RegionError("heatmap grid contains NaN or infinite values")
    if height < 1 or width < 1:
        raise RegionError(f"image has no pixels ({width}x{height})")
    f = check_fraction(fraction)
    lo, hi = float(g.min()), float(g.max())
    if hi <= lo:  # nothing stands out: the whole image
        mask = np.ones((height, width), dtype=bool)
        return Region(mask, (0, 0, width, height), (width // 2, height // 2), f)
    up, rows, cols = _content_map((g - lo) / (hi - lo), height, width)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    content = up[r0:r1, c0:c1]  # (h', w'): the padded square's pixels that show the image
    flat = int(np.argmax(content))
    seed = (flat // content.shape[1], flat % content.shape[1])
    # the in-image peak is the content's max, >= fraction of the range unless the peak sat in the padding
    keep = component(content >= min(f, float(content[seed])), seed)  # (h', w')
    mask = keep[np.ix_(rows - r0, cols - c0)]  # (H, W): back to original pixels
    py = int(np.argmax(rows - r0 == seed[0]))
    px = int(np.argmax(cols - c0 == seed[1]))
    return Region(mask, tight_box(mask), (px, py), f)


def cell_box(row: int, col: int, grid: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the original pixels under encoder-grid cell (row, col), clipped to the image
    (empty, x0 == x1 or y0 == y1, for a cell wholly in the padding)."""
    pad = SquarePad.of(height, width)
    cell = pad.side / grid

    def span(i: int, offset: int, size: int) -> tuple[int, int]:
        lo = int(np.floor(i * cell)) - offset
        hi = int(np.ceil((i + 1) * cell)) - offset
        return min(max(lo, 0), size), min(max(hi, 0), size)

    (x0, x1), (y0, y1) = span(col, pad.left, width), span(row, pad.top, height)
    return x0, y0, x1, y1
