"""An explanation as DICOM objects (highdicom): a Comprehensive SR and one Secondary Capture per heatmap.

Both go into the source's study as two new series (Modality is a series attribute: SR and OT cannot
share one). The SR holds the question, the answer, K, the model, each latent step's sentence, and
IMAGE references to the source instance and to each step's heatmap; for a view of a series, also the
series, the plane, the slice and the plane's geometry (a reformatted plane references no single image).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

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
    steps: list[dict]  # ExplainStep dicts: step, sentence, heatmap.png_base64


def build_results(
    source: Dataset, exp: Explanation, view: SeriesView | None = None
) -> tuple[hd.sr.ComprehensiveSR, list[hd.sc.SCImage]]:
    """The SR and the heatmap images for `exp` about the `source` instance (not yet stored).

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
    root = hd.sr.ContainerContentItem(name=ROOT, template_id=None)
    items = [
        hd.sr.TextContentItem(QUESTION, exp.question, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ANSWER, exp.answer or EMPTY, relationship_type="CONTAINS"),
        hd.sr.NumContentItem(LATENT_STEPS, exp.k, NO_UNITS, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_NAME, exp.model, relationship_type="HAS OBS CONTEXT"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, exp.version, relationship_type="HAS OBS CONTEXT"),
        *([] if reformat else [_image_ref(SOURCE, source)]),
        *([] if view is None else [view.content()]),
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
        evidence=[*(view.instances if view is not None else [source]), *heatmaps],
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
    return sr, heatmaps


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
