"""bench/seg_figure.py's parts without a PACS: the phantom CT it stores, and the overlay it draws."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import seg_figure  # noqa: E402


def test_phantom_ct_has_plane_geometry_and_the_phantom_pixels():
    ds, sample = seg_figure.phantom_ct(45, 1, 64)
    assert ds.Modality == "CT" and (ds.Rows, ds.Columns) == (64, 64) and "FrameOfReferenceUID" in ds
    assert len(ds.ImageOrientationPatient) == 6 and len(ds.PixelSpacing) == 2
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip(sample.scene.canvas[..., 0], 0, 1) * 2000 - 1024
    assert np.abs(hu - expected).max() <= 0.5 and hu.min() >= -1024  # no wrap-around of the air's noise


def test_each_segment_is_outlined_in_its_own_exact_colour():
    ds, _ = seg_figure.phantom_ct(45, 1, 32)
    masks = np.zeros((32, 32, 2), np.uint8)  # (H, W, S)
    masks[4:12, 4:12, 0] = 1
    masks[18:28, 16:30, 1] = 1
    img = seg_figure.palette_png(seg_figure.render(ds, masks, ["latent step 1", "latent step 2"], "t"))
    rgb = np.asarray(img.convert("RGB"))
    s, head = seg_figure.SCALE, 22
    for i, (r, c) in enumerate([(4, 4), (18, 16)]):  # the top-left corner of each mask, on the overlay
        assert tuple(rgb[head + r * s, c * s]) == seg_figure.COLOURS[i]
        assert tuple(rgb[head + (r + 3) * s, (c + 3) * s]) != seg_figure.COLOURS[i]  # inside: the image
