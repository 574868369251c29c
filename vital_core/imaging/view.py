"""Square display pixels: the one resampling rule for 2-D views of volumes (NIfTI, DICOM series).

A view's rows and columns can have different physical spacing: a coronal or sagittal view of a CT with
0.7 × 0.7 mm pixels and 5 mm slices has 5 mm rows and 0.7 mm columns, and shown one row per slice the
anatomy is squashed about 7×. The rule, the same for training readers and the server:

* spacing comes from the volume's geometry (NIfTI: the length of each column of the affine; a DICOM
  series: Pixel Spacing and the distance between slice positions); a spacing that is missing, zero or not
  finite counts as "unknown" and the view is shown as stored;
* the **coarser axis is upsampled to the finer spacing**; the finer axis is kept as stored (nothing is
  downsampled, no detail is lost): `m = round(n · coarse / fine)` samples along the coarse axis, and when
  `m == n` (spacings within half a pixel over the view) nothing is resampled;
* sample positions are pixel-centre aligned, `x = (i + 0.5) · n / m − 0.5`, clamped to the ends (PIL's and
  torch's `align_corners=False`), so the view keeps its physical extent and centre;
* images are interpolated **linearly** along that axis (bilinear in 2-D, the other axis being untouched),
  before windowing; label volumes use **nearest neighbour** on the same grid, so masks keep their label
  values and stay aligned with their images;
* the output size is checked against `ImagingLimits` (pixels and decoded bytes) **before** anything is
  allocated: 413 `image_too_large` naming the sizes.
"""

from __future__ import annotations

import math

import numpy as np

from vital_core.imaging.spec import ImagingLimits

OUT_BYTES = 8
"""Bytes per output pixel of an interpolated image view (float64, the windowing's working type)."""


def _known(mm: float | None) -> bool:
    return mm is not None and math.isfinite(mm) and mm > 0


def square_shape(shape: tuple[int, int], spacing: tuple[float | None, float | None]) -> tuple[int, int]:
    """(rows, columns) of a view of `shape` with (row, column) `spacing` in mm once its pixels are square."""
    rows, cols = int(shape[0]), int(shape[1])
    row_mm, col_mm = spacing
    if not (_known(row_mm) and _known(col_mm)) or row_mm == col_mm:
        return rows, cols
    if row_mm > col_mm:
        return max(rows, round(rows * row_mm / col_mm)), cols
    return rows, max(cols, round(cols * col_mm / row_mm))


def check_view(
    shape: tuple[int, int],
    spacing: tuple[float | None, float | None],
    limits: ImagingLimits,
    what: str,
    itemsize: int = OUT_BYTES,
) -> tuple[int, int]:
    """The square-pixel shape of a view, refused (413) when it exceeds `limits`; call before allocating."""
    rows, cols = square_shape(shape, spacing)
    if (rows, cols) != tuple(shape):
        what = f"{what} resampled to square pixels ({spacing[0]:g} x {spacing[1]:g} mm)"
    limits.check_pixels(cols, rows, what)
    limits.check_decoded(rows * cols * itemsize, what)
    return rows, cols


def _positions(n: int, m: int) -> np.ndarray:
    """Source coordinates of m pixel-centre-aligned samples over n stored pixels, clamped to [0, n - 1]."""
    x = (np.arange(m, dtype=np.float64) + 0.5) * (n / m) - 0.5
    return np.clip(x, 0.0, n - 1.0)


def _resample_axis(values: np.ndarray, m: int, axis: int, labels: bool) -> np.ndarray:
    n = values.shape[axis]
    x = _positions(n, m)
    if labels:  # nearest neighbour: the stored pixel whose extent contains the sample centre
        return np.take(values, np.minimum(np.floor(x + 0.5).astype(np.intp), n - 1), axis=axis)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    frac = (x - lo).reshape((-1, 1) if axis == 0 else (1, -1))
    out = np.take(values, lo, axis=axis).astype(np.float64)
    out *= 1.0 - frac
    out += np.take(values, hi, axis=axis) * frac
    return out


def square_pixels(
    values: np.ndarray,
    spacing: tuple[float | None, float | None],
    limits: ImagingLimits,
    *,
    labels: bool = False,
    what: str = "view",
) -> np.ndarray:
    """A 2-D view [H, W] with (row, column) `spacing` in mm → the same view with square pixels (module rule).

    Args:
        values: the view in display orientation, scaled values (not yet windowed) or labels.
        spacing: (row spacing, column spacing) in mm; None / 0 / non-finite = unknown (returned as is).
        limits: checked for the output size before it is allocated (ImagingError 413).
        labels: nearest neighbour (label values kept) instead of linear interpolation.
        what: names the view in a refusal.
    """
    shape = (int(values.shape[0]), int(values.shape[1]))
    itemsize = values.dtype.itemsize if labels else OUT_BYTES
    rows, cols = check_view(shape, spacing, limits, what, itemsize)
    if rows != shape[0]:
        return _resample_axis(values, rows, 0, labels)
    if cols != shape[1]:
        return _resample_axis(values, cols, 1, labels)
    return values


__all__ = ["check_view", "square_pixels", "square_shape"]
