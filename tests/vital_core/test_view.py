"""Square display pixels (`vital_core.imaging.view`): anisotropic volumes come out with true proportions."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, NiftiVolume, load_model_image
from vital_core.imaging.view import square_pixels, square_shape

LIMITS = ImagingLimits(max_pixels=10_000_000)


def test_rule_sizes_and_interpolation():
    assert square_shape((24, 128), (5.0, 0.7)) == (171, 128)  # 24 · 5 / 0.7 = 171.4
    assert square_shape((128, 24), (0.7, 5.0)) == (128, 171)
    assert square_shape((24, 128), (0.7, 0.7)) == (24, 128)
    assert square_shape((24, 128), (0.0, 0.7)) == (24, 128)  # unknown spacing: shown as stored
    assert square_shape((24, 128), (float("nan"), 0.7)) == (24, 128)
    ramp = np.array([[0.0, 10.0], [100.0, 110.0]])
    up = square_pixels(ramp, (2.0, 1.0), LIMITS)  # rows twice as coarse → 4 rows
    assert up.shape == (4, 2) and np.allclose(up[:, 0], [0.0, 25.0, 75.0, 100.0])  # centre-aligned, clamped
    labels = np.array([[0, 3], [7, 3]], dtype=np.uint8)
    near = square_pixels(labels, (2.0, 1.0), LIMITS, labels=True)
    assert near.dtype == np.uint8 and set(np.unique(near)) == {0, 3, 7}
    assert np.array_equal(near[:, 0], [0, 0, 7, 7])
    assert square_pixels(ramp, (1.0, 1.0), LIMITS) is ramp  # square already: untouched


def test_budget_is_checked_before_allocating():
    with pytest.raises(ImagingError) as exc:
        square_pixels(np.zeros((2000, 2000), np.float32), (20.0, 0.5), LIMITS)  # 80,000 x 2,000 pixels
    assert exc.value.status == 413 and "square pixels" in exc.value.message and "80000" in exc.value.message
    tiny_bytes = ImagingLimits(max_pixels=10_000_000, max_decoded_bytes=1_000_000)
    with pytest.raises(ImagingError) as exc:
        square_pixels(np.zeros((100, 1000), np.float32), (5.0, 0.7), tiny_bytes)
    assert exc.value.status == 413 and "bytes" in exc.value.message
    # a NIfTI whose slices are 200x coarser than its pixels: refused from the header, before reading data
    vol = np.zeros((64, 64, 64), np.float32)
    data = nib.Nifti1Image(vol, np.diag([0.05, 0.05, 100.0, 1.0])).to_bytes()
    with pytest.raises(ImagingError) as exc:
        load_model_image(
            gzip.compress(data), ImagingSpec(axis="coronal"), ImagingLimits(max_pixels=1_000_000)
        )
    assert exc.value.status == 413 and "NIfTI slice" in exc.value.message


@pytest.mark.parametrize("codes", ["RAS", "LPS", "SLA", "AIR"])
def test_sphere_is_round_in_every_view(volumes, codes):
    data = volumes.stored_nifti(codes)
    vol = NiftiVolume.load(data)
    expected = {"axial": (112, 128), "coronal": (171, 128), "sagittal": (171, 112)}
    for axis in ("axial", "coronal", "sagittal"):
        spec = ImagingSpec(axis=axis, **volumes.WINDOW)
        served = load_model_image(gzip.compress(data), spec, LIMITS)  # the server's streamed path
        read = vol.image(spec)  # the training readers' in-memory path
        assert np.array_equal(served.pixels, read.pixels), axis
        assert served.pixels.shape == expected[axis], (codes, axis, served.pixels.shape)
        aspect = volumes.disc_aspect(served.pixels)  # the middle slices do not cut the marker
        assert abs(aspect - 1.0) <= 0.05, (codes, axis, aspect)
    # the old rule (one row per slice) squashed the coronal disc ~7x: the test would fail without the rule
    assert vol.values("coronal", 56).shape == (171, 128)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "SLA"])
def test_marker_on_patient_left_stays_on_image_right(volumes, codes):
    data = volumes.stored_nifti(codes)
    for axis, index in (("axial", 20), ("coronal", 90)):
        img = load_model_image(data, ImagingSpec(axis=axis, slice=index, **volumes.WINDOW), LIMITS).pixels
        rows, cols = np.nonzero(img >= 250)
        left = cols < img.shape[1] // 8  # image left = patient's right: must be empty of the marker
        right = cols >= img.shape[1] - img.shape[1] // 8
        assert right.sum() > 0 and left.sum() == 0, (codes, axis)
        assert rows[right].mean() < img.shape[0] / 4, (codes, axis)  # anterior (axial) / superior at the top


def test_label_views_use_nearest_and_stay_on_their_images(volumes):
    vol = volumes.sphere_volume()
    labels = (vol >= 500).astype(np.int16) * 3  # label value 3 where the image is bright
    image = NiftiVolume.load(volumes.stored_nifti("LPS", vol))
    seg = NiftiVolume.load(volumes.stored_nifti("LPS", labels.astype(np.float32)))
    for axis in ("axial", "coronal", "sagittal"):
        index = image.n_slices(axis) // 2
        mask = seg.values(axis, index)
        pixels = image.image(ImagingSpec(axis=axis, slice=index, **volumes.WINDOW)).pixels
        assert mask.shape == pixels.shape and set(np.unique(mask)) <= {0.0, 3.0}, axis
        inside = pixels[mask == 3]
        outside = pixels[mask == 0]
        assert inside.mean() > 200 and outside.mean() < 40, (axis, inside.mean(), outside.mean())
