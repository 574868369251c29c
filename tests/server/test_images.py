"""The server's image adapter and HTTP errors: 4xx for every bad file, bounded memory for hostile ones."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from server.errors import APIError
from server.images import decode_image, sniff
from server.logs import request_id_var
from vital_core.imaging import ImagingSpec, NiftiVolume

REPO = Path(__file__).resolve().parents[2]


def test_adapter_maps_refusals_to_statuses(encode_image):
    d = decode_image(encode_image(1, (96, 128), "PNG"), max_pixels=10_000_000)
    assert d.format == "png" and (d.width, d.height) == (128, 96) and d.image.mode in ("L", "RGB")
    ct = decode_image(Path(get_testdata_file("CT_small.dcm")).read_bytes(), spec=ImagingSpec(window="bone"))
    assert ct.format == "dicom" and ct.image.mode == "L" and ct.info["window"] == "bone"
    for data, kw, status, code in [
        (b"", {}, 400, "unreadable_image"),
        (b"%PDF-1.4 nothing", {}, 415, "unsupported_image"),
        (Path(get_testdata_file("CT_small.dcm")).read_bytes(), {"max_pixels": 100}, 413, "image_too_large"),
        (Path(get_testdata_file("SC_rgb_rle_2frame.dcm")).read_bytes(), {"frame": 2}, 422, "invalid_request"),
    ]:
        with pytest.raises(APIError) as exc:
            decode_image(data, **kw)
        assert (exc.value.status, exc.value.code) == (status, code) and exc.value.message
    assert sniff(b"\xff\xd8\xff\xe0") == "jpeg" and sniff(b"nothing") is None


# -- through HTTP --------------------------------------------------------------------------------------


def check_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers.get("x-request-id") and set(r.json()["error"]) == {"code", "message"}
    return r.json()["error"]


SAMPLE_FILES = [
    ("pydicom", "CT_small.dcm", 200),
    ("pydicom", "MR_small_RLE.dcm", 200),
    ("pydicom", "image_dfl.dcm", 200),  # deflated transfer syntax
    ("pydicom", "badVR.dcm", 400),  # NumberOfFrames '1A'
    ("pydicom", "rtplan.dcm", 400),  # no image
    ("pydicom", "JPEG-lossy.dcm", 415),  # no handler installed for this syntax
    ("pydicom", "zipMR.gz", 415),
    ("nibabel", "example4d.nii.gz", 200),
    ("nibabel", "example_nifti2.nii.gz", 200),
    ("nibabel", "nifti1.hdr", 415),
]


@pytest.mark.parametrize("source,name,status", SAMPLE_FILES)
def test_bundled_files_over_http(client, ask, source, name, status):
    from nibabel.testing import data_path

    path = get_testdata_file(name) if source == "pydicom" else os.path.join(data_path, name)
    r = ask(client, Path(path).read_bytes())
    if status == 200:
        assert r.status_code == 200, r.text
        assert r.json()["image"]["format"] in ("dicom", "nifti")
    else:
        check_error(r, status)


def test_imaging_fields_over_http(client, ask):
    vol = np.zeros((12, 10, 6), np.float32)
    vol[1:3, 7:9, :] = 500.0
    data = nib.Nifti1Image(vol, np.diag([-1.0, -1.0, 1.0, 1.0])).to_bytes()  # LPS storage
    r = ask(client, data, axis="coronal", slice=8, window="bone", k=0)
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"format": "nifti", "width": 12, "height": 6, "axis": "coronal", "slice": 8}
    for fields, status in [
        ({"axis": "oblique"}, 422),
        ({"window": "liver"}, 422),
        ({"window_center": 40}, 422),
        ({"window_width": -1, "window_center": 0}, 422),
        ({"slice": 12}, 422),
    ]:
        check_error(ask(client, data, **fields), status)


def test_anisotropic_nifti_is_served_with_square_pixels(client, ask, volumes):
    """0.7 x 0.7 mm pixels, 5 mm slices: every plane is served round, the same pixels as the readers'."""
    data = volumes.stored_nifti("LPS")
    reader = NiftiVolume.load(data)
    sizes = {"axial": (128, 112), "coronal": (128, 171), "sagittal": (112, 171)}  # width, height
    for axis, (width, height) in sizes.items():
        r = ask(client, data, axis=axis, k=0, max_new_tokens=2, **volumes.WINDOW)
        assert r.status_code == 200, r.text
        middle = {"axial": 12, "coronal": 56, "sagittal": 64}[axis]
        assert r.json()["image"] == {
            "format": "nifti",
            "width": width,
            "height": height,
            "axis": axis,
            "slice": middle,
        }
        spec = ImagingSpec(axis=axis, **volumes.WINDOW)
        served = np.asarray(decode_image(data, spec=spec).image)  # what the route hands the model
        assert np.array_equal(served, reader.image(spec).pixels)
        assert abs(volumes.disc_aspect(served) - 1.0) <= 0.05, axis
    tight = ask(
        client,
        nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.diag([0.01, 0.01, 50, 1])).to_bytes(),
        axis="coronal",
    )
    assert check_error(tight, 413)["code"] == "image_too_large"  # 320,000 x 64 once square: refused


