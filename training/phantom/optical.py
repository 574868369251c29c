"""Colour phantom scenes: endoscopy, dermoscopy, fundus photography and H&E pathology."""

from __future__ import annotations

import numpy as np

from training.phantom.raster import blob, blur, curve, disks, ellipse, grid, tube
from training.phantom.scene import Scene

Colour = tuple[float, float, float]


def _radial(size: int, cy: float = 0.5, cx: float = 0.5) -> np.ndarray:
    """Distance from (cy, cx) (fractions of the side), in units of the side, float [S, S]."""
    yy, xx = grid(size)
    return np.hypot(yy / size - cy, xx / size - cx)


def _blob_in(
    sc: Scene, region: np.ndarray, radius: tuple[float, float], shape: tuple[float, float] | None = None
) -> np.ndarray:
    """A blob of random (or given (aspect, wobble)) shape centred inside `region`, clipped to it."""
    cy, cx = sc.point_in(region, inset=sc.px(0.03))
    aspect, wobble = shape if shape is not None else sc.shape()
    return blob(sc.rng, sc.size, cy, cx, sc.px(sc.u(*radius)), aspect, sc.u(0, np.pi), wobble) & region


def _specks(sc: Scene, region: np.ndarray, n: int, radius: tuple[float, float]) -> np.ndarray:
    """Union of `n` small discs centred at random pixels of `region`."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return region
    idx = sc.rng.integers(len(ys), size=n)
    centres = np.stack([ys[idx], xs[idx]], 1) + 0.5
    return disks(sc.size, centres, sc.rng.uniform(*radius, size=n) * sc.size)


def endoscopy(rng: np.random.Generator, size: int) -> Scene:
    """Colonoscopy frame: pink mucosa, folds, dark lumen, polyp, ulcer, diverticulum, vignetting."""
    sc = Scene.new(rng, size, 3, (0.8, 0.42, 0.38))
    s = sc.px
    full = np.ones((size, size), dtype=bool)
    sc.paint(full, (0.82, 0.45, 0.4), texture=0.1)
    for _ in range(int(rng.integers(2, 4))):
        fold = tube(size, curve(rng, (s(sc.u(0.1, 0.9)), 0.0), sc.u(-0.3, 0.3), s(1.2), 0.15), s(0.03))
        sc.paint(fold, (0.92, 0.58, 0.52), edge=2.5 * size / 128)
    fov = _radial(size) < 0.48
    centre = _radial(size) < 0.3
    if sc.chance(0.85):
        lumen = _blob_in(sc, centre, (0.08, 0.12), (sc.u(1.0, 1.4), 0.2))
        sc.add("lumen", "tissue", lumen, (0.14, 0.04, 0.04), edge=sc.edge(True), hue="dark red")
    if sc.chance(0.6):
        pale = sc.chance(0.5)
        colour = (0.96, 0.64, 0.56) if pale else (0.68, 0.22, 0.2)
        ok = sc.place(
            "polyp",
            "lesion",
            lambda: _blob_in(sc, centre, (0.06, 0.1)),
            colour,
            texture=0.15 if sc.chance(0.5) else 0.0,
            edge=sc.edge(sc.chance(0.4)),
            hue="pale pink" if pale else "reddish",
        )
        if ok:
            sc.paint(
                _specks(sc, sc.get("polyp").mask, 2, (0.006, 0.01)) & sc.get("polyp").mask, (1.0, 1.0, 1.0)
            )
    if sc.chance(0.4):
        ulcer = lambda: _blob_in(sc, centre, (0.04, 0.07))  # noqa: E731
        sc.place(
            "ulcer", "lesion", ulcer, (0.94, 0.9, 0.74), edge=sc.edge(sc.chance(0.5)), hue="whitish-yellow"
        )
    if sc.chance(0.3):
        div = lambda: _blob_in(sc, centre, (0.02, 0.035), (1.0, 0.0))  # noqa: E731
        sc.place("diverticulum", "lesion", div, (0.3, 0.1, 0.1), edge=sc.edge(sc.chance(0.5)), hue="dark red")
    vignette = np.clip(1.0 - 1.6 * _radial(size) ** 2, 0, 1) * fov
    sc.canvas = sc.canvas * vignette[..., None]
    sc.noise(0.015)
    return sc


def dermoscopy(rng: np.random.Generator, size: int) -> Scene:
    """Dermoscopy: skin, hairs, a nevus or melanoma, angioma, seborrheic keratosis, dark corners."""
    sc = Scene.new(rng, size, 3, (0.86, 0.66, 0.55))
    s = sc.px
    tone = (sc.u(0.8, 0.92), sc.u(0.6, 0.72), sc.u(0.5, 0.6))
    sc.paint(np.ones((size, size), dtype=bool), tone, texture=0.05)
    middle = _radial(size) < 0.22
    if sc.chance(0.5):
        nevus = lambda: _blob_in(sc, middle, (0.12, 0.18), (sc.u(1.0, 1.5), sc.u(0.0, 0.05)))  # noqa: E731
        sc.place("nevus", "lesion", nevus, (0.5, 0.34, 0.25), edge=sc.edge(sc.chance(0.3)), hue="brown")
    else:
        mel = lambda: _blob_in(sc, middle, (0.15, 0.22), (sc.u(1.0, 1.3), sc.u(0.35, 0.5)))  # noqa: E731
        if sc.place(
            "melanoma", "tumor", mel, (0.33, 0.2, 0.17), texture=0.3, edge=sc.edge(True), hue="dark brown"
        ):
            veil = _blob_in(sc, sc.get("melanoma").mask, (0.03, 0.05), (1.0, 0.3))
            sc.paint(veil, (0.4, 0.42, 0.55), edge=2.0)  # blue-white veil
    skin = _radial(size) < 0.4
    if sc.chance(0.4):
        angioma = lambda: _blob_in(sc, skin, (0.03, 0.05), (sc.u(1.0, 1.2), 0.0))  # noqa: E731
        sc.place("angioma", "lesion", angioma, (0.72, 0.12, 0.18), edge=sc.edge(sc.chance(0.3)), hue="red")
    if sc.chance(0.3):
        sk = lambda: _blob_in(sc, skin, (0.05, 0.08))  # noqa: E731
        sc.place("seborrheic keratosis", "lesion", sk, (0.62, 0.5, 0.34), texture=0.2, hue="tan")
    for _ in range(int(rng.integers(0, 7))):
        hair = tube(
            size,
            curve(rng, (s(sc.u(0, 1)), s(sc.u(0, 1))), sc.u(0, 2 * np.pi), s(0.8), 0.08),
            max(1.0, s(0.008)),
        )
        sc.paint(hair, (0.15, 0.1, 0.08))
    sc.canvas = sc.canvas * np.clip(1.3 - 1.1 * _radial(size), 0, 1)[..., None]
    sc.noise(0.012)
    return sc


def fundus(rng: np.random.Generator, size: int) -> Scene:
    """Colour fundus photograph: optic disc and cup, macula, vessels, haemorrhages, hard exudates."""
    sc = Scene.new(rng, size, 3, 0.0)
    s = sc.px
    retina = _radial(size) < 0.46
    sc.paint(retina, (0.78, 0.33, 0.12), texture=0.06)
    right = sc.chance(0.5)
    dy, dx = s(sc.u(0.46, 0.54)), s(0.72 if right else 0.28)
    if sc.chance(0.97):
        disc = ellipse(size, dy, dx, s(0.075), s(0.065))
        sc.add(
            "optic disc",
            "retinal structure",
            disc,
            (1.0, 0.85, 0.55),
            edge=sc.edge(sc.chance(0.5)),
            hue="yellowish",
        )
        if sc.chance(0.85):
            cup = ellipse(size, dy, dx + s(sc.u(-0.01, 0.01)), s(0.035), s(0.03))
            sc.add(
                "optic cup", "retinal structure", cup, (1.0, 0.96, 0.85), host="optic disc", hue="pale yellow"
            )
    my, mx = s(sc.u(0.48, 0.52)), dx + s(-0.3 if right else 0.3)
    if sc.chance(0.9):
        sc.add(
            "macula",
            "retinal structure",
            ellipse(size, my, mx, s(0.065), s(0.07)),
            (0.5, 0.18, 0.07),
            edge=sc.edge(True),
            hue="darker red",
        )
    ring = retina & (_radial(size) > 0.12) & ~ellipse(size, dy, dx, s(0.12), s(0.12))
    if sc.chance(0.4):
        hem = lambda: _blob_in(sc, ring, (0.02, 0.035))  # noqa: E731
        sc.place(
            "hemorrhage", "lesion", hem, (0.42, 0.05, 0.03), edge=sc.edge(sc.chance(0.5)), hue="dark red"
        )
    if sc.chance(0.4):

        def exudate() -> np.ndarray:
            zone = _blob_in(sc, ring, (0.05, 0.07), (1.0, 0.0))
            return _specks(sc, zone, int(rng.integers(5, 12)), (0.007, 0.013))

        sc.place("hard exudate", "lesion", exudate, (1.0, 0.9, 0.4), hue="yellow")
    if sc.chance(0.95):
        heads = np.array([-0.5, 0.5, np.pi - 0.5, np.pi + 0.5])
        trees = [
            tube(size, curve(rng, (dy, dx), h + sc.u(-0.2, 0.2), s(0.45), 0.12), max(2.0, s(0.016)))
            for h in heads
        ]
        vessels = np.logical_or.reduce(trees) & retina
        others = [o.mask for o in sc.objects if o.name not in ("optic disc", "optic cup")]
        for m in others:
            vessels &= ~m
        sc.add("retinal vessel", "vessel", vessels, (0.5, 0.07, 0.04), overlap_ok=True, hue="dark red")
    sc.canvas = sc.canvas * np.clip(1.15 - 1.2 * _radial(size), 0, 1)[..., None] * retina[..., None]
    sc.noise(0.01)
    return sc


def pathology(rng: np.random.Generator, size: int) -> Scene:
    """H&E histology: pink stroma with scattered nuclei, gland, tumour region, lymphocyte cluster, vessel."""
    sc = Scene.new(rng, size, 3, (0.94, 0.74, 0.84))
    s = sc.px
    full = np.ones((size, size), dtype=bool)
    sc.paint(full, (0.93, 0.72, 0.83), texture=0.08)
    for _ in range(int(rng.integers(3, 6))):
        fibre = tube(size, curve(rng, (s(sc.u(0, 1)), 0.0), sc.u(-0.5, 0.5), s(1.2), 0.1), s(0.012))
        sc.paint(fibre, (0.88, 0.55, 0.7), edge=1.0)
    sc.paint(_specks(sc, full, int(rng.integers(25, 45)), (0.008, 0.014)), (0.45, 0.25, 0.62))
    inner = _radial(size) < 0.32
    purple: Colour = (0.28, 0.12, 0.45)
    if sc.chance(0.8):
        gland = lambda: _blob_in(sc, inner, (0.12, 0.16), (sc.u(1.1, 1.6), 0.05))  # noqa: E731
        if sc.place("gland", "tissue", gland, (0.98, 0.93, 0.96), texture=0.12, hue="pale"):
            m = sc.get("gland").mask
            sc.paint(_specks(sc, _ring(m), 14, (0.008, 0.012)) & m, purple)  # epithelial nuclei along the rim
    if sc.chance(0.5):
        tumor = lambda: _blob_in(sc, inner, (0.12, 0.17), (sc.u(1.0, 1.3), sc.u(0.3, 0.45)))  # noqa: E731
        if sc.place(
            "tumor region",
            "tumor",
            tumor,
            (0.6, 0.36, 0.7),
            texture=0.2,
            edge=sc.edge(sc.chance(0.5)),
            hue="purple",
        ):
            m = sc.get("tumor region").mask
            sc.paint(_specks(sc, m, 30, (0.012, 0.02)) & m, purple)
    if sc.chance(0.5):
        lymph = lambda: _blob_in(sc, inner, (0.05, 0.08), (sc.u(1.0, 1.3), 0.1))  # noqa: E731
        sc.place("lymphocyte cluster", "cell", lymph, (0.32, 0.18, 0.52), texture=0.15, hue="dark purple")
    if sc.chance(0.4):
        vessel = lambda: _blob_in(sc, inner, (0.025, 0.035), (sc.u(2.8, 3.4), 0.0))  # noqa: E731
        sc.place("blood vessel", "vessel", vessel, (0.86, 0.2, 0.26), texture=0.12, hue="red")
    sc.noise(0.012)
    return sc


def _ring(mask: np.ndarray) -> np.ndarray:
    """The pixels of a mask near its boundary."""
    return mask & (blur(mask.astype(np.float32), 3.0) < 0.9)
