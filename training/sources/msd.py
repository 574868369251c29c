"""Medical Segmentation Decathlon reader: TaskXX_Name/{imagesTr,labelsTr}/*.nii.gz + dataset.json -> 2-D slices.

Images go through `vital_core.imaging` — the server's own path — with one `ImagingSpec` for the whole
read: the volume is matched to RAS+, each slice laid out in the radiological display convention and
windowed by the shared rule (CT → the request-nameable preset, default `abdomen`; MR → percentiles of
the slice). So a slice served with the same spec (same `axis`, `slice`, `frame`, `window`) is byte-for-byte
the training image. Every slice along `spec.axis` (axial by default) with at least `min_pixels` pixels of
a label gives one record per such label. 4-D (multi-channel) volumes keep one channel (the spec's `frame`),
chosen by name from `CHANNEL_PREFERENCE` (FLAIR for BrainTumour, T2 for Prostate). AppleDouble files
(`._*`) are skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training.sources.record import SourceRecord, infer_target_type, safe_name
from vital_core.imaging import ImagingSpec, NiftiVolume

log = logging.getLogger(__name__)

MIN_PIXELS = 100
"""A slice is kept for a label when the label covers at least this many pixels (paper §A.1)."""

CHANNEL_PREFERENCE: tuple[str, ...] = ("flair", "t2", "ct", "t1gd", "t1")
"""Channel names tried in order for 4-D volumes; the first channel whose name matches wins, else channel 0."""

MSD_TARGETS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "braintumour": (
        "brain",
        {
            "edema": ("peritumoral edema", "lesion"),
            "non-enhancing tumor": ("non-enhancing tumor", "tumor"),
            "enhancing tumour": ("enhancing tumor", "tumor"),
        },
    ),
    "heart": ("heart", {"left atrium": ("left atrium", "organ")}),
    "liver": ("abdomen", {"liver": ("liver", "organ"), "cancer": ("liver tumor", "tumor")}),
    "hippocampus": (
        "brain",
        {"anterior": ("anterior hippocampus", "organ"), "posterior": ("posterior hippocampus", "organ")},
    ),
    "prostate": (
        "pelvis",
        {"pz": ("prostate peripheral zone", "organ"), "tz": ("prostate transition zone", "organ")},
    ),
    "lung": ("chest", {"cancer": ("lung tumor", "tumor")}),
    "pancreas": ("abdomen", {"pancreas": ("pancreas", "organ"), "cancer": ("pancreatic tumor", "tumor")}),
    "hepaticvessel": (
        "abdomen",
        {"vessel": ("hepatic vessel", "vessel"), "tumour": ("liver tumor", "tumor")},
    ),
    "spleen": ("abdomen", {"spleen": ("spleen", "organ")}),
    "colon": ("abdomen", {"colon cancer primaries": ("colon tumor", "tumor")}),
}
"""Task name (lower case, after `TaskXX_`) -> (site, {label name: (target, target type)}).
Labels of unknown tasks keep their own name, with the type inferred from it."""


def read_msd(
    task_dir: str | Path,
    *,
    min_pixels: int = MIN_PIXELS,
    max_slices_per_label: int = 0,
    spec: ImagingSpec | None = None,
) -> Iterator[SourceRecord]:
    """Yield one record per (volume, slice, label) with at least `min_pixels` label pixels.

    Args:
        task_dir: a `TaskXX_Name` folder holding `dataset.json`, `imagesTr/` and `labelsTr/`.
        min_pixels: minimum label pixels on a slice.
        max_slices_per_label: if > 0, keep at most this many evenly spaced slices per label per volume.
        spec: axis and window for every slice (default: axial, automatic window); its `slice` is
            ignored (every qualifying slice is read) and its `frame` is the chosen channel of 4-D volumes.
    """
    spec = spec or ImagingSpec()
    task_dir = Path(task_dir)
    meta = _read_dataset_json(task_dir)
    task = task_dir.name
    key = task.split("_", 1)[-1].lower()
    site, known = MSD_TARGETS.get(key, (key, {}))
    labels = _labels(meta)
    channels = _channels(meta)
    for label_path in sorted((task_dir / "labelsTr").glob("*.nii*")):
        if label_path.name.startswith("._"):
            continue
        image_path = _image_for(task_dir, label_path)
        if image_path is None:
            log.warning("%s: no image for %s, skipped", task, label_path.name)
            continue
        case = label_path.name.split(".nii")[0]
        yield from _volume_records(
            task,
            case,
            site,
            image_path,
            label_path,
            labels,
            known,
            channels,
            min_pixels,
            max_slices_per_label,
            spec,
        )


def _read_dataset_json(task_dir: Path) -> dict[str, Any]:
    path = task_dir / "dataset.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read MSD dataset.json: {exc}") from exc


def _labels(meta: dict[str, Any]) -> dict[int, str]:
    """Label value -> name, from MSD (`{"1": "liver"}`) or nnU-Net v2 (`{"liver": 1}`) style; no background."""
    raw = meta.get("labels") or {}
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, str) and str(k).lstrip("-").isdigit():
            out[int(k)] = v
        elif isinstance(v, int):
            out[v] = str(k)
    return {v: name for v, name in out.items() if v != 0 and name.lower() != "background"}


def _channels(meta: dict[str, Any]) -> list[str]:
    raw = meta.get("modality") or meta.get("channel_names") or {"0": "CT"}
    return [str(raw[k]) for k in sorted(raw, key=lambda s: int(s))]


def _image_for(task_dir: Path, label_path: Path) -> Path | None:
    name = label_path.name
    for candidate in (name, name.replace(".nii", "_0000.nii", 1)):
        path = task_dir / "imagesTr" / candidate
        if path.is_file():
            return path
    return None


def pick_channel(channels: list[str]) -> int:
    """Index of the channel to keep: the first name matching `CHANNEL_PREFERENCE`, else 0."""
    lowered = [c.lower() for c in channels]
    for want in CHANNEL_PREFERENCE:
        for i, name in enumerate(lowered):
            if name == want or name.startswith(want):
                return i
    return 0


def _volume_records(
    task: str,
    case: str,
    site: str,
    image_path: Path,
    label_path: Path,
    labels: dict[int, str],
    known: dict[str, tuple[str, str]],
    channels: list[str],
    min_pixels: int,
    max_slices: int,
    spec: ImagingSpec,
) -> Iterator[SourceRecord]:
    probe = NiftiVolume.load(image_path, frame=0)
    frames = probe.layout.frames
    channel = pick_channel(channels) if frames > 1 and len(channels) == frames else 0
    volume = probe if channel == 0 else NiftiVolume.load(image_path, frame=channel)
    seg = NiftiVolume.load(label_path, frame=0)
    axis = spec.axis
    shapes = [tuple(v.n_slices(a) for a in ("sagittal", "coronal", "axial")) for v in (volume, seg)]
    if shapes[0] != shapes[1]:
        log.warning("%s/%s: image %s and label %s differ in shape, skipped", task, case, *shapes)
        return
    channel_name = channels[channel] if channel < len(channels) else "CT"
    is_ct = channel_name.strip().lower() == "ct"
    targets = {
        v: known.get(name.lower(), (name.lower(), infer_target_type(name))) for v, name in labels.items()
    }
    counts = {v: seg.ras_counts(axis, [v]) for v in targets}  # per label: pixels on each slice
    images: dict[int, tuple[np.ndarray, dict[str, str]]] = {}
    for value, (target, ttype) in targets.items():
        slices = np.nonzero(counts[value] >= min_pixels)[0]
        if max_slices > 0 and len(slices) > max_slices:
            slices = slices[np.linspace(0, len(slices) - 1, max_slices).round().astype(int)]
        for z in slices.tolist():
            present = tuple(sorted(targets[v][0] for v in targets if counts[v][z] > 0))
            if z not in images:
                img = volume.image(replace(spec, slice=z, frame=channel))
                images[z] = (img.pixels, img.info)
            pixels, info = images[z]
            labels_z = np.rint(seg.values(axis, z)).astype(np.int64)
            window = info["window"]
            tag = "" if axis == "axial" else f"-{axis}"
            yield SourceRecord(
                id=safe_name(f"msd-{task}-{case}{tag}-z{z:03d}-{target}"),
                image=pixels,
                mask=labels_z == value,
                modality="CT" if is_ct else "MRI",
                target=target,
                target_type=ttype,
                source="msd",
                subset=task,
                case=f"{task}/{case}",
                image_key=f"msd-{task}-{case}{tag}-z{z:03d}-{window}",
                present=present,
                extra={
                    "site": site,
                    "channel": channel_name,
                    "axis": axis,
                    "slice": str(z),
                    "frame": str(channel),
                    "window": window,
                },
            )
