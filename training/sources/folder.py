"""A plain folder of image/mask pairs described by a CSV, for users' own data.

Columns (header row required): `image`, `mask`, `target`, `modality` (required); `target_type`
(inferred from the target when empty), `question`, `answer`, `question_type`, `split`, `case`
(optional). Paths are relative to the CSV's folder or absolute. An image may be any file
`vital_core.imaging` reads (PNG, JPEG, DICOM, NIfTI, a zip of a DICOM series, ...) or a folder of one DICOM
series' instances (assembled into one volume, as the server does with a zip); the optional columns `axis`, `slice`,
`frame`, `window`, `window_center`, `window_width` are its `ImagingSpec` (a NIfTI mask is sliced like
its image), and the same values in a request make the server produce the same image. A row with a `question` keeps it (its
type classified by `vital_core.qtypes.classify_question` when `question_type` is empty); an `answer` is
passed to the teacher as the reference the final answer must agree with.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from training.sources.record import SourceRecord, canonical_modality, infer_target_type, safe_name
from vital_core.imaging import ImagingError, ImagingSpec

REQUIRED_COLUMNS = ("image", "mask", "target", "modality")
SPEC_COLUMNS = ("axis", "slice", "frame", "window", "window_center", "window_width")
OPTIONAL_COLUMNS = ("target_type", "question", "answer", "question_type", "split", "case", *SPEC_COLUMNS)


def read_folder(csv_path: str | Path) -> Iterator[SourceRecord]:
    """Yield one record per CSV row; raise ValueError naming the row for a missing column or file."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; required: {', '.join(REQUIRED_COLUMNS)}"
            )
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    present: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        present[row["image"]].add(row["target"].lower())
    for lineno, row in enumerate(rows, 2):
        where = f"{csv_path}:{lineno}"
        for name in REQUIRED_COLUMNS:
            if not row.get(name):
                raise ValueError(f"{where}: empty {name!r}")
        image, mask = base / row["image"], base / row["mask"]
        for name, path in (("image", image), ("mask", mask)):
            if not (path.is_file() or (name == "image" and path.is_dir())):  # a folder: a DICOM series
                raise ValueError(f"{where}: {name} file not found: {path}")
        target = row["target"].lower()
        try:
            spec = ImagingSpec.from_fields(row)
        except ImagingError as exc:
            raise ValueError(f"{where}: {exc.message}") from exc
        yield SourceRecord(
            id=safe_name(f"{csv_path.stem}-{lineno:05d}-{target}"),
            image=image,
            mask=mask,
            modality=canonical_modality(row["modality"]),
            target=target,
            target_type=row.get("target_type") or infer_target_type(target),
            source="folder",
            subset=csv_path.stem,
            case=row.get("case") or f"{csv_path.stem}/{Path(row['image']).stem}",
            image_key="-".join([f"{csv_path.stem}-{row['image']}", *spec.to_fields().values()]),
            present=tuple(sorted(present[row["image"]])),
            question=row.get("question", ""),
            answer=row.get("answer", ""),
            question_type=row.get("question_type", ""),
            split=row.get("split", ""),
            extra=spec.to_fields(),
        )
