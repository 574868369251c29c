"""BiomedParse reader: PNG images `<id>_<modality>_<site>.png` with masks `<id>_<modality>_<site>_<target>.png`.

The published layout (microsoft/BiomedParseData) puts masks in a sibling folder with a `_mask` suffix
(`train/` + `train_mask/`, `test/` + `test_mask/`), possibly below extra sub-levels
(`amos22/CT/train`, `MSD/Task01_BrainTumour/test`). A folder holding images and masks side by side is
read too. Parsing: the target is the text after the mask name's last `_` (`+` stands for a space, the
target has no `_`); the rest is the image's stem. The image stem's last two `_` fields are modality and
site; `<id>` may itself contain `_`. Folder names `train`/`val`/`test` become the records' split hint. Images stay paths;
`write_pairs` reads them with `vital_core.imaging.load_model_image`, the server's decoding.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from training.sources.record import SourceRecord, canonical_modality, infer_target_type, safe_name

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png",)
_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_SLICE_TAIL = re.compile(r"[_-]?(slice|frame|z)[_-]?\d+$", re.IGNORECASE)


def parse_image_stem(stem: str) -> tuple[str, str, str]:
    """`<id>_<modality>_<site>` -> (id, modality, site); modality and site are empty when missing."""
    parts = stem.rsplit("_", 2)
    if len(parts) < 3:
        return stem, "", ""
    return parts[0], parts[1], parts[2].replace("+", " ")


def parse_mask_stem(stem: str, image_stems: set[str]) -> tuple[str, str] | None:
    """Mask stem -> (image stem, target); the image is the longest known stem that prefixes `stem_`."""
    head, _, tail = stem.rpartition("_")
    if head in image_stems and tail:
        return head, tail.replace("+", " ").strip()
    best = max((s for s in image_stems if stem.startswith(s + "_")), key=len, default=None)
    if best is None:
        return None
    return best, stem[len(best) + 1 :].replace("+", " ").replace("_", " ").strip()


def read_biomedparse(root: str | Path, *, min_pixels: int = 1) -> Iterator[SourceRecord]:
    """Yield one record per mask file under `root` (both the `_mask`-folder and same-folder layouts)."""
    root = Path(root)
    for image_dir, mask_dir in _pairs_of_folders(root):
        yield from _read_folder_pair(root, image_dir, mask_dir, min_pixels)


def _png_stems(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._")
    )


def _pairs_of_folders(root: Path) -> list[tuple[Path, Path]]:
    """(image folder, mask folder) pairs: `X` + `X_mask` siblings, or a folder holding both kinds."""
    pairs: list[tuple[Path, Path]] = []
    folders = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    for folder in folders:
        if folder.name.startswith("._"):
            continue
        if folder.name.endswith("_mask"):
            images = folder.with_name(folder.name[: -len("_mask")])
            if images.is_dir():
                pairs.append((images, folder))
            continue
        if (folder.parent / f"{folder.name}_mask").is_dir():
            continue  # its masks live in the sibling folder, handled above
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file()):
            pairs.append((folder, folder))
    return pairs


def _read_folder_pair(root: Path, image_dir: Path, mask_dir: Path, min_pixels: int) -> Iterator[SourceRecord]:
    image_files = _png_stems(image_dir)
    mask_files = _png_stems(mask_dir)
    image_stems = {p.stem for p in image_files}
    masks_by_image: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for path in mask_files:
        if (
            image_dir == mask_dir
            and path.stem in image_stems
            and not _is_mask_of_other(path.stem, image_stems)
        ):
            continue  # an image in a same-folder layout
        parsed = parse_mask_stem(path.stem, image_stems - {path.stem})
        if parsed is None:
            if image_dir != mask_dir:
                log.warning("%s: no image for mask %s, skipped", mask_dir, path.name)
            continue
        masks_by_image[parsed[0]].append((path, parsed[1]))
    rel = image_dir.parent.relative_to(root) if image_dir != root else Path(root.name)
    subset = rel.as_posix() if rel.as_posix() != "." else root.name
    split = _SPLITS.get(image_dir.name.lower(), "")
    for stem in sorted(masks_by_image):
        image_path = image_dir / f"{stem}.png"
        image_id, modality, site = parse_image_stem(stem)
        if not modality:
            log.warning("%s: cannot read modality from %r; named 'unknown'", image_dir, stem)
        masks = [(p, t) for p, t in masks_by_image[stem] if _pixels(p) >= min_pixels]
        present = tuple(sorted({t for _, t in masks}))
        for mask_path, target in masks:
            yield SourceRecord(
                id=safe_name(f"bp-{subset}-{mask_path.stem}"),
                image=image_path,
                mask=mask_path,
                modality=canonical_modality(modality) if modality else "unknown",
                target=target,
                target_type=infer_target_type(target),
                source="biomedparse",
                subset=subset,
                case=f"{subset}/{_SLICE_TAIL.sub('', image_id)}",
                image_key=f"bp-{subset}-{stem}",
                present=present,
                split=split,
                extra={"site": site, "modality_raw": modality},
            )


def _is_mask_of_other(stem: str, image_stems: set[str]) -> bool:
    head, _, tail = stem.rpartition("_")
    return bool(tail) and head in image_stems


def _pixels(path: Path) -> int:
    with Image.open(path) as im:
        arr = np.asarray(im)
    return int(((arr[..., 0] if arr.ndim == 3 else arr) > 0).sum())
