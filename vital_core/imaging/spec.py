"""The one parameter object of the imaging path (`ImagingSpec`), its limits, its error and its output."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

AXES = ("axial", "coronal", "sagittal")
"""Slice orientations of a volume; each names the RAS axis it is perpendicular to (z, y, x)."""

MIB = 1024 * 1024


class ImagingError(ValueError):
    """A file the imaging path refuses: `kind` says why (the server maps it to a 4xx status)."""

    STATUS = {"unreadable": 400, "too_large": 413, "unsupported": 415, "invalid": 422}
    CODES = {
        "unreadable": "unreadable_image",
        "too_large": "image_too_large",
        "unsupported": "unsupported_image",
        "invalid": "invalid_request",
    }

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        if kind not in self.STATUS:
            raise ValueError(f"unknown ImagingError kind {kind!r}")
        self.kind = kind
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status this refusal maps to (400, 413, 415 or 422)."""
        return self.STATUS[self.kind]

    @property
    def code(self) -> str:
        """The machine-readable error code."""
        return self.CODES[self.kind]


@dataclass(frozen=True)
class ImagingSpec:
    """How to turn a file into the model's image; the same object in training readers, eval and the server."""

    axis: str = "axial"
    """Slice orientation of a volume: axial (default), coronal or sagittal."""
    slice: int | None = None
    """Slice index along `axis` in canonical RAS voxel order (0 = the patient's left-most sagittal,
    posterior-most coronal, inferior-most axial slice); None = the middle slice."""
    frame: int | None = None
    """Frame of a multi-frame DICOM, or volume (4th dimension) of a 4-D NIfTI; None = 0."""
    window: str | None = None
    """A window preset name (`abdomen`, `lung`, `bone`, `brain`, `soft_tissue`) or `percentile`;
    None = automatic (the DICOM's own window, else the CT default preset for CT, else percentiles)."""
    window_center: float | None = None
    """Explicit window centre (level); needs `window_width`, overrides `window`."""
    window_width: float | None = None
    """Explicit window width (> 0); needs `window_center`."""

    def __post_init__(self) -> None:
        from vital_core.imaging.windows import WINDOW_NAMES

        if self.axis not in AXES:
            raise ImagingError("invalid", f"axis: must be one of {', '.join(AXES)}, got {self.axis!r}")
        for name in ("slice", "frame"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
                raise ImagingError("invalid", f"{name}: must be a non-negative integer, got {v!r}")
        if self.window is not None and self.window not in WINDOW_NAMES:
            raise ImagingError(
                "invalid", f"window: must be one of {', '.join(WINDOW_NAMES)}, got {self.window!r}"
            )
        c, w = self.window_center, self.window_width
        if (c is None) != (w is None):
            raise ImagingError("invalid", "window_center and window_width must be given together")
        if c is not None and not (math.isfinite(c) and math.isfinite(w) and w > 0):
            raise ImagingError("invalid", "window_center must be finite and window_width finite and > 0")

    def to_fields(self) -> dict[str, str]:
        """The non-default fields as strings (for record provenance and CSV columns)."""
        out = {}
        for name in ("axis", "slice", "frame", "window", "window_center", "window_width"):
            v = getattr(self, name)
            if v is not None and not (name == "axis" and v == "axial"):
                out[name] = str(v)
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> ImagingSpec:
        """Build a spec from string fields (CSV columns, record extras); empty strings mean default."""

        def get(name: str, cast):
            raw = (fields.get(name) or "").strip()
            if not raw:
                return None
            try:
                return cast(raw)
            except ValueError as exc:
                raise ImagingError("invalid", f"{name}: cannot read {raw!r}") from exc

        return cls(
            axis=get("axis", str) or "axial",
            slice=get("slice", int),
            frame=get("frame", int),
            window=get("window", str),
            window_center=get("window_center", float),
            window_width=get("window_width", float),
        )


@dataclass(frozen=True)
class ImagingLimits:
    """Sizes checked before anything is allocated; beyond them a file is refused (413)."""

    max_pixels: int = 40_000_000
    """Largest output image (one frame / slice / raster), in pixels."""
    max_decoded_bytes: int = 128 * MIB
    """Largest single decoded buffer: one frame (rows × cols × samples × bytes), one slice, one raster
    in the decoder's memory layout."""
    max_stream_bytes: int = 512 * MIB
    """Largest amount a file may expand to or declare: inflated deflate/gzip streams, all frames of a DICOM,
    a NIfTI data block up to the requested volume."""
    max_instances: int = 1000
    """Most DICOM instances in one series (a zip or several parts); checked before any is parsed."""
    max_series_bytes: int = 1024 * MIB
    """Largest total size of a series' instance files (as sent, before decoding); checked first."""
    max_volume_bytes: int = 512 * MIB
    """Largest assembled volume (slices × rows × columns × bytes per voxel), checked from the headers
    before any pixel is decoded."""

    def __post_init__(self) -> None:
        for name in (
            "max_pixels",
            "max_decoded_bytes",
            "max_stream_bytes",
            "max_instances",
            "max_series_bytes",
            "max_volume_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")

    @classmethod
    def local(cls) -> ImagingLimits:
        """Generous limits for trusted local datasets (training readers): large volumes are fine."""
        return cls(
            max_pixels=400_000_000,
            max_decoded_bytes=4096 * MIB,
            max_stream_bytes=1 << 40,
            max_instances=100_000,
            max_series_bytes=1 << 40,
            max_volume_bytes=1 << 36,
        )

    def check_pixels(self, width: int, height: int, what: str) -> None:
        """413 when a width × height output exceeds max_pixels."""
        if width * height > self.max_pixels:
            raise ImagingError(
                "too_large",
                f"{what} declares {width}x{height} = {width * height} pixels; the limit is {self.max_pixels}",
            )

    def check_decoded(self, nbytes: int, what: str) -> None:
        """413 when one decoded buffer would exceed max_decoded_bytes."""
        if nbytes > self.max_decoded_bytes:
            raise ImagingError(
                "too_large",
                f"{what} would decode to {nbytes} bytes; the limit is {self.max_decoded_bytes}",
            )

    def check_stream(self, nbytes: int, what: str) -> None:
        """413 when a file declares more than max_stream_bytes."""
        if nbytes > self.max_stream_bytes:
            raise ImagingError(
                "too_large", f"{what} declares {nbytes} bytes; the limit is {self.max_stream_bytes}"
            )


@dataclass
class ModelImage:
    """The model's image: uint8 pixels, [H, W] (grey) or [H, W, 3] (RGB), and how they were made."""

    pixels: np.ndarray
    format: str
    """png, jpeg, gif, tiff, bmp, webp, dicom or nifti."""
    info: dict[str, str] = field(default_factory=dict)
    """What was applied: window, axis, slice, frame, modality, ..."""

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    def to_pil(self):  # PIL.Image.Image
        """A PIL image (mode L for grey, RGB for colour); the processor converts L to RGB itself."""
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(self.pixels))  # uint8 [H, W] → L, [H, W, 3] → RGB
