"""A phantom scene: a float canvas being painted, and the labelled objects painted on it.

Every object keeps the generation facts the answers need and that a mask cannot tell: whether it was
painted brighter or darker than what lay under it, textured or not, with a sharp or blurred edge,
and which object (if any) it sits inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.phantom.raster import blur, smooth_noise

TEXTURED = 0.1
"""Texture amplitude from which an object counts as heterogeneous (builders use < 0.05 or >= this)."""
BLURRED = 1.0
"""Edge width (pixels) from which a boundary counts as blurred (builders use 0 or >= 1.5)."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass
class PhantomObject:
    """One labelled structure: its mask and how it was drawn."""

    name: str
    target_type: str
    mask: np.ndarray
    """bool [S, S]."""
    brighter: bool
    """Painted brighter (in luminance) than the mean of what lay under it."""
    textured: bool
    """Heterogeneous (painted with texture) rather than homogeneous."""
    blurred: bool
    """Blurred rather than sharp boundary."""
    host: str | None = None
    """Name of the object it lies inside (a lesion in an organ), if any."""
    hue: str | None = None
    """Colour word for colour modalities (e.g. "reddish"), None for greyscale."""


@dataclass
class Scene:
    """Canvas [S, S, C] in [0, 1] (C = 1 greyscale, 3 colour) plus the objects painted so far."""

    size: int
    rng: np.random.Generator
    canvas: np.ndarray
    objects: list[PhantomObject] = field(default_factory=list)

    @classmethod
    def new(
        cls, rng: np.random.Generator, size: int, channels: int, fill: float | tuple[float, ...]
    ) -> Scene:
        """An empty scene filled with one value or colour."""
        canvas = np.empty((size, size, channels), dtype=np.float32)
        canvas[:] = np.asarray(fill, dtype=np.float32)
        return cls(size=size, rng=rng, canvas=canvas)

    def paint(
        self, mask: np.ndarray, colour: float | tuple[float, ...], texture: float = 0.0, edge: float = 0.0
    ) -> None:
        """Alpha-blend a (textured) colour under `mask`, with a Gaussian edge `edge` pixels wide."""
        alpha = blur(mask.astype(np.float32), edge) if edge > 0 else mask.astype(np.float32)
        value = np.broadcast_to(np.asarray(colour, dtype=np.float32), (self.canvas.shape[2],))
        layer = np.empty_like(self.canvas)
        layer[:] = value
        if texture > 0:
            noise = 0.6 * smooth_noise(self.rng, self.size, 12) + 0.4 * smooth_noise(self.rng, self.size, 40)
            layer *= 1.0 + texture * noise[..., None]
        a = alpha[..., None]
        self.canvas = self.canvas * (1 - a) + layer * a

    def add(
        self,
        name: str,
        target_type: str,
        mask: np.ndarray,
        colour: float | tuple[float, ...],
        *,
        texture: float = 0.0,
        edge: float = 0.0,
        host: str | None = None,
        hue: str | None = None,
        overlap_ok: bool = False,
        min_pixels: int = 12,
    ) -> bool:
        """Paint and record a labelled object; False (nothing painted) if it is too small or overlaps another.

        Objects with a `host` are clipped to the host's mask and may overlap only it (a lesion in an organ);
        `overlap_ok` lets thin structures (vessels) cross others, so builders add them last.
        """
        if host is not None:
            mask = mask & self.get(host).mask
        if int(mask.sum()) < min_pixels or any(o.name == name for o in self.objects):
            return False
        if not overlap_ok and any(o.name != host and (mask & o.mask).any() for o in self.objects):
            return False
        under = float((self.canvas[mask] @ self._luma()).mean())
        value = np.asarray(colour, dtype=np.float32)
        level = float(value @ _LUMA) if value.size == 3 else float(value)
        self.paint(mask, colour, texture=texture, edge=edge)
        self.objects.append(
            PhantomObject(
                name, target_type, mask, level > under, texture >= TEXTURED, edge >= BLURRED, host, hue
            )
        )
        return True

    def place(
        self,
        name: str,
        target_type: str,
        make_mask: Callable[[], np.ndarray],
        colour: float | tuple[float, ...],
        *,
        tries: int = 6,
        **kwargs: object,
    ) -> bool:
        """`add` with up to `tries` fresh random masks from `make_mask` until one fits."""
        return any(self.add(name, target_type, make_mask(), colour, **kwargs) for _ in range(tries))

    def point_in(self, mask: np.ndarray, inset: float = 2.0) -> tuple[float, float]:
        """A random pixel centre (y, x) inside `mask`, ~`inset` px from its edge where possible."""
        inner = blur(mask.astype(np.float32), inset) > 0.97 if inset > 0 else mask
        ys, xs = np.nonzero(inner if inner.any() else mask)
        i = int(self.rng.integers(len(ys)))
        return float(ys[i]) + 0.5, float(xs[i]) + 0.5

    def px(self, fraction: float) -> float:
        """A length given as a fraction of the image side, in pixels."""
        return fraction * self.size

    def u(self, lo: float, hi: float) -> float:
        """Uniform random number in [lo, hi)."""
        return float(self.rng.uniform(lo, hi))

    def chance(self, p: float) -> bool:
        """True with probability p."""
        return bool(self.rng.random() < p)

    def edge(self, blurred: bool) -> float:
        """An edge width for a sharp (0) or blurred (1.5-3 px at 128², scaled with size) boundary."""
        return self.u(1.5, 3.0) * self.size / 128 if blurred else 0.0

    def shape(self) -> tuple[float, float]:
        """(aspect, wobble) for a random intended shape: round, oval, elongated or irregular."""
        kind = int(self.rng.integers(4))
        if kind == 0:
            return 1.0, 0.0
        if kind == 1:
            return self.u(1.5, 1.9), 0.0
        if kind == 2:
            return self.u(2.6, 3.4), 0.0
        return self.u(1.0, 1.3), self.u(0.35, 0.5)

    def noise(self, sigma: float) -> None:
        """Add white Gaussian noise of std `sigma` to the canvas."""
        self.canvas = (
            self.canvas + self.rng.normal(0.0, sigma, self.canvas.shape[:2]).astype(np.float32)[..., None]
        )

    def get(self, name: str) -> PhantomObject:
        """The object with this name."""
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(name)

    def has(self, name: str) -> bool:
        """Whether an object with this name was painted."""
        return any(o.name == name for o in self.objects)

    def to_uint8(self) -> np.ndarray:
        """The canvas as uint8 [S, S] (greyscale) or [S, S, 3]."""
        img = np.clip(self.canvas * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return img[..., 0] if img.shape[2] == 1 else img

    def _luma(self) -> np.ndarray:
        return _LUMA if self.canvas.shape[2] == 3 else np.ones(1, dtype=np.float32)
