"""Multi-hop phantom questions: answers that need two or more facts combined, one sentence per hop.

Kinds: compare the size or the brightness of two structures, their relative position, count the lesions,
"does the lesion lie inside organ X", and a conditional question ("if there is a X, is it in the left
half?"). Every answer is closed (Yes. / No. / One. / Two.), so closed accuracy is an exact match; every
fact comes from the final masks and canvas, so the tests recompute it from the regenerated scene. The
hops are the reasoning sentences (3 or 4), so a sample's depth K is its number of hops (paper Table 4).
They are the `reasoning` question type: each question carries a word ("compare", "reason", "infer")
that `vital_core.qtypes.classify_question` maps to `reasoning`, so `k="auto"` gives them K = 4.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.phantom.facts import centroid
from training.phantom.modalities import Modality
from training.phantom.scene import PhantomObject, Scene

LESION_TYPES = ("lesion", "tumor")
"""Target types that count as lesions in counting and containment questions."""
MIN_AREA_RATIO = 1.25
"""Size comparisons only between structures whose areas differ by at least this factor."""
MIN_BRIGHTNESS_GAP = 0.08
"""Brightness comparisons only between structures whose mean luminances differ by at least this."""
MIN_OFFSET = 0.1
"""Position comparisons only when the centroids differ by at least this fraction of the image."""
MULTIHOP_ANSWERS = ("yes", "no", "one", "two")
"""Normalised answers of multi-hop questions (all closed)."""
_COUNT_WORD = {1: "One", 2: "Two"}
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_multihop(question_type: str, answer: str, question: str = "") -> bool:
    """Whether a phantom sample is a multi-hop question: a compositional one (training.phantom.compose,
    told by its question), or a legacy `reasoning` sample with a closed answer."""
    from training.phantom.compose import is_compositional

    if question_type != "reasoning":
        return False
    return is_compositional(question) or " ".join(answer.lower().split()).rstrip(".") in MULTIHOP_ANSWERS


def brightness(scene: Scene, obj: PhantomObject) -> float:
    """Mean luminance in [0, 1] of the final (clipped, 8-bit) image inside the object's mask."""
    img = scene.to_uint8().astype(np.float32) / 255.0  # (S, S) or (S, S, 3)
    luma = img @ _LUMA if img.ndim == 3 else img  # (S, S)
    return float(luma[obj.mask].mean())


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _area_text(x: float) -> str:
    return "under 1%" if x < 0.01 else f"about {_pct(x)}"


def _area(obj: PhantomObject) -> float:
    return float(obj.mask.sum()) / obj.mask.size


def _pairs(
    scene: Scene, ok: Callable[[PhantomObject, PhantomObject], bool]
) -> list[tuple[PhantomObject, ...]]:
    return [(a, b) for a in scene.objects for b in scene.objects if a is not b and ok(a, b)]


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _size(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator):
    pairs = _pairs(scene, lambda a, b: max(_area(a), _area(b)) >= MIN_AREA_RATIO * min(_area(a), _area(b)))
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    bigger = _area(a) > _area(b)
    question = f"Compare the sizes in this {mod}: is the {a.name} larger than the {b.name}?"
    steps = [
        f"The {a.name} covers {_area_text(_area(a))} of the image.",
        f"The {b.name} covers {_area_text(_area(b))} of the image.",
        f"So the {a.name} is {'larger' if bigger else 'smaller'} than the {b.name}.",
    ]
    return question, "Yes." if bigger else "No.", steps, a, [a, b, a]


def _brightness(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator):
    lum = {o.name: brightness(scene, o) for o in scene.objects}
    pairs = _pairs(scene, lambda a, b: abs(lum[a.name] - lum[b.name]) >= MIN_BRIGHTNESS_GAP)
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    brighter = lum[a.name] > lum[b.name]
    question = f"Compare the {a.name} and the {b.name} in this {mod}: is the {a.name} brighter?"
    steps = [
        f"The {a.name} has a mean brightness of about {_pct(lum[a.name])}.",
        f"The {b.name} has a mean brightness of about {_pct(lum[b.name])}.",
        f"So the {a.name} is {'brighter' if brighter else 'darker'} than the {b.name}.",
    ]
    return question, "Yes." if brighter else "No.", steps, a, [a, b, a]


