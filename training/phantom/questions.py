"""Question templates of the six types, and answers and reasoning chains derived from the ground truth.

Every geometric word comes from `facts` (computed on the target's mask); brightness, texture and
boundary words come from how the object was painted. Answers are short and canonical so closed-ended
accuracy is an exact match after `training.data.manifest.normalize_answer`:
yes/no -> "Yes." / "No."; identify -> "The {type} shown is the {target}."; location_choice ->
"The {target} is in the {left|central|right|upper|middle|lower} part of the image.";
location -> "The {target} is in the {region} part of the image.".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.phantom.facts import MaskFacts, mask_facts, nearest, relation
from training.phantom.modalities import Modality
from training.phantom.multihop import multihop
from training.phantom.scene import PhantomObject, Scene

YESNO = (
    "Is there {a} {t} in this {mod}?",
    "Is {a} {t} visible in this {mod}?",
    "Does this {mod} show {a} {t}?",
    "Can {a} {t} be seen in this {mod}?",
)
IDENTIFY = (
    "What {tt} is seen in the {region} part of this {mod}?",
    "Which {tt} appears in the {region} part of the image?",
    "Identify the {tt} in the {region} part of this {mod}.",
    "Name the {tt} visible in the {region} part of this {mod}.",
)
IDENTIFY_LARGEST = (
    "What is the largest {tt} in this {mod}?",
    "Identify the largest {tt} shown in this {mod}.",
)
CHOICE_HORIZONTAL = (
    "Is the {t} in the left, right, or center of the image?",
    "Is the {t} on the left side, the right side, or in the center of this {mod}?",
    "Does the {t} lie in the left, central, or right part of the image?",
)
CHOICE_VERTICAL = (
    "Is the {t} in the upper, middle, or lower part of the image?",
    "Does the {t} appear in the top, middle, or bottom of this {mod}?",
    "Is the {t} in the upper or lower part of this {mod}, or in the middle?",
)
LOCATION = (
    "Where is the {t} located in this {mod}?",
    "Where can the {t} be found in the image?",
    "In which part of the image is the {t}?",
    "What is the position of the {t} in this {mod}?",
)
DESCRIBE = (
    "Describe the appearance of the {t} in this {mod}.",
    "Describe the {t}.",
    "How does the {t} look in this {mod}?",
    "Characterize the {t} seen in this image.",
)
REASONING = (
    "Analyze the visual findings of the {t} in this {mod}.",
    "What can be inferred about the {t} from this {mod}?",
    "Explain how the {t} can be recognized in this {mod}.",
    "Interpret the appearance of the {t} relative to the surrounding structures.",
)

HORIZONTAL_WORD = {"left": "left", "center": "central", "right": "right"}
VERTICAL_WORD = {"upper": "upper", "middle": "middle", "lower": "lower"}
SIZE_WORD = {"small": "small", "medium": "medium-sized", "large": "large"}
_TYPE_WORD = {"cell": "cellular structure"}


@dataclass(frozen=True)
class QA:
    """A question with its canonical answer, reasoning chain and the object its mask shows."""

    question: str
    answer: str
    reasoning: list[str]
    target: PhantomObject
    """The object whose mask is the sample's mask (for a "no" answer: the structure the reasoning names)."""
    asked: str
    """The target named by the question (absent from the scene for a "no" answer)."""
    step_targets: list[PhantomObject] | None = None
    """The object each reasoning sentence is about (multi-hop questions); None: every step is `target`."""

    def step_objects(self) -> list[PhantomObject]:
        """One object per reasoning sentence: the structure whose mask grounds that step."""
        return list(self.step_targets) if self.step_targets else [self.target] * len(self.reasoning)


