"""Compositional multi-hop questions: hop 2's referent is chosen by hop 1's image-dependent result.

Two families. The **organ-hop** family (the default task, FORMAT_VERSION 5) compares the host structures
("organs") in hop 1 — what a small backbone reads well (issue 30's log, E19: organ positions ranked 98 %) —
and reads the lesion the chosen organ holds in hop 2, on hosted scenes (each organ holds one lesion):

    hop 1  position superlative over the organs   leftmost | rightmost | uppermost | lowest  -> organ O
    hop 2  the lesion inside O                                                              -> lesion L

e.g. "Reason step by step: which lesion in this CT scan lies in the leftmost organ?" -> "The abscess.". Its
chain reads hop 2 in the direction the captions teach it (lesion -> organ) and looks the answer up in what it
wrote (the log's E21 chain, the first whose explicit reasoning beat the equal-budget direct answer):

    1. "The leftmost organ is the liver."                                                   mask: O
    2. "The cyst lies in the spleen, the abscess in the liver, the tumor in the kidney."    mask: O
    3. "The lesion inside the liver is the abscess."                                        mask: L
    4. "So the lesion in the leftmost organ is the abscess."                                mask: L

Answers are the modality's four lesion names. Size superlatives over organs are left out: the log measured
them at 52 % / 20 % for hop 1 alone (largest / smallest, E19), where position reached 98 %.

The **lesion-hop** family (FORMAT_VERSION 3-4's task, `vital phantom --task lesion-hop`, kept for
comparison) compares the lesions in hop 1, which the log found a small backbone cannot localise (E16):

    hop 1  superlative over the lesions      largest | smallest | leftmost | uppermost  -> lesion L
    hop 2  relation from L to a host         host (the one holding L) | nearest (to L)  -> host O
    hop 3  read O                            name | quadrant                            -> the answer

e.g. "Reason step by step: which organ in this CT scan holds the leftmost lesion?" Names are told by tone
but say nothing about size or place (both drawn at random for every object), so neither the question nor
any one structure tells the answer: the gates of `training.phantom.audit` measure that. The chain has
four sentences, one per latent step (K = 4 = the reasoning type's depth):

    1. "The leftmost lesion is the abscess."                          mask: L
    2. "The abscess lies in the upper left part of the image."        mask: L
    3. "The organ holding it is the spleen."                          mask: O
    4. "So the leftmost lesion lies in the spleen." / "The spleen lies in the upper left quadrant."

Answers are closed: "The spleen." (4 classes: the modality's host names) or "The upper left quadrant."
(4 classes). In either family sample m of a modality asks template m mod T with answer class (m div T) mod 4,
and the scene is drawn again until it has that answer, so answers are balanced per (modality, template) by
construction (CLEVR-style rejection sampling). Margins keep every comparison clear of ties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from training.phantom.atlas import ATLAS, Atlas
from training.phantom.facts import centroid, mask_facts
from training.phantom.layout import Look, Slot, background, paint, place, random_looks
from training.phantom.scene import PhantomObject, Scene

SUPERLATIVES = ("largest", "smallest", "leftmost", "uppermost")
"""Hop 1 of the lesion-hop family (over the lesions)."""
ORGAN_SUPERLATIVES = ("leftmost", "rightmost", "uppermost", "lowest")
"""Hop 1 of the organ-hop family (over the host structures): position only."""
FAMILIES = ("organ", "lesion")
"""What hop 1 compares: organ-hop (the default task) or lesion-hop."""
RELATIONS = ("host", "nearest")
ATTRIBUTES = ("name", "quadrant")
QUADRANTS = ("upper left", "upper right", "lower left", "lower right")
MIN_AREA_RATIO = 1.3
"""A size superlative needs the extreme lesion's area to differ from the runner-up's by this factor."""
MIN_POSITION_GAP = 0.06
"""A position superlative needs the runner-up's centroid this far behind (fraction of the image side)."""
MIN_DISTANCE_GAP = 4.0
"""`nearest` needs the runner-up host to be this many pixels (and 30 %) farther from the lesion."""
MIN_QUADRANT_MARGIN = 0.04
"""A quadrant answer needs the host's centroid this far from both midlines (fraction of the side)."""
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_QUESTION_RE = re.compile(
    r"^Reason step by step: (which|in which quadrant) .* the (largest|smallest|leftmost|uppermost) lesion\b"
)
_ORGAN_QUESTION_RE = re.compile(
    r"^Reason step by step: which lesion in this .+ lies in the (leftmost|rightmost|uppermost|lowest) "
    r"(organ|structure|region)\?$"
)


