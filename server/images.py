"""Request bytes → the model's image: a thin adapter over `vital_core.imaging` that speaks HTTP errors.

Decoding, orientation, windows and size limits all live in `vital_core.imaging` (the same call the
training readers and `vital eval` make); this module only maps its refusals to 400/413/415/422.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from server.errors import APIError
from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, decode_bytes, decode_series, sniff

__all__ = ["DecodedImage", "decode_image", "limits_from", "sniff", "spec_from"]


@dataclass
class DecodedImage:
    """An image ready for the model, and what it came from."""

    image: Image.Image  # mode L (grey) or RGB
    format: str  # png, jpeg, gif, tiff, bmp, webp, dicom, nifti
    width: int
    height: int
    info: dict[str, str] = field(default_factory=dict)  # window, axis, slice, frame, ...


def as_api_error(exc: ImagingError) -> APIError:
    """The HTTP error of an imaging refusal."""
    return APIError(exc.status, exc.message, exc.code)


def spec_from(**fields) -> ImagingSpec:
    """An ImagingSpec from request fields (None = default); 422 for an invalid combination."""
    try:
        return ImagingSpec(**{k: v for k, v in fields.items() if v is not None})
    except ImagingError as exc:
        raise as_api_error(exc) from exc


def limits_from(settings) -> ImagingLimits:  # server.settings.Settings
    """The decoding limits of a deployment (VITAL_MAX_PIXELS, _DECODED_BYTES, _STREAM_BYTES, _INSTANCES,
    _SERIES_BYTES, _VOLUME_BYTES)."""
    default = ImagingLimits()
    names = ("max_decoded_bytes", "max_stream_bytes", "max_instances", "max_series_bytes", "max_volume_bytes")
    return ImagingLimits(
        max_pixels=settings.max_pixels, **{n: getattr(settings, n, getattr(default, n)) for n in names}
    )


def decode_image(
    data: bytes | list[bytes] | list[tuple[str, bytes]],
    *,
    max_pixels: int | None = None,
    spec: ImagingSpec | None = None,
    limits: ImagingLimits | None = None,
    frame: int | None = None,
    slice_index: int | None = None,
) -> DecodedImage:
    """Decode request bytes (a list: the instances of one DICOM series) into the model's image; APIError
    400/413/415/422 on bad input."""
    if spec is None:
        spec = spec_from(frame=frame, slice=slice_index)
    if limits is None:
        limits = ImagingLimits() if max_pixels is None else ImagingLimits(max_pixels=max_pixels)
    try:
        out = (
            decode_series(data, spec, limits) if isinstance(data, list) else decode_bytes(data, spec, limits)
        )
    except ImagingError as exc:
        raise as_api_error(exc) from exc
    except MemoryError as exc:  # limits should make this unreachable; never a 500 for one file
        raise APIError(413, "image too large to decode in this server's memory", "image_too_large") from exc
    return DecodedImage(out.to_pil(), out.format, out.width, out.height, out.info)