def test_json_limits_and_base64(client, encode_image):
    png = encode_image(2, (32, 32), "PNG")
    wrapped = base64.encodebytes(png).decode()  # 76-character lines, what `base64` prints
    assert "\n" in wrapped
    r = client.post("/answer", json={"image": wrapped, "question": "Where is the liver?", "k": 0})
    assert r.status_code == 200, r.text
    deep = b'{"image": "x", "question": "q", "k": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    check_error(client.post("/answer", content=deep, headers={"content-type": "application/json"}), 400)
    digits = b'{"image": "eA==", "question": "q", "k": ' + b"7" * 5000 + b"}"
    check_error(client.post("/answer", content=digits, headers={"content-type": "application/json"}), 400)
    huge = b'{"image": "eA==", "question": "q", "k": 1e5000}'
    check_error(client.post("/answer", content=huge, headers={"content-type": "application/json"}), 422)
    form = {"question": "q", "k": "7" * 5000}
    check_error(client.post("/answer", files={"image": ("i", png)}, data=form), 422)
    check_error(client.post("/answer", json={"image": "not base64!", "question": "q"}), 400)


def test_unexpected_errors_carry_the_request_id(client, ask, monkeypatch, encode_image):
    seen: list[tuple[str, str]] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), request_id_var.get()))

    def boom(*args, **kwargs):
        raise RuntimeError("a bug, not the client's fault")

    handler = Grab()
    logging.getLogger("vital.server").addHandler(handler)
    monkeypatch.setattr("server.routes.decode_image", boom)
    try:
        r = client.post(
            "/answer",
            files={"image": ("i", encode_image(1, (8, 8), "PNG"))},
            data={"question": "q"},
            headers={"x-request-id": "trace-500"},
        )
    finally:
        logging.getLogger("vital.server").removeHandler(handler)
    err = check_error(r, 500)
    assert r.headers["x-request-id"] == "trace-500" and "trace-500" in err["message"]
    assert ("unhandled error", "trace-500") in seen


# -- hostile files: 4xx (or a small image) with bounded memory ----------------------------------------

