"""Greyscale phantom scenes: CT, MRI, X-ray, ultrasound and OCT.

Each builder paints unlabelled context (body outline, bones, layers) with `Scene.paint` and labelled
targets with `Scene.add`/`Scene.place`; only labelled objects can be asked about. Layouts follow the
usual image orientation of each modality, in image space only.
"""

from __future__ import annotations

import numpy as np

from training.phantom.raster import band, blob, ellipse, grid, sector, smooth_noise, tube
from training.phantom.scene import Scene


def _lesion(
    sc: Scene,
    name: str,
    target_type: str,
    region: np.ndarray,
    radius: tuple[float, float],
    colour: float,
    host: str | None = None,
    **kwargs: object,
) -> bool:
    """A lesion of random intended shape, boundary and texture centred somewhere inside `region`."""
    textured = kwargs.pop("textured", sc.chance(0.5))
    blurred = kwargs.pop("blurred", sc.chance(0.5))

    def make() -> np.ndarray:
        cy, cx = sc.point_in(region, inset=sc.px(0.03))
        aspect, wobble = sc.shape()
        r = sc.px(sc.u(*radius))
        return blob(sc.rng, sc.size, cy, cx, r, aspect, sc.u(0, np.pi), wobble)

    texture = 0.18 if textured else 0.0
    return sc.place(
        name, target_type, make, colour, texture=texture, edge=sc.edge(bool(blurred)), host=host, **kwargs
    )


def ct(rng: np.random.Generator, size: int) -> Scene:
    """Abdominal axial CT: body, spine, liver, spleen, kidney, stomach, aorta, pancreas, tumour, cyst."""
    sc = Scene.new(rng, size, 1, 0.03)
    s = sc.px
    body = ellipse(size, s(sc.u(0.48, 0.52)), s(0.5), s(sc.u(0.36, 0.41)), s(sc.u(0.44, 0.47)))
    sc.paint(body, 0.42, texture=0.03)
    sc.paint(ellipse(size, s(0.76), s(0.5), s(0.05), s(0.06)), 0.93)  # vertebral body
    if sc.chance(0.95):
        liver = blob(
            rng,
            size,
            s(sc.u(0.39, 0.45)),
            s(sc.u(0.28, 0.33)),
            s(sc.u(0.13, 0.16)),
            sc.u(1.1, 1.4),
            sc.u(-0.4, 0.4),
            sc.u(0.05, 0.12),
        )
        sc.add("liver", "organ", liver, 0.6, texture=0.03)
    if sc.chance(0.75):
        spleen = blob(
            rng, size, s(sc.u(0.38, 0.44)), s(sc.u(0.74, 0.78)), s(0.065), sc.u(0.55, 0.7), 0.0, 0.06
        )
        sc.add("spleen", "organ", spleen, 0.56)
    if sc.chance(0.75):
        sc.add(
            "kidney",
            "organ",
            ellipse(size, s(sc.u(0.6, 0.65)), s(sc.u(0.68, 0.72)), s(0.07), s(0.045), 0.3),
            0.7,
        )
    if sc.chance(0.5):
        sc.add(
            "stomach", "organ", blob(rng, size, s(0.33), s(sc.u(0.56, 0.6)), s(0.055), 1.2, 0.0, 0.15), 0.18
        )
    if sc.chance(0.85):
        sc.add("aorta", "vessel", ellipse(size, s(0.64), s(sc.u(0.47, 0.51)), s(0.03), s(0.03)), 0.8)
    if sc.chance(0.4):
        sc.add(
            "pancreas",
            "organ",
            blob(rng, size, s(0.54), s(sc.u(0.52, 0.56)), s(0.025), 3.0, sc.u(-0.2, 0.2), 0.05),
            0.5,
        )
    if sc.has("liver") and sc.chance(0.5):
        _lesion(
            sc,
            "liver tumor",
            "tumor",
            sc.get("liver").mask,
            (0.025, 0.055),
            0.38 if sc.chance(0.6) else 0.82,
            host="liver",
        )
    if sc.has("kidney") and sc.chance(0.35):
        _lesion(
            sc,
            "renal cyst",
            "lesion",
            sc.get("kidney").mask,
            (0.015, 0.025),
            0.3,
            host="kidney",
            textured=False,
        )
    sc.noise(0.025)
    return sc


