"""What each structure of a compositional phantom scene is called and how it is recognised.

In compositional scenes (the default task, `training.phantom.layout`) a structure's *name* is told by its
internal pattern alone — stripes, dots, a checkerboard, a plain fill — while everything a question may ask
about (brightness against its surroundings, size, shape, margin, position) is drawn at random for every
object of every scene. So no attribute can be read off a name, and the only way to answer "which organ
holds the brightest lesion?" is to look. Each modality has four host structures ("organs") and four
lesion kinds; a scene paints three of each.
"""

from __future__ import annotations

from dataclasses import dataclass

PATTERNS: tuple[str, ...] = (
    "plain",
    "hstripes",
    "vstripes",
    "diagonal",
    "dots",
    "checker",
    "antidiagonal",
    "grid",
)
"""Identity patterns: hosts take the first four, lesions the last four (so a lesion never wears a host's)."""


@dataclass(frozen=True)
class Atlas:
    """The structures of one modality's compositional scenes."""

    host_word: str
    """What the questions call a host structure ("organ", "structure", "region")."""
    hosts: tuple[str, str, str, str]
    """Host structure names; host i wears PATTERNS[i]."""
    lesions: tuple[str, str, str, str]
    """Lesion names; lesion i wears PATTERNS[4 + i]."""
    host_type: str = "organ"
    """The hosts' `target_type` in the manifest."""

    def pattern(self, name: str) -> str:
        """The identity pattern of a structure of this modality."""
        if name in self.hosts:
            return PATTERNS[self.hosts.index(name)]
        return PATTERNS[4 + self.lesions.index(name)]

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