HOSTILE = r"""
import gc, io, json, sys, zlib
import numpy as np
from PIL import Image
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, generate_uid
from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, load_model_image

limits = ImagingLimits(**json.loads(sys.argv[1]))  # the server's default limits, from the test

def status_of(kb):
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmRSS", "VmHWM"))}

def header(rows, cols, frames, bits=16, syntax=ExplicitVRLittleEndian):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.7", generate_uid(), "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.SamplesPerPixel = rows, cols, frames, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", bits, bits, bits - 1
    ds.PixelRepresentation = 0
    return ds

def part10(ds, body):
    fp = DicomBytesIO(); fp.is_little_endian, fp.is_implicit_VR = True, False
    fp.write(b"\0" * 128 + b"DICM"); write_file_meta_info(fp, ds.file_meta)
    return fp.getvalue() + body

def dataset_bytes(ds):
    fp = DicomBytesIO(); fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds); return fp.getvalue()

def deflated(ds, tail_parts):
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    out = [c.compress(dataset_bytes(ds))]
    for part, count in tail_parts:
        for _ in range(count):
            out.append(c.compress(part))
    out.append(c.flush())
    return part10(ds, b"".join(out))

def element(group, elem, vr, length):
    tag = group.to_bytes(2, "little") + elem.to_bytes(2, "little") + vr
    if vr in (b"OB", b"OW", b"UN", b"SQ"):
        return tag + b"\0\0" + length.to_bytes(4, "little")
    return tag + length.to_bytes(2, "little")

MIB = 1 << 20
zeros = bytes(MIB)
cases = {}
# deflated: declares 2 GB of frames / hides 520 MiB in a private element before 64x64 pixels
ds = header(512, 512, 4000, syntax=DeflatedExplicitVRLittleEndian)
cases["deflated_declares_2GB"] = deflated(ds, [(element(0x7FE0, 0x10, b"OW", 0xFFFFFFF0), 1), (zeros, 4)])
ds = header(64, 64, 1, syntax=DeflatedExplicitVRLittleEndian)
body = [(element(0x0009, 0x0010, b"LO", 4) + b"ACME", 1), (element(0x0009, 0x1010, b"OB", 520 * MIB), 1),
        (zeros, 520), (element(0x7FE0, 0x10, b"OW", 64 * 64 * 2) + bytes(64 * 64 * 2), 1)]
cases["deflated_520MiB_bomb"] = deflated(ds, body)
# RLE: 400 frames of 512x512 (3.3 MB, 210 MB decoded: one frame is decoded) / the same declaring 3000
seg = b"\x81\x00" * (512 * 512 // 128)
frame = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (64 + len(seg)).to_bytes(4, "little") + bytes(52)
frame += seg + seg
for n, name in ((400, "rle_400_frames_last"), (3000, "rle_declares_3000_frames")):
    ds = header(512, 512, n, syntax=RLELossless)
    ds.PixelData = encapsulate([frame] * 400)
    ds["PixelData"].VR = "OB"
    cases[name] = part10(ds, dataset_bytes(ds))
for mode, name in (("RGB", "png_6000x6000_rgb"), ("L", "png_6000x6000_grey")):
    buf = io.BytesIO(); Image.new(mode, (6000, 6000)).save(buf, format="PNG"); cases[name] = buf.getvalue()
import nibabel as nib
hdr = nib.Nifti1Header(); hdr.set_data_shape((512, 512, 2000)); hdr.set_data_dtype(np.float32)
import gzip
cases["nifti_gz_declares_2GB"] = gzip.compress(hdr.binaryblock + bytes(4) + bytes(MIB))
hdr.set_data_shape((400, 400, 400)); hdr.set_data_dtype(np.int16)
c = zlib.compressobj(1, zlib.DEFLATED, 31); parts = [c.compress(hdr.binaryblock + bytes(4))]
parts += [c.compress(zeros) for _ in range(123)] + [c.flush()]
cases["nifti_gz_128MiB_last_slice"] = b"".join(parts)
# zips of a series: a member of 512 MiB of zeros declared as 1 KiB (a bomb that lies), the same declaring
# 3 GB per member (refused from the central directory), 2,000 instances of 1 x 1 pixels
import struct, zipfile
def sized(data, size):
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = 0
        while (at := out.find(sig, at)) >= 0:
            struct.pack_into("<I", out, at + off, size); at += 4
    return bytes(out)
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    with zf.open("a.dcm", "w") as f:
        for _ in range(512):
            f.write(zeros)
    zf.writestr("b.dcm", b"x")
cases["zip_bomb_512MiB_declared_1KiB"] = sized(buf.getvalue(), 1024)
cases["zip_declares_6GB"] = sized(buf.getvalue(), 3_000_000_000)
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
    for k in range(2000):
        ds = header(1, 1, 1); ds.PixelData = b"\0\0"
        zf.writestr(f"{k}.dcm", part10(ds, dataset_bytes(ds)))
cases["zip_2000_instances_1x1"] = buf.getvalue()

for name in sys.argv[2:]:
    data = cases[name]
    spec = ImagingSpec(frame=399) if name.startswith("rle_400") else ImagingSpec(slice=399) if "last_slice" in name else ImagingSpec()
    gc.collect()
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (VmHWM)
    before = status_of(0)["VmRSS"]
    try:
        out = load_model_image(data, spec, limits).to_pil()  # what server.images.decode_image does
        status, detail = 200, f"{out.mode} {out.width}x{out.height}"
    except ImagingError as exc:
        status, detail = exc.status, exc.message
    peak = status_of(0)["VmHWM"]
    print(json.dumps({"case": name, "bytes": len(data), "status": status, "detail": detail[:120],
                      "peak_growth_mb": round((peak - before) / 1024, 1)}), flush=True)
"""

HOSTILE_CASES = {
    "deflated_declares_2GB": 413,
    "deflated_520MiB_bomb": 413,
    "rle_declares_3000_frames": 413,
    "rle_400_frames_last": 200,  # legitimate size: only the asked-for frame is decoded
    "png_6000x6000_rgb": 413,
    "png_6000x6000_grey": 200,
    "nifti_gz_declares_2GB": 413,
    "nifti_gz_128MiB_last_slice": 200,  # streamed to the slice, never held
    "zip_bomb_512MiB_declared_1KiB": 400,  # inflated only to the declared size: the CRC fails
    "zip_declares_6GB": 413,  # declared sizes summed before anything is inflated
    "zip_2000_instances_1x1": 413,  # the entry count, before the directory is parsed
}


@pytest.mark.slow
def test_hostile_files_are_refused_with_bounded_memory():
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pytest.skip("cannot reset the peak-RSS mark here (/proc/self/clear_refs not writable)")
    from server.images import limits_from
    from server.settings import Settings

    limits = json.dumps(vars(limits_from(Settings())))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", HOSTILE, limits, *HOSTILE_CASES],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["case"] for r in rows] == list(HOSTILE_CASES)
    for r in rows:
        assert r["status"] == HOSTILE_CASES[r["case"]], r
        assert r["peak_growth_mb"] < 200, r
    assert max(r["bytes"] for r in rows) < 32 * 1024 * 1024  # every case fits the default body limit
