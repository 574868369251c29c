"""Readers of real segmentation datasets (MSD, BiomedParse, a CSV folder) that yield image-mask records."""

from training.sources.biomedparse import read_biomedparse
from training.sources.folder import read_folder
from training.sources.msd import read_msd
from training.sources.record import SourceRecord, canonical_modality, infer_target_type, write_pairs
from training.sources.windowing import CT_WINDOWS, ct_window_for

__all__ = [
    "CT_WINDOWS",
    "SourceRecord",
    "canonical_modality",
    "ct_window_for",
    "infer_target_type",
    "read_biomedparse",
    "read_folder",
    "read_msd",
    "write_pairs",
]
