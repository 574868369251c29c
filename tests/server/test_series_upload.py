"""A CT series as one request: a zip or several `image` parts to /answer, /explain and /v1, any plane."""

from __future__ import annotations

import base64
import io
import os
import tempfile
import zipfile

import numpy as np
import pydicom
import pytest

from server.images import decode_image
from vital_core.imaging import ImagingLimits, ImagingSpec
from vital_core.imaging.series import decode_series


@pytest.fixture(scope="module")
def series(volumes) -> list[bytes]:
    return volumes.ct_series(seed=3)


@pytest.fixture(scope="module")
def series_zip(series) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, data in enumerate(series):
            zf.writestr(f"series/IM{k:04d}", data)
    return buf.getvalue()


def _error(r, status: int, text: str) -> None:
    assert r.status_code == status, r.text
    assert text in r.json()["error"]["message"], r.json()


def test_zip_and_parts_give_the_plane_asked_for(
    client, ask, series, series_zip, volumes, tmp_path, monkeypatch
):
    middle = sorted(series, key=lambda d: float(pydicom.dcmread(io.BytesIO(d)).ImagePositionPatient[2]))[12]
    sop = pydicom.dcmread(io.BytesIO(middle)).SOPInstanceUID
    sizes = {"axial": (128, 112, 12), "coronal": (128, 171, 56), "sagittal": (112, 171, 64)}
    files = [("image", (f"IM{k}", d, "application/dicom")) for k, d in enumerate(series)]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where anything spooled to disk would land
    for axis, (width, height, index) in sizes.items():
        want = {"format": "dicom", "width": width, "height": height, "axis": axis, "slice": index}
        want["instances"] = 24
        if axis == "axial":
            want["sop_instance_uid"] = sop  # the acquired plane: the one instance served
        r = ask(client, series_zip, axis=axis, k=0, max_new_tokens=2)
        assert r.status_code == 200, r.text
        assert r.json()["image"] == want
        parts = client.post("/answer", files=files, data={"question": "Where?", "axis": axis, "k": "0"})
        assert parts.status_code == 200, parts.text
        assert parts.json()["image"] == want
        spec = ImagingSpec(axis=axis, **volumes.WINDOW)
        served = np.asarray(decode_image(series_zip, spec=spec).image)  # what the route hands the model
        assert np.array_equal(served, decode_series(series, spec, ImagingLimits()).pixels)
        assert abs(volumes.disc_aspect(served) - 1.0) <= 0.05, axis
    assert os.listdir(tmp_path) == []  # zips are read in memory: nothing left on disk
    b64 = base64.b64encode(series_zip).decode()
    j = client.post("/answer", json={"image": b64, "question": "Where?", "axis": "coronal", "k": 0})
    assert j.status_code == 200 and j.json()["image"]["height"] == 171, j.text
    e = ask(client, series_zip, route="/explain", axis="sagittal", k=1, max_new_tokens=2)
    assert e.status_code == 200 and e.json()["image"]["axis"] == "sagittal", e.text
    v1 = client.post(
        "/v1/chat/completions",
        json={
            "model": "vital-tiny",
            "axis": "coronal",
            "max_tokens": 2,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:application/zip;base64,{b64}"}},
                        {"type": "text", "text": "Where is the lesion?"},
                    ],
                }
            ],
        },
    )
    assert v1.status_code == 200, v1.text
    assert v1.json()["vital"]["image"]["height"] == 171 and v1.json()["vital"]["image"]["axis"] == "coronal"


def test_hostile_series_requests_are_clear_4xx(client, ask, series):
    files = lambda parts: [("image", (f"IM{k}", d, "application/dicom")) for k, d in enumerate(parts)]  # noqa: E731
    mixed = [*series[:-1], pydicom.dcmread(io.BytesIO(series[-1]))]
    mixed[-1].SeriesInstanceUID = "1.2.3.4.5"
    buf = io.BytesIO()
    mixed[-1].save_as(buf)
    mixed[-1] = buf.getvalue()
    _error(client.post("/answer", files=files(mixed), data={"question": "q"}), 422, "mixed series")
    _error(
        client.post("/answer", files=files(series[:5] + series[6:]), data={"question": "q"}), 422, "missing"
    )
    _error(client.post("/answer", files=files(series + series[:1]), data={"question": "q"}), 422, "twice")
    tiny = [b"x"] * 1001  # 1,001 parts: starlette stops at the server's instance limit
    _error(client.post("/answer", files=files(tiny), data={"question": "q"}), 413, "limit is 1000")
    _error(client.post("/answer", files=files(series), data={"question": "q", "frame": "1"}), 422, "frame 1")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k in range(1200):
            zf.writestr(f"{k}.dcm", b"")
    _error(ask(client, buf.getvalue()), 413, "1200 entries")
