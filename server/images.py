"""Request images → RGB PIL images: PNG, JPEG, DICOM, NIfTI, with size checks before decoding.

The format is detected from the bytes (magic numbers), not from names or declared types. The
declared pixel count is checked before any pixel is decoded: a 24 KB PNG can declare 14000×14000.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server.errors import APIError


@dataclass
class DecodedImage:
    """An image ready for the model, and what it came from."""

    image: Image.Image
    format: str  # png, jpeg, dicom, nifti
    width: int
    height: int


def sniff(data: bytes) -> str | None:
    """The image format from its leading bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    return None


def decode_image(
    data: bytes, *, max_pixels: int, frame: int | None = None, slice_index: int | None = None
) -> DecodedImage:
    """Decode request bytes into an RGB image; APIError 400/413/415/422 on bad input."""
    if not data:
        raise APIError(400, "the image is empty", "unreadable_image")
    kind = sniff(data)
    if kind == "gzip":
        data = _gunzip(data, limit=max(64 * 1024 * 1024, max_pixels * 8 + 1024))
        kind = "nifti" if sniff(data) == "nifti" else None
        if kind is None:
            raise APIError(
                415,
                "gzip data that is not a NIfTI volume; send PNG, JPEG, DICOM or NIfTI",
                "unsupported_image",
            )
    if kind is None:
        raise APIError(
            415,
            "unsupported image format; send PNG, JPEG, DICOM or NIfTI (.nii/.nii.gz)",
            "unsupported_image",
        )
    if kind in ("png", "jpeg"):
        image = _decode_pil(data, max_pixels)
    elif kind == "dicom":
        image = _decode_dicom(data, max_pixels, frame)
    else:
        image = _decode_nifti(data, max_pixels, slice_index)
    return DecodedImage(image=image, format=kind, width=image.width, height=image.height)


def _too_large(w: int, h: int, max_pixels: int) -> APIError:
    return APIError(
        413, f"image declares {w}x{h} = {w * h} pixels; the limit is {max_pixels}", "image_too_large"
    )


def _decode_pil(data: bytes, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as exc:  # Pillow refuses absurd headers at open time
        raise APIError(
            413, f"image declares too many pixels ({exc}); the limit is {max_pixels}", "image_too_large"
        ) from exc
    except Exception as exc:
        raise APIError(400, f"unreadable image: {exc}", "unreadable_image") from exc
    w, h = im.size
    if w * h > max_pixels:
        raise _too_large(w, h, max_pixels)
    if w < 1 or h < 1:
        raise APIError(400, "image has no pixels", "unreadable_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
        return _to_rgb(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _too_large(w, h, max_pixels) from exc
    except Exception as exc:
        raise APIError(400, f"unreadable image: {exc}", "unreadable_image") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(to_uint8(np.asarray(im, dtype=np.float64))).convert("RGB")
    return im.convert("RGB")


def to_uint8(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Linearly scale `arr` from [lo, hi] (default its min/max) to 0..255, clipping outside."""
    arr = np.asarray(arr, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    lo = float(finite.min()) if lo is None else lo
    hi = float(finite.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    out = (np.nan_to_num(arr, nan=lo) - lo) / (hi - lo)
    return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _decode_dicom(data: bytes, max_pixels: int, frame: int | None) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise APIError(400, f"unreadable DICOM: {exc}", "unreadable_image") from exc
    rows, cols = int(getattr(head, "Rows", 0) or 0), int(getattr(head, "Columns", 0) or 0)
    frames = int(getattr(head, "NumberOfFrames", 1) or 1)
    if rows < 1 or cols < 1:
        raise APIError(400, "DICOM has no image (Rows/Columns missing)", "unreadable_image")
    if rows * cols > max_pixels:
        raise _too_large(cols, rows, max_pixels)
    index = 0 if frame is None else frame
    if not 0 <= index < frames:
        raise APIError(
            422, f"frame {index} out of range: this DICOM has {frames} frame(s)", "invalid_request"
        )
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(head, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise APIError(
            415, f"cannot decode DICOM pixel data (transfer syntax {name}) with the installed handlers: {exc}",
            "unsupported_image",
        ) from exc  # fmt: skip
    if frames > 1:
        arr = arr[index]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour: kept as is
        return Image.fromarray(
            to_uint8(arr[..., :3], 0, 255) if arr.dtype != np.uint8 else arr[..., :3]
        ).convert("RGB")
    arr = apply_modality_lut(arr, ds)
    lo = hi = None
    if "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)  # output in the LUT's range, not 0..255: scaled below
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if width > 0:
            lo, hi = center - width / 2.0, center + width / 2.0
    out = to_uint8(arr, lo, hi)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out).convert("RGB")


def _first(value) -> float:  # noqa: ANN001 - DICOM multi-value or scalar
    try:
        return float(value[0])
    except (TypeError, IndexError):
        return float(value)


def _decode_nifti(data: bytes, max_pixels: int, slice_index: int | None) -> Image.Image:
    import nibabel as nib

    try:
        img = nib.Nifti1Image.from_bytes(data)
    except Exception as exc:
        raise APIError(400, f"unreadable NIfTI: {exc}", "unreadable_image") from exc
    shape = img.header.get_data_shape()
    if len(shape) < 2:
        raise APIError(400, f"NIfTI volume has shape {shape}; need at least 2 dimensions", "unreadable_image")
    if shape[0] * shape[1] > max_pixels:
        raise _too_large(shape[1], shape[0], max_pixels)
    depth = shape[2] if len(shape) >= 3 else 1
    index = depth // 2 if slice_index is None else slice_index
    if not 0 <= index < depth:
        raise APIError(
            422, f"slice {index} out of range: this volume has {depth} slice(s)", "invalid_request"
        )
    try:
        vol = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise APIError(400, f"unreadable NIfTI data: {exc}", "unreadable_image") from exc
    sl = vol[:, :, index] if vol.ndim >= 3 else vol
    while sl.ndim > 2:  # 4-D and beyond: first volume / channel
        sl = sl[..., 0]
    sl = np.rot90(np.asarray(sl, dtype=np.float64))  # (x, y) voxel order → rows top-to-bottom for display
    finite = sl[np.isfinite(sl)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    return Image.fromarray(to_uint8(sl, float(lo), float(hi))).convert("RGB")


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most `limit` bytes (a gzip bomb gets 413, not all our memory)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise APIError(400, f"unreadable gzip data: {exc}", "unreadable_image") from exc
    if d.unconsumed_tail:
        raise APIError(413, f"compressed volume expands beyond {limit} bytes", "image_too_large")
    if not d.eof:
        raise APIError(400, "truncated or corrupt gzip data", "unreadable_image")
    return out