class _Words:
    """The words describing one object of a scene."""

    def __init__(self, obj: PhantomObject, scene: Scene, modality: Modality) -> None:
        self.obj, self.t = obj, obj.name
        self.f: MaskFacts = mask_facts(obj.mask)
        self.tt = _TYPE_WORD.get(obj.target_type, obj.target_type)
        self.size = SIZE_WORD[self.f.size]
        self.margin = "blurred" if obj.blurred else "sharp"
        self.texture = "heterogeneous" if obj.textured else "homogeneous"
        plain = "bright" if obj.brighter else "dark"
        self.contrast = modality.contrast[0 if obj.brighter else 1] if modality.contrast else plain
        than = f"than the surrounding {obj.host}" if obj.host else "than its surroundings"
        lighter = f"{'brighter' if obj.brighter else 'darker'} {than}"
        self.contrast_full = f"{self.contrast}, {lighter}" if modality.contrast else lighter
        others = [(o.name, o.mask) for o in scene.objects if o is not obj]
        near = nearest(obj.mask, others)
        self.relation = relation(obj.mask, near[1], near[0]) if near else None


def make_qa(
    scene: Scene, modality: Modality, qtype: str, rng: np.random.Generator, legacy_multihop: bool = True
) -> QA:
    """Question, answer and reasoning of type `qtype` about a random object of a non-empty scene.

    `legacy_multihop`: a `reasoning` question is one of the old multi-hop kinds (training.phantom.multihop)
    with probability MULTIHOP_SHARE; the compositional task asks its multi-hop questions separately
    (training.phantom.compose), so it passes False and its reasoning questions here are all open."""
    mod = modality.phrases[int(rng.integers(len(modality.phrases)))]
    if qtype == "reasoning":
        return _reasoning(scene, modality, mod, rng, legacy_multihop)
    return _TEMPLATE_BUILDERS[qtype](scene, modality, mod, rng)


