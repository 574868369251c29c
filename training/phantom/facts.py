"""Facts about a target read off its binary mask: image-space region, shape, size, relation to a neighbour.

These functions are the single source of every geometric word in the phantom's answers and reasoning,
and the tests recompute them from the saved mask PNGs. Wording is image-space only (left/right/upper/
lower part of the image), never patient-space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE_THRESHOLDS = (0.02, 0.08)
"""Area fractions separating small / medium / large."""
ELONGATION_THRESHOLDS = (1.3, 2.1)
"""Moment axis ratios separating round / oval / elongated."""
IRREGULARITY_THRESHOLD = 0.2
"""Fraction of the area differing from the moment-equivalent ellipse above which a shape is irregular."""


@dataclass(frozen=True)
class MaskFacts:
    """Geometry of one mask."""

    cy: float
    """Centroid row as a fraction of the height (0 = top)."""
    cx: float
    """Centroid column as a fraction of the width (0 = left)."""
    horizontal: str
    """left / center / right (thirds of the width)."""
    vertical: str
    """upper / middle / lower (thirds of the height)."""
    area: float
    """Fraction of the image covered."""
    size: str
    """small / medium / large."""
    shape: str
    """round / oval / elongated / irregular."""

    @property
    def region(self) -> str:
        """Nine-way image-space region as used in "in the {region} part of the image"."""
        return region_phrase(self.vertical, self.horizontal)

    @property
    def area_text(self) -> str:
        """Area as a percentage phrase ("about 4%", "under 1%")."""
        pct = self.area * 100
        return "under 1%" if pct < 1 else f"about {pct:.0f}%"


def region_phrase(vertical: str, horizontal: str) -> str:
    """Nine-way phrase: ("upper", "left") -> "upper left", ("middle", "center") -> "central"."""
    if vertical == "middle":
        return "central" if horizontal == "center" else horizontal
    return vertical if horizontal == "center" else f"{vertical} {horizontal}"


def third(fraction: float, names: tuple[str, str, str]) -> str:
    """Which third of [0, 1] a coordinate falls in."""
    return names[0] if fraction < 1 / 3 else names[2] if fraction > 2 / 3 else names[1]


def mask_facts(mask: np.ndarray) -> MaskFacts:
    """Region, size and shape of a non-empty bool mask [H, W]."""
    if not mask.any():
        raise ValueError("empty mask")
    cy, cx = centroid(mask)
    area = float(mask.sum()) / mask.size
    size = "small" if area < SIZE_THRESHOLDS[0] else "medium" if area < SIZE_THRESHOLDS[1] else "large"
    return MaskFacts(
        cy=float(cy),
        cx=float(cx),
        horizontal=third(cx, ("left", "center", "right")),
        vertical=third(cy, ("upper", "middle", "lower")),
        area=float(area),
        size=size,
        shape=shape_class(mask),
    )


def shape_class(mask: np.ndarray) -> str:
    """elongated if the moments' axis ratio is >= 2.1; else irregular if far from its ellipse; else round/oval."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return "round"
    my, mx = ys.mean(), xs.mean()
    dy, dx = ys - my, xs - mx
    # + 1/12: the variance of a pixel's own footprint
    cov = np.array([[dy @ dy, dy @ dx], [dy @ dx, dx @ dx]]) / len(ys) + np.eye(2) / 12.0
    evals = np.linalg.eigvalsh(cov)
    ratio = float(np.sqrt(evals[1] / max(evals[0], 1e-9)))
    # A uniform ellipse with these moments is {d : d^T cov^-1 d <= 4}; compare on a box holding both.
    reach = 2.0 * np.sqrt(evals[1]) + 2
    y0, y1 = (
        int(max(min(ys.min(), my - reach), 0)),
        int(min(max(ys.max() + 1, my + reach + 1), mask.shape[0])),
    )
    x0, x1 = (
        int(max(min(xs.min(), mx - reach), 0)),
        int(min(max(xs.max() + 1, mx + reach + 1), mask.shape[1])),
    )
    yy, xx = np.mgrid[y0:y1, x0:x1]
    inv = np.linalg.inv(cov)
    ey, ex = yy - my, xx - mx
    maha = inv[0, 0] * ey * ey + 2 * inv[0, 1] * ey * ex + inv[1, 1] * ex * ex
    irregularity = float(np.logical_xor(maha <= 4.0, mask[y0:y1, x0:x1]).sum() / len(ys))
    lo, hi = ELONGATION_THRESHOLDS
    if ratio >= hi:  # thin structures (vessels, bands, tubes) read as elongated even when curved
        return "elongated"
    if irregularity > IRREGULARITY_THRESHOLD:
        return "irregular"
    return "round" if ratio < lo else "oval"


def centroid(mask: np.ndarray) -> tuple[float, float]:
    """Centroid (row, column) of a non-empty mask, as fractions of height and width."""
    ys, xs = np.nonzero(mask)
    return float((ys.mean() + 0.5) / mask.shape[0]), float((xs.mean() + 0.5) / mask.shape[1])


def relation(mask: np.ndarray, other: np.ndarray, other_name: str) -> str:
    """Image-space relation of `mask` to `other` as a predicate ("lies within the X", "lies above the X")."""
    inter = float((mask & other).sum())
    if inter >= 0.9 * mask.sum():
        return f"lies within the {other_name}"
    if inter >= 0.9 * other.sum():
        return f"surrounds the {other_name}"
    (ay, ax), (by, bx) = centroid(mask), centroid(other)
    dy, dx = by - ay, bx - ax
    if abs(dx) >= abs(dy):
        return f"lies to the {'left' if dx > 0 else 'right'} of the {other_name}"
    return f"lies {'above' if dy > 0 else 'below'} the {other_name}"


def nearest(mask: np.ndarray, others: list[tuple[str, np.ndarray]]) -> tuple[str, np.ndarray] | None:
    """The other object whose centroid is closest to the mask's centroid (a host it lies within first)."""
    if not others:
        return None
    area = mask.sum()
    for name, m in others:
        if (mask & m).sum() >= 0.9 * area:
            return name, m
    my, mx = centroid(mask)

    def dist(item: tuple[str, np.ndarray]) -> float:
        cy, cx = centroid(item[1])
        return (cy - my) ** 2 + (cx - mx) ** 2

    return min(others, key=dist)
