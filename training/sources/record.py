"""The record every source reader yields, target-type inference, and writing records out as PNG pairs.

Image files are read with `vital_core.imaging.load_model_image` (the server's decoding), so what is
written for training is what the server feeds the model for the same file and spec.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from vital_core.imaging import ImagingSpec, NiftiVolume, load_model_image

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


def record_spec(rec: SourceRecord) -> ImagingSpec:
    """The ImagingSpec a record's image file is read with (axis/slice/frame/window from `extra`)."""
    return ImagingSpec.from_fields(rec.extra)


def record_image(rec: SourceRecord) -> np.ndarray:
    """The record's model image, uint8 [H, W] or [H, W, 3]: files go through `vital_core.imaging`."""
    if isinstance(rec.image, np.ndarray):
        return rec.image
    return load_model_image(rec.image, record_spec(rec)).pixels


def _is_volume(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def record_mask(rec: SourceRecord) -> np.ndarray:
    """The record's mask as bool [H, W]: a label volume is sliced like the image (same axis and slice)."""
    mask = rec.mask
    if isinstance(mask, np.ndarray):
        return mask.astype(bool)
    if _is_volume(mask):
        spec = record_spec(rec)
        return NiftiVolume.load(mask).values(spec.axis, spec.slice) != 0
    with Image.open(mask) as im:
        arr = np.asarray(im)
    return (arr[..., 0] if arr.ndim == 3 else arr) > 0


def write_pairs(records: Iterable[SourceRecord], out: str | Path) -> Iterator[SourceRecord]:
    """Write each record as OUT/images/{image}.png + OUT/masks/{id}.png; yield it with the written paths.

    Images shared by several records are written once, as the model's image (`record_image`: the
    server's decoding of the same file with the same spec), saved as `L` or `RGB` PNG. Masks become 0/255
    `L` PNGs; a mask whose size differs from its image is an error naming the record.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    written: dict[str, tuple[int, int]] = {}
    for rec in records:
        img_name = f"{safe_name(rec.image_key)}.png"
        img_path = out / "images" / img_name
        if img_name not in written:
            pixels = record_image(rec)
            if pixels.dtype != np.uint8:
                raise ValueError(f"{rec.id}: image arrays must be uint8, got {pixels.dtype}")
            Image.fromarray(pixels).save(img_path)
            written[img_name] = pixels.shape[:2]
        mask = record_mask(rec)
        if mask.shape != written[img_name]:
            raise ValueError(
                f"{rec.id}: mask is {mask.shape[::-1]} but its image is {written[img_name][::-1]}"
            )
        mask_path = out / "masks" / f"{rec.id}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
        yield replace(rec, image=img_path, mask=mask_path)
