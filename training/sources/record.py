"""The record every source reader yields, target-type inference, and writing records out as PNG pairs."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

MODALITIES: dict[str, str] = {
    "ct": "CT",
    "mri": "MRI",
    "mr": "MRI",
    "x-ray": "X-ray",
    "xray": "X-ray",
    "x_ray": "X-ray",
    "cxr": "X-ray",
    "radiography": "X-ray",
    "ultrasound": "Ultrasound",
    "us": "Ultrasound",
    "endoscope": "Endoscopy",
    "endoscopy": "Endoscopy",
    "dermoscopy": "Dermoscopy",
    "fundus": "Fundus",
    "oct": "OCT",
    "pathology": "Pathology",
    "histopathology": "Pathology",
}
"""Lower-cased spellings found in sources -> the canonical modality names of docs/dataset.md."""

# Checked in order, first match wins (so "liver tumor" is a tumor, "optic disc" a retinal structure).
_TARGET_TYPE_RULES: tuple[tuple[str, str], ...] = (
    (r"cell|nucle|neutrophil|lymphocyte", "cell"),
    (r"optic (disc|cup)|retina|macula|fovea|fluid|drusen", "retinal structure"),
    (r"tumou?r|cancer|carcinoma|neoplas|metasta|glioma|enhancing", "tumor"),
    (
        r"lesion|polyp|nodule|mass|cyst|infection|covid|pneumonia|pneumothorax|edema|oedema|effusion"
        r"|melanoma|nevus|naevus|stroke|infarct|hemorrhage|haemorrhage|abnormal|opacit|consolidation",
        "lesion",
    ),
    (r"vessel|vascular|aorta|artery|arteries|vein|vena cava", "vessel"),
    (r"tissue|gland|fat|muscle|stroma|matter|skin", "tissue"),
)


def infer_target_type(target: str) -> str:
    """Target type of a target name by keyword (tumor, lesion, cell, ...); `organ` when nothing matches."""
    name = target.lower()
    for pattern, ttype in _TARGET_TYPE_RULES:
        if re.search(pattern, name):
            return ttype
    return "organ"


def canonical_modality(name: str) -> str:
    """Canonical modality name (`CT`, `MRI`, `X-ray`, ...); MRI sub-sequences (`MRI-T2`) map to MRI."""
    key = name.strip().lower()
    if key in MODALITIES:
        return MODALITIES[key]
    head = re.split(r"[-_ ]", key)[0]
    return MODALITIES.get(head, name.strip())


@dataclass(frozen=True)
class SourceRecord:
    """One image-mask pair from a source dataset: the target the mask covers and where it came from."""

    id: str
    """Unique, filesystem-safe record id (also the mask file's name)."""
    image: np.ndarray | Path
    """uint8 [H, W] or [H, W, 3] array, or a path to an image file."""
    mask: np.ndarray | Path
    """bool [H, W] array, or a path to a mask file (non-zero = target)."""
    modality: str
    target: str
    target_type: str
    source: str
    """msd, biomedparse or folder."""
    subset: str
    """Sub-set within the source (MSD task, BiomedParse dataset folder, CSV file name)."""
    case: str
    """Group key for splits (volume / patient / image): records of one case never straddle splits."""
    image_key: str
    """Records sharing an image share this key; the image is written once."""
    present: tuple[str, ...] = ()
    """Every annotated target present in this image (for choosing absent distractors)."""
    question: str = ""
    """A question that came with the source (folder CSV); empty for template questions."""
    answer: str = ""
    """A reference answer that came with the source; empty when the teacher decides."""
    question_type: str = ""
    """The question's type when the source gives it; else classified from the question text."""
    split: str = ""
    """A split the source fixes (BiomedParse train/test); empty when splits are assigned later."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form provenance (site, channel, slice index, ...)."""


def safe_name(text: str, max_len: int = 120) -> str:
    """A filesystem-safe, lower-case id from `text` (letters, digits, `-`, `.`, `_`); long ones get a hash tail."""
    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "x"
    if len(name) > max_len:
        name = name[: max_len - 13] + "-" + hashlib.sha1(text.encode()).hexdigest()[:12]
    return name


def _load_mask(mask: np.ndarray | Path) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        return mask.astype(bool)
    with Image.open(mask) as im:
        arr = np.asarray(im)
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def write_pairs(records: Iterable[SourceRecord], out: str | Path) -> Iterator[SourceRecord]:
    """Write each record as OUT/images/{image}.png + OUT/masks/{id}.png; yield it with the written paths.

    Images shared by several records are written once. Masks become 0/255 `L` PNGs; PNG images are
    copied byte for byte, other files and arrays are saved as PNG (`L` or `RGB`).
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    for rec in records:
        img_name = f"{safe_name(rec.image_key)}.png"
        img_path = out / "images" / img_name
        if img_name not in written:
            _write_image(rec.image, img_path)
            written.add(img_name)
        mask = _load_mask(rec.mask)
        mask_path = out / "masks" / f"{rec.id}.png"
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_path)
        yield replace(rec, image=img_path, mask=mask_path)


def _write_image(image: np.ndarray | Path, path: Path) -> None:
    if isinstance(image, Path):
        if image.suffix.lower() == ".png":
            shutil.copyfile(image, path)
            return
        with Image.open(image) as im:
            im.convert("RGB" if im.mode not in ("L", "I;16", "I") else "L").save(path)
        return
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    Image.fromarray(arr, mode="L" if arr.ndim == 2 else "RGB").save(path)