def is_compositional(question: str) -> bool:
    """Whether a question is one of this module's templates (either family)."""
    q = question.strip()
    return bool(_QUESTION_RE.match(q) or _ORGAN_QUESTION_RE.match(q))


@dataclass(frozen=True)
class Template:
    """One question program: superlative, relation, attribute, and what hop 1 compares (`over`)."""

    sup: str
    rel: str
    attr: str
    over: str = "lesion"
    """lesion (lesion-hop: hop 1 over the lesions, the answer an organ or a quadrant) or organ (organ-hop:
    hop 1 over the organs, rel "inside", the answer the lesion's name)."""

    @property
    def key(self) -> str:
        """ "largest-host-name" (lesion-hop; FORMAT_VERSION 3-4's keys) or "organ-leftmost-inside-name"."""
        base = f"{self.sup}-{self.rel}-{self.attr}"
        return base if self.over == "lesion" else f"organ-{base}"

    @property
    def layout(self) -> str:
        """Hosted scenes for the host and inside relations, free scenes (nothing touches) for nearest."""
        return "free" if self.rel == "nearest" else "hosted"


LESION_TEMPLATES: tuple[Template, ...] = tuple(
    Template(s, r, a)
    for a in ATTRIBUTES
    for r in RELATIONS
    for s in SUPERLATIVES
    if not (a == "quadrant" and s in ("leftmost", "uppermost"))
)
"""The lesion-hop family's 12 templates, in the order sample m of a modality cycles through them. A position
superlative never asks for a quadrant: the host holding (or nearest to) the leftmost lesion is nearly always
on the left, so the answer would follow from the question."""
ORGAN_TEMPLATES: tuple[Template, ...] = tuple(
    Template(s, "inside", "name", "organ") for s in ORGAN_SUPERLATIVES
)
"""The organ-hop family's 4 templates (the default task)."""
TEMPLATES = ORGAN_TEMPLATES
"""The default task's templates."""
_FAMILY_TEMPLATES = {"organ": ORGAN_TEMPLATES, "lesion": LESION_TEMPLATES}


def templates(family: str = "organ") -> tuple[Template, ...]:
    """The templates of a family (`FAMILIES`)."""
    if family not in _FAMILY_TEMPLATES:
        raise ValueError(f"family: one of {', '.join(FAMILIES)}")
    return _FAMILY_TEMPLATES[family]


