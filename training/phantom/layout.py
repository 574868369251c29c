"""Compositional phantom scenes: a modality's background, three host structures and three lesions.

Every object's name is told by its tissue tone (training.phantom.atlas: intensity, or hue in colour
modalities); its size, shape, margin and position are drawn afresh for every object of every scene. Two
layouts: `hosted` (each host holds exactly one lesion) and `free` (no object touches another). Hosts are
medium-sized, lesions small; a margin is sharp or clearly blurred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom.atlas import ATLAS, LEVEL_JITTER, Atlas
from training.phantom.raster import blob, ellipse, grid, sector, smooth_noise
from training.phantom.scene import Scene

LAYOUTS = ("hosted", "free")
HOST_RADIUS = (0.1, 0.14)
"""Host radius range (fraction of the side): areas ~3-6 %."""
LESION_RADIUS = (0.04, 0.062)
"""Lesion radius range (fraction of the side; area ~0.3-0.8 %), the same in every host and layout, so a
lesion's size says nothing about the host it lies in."""
GAP = 3.0
"""Smallest distance in pixels between objects that must not touch."""
COLOUR = ("endo", "derm", "fundus", "path")
"""Modalities painted in colour (their structures are told by hue)."""


@dataclass
class Slot:
    """The geometry of one object before it is named and painted."""

    role: str
    """host or lesion."""
    mask: np.ndarray
    host: int | None = None
    """Index of the host slot holding this lesion (hosted layout)."""


def background(key: str, rng: np.random.Generator, size: int) -> tuple[Scene, np.ndarray]:
    """The modality's unlabelled background and the region objects may occupy (bool [S, S])."""
    s = lambda f: f * size  # noqa: E731
    yy, xx = grid(size)
    if key in COLOUR:
        fill = {"endo": (0.8, 0.42, 0.38), "derm": (0.86, 0.66, 0.55), "fundus": (0.78, 0.33, 0.12)}
        sc = Scene.new(rng, size, 3, fill.get(key, (0.93, 0.72, 0.83)))
        sc.paint(np.ones((size, size), bool), sc.canvas[0, 0], texture=0.06)
        r = np.hypot(yy / size - 0.5, xx / size - 0.5)
        return sc, r < (0.44 if key != "path" else 0.6)
    sc = Scene.new(rng, size, 1, 0.04)
    if key == "ct":
        body = ellipse(size, s(0.5), s(0.5), s(0.42), s(0.47))
        sc.paint(body, 0.5, texture=0.03)
        return sc, body
    if key == "mri":
        sc.paint(ellipse(size, s(0.5), s(0.5), s(0.47), s(0.41)), 0.7)
        brain = ellipse(size, s(0.5), s(0.5), s(0.44), s(0.38))
        sc.paint(brain, 0.5, texture=0.03)
        return sc, brain
    if key == "xray":
        body = ellipse(size, s(0.55), s(0.5), s(0.5), s(0.47))
        sc.paint(body, 0.5, texture=0.03)
        return sc, body
    if key == "us":
        fan = sector(size, (s(0.0), s(0.5)), s(0.08), s(0.98), 0.75)
        sc.paint(fan, 0.5, texture=0.05)
        return sc, fan
    # oct: a thick retina (faint layers) over dark vitreous; objects inside it
    top = s(rng.uniform(0.08, 0.12)) + s(0.02) * np.sin(2 * np.pi * (np.arange(size) + 0.5) / size)
    retina = (yy >= top[None, :]) & (yy < s(0.96))
    sc.paint(retina, 0.5, texture=0.04)
    for i in range(1, 6):
        band = (yy >= top[None, :] + s(0.16) * i) & (yy < top[None, :] + s(0.16) * i + s(0.012))
        sc.paint(band & retina, 0.56)
    return sc, retina


