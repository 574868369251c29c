"""Intensity windowing to 8-bit (CT by a per-target window table, MRI by percentiles) and display orientation.

All windows live in `CT_WINDOWS`; `ct_window_for` picks one by keyword in the target (then the site).
Slices are shown in the radiological display convention: anterior at the top, the patient's right on
the image's left (see `axial_display`).
"""

from __future__ import annotations

import numpy as np

CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (400.0, 40.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "mediastinum": (350.0, 50.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
"""Window name -> (width W, level L) in Hounsfield units; the 8-bit range covers [L - W/2, L + W/2]."""

_WINDOW_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("lung", "lung"),
    ("pulmonary", "lung"),
    ("nodule", "lung"),
    ("hepatic vessel", "soft_tissue"),
    ("liver", "liver"),
    ("hepatic", "liver"),
    ("heart", "mediastinum"),
    ("atrium", "mediastinum"),
    ("bone", "bone"),
    ("vertebra", "bone"),
    ("brain", "brain"),
)
"""Keyword (in the target, then in the site) -> window name; first hit wins, else `soft_tissue`."""

MRI_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""MRI is scaled per volume between these percentiles of its non-zero voxels."""


def ct_window_for(target: str, site: str = "") -> str:
    """Name of the CT window for a target (keywords in the target first, then the site)."""
    for text in (target.lower(), site.lower()):
        for keyword, window in _WINDOW_KEYWORDS:
            if keyword in text:
                return window
    return "soft_tissue"


def apply_window(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map [level - width/2, level + width/2] linearly onto 0..255 (clipped) as uint8."""
    lo = level - width / 2.0
    scaled = (values.astype(np.float32) - lo) / float(width)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def ct_to_uint8(values: np.ndarray, window: str) -> np.ndarray:
    """Window CT values (HU) with a named window from `CT_WINDOWS`."""
    width, level = CT_WINDOWS[window]
    return apply_window(values, width, level)


def percentile_range(
    volume: np.ndarray, percentiles: tuple[float, float] = MRI_PERCENTILES
) -> tuple[float, float]:
    """(low, high) intensity percentiles of a volume's non-zero voxels (all voxels if it has none)."""
    nonzero = volume[volume != 0]
    data = nonzero if nonzero.size else volume.ravel()
    lo, hi = np.percentile(data, percentiles)
    return float(lo), float(max(hi, lo + 1e-6))


def scale_to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto 0..255 (clipped) as uint8."""
    scaled = (values.astype(np.float32) - lo) / (hi - lo)
    return np.clip(np.round(scaled * 255.0), 0, 255).astype(np.uint8)


def axial_display(slice_xy: np.ndarray) -> np.ndarray:
    """An axial slice of an RAS+ volume, indexed [x, y], as a [row, column] display image.

    Rows run anterior (top) to posterior; columns run from the patient's right (image left) to the
    patient's left (image right): the radiological convention used by PACS viewers.
    """
    return np.ascontiguousarray(slice_xy.T[::-1, ::-1])
