"""The five-tuple dataset format: a JSONL manifest of (image, mask, question, answer, reasoning) samples.

One row per sample. Paths are relative to the manifest's folder (or absolute). Every row is validated
on load, and every problem is reported with the file, line number, sample id and field, so a bad row
in a 60K-line manifest is found in seconds. A sample's latent depth K is the number of its reasoning
sentences, which must fall in its question type's range (paper Table 4, `vital_core.qtypes`).
See docs/dataset.md for the field table.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vital_core.config import QUESTION_TYPES
from vital_core.qtypes import REASONING_DEPTH

SPLITS: tuple[str, ...] = ("train", "val", "test")
TARGET_TYPES: tuple[str, ...] = ("organ", "lesion", "tumor", "vessel", "tissue", "cell", "retinal structure")
"""The target types used by the paper's sources (BiomedParse); other non-empty strings are accepted."""
MAX_REASONING_STEPS = 4

_REQUIRED = (
    "id",
    "image",
    "mask",
    "question",
    "answer",
    "reasoning",
    "question_type",
    "modality",
    "target",
    "target_type",
    "split",
)
_OPTIONAL = ("roi_key", "step_masks")
_FIELDS = _REQUIRED + _OPTIONAL
_MAX_REPORTED = 20


class ManifestError(ValueError):
    """A manifest that does not follow the five-tuple format; `errors` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = errors[:_MAX_REPORTED]
        more = f"\n... and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
        super().__init__("\n".join(shown) + more)


@dataclass(frozen=True)
class Sample:
    """One five-tuple training sample (the ROI feature is looked up in the feature store by `roi_key`)."""

    id: str
    """Unique sample id."""
    image: Path
    """Image file (absolute once loaded)."""
    mask: Path
    """Binary mask (0/255 PNG) of the region the reasoning refers to; the ROI feature is pooled over it."""
    question: str
    answer: str
    reasoning: tuple[str, ...]
    """1-4 reasoning sentences; their number is the sample's latent depth K."""
    question_type: str
    """One of `vital_core.config.QUESTION_TYPES`."""
    modality: str
    target: str
    """Name of the structure the mask covers (e.g. liver, polyp)."""
    target_type: str
    """organ, lesion, tumor, vessel, tissue, cell, retinal structure, ..."""
    split: str
    """train, val or test."""
    roi_key: str = ""
    """Key of the ROI feature in the index_builder feature store; empty means `id`."""
    step_masks: tuple[Path, ...] = ()
    """Optional: one mask per reasoning sentence (the region that step is about); empty means every step
    is about `mask`. Steps whose mask is not `mask` get their own ROI feature (`step_roi_keys`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "reasoning", tuple(self.reasoning))
        object.__setattr__(self, "image", Path(self.image))
        object.__setattr__(self, "mask", Path(self.mask))
        object.__setattr__(self, "step_masks", tuple(Path(p) for p in self.step_masks))
        if not self.roi_key:
            object.__setattr__(self, "roi_key", self.id)

    def step_roi_keys(self) -> tuple[str, ...]:
        """The ROI feature key of each reasoning step: `roi_key` where the step's mask is the sample's
        mask (or no step masks are given), else `step_key(id, k)` (index_builder.samples; keyed by the
        sample's id as `vital extract-roi` writes them: a step mask belongs to one question)."""
        from index_builder.samples import own_step_masks

        keys = [self.roi_key] * (len(self.step_masks) or self.k)
        for k, key, _ in own_step_masks(self.id, self.mask, self.step_masks):
            keys[k - 1] = key
        return tuple(keys)

    @property
    def k(self) -> int:
        """Latent reasoning depth: the number of reasoning sentences."""
        return len(self.reasoning)

    def to_row(self, base: Path | None = None) -> dict[str, Any]:
        """The manifest row; paths under `base` are written relative to it."""
        row: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, Path):
                value = _relative(value, base)
            elif name == "step_masks":
                if not value:
                    continue
                value = [_relative(p, base) for p in value]
            elif isinstance(value, tuple):
                value = list(value)
            row[name] = value
        return row


