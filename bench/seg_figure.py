"""docs/pacs.md's SEG figure: a VITAL step-region Segmentation, as stored in and re-read from a real Orthanc,
drawn over its source image.

1. A phantom CT (a held-out legacy phantom sample the committed bundle never saw, `--sample`) is written as a
   CT Image Storage instance with an Image Plane module and stored into Debian's Orthanc (started as
   tests/server/test_pacs.py starts it: a free loopback port, a temporary storage folder, DICOMweb on).
2. `POST /explain` with the instance's UIDs and `store: true`, in process (FastAPI TestClient) on the
   committed `bundles/vital-tiny`, at K = the sample's number of reasoning steps: VITAL fetches the instance
   (WADO-RS) and stores the SR, the heatmaps and the SEG (STOW-RS).
3. The SEG is retrieved from Orthanc (WADO-RS), read with `highdicom.seg.segread`, and each segment's frame on
   the source instance is outlined in its own colour over the windowed source pixels, with the step number.

No OHIF runs here, so this is not a viewer screenshot: it is the SEG's own pixels, re-read from the PACS.

    python bench/seg_figure.py --out docs/img/seg-overlay.png
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
COLOURS = [(255, 64, 64), (64, 220, 64), (64, 160, 255), (255, 200, 0), (255, 64, 255), (0, 230, 230)]
SCALE = 4  # display pixels per source pixel


def phantom_ct(sample: int, seed: int, size: int):
    """(pydicom Dataset, PhantomSample): the legacy phantom sample as a CT instance with plane geometry."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from training.phantom.generate import make_sample

    s = make_sample(sample, seed, size, task="legacy")
    if s.scene.canvas.shape[2] != 1:
        raise SystemExit(f"sample {sample} is {s.modality.key}, not greyscale: pick a CT sample")
    canvas = np.clip(s.scene.canvas[..., 0], 0.0, 1.0)  # the phantom's noise dips below 0 in the air
    stored = np.rint(canvas * 2000).astype(np.uint16)  # [0, 1] -> -1024..976 HU
    ct = "1.2.840.10008.5.1.4.1.1.2"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ct, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = ct, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^Figure", "VITAL-SEG-1"
    ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "19700101", "O", ""
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261202", "120000", "1", "ACC-SEG-1"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "VITAL phantom"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImageOrientationPatient, ds.ImagePositionPatient = [1, 0, 0, 0, 1, 0], [-44.8, -44.8, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 5.0
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1.0, -1024.0, "HU"
    ds.WindowCenter, ds.WindowWidth = -24, 2000  # the whole phantom range
    ds.PixelData = stored.tobytes()
    return ds, s


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """bool [h, w]: the pixels of `mask` within `width` pixels of its edge (4-neighbour erosion)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _overlay(grey: np.ndarray, masks: np.ndarray, scale: int, which: list[int]) -> np.ndarray:
    """uint8 [H*scale, W*scale, 3]: `grey` [H, W] enlarged, with the outlines of segments `which` of
    `masks` [H, W, S] in their colours."""
    rgb = np.repeat(np.kron(grey, np.ones((scale, scale), np.uint8))[..., None], 3, axis=2)
    for i in which:
        big = np.kron(masks[..., i].astype(np.uint8), np.ones((scale, scale), np.uint8)).astype(bool)
        rgb[outline(big, max(1, scale // 2))] = COLOURS[i % len(COLOURS)]
    return rgb


def render(source, seg_masks: np.ndarray, labels: list[str], title: str) -> Image.Image:
    """Left: the windowed source at SCALE x with every segment's outline in its colour and its step number at
    its box's corner. Right: one small panel per segment (1 x), numbered. A title line above, a legend below."""
    hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    lo = float(source.WindowCenter) - float(source.WindowWidth) / 2
    grey = np.clip((hu - lo) / float(source.WindowWidth) * 255, 0, 255).astype(np.uint8)  # (H, W)
    h, w = grey.shape
    n = seg_masks.shape[-1]
    head, foot, gap = 22, 16 * n + 8, 8
    side = max(w, (h * SCALE - gap * (n - 1)) // max(n, 1))  # per-step panel width
    canvas = Image.new("RGB", (w * SCALE + gap + side, h * SCALE + head + foot), (0, 0, 0))
    canvas.paste(Image.fromarray(_overlay(grey, seg_masks, SCALE, list(range(n)))), (0, head))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 5), title, fill=(235, 235, 235))
    small = max(1, side // w)
    for i, label in enumerate(labels):
        colour = COLOURS[i % len(COLOURS)]
        rows, cols = np.nonzero(seg_masks[..., i])
        x, y = int(cols.min()) * SCALE + 3 + 10 * i, int(rows.min()) * SCALE + head + 2
        draw.rectangle((x - 1, y - 1, x + 8, y + 11), fill=(0, 0, 0))
        draw.text((x + 1, y), str(i + 1), fill=colour)
        panel = Image.fromarray(_overlay(grey, seg_masks, small, [i]))
        px, py = w * SCALE + gap, head + i * (h * small + gap)
        canvas.paste(panel, (px, py))
        draw.text((px + 3, py + 2), f"step {i + 1}", fill=colour)
        draw.text((6, h * SCALE + head + 4 + 16 * i), label, fill=colour)
    return canvas


def palette_png(image: Image.Image) -> Image.Image:
    """`image` on a fixed palette (the outline colours, then greys): small, and the colours stay exact."""
    entries = [*COLOURS, (235, 235, 235)]
    greys = 256 - len(entries)
    entries += [(round(255 * g / (greys - 1)),) * 3 for g in range(greys)]
    pal = Image.new("P", (1, 1))
    pal.putpalette([c for rgb in entries for c in rgb])
    return image.quantize(palette=pal, dither=Image.Dither.NONE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "bundles" / "vital-tiny"))
    ap.add_argument("--sample", type=int, default=45, help="legacy phantom sample index (45: CT, 4 steps)")
    ap.add_argument("--seed", type=int, default=1, help="phantom seed (the bundle was trained on seed 0)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "seg-overlay.png"))
    args = ap.parse_args(argv)

    import highdicom as hd
    import requests
    from dicomweb_client import DICOMwebClient
    from fastapi.testclient import TestClient
    from pycocotools import mask as coco_mask

    sys.path.insert(0, str(ROOT / "tests" / "server"))
    from test_pacs import AUTH, Orthanc  # the PACS tests' Orthanc: Debian's orthanc + orthanc-dicomweb

    from server import Settings, create_app

    src, sample = phantom_ct(args.sample, args.seed, 128)
    k = len(sample.qa.reasoning)
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = Orthanc(Path(tmp), refuse_study="0.0", drop_study="0.0")  # no study refused or dropped
        orthanc.start()
        try:
            orthanc.upload(src)
            settings = Settings(
                bundle=args.bundle,
                dicomweb_url=f"{orthanc.url}/dicom-web",
                dicomweb_username=AUTH[0],
                dicomweb_password=AUTH[1],
            )
            with TestClient(create_app(settings)) as client:
                while client.get("/ready").status_code != 200:
                    time.sleep(0.05)
                ref = {
                    "study": src.StudyInstanceUID,
                    "series": src.SeriesInstanceUID,
                    "instance": src.SOPInstanceUID,
                }
                r = client.post(
                    "/explain", json={"dicomweb": ref, "question": sample.qa.question, "k": k, "store": True}
                )
            r.raise_for_status()
            body = r.json()
            info = next(i for i in body["stored"]["instances"] if i["kind"] == "seg")
            session = requests.Session()
            session.auth = AUTH
            wado = DICOMwebClient(f"{orthanc.url}/dicom-web", session=session)
            seg_ds = wado.retrieve_instance(
                src.StudyInstanceUID, info["series_instance_uid"], info["sop_instance_uid"]
            )
        finally:
            orthanc.stop()
    buf = io.BytesIO()
    seg_ds.save_as(buf, enforce_file_format=True)
    seg = hd.seg.segread(io.BytesIO(buf.getvalue()))
    numbers = list(range(1, seg.number_of_segments + 1))
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[src.SOPInstanceUID], segment_numbers=numbers
    )[0]  # (H, W, S)
    for i, step in enumerate(body["steps"]):  # the PACS's copy is what /explain returned
        m = coco_mask.decode({"size": step["mask"]["size"], "counts": step["mask"]["counts"].encode()})
        assert np.array_equal(masks[..., i], m), f"segment {i + 1} differs from /explain's mask"
    labels = [
        f"{seg.get_segment_description(n).segment_label}: box {body['steps'][n - 1]['box']}" for n in numbers
    ]
    title = f"SEG re-read from Orthanc (WADO-RS, highdicom segread): {len(numbers)} segments, fraction {body['region_fraction']}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    palette_png(render(src, masks, labels, title)).save(out, optimize=True)
    print(
        json.dumps(
            {
                "out": str(out),
                "bytes": out.stat().st_size,
                "sample": sample.id,
                "question": sample.qa.question,
                "k": k,
                "answer": body["answer"],
                "segments": len(numbers),
                "boxes": [s["box"] for s in body["steps"]],
                "sentences": [s["sentence"] for s in body["steps"]],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
