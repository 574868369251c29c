"""A zip of DICOM instances: read in memory, every size checked before inflating, bombs refused."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, load_model_image
from vital_core.imaging.archive import declared_entries, read_zip
from vital_core.imaging.series import decode_series

LIMITS = ImagingLimits(max_pixels=10_000_000)


def zipped(members: list[tuple[str, bytes]], method=zipfile.ZIP_DEFLATED, zip64: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method, allowZip64=True) as zf:
        for name, data in members:
            with zf.open(name, "w", force_zip64=zip64) as f:
                f.write(data)
    return buf.getvalue()


def lie_about_size(data: bytes, size: int) -> bytes:
    """Patch every local and central header's uncompressed size (a bomb that declares little)."""
    out = bytearray(data)
    at = 0
    while (at := out.find(b"PK\x03\x04", at)) >= 0:
        struct.pack_into("<I", out, at + 22, size)
        at += 4
    at = 0
    while (at := out.find(b"PK\x01\x02", at)) >= 0:
        struct.pack_into("<I", out, at + 24, size)
        at += 4
    return bytes(out)


@pytest.fixture(scope="module")
def series(volumes) -> list[bytes]:
    return volumes.ct_series()


def test_zip_of_a_series_is_the_series(volumes, series):
    members = [(f"CT/{k:03d}.dcm", d) for k, d in enumerate(series)]
    members += [("CT/", b""), ("__MACOSX/CT/._000.dcm", b"junk"), ("CT/.DS_Store", b"x"), ("DICOMDIR", b"x")]
    data = zipped([m for m in members if not m[0].endswith("/")])
    spec = ImagingSpec(axis="coronal", **volumes.WINDOW)
    img = load_model_image(data, spec, LIMITS)  # the bytes path: what the server calls
    assert np.array_equal(img.pixels, decode_series(series, spec, LIMITS).pixels)
    assert img.pixels.shape == (171, 128) and img.info["instances"] == "24"
    stored = zipped([(f"{k}.dcm", d) for k, d in enumerate(series)], zipfile.ZIP_STORED, zip64=True)
    assert declared_entries(stored) == 24
    assert np.array_equal(load_model_image(stored, spec, LIMITS).pixels, img.pixels)
    one = load_model_image(zipped([("a.dcm", series[0])]), ImagingSpec(), LIMITS)  # one file: decoded alone
    assert one.format == "dicom" and one.pixels.shape == (112, 128)


def test_zip_bombs_and_bounds_are_refused_before_inflating(series):
    many = zipped([(f"{k}", b"") for k in range(2000)], zipfile.ZIP_STORED)  # 2,000 entries: directory unread
    e = pytest.raises(ImagingError, read_zip, many, LIMITS).value
    assert e.status == 413 and "2000 entries" in e.message
    big = lie_about_size(zipped([("a.dcm", series[0]), ("b.dcm", series[1])]), 4_000_000_000)
    e = pytest.raises(ImagingError, read_zip, big, LIMITS).value  # declares 8 GB: refused from the directory
    assert e.status == 413 and "8000000000 bytes" in e.message
    tight = ImagingLimits(max_instances=10)
    whole = zipped([(f"{k}", d) for k, d in enumerate(series)])
    e = pytest.raises(ImagingError, load_model_image, whole, None, tight).value
    assert e.status == 413 and "24 files" in e.message
    # a bomb that lies: 64 MB of zeros declared as 1 KB. zipfile stops at the declared size; CRC fails.
    bomb = lie_about_size(zipped([("a.dcm", bytes(64 * 1024 * 1024))]), 1024)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        e = pytest.raises(ImagingError, read_zip, bomb, LIMITS).value
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert e.status == 400 and "a.dcm" in e.message
    assert peak < 8 * 1024 * 1024, peak  # never inflated beyond the declared size (plus zlib's window)
    for bad, status in [
        (b"PK\x03\x04" + bytes(40), 400),
        (zipped([("x.txt", b"hello"), ("y.txt", b"hi")]), 415),
    ]:
        with pytest.raises(ImagingError) as exc:
            load_model_image(bad, ImagingSpec(), LIMITS)
        assert exc.value.status == status, exc.value.message
