"""Generate a phantom five-tuple dataset: images, masks, a validated JSONL manifest and its parameters.

Sample i is a pure function of (seed, i, size): modality = i mod 9, question type = (i div 9) mod 6,
and everything random comes from `numpy.random.default_rng([seed, i])`. So chunks can be generated
by any number of worker processes and the output is byte-identical to a single-process run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from training.data.manifest import SPLITS, Sample, assign_splits, write_manifest
from training.phantom.modalities import MODALITIES, Modality
from training.phantom.questions import QA, make_qa
from training.phantom.scene import Scene
from vital_core.config import QUESTION_TYPES

FORMAT_VERSION = 2
"""2: rows carry `step_masks` (one mask per reasoning sentence; multi-hop steps name other structures)."""
_MAX_SCENE_TRIES = 20


@dataclass
class PhantomSample:
    """One generated sample before it is written: its scene and its question."""

    index: int
    id: str
    modality: Modality
    question_type: str
    scene: Scene
    qa: QA

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


def make_sample(index: int, seed: int, size: int = 128) -> PhantomSample:
    """Sample `index` of the dataset with this seed (deterministic, independent of every other sample)."""
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


def _write_one(job: tuple[int, int, int, str]) -> dict[str, Any]:
    """Worker: generate sample `index`, write its image and mask PNGs, return its manifest row."""
    index, seed, size, out = job
    sample = make_sample(index, seed, size)
    Image.fromarray(sample.scene.to_uint8()).save(os.path.join(out, "images", f"{sample.id}.png"))
    mask = sample.qa.target.mask.astype(np.uint8) * 255
    Image.fromarray(mask).save(os.path.join(out, "masks", f"{sample.id}.png"))
    for path, obj in zip(sample.step_mask_paths(), sample.qa.step_objects()):
        if obj is not sample.qa.target:
            Image.fromarray(obj.mask.astype(np.uint8) * 255).save(os.path.join(out, path))
    return sample.row()


def generate(
    out_dir: str | Path,
    n: int = 20000,
    seed: int = 0,
    size: int = 128,
    workers: int = 2,
    *,
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> Path:
    """Write n phantom samples under out_dir (images/, masks/, manifest.jsonl, {split}.jsonl, phantom.json).

    Returns the path of manifest.jsonl. The output depends only on (n, seed, size, splits).
    """
    if n < 1 or seed < 0 or not 32 <= size <= 1024 or workers < 1:
        raise ValueError("need n >= 1, seed >= 0, 32 <= size <= 1024, workers >= 1")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(i, seed, size, str(out)) for i in range(n)]
    bar = tqdm(total=n, desc="phantom", unit="sample", disable=not progress)
    rows: list[dict[str, Any]] = []
    if workers == 1:
        for job in jobs:
            rows.append(_write_one(job))
            bar.update()
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(workers) as pool:
            for row in pool.imap(_write_one, jobs, chunksize=32):
                rows.append(row)
                bar.update()
    bar.close()
    keys = [f"{r['modality']}|{r['question_type']}" for r in rows]
    for row, split in zip(rows, assign_splits(keys, splits, seed)):
        row["split"] = split
    base = out.absolute()
    samples = [_sample(r, base) for r in rows]
    manifest = write_manifest(samples, out / "manifest.jsonl")
    for split in SPLITS:
        write_manifest([s for s in samples if s.split == split], out / f"{split}.jsonl")
    _write_params(out / "phantom.json", rows, n=n, seed=seed, size=size, splits=splits)
    return manifest


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
