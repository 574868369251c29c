"""The one imaging path: orientation, windows, DICOM LUTs, rasters, limits, and every bundled test file."""

from __future__ import annotations

import gzip
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from vital_core.imaging import (
    WINDOW_PRESETS,
    ImagingError,
    ImagingLimits,
    ImagingSpec,
    NiftiVolume,
    Window,
    load_model_image,
    percentile_range,
    to_uint8,
)

LIMITS = ImagingLimits(max_pixels=10_000_000)


def decode(data: bytes, limits: ImagingLimits = LIMITS, **spec) -> np.ndarray:
    return load_model_image(data, ImagingSpec(**spec), limits).pixels


def refused(data: bytes, limits: ImagingLimits = LIMITS, **spec) -> ImagingError:
    with pytest.raises(ImagingError) as exc:
        load_model_image(data, ImagingSpec(**spec), limits)
    return exc.value


# -- volumes: a marker on the patient's left, anterior, superior -------------------------------------

SHAPE = (20, 16, 12)  # RAS voxel order: x (→ patient's right), y (→ anterior), z (→ superior)


def marker_volume() -> np.ndarray:
    vol = np.full(SHAPE, 100.0, dtype=np.float32)
    vol[1:4, 11:15, 8:11] = 1000.0  # low x = patient's LEFT, high y = anterior, high z = superior
    return vol