def mri(rng: np.random.Generator, size: int) -> Scene:
    """Axial brain MRI (T1- or T2-like contrast) with a smooth bias field and Rician-like noise."""
    sc = Scene.new(rng, size, 1, 0.0)
    s = sc.px
    t2 = sc.chance(0.5)
    csf, grey, white = (0.9, 0.6, 0.42) if t2 else (0.08, 0.45, 0.62)
    sc.paint(ellipse(size, s(0.5), s(0.5), s(0.45), s(0.37)), 0.5 if t2 else 0.78)  # scalp and skull
    sc.paint(ellipse(size, s(0.5), s(0.5), s(0.41), s(0.33)), 0.05)  # bone
    brain = ellipse(size, s(0.5), s(0.5), s(0.39), s(0.31))
    sc.paint(brain, grey, texture=0.03)
    wm = ellipse(size, s(0.5), s(0.5), s(0.31), s(0.24))
    sc.paint(wm, white, edge=2.0 * size / 128)
    if sc.chance(0.9):
        tilt = sc.u(0.15, 0.35)
        vent = ellipse(size, s(0.47), s(0.44), s(0.1), s(0.03), tilt) | ellipse(
            size, s(0.47), s(0.56), s(0.1), s(0.03), -tilt
        )
        sc.add("ventricular system", "organ", vent, csf)
    if sc.chance(0.6):
        side = 0.36 if sc.chance(0.5) else 0.64
        sc.add(
            "hippocampus",
            "organ",
            ellipse(size, s(0.68), s(side), s(0.025), s(0.065), 0.5 * (1 if side < 0.5 else -1)),
            grey,
        )
    if sc.chance(0.55):
        _lesion(sc, "brain tumor", "tumor", brain, (0.05, 0.09), 0.88 if t2 else 0.22, blurred=sc.chance(0.6))
    if sc.chance(0.4):
        _lesion(sc, "white matter lesion", "lesion", wm, (0.015, 0.025), 0.95 if t2 else 0.25, textured=False)
    bias = 1.0 + 0.12 * smooth_noise(rng, size, 3)
    sc.canvas = sc.canvas * bias[..., None]
    n1, n2 = rng.normal(0, 0.03, (2, size, size)).astype(np.float32)
    sc.canvas = np.sqrt((sc.canvas + n1[..., None]) ** 2 + n2[..., None] ** 2)
    return sc


