"""Dense captions of phantom scenes: every structure and lesion, where it is and how it looks.

Stage "perception" of the tiny recipe (ours; the stand-in for a pretrained MLLM's image–text alignment)
trains the random backbone on these before any question: each image gives the name, place, brightness
and margin of all six objects, six times the supervision of one answer, on exactly what the questions
later ask about. They are written from the facts the generator stored (scenes.jsonl), to
DIR/captions.jsonl, a five-tuple manifest over the same images and splits (question type `describe`; the
two reasoning sentences, structures then lesions, are the answer).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from training.phantom.compose import contrast_word
from training.phantom.facts import region_phrase, third
from training.phantom.modalities import MODALITIES

QUESTION = "Describe every structure and lesion in this {mod}."


def _place(o: dict[str, Any]) -> str:
    return region_phrase(
        third(o["cy"], ("upper", "middle", "lower")), third(o["cx"], ("left", "center", "right"))
    )


def _order(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reading order: by third of the height, then from left to right."""
    return sorted(objs, key=lambda o: (min(int(o["cy"] * 3), 2), o["cx"]))


def caption_sentences(facts: dict[str, Any], contrast: tuple[str, str] | None) -> list[str]:
    """Two sentences: the host structures, then the lesions, each in reading order."""

    def item(o: dict[str, Any]) -> str:
        inside = f" in the {o['host']}" if o.get("host") else ""
        look = f"{contrast_word(o['brighter'], contrast)}, {'blurred' if o['blurred'] else 'sharp'}"
        return f"the {o['name']}{inside} ({_place(o)}), {look}"

    hosts = [o for o in facts["objects"] if o["type"] != "lesion"]
    lesions = [o for o in facts["objects"] if o["type"] == "lesion"]
    out = []
    for label, group in (("Structures", hosts), ("Lesions", lesions)):
        out.append(
            f"{label}: " + "; ".join(item(o) for o in _order(group)) + "." if group else f"{label}: none."
        )
    return out


def write_captions(root: str | Path) -> Path:
    """DIR/captions.jsonl from DIR/manifest.jsonl and DIR/scenes.jsonl (one caption per image)."""
    root = Path(root)
    facts = {}
    for line in (root / "scenes.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            facts[r["id"]] = r
    contrast = {m.name: m.contrast for m in MODALITIES}
    phrase = {m.name: m.phrases[0] for m in MODALITIES}
    rows = []
    for line in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        steps = caption_sentences(facts[r["id"]], contrast[r["modality"]])
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
    path = root / "captions.jsonl"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)
    return path
