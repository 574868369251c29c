"""Generate a phantom five-tuple dataset: images, masks, a validated JSONL manifest and its parameters.

Sample i is a pure function of (seed, i, size): modality = i mod 9, question type = (i div 9) mod 6,
and everything random comes from `numpy.random.default_rng([seed, i])`. So chunks can be generated
by any number of worker processes and the output is byte-identical to a single-process run.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from training.data.manifest import SPLITS, Sample, assign_splits, write_manifest
from training.phantom.atlas import ATLAS
from training.phantom.compose import Chain, answer_classes, compositional, template_for
from training.phantom.layout import LAYOUTS, build
from training.phantom.modalities import MODALITIES, Modality
from training.phantom.questions import QA, make_qa
from training.phantom.scene import Scene
from vital_core.config import QUESTION_TYPES

FORMAT_VERSION = 5
"""2: rows carry `step_masks` (one mask per reasoning sentence; multi-hop steps name other structures).
3: the compositional task (default) and its `scenes.jsonl` of per-object facts.
4: caption v3 (captions.jsonl: each lesion's size rank and leftmost/uppermost words).
5: the compositional task's multi-hop questions are the organ-hop family (hop 1 over the organs, then the
lesion inside; training.phantom.compose); format 3-4's lesion-hop questions are `--task lesion-hop`."""
TASKS = ("compositional", "lesion-hop", "legacy")
"""compositional (default): names told by tissue tone, size and place drawn at random, multi-hop
questions whose later hops depend on earlier results (training.phantom.compose, organ-hop family).
lesion-hop: the same scenes and other questions with format 3-4's multi-hop family (hop 1 over the lesions).
legacy: the earlier scenes and multi-hop kinds (training.phantom.multihop). The last two for comparison
only."""
_FAMILY = {"compositional": "organ", "lesion-hop": "lesion"}
_MAX_SCENE_TRIES = 20
_SLOTS = 9
"""Compositional task: sample i asks question type slot (i div 9) mod 9 — the six types, then three
multi-hop slots, so a third of the samples are compositional multi-hop questions."""


def _compositional_build(key: str, rng: np.random.Generator, size: int) -> Scene:
    for _ in range(_MAX_SCENE_TRIES):
        scene = build(key, rng, size, LAYOUTS[int(rng.integers(len(LAYOUTS)))])
        if scene is not None:
            return scene
    raise RuntimeError(
        f"{key}: no compositional scene fitted in {_MAX_SCENE_TRIES} tries"
    )  # pragma: no cover


COMPOSITIONAL: tuple[Modality, ...] = tuple(
    dataclasses.replace(m, build=partial(_compositional_build, m.key), targets=ATLAS[m.key].targets())
    for m in MODALITIES
)
"""The nine modalities with compositional scenes and their atlas names."""


@dataclass
class PhantomSample:
    """One generated sample before it is written: its scene and its question."""

    index: int
    id: str
    modality: Modality
    question_type: str
    scene: Scene
    qa: QA
    template: str | None = None
    """Compositional multi-hop template ("organ-leftmost-inside-name"), None for other questions."""
    answer_class: str | None = None

    def row(self, split: str = "train") -> dict[str, Any]:
        """The manifest row, with paths relative to the dataset folder."""
        return {
            "id": self.id,
            "image": f"images/{self.id}.png",
            "mask": f"masks/{self.id}.png",
            "question": self.qa.question,
            "answer": self.qa.answer,
            "reasoning": list(self.qa.reasoning),
            "question_type": self.question_type,
            "modality": self.modality.name,
            "target": self.qa.target.name,
            "target_type": self.qa.target.target_type,
            "split": split,
            "roi_key": self.id,
            "step_masks": self.step_mask_paths(),
        }

    def step_mask_paths(self) -> list[str]:
        """One mask per reasoning sentence: the sample's mask where the step is about the target, else
        `masks/{id}-s{k}.png` (k from 1) of the structure that step names."""
        return [
            f"masks/{self.id}.png" if obj is self.qa.target else f"masks/{self.id}-s{k}.png"
            for k, obj in enumerate(self.qa.step_objects(), 1)
        ]