def xray(rng: np.random.Generator, size: int) -> Scene:
    """Frontal chest radiograph: lung fields, ribs, trachea, heart, nodule, opacity, effusion."""
    sc = Scene.new(rng, size, 1, 0.08)
    s = sc.px
    yy, xx = grid(size)
    sc.paint(ellipse(size, s(0.58), s(0.5), s(0.52), s(0.47)), 0.58, texture=0.03)
    lungs = []
    for cx in (0.3, 0.7):
        lung = blob(rng, size, s(sc.u(0.47, 0.5)), s(cx), s(0.14), 2.15, np.pi / 2, 0.05)
        sc.paint(lung, 0.2, edge=2.0 * size / 128)
        lungs.append(lung)
    both = lungs[0] | lungs[1]
    ribs = (np.sin(2 * np.pi * (yy / size * 7.0 - 2.5 * (xx / size - 0.5) ** 2)) > 0.55) & both
    sc.paint(ribs, 0.36, edge=1.0)
    if sc.chance(0.85):
        sc.add(
            "trachea",
            "organ",
            tube(size, np.array([[s(0.04), s(0.5)], [s(0.3), s(sc.u(0.49, 0.52))]]), s(0.045)),
            0.3,
        )
    if sc.chance(0.95):
        heart = blob(rng, size, s(sc.u(0.6, 0.64)), s(sc.u(0.53, 0.57)), s(0.12), 1.3, sc.u(0.2, 0.5), 0.04)
        sc.add("heart", "organ", heart, 0.7, edge=1.5 * size / 128)
    if sc.chance(0.5):
        _lesion(sc, "lung nodule", "lesion", both, (0.015, 0.03), 0.62, textured=False)
    if sc.chance(0.4):
        lower = both & (yy > s(0.5))
        _lesion(sc, "lung opacity", "lesion", lower, (0.06, 0.09), 0.45, textured=True, blurred=True)
    if sc.chance(0.3):
        lung = lungs[int(rng.integers(2))]
        level = s(sc.u(0.6, 0.68)) + s(0.06) * (xx - s(0.5)) / s(0.2) * (
            1 if lung[:, : size // 2].any() else -1
        )
        free = ~np.logical_or.reduce([o.mask for o in sc.objects]) if sc.objects else True
        sc.add("pleural effusion", "lesion", lung & (yy > level) & free, 0.6, edge=1.5 * size / 128)
    sc.noise(0.015)
    return sc


def ultrasound(rng: np.random.Generator, size: int) -> Scene:
    """B-mode ultrasound: fan-shaped view, speckle, cyst, solid mass, gallbladder, vessel, calcification."""
    sc = Scene.new(rng, size, 1, 0.0)
    s = sc.px
    apex = (s(0.02), s(0.5))
    fan = sector(size, apex, s(0.1), s(0.97), 0.7)
    sc.paint(fan, 0.45, texture=0.06)
    sc.paint(
        tube(size, np.array([[s(0.28), 0.0], [s(sc.u(0.26, 0.34)), s(1.0)]]), s(0.02)) & fan, 0.75, edge=1.0
    )
    inner = sector(size, apex, s(0.38), s(0.85), 0.45)
    if sc.chance(0.5):
        _lesion(sc, "cyst", "lesion", inner, (0.04, 0.07), 0.04, textured=False, blurred=False)
    if sc.chance(0.5):
        _lesion(sc, "solid mass", "tumor", inner, (0.05, 0.08), 0.2, textured=True)
    if sc.chance(0.45):

        def gallbladder() -> np.ndarray:
            cy, cx = sc.point_in(inner, sc.px(0.05))
            return ellipse(size, cy, cx, s(0.04), s(0.09), sc.u(-0.4, 0.4)) & fan

        sc.place("gallbladder", "organ", gallbladder, 0.06)
    if sc.chance(0.3):
        _lesion(sc, "calcification", "lesion", inner, (0.012, 0.02), 0.97, textured=False, blurred=False)
    if sc.chance(0.6):

        def vessel() -> np.ndarray:
            y = s(sc.u(0.45, 0.85))
            pts = np.array([[y, 0.0], [y + s(sc.u(-0.08, 0.08)), s(0.5)], [y + s(sc.u(-0.1, 0.1)), s(1.0)]])
            return tube(size, pts, s(sc.u(0.025, 0.035))) & fan

        sc.place("blood vessel", "vessel", vessel, 0.05)
    speckle = rng.gamma(4.0, 0.25, (size, size)).astype(np.float32)
    sc.canvas = sc.canvas * speckle[..., None] * fan[..., None]
    return sc


def oct(rng: np.random.Generator, size: int) -> Scene:
    """Retinal OCT B-scan: layered bands with a foveal pit, intraretinal cysts and subretinal fluid."""
    sc = Scene.new(rng, size, 1, 0.04)
    s = sc.px
    x = np.arange(size, dtype=np.float32) + 0.5
    x0 = s(sc.u(0.4, 0.6))
    pit = np.exp(-(((x - x0) / s(0.09)) ** 2))
    top = (
        s(sc.u(0.28, 0.36))
        + s(0.02) * np.sin(2 * np.pi * x / size * sc.u(0.5, 1.0) + sc.u(0, 6))
        - s(0.06) * pit
    )
    # (name, thickness as a fraction of the side, level, labelled target type or None)
    layers = (
        ("retinal nerve fiber layer", 0.04 * (1 - 0.85 * pit), 0.82, "retinal structure"),
        ("ganglion cell layer", 0.05 * (1 - 0.8 * pit), 0.45, None),
        ("inner nuclear layer", 0.04 * (1 - 0.5 * pit), 0.22, None),
        ("outer plexiform layer", 0.025 + 0 * pit, 0.5, None),
        ("outer nuclear layer", 0.07 + 0.02 * pit, 0.18, None),
        ("ellipsoid zone", 0.018 + 0 * pit, 0.72, None),
        ("retinal pigment epithelium", 0.03 + 0 * pit, 0.92, "retinal structure"),
        ("choroid", 0.12 + 0 * pit, 0.45, "tissue"),
    )
    bounds = [top]
    for name, thick, level, ttype in layers:
        bounds.append(bounds[-1] + s(1.0) * thick)
        mask = band(size, bounds[-2], bounds[-1])
        if ttype is None or not sc.chance(0.9):
            sc.paint(mask, level, texture=0.04)
        else:
            sc.add(name, ttype, mask, level, texture=0.18 if name == "choroid" else 0.0)
    if sc.chance(0.5):
        nuclear = band(size, bounds[2], bounds[5]) & (np.abs(grid(size)[1] - x0) < s(0.2))
        _lesion(
            sc, "intraretinal cyst", "lesion", nuclear, (0.02, 0.035), 0.03, textured=False, blurred=False
        )
    if sc.chance(0.35):
        cy = float(np.interp(x0, x, bounds[5]))
        fluid = ellipse(size, cy, x0 + s(sc.u(-0.05, 0.05)), s(0.03), s(sc.u(0.07, 0.1))) & band(
            size, bounds[4], bounds[6]
        )
        sc.add("subretinal fluid", "lesion", fluid, 0.05)
    speckle = rng.gamma(6.0, 1 / 6.0, (size, size)).astype(np.float32)
    sc.canvas = sc.canvas * speckle[..., None]
    return sc