def stored_as(codes: str, oblique: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The marker volume stored in axis order `codes` (e.g. LPS), with an affine that says so."""
    vol = marker_volume()
    ornt = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(codes))
    arr = apply_orientation(vol, ornt)
    affine = inv_ornt_aff(ornt, vol.shape)  # stored voxel → RAS voxel (= world, 1 mm)
    if oblique:  # tilt 20° about z and 10° about x: still closest to the same axes
        a, b = np.deg2rad(20), np.deg2rad(10)
        rz = np.array(
            [[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        )
        rx = np.array(
            [[1, 0, 0, 0], [0, np.cos(b), -np.sin(b), 0], [0, np.sin(b), np.cos(b), 0], [0, 0, 0, 1]]
        )
        affine = rz @ rx @ affine
    return arr, affine


ORIENTATIONS = [("RAS", False), ("LPS", False), ("SLA", False), ("AIR", False), ("RAS", True), ("PIL", True)]


def marker_centre(img: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(img == img.max())
    return rows.mean() / img.shape[0], cols.mean() / img.shape[1]


@pytest.mark.parametrize("codes,oblique", ORIENTATIONS)
def test_marker_on_patient_left_is_on_image_right(codes, oblique):
    arr, affine = stored_as(codes, oblique)
    data = nib.Nifti1Image(arr, affine).to_bytes()
    for blob in (data, gzip.compress(data)):
        axial = decode(blob, slice=9)
        assert axial.shape == (16, 20)  # rows: y (anterior at top), columns: x (patient right on the left)
        row, col = marker_centre(axial)
        assert col > 0.75 and row < 0.25, (codes, oblique, row, col)
        coronal = decode(blob, axis="coronal", slice=12)
        assert coronal.shape == (12, 20)
        row, col = marker_centre(coronal)
        assert col > 0.75 and row < 0.25  # superior at the top
        sagittal = decode(blob, axis="sagittal", slice=2)
        assert sagittal.shape == (12, 16)
        row, col = marker_centre(sagittal)
        assert col < 0.25 and row < 0.25  # anterior on the left, superior at the top


@pytest.mark.parametrize("codes,oblique", ORIENTATIONS[:4])
def test_streamed_slice_equals_volume_slice(codes, oblique):
    """The server streams one slice; readers hold the volume: same bytes for every axis."""
    arr, affine = stored_as(codes, oblique)
    raw = np.round(arr - 1024).astype(">i2")  # big-endian int16 with a scale: HU = 2·v + 10
    img = nib.Nifti1Image(raw, affine)
    img.header.set_slope_inter(2.0, 10.0)
    data = img.to_bytes()
    vol = NiftiVolume.load(data)
    for axis in ("axial", "coronal", "sagittal"):
        for index in (0, None, vol.n_slices(axis) - 1):
            spec = ImagingSpec(axis=axis, slice=index)
            served = load_model_image(gzip.compress(data), spec, LIMITS)
            assert np.array_equal(served.pixels, vol.image(spec).pixels)
            assert served.pixels.dtype == np.uint8 and served.info["axis"] == axis


def test_nifti_4d_frames_and_errors():
    vol = np.zeros((8, 6, 4, 3), dtype=np.float32)
    vol[..., 1] = np.arange(8 * 6 * 4).reshape(8, 6, 4)
    data = nib.Nifti1Image(vol, np.eye(4)).to_bytes()
    assert decode(data, frame=0).max() == 0 and decode(data, frame=1).max() == 255
    assert np.array_equal(
        decode(data, frame=1), NiftiVolume.load(data, frame=1).image(ImagingSpec(frame=1)).pixels
    )
    e = refused(data, frame=3)
    assert e.status == 422 and "3 volume" in e.message
    e = refused(data, slice=4)
    assert e.status == 422 and "4 axial slice" in e.message
    assert refused(data[:400]).status == 400  # truncated
    rgb = np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    assert refused(nib.Nifti1Image(rgb, np.eye(4)).to_bytes()).status == 415
    pair = nib.Nifti1Pair(np.zeros((4, 4, 2), np.float32), np.eye(4))
    assert refused(pair.header.binaryblock).status == 415
    assert refused(gzip.compress(b"hello")).status == 415


def test_nifti_bombs_are_refused_before_reading():
    big = nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)).to_bytes()  # 1 MiB of zeros
    tight = ImagingLimits(max_pixels=10_000_000, max_stream_bytes=256 * 1024)
    e = refused(gzip.compress(big), tight)  # declares 1 MiB of data > 256 KiB
    assert e.status == 413 and "declares" in e.message
    assert decode(gzip.compress(big), slice=0).shape == (64, 64)  # the first slice needs little inflating


# -- windows ------------------------------------------------------------------------------------------


def test_presets_and_window_mapping():
    assert WINDOW_PRESETS["abdomen"] == (40.0, 400.0) and WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert set(WINDOW_PRESETS) == {"abdomen", "soft_tissue", "lung", "bone", "brain"}
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, np.nan]])
    assert to_uint8(hu, Window.centred("abdomen", 40, 400)).tolist() == [[0, 0, 128, 255, 0]]
    ct = np.full((8, 8), -1000.0)
    ct[2:6, 2:6] = 40.0
    assert decode_ct_like(ct) == ("abdomen", 128)  # CT without a window: the abdomen preset
    mr = np.zeros((10, 10))
    mr[1:9, 1:9] = np.linspace(100, 900, 64).reshape(8, 8)
    lo, hi = percentile_range(mr)
    assert 100 <= lo < 110 and 890 < hi <= 900  # zeros (background) ignored


def decode_ct_like(values: np.ndarray) -> tuple[str, int]:
    img = load_model_image(nib.Nifti1Image(values[..., None].astype(np.float32), np.eye(4)).to_bytes())
    return img.info["window"], int(img.pixels[3, 3])


def test_request_window_overrides():
    ct = np.full((8, 8, 1), -1000.0, np.float32)
    ct[2:6, 2:6] = -600.0
    data = nib.Nifti1Image(ct, np.eye(4)).to_bytes()
    assert decode(data)[3, 3] == 0  # abdomen: -600 HU is black
    assert decode(data, window="lung")[3, 3] == 128
    assert decode(data, window_center=-600, window_width=100)[3, 3] == 128
    assert set(np.unique(decode(data, window="percentile")).tolist()) == {0, 255}
    for bad in (
        {"window": "liver"},
        {"window_center": 40},
        {"window_center": 1, "window_width": 0},
        {"axis": "x"},
    ):
        with pytest.raises(ImagingError) as exc:
            ImagingSpec(**bad)
        assert exc.value.status == 422
    spec = ImagingSpec(axis="coronal", slice=3, window="lung")
    assert ImagingSpec.from_fields(spec.to_fields()) == spec and ImagingSpec.from_fields({}) == ImagingSpec()


# -- DICOM ---------------------------------------------------------------------------------------------


def dicom_bytes(name: str, raw: dict[str, tuple[str, bytes]] | None = None, **changes) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))  # bundled files only: others trigger a download
    for key, value in changes.items():
        setattr(ds, key, value)
    for key, (vr, value) in (raw or {}).items():  # values pydicom would refuse to set
        ds[Tag(key)] = RawDataElement(Tag(key), vr, len(value), value, 0, False, True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf)
    return buf.getvalue()


def ct_hu() -> np.ndarray:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_dicom_ct_windows():
    hu = ct_hu()
    own = decode(dicom_bytes("CT_small.dcm", WindowCenter=100, WindowWidth=300))
    assert np.array_equal(own, to_uint8(hu, Window.centred("dicom", 100, 300)))
    plain = load_model_image(dicom_bytes("CT_small.dcm"))  # no window in the file: the CT preset
    assert plain.info["window"] == "abdomen" and plain.info["modality"] == "CT"
    assert np.array_equal(plain.pixels, to_uint8(hu, Window.centred("abdomen", 40, 400)))
    lung = decode(dicom_bytes("CT_small.dcm", WindowCenter=100, WindowWidth=300), window="lung")
    assert np.array_equal(lung, to_uint8(hu, Window.centred("lung", -600, 1500)))  # the request wins
    custom = decode(dicom_bytes("CT_small.dcm"), window_center=0, window_width=1000)
    assert np.array_equal(custom, to_uint8(hu, Window.centred("custom", 0, 1000)))


def test_dicom_monochrome1_rle_multiframe_and_limits():
    plain = decode(dicom_bytes("MR_small.dcm"))
    assert np.array_equal(
        decode(dicom_bytes("MR_small.dcm", PhotometricInterpretation="MONOCHROME1")), 255 - plain
    )
    assert np.array_equal(decode(dicom_bytes("MR_small_RLE.dcm")), plain)
    raw = Path(get_testdata_file("SC_rgb_rle_2frame.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert np.array_equal(decode(raw), ds.pixel_array[0]) and np.array_equal(
        decode(raw, frame=1), ds.pixel_array[1]
    )
    e = refused(raw, frame=2)
    assert e.status == 422 and "2 frame" in e.message
    assert refused(dicom_bytes("CT_small.dcm"), ImagingLimits(max_pixels=100)).status == 413


def test_dicom_voi_lut_sequence():
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_voi_lut
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]  # 8-bit output: scaled 0..255 → 0..255
    item.add_new(0x00283006, "US", (np.arange(4096) // 16).tolist())
    ds.VOILUTSequence = Sequence([item])
    buf = io.BytesIO()
    ds.save_as(buf)
    img = load_model_image(buf.getvalue())
    assert img.info["window"] == "dicom_voi_lut"
    assert np.array_equal(img.pixels, apply_voi_lut(ds.pixel_array, ds).astype(np.uint8))
    assert load_model_image(buf.getvalue(), ImagingSpec(window="percentile")).info["window"] == "percentile"


def test_dicom_deflated_is_inflated_as_a_stream():
    path = get_testdata_file("image_dfl.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99"
    img = load_model_image(Path(path).read_bytes())
    assert img.pixels.shape == ds.pixel_array.shape
    tight = ImagingLimits(max_stream_bytes=100_000)  # its 512x512 pixels alone exceed this
    assert refused(Path(path).read_bytes(), tight).status == 413


@pytest.mark.parametrize(
    "raw,what",
    [
        ({"NumberOfFrames": ("IS", b"1A")}, "NumberOfFrames"),
        ({"WindowCenter": ("DS", b"abc "), "WindowWidth": ("DS", b"400 ")}, "WindowCenter"),
        ({"RescaleSlope": ("DS", b"x ")}, "RescaleSlope"),
    ],
)
def test_dicom_non_numeric_attributes_are_400(raw, what):
    e = refused(dicom_bytes("CT_small.dcm", raw=raw))
    assert e.status == 400 and what in e.message


def test_dicom_without_pixels_or_image_is_400():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf)
    e = refused(buf.getvalue())
    assert e.status == 400 and "pixel data" in e.message
    assert refused(Path(get_testdata_file("rtplan.dcm")).read_bytes()).status == 400
    assert refused(Path(get_testdata_file("badVR.dcm")).read_bytes()).status == 400


# -- rasters -------------------------------------------------------------------------------------------


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_rasters():
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8))
    assert np.array_equal(decode(encoded(rgb, "PNG")), np.asarray(rgb))
    assert np.array_equal(decode(encoded(rgb, "TIFF")), np.asarray(rgb))
    assert decode(encoded(rgb, "JPEG")).shape == (24, 32, 3)
    cmyk = decode(encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))  # pure red in CMYK
    assert cmyk.shape == (8, 8, 3) and cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60
    wide = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    out = decode(encoded(Image.fromarray(wide), "PNG"))
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255  # 16-bit: percentiles
    assert decode(encoded(Image.fromarray(wide), "TIFF")).max() == 255
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert np.array_equal(decode(encoded(pal, "PNG")), np.asarray(pal.convert("RGB")))
    rgba = Image.new("RGBA", (4, 4), (200, 100, 50, 0))
    rgba.putpixel((0, 0), (200, 100, 50, 255))
    out = decode(encoded(rgba, "PNG"))
    assert out[0, 0].tolist() == [200, 100, 50] and out[1, 1].tolist() == [0, 0, 0]  # alpha onto black
    la = decode(encoded(Image.new("LA", (4, 4), (200, 128)), "PNG"))
    assert la.shape == (4, 4) and la[0, 0] == 100
    frames = [Image.new("L", (6, 6), v) for v in (10, 200)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode(gif).mean() < 50  # the first frame of an animation


def declared_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data,status",
    [
        (b"", 400),
        (b"%PDF-1.4" + b"\x00" * 100, 415),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400),
        (declared_png(14000, 14000), 413),
        (declared_png(6000, 6000), 400),  # under the limits, but its 1 KiB of rows is truncated
        (b"\x1f\x8b\x08\x00garbage", 400),
    ],
)
def test_bad_rasters(data, status):
    assert refused(data, ImagingLimits()).status == status


# -- every bundled test file: decoded or refused, never anything else ----------------------------------


def bundled_files() -> list[str]:
    from nibabel.testing import data_path

    files = [p for p in get_testdata_files() if os.path.isfile(p)]
    files += [os.path.join(r, n) for r, _, names in os.walk(data_path) for n in names]
    return sorted(files)


def test_every_bundled_file_decodes_or_is_refused():
    outcomes = {"ok": 0, 400: 0, 413: 0, 415: 0, 422: 0}
    for path in bundled_files():
        data = Path(path).read_bytes()
        try:
            img = load_model_image(data, limits=ImagingLimits())
        except ImagingError as exc:
            outcomes[exc.status] += 1
            assert exc.message, path
            continue
        outcomes["ok"] += 1
        assert img.pixels.dtype == np.uint8 and img.pixels.ndim in (2, 3), path
    assert outcomes["ok"] >= 80 and outcomes[415] > 0, outcomes  # pydicom ~80 images, nibabel 8 volumes


@pytest.mark.slow
def test_dicom_header_of_millions_of_elements_is_refused():
    """300k empty private elements (3.6 MB) would keep pydicom parsing for minutes; refused at 200k."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    data = dicom_bytes("CT_small.dcm")
    f = io.BytesIO(data)
    read_preamble(f, False)
    _read_file_meta_info(f)
    junk = b"".join(
        b"\x09\x00" + (0x1000 + i % 0xEFFF).to_bytes(2, "little") + b"UN\x00\x00\x00\x00\x00\x00"
        for i in range(300_000)
    )
    e = refused(data[: f.tell()] + junk + data[f.tell() :])
    assert e.status == 413 and "too many elements" in e.message
