"""An explanation as DICOM objects (highdicom): a Comprehensive SR, one Secondary Capture per heatmap and
one Segmentation with a segment per latent step (where the step looks: /explain's region mask).

They go into the source's study as new series (Modality is a series attribute: SR, OT and SEG cannot
share one). The SR holds the question, the answer, K, the model, each latent step's sentence, and
IMAGE references to the source instance, to each step's heatmap and to the SEG; for a view of a series,
also the series, the plane, the slice and the plane's geometry (a reformatted plane references no single
image, and gets no SEG: its masks are on the reformatted grid, not on any instance's). The SEG is binary,
one segment per step, on the source's own pixel grid: highdicom copies the source's Image Plane geometry
(pixel spacing, orientation, position) where it has one and references the source instance (and frame).
"""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

log = logging.getLogger("vital.pacs")
MANUFACTURER = "VITAL"
SCHEME = "99VITAL"  # private coding scheme (PS3.16 §8.2: "99" prefix) for concepts DICOM has no code for
ROOT = Code("18748-4", "LN", "Diagnostic imaging report")
SOURCE = Code("121324", "DCM", "Source Image")
ALGORITHM_NAME = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = Code("111003", "DCM", "Algorithm Version")
QUESTION = Code("question", SCHEME, "Question")
ANSWER = Code("answer", SCHEME, "Answer")
LATENT_STEPS = Code("latent-steps", SCHEME, "Latent reasoning steps (K)")
STEP = Code("latent-step", SCHEME, "Latent step")
STEP_NUMBER = Code("step-number", SCHEME, "Step number")
SENTENCE = Code("step-sentence", SCHEME, "Step sentence")
HEATMAP = Code("heatmap", SCHEME, "Step heatmap")
REGIONS = Code("step-regions", SCHEME, "Latent step regions (segmentation)")
REGION_CATEGORY = Code("model-explanation", SCHEME, "Model explanation")
REGION_TYPE = Code("step-region", SCHEME, "Region a latent step looks at")
EMPTY = "(empty)"  # TEXT values are type 1: a tiny model may say nothing
NO_UNITS = Code("1", "UCUM", "no units")
_AXES = {0: ("L", "R"), 1: ("P", "A"), 2: ("H", "F")}  # + / - direction letters per patient axis


SOURCE_SERIES = Code("source-series", SCHEME, "Source series")
SERIES_UID = Code("112002", "DCM", "Series Instance UID")
PLANE = Code("plane", SCHEME, "Plane")
SLICE_INDEX = Code("slice-index", SCHEME, "Slice index")
PLANE_ORIENTATION = Code("image-orientation-patient", SCHEME, "Image Orientation (Patient)")
PLANE_POSITION = Code("image-position-patient", SCHEME, "Image Position (Patient)")
PLANE_SPACING = Code("pixel-spacing", SCHEME, "Pixel Spacing")


@dataclass
class SeriesView:
    """The view of a series an explanation was made on: plane, slice, its geometry and the instances."""

    plane: str
    slice: int
    orientation: str  # ImageOrientationPatient of the served view, DICOM string (LPS)
    position: str  # ImagePositionPatient of its first pixel
    spacing: str  # PixelSpacing (row, column) after square pixels
    instances: list[Dataset]  # every instance of the series (headers)
    served: Dataset | None  # the one instance shown, when the view is in the acquired plane

    @classmethod
    def of(cls, info: dict, instances: list[Dataset], served: Dataset | None) -> SeriesView:
        """From the decoded image's info (`vital_core.imaging.series`)."""
        return cls(
            plane=str(info.get("axis", "axial")),
            slice=int(info.get("slice", 0)),
            orientation=str(info.get("image_orientation_patient", "")),
            position=str(info.get("image_position_patient", "")),
            spacing=str(info.get("pixel_spacing", "")),
            instances=instances,
            served=served,
        )

    def content(self) -> hd.sr.ContainerContentItem:
        """A CONTAINER 'Source series': the series UID, the plane, the slice and the plane's geometry."""
        box = hd.sr.ContainerContentItem(name=SOURCE_SERIES, relationship_type="CONTAINS")
        uid = str(self.instances[0].SeriesInstanceUID)
        items = [
            hd.sr.UIDRefContentItem(SERIES_UID, uid, relationship_type="CONTAINS"),
            hd.sr.TextContentItem(PLANE, self.plane, relationship_type="CONTAINS"),
            hd.sr.NumContentItem(SLICE_INDEX, self.slice, NO_UNITS, relationship_type="CONTAINS"),
        ]
        for code, value in (
            (PLANE_ORIENTATION, self.orientation),
            (PLANE_POSITION, self.position),
            (PLANE_SPACING, self.spacing),
        ):
            if value:
                items.append(hd.sr.TextContentItem(code, value, relationship_type="CONTAINS"))
        box.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
        return box


