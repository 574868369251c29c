"""Readers of real segmentation datasets (MSD, BiomedParse, a CSV folder) that yield image-mask records.

Every reader turns files into the model's image with `vital_core.imaging` — the call the server makes.
"""

from training.sources.biomedparse import read_biomedparse
from training.sources.folder import read_folder
from training.sources.msd import read_msd
from training.sources.record import (
    SourceRecord,
    canonical_modality,
    infer_target_type,
    record_image,
    write_pairs,
)

__all__ = [
    "SourceRecord",
    "canonical_modality",
    "infer_target_type",
    "read_biomedparse",
    "read_folder",
    "read_msd",
    "record_image",
    "write_pairs",
]