def place(sc: Scene, region: np.ndarray, layout: str, tries: int = 4) -> list[Slot] | None:
    """Three hosts and three lesions in `region`, or None when they do not fit."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout: one of {', '.join(LAYOUTS)}")
    for _ in range(tries):
        slots = _place_once(sc, region, layout)
        if slots is not None:
            return slots
    return None


def _place_once(sc: Scene, region: np.ndarray, layout: str) -> list[Slot] | None:
    slots: list[Slot] = []
    taken: list[tuple[float, float, float]] = []
    for _ in range(3):
        fit = _fit(sc, region, taken, sc.px(sc.u(*HOST_RADIUS)), round_only=False)
        if fit is None:
            return None
        slots.append(Slot("host", fit[0]))
        taken.append(fit[1])
    for i in range(3):
        r = sc.px(sc.u(*LESION_RADIUS))
        if layout == "hosted":  # inside host i, at least 2 px from its edge
            fit = _fit(sc, slots[i].mask, [], r, round_only=True, inset=2.0)
            if fit is None:
                return None
            slots.append(Slot("lesion", fit[0], host=i))
        else:
            fit = _fit(sc, region, taken, r, round_only=True)
            if fit is None:
                return None
            slots.append(Slot("lesion", fit[0]))
            taken.append(fit[1])
    return slots


def _fit(
    sc: Scene,
    region: np.ndarray,
    taken: list[tuple[float, float, float]],
    r: float,
    round_only: bool,
    inset: float = GAP,
    tries: int = 40,
) -> tuple[np.ndarray, tuple[float, float, float]] | None:
    """A blob of area ~pi r^2 wholly inside `region` and at least `inset` px clear of the bounding discs
    `taken` ((cy, cx, reach) of objects placed before); None when no random centre fits."""
    aspect, wobble = (sc.u(1.0, 1.4), 0.0) if round_only else sc.shape()
    aspect, wobble = min(aspect, 1.6), min(wobble, 0.2)
    reach = r * np.sqrt(aspect) * (1 + wobble)  # the blob's farthest point from its centre
    ys, xs = np.nonzero(region)
    ring = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    for _ in range(tries):
        i = int(sc.rng.integers(len(ys)))
        cy, cx = ys[i] + 0.5, xs[i] + 0.5
        if any(np.hypot(cy - y, cx - x) < reach + rr + inset for y, x, rr in taken):
            continue
        py = (cy + (reach + 1) * np.sin(ring)).astype(int)
        px = (cx + (reach + 1) * np.cos(ring)).astype(int)
        if py.min() < 0 or px.min() < 0 or py.max() >= sc.size or px.max() >= sc.size:
            continue
        if not region[py, px].all():
            continue
        m = blob(sc.rng, sc.size, cy, cx, r / np.sqrt(aspect), aspect, sc.u(0, np.pi), wobble)
        if m.sum() >= 12 and not (m & ~region).any():
            return m, (cy, cx, reach)
    return None


@dataclass
class Look:
    """How one named object is painted."""

    name: str
    blurred: bool


def paint(sc: Scene, key: str, atlas: Atlas, slots: list[Slot], looks: list[Look]) -> None:
    """Paint the named objects in their tones (hosts first, then lesions inside or beside them) and the
    modality's noise."""
    colour = key in COLOUR
    for slot, look in zip(slots, looks):
        host = looks[slot.host].name if slot.host is not None else None
        tone = np.asarray(atlas.tone(look.name, colour), dtype=np.float32)
        tone = np.clip(tone + sc.u(-LEVEL_JITTER, LEVEL_JITTER), 0.0, 1.0)
        ttype = "lesion" if slot.role == "lesion" else atlas.host_type
        added = sc.add(
            look.name,
            ttype,
            slot.mask,
            tuple(tone.tolist()) if colour else float(tone),
            texture=0.03,
            edge=sc.u(2.0, 3.5) * sc.size / 128 if look.blurred else 0.0,
            host=host,
            overlap_ok=slot.host is not None,
            min_pixels=1,
        )
        if not added:  # pragma: no cover - slots are disjoint by construction
            raise RuntimeError(f"could not add {look.name}")
    _finish(sc, key)


def _finish(sc: Scene, key: str) -> None:
    """The modality's noise: speckle for ultrasound and OCT, Rician-like for MRI, Gaussian otherwise."""
    size, rng = sc.size, sc.rng
    if key == "us":
        sc.canvas = sc.canvas * rng.gamma(30.0, 1 / 30.0, (size, size)).astype(np.float32)[..., None]
    elif key == "oct":
        sc.canvas = sc.canvas * rng.gamma(40.0, 1 / 40.0, (size, size)).astype(np.float32)[..., None]
    elif key == "mri":
        sc.canvas = sc.canvas * (1.0 + 0.06 * smooth_noise(rng, size, 3))[..., None]
        n1, n2 = rng.normal(0, 0.025, (2, size, size)).astype(np.float32)
        sc.canvas = np.sqrt((sc.canvas + n1[..., None]) ** 2 + n2[..., None] ** 2)
    else:
        sc.noise(0.02)


def random_looks(sc: Scene, atlas: Atlas, slots: list[Slot]) -> list[Look]:
    """Distinct random names per role and a random margin for every slot."""
    hosts = [atlas.hosts[i] for i in sc.rng.permutation(4)[:3]]
    lesions = [atlas.lesions[i] for i in sc.rng.permutation(4)[:3]]
    names = iter(hosts + lesions)
    return [Look(next(names), sc.chance(0.5)) for _ in slots]


def build(key: str, rng: np.random.Generator, size: int, layout: str) -> Scene | None:
    """One random compositional scene of modality `key` (None when the objects did not fit)."""
    atlas = ATLAS[key]
    sc, region = background(key, rng, size)
    slots = place(sc, region, layout)
    if slots is None:
        return None
    paint(sc, key, atlas, slots, random_looks(sc, atlas, slots))
    return sc