@dataclass
class Explanation:
    """What /explain computed, as the DICOM writer needs it."""

    question: str
    answer: str
    k: int
    model: str
    version: str
    steps: list[dict]  # ExplainStep dicts: step, sentence, heatmap.png_base64, mask (COCO RLE)
    frame: int = 0  # 0-based frame of a multi-frame source the steps are about
    region_fraction: float | None = None  # the regions' threshold, recorded in the SEG


def build_results(
    source: Dataset, exp: Explanation, view: SeriesView | None = None
) -> tuple[hd.sr.ComprehensiveSR, list[hd.sc.SCImage], hd.seg.Segmentation | None]:
    """The SR, the heatmap images and the step-region SEG (None without steps or masks, or for a
    reformatted plane of a series) for `exp` about the `source` instance (not yet stored).

    With a series `view`: the SR also holds a 'Source series' container (series UID, plane, slice, the
    plane's geometry) and lists every instance as evidence; `source` is the instance shown when the view
    is in the acquired plane (referenced as the Source Image, as for one instance), else a reformatted
    plane references no single image and the heatmaps name every instance as their source images.
    """
    common = {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": exp.model[:64],
        "software_versions": f"vital {exp.version}"[:64],
        "specific_character_set": "ISO_IR 192",  # UTF-8: answers and sentences are free text
    }
    sc_series = generate_uid()
    heatmaps = [
        _heatmap_image(source, step, sc_series, i + 1, common, view) for i, step in enumerate(exp.steps)
    ]
    reformat = view is not None and view.served is None
    seg = None
    if not reformat:
        try:
            seg = step_segmentation(source, exp, common)
        except (ValueError, AttributeError, TypeError) as exc:  # highdicom cannot map this source's frames
            log.warning("no step-region SEG for %s: %s", source.get("SOPInstanceUID"), exc)
    root = hd.sr.ContainerContentItem(name=ROOT, template_id=None)
    items = [
        hd.sr.TextContentItem(QUESTION, exp.question, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ANSWER, exp.answer or EMPTY, relationship_type="CONTAINS"),
        hd.sr.NumContentItem(LATENT_STEPS, exp.k, NO_UNITS, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_NAME, exp.model, relationship_type="HAS OBS CONTEXT"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, exp.version, relationship_type="HAS OBS CONTEXT"),
        *([] if reformat else [_image_ref(SOURCE, source)]),
        *([] if view is None else [view.content()]),
        *([_image_ref(REGIONS, seg)] if seg is not None else []),
    ]
    for step, sc in zip(exp.steps, heatmaps, strict=True):
        box = hd.sr.ContainerContentItem(name=STEP, relationship_type="CONTAINS")
        box.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(STEP_NUMBER, int(step["step"]), NO_UNITS, relationship_type="CONTAINS"),
                hd.sr.TextContentItem(SENTENCE, step["sentence"] or EMPTY, relationship_type="CONTAINS"),
                _image_ref(HEATMAP, sc),
            ],
            is_root=False,
        )
        items.append(box)
    root.ContentSequence = hd.sr.ContentSequence(items, is_root=False)
    sr = hd.sr.ComprehensiveSR(
        evidence=[
            *(view.instances if view is not None else [source]),
            *heatmaps,
            *([seg] if seg is not None else []),
        ],
        content=root,
        series_instance_uid=generate_uid(),
        series_number=_series_number(source, 1),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        is_complete=True,
        series_description="VITAL explanation (SR)",
        coding_schemes=[CodingSchemeIdentificationItem(SCHEME, name="VITAL concepts")],
        **common,
    )
    return sr, heatmaps, seg


