"""The entry point: bytes or a path → the model's image, whatever the format (detected from the bytes)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vital_core.imaging.archive import is_zip, read_zip
from vital_core.imaging.dicom import decode_dicom, is_dicom
from vital_core.imaging.nifti import decode_nifti, is_nifti
from vital_core.imaging.raster import decode_raster, sniff_raster
from vital_core.imaging.series import decode_series
from vital_core.imaging.spec import ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.streams import ByteStream, InflateStream, open_stream

SUPPORTED = "PNG, JPEG, GIF, TIFF, BMP, WebP, DICOM, a zip of a DICOM series, or NIfTI (.nii/.nii.gz)"


def sniff(head: bytes) -> str | None:
    """The format from the leading bytes: a raster name, dicom, nifti, gzip, zip, or None."""
    if is_dicom(head):
        return "dicom"
    if bytes(head[:2]) == b"\x1f\x8b":
        return "gzip"
    if is_zip(head):
        return "zip"
    if is_nifti(head):
        return "nifti"
    return sniff_raster(head)


def load_model_image(
    source: bytes | bytearray | memoryview | str | os.PathLike | Sequence,
    spec: ImagingSpec | None = None,
    limits: ImagingLimits | None = None,
) -> ModelImage:
    """Decode a file (bytes, or a path on disk) into the model's image; ImagingError for what is refused.

    A DICOM series is a directory of instances or a list of instance files (paths or bytes): it is
    assembled into a volume (`series.py`) and viewed like a NIfTI. The same call, with the same `spec`, is
    what the server, the training readers and `vital eval` use. Paths are local, trusted data: without
    explicit `limits` they get `ImagingLimits.local()`.
    """
    spec = spec or ImagingSpec()
    if isinstance(source, (list, tuple)):
        limits = limits or (
            ImagingLimits.local()
            if any(isinstance(s, (str, os.PathLike)) for s in source)
            else ImagingLimits()
        )
        return decode_series([_named(s) for s in source], spec, limits)
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        files = series_files(source)
        return decode_series([_named(p) for p in files], spec, limits or ImagingLimits.local())
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


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The instance files of a DICOM series folder (recursive, sorted; hidden files, macOS forks and
    DICOMDIR left out): what `load_model_image(folder)` assembles into one volume."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and _instance_name(p.name))


def _instance_name(name: str) -> bool:
    """Files of a series folder / zip that are not instances: hidden files, macOS forks, DICOMDIR."""
    return not (name.startswith(".") or name.upper() == "DICOMDIR" or name.startswith("__MACOSX"))


def _named(source) -> bytes | tuple[str, bytes]:
    """An instance as (file name, bytes) when it has a name, else bytes (numbered by the series)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name, Path(source).read_bytes()
    return source if isinstance(source, tuple) else bytes(source)


def decode_bytes(
    data: bytes | bytearray | memoryview, spec: ImagingSpec, limits: ImagingLimits
) -> ModelImage:
    """Decode in-memory bytes (request bodies)."""
    if not data:
        raise ImagingError("unreadable", "the image is empty")
    kind = sniff(data[:544])
    if kind == "zip":
        return _zip(data, spec, limits)
    if kind == "dicom":
        return decode_dicom(bytes(data), spec, limits)
    if kind in ("gzip", "nifti"):
        return _volume(open_stream(data, limits.max_stream_bytes, "volume"), spec, limits)
    if kind is not None:
        return decode_raster(bytes(data), spec, limits)
    raise ImagingError("unsupported", f"unsupported image format; send {SUPPORTED}")


def _zip(data: bytes | bytearray | memoryview, spec: ImagingSpec, limits: ImagingLimits) -> ModelImage:
    """A zip: a DICOM series (one volume), or the one file it holds."""
    members = read_zip(data, limits)
    if len(members) == 1 and not is_zip(members[0][1][:4]):
        return decode_bytes(members[0][1], spec, limits)
    return decode_series(members, spec, limits)


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
