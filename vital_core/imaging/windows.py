"""Intensity → 8-bit: named CT window presets, explicit windows, percentiles, and the automatic choice.

One rule for every source (DICOM, NIfTI, 16-bit rasters), in this order:
1. the request's explicit centre/width; 2. the request's preset (or `percentile`);
3. the DICOM's own VOI LUT or window; 4. CT (DICOM Modality CT, or — without a modality — a minimum at
or below `CT_MIN_HU`) gets the default preset `abdomen`; 5. everything else (MR, PET, US, ...) is
scaled between percentiles of its non-zero pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "soft_tissue": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
"""CT window presets: name -> (centre L, width W) in Hounsfield units; 0..255 covers [L - W/2, L + W/2]."""

DEFAULT_CT_PRESET = "abdomen"
WINDOW_NAMES: tuple[str, ...] = (*WINDOW_PRESETS, "percentile")
PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Non-CT intensities are scaled between these percentiles of the image's finite non-zero pixels."""
CT_MIN_HU = -500.0
"""A single-channel image without a modality whose minimum is at or below this is read as CT (air is
about -1000 HU; MR, PET and raster intensities are not negative)."""
PERCENTILE_SAMPLE = 4_000_000
"""Images larger than this are subsampled on a regular grid for the percentiles (same grid every time)."""
_ROWS_PER_CHUNK_PIXELS = 1 << 20


@dataclass(frozen=True)
class Window:
    """A resolved intensity mapping: linear/sigmoid window (centre, width) or a [lo, hi] range."""

    name: str
    """Preset name, `custom`, `dicom`, `dicom_voi_lut` or `percentile` (what the model saw)."""
    lo: float
    hi: float
    sigmoid: bool = False

    @classmethod
    def centred(cls, name: str, centre: float, width: float, sigmoid: bool = False) -> Window:
        """A window from centre and width (0..255 covers [c - w/2, c + w/2])."""
        return cls(name, centre - width / 2.0, centre + width / 2.0, sigmoid)


def preset_window(name: str) -> Window:
    """The Window of a named CT preset."""
    centre, width = WINDOW_PRESETS[name]
    return Window.centred(name, centre, width)


def percentile_range(
    values: np.ndarray, percentiles: tuple[float, float] = PERCENTILES
) -> tuple[float, float]:
    """(lo, hi) percentiles of the finite non-zero values (all finite values if too few differ)."""
    sample = values
    if values.ndim == 2 and values.size > PERCENTILE_SAMPLE:
        step = math.ceil(math.sqrt(values.size / PERCENTILE_SAMPLE))
        sample = values[::step, ::step]
    sample = np.asarray(sample)
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample.ravel()
    if finite.size == 0:
        return 0.0, 1.0
    nonzero = finite[finite != 0]
    if nonzero.size:
        lo, hi = (float(v) for v in np.percentile(nonzero, percentiles))
        if hi > lo:
            return lo, hi
    lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def to_uint8(values: np.ndarray, window: Window) -> np.ndarray:
    """Map values through `window` onto 0..255 (clipped, NaN → 0); works in row chunks (no full float copy)."""
    values = np.asarray(values)
    out = np.empty(values.shape, dtype=np.uint8)
    if values.size == 0:
        return out
    rows = max(1, _ROWS_PER_CHUNK_PIXELS // max(1, int(np.prod(values.shape[1:]))))
    span = window.hi - window.lo
    for r0 in range(0, values.shape[0], rows):
        block = values[r0 : r0 + rows].astype(np.float64)
        if window.sigmoid:  # DICOM PS3.3 C.11.2.1.3.1, scaled to 0..1
            centre, width = (window.lo + window.hi) / 2.0, span
            with np.errstate(over="ignore"):
                block = 1.0 / (1.0 + np.exp(-4.0 * (block - centre) / width))
        else:
            block = (block - window.lo) / span
        block = np.floor(block * 255.0 + 0.5)
        np.nan_to_num(block, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(block, 0, 255, out=block)
        out[r0 : r0 + rows] = block
    return out


def looks_like_ct(values: np.ndarray, modality: str | None) -> bool:
    """CT by DICOM modality; without one, by a minimum at or below CT_MIN_HU."""
    if modality:
        return modality.strip().upper() == "CT"
    if values.dtype.kind == "u" or values.size == 0:
        return False
    with np.errstate(invalid="ignore"):
        low = np.nanmin(values) if values.dtype.kind == "f" else values.min()
    return bool(np.isfinite(low) and low <= CT_MIN_HU)


def choose_window(
    values: np.ndarray,
    spec,
    modality: str | None = None,
    file_window: Window | None = None,
) -> Window:
    """The window the rule in the module docstring picks for these values and this ImagingSpec."""
    if spec.window_center is not None:
        return Window.centred("custom", spec.window_center, spec.window_width)
    if spec.window == "percentile":
        return Window("percentile", *percentile_range(values))
    if spec.window is not None:
        return preset_window(spec.window)
    if file_window is not None:
        return file_window
    if looks_like_ct(values, modality):
        return preset_window(DEFAULT_CT_PRESET)
    return Window("percentile", *percentile_range(values))


def render_grey(
    values: np.ndarray,
    spec,  # ImagingSpec
    modality: str | None = None,
    file_window: Window | None = None,
    invert: bool = False,
) -> tuple[np.ndarray, dict[str, str]]:
    """Single-channel values [H, W] → uint8 [H, W] and what was applied (window name and range)."""
    window = choose_window(values, spec, modality, file_window)
    out = to_uint8(values, window)
    if invert:  # MONOCHROME1: low values are bright
        np.subtract(255, out, out=out)
    info = {"window": window.name, "window_range": f"{window.lo:g}..{window.hi:g}"}
    if invert:
        info["inverted"] = "MONOCHROME1"
    return out, info
