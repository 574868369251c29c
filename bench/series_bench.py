"""A CT series as one request: where the time goes from the upload to the model's image, and peak memory.

Writes a synthetic abdominal CT series (pydicom, CT Image Storage, 512 x 512, 0.7 x 0.7 mm pixels, 5 mm
slices, shuffled files and InstanceNumbers), zips it, then in a fresh subprocess per run times the stages
the server runs for a zip upload: unzip (`archive.read_zip`), headers + per-instance decode + assembly
(`DicomSeries.load`), and one reformatted view per plane (`DicomSeries.image`); the peak-RSS growth is
VmHWM minus VmRSS before the zip was read. Optionally (`--http`) the same zip goes through `/answer` of the
committed vital-tiny bundle in-process and its `timings_ms` give the time to the first latent step. With
`--dicomweb`, the series is stored into a real Orthanc (Debian's orthanc + orthanc-dicomweb, a temporary
instance on a free loopback port) and retrieved by `{study, series}`: the WADO-RS retrieve alone
(`server.dicomweb.fetch_series`, the server's code) and `/answer` with the reference.

    python bench/series_bench.py --instances 300 --runs 3 --http --dicomweb --out bench/results/series-zip
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

STAGES = r"""
import json, sys, time
from vital_core.imaging import ImagingLimits, ImagingSpec
from vital_core.imaging.archive import read_zip
from vital_core.imaging.series import DicomSeries

def mem():
    with open("/proc/self/status") as f:
        return {l.split(":")[0]: int(l.split()[1]) for l in f if l.startswith(("VmRSS", "VmHWM"))}

data = open(sys.argv[1], "rb").read()
limits = ImagingLimits()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS mark
base = mem()["VmRSS"]
t0 = time.perf_counter()
members = read_zip(data, limits)
t1 = time.perf_counter()
series = DicomSeries.load(members, limits)
t2 = time.perf_counter()
views = {}
for axis in ("axial", "coronal", "sagittal"):
    t = time.perf_counter()
    img = series.image(ImagingSpec(axis=axis))
    views[axis] = {"ms": 1000 * (time.perf_counter() - t), "shape": list(img.pixels.shape)}
peak = mem()["VmHWM"]
print(json.dumps({"unzip_ms": 1000 * (t1 - t0), "assemble_ms": 1000 * (t2 - t1), "views": views,
                  "peak_rss_growth_mb": (peak - base) / 1024, "zip_mb": len(data) / 2**20,
                  "volume_mb": series.volume.data.nbytes / 2**20, "voxel_dtype": str(series.volume.data.dtype)}))
"""


def write_series(n: int, size: int = 512, seed: int = 0) -> list[bytes]:
    """An abdomen-like phantom: air, an elliptic body of soft tissue with noise, a liver and a spine."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    body = (xx / 0.42) ** 2 + (yy / 0.32) ** 2 <= 1
    liver = ((xx + 0.15) / 0.14) ** 2 + ((yy + 0.05) / 0.12) ** 2 <= 1
    spine = (xx / 0.04) ** 2 + ((yy - 0.2) / 0.04) ** 2 <= 1
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    numbers = rng.permutation(n) + 1
    out = []
    for k in range(n):
        hu = np.where(body, 40.0, -1000.0) + np.where(liver, 20.0 + 10 * np.sin(k / 9), 0.0)
        hu = hu + np.where(spine, 600.0, 0.0) + rng.normal(0, 12, (size, size)) * body
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "BENCH", int(numbers[k])
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-179.2, -179.2, -750.0 + 5.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 5.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16).tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return [out[i] for i in rng.permutation(n)]


def answer_runs(settings, runs: int, **request) -> list[dict]:
    """`timings_ms` of `runs` warm /answer calls (after one warm-up) on an in-process app; `request` is
    TestClient.post's body (files/data or json)."""
    from fastapi.testclient import TestClient

    from server import create_app

    out = []
    with TestClient(create_app(settings)) as client:
        while client.get("/ready").status_code != 200:
            time.sleep(0.05)
        for _ in range(runs + 1):  # the first is a warm-up
            t = time.perf_counter()
            r = client.post("/answer", **request)
            wall = 1000 * (time.perf_counter() - t)
            r.raise_for_status()
            out.append({"wall_ms": wall, **r.json()["timings_ms"], "image": r.json()["image"]})
    return out[1:]


BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "vital-tiny"
ASK = {"question": "Where is the liver?", "axis": "coronal", "k": 4, "max_new_tokens": 4}


def http_timings(data: bytes, runs: int) -> list[dict]:
    """`timings_ms` of /answer (coronal, K = 4) for the zip, on the committed bundle, in-process."""
    from server import Settings

    settings = Settings(bundle=BUNDLE, max_body_bytes=len(data) + 2**20)
    form = {k: str(v) for k, v in ASK.items()}
    return answer_runs(settings, runs, files={"image": ("series.zip", data, "application/zip")}, data=form)


def _orthanc(tmp: Path):
    """A throw-away Orthanc with DICOMweb on a free loopback port (no auth): (process, base URL)."""
    import shutil
    import socket

    import requests

    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugins = [
        p
        for d in ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
        for p in Path(d).glob("libOrthancDicomWeb.so*")
    ]
    if not Path(binary).exists() or not plugins:
        raise SystemExit(
            "--dicomweb needs Debian's orthanc and orthanc-dicomweb (make test-deps installs them)"
        )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = {
        "Name": "VITAL-bench",
        "StorageDirectory": str(tmp / "db"),
        "IndexDirectory": str(tmp / "db"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpCompressionEnabled": False,
        "Plugins": [str(plugins[0])],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (tmp / "orthanc.json").write_text(json.dumps(config))
    log = open(tmp / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen([binary, str(tmp / "orthanc.json")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/system", timeout=1).ok:
                return proc, url
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    raise SystemExit(f"Orthanc did not start; see {tmp / 'orthanc.log'}")


def dicomweb_timings(files: list[bytes], runs: int) -> dict:
    """Store the series into Orthanc, then per run: the WADO-RS retrieve alone, and /answer by reference."""
    import tempfile

    import pydicom
    import requests

    from server import Settings
    from server.dicomweb import fetch_series
    from server.protocol import DicomwebRef

    head = pydicom.dcmread(io.BytesIO(files[0]), stop_before_pixels=True)
    ref = {"study": str(head.StudyInstanceUID), "series": str(head.SeriesInstanceUID)}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _orthanc(Path(tmp))
        try:
            t = time.perf_counter()
            for data in files:
                requests.post(f"{url}/instances", data=data, timeout=30).raise_for_status()
            store_ms = 1000 * (time.perf_counter() - t)
            settings = Settings(
                bundle=BUNDLE, dicomweb_url=f"{url}/dicom-web", max_series_bytes=sum(map(len, files)) + 2**20
            )
            retrieve = []
            for _ in range(runs):
                t = time.perf_counter()
                parts = fetch_series(settings, DicomwebRef(**ref))
                retrieve.append({"ms": 1000 * (time.perf_counter() - t), "instances": len(parts)})
            answers = answer_runs(settings, runs, json={"dicomweb": ref, **ASK})
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"store_ms": store_ms, "retrieve": retrieve, "answer": answers}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--http", action="store_true", help="also time /answer on the committed bundle")
    ap.add_argument(
        "--dicomweb",
        action="store_true",
        help="also time retrieval from a real Orthanc and /answer by reference",
    )
    ap.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)

    files = write_series(args.instances)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for k, data in enumerate(files):
            zf.writestr(f"series/IM{k:05d}", data)
    zpath = Path(f"/tmp/vital-series-bench-{args.instances}.zip")
    zpath.write_bytes(buf.getvalue())
    runs = []
    for _ in range(args.runs):
        proc = subprocess.run([sys.executable, "-c", STAGES, str(zpath)], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return 1
        runs.append(json.loads(proc.stdout))
    result = {
        "instances": args.instances,
        "raw_mb": sum(map(len, files)) / 2**20,
        "runs": runs,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    if args.http:
        result["http"] = http_timings(buf.getvalue(), args.runs)
    if args.dicomweb:
        result["dicomweb"] = dicomweb_timings(files, args.runs)
    zpath.unlink()
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(f"{args.out}.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
