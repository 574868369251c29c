"""PNG, JPEG, GIF, TIFF, BMP, WebP → the model's image, sized from the header before any pixel is decoded.

8-bit images are shown as stored (EXIF orientation applied): grey stays grey, colour becomes RGB (CMYK,
YCbCr, palette converted), alpha is composited onto black, an animated GIF or a multi-page TIFF gives its
first frame. 16-bit and float greyscale goes through the same intensity rule as DICOM/NIfTI
(`windows.render_grey`: request window, else percentiles).
"""

from __future__ import annotations

import io

import numpy as np

from vital_core.imaging.spec import ImagingError, ImagingLimits, ImagingSpec, ModelImage
from vital_core.imaging.windows import render_grey

FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP")
"""Pillow plugins we let read request bytes (no EPS/PSD/... decoders on untrusted input)."""
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
"""Pillow's in-memory size per pixel by mode; every other mode takes 4 bytes."""
_ROWS = 512


def sniff_raster(head: bytes) -> str | None:
    """png, jpeg, gif, tiff, bmp or webp from the leading bytes, else None."""
    head = bytes(head[:16])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def decode_raster(data: bytes, spec: ImagingSpec, limits: ImagingLimits) -> ModelImage:
    """Decode a raster image; 413 before decoding when its header declares too much."""
    from PIL import Image, ImageOps

    try:
        # Lazy: header only. Our limits are checked before load(); no warnings filters here (they are
        # process-global and the server decodes in several threads at once).
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImagingError("too_large", f"image declares too many pixels: {exc}") from exc
    except Exception as exc:
        raise ImagingError("unreadable", f"unreadable image: {exc}") from exc
    w, h = im.size
    if w < 1 or h < 1:
        raise ImagingError("unreadable", "image has no pixels")
    limits.check_pixels(w, h, "image")
    limits.check_decoded(w * h * _BYTES_PER_PIXEL.get(im.mode, 4), f"{im.format} image ({im.mode})")
    fmt = (im.format or "image").lower()
    try:
        im.seek(0)  # animated GIF / multi-page TIFF: the first frame
        im.load()
        if im.getexif().get(0x0112, 1) != 1:
            im = ImageOps.exif_transpose(im)
        return _to_model(im, fmt, spec)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImagingError("too_large", f"image declares too many pixels: {exc}") from exc
    except ImagingError:
        raise
    except Exception as exc:
        raise ImagingError("unreadable", f"unreadable image: {exc}") from exc
    finally:
        im.close()


def _to_model(im, fmt: str, spec: ImagingSpec) -> ModelImage:  # PIL image
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im)
        im.close()
        pixels, info = render_grey(values, spec)
        return ModelImage(pixels, fmt, {"mode": mode, **info})
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA", "RGBa", "La"):
        im = im.convert("RGB")  # CMYK (Adobe inverted CMYK handled by the JPEG decoder), YCbCr, LAB, HSV
    if im.mode in ("LA", "RGBA", "La", "RGBa"):
        return ModelImage(_on_black(im), fmt, {"mode": mode, "alpha": "composited on black"})
    return ModelImage(np.asarray(im), fmt, {"mode": mode})


def _on_black(im) -> np.ndarray:  # PIL image with alpha
    """Composite onto black in row strips (no full-size float copy)."""
    w, h = im.size
    premultiplied = im.mode in ("La", "RGBa")
    bands = 1 if im.mode in ("LA", "La") else 3
    out = np.empty((h, w) if bands == 1 else (h, w, 3), dtype=np.uint8)
    for r0 in range(0, h, _ROWS):
        strip = np.asarray(im.crop((0, r0, w, min(h, r0 + _ROWS))))
        colour, alpha = strip[..., :bands].astype(np.uint16), strip[..., -1:].astype(np.uint16)
        mixed = colour if premultiplied else (colour * alpha + 127) // 255
        out[r0 : r0 + _ROWS] = mixed[..., 0] if bands == 1 else mixed
    return out
