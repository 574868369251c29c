"""An explanation as DICOM objects (highdicom): a Comprehensive SR and one Secondary Capture per heatmap.

Both go into the source's study as two new series (Modality is a series attribute: SR and OT cannot
share one). The SR holds the question, the answer, K, the model, each latent step's sentence, and
IMAGE references to the source instance and to each step's heatmap.
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


@dataclass
class Explanation:
    """What /explain computed, as the DICOM writer needs it."""

    question: str
    answer: str
    k: int
    model: str
    version: str
    steps: list[dict]  # ExplainStep dicts: step, sentence, heatmap.png_base64


def build_results(source: Dataset, exp: Explanation) -> tuple[hd.sr.ComprehensiveSR, list[hd.sc.SCImage]]:
    """The SR and the heatmap images for `exp` about the `source` instance (not yet stored)."""
    common = {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": exp.model[:64],
        "software_versions": f"vital {exp.version}"[:64],
        "specific_character_set": "ISO_IR 192",  # UTF-8: answers and sentences are free text
    }
    sc_series = generate_uid()
    heatmaps = [_heatmap_image(source, step, sc_series, i + 1, common) for i, step in enumerate(exp.steps)]
    root = hd.sr.ContainerContentItem(name=ROOT, template_id=None)
    items = [
        hd.sr.TextContentItem(QUESTION, exp.question, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ANSWER, exp.answer or EMPTY, relationship_type="CONTAINS"),
        hd.sr.NumContentItem(LATENT_STEPS, exp.k, NO_UNITS, relationship_type="CONTAINS"),
        hd.sr.TextContentItem(ALGORITHM_NAME, exp.model, relationship_type="HAS OBS CONTEXT"),
        hd.sr.TextContentItem(ALGORITHM_VERSION, exp.version, relationship_type="HAS OBS CONTEXT"),
        _image_ref(SOURCE, source),
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
        evidence=[source, *heatmaps],
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


def _heatmap_image(source: Dataset, step: dict, series_uid: str, number: int, common: dict) -> hd.sc.SCImage:
    """One step's colour overlay as an RGB Secondary Capture derived from the source."""
    png = base64.b64decode(step["heatmap"]["png_base64"])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))  # (H, W, 3) uint8
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
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
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