def _choose(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _any_object(scene: Scene, rng: np.random.Generator) -> PhantomObject:
    return scene.objects[int(rng.integers(len(scene.objects)))]


def _yesno(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator) -> QA:
    present = {o.name for o in scene.objects}
    absent = [(n, tt) for n, tt in modality.targets if n not in present]
    template = _choose(rng, YESNO)
    if absent and rng.random() < 0.5:
        asked, asked_type = absent[int(rng.integers(len(absent)))]
        same = [o for o in scene.objects if o.target_type == asked_type]
        obj = same[int(rng.integers(len(same)))] if same else _any_object(scene, rng)
        w = _Words(obj, scene, modality)
        step = f"No {asked} is seen; the {w.tt} in the {w.f.region} part of the image is the {w.t}."
        return QA(template.format(a=_article(asked), t=asked, mod=mod), "No.", [step], obj, asked)
    obj = _any_object(scene, rng)
    w = _Words(obj, scene, modality)
    step = (
        f"{_article(w.f.shape).capitalize()} {w.f.shape} {w.contrast} structure with the typical appearance "
        f"of the {w.t} is seen in the {w.f.region} part of the image."
    )
    return QA(template.format(a=_article(w.t), t=w.t, mod=mod), "Yes.", [step], obj, w.t)


def _identify(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator) -> QA:
    words = [_Words(o, scene, modality) for o in scene.objects]
    keys = [(w.obj.target_type, w.f.region) for w in words]
    unique = [w for w, k in zip(words, keys) if keys.count(k) == 1]
    if unique:
        w = unique[int(rng.integers(len(unique)))]
        question = _choose(rng, IDENTIFY).format(tt=w.tt, region=w.f.region, mod=mod)
        step = (
            f"The {w.f.shape} {w.contrast} {w.tt} in the {w.f.region} part of the image "
            f"has the typical appearance of the {w.t}."
        )
    else:
        first = _any_object(scene, rng)
        same = [w for w in words if w.obj.target_type == first.target_type]
        w = max(same, key=lambda x: x.f.area)
        question = _choose(rng, IDENTIFY_LARGEST).format(tt=w.tt, mod=mod)
        step = (
            f"The largest {w.tt} in the image is a {w.size} {w.f.shape} structure "
            f"with the typical appearance of the {w.t}."
        )
    return QA(question, f"The {w.tt} shown is the {w.t}.", [step], w.obj, w.t)


def _location_choice(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator) -> QA:
    w = _Words(_any_object(scene, rng), scene, modality)
    lead = f"The {w.f.shape} {w.contrast} {w.t} is centred at about"
    if rng.random() < 0.5:
        question = _choose(rng, CHOICE_HORIZONTAL).format(t=w.t, mod=mod)
        word = HORIZONTAL_WORD[w.f.horizontal]
        third = {"left": "left", "center": "middle", "right": "right"}[w.f.horizontal]
        where = f"{w.f.cx * 100:.0f}% of the image width from the left edge, in the {third} third"
        step = f"{lead} {where} of the image."
    else:
        question = _choose(rng, CHOICE_VERTICAL).format(t=w.t, mod=mod)
        word = VERTICAL_WORD[w.f.vertical]
        where = f"{w.f.cy * 100:.0f}% of the image height from the top edge, in the {w.f.vertical} third"
        step = f"{lead} {where} of the image."
    return QA(question, f"The {w.t} is in the {word} part of the image.", [step], w.obj, w.t)


def _location(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator) -> QA:
    w = _Words(_any_object(scene, rng), scene, modality)
    question = _choose(rng, LOCATION).format(t=w.t, mod=mod)
    rel = f" and {w.relation}" if w.relation else ""
    steps = [
        f"{_article(w.f.shape).capitalize()} {w.f.shape} {w.contrast} structure with the typical appearance "
        f"of the {w.t} is identified.",
        f"It is centred in the {w.f.region} part of the image{rel}.",
    ]
    return QA(question, f"The {w.t} is in the {w.f.region} part of the image.", steps, w.obj, w.t)


def _describe(scene: Scene, modality: Modality, mod: str, rng: np.random.Generator) -> QA:
    w = _Words(_any_object(scene, rng), scene, modality)
    question = _choose(rng, DESCRIBE).format(t=w.t, mod=mod)
    # colour modalities have no contrast term: their hue says more than a plain "bright"/"dark"
    tone = w.obj.hue if w.obj.hue and not modality.contrast else w.contrast
    adjectives = [w.size, w.f.shape, tone]
    answer = (
        f"The {w.t} is {', '.join(adjectives[:-1])} and {adjectives[-1]}, "
        f"with {w.margin} margins and a {w.texture} texture."
    )
    first = f"It is a {w.size} {w.f.shape} structure covering {w.f.area_text} of the image."
    if rng.random() < 0.5:
        steps = [
            first,
            f"Its margins are {w.margin} and it is {w.contrast_full}, with a {w.texture} texture.",
        ]
    else:
        colour = f" and its colour is {w.obj.hue}" if w.obj.hue else ""
        steps = [
            first,
            f"Its margins are {w.margin}{colour}.",
            f"It is {w.contrast_full} and {w.texture} in texture.",
        ]
    return QA(question, answer, steps, w.obj, w.t)


MULTIHOP_SHARE = 0.6
"""Share of `reasoning` samples that are multi-hop closed questions (training.phantom.multihop)."""


def _reasoning(
    scene: Scene, modality: Modality, mod: str, rng: np.random.Generator, legacy_multihop: bool = True
) -> QA:
    if legacy_multihop and rng.random() < MULTIHOP_SHARE:
        hop = multihop(scene, modality, mod, rng)
        if hop is not None:
            question, answer, steps, target, step_objs = hop
            return QA(question, answer, steps, target, target.name, step_objs)
    w = _Words(_any_object(scene, rng), scene, modality)
    question = _choose(rng, REASONING).format(t=w.t, mod=mod)
    answer = (
        f"The {w.t} is a {w.size}, {w.f.shape}, {w.contrast} {w.tt} in the {w.f.region} part of the image."
    )
    steps = [
        f"{_article(w.tt).capitalize()} {w.tt} consistent with the {w.t} is found "
        f"in the {w.f.region} part of the image.",
        f"It is {w.size} and {w.f.shape}, covering {w.f.area_text} of the image, with {w.margin} margins.",
        f"It is {w.contrast_full} and {w.texture} in texture.",
    ]
    if w.relation and rng.random() < 0.5:
        steps.append(f"It {w.relation}.")
    return QA(question, answer, steps, w.obj, w.t)


_TEMPLATE_BUILDERS = {
    "yesno": _yesno,
    "identify": _identify,
    "location_choice": _location_choice,
    "location": _location,
    "describe": _describe,
}