def make_sample(
    index: int, seed: int, size: int = 128, task: str = "compositional", multihop_only: bool = False
) -> PhantomSample:
    """Sample `index` of the dataset with this seed (deterministic, independent of every other sample).

    `multihop_only` (compositional tasks): every index is a multi-hop question (held-out test sets)."""
    if task == "legacy":
        return _legacy_sample(index, seed, size)
    if task not in _FAMILY:
        raise ValueError(f"task: one of {', '.join(TASKS)}")
    modality = COMPOSITIONAL[index % len(COMPOSITIONAL)]
    rng = np.random.default_rng([seed, index])
    cycle, slot = divmod(index // len(COMPOSITIONAL), _SLOTS)
    if multihop_only or slot >= len(QUESTION_TYPES):
        m = index // len(COMPOSITIONAL) if multihop_only else 3 * cycle + slot - len(QUESTION_TYPES)
        return _multihop_sample(index, modality, m, rng, size, _FAMILY[task])
    qtype = QUESTION_TYPES[slot]
    scene = modality.build(rng, size)
    qa = make_qa(scene, modality, qtype, rng, legacy_multihop=False)
    return PhantomSample(index, f"{modality.key}-{index:06d}", modality, qtype, scene, qa)


def _multihop_sample(
    index: int, modality: Modality, m: int, rng: np.random.Generator, size: int, family: str = "organ"
) -> PhantomSample:
    """The modality's m-th compositional multi-hop question (template and answer class cycle with m)."""
    template, cls = template_for(m, family)
    target = answer_classes(ATLAS[modality.key], template.attr, template.over)[cls]
    mod = modality.phrases[int(rng.integers(len(modality.phrases)))]
    for _ in range(8):
        out = compositional(modality.key, template, target, mod, rng, size)
        if out is not None:
            scene, ch = out
            qa = _qa(ch)
            sid = f"{modality.key}-{index:06d}"
            return PhantomSample(index, sid, modality, "reasoning", scene, qa, template.key, ch.answer_class)
    raise RuntimeError(f"sample {index}: no {template.key} scene with answer {target!r}")  # pragma: no cover


def _qa(ch: Chain) -> QA:
    """A compositional chain as a QA: the sample's mask is the last step's object (lesion-hop: hop 2's host,
    the steps' masks L, L, O, O; organ-hop: hop 2's lesion, the steps' masks O, O, L, L)."""
    return QA(ch.question, ch.answer, list(ch.reasoning), ch.steps[-1], ch.steps[-1].name, list(ch.steps))


def _legacy_sample(index: int, seed: int, size: int) -> PhantomSample:
    """The legacy task's sample (the scenes and multi-hop kinds before the compositional task)."""
    modality = MODALITIES[index % len(MODALITIES)]
    qtype = QUESTION_TYPES[(index // len(MODALITIES)) % len(QUESTION_TYPES)]
    rng = np.random.default_rng([seed, index])
    for _ in range(_MAX_SCENE_TRIES):
        scene = modality.build(rng, size)
        if scene.objects:
            break
    else:  # pragma: no cover - every builder paints at least one object with high probability
        raise RuntimeError(f"sample {index}: no labelled object in {_MAX_SCENE_TRIES} scenes")
    qa = make_qa(scene, modality, qtype, rng)
    return PhantomSample(index, f"{modality.key}-{index:06d}", modality, qtype, scene, qa)


def scene_facts(sample: PhantomSample) -> dict[str, Any]:
    """One line of scenes.jsonl: every object's facts as painted (what the audit's oracles and shortcuts
    read), the multi-hop template and answer class, and each lesion's distance to each host."""
    from training.phantom.compose import brightness, mask_distance
    from training.phantom.facts import centroid

    objs = sample.scene.objects
    facts = []
    for o in objs:
        cy, cx = centroid(o.mask)
        facts.append(
            {
                "name": o.name,
                "type": o.target_type,
                "area": int(o.mask.sum()),
                "brightness": round(brightness(sample.scene, o), 5),
                "brighter": o.brighter,
                "blurred": o.blurred,
                "host": o.host,
                "cy": round(cy, 4),
                "cx": round(cx, 4),
            }
        )
    row: dict[str, Any] = {"id": sample.id, "template": sample.template, "answer_class": sample.answer_class}
    row["objects"] = facts
    if sample.template is not None:
        row["distances"] = {
            les.name: {
                h.name: round(mask_distance(les.mask, h.mask), 3) for h in objs if h.target_type != "lesion"
            }
            for les in objs
            if les.target_type == "lesion"
        }
    return row


def _write_one(job: tuple[int, int, int, str, str, bool]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Worker: generate sample `index`, write its image and mask PNGs, return its manifest row and facts."""
    index, seed, size, out, task, multihop_only = job
    sample = make_sample(index, seed, size, task, multihop_only)
    Image.fromarray(sample.scene.to_uint8()).save(os.path.join(out, "images", f"{sample.id}.png"))
    mask = sample.qa.target.mask.astype(np.uint8) * 255
    Image.fromarray(mask).save(os.path.join(out, "masks", f"{sample.id}.png"))
    for path, obj in zip(sample.step_mask_paths(), sample.qa.step_objects()):
        if obj is not sample.qa.target:
            Image.fromarray(obj.mask.astype(np.uint8) * 255).save(os.path.join(out, path))
    return sample.row(), scene_facts(sample)


def generate(
    out_dir: str | Path,
    n: int = 20000,
    seed: int = 0,
    size: int = 128,
    workers: int = 2,
    *,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
    task: str = "compositional",
    multihop_only: bool = False,
) -> Path:
    """Write n phantom samples under out_dir (images/, masks/, manifest.jsonl, {split}.jsonl, phantom.json,
    scenes.jsonl, and for the compositional task captions.jsonl).

    Returns the path of manifest.jsonl. The output depends only on (n, seed, size, splits, task,
    multihop_only).
    """
    if n < 1 or seed < 0 or not 32 <= size <= 1024 or workers < 1:
        raise ValueError("need n >= 1, seed >= 0, 32 <= size <= 1024, workers >= 1")
    if task not in TASKS or (multihop_only and task not in _FAMILY):
        raise ValueError(f"task: one of {', '.join(TASKS)} (multihop_only needs compositional or lesion-hop)")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, size, str(out), task, multihop_only) for i in range(n)]
    bar = tqdm(total=n, desc="phantom", unit="sample", disable=not progress)
    rows: list[dict[str, Any]] = []
    facts: list[dict[str, Any]] = []
    if workers == 1:
        results = map(_write_one, jobs)
        for row, fact in results:
            rows.append(row)
            facts.append(fact)
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for row, fact in pool.imap(_write_one, jobs, chunksize=32):
                rows.append(row)
                facts.append(fact)
                bar.update()
    bar.close()
    # stratified by modality x question type (x multi-hop template), so every split has each template
    keys = [
        f"{r['modality']}|{r['question_type']}" + (f"|{f['template']}" if f["template"] else "")
        for r, f in zip(rows, facts)
    ]
    for row, split in zip(rows, assign_splits(keys, splits, seed)):
        row["split"] = split
    base = out.absolute()
    samples = [_sample(r, base) for r in rows]
    manifest = write_manifest(samples, out / "manifest.jsonl")
    for split in SPLITS:
        write_manifest([s for s in samples if s.split == split], out / f"{split}.jsonl")
    for fact, row in zip(facts, rows):
        fact["split"] = row["split"]
    _write_jsonl(out / "scenes.jsonl", facts)
    if task in _FAMILY:
        from training.phantom.captions import write_captions

        write_captions(out)  # captions.jsonl: dense captions of the same images (the perception stage)
    _write_params(
        out / "phantom.json",
        rows,
        n=n,
        seed=seed,
        size=size,
        splits=splits,
        task=task,
        multihop_only=multihop_only,
    )
    return manifest


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def _sample(row: dict[str, Any], base: Path) -> Sample:
    fields = dict(row)
    fields["image"], fields["mask"] = base / row["image"], base / row["mask"]
    fields["step_masks"] = tuple(base / p for p in row["step_masks"])
    return Sample(**fields)


def _write_params(path: Path, rows: list[dict[str, Any]], **params: Any) -> None:
    """phantom.json: the generation parameters and what came out (no timings, so it is reproducible)."""
    info = {
        "generator": "training.phantom",
        "format_version": FORMAT_VERSION,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in params.items()},
        "split_names": list(SPLITS),
        "modalities": [m.name for m in MODALITIES],
        "question_types": list(QUESTION_TYPES),
        "counts": {
            "split": dict(sorted(Counter(r["split"] for r in rows).items())),
            "modality": dict(sorted(Counter(r["modality"] for r in rows).items())),
            "question_type": dict(sorted(Counter(r["question_type"] for r in rows).items())),
            "reasoning_steps": {
                str(k): v for k, v in sorted(Counter(len(r["reasoning"]) for r in rows).items())
            },
            "target_type": dict(sorted(Counter(r["target_type"] for r in rows).items())),
        },
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
