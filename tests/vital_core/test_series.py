"""A DICOM series → one volume with true geometry: any plane, square pixels, the NIfTI picture, clear refusals."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, load_model_image
from vital_core.imaging.series import DicomSeries, decode_series

LIMITS = ImagingLimits(max_pixels=10_000_000)


@pytest.fixture(scope="module")
def series(volumes) -> list[bytes]:
    return volumes.ct_series()


def edit(data: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def z_of(data: bytes) -> float:
    return float(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).ImagePositionPatient[2])


def by_z(files: list[bytes]) -> list[bytes]:
    return sorted(files, key=z_of)


def refused(files, limits: ImagingLimits = LIMITS, **spec) -> ImagingError:
    with pytest.raises(ImagingError) as exc:
        decode_series(files, ImagingSpec(**spec), limits)
    return exc.value


def test_sphere_round_in_every_plane_and_equal_to_the_nifti(volumes, series):
    nifti = volumes.stored_nifti("LPS")
    reshuffled = DicomSeries.load(list(reversed(series)), LIMITS)  # file order does not matter
    for axis, shape in (("axial", (112, 128)), ("coronal", (171, 128)), ("sagittal", (171, 112))):
        spec = ImagingSpec(axis=axis, **volumes.WINDOW)
        img = decode_series(series, spec, LIMITS)
        assert img.pixels.shape == shape and img.format == "dicom", (axis, img.pixels.shape)
        assert abs(volumes.disc_aspect(img.pixels) - 1.0) <= 0.05, axis
        ref = load_model_image(nifti, spec, LIMITS).pixels  # the same volume written as NIfTI
        diff = np.abs(img.pixels.astype(int) - ref.astype(int))
        assert diff.max() <= 1, (axis, diff.max())  # HU rounded to the stored 12 bits, then windowed
        assert np.array_equal(reshuffled.image(spec).pixels, img.pixels)
        assert img.info["axis"] == axis and img.info["slice"] == str(
            {"axial": 12, "coronal": 56}.get(axis, 64)
        )
        assert img.info["instances"] == "24"


def test_marker_on_patient_left_shows_on_viewer_right(volumes, series):
    for axis, index in (("axial", 20), ("coronal", 90)):
        img = decode_series(series, ImagingSpec(axis=axis, slice=index, **volumes.WINDOW), LIMITS).pixels
        rows, cols = np.nonzero(img >= 250)
        right = cols >= img.shape[1] * 7 // 8  # the marker; the sphere is central
        assert right.sum() > 0 and (cols < img.shape[1] // 8).sum() == 0, axis
        assert rows[right].mean() < img.shape[0] / 4, axis  # anterior (axial) / superior (coronal) at the top


def test_axial_view_names_its_instance_and_uses_its_window(series):
    files = by_z(series)
    img = decode_series(series, ImagingSpec(slice=7), LIMITS)
    ds = pydicom.dcmread(io.BytesIO(files[7]), stop_before_pixels=True)
    assert (
        img.info["sop_instance_uid"] == ds.SOPInstanceUID
    )  # slice 7 = 8th from the feet, not InstanceNumber
    assert img.info["series_instance_uid"] == ds.SeriesInstanceUID
    assert img.info["window"] == "dicom" and img.info["window_range"] == "-160..240"  # the file's 40 / 400
    coronal = decode_series(series, ImagingSpec(axis="coronal"), LIMITS)
    assert "sop_instance_uid" not in coronal.info and coronal.info["slice"] == "56"  # a reformat: no instance
    assert refused(series, slice=24).status == 422 and refused(series, frame=1).status == 422


def test_per_instance_rescale(volumes):
    vol = np.full((16, 16, 6), 100.0, np.float32)
    files = volumes.ct_series(vol, mixed_rescale=True)  # stored values differ by instance, HU do not
    s = DicomSeries.load(files, LIMITS)
    assert s.volume.data.dtype == np.int16 and np.all(s.volume.data == 100)
    stored = {pydicom.dcmread(io.BytesIO(f)).pixel_array[0, 0] for f in files}
    assert stored == {1124, 1074}


def test_hostile_series_are_refused_with_the_problem_named(series):
    files = by_z(series)
    mid = files[12]
    cases = [
        (files[:12] + [edit(mid, SeriesInstanceUID="1.2.3.4")] + files[13:], 422, "mixed series"),
        (files[:12] + [edit(mid, Modality="MR")] + files[13:], 422, "mixed modalities"),
        (files + [mid], 422, "sent twice"),
        (
            files[:12]
            + [edit(mid, ImagePositionPatient=pydicom.dcmread(io.BytesIO(files[11])).ImagePositionPatient)]
            + files[13:],
            422,
            "duplicated slice position",
        ),
        (files[:12] + files[13:], 422, "missing slice"),
        (files[:12] + [edit(mid, PixelSpacing=[0.8, 0.8])] + files[13:], 422, "inconsistent pixel spacing"),
        (
            files[:12] + [edit(mid, ImageOrientationPatient=[0, 1, 0, 0, 0, -1])] + files[13:],
            422,
            "inconsistent orientation",
        ),
        (
            files[:12] + [edit(mid, Rows=64, Columns=64, PixelData=bytes(64 * 64 * 2))] + files[13:],
            422,
            "inconsistent image size",
        ),
        (files[:12] + [edit(mid, ImagePositionPatient=None)] + files[13:], 422, "ImagePositionPatient"),
        ([b"not a dicom"] + files[1:], 415, "instance #1: not a DICOM"),
    ]
    tilted = [
        edit(f, ImagePositionPatient=[-44.8, -39.2 + k * 5 * np.tan(np.radians(15)), -60 + 5 * k])
        for k, f in enumerate(files)
    ]  # a 15° gantry tilt: positions shift along y slice by slice
    cases.append((tilted, 422, "gantry tilt"))
    uneven = [
        edit(f, ImagePositionPatient=[-44.8, -39.2, -60 + 5 * k + (0.4 if k > 12 else 0)])
        for k, f in enumerate(files)
    ]
    cases.append((uneven, 422, "uneven slice spacing"))
    for bad, status, text in cases:
        e = refused(bad)
        assert e.status == status and text in e.message, (text, e.status, e.message)


def test_bounds_are_checked_before_decoding(series):
    e = refused([b"\x00"] * 2000)  # 2,000 tiny "instances": refused on the count, nothing parsed
    assert e.status == 413 and "2000 instances" in e.message
    e = refused(series, ImagingLimits(max_series_bytes=100_000))
    assert e.status == 413 and "total" in e.message
    e = refused(series, ImagingLimits(max_volume_bytes=128 * 112 * 24 * 2 - 1))  # int16 voxels
    assert e.status == 413 and "24 x 112 x 128 voxels" in e.message
    e = refused(series, ImagingLimits(max_pixels=128 * 170), axis="coronal")  # the square-pixel view
    assert e.status == 413 and "square pixels" in e.message


def test_a_folder_or_a_list_of_files_is_the_same_series(volumes, series, tmp_path):
    """Training readers pass a folder (or file list) to `load_model_image`; the server passes bytes."""
    for k, data in enumerate(series):
        (tmp_path / f"IM{k:04d}").write_bytes(data)
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # skipped, as are DICOMDIR and __MACOSX
    spec = ImagingSpec(axis="sagittal", **volumes.WINDOW)
    served = decode_series(series, spec, LIMITS).pixels
    assert np.array_equal(load_model_image(tmp_path, spec).pixels, served)
    assert np.array_equal(load_model_image(sorted(tmp_path.glob("IM*")), spec).pixels, served)
    assert np.array_equal(load_model_image(list(series), spec).pixels, served)


def test_plane_geometry_of_each_view(series):
    """The view's place in patient space: an axial slice is its instance's geometry; reformats follow."""
    ds = pydicom.dcmread(io.BytesIO(by_z(series)[3]), stop_before_pixels=True)
    s = DicomSeries.load(series, LIMITS)
    axial = s.image(ImagingSpec(slice=3)).info
    floats = lambda text: [float(v) for v in text.split("\\")]  # noqa: E731
    assert floats(axial["image_orientation_patient"]) == [float(v) for v in ds.ImageOrientationPatient]
    assert np.allclose(floats(axial["image_position_patient"]), [float(v) for v in ds.ImagePositionPatient])
    assert np.allclose(floats(axial["pixel_spacing"]), [0.7, 0.7])
    coronal = s.image(ImagingSpec(axis="coronal", slice=3)).info
    assert floats(coronal["image_orientation_patient"]) == [1, 0, 0, 0, 0, -1]  # → patient's left, ↓ feet
    assert np.allclose(floats(coronal["pixel_spacing"]), [5 * 24 / 171, 0.7], atol=1e-5)
    x, y, z = floats(coronal["image_position_patient"])  # top-left: patient's right, slice 3 from the back
    assert np.isclose(x, -44.8) and np.isclose(y, -39.2 + (111 - 3) * 0.7) and z > -60 + 23 * 5
    sagittal = s.image(ImagingSpec(axis="sagittal", slice=3)).info
    assert floats(sagittal["image_orientation_patient"]) == [0, 1, 0, 0, 0, -1]  # → posterior, ↓ feet
