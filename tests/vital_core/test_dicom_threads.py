"""DICOM decoding in many threads at once: same results as serial, pydicom's warnings kept per decode,
the process's warning filters never touched."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

from vital_core.imaging import ImagingError, ImagingLimits, ImagingSpec, load_model_image

IMPLICIT_MSG = "Expected explicit VR, but found implicit VR"


def implicit_body_with_explicit_meta() -> bytes:
    """CT_small whose file meta says explicit VR but whose dataset is implicit: pydicom warns, then reads it."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    return head.getvalue() + body.getvalue()


def inputs() -> dict[str, tuple[bytes, ImagingSpec]]:
    files = {
        name: Path(get_testdata_file(name)).read_bytes()
        for name in (
            "CT_small.dcm",
            "MR_small.dcm",
            "MR_small_RLE.dcm",
            "SC_rgb_rle_2frame.dcm",
            "image_dfl.dcm",  # deflated: inflated as a stream
            "badVR.dcm",  # warns, then 400
            "rtplan.dcm",  # no image: 400
        )
    }
    cases = {name: (data, ImagingSpec()) for name, data in files.items()}
    cases["CT_small.dcm bone"] = (files["CT_small.dcm"], ImagingSpec(window="bone"))
    cases["SC_rgb_rle_2frame.dcm frame 1"] = (files["SC_rgb_rle_2frame.dcm"], ImagingSpec(frame=1))
    cases["implicit-in-explicit"] = (implicit_body_with_explicit_meta(), ImagingSpec())  # warns, then 200
    return cases


def outcome(data: bytes, spec: ImagingSpec) -> tuple:
    """(pixels hash, shape, info) of a decode, or (status, message) of a refusal."""
    try:
        img = load_model_image(data, spec, ImagingLimits())
    except ImagingError as exc:
        return ("refused", exc.status, exc.message)
    return (
        hashlib.sha256(img.pixels.tobytes()).hexdigest(),
        img.pixels.shape,
        tuple(sorted(img.info.items())),
    )


def test_concurrent_decodes_match_serial_and_leave_warning_state_alone():
    cases = inputs()
    serial = {name: outcome(*case) for name, case in cases.items()}
    assert serial["badVR.dcm"][:2] == ("refused", 400) and serial["rtplan.dcm"][:2] == ("refused", 400)
    warned = dict(serial["implicit-in-explicit"][2])
    assert IMPLICIT_MSG in warned["dicom_warnings"]  # the warning is kept with the decode ...
    assert all("dicom_warnings" not in dict(serial[n][2]) for n in ("CT_small.dcm", "MR_small.dcm"))

    jobs = [name for name in cases for _ in range(8)]
    random.Random(0).shuffle(jobs)
    threads: set[str] = set()

    def run(name: str) -> tuple[str, tuple]:
        threads.add(threading.current_thread().name)
        return name, outcome(*cases[name])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # any warning raised in any thread would be recorded here
        filters, show = list(warnings.filters), warnings.showwarning
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(run, jobs))
        assert warnings.filters == filters and warnings.showwarning is show  # untouched by the decodes
    assert caught == [], [str(w.message) for w in caught]  # ... and never leaks as a Python warning
    assert len(threads) > 1
    for name, got in results:
        assert got == serial[name], name  # same pixels, same info (warnings attributed to their own file)


def test_pydicom_warnings_go_to_the_log_and_still_warn_outside_decodes(caplog):
    data = implicit_body_with_explicit_meta()
    with caplog.at_level(logging.WARNING, logger="pydicom"):
        load_model_image(data, ImagingSpec(), ImagingLimits())
    assert any(IMPLICIT_MSG in r.getMessage() and r.name == "pydicom" for r in caplog.records)
    with pytest.warns(UserWarning, match=IMPLICIT_MSG):  # pydicom used directly is not silenced
        pydicom.dcmread(io.BytesIO(data))
