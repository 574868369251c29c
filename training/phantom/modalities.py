"""The phantom's modality styles: scene builder, wording, and every target a scene may contain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from training.phantom import optical, radiology
from training.phantom.scene import Scene


@dataclass(frozen=True)
class Modality:
    """One imaging modality style of the phantom."""

    key: str
    """Short id used in sample ids (e.g. "ct")."""
    name: str
    """The manifest's `modality` value (e.g. "CT")."""
    phrases: tuple[str, ...]
    """Ways a question names the image ("CT scan", "abdominal CT slice")."""
    contrast: tuple[str, str] | None
    """Modality terms for brighter / darker (e.g. hyperdense / hypodense); None: plain brighter / darker."""
    build: Callable[[np.random.Generator, int], Scene]
    targets: tuple[tuple[str, str], ...]
    """Every (target, target_type) the builder may paint; absent ones feed the "no" yes/no questions."""


MODALITIES: tuple[Modality, ...] = (
    Modality(
        "ct",
        "CT",
        ("CT scan", "CT image", "abdominal CT slice"),
        ("hyperdense", "hypodense"),
        radiology.ct,
        (
            ("liver", "organ"),
            ("spleen", "organ"),
            ("kidney", "organ"),
            ("stomach", "organ"),
            ("aorta", "vessel"),
            ("pancreas", "organ"),
            ("liver tumor", "tumor"),
            ("renal cyst", "lesion"),
        ),
    ),
    Modality(
        "mri",
        "MRI",
        ("MRI scan", "MR image", "brain MRI slice"),
        ("hyperintense", "hypointense"),
        radiology.mri,
        (
            ("ventricular system", "organ"),
            ("hippocampus", "organ"),
            ("brain tumor", "tumor"),
            ("white matter lesion", "lesion"),
        ),
    ),
    Modality(
        "xray",
        "X-ray",
        ("chest X-ray", "X-ray image", "radiograph"),
        ("radiopaque", "radiolucent"),
        radiology.xray,
        (
            ("trachea", "organ"),
            ("heart", "organ"),
            ("lung nodule", "lesion"),
            ("lung opacity", "lesion"),
            ("pleural effusion", "lesion"),
        ),
    ),
    Modality(
        "us",
        "Ultrasound",
        ("ultrasound image", "sonogram", "B-mode ultrasound image"),
        ("hyperechoic", "hypoechoic"),
        radiology.ultrasound,
        (
            ("cyst", "lesion"),
            ("solid mass", "tumor"),
            ("gallbladder", "organ"),
            ("calcification", "lesion"),
            ("blood vessel", "vessel"),
        ),
    ),
    Modality(
        "oct",
        "OCT",
        ("OCT scan", "retinal OCT image", "OCT B-scan"),
        ("hyperreflective", "hyporeflective"),
        radiology.oct,
        (
            ("retinal nerve fiber layer", "retinal structure"),
            ("retinal pigment epithelium", "retinal structure"),
            ("choroid", "tissue"),
            ("intraretinal cyst", "lesion"),
            ("subretinal fluid", "lesion"),
        ),
    ),
    Modality(
        "endo",
        "Endoscopy",
        ("endoscopic image", "colonoscopy frame", "endoscopy image"),
        None,
        optical.endoscopy,
        (("lumen", "tissue"), ("polyp", "lesion"), ("ulcer", "lesion"), ("diverticulum", "lesion")),
    ),
    Modality(
        "derm",
        "Dermoscopy",
        ("dermoscopic image", "dermoscopy image", "skin image"),
        None,
        optical.dermoscopy,
        (
            ("nevus", "lesion"),
            ("melanoma", "tumor"),
            ("angioma", "lesion"),
            ("seborrheic keratosis", "lesion"),
        ),
    ),
    Modality(
        "fundus",
        "Fundus",
        ("fundus photograph", "fundus image", "retinal photograph"),
        None,
        optical.fundus,
        (
            ("optic disc", "retinal structure"),
            ("optic cup", "retinal structure"),
            ("macula", "retinal structure"),
            ("hemorrhage", "lesion"),
            ("hard exudate", "lesion"),
            ("retinal vessel", "vessel"),
        ),
    ),
    Modality(
        "path",
        "Pathology",
        ("histopathology image", "H&E-stained slide", "pathology image"),
        None,
        optical.pathology,
        (
            ("gland", "tissue"),
            ("tumor region", "tumor"),
            ("lymphocyte cluster", "cell"),
            ("blood vessel", "vessel"),
        ),
    ),
)
