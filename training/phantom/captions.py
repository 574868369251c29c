"""Dense captions of phantom scenes: every structure and lesion kind, where it is (or that it is absent)
and how it looks.

Stage "perception" of the tiny recipe (ours; the stand-in for a pretrained MLLM's image–text alignment)
trains the random backbone on these before any question. Each caption lists every host structure and
every lesion kind of the modality's atlas in one fixed order (atlas order), each either "absent" or with
its host, place, tone and margin — so each item is a lookup (where is this name, how does it look) rather
than a reading-order scan, which the tiny model learned far more slowly (bench/results/reasoning-
experiments.md). A present lesion also says how it ranks among the scene's lesions (caption v3): its size
("largest", "smallest", "mid-sized", or "only lesion") and whether it is the leftmost or uppermost one —
the comparisons hop 1 of a compositional question reads, which v2's thirds of the image could not settle.
They are written from the facts the generator stored (scenes.jsonl), to
DIR/captions.jsonl, a five-tuple manifest over the same images and splits (question type `describe`; the
two reasoning sentences, structures then lesions, are the answer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from training.phantom.atlas import ATLAS, Atlas
from training.phantom.compose import contrast_word
from training.phantom.facts import region_phrase, third
from training.phantom.modalities import MODALITIES

QUESTION = "Describe every structure and lesion in this {mod}."


def _place(o: dict[str, Any]) -> str:
    return region_phrase(
        third(o["cy"], ("upper", "middle", "lower")), third(o["cx"], ("left", "center", "right"))
    )


def lesion_ranks(lesions: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per lesion name, its rank words among the present lesions: the size word, then "leftmost" and/or
    "uppermost" when it is that one. Sizes are mask pixel counts and positions mask centroids (the facts
    compose.resolve reads); a tie goes to the earlier object, like a stable sort. One lesion: "only lesion"."""
    if len(lesions) == 1:
        return {lesions[0]["name"]: ["only lesion"]}
    by_area = [o["name"] for o in sorted(lesions, key=lambda o: -o["area"])]
    left = min(lesions, key=lambda o: o["cx"])["name"]
    upper = min(lesions, key=lambda o: o["cy"])["name"]
    out = {}
    for o in lesions:
        size = {by_area[0]: "largest", by_area[-1]: "smallest"}.get(o["name"], "mid-sized")
        out[o["name"]] = [
            size,
            *(["leftmost"] if o["name"] == left else []),
            *(["uppermost"] if o["name"] == upper else []),
        ]
    return out


def caption_sentences(
    facts: dict[str, Any], atlas: Atlas, contrast: tuple[str, str] | None, holds: bool = False
) -> list[str]:
    """Two sentences: the modality's four host structures, then its four lesion kinds, always in atlas order
    (so each item is a lookup: where is this one, or is it absent), with place, host, tone and margin; a
    lesion then its rank words among the scene's lesions (`lesion_ranks`).

    `holds` (an experiment arm, off by default): a host structure also names the lesions inside it, right
    after its name ("liver with the abscess, right, …"), so the captions state the lesion–organ relation in
    both directions (organ → lesion as well as the lesion's "in the liver")."""
    objs = {o["name"]: o for o in facts["objects"]}
    present = [objs[n] for n in atlas.lesions if n in objs]
    ranks = lesion_ranks(present) if present else {}
    held: dict[str, list[str]] = {}  # host -> the lesions inside it, in atlas order (holds only)
    for o in present if holds else ():
        if o.get("host"):
            held.setdefault(o["host"], []).append(o["name"])

    def item(name: str) -> str:
        o = objs.get(name)
        if o is None:
            return f"{name} absent"
        inside = f"in the {o['host']}, " if o.get("host") else ""
        if name in held:
            inside = "with " + " and ".join(f"the {n}" for n in held[name]) + ", "
        look = f"{contrast_word(o['brighter'], contrast)}, {'blurred' if o['blurred'] else 'sharp'}"
        rank = "".join(f", {w}" for w in ranks.get(name, ()))
        return f"{name} {inside}{_place(o)}, {look}{rank}"

    return [
        "Structures: " + "; ".join(item(n) for n in atlas.hosts) + ".",
        "Lesions: " + "; ".join(item(n) for n in atlas.lesions) + ".",
    ]


def write_captions(root: str | Path, holds: bool = False, name: str = "captions.jsonl") -> Path:
    """DIR/captions.jsonl (or DIR/`name`) from DIR/manifest.jsonl and DIR/scenes.jsonl (one caption per
    image); `holds`: see `caption_sentences`."""
    root = Path(root)
    facts = {}
    for line in (root / "scenes.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            facts[r["id"]] = r
    contrast = {m.name: m.contrast for m in MODALITIES}
    phrase = {m.name: m.phrases[0] for m in MODALITIES}
    atlas = {m.name: ATLAS[m.key] for m in MODALITIES}
    rows = []
    for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        steps = caption_sentences(facts[r["id"]], atlas[r["modality"]], contrast[r["modality"]], holds)
        rows.append(
            {
                "id": f"{r['id']}-cap",
                "image": r["image"],
                "mask": r["mask"],
                "question": QUESTION.format(mod=phrase[r["modality"]]),
                "answer": " ".join(steps),
                "reasoning": steps,
                "question_type": "describe",
                "modality": r["modality"],
                "target": r["target"],
                "target_type": r["target_type"],
                "split": r["split"],
                "roi_key": r["roi_key"],
            }
        )
    path = root / name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path
