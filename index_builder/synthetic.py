"""A small synthetic generator of (image, mask) pairs: bright, textured blobs on a noisy background.

For demos, tests and the ROI grid search only; the richer phantom generator lives in `training`.
Target sizes are drawn log-uniformly so both ROI pathways are exercised (from ~0.2% to ~40% of the area).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float, angle: float) -> np.ndarray:
    """bool [H, W] filled rotated ellipse."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)  # (H, W) each
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / max(rx, 0.5)) ** 2 + (v / max(ry, 0.5)) ** 2 <= 1.0


def make_sample(
    rng: np.random.Generator,
    height: int = 96,
    width: int = 128,
    area: float | None = None,
    n_distractors: int = 2,
) -> tuple[Image.Image, np.ndarray]:
    """One grayscale-looking RGB image with a textured target blob, and its bool mask [H, W].

    `area` is the target's approximate fraction of the image (default: log-uniform in [0.002, 0.4]).
    """
    h, w = height, width
    area = float(np.exp(rng.uniform(np.log(0.002), np.log(0.4)))) if area is None else area
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W)
    tilt = rng.uniform(-1, 1, size=2)
    img = 60 + 25 * (tilt[0] * yy / h + tilt[1] * xx / w) + rng.normal(0, 8, (h, w))  # (H, W) background
    for _ in range(n_distractors):  # soft darker/brighter structures that are not the target
        d = _ellipse(
            h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, h / 3), rng.uniform(4, w / 3), 0
        )
        img[d] += rng.uniform(-30, 30)
    aspect = rng.uniform(0.6, 1.6)
    r = np.sqrt(area * h * w / np.pi)
    ry, rx = r * np.sqrt(aspect), r / np.sqrt(aspect)
    cy, cx = rng.uniform(ry * 0.5, h - ry * 0.5), rng.uniform(rx * 0.5, w - rx * 0.5)
    mask = _ellipse(h, w, cy, cx, ry, rx, rng.uniform(0, np.pi))
    if not mask.any():  # very small targets: at least one pixel
        mask[int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))] = True
    period = rng.uniform(3, 7)
    texture = 40 * np.sin(2 * np.pi * (xx + yy) / period)  # (H, W) diagonal stripes
    img[mask] = 170 + texture[mask] + rng.normal(0, 6, int(mask.sum()))
    gray = np.clip(img, 0, 255).astype(np.uint8)
    tint = rng.uniform(0.85, 1.0, size=3)  # slight per-image colour cast (RGB input path)
    rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb), mask


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, height: int = 96, width: int = 128) -> Path:
    """Write n synthetic samples (PNG image + PNG mask) and a JSONL manifest {id, image, mask}; return it."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        image, mask = make_sample(rng, height, width)
        sid = f"syn-{i:05d}"
        image.save(out / "images" / f"{sid}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{sid}.png")
        rows.append({"id": sid, "image": f"images/{sid}.png", "mask": f"masks/{sid}.png"})
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
