"""Procedural phantom dataset: synthetic 2-D scans in nine modality styles with masks and template QA.

The answers and reasoning chains are correct by construction: geometry comes from the saved masks
(`facts`), appearance from how each object was painted (`scene`). See docs/dataset.md.
"""

from training.phantom.generate import PhantomSample, generate, make_sample
from training.phantom.modalities import MODALITIES, Modality

__all__ = ["MODALITIES", "Modality", "PhantomSample", "generate", "make_sample"]
