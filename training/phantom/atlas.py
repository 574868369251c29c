"""What each structure of a compositional phantom scene is called and how it is recognised.

In compositional scenes (the default task, `training.phantom.layout`) a structure's *name* is told by its
tissue tone — its intensity in greyscale modalities (as a tissue's density is in CT), its hue in colour
ones — while its size, shape, margin and position are drawn at random for every object of every scene,
so the structure a question's first hop resolves ("the largest lesion") is any of them. Each modality
has four host structures ("organs") and four lesion kinds; a scene paints three of each.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST_LEVELS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.82)
"""Greyscale intensity of host structure i (in [0, 1]); every scene jitters it by at most LEVEL_JITTER."""
LESION_LEVELS: tuple[float, ...] = (0.08, 0.3, 0.5, 0.71)
"""Greyscale intensity of lesion kind i: between the host levels, so a lesion always stands out in its host."""
LEVEL_JITTER = 0.025
HOST_HUES: tuple[tuple[float, float, float], ...] = (
    (0.85, 0.3, 0.25),
    (0.95, 0.8, 0.35),
    (0.35, 0.6, 0.85),
    (0.6, 0.35, 0.75),
)
"""Colour modalities: the RGB colour of host structure i."""
LESION_HUES: tuple[tuple[float, float, float], ...] = (
    (0.3, 0.15, 0.1),
    (0.98, 0.97, 0.92),
    (0.3, 0.7, 0.35),
    (0.15, 0.2, 0.45),
)
"""Colour modalities: the RGB colour of lesion kind i."""


@dataclass(frozen=True)
class Atlas:
    """The structures of one modality's compositional scenes."""

    host_word: str
    """What the questions call a host structure ("organ", "structure", "region")."""
    hosts: tuple[str, str, str, str]
    """Host structure names; host i has tone HOST_LEVELS[i] / HOST_HUES[i]."""
    lesions: tuple[str, str, str, str]
    """Lesion names; lesion i has tone LESION_LEVELS[i] / LESION_HUES[i]."""
    host_type: str = "organ"
    """The hosts' `target_type` in the manifest."""

    def tone(self, name: str, colour: bool) -> float | tuple[float, float, float]:
        """The intensity (greyscale) or RGB colour that identifies a structure of this modality."""
        if name in self.hosts:
            i = self.hosts.index(name)
            return HOST_HUES[i] if colour else HOST_LEVELS[i]
        i = self.lesions.index(name)
        return LESION_HUES[i] if colour else LESION_LEVELS[i]

    def targets(self) -> tuple[tuple[str, str], ...]:
        """Every (name, target_type) a scene may contain (absent ones feed the "no" yes/no questions)."""
        return tuple((h, self.host_type) for h in self.hosts) + tuple((n, "lesion") for n in self.lesions)


ATLAS: dict[str, Atlas] = {
    "ct": Atlas(
        "organ", ("liver", "spleen", "kidney", "pancreas"), ("cyst", "tumor", "abscess", "hemangioma")
    ),
    "mri": Atlas(
        "structure",
        ("thalamus", "caudate nucleus", "hippocampus", "ventricle"),
        ("glioma", "metastasis", "infarct", "plaque"),
        "structure",
    ),
    "xray": Atlas(
        "structure",
        ("heart", "hilum", "aortic knob", "diaphragm"),
        ("nodule", "opacity", "cavity", "granuloma"),
        "structure",
    ),
    "us": Atlas(
        "organ",
        ("gallbladder", "kidney", "bladder", "thyroid lobe"),
        ("cyst", "solid mass", "calcification", "abscess"),
    ),
    "oct": Atlas(
        "structure",
        ("fovea", "choroid", "nerve fiber layer", "pigment epithelium"),
        ("intraretinal cyst", "subretinal fluid", "drusen", "hemorrhage"),
        "retinal structure",
    ),
    "endo": Atlas(
        "structure",
        ("fold", "lumen", "appendiceal orifice", "ileocecal valve"),
        ("polyp", "ulcer", "diverticulum", "angioectasia"),
        "tissue",
    ),
    "derm": Atlas(
        "structure",
        ("pigment network", "globule cluster", "vascular area", "scar"),
        ("melanoma", "angioma", "keratosis", "carcinoma"),
        "tissue",
    ),
    "fundus": Atlas(
        "structure",
        ("optic disc", "macula", "vessel arcade", "optic cup"),
        ("hemorrhage", "exudate", "microaneurysm", "cotton wool spot"),
        "retinal structure",
    ),
    "path": Atlas(
        "region",
        ("gland", "tumor region", "stroma", "duct"),
        ("lymphocyte cluster", "necrosis", "mitotic cluster", "microcalcification"),
        "tissue",
    ),
}
"""The atlas of every modality, by `Modality.key`."""