def template_for(m: int, family: str = "organ") -> tuple[Template, int]:
    """The template and answer class (0-3) of a modality's m-th compositional question."""
    ts = templates(family)
    return ts[m % len(ts)], (m // len(ts)) % 4


def parse_key(key: str) -> Template:
    """The template of a key as written to scenes.jsonl (either family)."""
    parts = key.split("-")
    if parts[0] == "organ" and len(parts) == 4:
        t = Template(parts[1], parts[2], parts[3], "organ")
    elif len(parts) == 3:
        t = Template(*parts)
    else:
        raise ValueError(f"not a compositional template key: {key!r}")
    if t not in _FAMILY_TEMPLATES[t.over]:
        raise ValueError(f"not a compositional template key: {key!r}")
    return t


def answer_classes(atlas: Atlas, attr: str, over: str = "lesion") -> list[str]:
    """The four answer classes of a template: host names or quadrants (lesion-hop), lesion names
    (organ-hop)."""
    if over == "organ":
        return list(atlas.lesions)
    return list(atlas.hosts) if attr == "name" else list(QUADRANTS)


def quadrant(mask: np.ndarray) -> str | None:
    """The quadrant of a mask's centroid, or None when it lies within MIN_QUADRANT_MARGIN of a midline."""
    cy, cx = centroid(mask)
    if min(abs(cy - 0.5), abs(cx - 0.5)) < MIN_QUADRANT_MARGIN:
        return None
    return f"{'upper' if cy < 0.5 else 'lower'} {'left' if cx < 0.5 else 'right'}"


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


def resolve(sup: str, rel: str, lesions: list, hosts: list, mask, holds) -> tuple[int, int] | None:
    """Indices (L, O) of hop 1's lesion and hop 2's host, or None when a margin is not met.

    Works on any objects: `mask(obj)` gives a bool mask, `holds(host, lesion)` whether the host holds the
    lesion; the generator uses it on planned slots and again on the painted scene, so one rule decides both."""
    if sup in ("largest", "smallest"):
        vals = [float(mask(o).sum()) for o in lesions]
        order = sorted(range(len(vals)), key=lambda i: vals[i], reverse=sup == "largest")
        a, b = vals[order[0]], vals[order[1]]
        if max(a, b) < MIN_AREA_RATIO * min(a, b):
            return None
    else:  # leftmost: smallest centroid column; uppermost: smallest centroid row
        axis = 1 if sup == "leftmost" else 0
        vals = [centroid(mask(o))[axis] for o in lesions]
        order = sorted(range(len(vals)), key=lambda i: vals[i])
        if vals[order[1]] - vals[order[0]] < MIN_POSITION_GAP:
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


def resolve_organ(sup: str, lesions: list, hosts: list, mask, holds) -> tuple[int, int] | None:
    """Organ-hop: indices (L, O) of the lesion inside hop 1's organ O, or None when the position margin is
    not met or O holds no lesion. `mask` and `holds` as in `resolve`."""
    axis = 1 if sup in ("leftmost", "rightmost") else 0
    sign = 1.0 if sup in ("leftmost", "uppermost") else -1.0
    vals = [sign * centroid(mask(h))[axis] for h in hosts]
    order = sorted(range(len(vals)), key=lambda i: vals[i])
    if len(order) < 2 or vals[order[1]] - vals[order[0]] < MIN_POSITION_GAP:
        return None
    oi = order[0]
    held = [i for i, les in enumerate(lesions) if holds(hosts[oi], les)]
    return (held[0], oi) if len(held) == 1 else None


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
    if t.over == "organ":
        return f"Reason step by step: which lesion in this {mod} lies in the {t.sup} {atlas.host_word}?"
    where = "holding" if t.rel == "host" else "nearest to"
    if t.attr == "name":
        verb = "holds" if t.rel == "host" else "lies nearest to"
        return f"Reason step by step: which {atlas.host_word} in this {mod} {verb} the {t.sup} lesion?"
    return f"Reason step by step: in which quadrant of this {mod} is the {atlas.host_word} {where} the {t.sup} lesion?"


def chain(scene: Scene, t: Template, atlas: Atlas, mod: str, li: int, oi: int) -> Chain | None:
    """The question, answer and four sentences once hop 1 resolved lesion `li` and hop 2 host `oi` (None when
    a quadrant answer sits on a midline)."""
    lesions = [o for o in scene.objects if o.target_type == "lesion"]
    hosts = [o for o in scene.objects if o.target_type != "lesion"]
    les, host = lesions[li], hosts[oi]
    if t.over == "organ":
        return _organ_chain(t, atlas, mod, lesions, les, host)
    region = mask_facts(les.mask).region
    rel = "holding it" if t.rel == "host" else "nearest to it"
    if t.attr == "name":
        last = f"So the {t.sup} lesion lies {'in' if t.rel == 'host' else 'nearest to'} the {host.name}."
        answer, cls = f"The {host.name}.", host.name
    else:
        quad = quadrant(host.mask)
        if quad is None:
            return None
        last = f"The {host.name} lies in the {quad} quadrant."
        answer, cls = f"The {quad} quadrant.", quad
    steps = [
        f"The {t.sup} lesion is the {les.name}.",
        f"The {les.name} lies in the {region} part of the image.",
        f"The {atlas.host_word} {rel} is the {host.name}.",
        last,
    ]
    return Chain(question_text(t, atlas, mod), answer, steps, [les, les, host, host], cls, t)


def reads_sentence(lesions: list[PhantomObject], atlas: Atlas) -> str:
    """Every lesion's organ, lesion -> organ as the captions say it, in the atlas's lesion order: "The cyst
    lies in the spleen, the abscess in the liver, the tumor in the kidney." """
    holds = {o.name: o.host for o in lesions}
    first, *rest = [n for n in atlas.lesions if n in holds]
    tail = "".join(f", the {n} in the {holds[n]}" for n in rest)
    return f"The {first} lies in the {holds[first]}{tail}."


def _organ_chain(
    t: Template, atlas: Atlas, mod: str, lesions: list[PhantomObject], les: PhantomObject, host: PhantomObject
) -> Chain:
    """The organ-hop chain: hop 1's organ, every lesion's organ, the lookup, the answer."""
    word = atlas.host_word
    steps = [
        f"The {t.sup} {word} is the {host.name}.",
        reads_sentence(lesions, atlas),
        f"The lesion inside the {host.name} is the {les.name}.",
        f"So the lesion in the {t.sup} {word} is the {les.name}.",
    ]
    return Chain(question_text(t, atlas, mod), f"The {les.name}.", steps, [host, host, les, les], les.name, t)


def _impose_name(target: str, i: int, looks: list[Look]) -> None:
    """Give object `i` the target name, swapped with whoever of its role (hosts: looks 0-2, lesions 3-5)
    wore it."""
    group = looks[:3] if i < 3 else looks[3:]
    other = next((lk for lk in group if lk.name == target), None)
    if other is not None:
        other.name = looks[i].name
    looks[i].name = target


def compositional(
    key: str, t: Template, target: str, mod: str, rng: np.random.Generator, size: int, tries: int = 150
) -> tuple[Scene, Chain] | None:
    """A scene of modality `key` whose template-`t` question has answer class `target` (None if not found).

    Geometry first: hop 1 and hop 2 are resolved on the planned masks; a name target is then imposed on hop
    2's object (its host, or for organ-hop its lesion), a quadrant target is drawn for (rejection); the
    painted scene is checked again."""
    atlas = ATLAS[key]
    for _ in range(tries):
        sc, region = background(key, rng, size)
        slots = place(sc, region, t.layout)
        if slots is None:
            continue
        planned = _resolve_plan(t, slots)
        if planned is None:
            continue
        if t.attr == "quadrant" and quadrant(slots[planned[1]].mask) != target:
            continue
        looks = random_looks(sc, atlas, slots)
        if t.over == "organ":  # the answer is hop 2's lesion: slots are 3 hosts, then 3 lesions
            _impose_name(target, 3 + planned[0], looks)
        elif t.attr == "name":
            _impose_name(target, planned[1], looks)
        paint(sc, key, atlas, slots, looks)
        out = resolve_scene(sc, t)
        ch = chain(sc, t, atlas, mod, *out) if out is not None else None
        if ch is not None and ch.answer_class == target:
            return sc, ch
    return None


def _resolve_plan(t: Template, slots: list[Slot]) -> tuple[int, int] | None:
    """Hop 1 and hop 2 on the planned slots: (lesion index among lesions, host slot index)."""
    lesions = [i for i, s in enumerate(slots) if s.role == "lesion"]
    hosts = [i for i, s in enumerate(slots) if s.role == "host"]
    holds = lambda h, les: slots[les].host == h  # noqa: E731
    if t.over == "organ":
        return resolve_organ(t.sup, lesions, hosts, mask=lambda i: slots[i].mask, holds=holds)
    return resolve(t.sup, t.rel, lesions, hosts, mask=lambda i: slots[i].mask, holds=holds)


def resolve_scene(sc: Scene, t: Template) -> tuple[int, int] | None:
    """Hop 1 and hop 2 on a painted scene, from its masks."""
    lesions = [o for o in sc.objects if o.target_type == "lesion"]
    hosts = [o for o in sc.objects if o.target_type != "lesion"]
    holds = lambda h, les: les.host == h.name  # noqa: E731
    if t.over == "organ":
        return resolve_organ(t.sup, lesions, hosts, mask=lambda o: o.mask, holds=holds)
    return resolve(t.sup, t.rel, lesions, hosts, mask=lambda o: o.mask, holds=holds)