def _position(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator):
    axis = int(rng.integers(2))  # 0: vertical (above), 1: horizontal (left of)
    pairs = _pairs(scene, lambda a, b: abs(centroid(a.mask)[axis] - centroid(b.mask)[axis]) >= MIN_OFFSET)
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    ca, cb = centroid(a.mask)[axis], centroid(b.mask)[axis]
    if axis == 0:
        rel, other, measure = "above", "below", "of the image height from the top edge"
    else:
        rel, other, measure = "to the left of", "to the right of", "of the image width from the left edge"
    question = f"Infer the relationship in this {mod}: does the {a.name} lie {rel} the {b.name}?"
    steps = [
        f"The {a.name} is centred at about {_pct(ca)} {measure}.",
        f"The {b.name} is centred at about {_pct(cb)} {measure}.",
        f"So the {a.name} lies {rel if ca < cb else other} the {b.name}.",
    ]
    return question, "Yes." if ca < cb else "No.", steps, a, [a, b, a]


def _count(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator):
    lesions = sorted((o for o in scene.objects if o.target_type in LESION_TYPES), key=lambda o: -_area(o))
    if not 1 <= len(lesions) <= 2:
        return None
    question = f"Reason step by step: how many lesions or tumors does this {mod} show?"
    steps = [
        f"The {o.name} is a {o.target_type} covering {_area_text(_area(o))} of the image." for o in lesions
    ]
    steps.append("No other lesion or tumor is seen.")
    n = len(lesions)
    steps.append(f"So the image shows {n} {'lesion or tumor' if n == 1 else 'lesions or tumors'}.")
    return question, f"{_COUNT_WORD[n]}.", steps, lesions[0], [*lesions, lesions[0], lesions[0]]


def _inside(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator):
    lesions = [o for o in scene.objects if o.target_type in LESION_TYPES]
    organs = [o for o in scene.objects if o.target_type not in LESION_TYPES]
    if not lesions or not organs:
        return None
    les = _pick(rng, lesions)
    hosts = [o for o in organs if o.name == les.host]
    organ = hosts[0] if hosts and rng.random() < 0.5 else _pick(rng, organs)  # balance yes and no
    inside = float((les.mask & organ.mask).sum()) >= 0.9 * float(les.mask.sum())
    question = f"Reason about the relationship: does the {les.name} lie inside the {organ.name}?"
    steps = [
        f"The {les.name} is a {les.target_type} covering {_area_text(_area(les))} of the image.",
        f"The {organ.name} covers {_area_text(_area(organ))} of the image.",
        f"So the {les.name} lies {'within' if inside else 'outside'} the {organ.name}.",
    ]
    return question, "Yes." if inside else "No.", steps, les, [les, organ, les]


def _conditional(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator):
    present = {o.name for o in scene.objects}
    side = "left" if rng.random() < 0.5 else "right"
    pool = sorted(present) if rng.random() < 0.6 else [n for n, _ in modality.targets]  # balance yes / no
    asked_name = _pick(rng, pool)
    question = f"Reason step by step: if there is a {asked_name} in this {mod}, is it in the {side} half?"
    if asked_name not in present:
        obj = _pick(rng, scene.objects)
        steps = [
            f"No {asked_name} is seen in the image.",
            f"The structure checked instead is the {obj.name}, which is not a {asked_name}.",
            "So the condition does not hold and the answer is no.",
        ]
        return question, "No.", steps, obj, [obj, obj, obj]
    obj = scene.get(asked_name)
    cx = centroid(obj.mask)[1]
    if abs(cx - 0.5) < MIN_OFFSET / 2:
        return None
    yes = (cx < 0.5) == (side == "left")
    steps = [
        f"A {asked_name} is present in the image.",
        f"It is centred at about {_pct(cx)} of the image width from the left edge.",
        f"So it is in the {'left' if cx < 0.5 else 'right'} half and the answer is {'yes' if yes else 'no'}.",
    ]
    return question, "Yes." if yes else "No.", steps, obj, [obj, obj, obj]


KINDS: dict[str, Callable] = {
    "size": _size,
    "brightness": _brightness,
    "position": _position,
    "count": _count,
    "inside": _inside,
    "conditional": _conditional,
}
"""Multi-hop question kinds; each returns (question, answer, steps, target, step_objects) or None when it
does not apply. `step_objects[k]` is the structure sentence k is about (its mask grounds latent step k+1):
the two structures compared in turn, then the question's target for the conclusion."""


def multihop(
    scene: Scene, modality: Modality, mod: str, rng: np.random.Generator
) -> tuple[str, str, list[str], PhantomObject, list[PhantomObject]] | None:
    """A multi-hop question of a random applicable kind, or None when no kind applies to the scene."""
    order = list(KINDS)
    for i in rng.permutation(len(order)):
        out = KINDS[order[int(i)]](scene, modality, mod, rng)
        if out is not None:
            return out
    return None
