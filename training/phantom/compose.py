"""Compositional multi-hop questions: hop 2's referent is chosen by hop 1's image-dependent result.

A question is a small program over a compositional scene (training.phantom.layout):

    hop 1  superlative over the lesions      largest | smallest | brightest | darkest   -> lesion L
    hop 2  relation from L to a host         host (the one holding L) | nearest (to L)  -> host O
    hop 3  read O                            name | appearance (brightness and margin)  -> the answer

e.g. "Reason step by step: which organ in this CT scan holds the brightest lesion?" Because names say
nothing about size, brightness or position (every object's are drawn at random), neither the question
nor any one structure tells the answer: the gates of `training.phantom.audit` measure that. The chain
has four sentences, one per latent step (K = 4 = the reasoning type's depth):

    1. "The brightest lesion is the abscess."                         mask: L
    2. "The abscess lies in the upper left part of the image."        mask: L
    3. "The organ holding it is the spleen."                          mask: O
    4. "So the brightest lesion lies in the spleen." / "The spleen is hyperdense with blurred margins."

Answers are closed: "The spleen." (4 classes: the modality's host names) or "Hyperdense with blurred
margins." (4 classes). Sample m of a modality asks template m mod 16 with answer class (m div 16) mod 4,
and the scene is drawn again until it has that answer, so answers are balanced per (modality, template)
by construction (CLEVR-style rejection sampling). Margins keep every comparison clear of ties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from training.phantom.atlas import ATLAS, Atlas
from training.phantom.facts import mask_facts
from training.phantom.layout import Look, Slot, background, paint, place, random_looks
from training.phantom.scene import PhantomObject, Scene

SUPERLATIVES = ("largest", "smallest", "brightest", "darkest")
RELATIONS = ("host", "nearest")
ATTRIBUTES = ("name", "appearance")
MIN_AREA_RATIO = 1.3
"""A size superlative needs the extreme lesion's area to differ from the runner-up's by this factor."""
MIN_BRIGHTNESS_GAP = 0.06
"""A brightness superlative needs this gap (mean luminance in [0, 1]) to the runner-up."""
MIN_DISTANCE_GAP = 4.0
"""`nearest` needs the runner-up host to be this many pixels (and 30 %) farther from the lesion."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_QUESTION_RE = re.compile(
    r"^Reason step by step: (which|how does) .* the (largest|smallest|brightest|darkest) lesion\b"
)


def is_compositional(question: str) -> bool:
    """Whether a question is one of this module's templates."""
    return bool(_QUESTION_RE.match(question.strip()))


@dataclass(frozen=True)
class Template:
    """One question program: superlative, relation, attribute."""

    sup: str
    rel: str
    attr: str

    @property
    def key(self) -> str:
        return f"{self.sup}-{self.rel}-{self.attr}"

    @property
    def layout(self) -> str:
        """Hosted scenes for the host relation, free scenes (nothing touches) for nearest."""
        return "hosted" if self.rel == "host" else "free"


TEMPLATES: tuple[Template, ...] = tuple(
    Template(s, r, a) for a in ATTRIBUTES for r in RELATIONS for s in SUPERLATIVES
)
"""The 16 templates, in the order sample m of a modality cycles through them."""


