"""Image decoding: formats by magic bytes, DICOM LUT pipeline, NIfTI slices, size checks first."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from server.errors import APIError
from server.images import decode_image, sniff, to_uint8

LIMIT = 10_000_000


def dicom_bytes(name: str, **changes) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))  # bundled files only: others trigger a download
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_png_and_jpeg(encode_image):
    for fmt, kind in (("PNG", "png"), ("JPEG", "jpeg")):
        d = decode_image(encode_image(1, (96, 128), fmt), max_pixels=LIMIT)
        assert d.format == kind and (d.width, d.height) == (128, 96) and d.image.mode == "RGB"


def test_sixteen_bit_png_is_scaled():
    from PIL import Image

    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    out = np.asarray(decode_image(buf.getvalue(), max_pixels=LIMIT).image)
    assert out.min() == 0 and out.max() == 255


def test_dicom_ct_uses_modality_lut_and_window():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    data = dicom_bytes("CT_small.dcm", WindowCenter=40, WindowWidth=400)
    img = np.asarray(decode_image(data, max_pixels=LIMIT).image)[..., 0]
    expect = to_uint8(hu, 40 - 200, 40 + 200)
    assert np.array_equal(img, expect)
    assert decode_image(data, max_pixels=LIMIT).format == "dicom"


def test_dicom_monochrome1_is_inverted():
    plain = np.asarray(decode_image(dicom_bytes("MR_small.dcm"), max_pixels=LIMIT).image)
    inverted = np.asarray(
        decode_image(
            dicom_bytes("MR_small.dcm", PhotometricInterpretation="MONOCHROME1"), max_pixels=LIMIT
        ).image
    )
    assert np.array_equal(inverted, 255 - plain)


def test_dicom_compressed_rgb_and_multiframe():
    rle = decode_image(dicom_bytes("MR_small_RLE.dcm"), max_pixels=LIMIT)
    plain = decode_image(dicom_bytes("MR_small.dcm"), max_pixels=LIMIT)
    assert np.array_equal(np.asarray(rle.image), np.asarray(plain.image))  # RLE Lossless decodes identically
    raw = Path(get_testdata_file("SC_rgb_rle_2frame.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    f0 = np.asarray(decode_image(raw, max_pixels=LIMIT).image)
    f1 = np.asarray(decode_image(raw, max_pixels=LIMIT, frame=1).image)
    assert np.array_equal(f0, ds.pixel_array[0]) and np.array_equal(f1, ds.pixel_array[1])
    with pytest.raises(APIError) as exc:
        decode_image(raw, max_pixels=LIMIT, frame=2)
    assert exc.value.status == 422 and "2 frame" in exc.value.message


def test_dicom_pixel_limit_checked_before_decoding():
    with pytest.raises(APIError) as exc:
        decode_image(dicom_bytes("CT_small.dcm"), max_pixels=100)
    assert exc.value.status == 413


def nifti_bytes(shape=(40, 30, 5)) -> bytes:
    vol = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return nib.Nifti1Image(vol, np.eye(4)).to_bytes()


def test_nifti_slices_and_gzip():
    data = nifti_bytes()
    mid = decode_image(data, max_pixels=LIMIT)
    assert mid.format == "nifti" and (mid.width, mid.height) == (40, 30)  # rot90 of (x=40, y=30)
    s0 = decode_image(data, max_pixels=LIMIT, slice_index=0)
    gz = decode_image(gzip.compress(data), max_pixels=LIMIT, slice_index=0)
    assert np.array_equal(np.asarray(s0.image), np.asarray(gz.image))
    with pytest.raises(APIError) as exc:
        decode_image(data, max_pixels=LIMIT, slice_index=5)
    assert exc.value.status == 422 and "5 slice" in exc.value.message


def declared_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data,status",
    [
        (b"", 400),
        (b"GIF89a" + b"\x00" * 100, 415),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400),
        (declared_png(14000, 14000), 413),
        (gzip.compress(b"hello"), 415),
        (b"\x1f\x8b\x08\x00garbage", 400),
    ],
)
def test_bad_images(data, status):
    with pytest.raises(APIError) as exc:
        decode_image(data, max_pixels=LIMIT)
    assert exc.value.status == status and exc.value.message


def test_sniff():
    assert sniff(b"\xff\xd8\xff\xe0") == "jpeg" and sniff(b"nothing") is None
