"""PACS integration against a real Orthanc (Debian's orthanc + orthanc-dicomweb): ask by UID, store as DICOM.

Orthanc runs on a free loopback port with a temporary storage directory. A Lua script makes it refuse
STOW-RS into one study (HTTP 403) and silently drop results sent to another, so refusals are real.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
AUTH = ("vital", "pacs-secret")  # Orthanc's HTTP basic user for these tests
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
Q = "Where is the liver?"
MULTIFRAME = "SC_rgb_rle_2frame.dcm"  # RLE, 2 frames: retrieved as stored and decoded like an upload


def _need_orthanc() -> tuple[str, str]:
    plugin = next((str(p) for d in PLUGIN_DIRS for p in sorted(Path(d).glob("libOrthancDicomWeb.so*"))), None)
    if os.access(ORTHANC, os.X_OK) and plugin:
        return ORTHANC, plugin
    msg = "Orthanc with its DICOMweb plugin is not installed (Debian packages orthanc, orthanc-dicomweb)"
    if os.environ.get("CI"):
        pytest.fail(f"{msg}: `make test` installs them (target test-deps)")
    pytest.skip(f"{msg}; `make test-deps` installs them")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _dropped_copy() -> pydicom.Dataset:
    """CT_small in a study of its own: Orthanc keeps it but drops anything VITAL stores there."""
    ds = _dataset("CT_small.dcm")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


class Orthanc:
    """One Orthanc process: start, stop, upload."""

    def __init__(self, tmp: Path, refuse_study: str, drop_study: str):
        self.binary, plugin = _need_orthanc()
        self.port, self.tmp = _free_port(), tmp
        lua = tmp / "filters.lua"
        lua.write_text(
            "function IncomingHttpRequestFilter(method, uri, ip, username, headers)\n"
            f"  return not (method == 'POST' and string.find(uri, '{refuse_study}', 1, true) ~= nil)\n"
            "end\n"
            "function ReceivedInstanceFilter(dicom, origin, info)\n"
            f"  return not (dicom.StudyInstanceUID == '{drop_study}' and dicom.Modality ~= 'CT')\n"
            "end\n"
        )
        self.config = tmp / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "VITAL-test",
                    "StorageDirectory": str(tmp / "db"),
                    "IndexDirectory": str(tmp / "db"),
                    "HttpPort": self.port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": True,
                    "RegisteredUsers": dict([AUTH]),
                    "DicomServerEnabled": False,
                    "DicomPort": _free_port(),
                    "HttpCompressionEnabled": False,
                    "Plugins": [plugin],
                    "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                    "LuaScripts": [str(lua)],
                }
            )
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.tmp / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/system", auth=AUTH, timeout=1).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.05)
            if self.proc.poll() is not None:
                break
        raise RuntimeError(f"Orthanc did not start; see {self.tmp / 'orthanc.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def upload(self, ds: pydicom.Dataset) -> None:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        requests.post(f"{self.url}/instances", data=buf.getvalue(), auth=AUTH, timeout=10).raise_for_status()


@pytest.fixture(scope="module")
def dropped():
    return _dropped_copy()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, dropped):
    server = Orthanc(
        tmp_path_factory.mktemp("orthanc"),
        _dataset("MR_small.dcm").StudyInstanceUID,
        dropped.StudyInstanceUID,
    )
    server.start()
    try:
        for ds in (_dataset("CT_small.dcm"), _dataset("MR_small.dcm"), _dataset(MULTIFRAME), dropped):
            server.upload(ds)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pacs_client(orthanc, tiny_bundle, wait_ready):
    from server import Settings, create_app

    settings = Settings(
        bundle=tiny_bundle,
        dicomweb_url=f"{orthanc.url}/dicom-web",
        dicomweb_timeout_s=20,
        dicomweb_username=AUTH[0],
        dicomweb_password=AUTH[1],
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def _ref(ds: pydicom.Dataset, **extra) -> dict:
    return {
        "study": ds.StudyInstanceUID,
        "series": ds.SeriesInstanceUID,
        "instance": ds.SOPInstanceUID,
        **extra,
    }


def _err(r, status: int, code: str, text: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert text is None or text in body["error"]["message"], body


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_answer_by_uid_equals_uploading_the_file(pacs_client, ask, name):
    ds = _dataset(name)
    by_bytes = ask(pacs_client, Path(get_testdata_file(name)).read_bytes(), Q, k=2, max_new_tokens=4)
    by_json = pacs_client.post(
        "/answer", json={"dicomweb": _ref(ds), "question": Q, "k": 2, "max_new_tokens": 4}
    )
    by_form = pacs_client.post(
        "/answer",
        files={"dicomweb": (None, json.dumps(_ref(ds)))},
        data={"question": Q, "k": "2", "max_new_tokens": "4"},
    )
    assert by_bytes.status_code == by_json.status_code == by_form.status_code == 200, (
        by_json.text,
        by_form.text,
    )
    assert by_json.json()["answer"] == by_form.json()["answer"] == by_bytes.json()["answer"]
    assert by_json.json()["image"] == {"format": "dicom", "width": ds.Columns, "height": ds.Rows}


def test_frame_is_numbered_from_one_as_in_dicom(pacs_client, ask):
    ds, raw = _dataset(MULTIFRAME), Path(get_testdata_file(MULTIFRAME)).read_bytes()
    for frame in (1, 2):
        by_uid = pacs_client.post(
            "/answer", json={"dicomweb": _ref(ds, frame=frame), "question": Q, "k": 1, "max_new_tokens": 4}
        )
        by_file = ask(pacs_client, raw, Q, frame=frame - 1, k=1, max_new_tokens=4)
        assert by_uid.status_code == by_file.status_code == 200, by_uid.text
        assert by_uid.json()["answer"] == by_file.json()["answer"]
    _err(
        pacs_client.post("/answer", json={"dicomweb": _ref(ds, frame=2), "question": Q, "frame": 1}),
        422,
        "invalid_request",
        "give it once",
    )


def test_openai_route_takes_a_dicomweb_reference(pacs_client):
    """/v1/chat/completions resolves a `dicomweb` reference (a content part or an extra body field) as /answer."""
    ds = _dataset(MULTIFRAME)
    chat = {"model": pacs_client.get("/v1/models").json()["data"][0]["id"], "k": 1, "max_tokens": 4}
    text = {"type": "text", "text": Q}
    for frame in (1, 2):
        ref = _ref(ds, frame=frame)
        by_answer = pacs_client.post(
            "/answer", json={"dicomweb": ref, "question": Q, "k": 1, "max_new_tokens": 4}
        )
        part = {"type": "dicomweb", "dicomweb": ref}
        by_part = pacs_client.post(
            "/v1/chat/completions", json={**chat, "messages": [{"role": "user", "content": [part, text]}]}
        )
        by_field = pacs_client.post(
            "/v1/chat/completions",
            json={**chat, "dicomweb": ref, "stream": True, "messages": [{"role": "user", "content": Q}]},
        )
        assert by_answer.status_code == by_part.status_code == by_field.status_code == 200, by_part.text
        assert by_part.json()["choices"][0]["message"]["content"] == by_answer.json()["answer"]
        assert by_part.json()["vital"]["image"] == by_answer.json()["image"]
        events = [json.loads(line[6:]) for line in by_field.text.splitlines() if line.startswith("data: {")]
        streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
        assert streamed == by_answer.json()["answer"]
    both = pacs_client.post(
        "/v1/chat/completions",
        json={
            **chat,
            "dicomweb": _ref(ds),
            "messages": [{"role": "user", "content": [{"type": "dicomweb", "dicomweb": _ref(ds)}, text]}],
        },
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "messages", both.text
    twice = pacs_client.post(
        "/v1/chat/completions",
        json={
            **chat,
            "dicomweb": _ref(ds, frame=2),
            "frame": 1,
            "messages": [{"role": "user", "content": Q}],
        },
    )
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "frame", twice.text
    missing = pacs_client.post(
        "/v1/chat/completions",
        json={
            **chat,
            "messages": [{"role": "user", "content": Q}],
            "dicomweb": {**_ref(ds), "instance": "1.2.3.4"},
        },
    )
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error", missing.text


def test_explain_stores_sr_and_heatmaps_in_the_study(pacs_client, orthanc):
    from dicomweb_client import DICOMwebClient

    from server.dicom_results import EMPTY
    from server.images import decode_image

    src = _dataset("CT_small.dcm")
    r = pacs_client.post(
        "/explain", json={"dicomweb": _ref(src), "question": Q, "k": 2, "max_new_tokens": 4, "store": True}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    stored = body["stored"]
    assert stored["study_instance_uid"] == src.StudyInstanceUID
    kinds = [(i["kind"], i["step"]) for i in stored["instances"]]
    assert kinds == [("sr", None), ("heatmap", 1), ("heatmap", 2), ("seg", None)]
    session = requests.Session()
    session.auth = AUTH
    wado = DICOMwebClient(f"{orthanc.url}/dicom-web", session=session)
    got = {
        i["sop_instance_uid"]: wado.retrieve_instance(
            src.StudyInstanceUID, i["series_instance_uid"], i["sop_instance_uid"]
        )
        for i in stored["instances"]
    }
    sr = got[stored["instances"][0]["sop_instance_uid"]]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.Modality == "SR"  # Comprehensive SR
    assert (sr.StudyInstanceUID, sr.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert sr.SeriesInstanceUID not in (src.SeriesInstanceUID,) and sr.Manufacturer == "VITAL"
    assert sr.ManufacturerModelName == body["model"] and "vital" in str(sr.SoftwareVersions)
    texts = _texts(sr)
    said = [body["answer"], *(s["sentence"] for s in body["steps"])]
    assert Q in texts and all((t or EMPTY) in texts for t in said), (texts, said)
    refs = _image_refs(sr)
    assert src.SOPInstanceUID in refs and {i["sop_instance_uid"] for i in stored["instances"][1:]} <= refs
    evidence = {
        it.ReferencedSOPInstanceUID
        for st in sr.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for it in se.ReferencedSOPSequence
    }
    assert src.SOPInstanceUID in evidence
    assert 2 in [n.MeasuredValueSequence[0].NumericValue for n in _items(sr) if n.ValueType == "NUM"]
    for info in stored["instances"][1:3]:
        sc = got[info["sop_instance_uid"]]
        assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.Manufacturer == "VITAL"
        assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != sr.SeriesInstanceUID
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        pixels = sc.pixel_array  # (H, W, 3) uint8: the heatmap decodes
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 0
        buf = io.BytesIO()
        sc.save_as(buf, enforce_file_format=True)
        assert decode_image(buf.getvalue(), max_pixels=10**7).format == "dicom"
    _check_seg(got[stored["instances"][3]["sop_instance_uid"]], src, body, wado)


def _check_seg(seg: pydicom.Dataset, src: pydicom.Dataset, body: dict, wado) -> None:
    """The step-region SEG: re-read by highdicom and pydicom, one segment per step, found by QIDO, and its
    frames are /explain's masks on the source's own pixels."""
    import highdicom as hd
    import numpy as np
    from pycocotools import mask as coco_mask

    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    raw = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert raw.SegmentationType == "BINARY" and raw.StudyInstanceUID == src.StudyInstanceUID
    assert raw.FrameOfReferenceUID == src.FrameOfReferenceUID  # the source's geometry, copied
    assert [
        float(v) for v in raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    ] == [float(v) for v in src.PixelSpacing]
    back = hd.seg.segread(io.BytesIO(buf.getvalue()))
    assert back.number_of_segments == len(body["steps"]) == 2
    assert [back.get_segment_description(n).segment_label for n in (1, 2)] == [
        "latent step 1",
        "latent step 2",
    ]
    arr = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=[1, 2], ignore_spatial_locations=True
    )  # (1, H, W, 2)
    assert arr.shape == (1, src.Rows, src.Columns, 2)
    for i, step in enumerate(body["steps"]):
        m = coco_mask.decode({"size": step["mask"]["size"], "counts": step["mask"]["counts"].encode()})
        assert m.any() and np.array_equal(arr[0, :, :, i], m)
    found = wado.search_for_instances(
        study_instance_uid=src.StudyInstanceUID, search_filters={"Modality": "SEG"}
    )
    assert seg.SOPInstanceUID in {r["00080018"]["Value"][0] for r in found}


def _items(ds: pydicom.Dataset) -> list:
    out = []
    for it in ds.get("ContentSequence", []):
        out += [it, *_items(it)]
    return out


def _texts(sr: pydicom.Dataset) -> set[str]:
    return {str(it.TextValue) for it in _items(sr) if it.ValueType == "TEXT"}


def _image_refs(sr: pydicom.Dataset) -> set[str]:
    return {
        it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for it in _items(sr) if it.ValueType == "IMAGE"
    }


def test_bad_references(pacs_client):
    ct = _dataset("CT_small.dcm")
    unknown = _ref(ct, instance="1.2.826.0.1.3680043.8.498.1")
    _err(pacs_client.post("/answer", json={"dicomweb": unknown, "question": Q}), 404, "dicomweb_not_found")
    for bad in (
        {**_ref(ct), "study": "1.2.03"},
        {**_ref(ct), "series": "1.2.x"},
        {**_ref(ct), "instance": "9" * 65},
        {**_ref(ct), "url": "http://evil.example/"},
        {"study": ct.StudyInstanceUID},
    ):
        _err(pacs_client.post("/answer", json={"dicomweb": bad, "question": Q}), 422, "invalid_request")
    _err(
        pacs_client.post("/answer", json={"dicomweb": _ref(ct, frame=2), "question": Q}),
        422,
        "invalid_request",
        "frame 1 out of range",
    )
    _err(
        pacs_client.post("/answer", files={"dicomweb": (None, "{not json")}, data={"question": Q}),
        422,
        "invalid_request",
        "dicomweb",
    )
    _err(
        pacs_client.post("/answer", json={"dicomweb": _ref(ct), "image": "aGk=", "question": Q}),
        422,
        "invalid_request",
        "exactly one",
    )
    _err(
        pacs_client.post("/answer", json={"dicomweb": _ref(ct), "question": Q, "store": True}),
        422,
        "invalid_request",
        "only /explain",
    )
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    _err(
        pacs_client.post("/explain", files={"image": ("a", data)}, data={"question": Q, "store": "true"}),
        422,
        "invalid_request",
        "needs a 'dicomweb' reference",
    )


@pytest.fixture(scope="module")
def series_on_pacs(orthanc, volumes) -> tuple[list[bytes], dict]:
    """24 axial CT instances (shuffled, 0.7 x 0.7 x 5 mm) stored on the PACS, and their series reference."""
    files = volumes.ct_series(seed=5)
    for data in files:
        requests.post(f"{orthanc.url}/instances", data=data, auth=AUTH, timeout=10).raise_for_status()
    head = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    return files, {"study": head.StudyInstanceUID, "series": head.SeriesInstanceUID}


def test_series_by_uid_equals_uploading_the_zip(pacs_client, ask, series_on_pacs, monkeypatch):
    """`dicomweb: {study, series}` retrieves every instance (WADO-RS) and assembles the one volume."""
    import zipfile

    files, ref = series_on_pacs
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for k, data in enumerate(files):
            zf.writestr(f"{k}.dcm", data)
    fields = {"question": Q, "k": 1, "max_new_tokens": 4}
    for axis, size in (("coronal", (128, 171)), ("axial", (128, 112))):
        by_uid = pacs_client.post("/answer", json={"dicomweb": ref, "axis": axis, **fields})
        by_zip = ask(pacs_client, buf.getvalue(), axis=axis, **fields)
        assert by_uid.status_code == by_zip.status_code == 200, by_uid.text
        assert (
            by_uid.json()["image"] == by_zip.json()["image"]
            and by_uid.json()["answer"] == by_zip.json()["answer"]
        )
        image = by_uid.json()["image"]
        assert (image["width"], image["height"], image["axis"], image["instances"]) == (*size, axis, 24)
    assert "sop_instance_uid" in image  # the axial view of an axial series: one instance, named
    form = pacs_client.post(
        "/answer", files={"dicomweb": (None, json.dumps(ref))}, data={"question": Q, "k": "0"}
    )
    assert form.status_code == 200 and form.json()["image"]["instances"] == 24, form.text
    unknown = {**ref, "series": "1.2.826.0.1.3680043.8.498.2"}
    _err(pacs_client.post("/answer", json={"dicomweb": unknown, "question": Q}), 404, "dicomweb_not_found")
    _err(
        pacs_client.post("/answer", json={"dicomweb": {**ref, "frame": 1}, "question": Q}),
        422,
        "invalid_request",
    )
    settings = pacs_client.app.state.service.settings
    monkeypatch.setattr(settings, "max_instances", 10)  # bounded before any instance is retrieved
    _err(
        pacs_client.post("/answer", json={"dicomweb": ref, "question": Q}),
        413,
        "image_too_large",
        "more than 10",
    )
    monkeypatch.setattr(settings, "max_instances", 1000)
    monkeypatch.setattr(settings, "max_series_bytes", 100_000)  # about 3 instances' worth
    _err(
        pacs_client.post("/answer", json={"dicomweb": ref, "question": Q}), 413, "image_too_large", "exceeds"
    )


def test_explain_on_a_series_view_stores_results_referencing_the_plane(pacs_client, orthanc, series_on_pacs):
    """Coronal (a reformat): the SR names the series, plane, slice and geometry; axial: the one instance."""
    import highdicom as hd
    from dicomweb_client import DICOMwebClient

    files, ref = series_on_pacs
    uids = {str(pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).SOPInstanceUID) for f in files}
    session = requests.Session()
    session.auth = AUTH
    wado = DICOMwebClient(f"{orthanc.url}/dicom-web", session=session)
    orientations = {"coronal": ["1", "0", "0", "0", "0", "-1"], "axial": ["1", "0", "0", "0", "1", "0"]}
    for axis, patient_orientation in (("coronal", ["L", "F"]), ("axial", ["L", "P"])):
        body = {"dicomweb": ref, "question": Q, "k": 1, "max_new_tokens": 2, "store": True, "axis": axis}
        r = pacs_client.post("/explain", json=body)
        assert r.status_code == 200, r.text
        stored, image = r.json()["stored"], r.json()["image"]
        assert stored["study_instance_uid"] == ref["study"]
        got = {
            i["sop_instance_uid"]: wado.retrieve_instance(
                ref["study"], i["series_instance_uid"], i["sop_instance_uid"]
            )
            for i in stored["instances"]
        }
        sr = got[stored["instances"][0]["sop_instance_uid"]]
        hd.sr.ComprehensiveSR.from_dataset(sr)  # highdicom reads it back
        box = next(
            it
            for it in _items(sr)
            if it.ValueType == "CONTAINER" and it.ConceptNameCodeSequence[0].CodeValue == "source-series"
        )
        inside = {it.ConceptNameCodeSequence[0].CodeMeaning: it for it in box.ContentSequence}
        assert ref["series"] == inside["Series Instance UID"].UID
        assert inside["Plane"].TextValue == axis
        assert inside["Slice index"].MeasuredValueSequence[0].NumericValue == image["slice"]
        assert inside["Image Orientation (Patient)"].TextValue.split("\\") == orientations[axis]
        evidence = {
            it.ReferencedSOPInstanceUID
            for st in sr.CurrentRequestedProcedureEvidenceSequence
            for se in st.ReferencedSeriesSequence
            for it in se.ReferencedSOPSequence
        }
        assert uids <= evidence  # every instance of the series is evidence
        sc = got[stored["instances"][1]["sop_instance_uid"]]
        sources = {it.ReferencedSOPInstanceUID for it in sc.SourceImageSequence}
        assert list(sc.PatientOrientation) == patient_orientation
        if axis == "coronal":  # a reformat: no single source image; the heatmap derives from the series
            assert not (_image_refs(sr) & uids) and sources == uids
        else:  # the acquired plane: the one instance served, as for an instance reference
            assert _image_refs(sr) & uids == {image["sop_instance_uid"]} == sources


@pytest.mark.parametrize("how", ["http-403", "silently-dropped"])
def test_refused_store_is_502(pacs_client, dropped, how):
    src = _dataset("MR_small.dcm") if how == "http-403" else dropped
    r = pacs_client.post(
        "/explain", json={"dicomweb": _ref(src), "question": Q, "k": 1, "max_new_tokens": 2, "store": True}
    )
    _err(r, 502, "pacs_store_refused")


def test_credentials_basic_or_header(pacs_client, monkeypatch):
    import base64

    from pydantic import SecretStr

    settings = pacs_client.app.state.service.settings
    body = {"dicomweb": _ref(_dataset("MR_small.dcm")), "question": Q, "k": 0, "max_new_tokens": 2}
    monkeypatch.setattr(settings, "dicomweb_password", SecretStr("wrong"))
    _err(pacs_client.post("/answer", json=body), 502, "pacs_error", "HTTP 401")
    monkeypatch.setattr(settings, "dicomweb_username", None)
    _err(pacs_client.post("/answer", json=body), 502, "pacs_error", "HTTP 401")
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    monkeypatch.setattr(settings, "dicomweb_auth_header", SecretStr(f"Basic {token}"))
    assert pacs_client.post("/answer", json=body).status_code == 200


def test_instance_larger_than_the_body_limit_is_413(pacs_client, monkeypatch):
    monkeypatch.setattr(pacs_client.app.state.service.settings, "max_body_bytes", 4096)
    r = pacs_client.post("/answer", json={"dicomweb": _ref(_dataset("CT_small.dcm")), "question": Q})
    _err(r, 413, "image_too_large", "VITAL_MAX_BODY_BYTES")


def test_no_pacs_configured_is_400(pacs_client, monkeypatch):
    monkeypatch.setattr(pacs_client.app.state.service.settings, "dicomweb_url", None)
    ct = _dataset("CT_small.dcm")
    _err(
        pacs_client.post("/answer", json={"dicomweb": _ref(ct), "question": Q}),
        400,
        "dicomweb_not_configured",
        "VITAL_DICOMWEB_URL",
    )


def test_slow_pacs_is_504(pacs_client, monkeypatch):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections (the kernel does) and never answers
    settings = pacs_client.app.state.service.settings
    monkeypatch.setattr(settings, "dicomweb_url", f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web")
    monkeypatch.setattr(settings, "dicomweb_timeout_s", 0.3)
    try:
        t0 = time.perf_counter()
        r = pacs_client.post("/answer", json={"dicomweb": _ref(_dataset("CT_small.dcm")), "question": Q})
        _err(r, 504, "pacs_timeout")
        assert time.perf_counter() - t0 < 5
    finally:
        silent.close()


def test_orthanc_stopped_mid_test_is_502(pacs_client, orthanc):
    ct = _dataset("CT_small.dcm")
    ok = pacs_client.post("/answer", json={"dicomweb": _ref(ct), "question": Q, "k": 0, "max_new_tokens": 2})
    assert ok.status_code == 200, ok.text
    orthanc.stop()
    try:
        _err(pacs_client.post("/answer", json={"dicomweb": _ref(ct), "question": Q}), 502, "pacs_unreachable")
    finally:
        orthanc.start()
    again = pacs_client.post(
        "/answer", json={"dicomweb": _ref(ct), "question": Q, "k": 0, "max_new_tokens": 2}
    )
    assert again.status_code == 200 and again.json()["answer"] == ok.json()["answer"]


def test_compose_pacs_profile_wires_orthanc_to_vital():
    import yaml

    compose = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "docker" / "compose.pacs.yml").read_text()
    )
    orthanc, vital = compose["services"]["orthanc"], compose["services"]["vital"]
    assert orthanc["profiles"] == ["pacs"] and orthanc["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    root = orthanc["environment"]["ORTHANC__DICOM_WEB__ROOT"].strip("/")
    assert vital["environment"]["VITAL_DICOMWEB_URL"] == f"http://orthanc:8042/{root}"
    assert (
        vital["environment"]["VITAL_DICOMWEB_USERNAME"] in orthanc["environment"]["ORTHANC__REGISTERED_USERS"]
    )


def test_seg_only_where_the_masks_map_onto_the_source():
    """No SEG (the SR and heatmaps still build) when a mask is not the source's size, or for a multi-frame
    source without plane geometry; a frame beyond the source's is refused the same way."""
    import base64

    import numpy as np
    from PIL import Image

    from server.dicom_results import Explanation, build_results
    from server.explain import rle

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, format="PNG")
    png = base64.b64encode(buf.getvalue()).decode()

    def explanation(shape, frame=0):
        m = np.zeros(shape, bool)
        m[2:5, 3:9] = True
        step = {"step": 1, "sentence": "s", "heatmap": {"png_base64": png}, "mask": rle(m).model_dump()}
        return Explanation("q", "a", 1, "vital-tiny", "0.1.0", [step], frame=frame, region_fraction=0.75)

    ct = _dataset("CT_small.dcm")
    sr, heatmaps, seg = build_results(ct, explanation((128, 128)))
    assert seg is not None and seg.NumberOfFrames == 1 and len(heatmaps) == 1
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "vital-tiny"
    assert build_results(ct, explanation((64, 128)))[2] is None
    assert build_results(ct, explanation((128, 128), frame=1))[2] is None
    mf = _dataset(MULTIFRAME)
    sr, heatmaps, seg = build_results(mf, explanation((mf.Rows, mf.Columns), frame=1))
    assert seg is None and len(heatmaps) == 1 and sr.Modality == "SR"


