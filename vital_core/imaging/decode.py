"""The entry point: bytes or a path → the model's image, whatever the format (detected from the bytes)."""

from __future__ import annotations

import os
from pathlib import Path

from vital_core.imaging.dicom import decode_dicom, is_dicom
from vital_core.imaging.nifti import decode_nifti, is_nifti
from vital_core.imaging.raster import decode_raster, sniff_raster
from vital_core.imaging.spec import ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.streams import ByteStream, InflateStream, open_stream

SUPPORTED = "PNG, JPEG, GIF, TIFF, BMP, WebP, DICOM or NIfTI (.nii/.nii.gz)"


def sniff(head: bytes) -> str | None:
    """The format from the leading bytes: a raster name, dicom, nifti, gzip, or None."""
    if is_dicom(head):
        return "dicom"
    if bytes(head[:2]) == b"\x1f\x8b":
        return "gzip"
    if is_nifti(head):
        return "nifti"
    return sniff_raster(head)


def load_model_image(
    source: bytes | bytearray | memoryview | str | os.PathLike,
    spec: ImagingSpec | None = None,
    limits: ImagingLimits | None = None,
) -> ModelImage:
    """Decode a file (bytes, or a path on disk) into the model's image; ImagingError for what is refused.

    The same call, with the same `spec`, is what the server, the training readers and `vital eval` use.
    Paths are local, trusted data: without explicit `limits` they get `ImagingLimits.local()`.
    """
    spec = spec or ImagingSpec()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        limits = limits or ImagingLimits.local()
        with open(path, "rb") as f:
            head = f.read(544)
            f.seek(0)
            if sniff(head) in ("gzip", "nifti"):  # volumes are streamed from the file, not read whole
                return _volume(open_stream(f, limits.max_stream_bytes, path.name), spec, limits)
            data = f.read()
        return decode_bytes(data, spec, limits)
    return decode_bytes(source, spec, limits or ImagingLimits())


def decode_bytes(
    data: bytes | bytearray | memoryview, spec: ImagingSpec, limits: ImagingLimits
) -> ModelImage:
    """Decode in-memory bytes (request bodies)."""
    if not data:
        raise ImagingError("unreadable", "the image is empty")
    kind = sniff(data[:544])
    if kind == "dicom":
        return decode_dicom(bytes(data), spec, limits)
    if kind in ("gzip", "nifti"):
        return _volume(open_stream(data, limits.max_stream_bytes, "volume"), spec, limits)
    if kind is not None:
        return decode_raster(bytes(data), spec, limits)
    raise ImagingError("unsupported", f"unsupported image format; send {SUPPORTED}")


def _volume(stream: ByteStream, spec: ImagingSpec, limits: ImagingLimits) -> ModelImage:
    head = bytes(stream.read(544))
    stream.seek(0)
    if isinstance(stream, InflateStream) and not stream.ended_cleanly and len(head) < 544:
        raise ImagingError("unreadable", "truncated or corrupt gzip data")
    if not is_nifti(head):
        what = (
            "gzip data that is not a NIfTI volume" if stream.what.startswith("gzip") else "not a NIfTI volume"
        )
        raise ImagingError("unsupported", f"{what}; send {SUPPORTED}")
    return decode_nifti(stream, spec, limits)
