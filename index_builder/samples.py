"""Reading sample lists (JSONL manifests, image folders) and loading images and masks from disk.

The JSONL reader is deliberately minimal: it needs `id` and `image` (and `mask` where ROI features are
extracted) and ignores every other key, so the training package's full five-tuple rows read fine.
Relative paths resolve against the manifest's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, load_model_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm")


class SampleError(ValueError):
    """A manifest row or file that cannot be read; the message names the file (and line)."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's files are."""

    id: str
    image: Path
    mask: Path | None = None


def step_key(key: str, step: int) -> str:
    """Feature-store key of reasoning step `step` (from 1) of sample `key`, when that step has its own mask."""
    return f"{key}#s{step}"


def own_step_masks(
    sample_id: str, mask: Path | None, step_masks: Sequence[Path]
) -> list[tuple[int, str, Path]]:
    """(step from 1, feature key, mask) of each step whose mask is not the sample's own `mask`: the steps
    with an ROI feature of their own. The one rule the extractor (`read_step_masks`) and the trainer
    (`training.data.manifest.Sample.step_roi_keys`) both follow; paths compare after normalisation."""
    own = Path(os.path.normpath(mask)) if mask is not None else None
    return [
        (k, step_key(sample_id, k), Path(os.path.normpath(m)))
        for k, m in enumerate(step_masks, 1)
        if Path(os.path.normpath(m)) != own
    ]


def read_step_masks(path: str | Path) -> list[SampleRef]:
    """The per-step masks of a manifest's rows (`step_masks`, one per reasoning sentence) as SampleRefs
    keyed `step_key(id, k)`, for the steps whose mask differs from the row's `mask` (those steps share
    the row's own ROI feature). Rows without `step_masks` contribute nothing."""
    path = Path(path)
    base, refs = path.parent, []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        masks = row.get("step_masks") if isinstance(row, dict) else None
        if not masks:
            continue
        if not isinstance(masks, list) or not all(isinstance(m, str) and m for m in masks):
            raise SampleError(f"{path}:{lineno}: 'step_masks' must be a list of mask paths")
        own = base / row["mask"] if row.get("mask") else None
        for _, key, mask in own_step_masks(str(row["id"]), own, [base / m for m in masks]):
            refs.append(SampleRef(key, base / row["image"], mask))
    return refs


def read_manifest(path: str | Path, require_mask: bool = False) -> list[SampleRef]:
    """JSONL rows {id, image, mask?, ...} -> SampleRefs (extra keys ignored, duplicate ids rejected)."""
    path = Path(path)
    base, refs, seen = path.parent, [], set()
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SampleError(f"cannot read manifest {path}: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SampleError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
        if not isinstance(row, dict) or "id" not in row or "image" not in row:
            raise SampleError(f"{path}:{lineno}: a row needs at least 'id' and 'image'")
        if require_mask and not row.get("mask"):
            raise SampleError(f"{path}:{lineno}: row {row['id']!r} has no 'mask'")
        sid = str(row["id"])
        if sid in seen:
            raise SampleError(f"{path}:{lineno}: duplicate id {sid!r}")
        seen.add(sid)
        mask = base / row["mask"] if row.get("mask") else None
        refs.append(SampleRef(sid, base / row["image"], mask))
    return refs


def list_images(folder: str | Path) -> list[SampleRef]:
    """Every image file under a folder (sorted); the id is the relative path without its suffix."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [SampleRef(str(p.relative_to(folder).with_suffix("")), p) for p in files]


def read_corpus(path: str | Path) -> list[SampleRef]:
    """A reference corpus: a folder of images or a JSONL manifest."""
    path = Path(path)
    if path.is_dir():
        return list_images(path)
    if path.is_file():
        return read_manifest(path)
    raise SampleError(f"corpus {path} is neither a folder nor a manifest file")


def load_image(path: str | Path, spec: ImagingSpec | None = None) -> Image.Image:
    """Open an image as RGB through `vital_core.imaging` (the server's decoding); SampleError if refused."""
    try:
        return load_model_image(path, spec, ImagingLimits()).to_pil().convert("RGB")
    except ImagingError as exc:
        raise SampleError(f"cannot read image {path}: {exc.message}") from exc
    except OSError as exc:
        raise SampleError(f"cannot read image {path}: {exc}") from exc


def load_mask(path: str | Path) -> np.ndarray:
    """A mask file (.npy, or any image; foreground = value > 0) -> bool [H, W]."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L") if im.mode not in ("L", "1", "I", "I;16", "F") else im)
    except (OSError, ValueError) as exc:
        raise SampleError(f"cannot read mask {path}: {exc}") from exc
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise SampleError(f"mask {path} must be 2-D, got shape {arr.shape}")
    return arr > 0