def test_explain_on_frame_2_of_a_multiframe_stores_a_seg_on_source_frame_2(pacs_client, orthanc, volumes):
    """An Enhanced CT of 3 frames (plane geometry in functional groups) on the PACS, explained at DICOM frame
    2: the response's plane is 0-based frame 1, every step's box and mask are `index_builder.regions`' output
    on that frame's heatmap grid (the side the region lands on is tested with a known peak in
    tests/index_builder/test_regions.py), and the SEG re-read from Orthanc maps each segment onto source
    frame 2 with exactly /explain's mask, frames 1 and 3 empty."""
    import highdicom as hd
    import numpy as np
    from dicomweb_client import DICOMwebClient
    from pycocotools import mask as coco_mask

    from index_builder.regions import region_from_grid

    data, _ = volumes.enhanced_ct(frames=3, marker_frame=1, rows=48, cols=64)
    src = pydicom.dcmread(io.BytesIO(data))
    orthanc.upload(src)
    ask = {"question": Q, "k": 2, "max_new_tokens": 4, **volumes.FRAMES_WINDOW}
    r = pacs_client.post("/explain", json={"dicomweb": _ref(src, frame=2), **ask, "store": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["plane"] == {"frame": 1, "slice": None, "axis": None}
    other = pacs_client.post("/explain", json={"dicomweb": _ref(src, frame=1), **ask}).json()
    assert (
        other["plane"]["frame"] == 0
        and other["steps"][0]["heatmap"]["grid"] != body["steps"][0]["heatmap"]["grid"]
    )
    masks = []
    for step in body["steps"]:
        m = coco_mask.decode({"size": step["mask"]["size"], "counts": step["mask"]["counts"].encode()})
        region = region_from_grid(
            np.array(step["heatmap"]["grid"]), src.Rows, src.Columns, body["region_fraction"]
        )
        assert tuple(step["box"]) == region.box and np.array_equal(m.astype(bool), region.mask)
        masks.append(m)
    seg_info = body["stored"]["instances"][-1]
    assert seg_info["kind"] == "seg"
    session = requests.Session()
    session.auth = AUTH
    wado = DICOMwebClient(f"{orthanc.url}/dicom-web", session=session)
    seg = wado.retrieve_instance(
        src.StudyInstanceUID, seg_info["series_instance_uid"], seg_info["sop_instance_uid"]
    )
    refs = {
        (
            f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID,
            int(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber),
        )
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    assert refs == {(src.SOPInstanceUID, n) for n in (1, 2, 3)}
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    back = hd.seg.segread(io.BytesIO(buf.getvalue()))
    assert back.number_of_segments == len(body["steps"]) == 2
    for frame in (1, 2, 3):
        arr = back.get_pixels_by_source_frame(
            src.SOPInstanceUID, source_frame_numbers=[frame], segment_numbers=[1, 2]
        )  # (1, H, W, 2)
        for i, m in enumerate(masks):
            assert np.array_equal(arr[0, :, :, i], m if frame == 2 else np.zeros_like(m)), (frame, i)


def test_vital_batch_uid_list_equals_answer_by_uid(pacs_client, orthanc, tiny_bundle, tmp_path, monkeypatch):
    """`vital batch` on a UID list retrieves with the server's client and answers as /answer does by UID."""
    from server.batch import Answerer, BatchOptions, run_batch
    from server.batch_inputs import from_uids
    from server.settings import Settings

    monkeypatch.setenv("VITAL_DICOMWEB_USERNAME", AUTH[0])  # credentials as for `vital serve`
    monkeypatch.setenv("VITAL_DICOMWEB_PASSWORD", AUTH[1])
    ct, mr = _dataset("CT_small.dcm"), _dataset("MR_small.dcm")
    refs = [_ref(ct), _ref(mr), {"study": ct.StudyInstanceUID, "series": ct.SeriesInstanceUID}]
    lines = ["/".join(r.values()) for r in refs] + [f"{ct.StudyInstanceUID}/{ct.SeriesInstanceUID}/1.2.3.999"]
    uids = tmp_path / "uids.txt"
    uids.write_text("# study/series[/instance]\n" + "\n".join(lines) + "\n")
    model = Answerer.load(Settings(bundle=tiny_bundle, device="cpu"))
    out = tmp_path / "out.jsonl"
    items = from_uids(uids, Q, f"{orthanc.url}/dicom-web")
    stats = run_batch(model, items, out, BatchOptions(k=2, max_new_tokens=4, batch_size=2, progress=False))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == lines and (stats.answered, stats.errors) == (3, 1)
    for ref, row in zip(refs, rows):
        want = pacs_client.post("/answer", json={"dicomweb": ref, "question": Q, "k": 2, "max_new_tokens": 4})
        assert want.status_code == 200, want.text
        assert (row["answer"], row["k"], row["image"]) == (want.json()["answer"], 2, want.json()["image"])
    assert rows[3]["error"]["code"] == "dicomweb_not_found", rows[3]