def load_manifest(path: str | Path, *, check_files: bool = True) -> list[Sample]:
    """Read and validate a JSONL manifest; raise `ManifestError` listing every bad row and field."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError([f"{path}: cannot read manifest: {exc}"]) from exc
    base = Path(os.path.abspath(path.parent))
    samples: list[Sample] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(row, dict):
            errors.append(f"{where}: expected a JSON object, got {type(row).__name__}")
            continue
        sid = row.get("id")
        where = f"{where} (id {sid!r})" if isinstance(sid, str) else where
        row_errors = _check_row(row, base, check_files)
        if isinstance(sid, str) and sid in seen:
            row_errors.append(("id", f"duplicate id, first used on line {seen[sid]}"))
        errors.extend(f"{where}: field {name!r}: {msg}" for name, msg in row_errors)
        if isinstance(sid, str):
            seen.setdefault(sid, lineno)
        if not row_errors:
            samples.append(_to_sample(row, base))
    if errors:
        raise ManifestError(errors)
    return samples


def write_manifest(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples as JSONL atomically (temp file + os.replace); paths relative to the manifest's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(path.parent))
    text = "".join(json.dumps(s.to_row(base), ensure_ascii=False) + "\n" for s in samples)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def assign_splits(
    keys: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[str]:
    """Stratified train/val/test split: within every key (e.g. modality×type), in proportion to `fractions`.

    Items of each key are shuffled (seeded), then dealt to the split furthest below its target share;
    the deficit carries across keys, so the overall counts are exact to ±1 and each key to about ±2
    even when a key has only a few items.
    """
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be {len(SPLITS)} non-negative numbers summing to 1")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    out = [""] * len(keys)
    target = np.asarray(fractions, dtype=np.float64)
    counts = np.zeros(len(SPLITS))
    dealt = 0
    for key in sorted(groups):
        for i in rng.permutation(groups[key]):
            dealt += 1
            choice = int(np.argmax(target * dealt - counts))
            counts[choice] += 1
            out[int(i)] = SPLITS[choice]
    return out


def normalize_answer(text: str) -> str:
    """Canonical form for closed-ended exact-match accuracy: lower case, single spaces, no final period."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def _relative(p: Path, base: Path | None) -> str:
    if base is not None and p.is_absolute():
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            return str(p)
    return p.as_posix()


def _check_row(row: dict[str, Any], base: Path, check_files: bool) -> list[tuple[str, str]]:
    """(field, problem) pairs for one parsed row."""
    errs: list[tuple[str, str]] = []
    errs += [(k, "unknown field") for k in row if k not in _FIELDS]
    errs += [(k, "missing") for k in _REQUIRED if k not in row]
    for name in ("id", "image", "mask", "question", "answer", "modality", "target", "target_type", "roi_key"):
        if name in row and (not isinstance(row[name], str) or not row[name].strip()):
            errs.append((name, f"expected a non-empty string, got {row[name]!r}"))
    qtype = row.get("question_type")
    if "question_type" in row and qtype not in QUESTION_TYPES:
        errs.append(("question_type", f"unknown question type {qtype!r}; one of {', '.join(QUESTION_TYPES)}"))
    if "split" in row and row["split"] not in SPLITS:
        errs.append(("split", f"expected one of {', '.join(SPLITS)}, got {row['split']!r}"))
    if "reasoning" in row:
        errs += _check_reasoning(row["reasoning"], qtype if qtype in QUESTION_TYPES else None)
    if "step_masks" in row:
        errs += _check_step_masks(row["step_masks"], row.get("reasoning"), base, check_files)
    if check_files:
        for name in ("image", "mask"):
            value = row.get(name)
            if isinstance(value, str) and value.strip() and not (base / value).is_file():
                errs.append((name, f"file not found: {base / value}"))
    return errs


def _check_step_masks(masks: Any, steps: Any, base: Path, check_files: bool) -> list[tuple[str, str]]:
    if not isinstance(masks, list) or not all(isinstance(m, str) and m.strip() for m in masks):
        return [("step_masks", "expected a list of non-empty mask paths, one per reasoning sentence")]
    if isinstance(steps, list) and len(masks) != len(steps):
        return [("step_masks", f"expected {len(steps)} masks (one per reasoning sentence), got {len(masks)}")]
    if check_files:
        missing = [m for m in masks if not (base / m).is_file()]
        if missing:
            return [("step_masks", f"file not found: {base / missing[0]}")]
    return []


def _check_reasoning(steps: Any, qtype: str | None) -> list[tuple[str, str]]:
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        return [("reasoning", f"expected a list of strings, got {type(steps).__name__}")]
    if any(not s.strip() for s in steps):
        return [("reasoning", "empty sentence")]
    if not 1 <= len(steps) <= MAX_REASONING_STEPS:
        return [("reasoning", f"expected 1-{MAX_REASONING_STEPS} sentences, got {len(steps)}")]
    if qtype is not None:
        lo, hi = REASONING_DEPTH[qtype]
        if not lo <= len(steps) <= hi:
            want = f"{lo}" if lo == hi else f"{lo}-{hi}"
            return [("reasoning", f"expected {want} sentences for question type {qtype!r}, got {len(steps)}")]
    return []


def _to_sample(row: dict[str, Any], base: Path) -> Sample:
    return Sample(
        id=row["id"],
        image=Path(os.path.normpath(base / row["image"])),
        mask=Path(os.path.normpath(base / row["mask"])),
        question=row["question"],
        answer=row["answer"],
        reasoning=tuple(row["reasoning"]),
        question_type=row["question_type"],
        modality=row["modality"],
        target=row["target"],
        target_type=row["target_type"],
        split=row["split"],
        roi_key=row.get("roi_key", ""),
        step_masks=tuple(Path(os.path.normpath(base / m)) for m in row.get("step_masks", ())),
    )