def step_masks(source: Dataset, exp: Explanation) -> np.ndarray | None:
    """uint8 [F, H, W, S]: each step's region (COCO RLE decoded) on the source's pixel grid, on frame
    `exp.frame` of F (the other frames empty); None when there are no steps or a mask is not the source's
    size (its pixels would not map onto the source's)."""
    from pycocotools import mask as coco_mask

    masks = [s.get("mask") for s in exp.steps]
    if not masks or any(m is None for m in masks):
        return None
    rows, cols = int(source.Rows), int(source.Columns)
    frames = int(source.get("NumberOfFrames") or 1)
    if any(tuple(m["size"]) != (rows, cols) for m in masks) or not 0 <= exp.frame < frames:
        return None
    if frames > 1 and "FrameOfReferenceUID" not in source:
        return None  # highdicom maps SEG frames of a multi-frame source through its plane geometry
    out = np.zeros((frames, rows, cols, len(masks)), dtype=np.uint8)  # (F, H, W, S)
    for i, m in enumerate(masks):
        out[exp.frame, :, :, i] = coco_mask.decode({"size": list(m["size"]), "counts": m["counts"].encode()})
    return out


def step_segmentation(source: Dataset, exp: Explanation, common: dict) -> hd.seg.Segmentation | None:
    """A binary DICOM Segmentation of the steps' regions, one segment per step (None: see `step_masks`)."""
    pixels = step_masks(source, exp)
    if pixels is None:
        return None
    algorithm = hd.AlgorithmIdentificationSequence(
        name=exp.model[:64],
        family=Code("123109", "DCM", "Artificial Intelligence"),
        version=exp.version[:64],
        parameters={"region_fraction": str(exp.region_fraction)} if exp.region_fraction is not None else None,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=f"latent step {int(step['step'])}"[:64],
            segmented_property_category=REGION_CATEGORY,
            segmented_property_type=REGION_TYPE,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"VITAL step {int(step['step'])}",
        )
        for i, step in enumerate(exp.steps)
    ]
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=_series_number(source, 3),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        device_serial_number="0",
        series_description="VITAL explanation (step regions)",
        content_label="VITAL_REGIONS",
        omit_empty_frames=False,  # keep the frame-by-frame match with the source (frames with no region stay)
        content_description="where each latent step looks (/explain regions)",
        **{k: v for k, v in common.items() if k != "specific_character_set"},
    )


def _image_ref(name: Code, ds: Dataset) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(name, ds.SOPClassUID, ds.SOPInstanceUID, relationship_type="CONTAINS")


def _heatmap_image(
    source: Dataset, step: dict, series_uid: str, number: int, common: dict, view: SeriesView | None = None
) -> hd.sc.SCImage:
    """One step's colour overlay as an RGB Secondary Capture derived from the source (or the series)."""
    png = base64.b64decode(step["heatmap"]["png_base64"])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8
    if view is not None and view.orientation:
        plane = Dataset()
        plane.ImageOrientationPatient = [float(v) for v in view.orientation.split("\\")]
        orientation = _orientation(plane)
    else:
        orientation = _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=orientation or ("L", "P"),
        series_instance_uid=series_uid,
        series_number=_series_number(source, 2),
        sop_instance_uid=generate_uid(),
        instance_number=number,
        series_description="VITAL explanation (heatmaps)",
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        **common,
    )
    if orientation is None:
        sc.PatientOrientation = None  # type 2: empty = unknown (the source gives no orientation)
    sc.ImageType = ["DERIVED", "SECONDARY", "HEATMAP"]
    sc.DerivationDescription = f"VITAL latent step {step['step']}: patch similarity overlay"[:1024]
    sc.ImageComments = str(step.get("sentence", ""))[:10240]
    sources = [source] if view is None or view.served is not None else view.instances
    refs = []
    for ds in sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(ref)
    sc.SourceImageSequence = refs
    return sc


def _orientation(source: Dataset) -> tuple[str, str] | None:
    """PatientOrientation of the source, or derived from ImageOrientationPatient (dominant axis)."""
    po = source.get("PatientOrientation")
    if po and len(po) == 2 and all(po):
        return str(po[0]), str(po[1])
    iop = source.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return None
    out = []
    for vec in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(vec)))
        out.append(_AXES[axis][0 if float(vec[axis]) > 0 else 1])
    return out[0], out[1]


def _series_number(source: Dataset, offset: int) -> int:
    try:
        return 9000 + 10 * (int(source.get("SeriesNumber") or 0) % 100) + offset
    except (TypeError, ValueError):
        return 9000 + offset
