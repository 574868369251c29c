"""The teacher-only overlay (paper §A.2): the mask as semi-transparent red with a yellow contour.

The paper's exact values are not in the text; ours: red RGB (255, 0, 0) blended at alpha 0.35 over the
target, and an opaque yellow RGB (255, 255, 0) contour one pixel wide per 512 pixels of the longer side
(at least one). The student never sees this image.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

OVERLAY_RGB: tuple[int, int, int] = (255, 0, 0)
OVERLAY_ALPHA = 0.35
CONTOUR_RGB: tuple[int, int, int] = (255, 255, 0)
MAX_SIDE = 1024
"""Overlay images are downscaled so the longer side is at most this (request size and teacher cost)."""


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion (pixels outside the image count as background)."""
    padded = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary band of a bool mask [H, W], `width` pixels wide."""
    inner = mask.copy()
    for _ in range(width):
        inner = _erode(inner)
    return mask & ~inner


def render_overlay(image: Image.Image, mask: np.ndarray, max_side: int = MAX_SIDE) -> Image.Image:
    """RGB teacher view: red at OVERLAY_ALPHA over the mask and a yellow contour on its border."""
    rgb = image.convert("RGB")
    mask_im = Image.fromarray(mask.astype(np.uint8) * 255)
    if mask_im.size != rgb.size:
        raise ValueError(f"mask size {mask_im.size} differs from image size {rgb.size}")
    scale = max_side / max(rgb.size)
    if scale < 1:
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        mask_im = mask_im.resize(size, Image.Resampling.NEAREST)
    m = np.asarray(mask_im) > 127
    arr = np.asarray(rgb, dtype=np.float32)  # (H, W, 3)
    arr[m] = (1 - OVERLAY_ALPHA) * arr[m] + OVERLAY_ALPHA * np.asarray(OVERLAY_RGB, dtype=np.float32)
    arr[contour(m, max(1, round(max(m.shape) / 512)))] = CONTOUR_RGB
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="RGB")


def load_overlay(image_path: str | Path, mask_path: str | Path, max_side: int = MAX_SIDE) -> Image.Image:
    """The teacher view of an image/mask file pair."""
    with Image.open(image_path) as im, Image.open(mask_path) as mk:
        mask = np.asarray(mk)
        mask = (mask[..., 0] if mask.ndim == 3 else mask) > 0
        return render_overlay(im, mask, max_side)


def png_data_url(image: Image.Image) -> str:
    """A `data:image/png;base64,...` URL for an `image_url` content part."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