def template_for(m: int) -> tuple[Template, int]:
    """The template and answer class (0-3) of a modality's m-th compositional question."""
    return TEMPLATES[m % len(TEMPLATES)], (m // len(TEMPLATES)) % 4


def answer_classes(atlas: Atlas, attr: str) -> list[str]:
    """The four answer classes of an attribute: host names, or (brightness, margin) pairs."""
    if attr == "name":
        return list(atlas.hosts)
    return [f"{b}|{m}" for b in ("brighter", "darker") for m in ("sharp", "blurred")]


def brightness(scene: Scene, obj: PhantomObject) -> float:
    """Mean luminance in [0, 1] of the final 8-bit image inside the object's mask."""
    img = scene.to_uint8().astype(np.float32) / 255.0
    luma = img @ _LUMA if img.ndim == 3 else img
    return float(luma[obj.mask].mean())


def mask_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest Euclidean distance in pixels between a pixel of `a` and a pixel of `b` (0 if they touch)."""
    if (a & b).any():
        return 0.0
    pa, pb = np.argwhere(_edge(a)).astype(np.float32), np.argwhere(_edge(b)).astype(np.float32)
    d = ((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d.min()))


def _edge(m: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (the nearest pair of two disjoint masks lies on their boundaries)."""
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def resolve(sup: str, rel: str, lesions: list, hosts: list, value, mask, holds) -> tuple[int, int] | None:
    """Indices (L, O) of hop 1's lesion and hop 2's host, or None when a margin is not met.

    Works on any objects: `value(obj, kind)` gives an area or a brightness, `mask(obj)` a bool mask,
    `holds(host, lesion)` whether the host holds the lesion; the generator uses it on planned levels, then
    on the painted image, so one rule decides both."""
    kind = "area" if sup in ("largest", "smallest") else "brightness"
    vals = [value(o, kind) for o in lesions]
    order = sorted(range(len(vals)), key=lambda i: vals[i], reverse=sup in ("largest", "brightest"))
    a, b = vals[order[0]], vals[order[1]]
    if kind == "area" and max(a, b) < MIN_AREA_RATIO * min(a, b):
        return None
    if kind == "brightness" and abs(a - b) < MIN_BRIGHTNESS_GAP:
        return None
    li = order[0]
    if rel == "host":
        hits = [i for i, h in enumerate(hosts) if holds(h, lesions[li])]
        return (li, hits[0]) if hits else None
    dist = [mask_distance(mask(lesions[li]), mask(h)) for h in hosts]
    near = sorted(range(len(dist)), key=lambda i: dist[i])
    d1, d2 = dist[near[0]], dist[near[1]]
    if d2 - d1 < max(MIN_DISTANCE_GAP, 0.3 * d1):
        return None
    return li, near[0]


def appearance_class(obj: PhantomObject) -> str:
    """The appearance answer class of a host: brightness against its surroundings and margin."""
    return f"{'brighter' if obj.brighter else 'darker'}|{'blurred' if obj.blurred else 'sharp'}"


@dataclass(frozen=True)
class Chain:
    """A compositional question with its answer, chain, step objects and answer class."""

    question: str
    answer: str
    reasoning: list[str]
    steps: list[PhantomObject]
    answer_class: str
    template: Template


def contrast_word(brighter: bool, contrast: tuple[str, str] | None) -> str:
    """The modality's word for brighter / darker than the surroundings (plain bright / dark without one)."""
    if contrast:
        return contrast[0 if brighter else 1]
    return "bright" if brighter else "dark"


def question_text(t: Template, atlas: Atlas, mod: str) -> str:
    """The question of a template ("Reason step by step: ..." so it classifies as reasoning)."""
    where = "holding" if t.rel == "host" else "nearest to"
    if t.attr == "name":
        verb = "holds" if t.rel == "host" else "lies nearest to"
        return f"Reason step by step: which {atlas.host_word} in this {mod} {verb} the {t.sup} lesion?"
    return (
        f"Reason step by step: how does the {atlas.host_word} {where} the {t.sup} lesion look in this {mod}?"
    )


def chain(
    scene: Scene, t: Template, atlas: Atlas, contrast: tuple[str, str] | None, mod: str, li: int, oi: int
) -> Chain:
    """The question, answer and four sentences once hop 1 resolved lesion `li` and hop 2 host `oi`."""
    lesions = [o for o in scene.objects if o.target_type == "lesion"]
    hosts = [o for o in scene.objects if o.target_type != "lesion"]
    les, host = lesions[li], hosts[oi]
    region = mask_facts(les.mask).region
    rel = "holding it" if t.rel == "host" else "nearest to it"
    look = f"{contrast_word(host.brighter, contrast)} with {'blurred' if host.blurred else 'sharp'} margins"
    if t.attr == "name":
        last = f"So the {t.sup} lesion lies {'in' if t.rel == 'host' else 'nearest to'} the {host.name}."
        answer = f"The {host.name}."
        cls = host.name
    else:
        last = f"The {host.name} is {look}."
        answer = f"{look[0].upper()}{look[1:]}."
        cls = appearance_class(host)
    steps = [
        f"The {t.sup} lesion is the {les.name}.",
        f"The {les.name} lies in the {region} part of the image.",
        f"The {atlas.host_word} {rel} is the {host.name}.",
        last,
    ]
    return Chain(question_text(t, atlas, mod), answer, steps, [les, les, host, host], cls, t)


def _planned(sc: Scene, key: str, slots: list[Slot], looks: list[Look]) -> list[float]:
    """Each object's intended luminance before painting (what `layout.paint` aims for)."""
    luma = _LUMA if sc.canvas.shape[2] == 3 else np.ones(1, dtype=np.float32)
    levels: list[float] = []
    for slot, look in zip(slots, looks):
        under = levels[slot.host] if slot.host is not None else float((sc.canvas[slot.mask] @ luma).mean())
        levels.append(
            float(np.clip(under + (look.contrast if look.brighter else -look.contrast), 0.03, 0.97))
        )
    return levels


def _impose(target: str, attr: str, oi: int, looks: list[Look], atlas: Atlas) -> None:
    """Give host `oi` the target answer: its name (swapped with whoever wore it), or its appearance."""
    host_looks = looks[:3]
    if attr == "name":
        other = next((lk for lk in host_looks if lk.name == target), None)
        if other is not None:
            other.name = host_looks[oi].name
        host_looks[oi].name = target
    else:
        b, m = target.split("|")
        host_looks[oi].brighter, host_looks[oi].blurred = b == "brighter", m == "blurred"


def compositional(
    key: str,
    t: Template,
    target: str,
    contrast: tuple[str, str] | None,
    mod: str,
    rng: np.random.Generator,
    size: int,
    tries: int = 60,
) -> tuple[Scene, Chain] | None:
    """A scene of modality `key` whose template-`t` question has answer class `target` (None if not found).

    Geometry first, then looks; the target is imposed on hop 2's host and the plan is checked with the
    intended levels before painting; the painted scene is checked again with measured values."""
    atlas = ATLAS[key]
    for _ in range(tries):
        sc, region = background(key, rng, size)
        slots = place(sc, region, t.layout)
        if slots is None:
            continue
        looks = random_looks(sc, atlas, slots)
        levels = _planned(sc, key, slots, looks)
        planned = _resolve_plan(t, slots, levels)
        if planned is None:
            continue
        _impose(target, t.attr, planned[1], looks, atlas)
        levels = _planned(sc, key, slots, looks)
        if _resolve_plan(t, slots, levels) != planned:
            continue
        paint(sc, key, atlas, slots, looks)
        out = resolve_scene(sc, t)
        if out is None:
            continue
        ch = chain(sc, t, atlas, contrast, mod, *out)
        if ch.answer_class == target:
            return sc, ch
    return None


def _resolve_plan(t: Template, slots: list[Slot], levels: list[float]) -> tuple[int, int] | None:
    lesions = [i for i, s in enumerate(slots) if s.role == "lesion"]
    hosts = [i for i, s in enumerate(slots) if s.role == "host"]
    out = resolve(
        t.sup,
        t.rel,
        lesions,
        hosts,
        value=lambda i, kind: float(slots[i].mask.sum()) if kind == "area" else levels[i],
        mask=lambda i: slots[i].mask,
        holds=lambda h, les: slots[les].host == h,
    )
    return out


def resolve_scene(sc: Scene, t: Template) -> tuple[int, int] | None:
    """Hop 1 and hop 2 on a painted scene, from its masks and its final 8-bit image."""
    lesions = [o for o in sc.objects if o.target_type == "lesion"]
    hosts = [o for o in sc.objects if o.target_type != "lesion"]
    return resolve(
        t.sup,
        t.rel,
        lesions,
        hosts,
        value=lambda o, kind: float(o.mask.sum()) if kind == "area" else brightness(sc, o),
        mask=lambda o: o.mask,
        holds=lambda h, les: les.host == h.name,
    )
