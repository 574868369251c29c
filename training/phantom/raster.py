"""Vectorised shape rasterisation and image filters for the phantom generator (numpy, no per-pixel loops).

All coordinates are in pixels, (y, x) with y growing downwards. Masks are bool [H, W].
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image


@lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx), each float32 [S, S]; cached and read-only."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def ellipse(size: int, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0) -> np.ndarray:
    """Filled ellipse rotated by `angle` radians."""
    yy, xx = grid(size)
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / max(rx, 0.5)) ** 2 + (v / max(ry, 0.5)) ** 2 <= 1.0


def blob(
    rng: np.random.Generator,
    size: int,
    cy: float,
    cx: float,
    r: float,
    aspect: float = 1.0,
    angle: float = 0.0,
    wobble: float = 0.0,
) -> np.ndarray:
    """Star-shaped blob: an ellipse (radius r, x-stretched by `aspect`) whose radius wobbles by ±`wobble`.

    Evaluated only inside the bounding box of its largest possible radius (the same pixels as the whole
    canvas would give, at a fraction of the cost)."""
    amps = phases = None
    if wobble > 0:
        ks = np.arange(2, 6)
        amps = rng.uniform(0.3, 1.0, ks.size) * wobble / np.sqrt(ks.size)
        phases = rng.uniform(0, 2 * np.pi, ks.size)
    reach = r * max(aspect, 1.0) * (1 + (float(amps.sum()) if amps is not None else 0.0)) + 2
    y0, y1 = max(int(cy - reach), 0), min(int(np.ceil(cy + reach)) + 1, size)
    x0, x1 = max(int(cx - reach), 0), min(int(np.ceil(cx + reach)) + 1, size)
    out = np.zeros((size, size), dtype=bool)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = grid(size)
    dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / aspect, -s * dx + c * dy
    if amps is None:
        out[y0:y1, x0:x1] = u * u + v * v <= r * r
        return out
    theta = np.arctan2(v, u)
    ks = np.arange(2, 6)
    radius = r * (
        1 + np.sum(amps[:, None, None] * np.cos(ks[:, None, None] * theta + phases[:, None, None]), 0)
    )
    out[y0:y1, x0:x1] = u * u + v * v <= radius * radius
    return out


def tube(size: int, points: np.ndarray, width: float) -> np.ndarray:
    """Pixels within `width`/2 of a polyline through `points` [N, 2] (y, x); evaluated in its bounding box."""
    p = np.asarray(points, dtype=np.float32)
    half = width / 2
    y0, x0 = (np.floor(p.min(0) - half - 1).astype(int)).clip(0, size)
    y1, x1 = (np.ceil(p.max(0) + half + 2).astype(int)).clip(0, size)
    out = np.zeros((size, size), dtype=bool)
    if y0 >= y1 or x0 >= x1:
        return out
    yy, xx = grid(size)
    yy, xx = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1]
    a, b = p[:-1, :, None, None], p[1:, :, None, None]  # (S, 2, 1, 1) segment ends
    ab = b - a
    py, px = yy[None] - a[:, 0], xx[None] - a[:, 1]  # (S, h, w)
    t = np.clip((py * ab[:, 0] + px * ab[:, 1]) / np.maximum((ab**2).sum(1), 1e-6), 0.0, 1.0)
    d2 = (py - t * ab[:, 0]) ** 2 + (px - t * ab[:, 1]) ** 2
    out[y0:y1, x0:x1] = d2.min(0) <= half * half
    return out


def curve(
    rng: np.random.Generator, start: tuple[float, float], heading: float, length: float, bend: float
) -> np.ndarray:
    """A smooth random polyline [N, 2] from `start` along `heading` (radians), turning ~`bend` per step."""
    n = 12
    turns = np.cumsum(rng.normal(0, bend, n))
    angles = heading + turns
    steps = np.stack([np.sin(angles), np.cos(angles)], 1) * (length / n)
    return np.concatenate([np.asarray(start, dtype=np.float64)[None], start + np.cumsum(steps, 0)])


def band(size: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Pixels between two per-column boundaries top[x] <= y < bottom[x] (each float [S])."""
    yy, _ = grid(size)
    return (yy >= top[None, :]) & (yy < bottom[None, :])


def sector(size: int, apex: tuple[float, float], r0: float, r1: float, half_angle: float) -> np.ndarray:
    """Ultrasound fan: an annular sector opening downwards from `apex`."""
    yy, xx = grid(size)
    dy, dx = yy - apex[0], xx - apex[1]
    r = np.hypot(dy, dx)
    return (r >= r0) & (r <= r1) & (np.abs(np.arctan2(dx, dy)) <= half_angle)


def disks(size: int, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of discs (centres [N, 2] (y, x), radii [N]); each disc is tested only inside its bounding box."""
    yy, xx = grid(size)
    out = np.zeros((size, size), dtype=bool)
    for (cy, cx), r in zip(np.asarray(centres), np.asarray(radii)):  # loop over discs, not pixels
        y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), size)
        x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), size)
        if y0 < y1 and x0 < x1:
            sub = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
            out[y0:y1, x0:x1] |= sub
    return out


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise ~N(0, 1): a `cells`×`cells` random grid upsampled bilinearly to [S, S]."""
    low = rng.standard_normal((cells, cells)).astype(np.float32)
    up = np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    return up / max(float(up.std()), 1e-6)


def blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes (edge-padded); loops over kernel taps only."""
    if sigma <= 0:
        return a.astype(np.float32)
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    out = a.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.moveaxis(np.pad(out, pad, mode="edge"), axis, 0)
        n = out.shape[axis]
        acc = k[0] * p[0:n]
        for i in range(1, len(k)):
            acc += k[i] * p[i : i + n]
        out = np.moveaxis(acc, 0, axis)
    return out
